// Live updates for the Fifty dashboard: the server re-renders this page's <main> and sends it
// over server-sent events (/ui/events); swap it in. Pages work fully without this script.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !window.EventSource || !main.dataset.live) return;
  var state = document.querySelector(".live-state");
  var source = new EventSource("/ui/events?page=" + encodeURIComponent(main.dataset.live));
  function typing() {
    // Never replace a form the user is filling in.
    var a = document.activeElement;
    return a && main.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName) && a.type !== "hidden" && a.type !== "submit";
  }
  source.addEventListener("main", function (e) {
    if (typing()) return;
    main.innerHTML = e.data;
    main.dataset.updated = String(Date.now());
  });
  source.onopen = function () { if (state) { state.textContent = "Updates live."; state.className = "live-state"; } };
  source.onerror = function () { if (state) { state.textContent = "Live updates paused; reconnecting."; state.className = "live-state off"; } };
})();
