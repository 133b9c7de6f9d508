/* 404.html: an address of a website rendered before format 1.4 (<unit id>.html) leads to that unit's
   view (unit.html#<unit id>) on this same origin; anything else stays a plain "not found". A path such as
   //evil.example/x/<unit id>.html would make "//evil.example/unit.html" a host, not a path: the target is
   resolved and followed only when its origin is this page's. */
(function () {
  "use strict";
  var m = /^(.*\/)([A-Za-z0-9][A-Za-z0-9_.\-]*\/[a-z][a-z0-9_\-]*\/L\d{2,}\/U\d{4,})\.html$/.exec(window.location.pathname);
  if (!m) { return; }
  var target = new URL(m[1] + "unit.html#" + m[2], window.location.href);
  if (target.origin === window.location.origin && target.pathname.indexOf("//") === -1) { window.location.replace(target.href); }
})();
