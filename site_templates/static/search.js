/* ViT Atlas website, search: terms (class names, concepts, flags) -> postings in chunks; ids from the layer catalog.
   Uses atlas.js (window.Atlas). */
(function () {
  "use strict";
  var A = window.Atlas;
  var root = A.root, whole = A.whole, item = A.item, items = A.items, unitId = A.unitId, unitHref = A.unitHref,
      lazyTile = A.lazyTile, LABEL_SOURCES = A.LABEL_SOURCES, num = A.num, pct = A.pct, el = A.el, link = A.link,
      clear = A.clear, loadScript = A.loadScript;

  /* ---- search: terms (class names, flags) -> postings in chunks; ids from the layer catalog ---------- */
  var results = document.getElementById("search-results");
  var searchStatus = document.getElementById("search-status");
  var catalog = null, terms = null, query = "", chunks = {};


  function showResults(found, note, more) {
    clear(results);
    found.slice(0, 200).forEach(function (item) {
      var li = el("li"), a = link(unitHref(item.id), null);
      var img = el("img", "noimg");
      img.alt = ""; img.width = 56; img.height = 56;
      lazyTile(img, item.id);
      var text = el("span");
      text.appendChild(A.idCode(item.id));
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
      /* a unit can match several terms (the concept "ring" and the class "ring"): count it once where every posting
         is loaded, else say the sum is an upper bound */
      var total = shown.reduce(function (n, t) { return n + t[2]; }, 0);
      var loaded = parts.reduce(function (n, entries) { return n + entries.length; }, 0);
      var count = loaded === total ? String(items.length) : shown.length > 1 ? "up to " + total : String(total);
      var names = shown.map(function (t) { return t[1]; }).filter(function (n, i, all) { return all.indexOf(n) === i; });
      var named = names.slice(0, 5).join(", ") + (names.length > 5 ? ", \u2026" : "");
      var label = shown[0][0] === "flag" ? "units flagged " + shown[0][1].replace("_", " ") :
        shown[0][0] === "concept" ? "units described as " + named + (shown.some(function (t) { return t[0] === "class"; }) ? " or whose top images are mostly of that class" : "") :
        "units whose top images are mostly " + named;
      showResults(items, count + " " + label, loaded < total ? "(the " + items.length + " strongest loaded)" : "");
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

  if (results) {
    loadScript(root + "search/catalog.js");
    loadScript(root + "search/terms.js");
  }
})();
