/* ViT Atlas site: keyboard shortcuts and the static search. No build step, no dependencies.
   Search data comes as script files (search/meta.js, search/classes-N.js) that call AtlasSearch,
   so it works from file:// where browsers refuse fetch() of local files. */
(function () {
  "use strict";
  var root = document.body.getAttribute("data-root") || "";

  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  }
  function follow(id) {
    var a = document.getElementById(id);
    if (a && a.href) { window.location.href = a.href; }
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

  /* ---- layer pages: filter tiles by flag, sort them ---------------------------------------- */
  var filterForm = document.querySelector("form.tile-filter");
  if (filterForm) {
    filterForm.hidden = false;
    var list = document.querySelector("ul.tiles");
    var items = Array.prototype.slice.call(list.children);
    var flagSelect = document.getElementById("flag-filter"), sortSelect = document.getElementById("tile-sort");
    var count = document.getElementById("filter-count");
    var number = function (li, key) {
      var v = li.firstElementChild.getAttribute("data-" + key);
      return v === "" || v === null ? -Infinity : parseFloat(v);
    };
    var apply = function () {
      var flag = flagSelect.value, key = sortSelect.value, shown = 0;
      var order = items.slice();
      if (key !== "unit") { order.sort(function (a, b) { return number(b, key) - number(a, key); }); }
      order.forEach(function (li) {
        var flags = (li.firstElementChild.getAttribute("data-flags") || "").split(" ");
        li.hidden = flag !== "" && flags.indexOf(flag) === -1;
        if (!li.hidden) { shown += 1; }
        list.appendChild(li);
      });
      count.textContent = shown + " of " + items.length + " units";
    };
    flagSelect.addEventListener("change", apply);
    sortSelect.addEventListener("change", apply);
  }

  /* ---- search ---------------------------------------------------------------------------- */
  var results = document.getElementById("search-results");
  var status = document.getElementById("search-status");
  var meta = null, wanted = {}, loaded = {}, pending = 0, query = "";

  function pad(n, width) { n = String(n); while (n.length < width) { n = "0" + n; } return n; }
  function unitId(model, site, layer, unit) { return model + "/" + site + "/L" + pad(layer, 2) + "/U" + pad(unit, 4); }
  function tileSrc(id) { return root + "img/viz/" + id + (meta.tiles[id.split("/")[0]] ? "_t" : "") + ".webp"; }
  function inRuns(runs, unit) { return runs.some(function (r) { return unit >= r[0] && unit < r[1]; }); }

  function show(items, note) {
    results.textContent = "";
    items.slice(0, 200).forEach(function (item) {
      var li = document.createElement("li");
      var a = document.createElement("a");
      a.href = root + item.id + ".html";
      var img = document.createElement(item.image ? "img" : "span");
      img.className = "noimg";
      if (item.image) { img.src = tileSrc(item.id); img.alt = ""; img.loading = "lazy"; }
      var text = document.createElement("span");
      var code = document.createElement("code");
      code.textContent = item.id;
      var detail = document.createElement("span");
      detail.className = "meta";
      detail.textContent = item.detail || "";
      text.appendChild(code);
      text.appendChild(detail);
      a.appendChild(img);
      a.appendChild(text);
      li.appendChild(a);
      results.appendChild(li);
    });
    status.textContent = note + (items.length > 200 ? " (first 200 shown)" : "");
  }

  /* Unit ids: a full id, or parts of one ("L03/U0042", "3 42", "U42"), matched against every model. */
  function idMatches(q) {
    var m = q.match(/^(?:([A-Za-z0-9][A-Za-z0-9_.\-]*)\/)?(?:([a-z]+)\/)?L?(\d+)[\/\s]+U?(\d+)$/i) ||
            q.match(/^(?:([A-Za-z0-9][A-Za-z0-9_.\-]*)\/)?(?:([a-z]+)\/)?()U(\d+)$/i);
    if (!m) { return []; }
    var found = [];
    Object.keys(meta.models).forEach(function (model) {
      if (m[1] && model !== m[1]) { return; }
      Object.keys(meta.models[model]).forEach(function (site) {
        if (m[2] && site !== m[2].toLowerCase()) { return; }
        var layers = meta.models[model][site];
        Object.keys(layers).forEach(function (key) {
          var layer = parseInt(key, 10), unit = parseInt(m[4], 10), info = layers[key];
          if (m[3] !== "" && parseInt(m[3], 10) !== layer) { return; }
          if (unit >= info.units[0] && unit < info.units[1]) {
            found.push({ id: unitId(model, site, layer, unit), detail: model + " · " + site + " · layer " + layer,
                         image: inRuns(info.viz, unit) });
          }
        });
      });
    });
    return found;
  }

  function classMatches() {
    var names = Object.keys(wanted), items = [];
    names.forEach(function (name) {
      (loaded[wanted[name]] && loaded[wanted[name]][name] || []).forEach(function (e) {
        items.push({ id: e[0], detail: name + ": " + e[1] + " of its top " + e[2] + " images", share: e[1] / e[2],
                     image: e[3] === 1 });
      });
    });
    items.sort(function (a, b) { return b.share - a.share; });
    return items;
  }

  /* Flags: "global", "flag:class-selective", ... list every unit with that flag (search/flags.js). */
  var FLAG_WORDS = { "dead": "dead", "class-selective": "class_selective", "class selective": "class_selective",
                     "local": "local", "global": "global", "outlier-tokens": "outlier_tokens",
                     "outlier tokens": "outlier_tokens", "outlier": "outlier_tokens" };
  var flagsData = null;

  function flagQuery(q) {
    var word = q.toLowerCase().replace(/^flag:\s*/, "");
    return FLAG_WORDS.hasOwnProperty(word) ? FLAG_WORDS[word] : null;
  }

  function flagMatches(flag) {
    var items = [];
    Object.keys(flagsData).forEach(function (model) {
      Object.keys(flagsData[model]).forEach(function (site) {
        Object.keys(flagsData[model][site]).forEach(function (key) {
          var runs = (flagsData[model][site][key][flag] || []), info = meta.models[model][site][key];
          runs.forEach(function (r) {
            for (var u = r[0]; u < r[1]; u++) {
              items.push({ id: unitId(model, site, parseInt(key, 10), u), detail: flag.replace("_", " "),
                           image: inRuns(info.viz, u) });
            }
          });
        });
      });
    });
    return items;
  }

  function run() {
    var flag = flagQuery(query);
    if (flag) {
      if (flagsData === null) {
        flagsData = false;
        var s = document.createElement("script");
        s.src = root + "search/flags.js";
        s.onerror = function () { status.textContent = "Could not load the flag index."; };
        document.body.appendChild(s);
      }
      if (!flagsData) { status.textContent = "Loading\u2026"; return; }
      var flagged = flagMatches(flag);
      show(flagged, flagged.length + " units flagged " + flag.replace("_", " "));
      return;
    }
    var ids = idMatches(query);
    if (ids.length) { show(ids, ids.length + " unit" + (ids.length > 1 ? "s" : "") + " with that id"); return; }
    var q = query.toLowerCase();
    wanted = {};
    meta.classes.forEach(function (c) {
      if (c[0].toLowerCase().indexOf(q) !== -1) { wanted[c[0]] = c[1]; }
    });
    var shards = {};
    Object.keys(wanted).forEach(function (name) { shards[wanted[name]] = true; });
    Object.keys(shards).forEach(function (k) {
      if (loaded[k] || loaded[k] === null) { return; }
      loaded[k] = null;
      pending += 1;
      var s = document.createElement("script");
      s.src = root + "search/classes-" + k + ".js";
      s.onerror = function () { pending -= 1; status.textContent = "Could not load the search index."; };
      document.body.appendChild(s);
    });
    if (!Object.keys(wanted).length) { show([], "No unit id or class matches \u201c" + query + "\u201d."); return; }
    if (!pending) {
      var items = classMatches();
      show(items, items.length + " units whose top images are mostly " +
           Object.keys(wanted).slice(0, 5).join(", ") + (Object.keys(wanted).length > 5 ? ", \u2026" : ""));
    } else {
      status.textContent = "Loading\u2026";
    }
  }

  window.AtlasSearch = {
    meta: function (data) {
      meta = data;
      var params = new URLSearchParams(window.location.search);
      query = (params.get("q") || "").trim();
      var box = document.getElementById("q2");
      if (box) { box.value = query; }
      if (query) { run(); } else { status.textContent = meta.classes.length + " classes indexed. Type a unit id or a class."; }
    },
    flags: function (data) {
      flagsData = data;
      run();
    },
    classes: function (k, part) {
      loaded[k] = part;
      pending -= 1;
      if (pending <= 0) { pending = 0; run(); }
    }
  };
})();
