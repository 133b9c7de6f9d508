/* ViT Atlas website, layer pages: the tiles of the layer's pack, filter and sort. Uses atlas.js (window.Atlas). */
(function () {
  "use strict";
  var A = window.Atlas;
  var list = A.list, header = A.header, items = A.items, blobUrl = A.blobUrl;

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

})();
