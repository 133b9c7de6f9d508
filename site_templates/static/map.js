/* ViT Atlas website, layer maps: a layer's units at their positions, zoom and pan, tiles of what is on screen; the
   unit view's mini map. Uses atlas.js (window.Atlas). */
(function () {
  "use strict";
  var A = window.Atlas;
  var root = A.root, whole = A.whole, list = A.list, blobUrl = A.blobUrl, unitId = A.unitId, parseId = A.parseId,
      unitHref = A.unitHref, tileOf = A.tileOf, num = A.num, el = A.el, clear = A.clear, loadScript = A.loadScript;

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

  /* the unit view's "where it sits": the layer's units as dots, this one marked */
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
  A.miniMap = miniMap;
})();
