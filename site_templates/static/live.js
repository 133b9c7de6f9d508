/* ViT Atlas website, the live view (live.html): an image of the reader's through a model of the atlas in this page
   (onnxruntime-web, WebAssembly), and per site and layer the units that fire most on it, each with its optimized
   image and where on the image it fires. The image is prepared exactly as timm's eval transform prepares it:
   Pillow's resampling is ported below (its filters, its fixed-point coefficients with 22 fractional bits, its two
   passes in the order of the Pillow that made the live model), then torchvision's crop and float32
   normalization. Nothing leaves the page. Uses atlas.js. */
(function () {
  "use strict";
  var box = document.getElementById("live-view");
  if (!box) { return; }
  var A = window.Atlas;
  var root = A.root, el = A.el, link = A.link, clear = A.clear, num = A.num, list = A.list, whole = A.whole,
      unitId = A.unitId, unitHref = A.unitHref, parseId = A.parseId, lazyTile = A.lazyTile, mapCanvas = A.mapCanvas;
  var status = document.getElementById("live-status");
  var results = document.getElementById("live-results");
  var TOP = 8;                                   /* units shown per layer */
  var MAX_PIXELS = 89478485;                     /* Pillow's decompression-bomb bound, which the probe keeps too */
  var models = list(JSON.parse(box.getAttribute("data-models")), 64);
  var runtime = JSON.parse(box.getAttribute("data-runtime"));
  var state = { model: null, provider: null, record: null, session: null, labels: {}, last: null, rank: "mean", focus: null,
                timings: { ready_ms: null, run_ms: [] } };

  function say(text, s) { status.textContent = text; if (s) { box.setAttribute("data-state", s); } }

  /* ---- preparing an image as timm's eval transform does -------------------------------------------------- */
  var PRECISION_BITS = 22;                       /* Pillow's Resample.c: 32 - 8 - 2 */
  function sinc(x) { if (x === 0) { return 1; } x *= Math.PI; return Math.sin(x) / x; }
  var FILTERS = {                                /* Pillow's filters: [support, filter] */
    box: [0.5, function (x) { return x > -0.5 && x <= 0.5 ? 1 : 0; }],
    bilinear: [1, function (x) { if (x < 0) { x = -x; } return x < 1 ? 1 - x : 0; }],
    hamming: [1, function (x) {
      if (x < 0) { x = -x; }
      if (x === 0) { return 1; }
      if (x >= 1) { return 0; }
      x *= Math.PI;
      return Math.sin(x) / x * (0.54 + 0.46 * Math.cos(x));
    }],
    bicubic: [2, function (x) {
      var a = -0.5;
      if (x < 0) { x = -x; }
      if (x < 1) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
      if (x < 2) { return (((x - 5) * x + 8) * x - 4) * a; }
      return 0;
    }],
    lanczos: [3, function (x) { return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0; }]
  };
  /* Pillow's precompute_coeffs and normalize_coeffs_8bpc: each output pixel's input span and fixed-point weights */
  function coefficients(inSize, outSize, filter) {
    var scale = inSize / outSize, filterscale = scale < 1 ? 1 : scale, support = filter[0] * filterscale;
    var ksize = Math.ceil(support) * 2 + 1, ss = 1 / filterscale, one = 1 << PRECISION_BITS;
    var bounds = new Int32Array(2 * outSize), kk = new Int32Array(outSize * ksize), w = new Float64Array(ksize);
    for (var xx = 0; xx < outSize; xx++) {
      var center = (xx + 0.5) * scale, ww = 0, x;
      var xmin = Math.trunc(center - support + 0.5), xmax = Math.trunc(center + support + 0.5);
      if (xmin < 0) { xmin = 0; }
      if (xmax > inSize) { xmax = inSize; }
      xmax -= xmin;
      for (x = 0; x < xmax; x++) { w[x] = filter[1]((x + xmin - center + 0.5) * ss); ww += w[x]; }
      for (x = 0; x < xmax; x++) {
        var k = ww !== 0 ? w[x] / ww : w[x];
        kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * one) : Math.trunc(0.5 + k * one);
      }
      bounds[2 * xx] = xmin; bounds[2 * xx + 1] = xmax;
    }
    return { bounds: bounds, kk: kk, ksize: ksize };
  }
  function clip8(v) { v = Math.floor(v / 4194304); return v < 0 ? 0 : v > 255 ? 255 : v; }
  /* one pass of Pillow's ImagingResample over RGB bytes: along x (stride 3) or along y (stride 3 * width) */
  function pass(src, w, h, outW, outH, c, alongX) {
    var out = new Uint8Array(outW * outH * 3), half = 1 << (PRECISION_BITS - 1), kk = c.kk, ksize = c.ksize;
    for (var y = 0; y < outH; y++) {
      for (var x = 0; x < outW; x++) {
        var o = alongX ? x : y, lo = c.bounds[2 * o], n = c.bounds[2 * o + 1], k0 = o * ksize;
        var s0 = half, s1 = half, s2 = half;
        for (var i = 0; i < n; i++) {
          var k = kk[k0 + i], p = alongX ? (y * w + lo + i) * 3 : ((lo + i) * w + x) * 3;
          s0 += src[p] * k; s1 += src[p + 1] * k; s2 += src[p + 2] * k;
        }
        var q = (y * outW + x) * 3;
        out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
      }
    }
    return out;
  }
  /* Pillow's ImagingResampleInner: from Pillow 13 ("pillow13") the vertical pass comes first when the height
     shrinks by more than twice as many pixels as the width; before, the horizontal pass always came first */
  function resize(img, outW, outH, name, order) {
    var filter = FILTERS[name];
    if (!filter) { throw new Error("no port of Pillow's " + name + " filter"); }
    var px = img.rgb, w = img.width, h = img.height;
    var verticalFirst = order === "pillow13" && h - outH > 0 && h - outH > (w - outW) * 2;
    if (verticalFirst) { px = pass(px, w, h, w, outH, coefficients(h, outH, filter), false); h = outH; }
    if (outW !== w) { px = pass(px, w, h, outW, h, coefficients(w, outW, filter), true); w = outW; }
    if (outH !== h) { px = pass(px, w, h, w, outH, coefficients(h, outH, filter), false); h = outH; }
    return { rgb: px, width: w, height: h };
  }
  function roundHalfEven(x) {                    /* Python's round() */
    var f = Math.floor(x), d = x - f;
    return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1);
  }
  function centerCrop(img, ch, cw) {             /* torchvision's center_crop: zero padding when too small */
    var w = img.width, h = img.height;
    var left = w < cw ? -Math.floor((cw - w) / 2) : roundHalfEven((w - cw) / 2);
    var top = h < ch ? -Math.floor((ch - h) / 2) : roundHalfEven((h - ch) / 2);
    var out = new Uint8Array(cw * ch * 3);
    for (var y = 0; y < ch; y++) {
      for (var x = 0; x < cw; x++) {
        var sx = x + left, sy = y + top;
        if (sx < 0 || sy < 0 || sx >= w || sy >= h) { continue; }
        out.set(img.rgb.subarray((sy * w + sx) * 3, (sy * w + sx) * 3 + 3), (y * cw + x) * 3);
      }
    }
    return { rgb: out, width: cw, height: ch };
  }
  /* an image's RGB bytes through the record's steps: the model's input, float32 [3, H, W], and the crop it saw */
  function prepare(img, steps) {
    var tensor = null;
    list(steps, 16).forEach(function (s) {
      if (s.op === "resize_shorter") {
        var short = Math.min(img.width, img.height), long = Math.max(img.width, img.height);
        var newLong = Math.trunc(s.size * long / short);                 /* torchvision: int(size * long / short) */
        img = img.width <= img.height ? resize(img, s.size, newLong, s.filter, s.pass_order)
                                      : resize(img, newLong, s.size, s.filter, s.pass_order);
      } else if (s.op === "center_crop") {
        img = centerCrop(img, s.size[0], s.size[1]);
      } else if (s.op === "to_tensor") {
        var plane = img.width * img.height;
        tensor = new Float32Array(3 * plane);
        for (var i = 0; i < plane; i++) {
          for (var c = 0; c < 3; c++) { tensor[c * plane + i] = Math.fround(img.rgb[3 * i + c] / 255); }
        }
      } else if (s.op === "normalize") {
        var n = img.width * img.height;
        for (var ch = 0; ch < 3; ch++) {
          var mean = Math.fround(s.mean[ch]), std = Math.fround(s.std[ch]);
          for (var j = 0; j < n; j++) { tensor[ch * n + j] = Math.fround(tensor[ch * n + j] - mean) / std; }
        }
      } else {
        throw new Error("unknown preparation step " + s.op);
      }
    });
    return { data: tensor, width: img.width, height: img.height, rgb: img.rgb };
  }

  /* ---- decoding: the file's own pixels (no colour management, no premultiplied alpha; transparency on white,
     as the probe composites it) ------------------------------------------------------------------------------ */
  function decode(blob) {
    if (!blob) { return Promise.reject(new Error("no file")); }
    return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" }).then(function (bitmap) {
      var w = bitmap.width, h = bitmap.height;
      if (w * h > MAX_PIXELS) { throw new Error("too large: " + w + "\u00d7" + h + " pixels"); }
      var canvas = document.createElement("canvas");
      canvas.width = w; canvas.height = h;
      var ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
      ctx.drawImage(bitmap, 0, 0);
      var rgba = ctx.getImageData(0, 0, w, h).data, rgb = new Uint8Array(w * h * 3);
      for (var i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
      return { rgb: rgb, width: w, height: h };
    }, function () { throw new Error("this browser cannot decode it as an image"); });
  }

  /* ---- loading: the runtime and the model, every file checked against its sha256 where the page can hash ---- */
  function hex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer), function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }
  /* ``buffer`` if its sha256 is ``sha256`` (or either is not to be had: hashing needs https or localhost), else an
     error naming ``what`` */
  function checked(buffer, sha256, what) {
    if (!sha256 || !(window.crypto && crypto.subtle)) { return Promise.resolve(buffer); }
    return crypto.subtle.digest("SHA-256", buffer).then(function (d) {
      if (hex(d) !== sha256) { throw new Error(what + " is not the file the website lists"); }
      return buffer;
    });
  }
  function fetchChecked(url, sha256) {
    return fetch(url).then(function (r) {
      if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
      return r.arrayBuffer();
    }).then(function (buffer) { return checked(buffer, sha256, url); });
  }
  function checkRecord(rec) {
    if (!rec || typeof rec !== "object" || !rec.input || !Array.isArray(rec.input.shape) || rec.input.shape.length !== 4 ||
        !Array.isArray(rec.outputs) || !rec.files || typeof rec.files !== "object") { throw new Error("not a live model record"); }
    rec.outputs = list(rec.outputs, 4096).filter(function (o) {
      return o && typeof o.name === "string" && Array.isArray(o.units) && Array.isArray(o.grid) && whole(o.layer, 0, 1e4);
    });
    return rec;
  }
  function load(index) {
    var m = models[index], base = root + m.record.replace(/[^/]*$/, "");
    state.model = m.model; state.session = null;
    say("Loading the model " + m.model + "\u2026", "loading");
    return fetchChecked(root + m.record).then(function (buffer) {
      var rec = checkRecord(JSON.parse(new TextDecoder().decode(buffer)));
      var names = Object.keys(rec.files).filter(function (n) { return /^(model\.onnx|weights-\d{3}\.bin)$/.test(n); });
      var done = 0, total = names.reduce(function (s, n) { return s + rec.files[n].bytes; }, 0);
      var files = {};
      return Promise.all(names.map(function (n) {
        return fetchChecked(base + n, rec.files[n].sha256).then(function (b) {
          files[n] = new Uint8Array(b);
          done += rec.files[n].bytes;
          if (box.getAttribute("data-state") === "loading") {      /* a file that failed first has said why: keep it */
            say("Loading the model " + m.model + ": " + (done / 1e6).toFixed(1) + " of " + (total / 1e6).toFixed(1) + " MB\u2026");
          }
        });
      }).concat([fetch(base + "labels.json").then(function (r) { return r.ok ? r.json() : {}; }).then(function (words) {
        state.labels = words && typeof words === "object" ? words : {};            /* what names each unit, if any */
      }, function () { state.labels = {}; })])).then(function () {
        var external = names.filter(function (n) { return n !== "model.onnx"; }).map(function (n) { return { path: n, data: files[n] }; });
        return ort.InferenceSession.create(files["model.onnx"], {
          executionProviders: state.provider === "webgpu" ? ["webgpu", "wasm"] : ["wasm"],
          graphOptimizationLevel: "all", externalData: external });
      }).then(function (session) {
        state.record = rec; state.session = session;
        state.timings.ready_ms = performance.now();
        say("Ready (" + (state.timings.ready_ms / 1000).toFixed(1) + " s, " + (state.provider === "webgpu" ? "WebGPU" :
            ort.env.wasm.numThreads + (ort.env.wasm.numThreads === 1 ? " thread" : " threads")) +
            "): choose, drop or paste an image.", "ready");
        showFocus();
      });
    });
  }

  /* ---- running: every output's per-unit mean and max over the patch grid -------------------------------- */
  function summarize(outputs) {
    return state.record.outputs.map(function (o) {
      var t = outputs[o.name], dims = t.dims, n = dims[3], cells = dims[1] * dims[2], data = t.data;
      var means = new Float64Array(n), maxes = new Float64Array(n).fill(-Infinity);
      for (var c = 0; c < cells; c++) {
        for (var j = 0; j < n; j++) {
          var v = data[c * n + j];
          means[j] += v;
          if (v > maxes[j]) { maxes[j] = v; }
        }
      }
      for (var k = 0; k < n; k++) { means[k] /= cells; }
      return { name: o.name, site: o.site, layer: o.layer, units: o.units, grid: [dims[1], dims[2]], data: data,
               means: means, maxes: maxes };
    });
  }
  function run(blob) {
    if (!state.session) { return Promise.reject(new Error("the model is not loaded yet")); }
    say("Reading the image\u2026", "running");
    return decode(blob).then(function (img) {
      var start = performance.now(), rec = state.record;
      var input = prepare(img, rec.preprocess);
      if (!input.data || input.height !== rec.input.shape[2] || input.width !== rec.input.shape[3]) {
        throw new Error("the prepared image is " + input.width + "\u00d7" + input.height + ", the model takes " +
                        rec.input.shape[3] + "\u00d7" + rec.input.shape[2]);
      }
      var feeds = {};
      feeds[rec.input.name] = new ort.Tensor("float32", input.data, rec.input.shape);
      return state.session.run(feeds).then(function (outputs) {
        var ms = performance.now() - start;
        state.timings.run_ms.push(ms);
        state.last = { input: input, layers: summarize(outputs), ms: ms, size: [img.width, img.height] };
        show();
        say("Your image (" + img.width + "\u00d7" + img.height + ") ran through " + state.model + " in " + Math.round(ms) +
            " ms, in this page.", "done");
        return state.last;
      });
    }).catch(function (e) {
      say("Could not run this image: " + (e.message || e) + ".", "error");
      throw e;
    });
  }

  /* ---- showing ------------------------------------------------------------------------------------------ */
  function inputUrl(input) {
    var canvas = document.getElementById("live-canvas"), w = input.width, h = input.height;
    canvas.width = w; canvas.height = h;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
    for (var i = 0; i < w * h; i++) { img.data.set([input.rgb[3 * i], input.rgb[3 * i + 1], input.rgb[3 * i + 2], 255], 4 * i); }
    ctx.putImageData(img, 0, 0);
    return canvas.toDataURL("image/png");
  }
  function order(layer) {
    var values = state.rank === "max" ? layer.maxes : layer.means, idx = [];
    for (var j = 0; j < values.length; j++) { idx.push(j); }
    return idx.sort(function (a, b) { return values[b] - values[a] || layer.units[a] - layer.units[b]; });
  }
  function unitMap(layer, j) {                  /* the unit's patch grid as 8-bit levels of its own maximum */
    var cells = layer.grid[0] * layer.grid[1], n = layer.units.length, bytes = new Uint8Array(cells);
    var top = layer.maxes[j] > 0 ? layer.maxes[j] : 0;
    for (var c = 0; c < cells && top > 0; c++) { bytes[c] = Math.max(0, Math.round(255 * layer.data[c * n + j] / top)); }
    return mapCanvas(bytes, layer.grid[0], layer.grid[1], 8, 0);
  }
  function unitItem(layer, j, rank, photo) {
    var id = unitId(state.model, layer.site, layer.layer, layer.units[j]);
    var li = el("li");
    li.setAttribute("data-unit", id);
    if (state.focus && state.focus.id === id) { li.className = "focus"; }
    var a = link(unitHref(id), null, "tile");
    var pics = el("span", "pics live-pics");
    var pic = el("img", "pic pic-viz");
    pic.alt = "Optimized image of unit " + id; pic.width = 96; pic.height = 96;
    lazyTile(pic, id);
    pics.appendChild(pic);
    var fig = el("span", "frame");
    var img = el("img", "photo");
    img.src = photo; img.alt = "Where unit " + id + " fires on your image"; img.width = 96; img.height = 96;
    fig.appendChild(img);
    fig.appendChild(unitMap(layer, j));
    pics.appendChild(fig);
    a.appendChild(pics);
    a.appendChild(el("span", "uid", "#" + (rank + 1) + " U" + String(layer.units[j]).padStart(4, "0")));
    var words = state.labels[layer.name], word = words && words.units && words.units[String(layer.units[j])];
    if (typeof word === "string") { a.appendChild(el("span", "cls live-label", word)); }
    a.appendChild(el("span", "cls", "mean " + num(layer.means[j]) + " \u00b7 max " + num(layer.maxes[j])));
    li.appendChild(a);
    return li;
  }
  function show() {
    var last = state.last;
    if (!last) { return; }
    var photo = inputUrl(last.input);
    document.getElementById("live-input").hidden = false;
    document.getElementById("live-input-note").textContent = "Your image as the model sees it (" + last.input.width + "\u00d7" +
      last.input.height + ", prepared as timm's eval transform prepares it).";
    clear(results);
    last.layers.forEach(function (layer) {
      var ranked = order(layer), section = el("section", "live-layer");
      section.setAttribute("data-output", layer.name);
      var h = el("h2", null, layer.site + " \u00b7 layer " + layer.layer);
      var named = state.labels[layer.name] && state.labels[layer.name].source;
      h.appendChild(el("span", "count", " " + layer.units.length + " units" + (typeof named === "string" ? ", named by " + named : "")));
      section.appendChild(h);
      var ol = el("ol", "tiles live-units");
      ranked.slice(0, TOP).forEach(function (j, r) { ol.appendChild(unitItem(layer, j, r, photo)); });
      var f = state.focus, at = f && f.site === layer.site && f.layer === layer.layer ? layer.units.indexOf(f.unit) : -1;
      if (at >= 0 && ranked.indexOf(at) >= TOP) { ol.appendChild(unitItem(layer, at, ranked.indexOf(at), photo)); }
      section.appendChild(ol);
      results.appendChild(section);
    });
    showFocus();
  }
  /* live.html#<unit id> (the unit view's "try it on your image"): that unit first, where it ranks in its layer */
  function showFocus() {
    var panel = document.getElementById("live-focus"), f = state.focus;
    if (!f) { panel.hidden = true; return; }
    clear(panel);
    panel.hidden = false;
    panel.appendChild(el("h2", null, "Unit "));
    panel.firstChild.appendChild(link(unitHref(f.id), f.id));
    var layer = state.last && state.last.layers.filter(function (l) { return l.site === f.site && l.layer === f.layer; })[0];
    var j = layer ? layer.units.indexOf(f.unit) : -1;
    if (f.model !== state.model || (state.record && !state.record.outputs.some(function (o) { return o.site === f.site && o.layer === f.layer && o.units.indexOf(f.unit) >= 0; }))) {
      panel.appendChild(el("p", "note", "This unit is not part of the live model on this page."));
    } else if (j < 0) {
      panel.appendChild(el("p", "note", "Choose, drop or paste an image to see how this unit responds to it."));
    } else {
      var rank = order(layer).indexOf(j);
      var ol = el("ol", "tiles live-units");
      ol.appendChild(unitItem(layer, j, rank, inputUrl(state.last.input)));
      panel.appendChild(ol);
      panel.appendChild(el("p", "note", "On your image: mean " + num(layer.means[j]) + ", max " + num(layer.maxes[j]) + "; ranks " +
        (rank + 1) + " of " + layer.units.length + " units of " + f.site + " layer " + f.layer + " by " + state.rank + "."));
    }
  }

  /* ---- wiring --------------------------------------------------------------------------------------------- */
  function focusFromHash() {
    var f = null;
    try { f = parseId(decodeURIComponent(location.hash.slice(1))); } catch (e) { f = null; }
    state.focus = f;
    return f;
  }
  /* the runtime: the WebGPU build where the browser has a WebGPU adapter (live.html?device=cpu opts out), else the
     wasm build; its script checked by its SRI hash, its binary's pieces joined and checked by their sha256 */
  function chooseBuild() {
    var asked = new URLSearchParams(location.search).get("device");
    if (asked === "cpu" || !navigator.gpu) { return Promise.resolve("wasm"); }
    return navigator.gpu.requestAdapter().then(function (a) { return a ? "webgpu" : "wasm"; }, function () { return "wasm"; });
  }
  function loadRuntime(build) {
    return A.loadScript(root + runtime.path + build.script, build.sri).catch(function () {
      throw new Error("the runtime's script " + build.script + " did not load, or is not the published file");
    });
  }
  function wasmBinary(build, base) {
    return Promise.all(list(build.wasm, 8).map(function (name) { return fetchChecked(base + name); })).then(function (pieces) {
      var whole = new Uint8Array(pieces.reduce(function (n, p) { return n + p.byteLength; }, 0)), at = 0;
      pieces.forEach(function (p) { whole.set(new Uint8Array(p), at); at += p.byteLength; });
      return checked(whole.buffer, build.wasm_sha256, "the runtime's binary");
    });
  }
  function start() {
    if (location.protocol === "file:") {
      say("The live view runs only when the website is served over http(s): browsers do not run its WebAssembly " +
          "model from files opened from disk. Run `vit-atlas serve` on the atlas, or open its hosted copy.", "unavailable");
      return Promise.resolve();
    }
    if (typeof WebAssembly !== "object" || typeof createImageBitmap !== "function") {
      say("This browser cannot run the live view: it needs WebAssembly and createImageBitmap (any browser of the last " +
          "few years).", "unavailable");
      return Promise.resolve();
    }
    if (!models.length) { say("This website publishes no live model.", "unavailable"); return Promise.resolve(); }
    var f = focusFromHash(), index = 0;
    models.forEach(function (m, i) { if (f && m.model === f.model) { index = i; } });
    var select = document.getElementById("live-model");
    if (select) {
      select.value = String(index);
      select.addEventListener("change", function () { load(+select.value).then(function () { clear(results); }); });
    }
    var base = new URL(root + runtime.path, location.href).href;
    return chooseBuild().then(function (name) {
      var build = runtime.builds[name];
      state.provider = name;
      return Promise.all([loadRuntime(build), wasmBinary(build, base)]).then(function (loaded) {
        ort.env.wasm.wasmPaths = { mjs: base + build.loader, wasm: base + build.wasm[0] };
        ort.env.wasm.wasmBinary = loaded[1];
        ort.env.wasm.numThreads = window.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
        return load(index);
      });
    }).catch(function (e) { say("The live view could not start: " + (e.message || e) + ".", "error"); });
  }
  function take(file) { if (file) { run(file).catch(function () {}); } }
  document.getElementById("live-file").addEventListener("change", function (e) { take(e.target.files[0]); });
  var drop = document.getElementById("live-drop");
  drop.addEventListener("dragover", function (e) { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (e) { e.preventDefault(); drop.classList.remove("over"); take(e.dataTransfer.files[0]); });
  document.addEventListener("paste", function (e) {
    var items = (e.clipboardData && e.clipboardData.files) || [];
    if (items.length) { e.preventDefault(); take(items[0]); }
  });
  Array.prototype.forEach.call(document.querySelectorAll("#live-samples button[data-src]"), function (b) {
    b.addEventListener("click", function () { fetch(b.getAttribute("data-src")).then(function (r) { return r.blob(); }).then(take); });
  });
  document.getElementById("live-rank").addEventListener("change", function (e) { state.rank = e.target.value; show(); });
  window.addEventListener("hashchange", function () { focusFromHash(); show(); showFocus(); });

  window.AtlasLive = { ready: start(), run: run, prepare: prepare, decode: decode, state: state };
})();
