/* 404.html: an address of a website rendered before format 1.4 (<unit id>.html) leads to that unit's
   view (unit.html#<unit id>); anything else stays a plain "not found". */
(function () {
  "use strict";
  var m = /^(.*\/)([A-Za-z0-9][A-Za-z0-9_.\-]*\/[a-z][a-z0-9_\-]*\/L\d{2,}\/U\d{4,})\.html$/.exec(window.location.pathname);
  if (m) { window.location.replace(m[1] + "unit.html#" + m[2]); }
})();
