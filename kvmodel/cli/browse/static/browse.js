// kvmodel browse: live regions. An element with data-live="URL" receives
// server-sent events from URL; each event's data is an HTML fragment the
// server rendered with autoescaping, which replaces the element's content.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var badge = document.getElementById("live");
  document.querySelectorAll("[data-live]").forEach(function (el) {
    var source = new EventSource(el.getAttribute("data-live"));
    source.onopen = function () {
      if (badge) { badge.className = "live on"; badge.textContent = "live"; }
    };
    source.onerror = function () {
      if (badge) { badge.className = "live off"; badge.textContent = "reconnecting"; }
    };
    var last = null;
    source.onmessage = function (event) {
      if (event.data.trim() === "") { return; }  // a heartbeat
      var first = last === null;
      if (event.data === last) { return; }
      last = event.data;
      el.innerHTML = event.data;
      // The first event is the content as it is now (it may have changed
      // since the page was served); only later ones are changes to point at.
      if (first) { return; }
      el.setAttribute("data-updated", String(Date.now()));
      el.classList.add("flash");
      setTimeout(function () { el.classList.remove("flash"); }, 800);
    };
  });
});
