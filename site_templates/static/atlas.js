/* ViT Atlas website: reads the packed per-unit data (docs/FORMAT.md "Website") and shows it; no build step,
   no dependencies. Packs are read by HTTP range requests; a host that answers a range with the whole file
   is read whole once per pack; pages opened from disk (file://, where browsers refuse fetch) load each
   pack's script twin (<pack>.js, which calls AtlasPacks.add). Everything from data is set as text or
   attributes, never parsed as HTML. */
(function () {
  "use strict";
  var body = document.body;
  var root = body.getAttribute("data-root") || "";
  var dataBase = body.getAttribute("data-packs") || root;            /* where data/ lives */
  var layout = JSON.parse(body.getAttribute("data-layout"));           /* atlas.website.urls.script_layout */
  var HEAD = layout.head, THUMB_HEAD = layout.thumb_head, PACK_UNITS = layout.pack_units, THUMB_ROWS = layout.thumb_rows;
  var MAGIC = layout.magic;
  var fromDisk = location.protocol === "file:" && !/^https?:/i.test(dataBase);

  /* ---- reading packs ----------------------------------------------------------------------------- */
  var stats = { requests: 0, bytes: 0, whole: 0, scripts: 0, thumbnails: 0 };   /* requests: all; thumbnails: of them */
  var scripts = {}, wholes = {}, headers = {}, rangesIgnored = false;
  var decoder = new TextDecoder();

  function fail(message) { return Promise.reject(new Error(message)); }

  /* every field of a pack is untrusted (a host or an edit can change it): numbers are checked before use */
  var MAX_HEADER = 64 * 1048576, MAX_GRID = 1024, MAX_CELLS = 65536, MAX_BINS = 4096, MAX_LIST = 4096;
  function whole(x, lo, hi) { return typeof x === "number" && isFinite(x) && Math.floor(x) === x && x >= lo && x <= hi; }
  function list(x, max) { return Array.isArray(x) && x.length <= (max || MAX_LIST) ? x : []; }

  function script(path) {                                               /* a pack from disk, as a script */
    if (!scripts[path]) {
      scripts[path] = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        pending[path] = resolve;
        s.src = dataBase + path + ".js";
        s.onerror = function () { reject(new Error("could not load " + path + ".js")); };
        stats.scripts += 1;
        document.head.appendChild(s);
      });
    }
    return scripts[path];
  }
  var pending = {};

  function fetchWhole(path) {
    if (!wholes[path]) {
      stats.requests += 1;
      wholes[path] = fetch(dataBase + path, { credentials: "omit" }).then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status + " for " + path); }
        return r.arrayBuffer();
      }).then(function (b) { stats.bytes += b.byteLength; stats.whole += 1; return new Uint8Array(b); });
    }
    return wholes[path];
  }

  /* bytes [start, start + length) of a pack (fewer at its end) */
  function range(path, start, length) {
    if (fromDisk) { return script(path).then(function (b) { return b.subarray(start, start + length); }); }
    if (wholes[path] || rangesIgnored) { return fetchWhole(path).then(function (b) { return b.subarray(start, start + length); }); }
    stats.requests += 1;
    if (path.indexOf("/thumbs/") !== -1) { stats.thumbnails += 1; }
    return fetch(dataBase + path, { credentials: "omit", headers: { Range: "bytes=" + start + "-" + (start + length - 1) } })
      .then(function (r) {
        if (r.status === 206) {
          return r.arrayBuffer().then(function (b) {
            stats.bytes += b.byteLength;
            if (b.byteLength > length) { throw new Error(path + ": the server sent more than the range asked for"); }
            return new Uint8Array(b);
          });
        }
        if (r.status === 200) {                                         /* ranges ignored: keep the whole pack */
          rangesIgnored = true;
          wholes[path] = r.arrayBuffer().then(function (b) {
            stats.bytes += b.byteLength; stats.whole += 1; return new Uint8Array(b);
          });
          return wholes[path].then(function (b) { return b.subarray(start, start + length); });
        }
        throw new Error("HTTP " + r.status + " for " + path);
      });
  }

  function u32(bytes, at) { return (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16)) + bytes[at + 3] * 16777216; }

  /* a pack's header, with the bytes fetched along with it (often the first tiles) */
  function header(path, first) {
    if (!headers[path]) {
      headers[path] = range(path, 0, first || HEAD).then(function (head) {
        if (head.length < 12 || decoder.decode(head.subarray(0, 8)) !== MAGIC) { throw new Error(path + " is not a pack"); }
        var n = u32(head, 8);
        if (n > MAX_HEADER) { throw new Error(path + ": its header claims " + n + " bytes"); }
        var more = 12 + n > head.length ? range(path, 0, 12 + n) : Promise.resolve(head);
        return more.then(function (all) {
          var h = JSON.parse(decoder.decode(all.subarray(12, 12 + n)));
          if (!h || !Array.isArray(h.lengths) || !whole(h.start, 12, Number.MAX_SAFE_INTEGER)) { throw new Error(path + " has no item index"); }
          h.items = [];                                                 /* absolute [offset, length] of item i */
          for (var i = 0, at = h.start; i < h.lengths.length; i++) {
            if (!whole(h.lengths[i], 0, Number.MAX_SAFE_INTEGER)) { throw new Error(path + ": item " + i + " has no length"); }
            h.items.push([at, h.lengths[i]]); at += h.lengths[i];
          }
          ["units", "records", "rows"].forEach(function (key) { if (key in h && !Array.isArray(h[key])) { h[key] = []; } });
          if (typeof h.tiles !== "object" || h.tiles === null) { h.tiles = {}; }
          h.head = all.length > head.length ? all : head;
          h.path = path;
          return h;
        });
      });
    }
    return headers[path];
  }

  /* item i of a pack (from the bytes already here when it lies in them) */
  function item(h, i) {
    if (!whole(i, 0, h.items.length - 1)) { return fail(h.path + " has no item " + i); }
    var loc = h.items[i], o = loc[0], n = loc[1];
    if (o + n <= h.head.length) { return Promise.resolve(h.head.subarray(o, o + n)); }
    return range(h.path, o, n);
  }

  /* items [first, last] of a pack in one request: a run of tiles */
  function items(h, first, last) {
    if (!whole(first, 0, h.items.length - 1) || !whole(last, first, h.items.length - 1)) { return fail(h.path + " has no such items"); }
    var o = h.items[first][0], end = h.items[last][0] + h.items[last][1];
    var got = end <= h.head.length ? Promise.resolve(h.head.subarray(o, end)) : range(h.path, o, end - o);
    return got.then(function (b) {
      var out = [];
      for (var i = first; i <= last; i++) { out.push(b.subarray(h.items[i][0] - o, h.items[i][0] - o + h.items[i][1])); }
      return out;
    });
  }

  function record(bytes) {
    var n = bytes.length >= 4 ? u32(bytes, 0) : Infinity;
    if (4 + n > bytes.length) { throw new Error("a record shorter than its own length"); }
    var meta = JSON.parse(decoder.decode(bytes.subarray(4, 4 + n)));
    if (!meta || typeof meta !== "object") { throw new Error("a record that is not an object"); }
    var blobs = meta.blobs && typeof meta.blobs === "object" ? meta.blobs : {};
    meta.blob = function (name) {
      var loc = blobs[name];
      return Array.isArray(loc) && whole(loc[0], 0, bytes.length) && whole(loc[1], 0, bytes.length - loc[0]) ?
        bytes.subarray(loc[0], loc[0] + loc[1]) : null;
    };
    meta.pictures = list(meta.pictures, 16);
    meta.related = list(meta.related, 256);
    meta.labels = list(meta.labels, 256).filter(function (x) {      /* [source, concept, category, score, rank, p or threshold] */
      return Array.isArray(x) && typeof x[0] === "string" && typeof x[1] === "string" && typeof x[2] === "string" &&
        (x[3] === null || typeof x[3] === "number") && whole(x[4], -1, 1000) && (x[5] === null || typeof x[5] === "number");
    });
    meta.map = Array.isArray(meta.map) && meta.map.length === 2 && meta.map.every(function (v) { return typeof v === "number" && v >= 0 && v <= 1; }) ? meta.map : null;
    return meta;
  }

  function blobUrl(bytes, type) { return URL.createObjectURL(new Blob([bytes], { type: type || "image/webp" })); }

  window.AtlasPacks = {
    stats: stats,
    add: function (path, b64) {                                         /* called by a pack's script twin */
      var text = atob(b64), b = new Uint8Array(text.length);
      for (var i = 0; i < text.length; i++) { b[i] = text.charCodeAt(i); }
      stats.bytes += b.length;
      if (pending[path]) { pending[path](b); delete pending[path]; }
    }
  };

  /* ---- ids and addresses ----------------------------------------------------------------------- */
  function pad(n, width) { n = String(n); while (n.length < width) { n = "0" + n; } return n; }
  function fill(template, values) {                                     /* atlas.format.fill */
    return template.replace(/\{(\w+)(?::(\d+))?\}/g, function (_, key, width) { return pad(values[key], width ? +width : 0); });
  }
  function unitId(model, site, layer, unit) { return fill(layout.unit_id, { model: model, site: site, layer: layer, unit: unit }); }
  var ID = new RegExp(layout.unit_id_pattern);
  function parseId(text) {
    var m = ID.exec(text);
    return m ? { model: m.groups.model, site: m.groups.site, layer: parseInt(m.groups.layer, 10),
                 unit: parseInt(m.groups.unit, 10), id: text } : null;
  }
  function unitPack(u) { return fill(layout.unit_pack, { model: u.model, site: u.site, layer: u.layer, pack: Math.floor(u.unit / PACK_UNITS) }); }
  function thumbPack(view, row) { return fill(layout.thumb_pack, { view: view, bucket: Math.floor(row / THUMB_ROWS) }); }
  function unitHref(id) { return root + layout.unit_view + "#" + id; }
  function layerHref(u) {
    var page = Math.floor(u.unit / PACK_UNITS) + 1;
    return root + fill(page === 1 ? layout.first_page : layout.other_page, { model: u.model, site: u.site, layer: u.layer, page: page });
  }

  /* the tile of any unit, by id (related units, search results, analysis figures) */
  function tileOf(id, part) {
    var u = parseId(id);
    if (!u) { return fail("not a unit id"); }
    return header(unitPack(u)).then(function (h) {
      var at = h.units.indexOf(u.unit);
      var column = h.tiles[part || "viz"] || h.tiles[Object.keys(h.tiles)[0]];
      if (at < 0 || !column || column[at] < 0) { return null; }
      return item(h, column[at]);
    });
  }

  /* images that load their tile when they come into view */
  var lazy = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (!e.isIntersecting) { return; }
      lazy.unobserve(e.target);
      fillTile(e.target);
    });
  }, { rootMargin: "200px" }) : null;
  function fillTile(img) {
    tileOf(img.getAttribute("data-tile"), img.getAttribute("data-part")).then(function (b) {
      if (b) { img.src = blobUrl(b); } else { img.classList.add("missing"); }
    }, function () { img.classList.add("missing"); });
  }
  function lazyTile(img, id, part) {
    img.setAttribute("data-tile", id);
    if (part) { img.setAttribute("data-part", part); }
    if (lazy) { lazy.observe(img); } else { fillTile(img); }
  }
  Array.prototype.forEach.call(document.querySelectorAll("img[data-tile]"), function (img) { lazyTile(img, img.getAttribute("data-tile")); });

  /* ---- tiles: each a.tile names the pictures it has (data-parts); the script gives it their images ---- */
  var LABELS = layout.picture_labels;
  Array.prototype.forEach.call(document.querySelectorAll("a.tile[data-parts]"), function (a) {
    var pics = a.querySelector(".pics"), parts = a.getAttribute("data-parts").split(" ").filter(Boolean);
    var uid = a.getAttribute("href").split("#")[1] || "";
    parts.forEach(function (part) {
      var img = document.createElement("img");
      img.className = "pic pic-" + part;
      img.alt = "Optimized image (" + (LABELS[part] || part) + ") of unit " + uid;
      img.width = 96; img.height = 96;
      img.setAttribute("data-unit", a.getAttribute("data-unit"));
      img.setAttribute("data-layer", a.getAttribute("data-layer"));
      pics.appendChild(img);
    });
    if (!parts.length) { pics.className = "noimg"; }
  });

  /* ---- layer pages: tiles of the pack, filter and sort --------------------------------------------- */
  function loadLayerTiles(list, part) {
    var path = list.getAttribute("data-pack");
    return header(path).then(function (h) {
      var column = h.tiles[part];
      if (!column) { return; }
      var present = column.filter(function (i) { return i >= 0; });
      if (!present.length) { return; }
      return items(h, Math.min.apply(null, present), Math.max.apply(null, present)).then(function (bytes) {
        var first = Math.min.apply(null, present);
        Array.prototype.forEach.call(list.querySelectorAll("img.pic-" + part), function (img) {
          var at = h.units.indexOf(parseInt(img.getAttribute("data-unit"), 10));
          if (at >= 0 && column[at] >= 0) { img.src = blobUrl(bytes[column[at] - first]); }
        });
      });
    }).catch(function (e) { list.setAttribute("data-error", String(e.message || e)); });
  }
  var layerList = document.querySelector("ul.tiles[data-pack]");
  if (layerList) {
    var loaded = {};
    var showPart = function (part) {
      if (!loaded[part]) { loaded[part] = loadLayerTiles(layerList, part); }
      return loaded[part];
    };
    var checked = document.querySelector(".picture-switch input:checked");
    showPart(checked ? checked.value : "viz");
    Array.prototype.forEach.call(document.querySelectorAll(".picture-switch input"), function (r) {
      r.addEventListener("change", function () { if (r.checked) { showPart(r.value); } });
    });
  }

  var filterForm = document.querySelector("form.tile-filter");
  if (filterForm) {
    filterForm.hidden = false;
    var tileList = document.querySelector("ul.tiles");
    var tileItems = Array.prototype.slice.call(tileList.children);
    var flagSelect = document.getElementById("flag-filter"), sortSelect = document.getElementById("tile-sort");
    var count = document.getElementById("filter-count");
    var number = function (li, key) {
      var v = li.firstElementChild.getAttribute("data-" + key);
      return v === "" || v === null ? -Infinity : parseFloat(v);
    };
    var conceptSelect = document.getElementById("concept-filter");
    var apply = function () {
      var flag = flagSelect.value, key = sortSelect.value, shown = 0;
      var concept = conceptSelect ? conceptSelect.value : "";                /* "source:category" */
      var order = tileItems.slice();
      if (key !== "unit") { order.sort(function (a, b) { return number(b, key) - number(a, key); }); }
      order.forEach(function (li) {
        var flags = (li.firstElementChild.getAttribute("data-flags") || "").split(" ");
        var kinds = (li.firstElementChild.getAttribute("data-concepts") || "").split(" ");
        li.hidden = (flag !== "" && flags.indexOf(flag) === -1) || (concept !== "" && kinds.indexOf(concept) === -1);
        if (!li.hidden) { shown += 1; }
        tileList.appendChild(li);
      });
      count.textContent = shown + " of " + tileItems.length + " units";
    };
    flagSelect.addEventListener("change", apply);
    sortSelect.addEventListener("change", apply);
    if (conceptSelect) { conceptSelect.addEventListener("change", apply); }
  }

  /* ---- strips (model and index pages): each list of tiles is one range of the model's strips pack ---- */
  Array.prototype.forEach.call(document.querySelectorAll("ul.tiles[data-strips]"), function (ul) {
    var load = function () {
      header(ul.getAttribute("data-strips")).then(function (h) {
        var want = ul.getAttribute("data-strip"), idx = [];
        var imgs = Array.prototype.slice.call(ul.querySelectorAll("img[data-unit]"));
        var find = function (img) {
          if (want === "featured") {
            var f = h.featured.filter(function (x) { return x[0] + "/" + x[1] === img.getAttribute("data-layer"); })[0];
            return f ? f[3] : -1;
          }
          var s = h.strips.filter(function (x) { return x.site + "/" + x.layer === want; })[0];
          var at = s ? s.units.indexOf(parseInt(img.getAttribute("data-unit"), 10)) : -1;
          return at >= 0 ? s.items[at] : -1;
        };
        imgs.forEach(function (img) { idx.push(find(img)); });
        var present = idx.filter(function (i) { return i >= 0; });
        if (!present.length) { return; }
        var first = Math.min.apply(null, present), last = Math.max.apply(null, present);
        return items(h, first, last).then(function (bytes) {
          imgs.forEach(function (img, k) { if (idx[k] >= 0) { img.src = blobUrl(bytes[idx[k] - first]); } });
        });
      }).catch(function (e) { ul.setAttribute("data-error", String(e.message || e)); });
    };
    if (lazy) {
      var seen = new IntersectionObserver(function (entries) {
        if (entries.some(function (e) { return e.isIntersecting; })) { seen.disconnect(); load(); }
      }, { rootMargin: "300px" });
      seen.observe(ul);
    } else { load(); }
  });

  /* ---- activation maps and charts ----------------------------------------------------------------- */
  var RAMP = [[0, 0, 0, 0], [120, 0, 80, 90], [220, 40, 40, 150], [255, 160, 0, 190], [255, 255, 80, 215]];
  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    var lo = Math.min(RAMP.length - 2, Math.floor(t)), f = t - lo, out = [];
    for (var c = 0; c < 4; c++) { out.push(Math.round(RAMP[lo][c] * (1 - f) + RAMP[lo + 1][c] * f)); }
    return out;
  }
  /* the level of patch i of map m in quantized maps (atlas.media.quantize_map: 8 or 4 bits a patch) */
  function level(bytes, bits, cells, m, i) {
    if (bits === 4) { var k = m * cells + i, b = bytes[k >> 1]; return ((k & 1) ? b & 15 : b >> 4) / 15; }
    return bytes[m * cells + i] / 255;
  }
  /* a canvas of map m: 0 transparent; nothing drawn for a grid or bytes that do not fit together */
  function mapCanvas(bytes, h, w, bits, m) {
    var canvas = document.createElement("canvas");
    canvas.className = "overlay";
    canvas.setAttribute("aria-hidden", "true");
    bits = bits === 4 ? 4 : 8; m = m || 0;
    if (!bytes || !whole(h, 1, MAX_GRID) || !whole(w, 1, MAX_GRID) || h * w > MAX_CELLS || !whole(m, 0, MAX_LIST) ||
        bytes.length * 8 < (m + 1) * h * w * bits) { canvas.width = 1; canvas.height = 1; return canvas; }
    canvas.width = w; canvas.height = h;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
    for (var i = 0; i < h * w; i++) {
      var t = level(bytes, bits || 8, h * w, m || 0, i);
      img.data.set(t > 0 ? ramp(t) : [0, 0, 0, 0], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function fmt(x, digits) {                                             /* atlas.charts._fmt */
    digits = digits || 1;
    if (x === 0) { return "0"; }
    if (Math.abs(x) >= 100 || Math.abs(x) < 0.01) { return x.toExponential(digits - 1).replace("e+", "e"); }
    return String(Number(x.toPrecision(6)));
  }
  var LABEL_SOURCES = list(layout.label_sources, 16);                   /* [name, title, measure]: atlas.labels.SOURCES */
  function num(x, digits) { return x === null || x === undefined || !isFinite(x) ? "\u2013" : String(Number(x.toPrecision(digits || 3))); }
  function pct(x, digits) { return x === null || x === undefined || !isFinite(x) ? "\u2013" : (100 * x).toFixed(digits || 0) + "%"; }

  function position(value, edges) {
    if (value <= edges[0]) { return 0; }
    if (value >= edges[edges.length - 1]) { return edges.length - 1; }
    var i = 0;
    while (i < edges.length - 2 && edges[i + 1] <= value) { i++; }
    var lo = edges[i], hi = edges[i + 1];
    if (lo > 0 && hi > 0) { return i + Math.log(value / lo) / Math.log(hi / lo); }
    if (lo < 0 && hi < 0) { return value !== 0 ? i + Math.log(-lo / -value) / Math.log(lo / hi) : i + 1; }
    return i + (value - lo) / (hi - lo);
  }
  /* bars of counts over symlog edges, the marked value (the optimized image's activation) */
  function histogram(sparse, edges, marker, title) {
    edges = list(edges, MAX_BINS + 1).filter(function (x) { return typeof x === "number" && isFinite(x); });
    if (edges.length < 2) { return document.createTextNode(""); }
    var counts = new Array(edges.length - 1).fill(0);
    list(sparse, MAX_BINS).forEach(function (p) {        /* [bin, count], each checked: a bin 1e8 is not a bin */
      if (Array.isArray(p) && whole(p[0], 0, counts.length - 1) && whole(p[1], 0, Number.MAX_SAFE_INTEGER)) { counts[p[0]] = p[1]; }
    });
    var nz = counts.map(function (c, i) { return c ? i : -1; }).filter(function (i) { return i >= 0; });
    var lo = nz.length ? nz[0] : 0, hi = nz.length ? nz[nz.length - 1] + 1 : counts.length;
    if (marker !== null && isFinite(marker)) {
      var m = position(marker, edges);
      lo = Math.min(lo, Math.floor(m)); hi = Math.max(hi, Math.ceil(m) + 1);
    }
    lo = Math.max(0, lo - 1); hi = Math.min(counts.length, hi + 1);
    var width = 560, height = 150, padL = 8, padB = 30, padT = 22, plotW = width - 2 * padL, plotH = height - padB - padT;
    var step = plotW / Math.max(hi - lo, 1), top = Math.max.apply(null, [1].concat(counts.slice(lo, hi)));
    var s = svg("svg", { "class": "chart", viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": title });
    s.appendChild(svg("title", {}, title));
    for (var i = lo; i < hi; i++) {
      if (!counts[i]) { continue; }
      var h = Math.max(1, plotH * counts[i] / top), x = padL + (i - lo) * step;
      var bar = svg("rect", { "class": "bar", x: x.toFixed(1), y: (padT + plotH - h).toFixed(1), width: Math.max(step - 1, 1).toFixed(1), height: h.toFixed(1) });
      bar.appendChild(svg("title", {}, fmt(edges[i], 2) + " to " + fmt(edges[i + 1], 2) + ": " + counts[i]));
      s.appendChild(bar);
    }
    s.appendChild(svg("line", { "class": "axis", x1: padL, y1: padT + plotH, x2: width - padL, y2: padT + plotH }));
    var labelled = [];
    for (var j = lo; j <= hi; j++) { if (edges[j] === 0 || Math.abs(Math.log10(Math.abs(edges[j])) % 1) < 1e-9) { labelled.push(j); } }
    var every = Math.max(1, Math.floor(labelled.length / 6));
    labelled.forEach(function (j, k) {
      if (k % every) { return; }
      s.appendChild(svg("text", { "class": "tick", x: (padL + (j - lo) * step).toFixed(1), y: height - 10, "text-anchor": "middle" }, fmt(edges[j])));
    });
    if (marker !== null && isFinite(marker)) {
      var mx = padL + (position(marker, edges) - lo) * step, anchor = mx > width * 0.7 ? "end" : "start";
      s.appendChild(svg("line", { "class": "marker", x1: mx.toFixed(1), y1: padT - 4, x2: mx.toFixed(1), y2: padT + plotH }));
      s.appendChild(svg("text", { "class": "marker-label", x: (mx + (anchor === "end" ? -4 : 4)).toFixed(1), y: padT - 8, "text-anchor": anchor }, "optimized image"));
    }
    return s;
  }
  /* a line of (x, y) points */
  function lineChart(points, title, xLabel, yLabel) {
    points = list(points).filter(function (p) { return p[1] !== null && isFinite(p[1]) && isFinite(p[0]); });
    if (!points.length) { return document.createTextNode(""); }
    var xs = points.map(function (p) { return p[0]; }), ys = points.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (y1 === y0) { y1 = y0 + 1; }
    if (x1 === x0) { x1 = x0 + 1; }
    var width = 420, height = 120, padL = 48, padR = 12, padT = 14, padB = 40, pw = width - padL - padR, ph = height - padT - padB;
    var sx = function (x) { return padL + (x - x0) / (x1 - x0) * pw; }, sy = function (y) { return padT + ph - (y - y0) / (y1 - y0) * ph; };
    var s = svg("svg", { "class": "chart", viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": title });
    s.appendChild(svg("title", {}, title));
    s.appendChild(svg("line", { "class": "axis", x1: padL, y1: padT + ph, x2: padL + pw, y2: padT + ph }));
    s.appendChild(svg("line", { "class": "axis", x1: padL, y1: padT, x2: padL, y2: padT + ph }));
    [y0, (y0 + y1) / 2, y1].forEach(function (v) { s.appendChild(svg("text", { "class": "tick", x: padL - 4, y: (sy(v) + 4).toFixed(1), "text-anchor": "end" }, fmt(Number(v.toFixed(3))))); });
    [x0, x1].forEach(function (v) { s.appendChild(svg("text", { "class": "tick", x: sx(v).toFixed(1), y: padT + ph + 14, "text-anchor": "middle" }, fmt(v))); });
    s.appendChild(svg("text", { "class": "label", x: (padL + pw / 2).toFixed(1), y: padT + ph + 30, "text-anchor": "middle" }, xLabel));
    s.appendChild(svg("polyline", { "class": "series s0", points: points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ") }));
    return s;
  }

  /* ---- the unit view ---------------------------------------------------------------------------- */
  var view = document.getElementById("unit-view");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function link(href, text, cls) { var a = el("a", cls, text); a.href = href; return a; }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } return node; }
  function dd(dl, term, content) {
    dl.appendChild(el("dt", null, term));
    var d = el("dd");
    (Array.isArray(content) ? content : [content]).forEach(function (c) { d.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    dl.appendChild(d);
  }

  /* the units before and after ``unit`` in its layer (info.runs: the layer's [start, stop) runs, sorted) */
  function neighbours(info, unit) {
    var prev = null, next = null;
    list(info.runs, 1 << 20).forEach(function (r) {
      if (!Array.isArray(r) || !whole(r[0], 0, Number.MAX_SAFE_INTEGER) || !whole(r[1], r[0], Number.MAX_SAFE_INTEGER)) { return; }
      if (r[0] < unit) { prev = Math.min(unit - 1, r[1] - 1); }
      if (next === null && r[1] - 1 > unit) { next = Math.max(unit + 1, r[0]); }
    });
    return { prev: prev, next: next };
  }

  function showUnit() {
    var text = location.hash.slice(1), u = null;
    try { u = parseId(decodeURIComponent(text)); } catch (e) { u = null; }      /* "%" alone is a URIError */
    var status = document.getElementById("unit-status");
    if (!u) {
      view.setAttribute("data-state", "missing");
      status.textContent = location.hash ? "\u201c" + text + "\u201d is not a unit id (model/site/Lll/Uuuuu)." : "No unit chosen: open a unit from a layer page or the search.";
      return Promise.resolve();
    }
    view.setAttribute("data-state", "loading");
    status.textContent = "Loading " + u.id + "\u2026";
    return header(unitPack(u)).then(function (h) {
      var at = h.units.indexOf(u.unit);
      if (at < 0) { throw new Error(u.id + " is not in this atlas"); }
      return item(h, h.records[at]).then(function (bytes) {
        var r = record(bytes);
        if (r.id !== u.id) { throw new Error("the pack holds " + r.id + " where " + u.id + " should be"); }
        render(u, h, r);
        status.textContent = "";
        view.setAttribute("data-state", "ready");
      });
    }).catch(function (e) {
      view.setAttribute("data-state", "missing");
      status.textContent = String(e.message || e) + ".";
    });
  }

  function render(u, h, r) {
    var info = h.layer && typeof h.layer === "object" ? h.layer : {}, probe = r.probe && typeof r.probe === "object" ? r.probe : null;
    if (typeof info.parts !== "object" || info.parts === null) { info.parts = {}; }
    if (probe) {
      probe.topk = list(probe.topk, 1024); probe.classes = list(probe.classes, 1024); probe.paths = list(probe.paths, 1024);
      probe.top_classes = list(probe.top_classes, 64); probe.stats = probe.stats || {};
    }
    var flags = probe && probe.flags && typeof probe.flags === "object" ? probe.flags : null;
    if (flags) { flags.names = list(flags.names, 16); }
    document.title = u.id + " \u00b7 " + (view.getAttribute("data-atlas") || "");
    view.setAttribute("data-unit", u.id);
    var crumbs = clear(document.getElementById("unit-crumbs"));
    [[u.model, root + u.model + "/index.html"], [u.site + " \u00b7 layer " + u.layer, layerHref(u)], ["unit " + u.unit, null]].forEach(function (c) {
      var li = el("li");
      if (c[1]) { li.appendChild(link(c[1], c[0])); } else { var s = el("span", null, c[0]); s.setAttribute("aria-current", "page"); li.appendChild(s); }
      crumbs.appendChild(li);
    });
    document.getElementById("unit-id").textContent = u.id;
    var badges = clear(document.getElementById("badges"));
    (flags ? flags.names : []).forEach(function (name) {
      var b = el("li", "badge badge-" + name, name.replace("_", " ") + (name === "class_selective" && flags.class_name ? ": " + flags.class_name : ""));
      b.setAttribute("data-flag", name);
      badges.appendChild(b);
    });
    var nb = neighbours(info, u.unit);
    [["prev", nb.prev], ["next", nb.next]].forEach(function (p) {
      var a = document.getElementById(p[0]);
      if (p[1] === null) { a.removeAttribute("href"); a.classList.add("off"); }
      else { a.href = unitHref(unitId(u.model, u.site, u.layer, p[1])); a.classList.remove("off"); }
    });
    var up = document.getElementById("up");
    up.href = layerHref(u); up.textContent = "layer " + u.layer;

    /* pictures */
    var pics = clear(document.getElementById("pictures"));
    var grid = info.grid || [1, 1];
    r.pictures.forEach(function (p) {
      var part = info.parts[p.part] || { label: p.part, recipe: {} };
      var fig = el("figure", "frame large picture-" + p.part);
      fig.setAttribute("data-part", p.part);
      fig.setAttribute("data-activation", String(p.activation));
      var img = el("img", "photo");
      img.alt = "Image optimized (" + part.label + ") to maximally activate unit " + u.id;
      var size = info.image_size || [224, 224];
      img.width = size[1]; img.height = size[0];
      var src = p.image_is_tile ? item(h, h.tiles[p.part][h.units.indexOf(u.unit)]) : Promise.resolve(r.blob(p.part + "/image"));
      src.then(function (b) { img.src = blobUrl(b); });
      fig.appendChild(img);
      fig.appendChild(mapCanvas(r.blob(p.part + "/map"), grid[0], grid[1]));
      var cap = el("figcaption");
      cap.appendChild(el("span", "picture-name", part.label));
      cap.appendChild(document.createTextNode(" activation "));
      cap.appendChild(el("strong", null, num(p.activation, 4)));
      if (probe && probe.stats.max !== null) {
        cap.appendChild(document.createTextNode(probe.stats.max > 0 ? " \u00b7 " + (p.activation / probe.stats.max).toFixed(1) + "\u00d7 the best dataset image" : " \u00b7 dataset max " + num(probe.stats.max)));
      }
      fig.appendChild(cap);
      pics.appendChild(fig);
    });
    if (!r.pictures.length) { pics.appendChild(el("p", "note", "This unit has no optimized image yet (the atlas holds its probe only).")); }

    /* facts */
    var facts = clear(document.getElementById("facts"));
    dd(facts, "Model", [link(root + u.model + "/index.html", u.model), " (" + (info.arch || "") + ")"]);
    dd(facts, "Weights", el("code", "wrap", info.weights || ""));
    dd(facts, "Site, layer, unit", u.site + " \u00b7 layer " + u.layer + " \u00b7 unit " + u.unit);
    dd(facts, "Patch grid", grid[0] + " \u00d7 " + grid[1]);
    if (info.sae && typeof info.sae === "object") {   /* an SAE site: which autoencoder, read how (the shard's sae record) */
      var sae = info.sae;
      dd(facts, "SAE", [sae.name + " \u00b7 " + (sae.library || sae.format) + (sae.version ? " (" + sae.version + ")" : "") +
        (sae.architecture ? " " + sae.architecture : "") + (sae.run ? " run " + sae.run : "") + " \u00b7 " + sae.d_sae +
        " latents on " + sae.hook + " of block " + u.layer + " \u00b7 ", el("code", "wrap", "sha256:" + sae.sha256)]);
      if (sae.encoder) { dd(facts, "Encoder", el("code", "wrap", String(sae.encoder))); }
    }
    if (probe && probe.top_classes.length) {
      var ul = el("ul", "classes");
      probe.top_classes.forEach(function (c) { var li = el("li", null, c[0] + " "); li.appendChild(el("span", "count", c[1] + "/" + probe.topk.length)); ul.appendChild(li); });
      dd(facts, "Top classes", ul);
    }
    if (flags) {
      dd(facts, "Character", pct(flags.class_share) + " of its top images in one class" + (flags.class_name ? " (" + flags.class_name + ")" : "") +
        " \u00b7 fires on " + pct(flags.extent) + " of the grid (extent) \u00b7 " + pct(flags.concentration) + " of its activation on its strongest token");
    }
    if (probe) {
      var s = probe.stats;
      var stat = ["mean " + num(s.mean) + " \u00b7 max " + num(s.max) + " \u00b7 positive on " + pct(s.positive, 1) + " of " + s.images + " images"];
      if (s.positive === 0) { stat.push(" \u00b7 "); stat.push(el("strong", "dead-flag", "dead unit")); stat.push(" (no image scores above 0)"); }
      dd(facts, "Dataset", stat);
    }
    var perma = view.getAttribute("data-base") ? view.getAttribute("data-base") + layout.unit_view + "#" + u.id : new URL(unitHref(u.id), location.href).href;
    dd(facts, "Permalink", link(unitHref(u.id), perma));

    /* where it sits: its layer's map, small, with this unit marked */
    var mapSection = document.getElementById("map-section");
    mapSection.hidden = !r.map;
    if (r.map) {
      document.getElementById("map-link").href = root + fill(layout.map_page, u) + "#" + u.id;
      miniMap(document.getElementById("mini-map"), fill(layout.map_data, u), u.unit);
    }

    /* labels: per source, its best concepts, each a search for the units it describes */
    var labelBox = clear(document.getElementById("labels"));
    var sourceInfo = info.labels && typeof info.labels === "object" && info.labels.sources && typeof info.labels.sources === "object" ? info.labels.sources : {};
    document.getElementById("labels-section").hidden = !r.labels.length;
    LABEL_SOURCES.forEach(function (source) {
      var mine = r.labels.filter(function (x) { return x[0] === source[0]; });
      if (!mine.length) { return; }
      var about = sourceInfo[source[0]] || {};
      var group = el("div", "label-source");
      group.setAttribute("data-source", source[0]);
      var head = el("h3", null, source[1]);
      head.appendChild(el("span", "note", " " + source[2] + (about.concept_set ? " \u00b7 " + about.concept_set : "")));
      group.appendChild(head);
      var ul = el("ul", "labels");
      mine.forEach(function (x) {
        var li = el("li", "label" + (x[4] < 0 ? " formula" : ""));
        li.setAttribute("data-concept", x[1]);
        li.setAttribute("data-category", x[2]);
        var words = x[4] < 0 ? x[1].split(" OR ") : [x[1]];
        words.forEach(function (w, i) {
          if (i) { li.appendChild(document.createTextNode(" OR ")); }
          li.appendChild(link(root + "search.html?q=" + encodeURIComponent(w), w, "concept"));
        });
        li.appendChild(el("span", "category", x[2]));
        var score = el("span", "label-score", source[2] + " " + num(x[3], 3));
        if (source[0] === "invert" && x[5] !== null) { score.textContent += " \u00b7 p " + (x[5] < 1e-4 ? "< 1e-4" : num(x[5], 2)); }
        if (source[0] === "netdissect" && x[3] !== null && about.iou_threshold) {
          score.textContent += x[3] >= about.iou_threshold ? " \u00b7 detector" : "";
        }
        li.appendChild(score);
        ul.appendChild(li);
      });
      group.appendChild(ul);
      labelBox.appendChild(group);
    });

    /* top images */
    var gallery = clear(document.getElementById("topk"));
    var note = document.getElementById("topk-note");
    note.hidden = !!probe;
    if (probe) {
      var k = probe.topk.length, maps = r.blob("topk/maps");
      probe.topk.forEach(function (t, i) {
        var li = el("li");
        li.setAttribute("data-row", String(t[0]));
        li.setAttribute("data-score", String(t[1]));
        var fig = el("figure", "frame");
        var img = el("img", "photo");
        img.width = 128; img.height = 128; img.decoding = "async";
        img.alt = "Dataset image " + (i + 1) + ": " + (probe.classes[i] || "unlabelled") + " (" + (probe.paths[i] || t[0]) + "), score " + num(t[1]);
        thumbnail(info.probe.view, t[0]).then(function (b) { if (b) { img.src = blobUrl(b); } else { img.classList.add("missing"); } },
                                             function () { img.classList.add("missing"); });
        fig.appendChild(img);
        fig.appendChild(mapCanvas(maps, grid[0], grid[1], probe.maps_bits, i));
        var cap = el("figcaption");
        cap.appendChild(el("span", "score", num(t[1])));
        if (probe.classes[i]) { cap.appendChild(document.createTextNode(" ")); cap.appendChild(el("span", "cls", probe.classes[i])); }
        var path = el("span", "path", probe.paths[i] || String(t[0]));
        path.title = probe.paths[i] || "";
        cap.appendChild(path);
        fig.appendChild(cap);
        li.appendChild(fig);
        gallery.appendChild(li);
      });
      if (!k) { note.hidden = false; note.textContent = "No dataset image scored above the rest for this unit."; }
    }

    /* related units */
    var rel = clear(document.getElementById("related"));
    document.getElementById("related-section").hidden = !r.related.length;
    var scopes = {};
    r.related.forEach(function (x) { (scopes[x[0]] = scopes[x[0]] || []).push(x); });
    Object.keys(scopes).forEach(function (scope) {
      rel.appendChild(el("h3", null, scope.charAt(0).toUpperCase() + scope.slice(1)));
      var strip = el("ul", "related-strip");
      scopes[scope].forEach(function (x) {
        var li = el("li"), a = link(unitHref(x[1]), null, "related-unit");
        a.setAttribute("data-id", x[1]);
        a.setAttribute("data-corr", String(x[2]));
        var img = el("img");
        img.alt = ""; img.width = 40; img.height = 40;
        img.setAttribute("aria-hidden", "true");
        lazyTile(img, x[1]);
        a.appendChild(img);
        a.appendChild(el("code", null, x[1]));
        var c = el("span", "corr", " r = " + (x[2] === null ? "\u2013" : x[2].toFixed(2)));
        c.title = "correlation";
        a.appendChild(c);
        li.appendChild(a);
        strip.appendChild(li);
      });
      rel.appendChild(strip);
    });

    /* scores over the dataset */
    var histFig = clear(document.getElementById("hist"));
    document.getElementById("stats-section").hidden = !probe;
    if (probe) {
      var marker = r.pictures.length && r.pictures[0].part === "viz" ? r.pictures[0].activation : null;
      histFig.appendChild(histogram(probe.stats.hist, info.probe.hist_edges, marker, "scores of all dataset images for " + u.id));
      histFig.appendChild(el("figcaption", null, "Histogram of every dataset image's score (mean patch activation; log-spaced bins)" + (marker !== null ? ", with the optimized image's activation marked." : ".")));
    }

    /* how each image was made */
    var recipes = clear(document.getElementById("recipes"));
    r.pictures.forEach(function (p) {
      var part = info.parts[p.part] || { label: p.part, recipe: {}, loss_steps: [] };
      var sec = el("section", "recipe");
      sec.appendChild(el("h2", null, "How the image was made" + (r.pictures.length > 1 ? " (" + part.label + ")" : "")));
      var two = el("div", "two"), fig = el("figure");
      var loss = list(p.loss), lossSteps = list(part.loss_steps);
      var steps = lossSteps.length ? lossSteps : loss.map(function (_, i) { return i; });
      fig.appendChild(lineChart(steps.map(function (st, i) { return [st, loss[i]]; }), "loss during optimization (" + part.label + ")", "step", "loss"));
      fig.appendChild(el("figcaption", null, "Loss (\u2212activation + \u03bb\u00b7TV on augmented copies) during optimization."));
      two.appendChild(fig);
      var table = el("table"), caption = el("caption");
      caption.appendChild(document.createTextNode("Recipe (preset "));
      caption.appendChild(el("code", null, part.recipe.preset || "?"));
      caption.appendChild(document.createTextNode("), run seed " + part.seed + ", unit seed "));
      caption.appendChild(el("code", null, String(p.seed)));
      table.appendChild(caption);
      var tb = el("tbody");
      Object.keys(part.recipe).forEach(function (key) {
        if (key === "preset") { return; }
        var tr = el("tr"), th = el("th", null, key);
        th.scope = "row";
        tr.appendChild(th);
        tr.appendChild(el("td", null, JSON.stringify(part.recipe[key])));
        tb.appendChild(tr);
      });
      table.appendChild(tb);
      two.appendChild(table);
      sec.appendChild(two);
      recipes.appendChild(sec);
    });

    /* raw data and citation */
    var raw = clear(document.getElementById("raw"));
    raw.appendChild(document.createTextNode("Stored in "));
    raw.appendChild(link(root + "../" + r.shard, null)).appendChild(el("code", null, r.shard));
    raw.appendChild(document.createTextNode(", row " + r.row + " (see "));
    raw.appendChild(link(root + "downloads.html", "Downloads"));
    raw.appendChild(document.createTextNode(")."));
    document.getElementById("snippet").textContent = "import atlas\nu = atlas.open(" + JSON.stringify(view.getAttribute("data-open")) +
      ").unit(" + JSON.stringify(u.model) + ", " + u.layer + ", " + u.unit + (u.site !== "ffn" ? ", site=" + JSON.stringify(u.site) : "") + ")";
    var key = view.getAttribute("data-key") + "_" + u.id.replace(/[^A-Za-z0-9]/g, "_");
    document.getElementById("bibtex").textContent = "@misc{" + key + ",\n  title        = {" + bibtex("Unit " + u.id + " of " + view.getAttribute("data-atlas") +
      ", version " + view.getAttribute("data-version")) + "},\n  howpublished = {\\url{" + perma + "}},\n  note         = {Unit id " + bibtex(u.id) +
      "; feature visualization after Ghiasi et al. (2022)}\n}";
  }

  function bibtex(text) {                                               /* atlas.website.cite.bibtex_escape */
    return String(text).replace(/[\\{}]/g, function (c) { return c === "\\" ? "\\textbackslash{}" : "\\" + c; })
      .replace(/[&%$#_]/g, function (c) { return "\\" + c; }).replace(/~/g, "\\textasciitilde{}").replace(/\^/g, "\\textasciicircum{}");
  }

  function thumbnail(viewKey, row) {
    return header(thumbPack(viewKey, row), THUMB_HEAD).then(function (h) {
      var lo = 0, hi = h.rows.length - 1;
      while (lo <= hi) {
        var mid = (lo + hi) >> 1;
        if (h.rows[mid] === row) { return item(h, mid); }
        if (h.rows[mid] < row) { lo = mid + 1; } else { hi = mid - 1; }
      }
      return null;
    });
  }

  if (view) {
    showUnit();
    window.addEventListener("hashchange", function () { showUnit().then(function () { window.scrollTo(0, 0); }); });
  }
  window.AtlasView = { show: showUnit };

  /* ---- keys ----------------------------------------------------------------------------------------- */
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  }
  function follow(id) {
    var a = document.getElementById(id);
    if (a && a.getAttribute("href")) { window.location.href = a.href; }
  }
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || typing(e)) { return; }
    if (e.key === "ArrowLeft" || e.key === "k") { follow("prev"); }
    else if (e.key === "ArrowRight" || e.key === "j") { follow("next"); }
    else if (e.key === "u") { follow("up"); }
    else if (e.key === "m") {
      var box = document.getElementById("maps");
      if (box) { box.checked = !box.checked; }
    } else if (e.key === "/") {
      var q = document.getElementById("q");
      if (q) { e.preventDefault(); q.focus(); }
    }
  });

  /* ---- search: terms (class names, flags) -> postings in chunks; ids from the layer catalog ---------- */
  var results = document.getElementById("search-results");
  var searchStatus = document.getElementById("search-status");
  var catalog = null, terms = null, query = "", chunks = {};

  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = src; s.onload = resolve; s.onerror = function () { reject(new Error("could not load " + src)); };
      document.body.appendChild(s);
    });
  }

  function showResults(found, note, more) {
    clear(results);
    found.slice(0, 200).forEach(function (item) {
      var li = el("li"), a = link(unitHref(item.id), null);
      var img = el("img", "noimg");
      img.alt = ""; img.width = 56; img.height = 56;
      lazyTile(img, item.id);
      var text = el("span");
      text.appendChild(el("code", null, item.id));
      text.appendChild(el("span", "meta", item.detail || ""));
      a.appendChild(img); a.appendChild(text); li.appendChild(a); results.appendChild(li);
    });
    searchStatus.textContent = note + (found.length > 200 ? " (first 200 shown)" : "") + (more ? " " + more : "");
  }

  /* ids: a full id, or parts of one ("L03/U0042", "3 42", "U42"), against every model's layers */
  function idMatches(q) {
    var m = q.match(/^(?:([A-Za-z0-9][A-Za-z0-9_.\-]*)\/)?(?:([a-z][a-z0-9_\-]*)\/)?L?(\d+)[\/\s]+U?(\d+)$/i) ||
            q.match(/^(?:([A-Za-z0-9][A-Za-z0-9_.\-]*)\/)?(?:([a-z][a-z0-9_\-]*)\/)?()U(\d+)$/i);
    if (!m) { return []; }
    var wantModel = m[1], wantSite = m[2];
    if (wantModel && !wantSite && !catalog.models[wantModel]) { wantSite = wantModel; wantModel = ""; }   /* "sae-x/L03/U0005" */
    var found = [];
    Object.keys(catalog.models).forEach(function (model) {
      if (wantModel && model !== wantModel) { return; }
      Object.keys(catalog.models[model]).forEach(function (site) {
        if (wantSite && site !== wantSite.toLowerCase()) { return; }
        var layers = catalog.models[model][site];
        Object.keys(layers).forEach(function (key) {
          var layer = parseInt(key, 10), unit = parseInt(m[4], 10);
          if (m[3] !== "" && parseInt(m[3], 10) !== layer) { return; }
          if (layers[key].some(function (r) { return unit >= r[0] && unit < r[1]; })) {
            found.push({ id: unitId(model, site, layer, unit), detail: model + " \u00b7 " + site + " \u00b7 layer " + layer });
          }
        });
      });
    });
    return found;
  }

  /* the terms a query names: a flag ("global", "flag:dead"); else the concepts named exactly so ("stripes",
     "concept:red") and the classes whose name contains it ("class:" for classes only); else the concepts
     whose name contains it */
  function termsOf(q) {
    var word = q.toLowerCase().replace(/^flag:\s*/, "").replace(/[\s-]+/g, "_");
    var flags = terms.filter(function (t) { return t[0] === "flag" && (t[1] === word || t[1].split("_")[0] === word); });
    if (flags.length && !/^(class|concept):/i.test(q)) { return flags.slice(0, 1); }
    var kind = (q.match(/^(class|concept):/i) || [])[1];
    var c = q.toLowerCase().replace(/^(class|concept|label):\s*/, "");
    var concepts = kind === "class" ? [] : terms.filter(function (t) { return t[0] === "concept" && t[1] === c; });
    var classes = kind === "concept" ? [] : terms.filter(function (t) { return t[0] === "class" && t[1].toLowerCase().indexOf(c) !== -1; });
    if (concepts.length || classes.length) { return concepts.concat(classes); }
    return terms.filter(function (t) { return t[0] === "concept" && t[1].indexOf(c) !== -1; });
  }

  function detailOf(t, e) {
    if (t[0] === "flag") { return t[1].replace("_", " "); }
    if (t[0] === "class") { return t[1] + ": " + pct(e[4]) + " of its top images"; }
    var source = LABEL_SOURCES[e[5]] || ["?", "?", "score"];
    return t[1] + ": " + source[0] + " " + source[2] + " " + num(e[4], 3) + (e[6] ? " (its no. " + (e[6] + 1) + " concept)" : " (its best concept)");
  }

  function chunk(term, k) {
    var name = term[3] + "-" + k;
    if (!chunks[name]) {
      chunks[name] = new Promise(function (resolve, reject) {
        pendingChunks[name] = resolve;
        loadScript(root + "search/p/" + name + ".js").catch(reject);
      });
    }
    return chunks[name];
  }
  var pendingChunks = {};

  function runSearch() {
    var ids = idMatches(query);
    if (ids.length) { showResults(ids, ids.length + " unit" + (ids.length > 1 ? "s" : "") + " with that id"); return; }
    var found = termsOf(query);
    if (!found.length) { showResults([], "No unit id, class, concept or flag matches \u201c" + query + "\u201d."); return; }
    searchStatus.textContent = "Loading\u2026";
    var shown = found.slice(0, 20);
    Promise.all(shown.map(function (t) { return chunk(t, 0); })).then(function (parts) {
      var items = [];
      parts.forEach(function (entries, i) {
        var t = shown[i];
        entries.forEach(function (e) {
          var id = unitId(catalog.names[e[0]], catalog.sites[e[1]], e[2], e[3]);
          /* order: concept matches by rank, then source (scores of two sources do not compare), then classes
             and flags; within each by score */
          items.push({ id: id, score: e[4], detail: detailOf(t, e),
                       order: t[0] === "concept" ? (whole(e[6], 0, 99) ? e[6] : 99) * 16 + (whole(e[5], 0, 15) ? e[5] : 15) : 10000 });
        });
      });
      items.sort(function (a, b) { return a.order - b.order || b.score - a.score; });
      var seen = {};
      items = items.filter(function (x) { if (seen[x.id]) { return false; } seen[x.id] = true; return true; });
      var total = shown.reduce(function (n, t) { return n + t[2]; }, 0);
      var named = shown.map(function (t) { return t[1]; }).slice(0, 5).join(", ") + (shown.length > 5 ? ", \u2026" : "");
      var label = shown[0][0] === "flag" ? "units flagged " + shown[0][1].replace("_", " ") :
        shown[0][0] === "concept" ? "units described as " + named + (shown.some(function (t) { return t[0] === "class"; }) ? " or whose top images are mostly of that class" : "") :
        "units whose top images are mostly " + named;
      showResults(items, total + " " + label, total > items.length ? "(the " + items.length + " strongest loaded)" : "");
    }, function (e) { searchStatus.textContent = String(e.message || e); });
  }

  window.AtlasSearch = {
    catalog: function (data) { catalog = data; start(); },
    terms: function (data) { terms = data; start(); },
    postings: function (name, entries) { if (pendingChunks[name]) { pendingChunks[name](entries); delete pendingChunks[name]; } }
  };
  function start() {
    if (!catalog || !terms) { return; }
    var params = new URLSearchParams(window.location.search);
    query = (params.get("q") || "").trim();
    var box = document.getElementById("q2");
    if (box) { box.value = query; }
    if (query) { runSearch(); } else { searchStatus.textContent = terms.length + " classes, concepts and flags indexed. Type a unit id, a class, a concept or a flag."; }
  }

  /* ---- a layer's map: units at their positions, zoom and pan, tiles of what is on screen ---------------- */
  var pendingMaps = {};
  window.AtlasMaps = { add: function (path, data) { if (pendingMaps[path]) { pendingMaps[path](data); delete pendingMaps[path]; } } };
  function mapData(path) {                              /* a layer map's data: its script hands it over */
    return new Promise(function (resolve, reject) {
      pendingMaps[path] = resolve;
      loadScript(root + path).catch(reject);
    }).then(function (data) {
      if (!data || typeof data !== "object") { throw new Error("not a layer map"); }
      data.points = list(data.points, 1 << 20).filter(function (p) {
        return Array.isArray(p) && whole(p[0], 0, 1e7) && p[1] >= 0 && p[1] <= 1 && p[2] >= 0 && p[2] <= 1 && whole(p[3], 0, 1 << 30) &&
          whole(p[4], -1, 1e6) && whole(p[6], -1, 1e7);
      });
      data.flags = list(data.flags, 64).filter(function (x) { return typeof x === "string"; });
      data.categories = list(data.categories, 1 << 16).map(String);
      data.concepts = list(data.concepts, 1 << 20).map(String);
      return data;
    });
  }
  var mapBox = document.getElementById("layer-map");
  if (mapBox) {
    mapData(mapBox.getAttribute("data-map")).then(function (data) { layerMap(mapBox, data); },
      function () { mapBox.setAttribute("data-state", "error"); });
  }

  function miniMap(canvas, path, unit) {
    var ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    mapData(path).then(function (data) {
      ctx.clearRect(0, 0, w, h);
      var mine = null;
      ctx.fillStyle = "#b8bec6";
      data.points.forEach(function (p) {
        if (p[0] === unit) { mine = p; return; }
        ctx.beginPath(); ctx.arc(p[1] * w, p[2] * h, 1.8, 0, 2 * Math.PI); ctx.fill();
      });
      if (mine) {
        ctx.fillStyle = "#d62728"; ctx.strokeStyle = "#111"; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(mine[1] * w, mine[2] * h, 6, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      }
      canvas.setAttribute("data-state", "ready");
    }, function () { canvas.setAttribute("data-state", "error"); });
  }

  function layerMap(box, data) {
    var points = data.points;
    var model = box.getAttribute("data-model"), site = box.getAttribute("data-site"), layerNo = parseInt(box.getAttribute("data-layer"), 10);
    var canvas = document.getElementById("map-canvas"), card = document.getElementById("map-card");
    var ctx = canvas.getContext("2d"), colourBy = document.getElementById("map-colour");
    var PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
    /* a tile's side in map units; tiles are drawn (and fetched) once they are 28 px on screen and at most 60 are
       in view, so the first screen of a large layer costs no tile request; fetching waits for the view to rest */
    var TILE = 0.045, MIN_TILE_PX = 28, MAX_TILES = 60, MAX_LOADS = 6, REST_MS = 150;
    var view = { scale: 1, x: 0, y: 0 }, size = { w: 0, h: 0, dpr: 1 }, hover = -1, tiles = {}, loading = 0, queue = [], rest = 0;
    var byUnit = {};
    points.forEach(function (p, i) { byUnit[p[0]] = i; });
    var fetched = { tiles: 0 };
    window.AtlasMap = { view: view, fetched: fetched, points: points, screen: toScreen, visible: visibleTiles, draw: draw };

    function resize() {
      var r = box.getBoundingClientRect();
      size.dpr = window.devicePixelRatio || 1;
      size.w = Math.max(200, r.width); size.h = Math.max(200, Math.min(window.innerHeight * 0.8, r.width));
      canvas.width = Math.round(size.w * size.dpr); canvas.height = Math.round(size.h * size.dpr);
      canvas.style.width = size.w + "px"; canvas.style.height = size.h + "px";
      if (!view.ready) { reset(); view.ready = true; }
      draw();
    }
    function reset() { var side = Math.min(size.w, size.h); view.scale = side; view.x = (size.w - side) / 2; view.y = (size.h - side) / 2; draw(); }
    function toScreen(p) { return [view.x + p[1] * view.scale, view.y + p[2] * view.scale]; }
    function tilePx() { return TILE * view.scale; }
    function colour(p) {
      var how = colourBy ? colourBy.value : "category";
      if (how === "category") { return p[4] >= 0 ? PALETTE[p[4] % PALETTE.length] : "#9aa0a6"; }
      var bit = data.flags.indexOf(how.slice(5));
      return bit >= 0 && (p[3] >> bit) & 1 ? "#d62728" : "#c7c7c7";
    }
    function onScreen(p, margin) {
      var q = toScreen(p);
      return q[0] > -margin && q[1] > -margin && q[0] < size.w + margin && q[1] < size.h + margin;
    }
    function visibleTiles() {
      if (tilePx() < MIN_TILE_PX) { return []; }
      var shown = points.filter(function (p) { return onScreen(p, tilePx() / 2); });
      return shown.length <= MAX_TILES ? shown : [];
    }
    function draw() {
      if (!size.w) { return; }
      ctx.setTransform(size.dpr, 0, 0, size.dpr, 0, 0);
      ctx.clearRect(0, 0, size.w, size.h);
      var t = tilePx(), big = visibleTiles().length > 0;
      if (hover >= 0) {                                                    /* the hovered unit's related units */
        var from = toScreen(points[hover]);
        ctx.strokeStyle = "rgba(30, 90, 200, 0.7)"; ctx.lineWidth = 1.5;
        list(points[hover][7], 64).forEach(function (u) {
          var j = byUnit[u];
          if (j === undefined) { return; }
          var to = toScreen(points[j]);
          ctx.beginPath(); ctx.moveTo(from[0], from[1]); ctx.lineTo(to[0], to[1]); ctx.stroke();
        });
      }
      points.forEach(function (p, i) {
        if (!onScreen(p, t)) { return; }
        var q = toScreen(p), img = tiles[p[0]];
        if (big && img && img.complete) {
          ctx.drawImage(img, q[0] - t / 2, q[1] - t / 2, t, t);
          ctx.strokeStyle = colour(p); ctx.lineWidth = 2; ctx.strokeRect(q[0] - t / 2, q[1] - t / 2, t, t);
        } else {
          ctx.fillStyle = colour(p);
          ctx.beginPath(); ctx.arc(q[0], q[1], big ? 5 : Math.max(2.5, Math.min(5, t / 6)), 0, 2 * Math.PI); ctx.fill();
        }
        if (i === hover) { ctx.strokeStyle = "#111"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(q[0], q[1], big ? t / 2 + 3 : 8, 0, 2 * Math.PI); ctx.stroke(); }
      });
      clearTimeout(rest);
      if (big) { rest = setTimeout(schedule, REST_MS); }
    }
    function schedule() {                          /* fetch the tiles on screen once the view rests, a few at a time */
      queue = visibleTiles().filter(function (p) { return !(p[0] in tiles); }).map(function (p) { return p[0]; });
      while (loading < MAX_LOADS && queue.length) { load(queue.shift()); }
    }
    function load(unit) {
      tiles[unit] = null; loading++; fetched.tiles++;
      tileOf(unitId(model, site, layerNo, unit)).then(function (b) {
        if (!b) { return; }
        var img = new Image();
        img.onload = function () { draw(); };
        img.src = blobUrl(b);
        tiles[unit] = img;
      }, function () {}).then(function () { loading--; if (queue.length) { load(queue.shift()); } });   /* queue: what is in view */
    }
    function nearest(x, y) {
      var best = -1, d = Math.max(9, tilePx() / 2);
      d *= d;
      points.forEach(function (p, i) {
        var q = toScreen(p), e = (q[0] - x) * (q[0] - x) + (q[1] - y) * (q[1] - y);
        if (e < d) { d = e; best = i; }
      });
      return best;
    }
    function showCard(i, x, y) {
      hover = i;
      if (i < 0) { card.hidden = true; draw(); return; }
      var p = points[i], id = unitId(model, site, layerNo, p[0]);
      clear(card);
      card.appendChild(el("code", null, id));
      var what = p[6] >= 0 ? data.concepts[p[6]] + (p[4] >= 0 ? " (" + data.categories[p[4]] + ")" : "") : "";
      if (what) { card.appendChild(el("div", null, what)); }
      var flags = data.flags.filter(function (f, k) { return (p[3] >> k) & 1; }).map(function (f) { return f.replace("_", " "); });
      card.appendChild(el("div", "note", "activation " + num(p[5], 3) + (flags.length ? " \u00b7 " + flags.join(", ") : "")));
      card.style.left = Math.min(x + 14, size.w - 220) + "px"; card.style.top = (y + 14) + "px";
      card.hidden = false;
      draw();
    }
    function zoomAt(factor, x, y) {
      var side = Math.min(size.w, size.h);                                /* from the whole map to a tile of 40% of the view */
      var s = Math.max(side / 4, Math.min(view.scale * factor, 0.4 * side / TILE));
      factor = s / view.scale;
      view.x = x - (x - view.x) * factor; view.y = y - (y - view.y) * factor; view.scale = s;
      draw();
    }
    function local(e) { var r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      var q = local(e);
      zoomAt(Math.exp(-e.deltaY * 0.0015), q[0], q[1]);
    }, { passive: false });
    var pointers = {}, drag = null, moved = 0, pinch = 0;
    canvas.addEventListener("pointerdown", function (e) {
      canvas.setPointerCapture(e.pointerId);
      pointers[e.pointerId] = local(e);
      drag = local(e); moved = 0;
    });
    canvas.addEventListener("pointermove", function (e) {
      var q = local(e), ids = Object.keys(pointers);
      if (ids.length === 2 && pointers[e.pointerId]) {                 /* pinch: zoom about the midpoint */
        pointers[e.pointerId] = q;
        var a = pointers[ids[0]], b = pointers[ids[1]], d = Math.hypot(a[0] - b[0], a[1] - b[1]);
        if (pinch) { zoomAt(d / pinch, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2); }
        pinch = d; moved += 10;
        return;
      }
      if (drag && pointers[e.pointerId]) {
        view.x += q[0] - drag[0]; view.y += q[1] - drag[1];
        moved += Math.abs(q[0] - drag[0]) + Math.abs(q[1] - drag[1]);
        drag = q; draw();
        return;
      }
      showCard(nearest(q[0], q[1]), q[0], q[1]);
    });
    function release(e) {
      var wasDrag = moved > 4;
      delete pointers[e.pointerId]; pinch = 0;
      if (!Object.keys(pointers).length) { drag = null; }
      if (!wasDrag && e.type === "pointerup") {
        var q = local(e), i = nearest(q[0], q[1]);
        if (i >= 0) { window.location.href = unitHref(unitId(model, site, layerNo, points[i][0])); }
      }
    }
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", release);
    canvas.addEventListener("pointerleave", function () { if (!drag) { showCard(-1); } });
    canvas.addEventListener("keydown", function (e) {
      var step = 60, c = [size.w / 2, size.h / 2];
      if (e.key === "ArrowLeft") { view.x += step; } else if (e.key === "ArrowRight") { view.x -= step; }
      else if (e.key === "ArrowUp") { view.y += step; } else if (e.key === "ArrowDown") { view.y -= step; }
      else if (e.key === "+" || e.key === "=") { zoomAt(1.5, c[0], c[1]); return; }
      else if (e.key === "-" || e.key === "_") { zoomAt(1 / 1.5, c[0], c[1]); return; }
      else if (e.key === "0") { reset(); return; }
      else if (e.key === "Enter" && hover >= 0) { window.location.href = unitHref(unitId(model, site, layerNo, points[hover][0])); return; }
      else { return; }
      e.preventDefault(); draw();
    });
    function legend() {
      var box = clear(document.getElementById("map-legend"));
      if (!colourBy) { return; }
      var entries = colourBy.value === "category" ? data.categories.map(function (c, k) { return [PALETTE[k % PALETTE.length], c]; }).concat([["#9aa0a6", "no label"]])
        : [["#d62728", colourBy.value.slice(5).replace("_", " ")], ["#c7c7c7", "other units"]];
      entries.forEach(function (e) {
        var swatch = el("span", "swatch");
        swatch.style.background = e[0];
        box.appendChild(swatch); box.appendChild(document.createTextNode(" " + e[1] + "  "));
      });
    }
    if (colourBy) { colourBy.addEventListener("change", function () { legend(); draw(); }); }
    window.addEventListener("resize", resize);
    legend();
    resize();
    var named = parseId(decodeURIComponent(window.location.hash.slice(1)));
    if (named && named.model === model && named.site === site && named.layer === layerNo && byUnit[named.unit] !== undefined) {
      var p = points[byUnit[named.unit]];                  /* map.html#<unit id>: that unit, marked, in the middle */
      zoomAt(3, toScreen(p)[0], toScreen(p)[1]);
      var q = toScreen(p);
      view.x += size.w / 2 - q[0]; view.y += size.h / 2 - q[1];
      hover = byUnit[named.unit];
      showCard(hover, size.w / 2, size.h / 2);
    }
    box.setAttribute("data-state", "ready");
  }
  if (results) {
    loadScript(root + "search/catalog.js");
    loadScript(root + "search/terms.js");
  }
})();
