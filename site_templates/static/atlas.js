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
  /* a unit id as code that wraps after its slashes, not inside a word (CSS: code.uid-code) */
  function idCode(id) {
    var code = el("code", "uid-code"), parts = String(id).split("/");
    parts.forEach(function (part, i) {
      code.appendChild(document.createTextNode(part + (i < parts.length - 1 ? "/" : "")));
      if (i < parts.length - 1) { code.appendChild(document.createElement("wbr")); }
    });
    return code;
  }
  /* an image the atlas does not have: a grey square in its place (an <img> without a source gets the browser's
     broken-image icon); it keeps the image's classes and names what is missing to screen readers */
  function markMissing(img) {
    var box = document.createElement("span");
    box.className = img.className + " noimg missing";
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", "Not in this atlas: " + img.alt);
    if (img.parentNode) { img.parentNode.replaceChild(box, img); }
  }
  function fillTile(img) {
    tileOf(img.getAttribute("data-tile"), img.getAttribute("data-part")).then(function (b) {
      if (b) { img.src = blobUrl(b); } else { markMissing(img); }
    }, function () { markMissing(img); });
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

  function loadScript(src, integrity) {                 /* integrity: an SRI hash the script must match */
    return new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      if (integrity) { s.integrity = integrity; }
      s.src = src; s.onload = resolve; s.onerror = function () { reject(new Error("could not load " + src)); };
      document.body.appendChild(s);
    });
  }

  /* what the other scripts (layer, unit, search, map, live) share */
  window.Atlas = { root: root, layout: layout, THUMB_HEAD: THUMB_HEAD, MAX_BINS: MAX_BINS, whole: whole, list: list,
    header: header, item: item, items: items, record: record, blobUrl: blobUrl, fill: fill, unitId: unitId,
    parseId: parseId, unitPack: unitPack, thumbPack: thumbPack, unitHref: unitHref, layerHref: layerHref,
    tileOf: tileOf, lazyTile: lazyTile, markMissing: markMissing, idCode: idCode, mapCanvas: mapCanvas, svg: svg, fmt: fmt, LABEL_SOURCES: LABEL_SOURCES,
    num: num, pct: pct, position: position, el: el, link: link, clear: clear, dd: dd, loadScript: loadScript };
})();
