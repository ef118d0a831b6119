// Live panel: countdowns re-synced from the server every second, actions without a page reload,
// and a chime plus a flash when a session ends. The page works without this script.
"use strict";
(function () {
  const root = document.getElementById("lamps");
  if (!root) return;
  const stateUrl = root.dataset.stateUrl;
  const POLL_MS = 1000;
  const regions = new Map();
  const deadlines = new Map(); // lamp id -> performance.now() at which its clock reads 0, or null
  let audio = null;
  let lastGood = performance.now();
  let offline = false;
  let serverBanners = Array.from(document.querySelectorAll("#banners .banner")).map(function (b) {
    return { kind: b.className.replace(/.*banner-/, ""), text: b.textContent };
  });

  document.querySelectorAll(".lamp[data-lamp]").forEach(function (el) { regions.set(el.dataset.lamp, el); });
  document.body.dataset.chimes = "0";

  // ---- sound: browsers allow audio only after a tap, so the first tap unlocks it ----
  const soundNote = document.getElementById("sound-note");
  function audioReady() { return audio !== null && audio.state === "running"; }
  function showSoundNote() { if (soundNote) soundNote.hidden = audioReady(); }
  function unlockAudio() {
    try {
      if (audio === null) {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        if (!Ctx) return;
        audio = new Ctx();
        audio.onstatechange = showSoundNote;
      }
      if (audio.state === "suspended") audio.resume().then(showSoundNote, showSoundNote);
    } catch (err) {
      // No audio device: the visual flash still marks the end.
    }
    showSoundNote();
  }
  ["pointerdown", "pointerup", "touchend", "click", "keydown"].forEach(function (type) {
    document.addEventListener(type, unlockAudio, { capture: true, passive: true });
  });
  window.setTimeout(showSoundNote, 500);

  function chime() {
    document.body.dataset.chimes = String(Number(document.body.dataset.chimes) + 1);
    if (!audioReady()) return;
    const t0 = audio.currentTime + 0.05;
    // Three descending bell-like tones, loud enough to hear across a treatment room.
    [1046.5, 784, 659.3].forEach(function (freq, i) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const t = t0 + i * 0.45;
      osc.type = "sine";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.6, t + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.9);
      osc.connect(gain).connect(audio.destination);
      osc.start(t);
      osc.stop(t + 0.95);
    });
  }

  // ---- messages and banners ----
  function showMessage(text, ok) {
    const box = document.getElementById("messages");
    if (!box || !text) return;
    const p = document.createElement("p");
    p.className = "flash " + (ok ? "flash-ok" : "flash-error");
    if (!ok) p.setAttribute("role", "alert");
    p.textContent = text;
    box.replaceChildren(p);
  }

  function renderBanners() {
    const box = document.getElementById("banners");
    if (!box) return;
    const list = serverBanners.slice();
    if (offline) {
      const since = new Date(Date.now() - (performance.now() - lastGood)).toLocaleTimeString();
      list.unshift({ kind: "offline", text: "No answer from the lamp controller since " + since +
        ". The countdowns may be wrong; lamps still switch off by themselves at their time." });
    }
    const html = list.map(function (b) { return b.kind + "\u0000" + b.text; }).join("\u0001");
    if (box.dataset.rendered === html) return;
    box.dataset.rendered = html;
    box.replaceChildren.apply(box, list.map(function (b) {
      const p = document.createElement("p");
      p.className = "banner banner-" + b.kind;
      p.setAttribute("role", "alert");
      p.textContent = b.text;
      return p;
    }));
  }

  // ---- lamp regions ----
  const idleText = new Map(); // lamp id -> what the big display shows with no timer ("Off", "Fault")

  function clockText(seconds) {
    const whole = Math.max(0, Math.ceil(seconds - 1e-6));
    return Math.floor(whole / 60) + ":" + String(whole % 60).padStart(2, "0");
  }

  function setField(el, field, text) {
    const node = el.querySelector('[data-field="' + field + '"]');
    if (node && node.textContent !== text) node.textContent = text;
  }

  function ended(el, quiet) {
    el.classList.remove("ended");
    void el.offsetWidth; // restart the animation
    el.classList.add("ended");
    el.dataset.ended = String(Number(el.dataset.ended || 0) + 1);
    const name = el.querySelector("h2").textContent;
    // After the user's own Stop, the reply's message ("Room 1 stopped.") stays on screen.
    if (!quiet) showMessage(name + ": session over, lamp off.", true);
    chime();
  }

  function apply(lamp, syncedAt, quiet) {
    const el = regions.get(lamp.id);
    if (!el) return;
    const session = lamp.session_id === null ? "" : String(lamp.session_id);
    if (el.dataset.state === "on" && el.dataset.session && (lamp.state !== "on" || session !== el.dataset.session)) {
      ended(el, quiet);
    }
    if (lamp.state === "on" && session !== el.dataset.session) el.classList.remove("ended");
    el.dataset.state = lamp.state;
    el.dataset.session = session;
    setField(el, "label", lamp.label);
    setField(el, "note", lamp.note);
    el.querySelectorAll("[data-when]").forEach(function (b) { b.disabled = b.dataset.when !== lamp.state; });
    el.querySelectorAll("[data-show]").forEach(function (x) { x.hidden = x.dataset.show !== lamp.state; });
    idleText.set(lamp.id, lamp.idle_text);
    deadlines.set(lamp.id, lamp.clock === null ? null : syncedAt + lamp.clock * 1000);
  }

  function applyState(data, syncedAt, quiet) {
    data.lamps.forEach(function (lamp) { apply(lamp, syncedAt, quiet); });
    serverBanners = data.banners || [];
    renderBanners();
    draw();
  }

  function draw() {
    const now = performance.now();
    deadlines.forEach(function (at, id) {
      setField(regions.get(id), "clock", at === null ? idleText.get(id) : clockText((at - now) / 1000));
    });
  }

  // ---- polling: the server's remaining_s is the truth; in between, count down locally ----
  let pollTimer = null;
  async function poll() {
    window.clearTimeout(pollTimer);
    const sent = performance.now();
    try {
      const resp = await fetch(stateUrl, { cache: "no-store", credentials: "same-origin",
                                           headers: { Accept: "application/json" } });
      if (resp.status === 401) { window.location.reload(); return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      const received = performance.now();
      lastGood = received;
      offline = false;
      // The server read its clock somewhere between send and receive: take the middle.
      applyState(data, (sent + received) / 2);
    } catch (err) {
      if (performance.now() - lastGood > 3 * POLL_MS) { offline = true; renderBanners(); }
    }
    pollTimer = window.setTimeout(poll, POLL_MS);
  }

  // ---- actions: post the form with fetch so the page (and its unlocked audio) stays ----
  document.addEventListener("submit", async function (ev) {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-js")) return;
    ev.preventDefault();
    unlockAudio();
    const body = new FormData(form, ev.submitter || null);
    const buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    const sent = performance.now();
    try {
      const resp = await fetch(form.action, { method: "POST", body: body, credentials: "same-origin",
                                              headers: { Accept: "application/json" } });
      let data = null;
      try { data = await resp.json(); } catch (err) { data = null; }
      if (resp.status === 401) { window.location.reload(); return; }
      if (data === null) {
        showMessage("The panel did not understand the reply (HTTP " + resp.status + "); reload the page.", false);
      } else {
        showMessage(data.message || data.error, resp.ok);
        if (data.lamps) applyState(data, (sent + performance.now()) / 2, true);
      }
    } catch (err) {
      showMessage("The lamp controller did not answer; check the network and try again.", false);
    } finally {
      // Buttons that follow a lamp's state get it back from the poll; the rest come back now.
      buttons.forEach(function (b) { if (!b.dataset.when) b.disabled = false; });
      poll();
    }
  });

  window.setInterval(draw, 200);
  poll();
})();
