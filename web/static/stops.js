// The running lamps on the login, lock and switch pages (S21): each second the list is read again, so a lamp
// that starts elsewhere shows up with its Stop and one that ends leaves. Without this script the list is as
// the page loaded it and every Stop still works. Rows only appear and vanish below the PIN form: nothing
// above it moves.
"use strict";
(function () {
  const root = document.getElementById("stops");
  if (!root) return;
  const url = root.dataset.runningUrl;
  const POLL_MS = 1000;
  const REQUEST_TIMEOUT_MS = 2500;
  const STALE_MS = 3000; // no fresh list for this long: say so
  const none = root.querySelector("[data-field=none]");
  const contact = root.querySelector("[data-field=contact]");
  const rows = new Map();
  root.querySelectorAll("[data-lamp]").forEach(function (row) { rows.set(row.dataset.lamp, row); });
  let lastGood = performance.now();

  function show(lamps) {
    let any = false;
    lamps.forEach(function (lamp) {
      const row = rows.get(lamp.id);
      if (!row) return;
      row.hidden = !lamp.on;
      row.querySelector("[data-field=clock]").textContent = lamp.clock_text;
      any = any || lamp.on;
    });
    none.hidden = any;
  }

  function poll() {
    const ctrl = new AbortController();
    const timer = window.setTimeout(function () { ctrl.abort(); }, REQUEST_TIMEOUT_MS);
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", signal: ctrl.signal })
      .then(function (resp) { if (!resp.ok) throw new Error(String(resp.status)); return resp.json(); })
      .then(function (data) { show(data.lamps || []); lastGood = performance.now(); })
      .catch(function () {})
      .finally(function () {
        window.clearTimeout(timer);
        contact.hidden = performance.now() - lastGood < STALE_MS;
        root.dataset.polled = String(Number(root.dataset.polled || 0) + 1);
      });
  }
  window.setInterval(poll, POLL_MS);
  poll();
})();
