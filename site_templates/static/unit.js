/* ViT Atlas website, the unit view (unit.html#<unit id>): a unit's record from its pack, its charts, related units,
   labels and place on its layer's map. Uses atlas.js (window.Atlas) and map.js (its mini map). */
(function () {
  "use strict";
  var A = window.Atlas;
  var root = A.root, layout = A.layout, THUMB_HEAD = A.THUMB_HEAD, MAX_BINS = A.MAX_BINS, whole = A.whole,
      list = A.list, header = A.header, item = A.item, record = A.record, blobUrl = A.blobUrl, fill = A.fill,
      unitId = A.unitId, parseId = A.parseId, unitPack = A.unitPack, thumbPack = A.thumbPack, unitHref = A.unitHref,
      layerHref = A.layerHref, lazyTile = A.lazyTile, mapCanvas = A.mapCanvas, svg = A.svg, fmt = A.fmt,
      LABEL_SOURCES = A.LABEL_SOURCES, num = A.num, pct = A.pct, position = A.position, el = A.el, link = A.link,
      clear = A.clear, dd = A.dd;

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
    var live = document.getElementById("try-live");            /* the live view, where this model is published live */
    live.hidden = list(layout.live, 4096).indexOf(u.model) < 0;
    live.href = root + layout.live_page + "#" + u.id;

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
      A.miniMap(document.getElementById("mini-map"), fill(layout.map_data, u), u.unit);
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
        thumbnail(info.probe.view, t[0]).then(function (b) { if (b) { img.src = blobUrl(b); } else { A.markMissing(img); } },
                                             function () { A.markMissing(img); });
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

})();
