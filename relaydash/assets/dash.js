// The relay dashboard's live part: fetched again every 2 s and put in
// place of the old one, so that the page follows the relay without a
// reload. The fragment is HTML the relay rendered and escaped.
"use strict";
(function () {
  var live = document.getElementById("live");
  var status = document.getElementById("status");
  var last = new Date().toLocaleTimeString();
  if (!live || !window.fetch) {
    return;
  }
  function update() {
    fetch("live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        last = new Date().toLocaleTimeString();
        status.textContent = "Updated " + last + ".";
        status.className = "";
      })
      .catch(function (e) {
        status.textContent = "Not updated since " + last + " (" + e.message + "); retrying.";
        status.className = "stale";
      })
      .finally(function () {
        setTimeout(update, 2000);
      });
  }
  setTimeout(update, 2000);
})();
