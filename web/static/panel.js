// Live panel: countdowns re-synced from the server every second, actions without a page reload, a loud "No
// contact" alert when the server goes quiet. An end is marked over the lamp's clock with a chime, repeated a
// few times, until someone taps OK; an alarm (an E-stop, a fault, a firmware cut) is marked red with its own
// tone, repeated until someone taps OK. The one-minute warning is amber. The page works without this script.
// Nothing here ever moves a button: texts change inside boxes of fixed size, the marks lie over the clock,
// and the continuation question opens over the page (only more alerts than the status slot holds grow it).
"use strict";
(function () {
  const root = document.getElementById("lamps");
  if (!root) return;
  const stateUrl = root.dataset.stateUrl;
  const POLL_MS = 1000;
  const REQUEST_TIMEOUT_MS = 2500; // a poll that takes longer counts as no answer
  const ACTION_TIMEOUT_MS = 4000;
  const STALE_MS = 3000; // no fresh state for this long: the "No contact" alert
  const words = document.getElementById("i18n").dataset;
  const regions = new Map();
  const deadlines = new Map(); // lamp id -> performance.now() at which its clock reads 0, or null
  const lamps = new Map(); // lamp id -> the last state the server sent
  const warned = new Map(); // lamp id -> the deadline whose one-minute warning was given
  const seen = new Set(); // lamps this page has had a state of
  // An alarm this recent, not yet acknowledged on this tablet, is marked again when the page is loaded.
  const RECENT_ALARM_S = 1800;
  let audio = null;
  let lastGood = performance.now();
  let serverOffset = null; // server wall clock minus ours, in seconds, from the last poll (null: none yet)
  let offline = false;
  let undelivered = false; // a Stop could not be delivered: until it is, or nothing heats any more
  let serverBanners = Array.from(document.querySelectorAll("#banners .banner")).map(function (b) {
    return { kind: b.className.replace(/.*banner-/, ""), text: b.textContent, short: b.dataset.short };
  });

  document.querySelectorAll(".lamp[data-lamp]").forEach(function (el) { regions.set(el.dataset.lamp, el); });
  document.body.dataset.chimes = "0";
  document.body.dataset.warnings = "0";
  document.body.dataset.alarms = "0";

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (all, key) { return key in values ? values[key] : all; });
  }

  // ---- sound: browsers allow audio only after a tap, so the first tap unlocks it ----
  const soundNote = document.getElementById("sound-note");
  function audioReady() { return audio !== null && audio.state === "running"; }
  function showSoundNote() { if (soundNote) soundNote.toggleAttribute("data-off", audioReady()); }
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

  function tones(freqs, gainPeak, spacing) {
    if (!audioReady()) return;
    const t0 = audio.currentTime + 0.05;
    freqs.forEach(function (freq, i) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const t = t0 + i * spacing;
      osc.type = "sine";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(gainPeak, t + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.9);
      osc.connect(gain).connect(audio.destination);
      osc.start(t);
      osc.stop(t + 0.95);
    });
  }

  function chime() {
    document.body.dataset.chimes = String(Number(document.body.dataset.chimes) + 1);
    tones([1046.5, 784, 659.3], 0.6, 0.45); // three descending bell tones, heard across a treatment room
  }

  function alarmTone() {
    document.body.dataset.alarms = String(Number(document.body.dataset.alarms) + 1);
    if (!audioReady()) return;
    // Harsh and unlike the chime: a square wave alternating high and low, four times.
    const t0 = audio.currentTime + 0.05;
    [988, 740, 988, 740].forEach(function (freq, i) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const t = t0 + i * 0.28;
      osc.type = "square";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.35, t + 0.01);
      gain.gain.setValueAtTime(0.35, t + 0.22);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.26);
      osc.connect(gain).connect(audio.destination);
      osc.start(t);
      osc.stop(t + 0.27);
    });
  }

  function softChime() {
    document.body.dataset.warnings = String(Number(document.body.dataset.warnings) + 1);
    tones([659.3, 784], 0.2, 0.35); // two quiet rising tones: one minute left
  }

  // ---- messages and banners (inside the fixed-height status slot) ----
  // ok: true (news), false (an error: an alert), or "warn" (amber: look now, nothing is wrong yet).
  function showMessage(text, ok) {
    const box = document.getElementById("messages");
    if (!box || !text) return;
    const p = document.createElement("p");
    p.className = "flash " + (ok === "warn" ? "flash-warn" : ok ? "flash-ok" : "flash-error");
    if (!ok) p.setAttribute("role", "alert");
    p.textContent = text;
    box.replaceChildren(p);
    fitSlot();
  }

  // Every alert wholly visible: when the alerts alone are taller than the slot, it grows for them.
  function fitSlot() {
    const slot = document.getElementById("status");
    if (!slot) return;
    slot.classList.remove("crowded");
    const alerts = slot.querySelectorAll(".banner, .flash-error");
    if (!alerts.length) return;
    const gap = parseFloat(getComputedStyle(slot).rowGap) || 0;
    let need = 0;
    alerts.forEach(function (a) { need += a.offsetHeight; });
    need += gap * (alerts.length - 1);
    if (need > slot.clientHeight + 1) slot.classList.add("crowded");
  }

  function renderBanners() {
    const box = document.getElementById("banners");
    if (!box) return;
    const list = serverBanners.slice();
    if (undelivered) {
      // Most severe of all, and it says "no contact" too: it takes the no-contact banner's place.
      list.unshift({ kind: "undelivered", text: words.stopUndelivered });
    } else if (offline) {
      const since = new Date(Date.now() - (performance.now() - lastGood)).toLocaleTimeString(
        document.documentElement.lang, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
      list.unshift({ kind: "offline", text: fill(words.noContact, { time: since }) });
    }
    // Several alerts share the slot: each says it in its short form.
    if (list.length > 1) list.forEach(function (b, i) { if (b.short) list[i] = { kind: b.kind, text: b.short }; });
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
    fitSlot();
  }

  function setOffline(value) {
    if (offline === value) return;
    offline = value;
    // The replies to earlier taps are history now: the no-contact alert takes the slot.
    if (value) document.getElementById("messages").replaceChildren();
    document.body.toggleAttribute("data-offline", value);
    regions.forEach(function (el, id) {
      el.toggleAttribute("data-stale", value);
      const lamp = lamps.get(id);
      if (lamp) setField(el, "label", value ? words.lastKnown : lamp.label);
      // Nothing can start without contact; Stop stays tappable (and says at once that it was not delivered).
      el.querySelectorAll("[data-ok]").forEach(function (b) { b.disabled = value || !(lamp && lamp[b.dataset.ok]); });
    });
    renderBanners();
    draw();
  }

  // ---- lamp regions ----
  function clockText(seconds) {
    const whole = Math.max(0, Math.ceil(seconds - 1e-6));
    return Math.floor(whole / 60) + ":" + String(whole % 60).padStart(2, "0");
  }

  function setField(el, field, text) {
    const node = el.querySelector('[data-field="' + field + '"]');
    if (node && node.textContent !== text) node.textContent = text;
  }

  // ---- marks over the clock: an end (a chime, a few times) or an alarm (its tone, until OK) ----
  const END_EVERY_MS = 10000;
  const END_TIMES = 3;
  const ALARM_EVERY_MS = 4000;
  const marks = new Map(); // lamp id -> {kind, next: performance.now() of its next sound or null, left}

  function mark(el, kind, text, sound) {
    el.dataset.mark = kind;
    setField(el, "mark", text);
    const box = el.querySelector(".lamp-mark");
    box.removeAttribute("data-off");
    box.querySelector("[data-ack]").disabled = false;
    marks.set(el.dataset.lamp, { kind: kind, next: sound ? performance.now() : null, left: END_TIMES });
    ring();
  }

  function unmark(el) {
    if (!el.dataset.mark) return;
    delete el.dataset.mark;
    el.classList.remove("ended");
    const box = el.querySelector(".lamp-mark");
    box.setAttribute("data-off", "");
    box.querySelector("[data-ack]").disabled = true;
    marks.delete(el.dataset.lamp);
  }

  // One sound at a time, an alarm before an end: never a cacophony of lamps at once.
  function ring() {
    const now = performance.now();
    let alarmDue = false;
    let endDue = false;
    marks.forEach(function (m) {
      if (m.next === null || now < m.next) return;
      if (m.kind === "alarm") {
        alarmDue = true;
        m.next = now + ALARM_EVERY_MS;
      } else {
        endDue = true;
        m.left -= 1;
        m.next = m.left > 0 ? now + END_EVERY_MS : null;
      }
    });
    if (alarmDue) alarmTone();
    else if (endDue) chime();
  }

  // Which alarm (by its session) this tablet acknowledged, per lamp; nothing when storage is refused.
  function ackKey(id) { return "lampctl.ack." + id; }
  function acked(id, session) {
    try { return window.localStorage.getItem(ackKey(id)) === String(session); } catch (err) { return false; }
  }
  function remember(el) {
    if (el.dataset.mark !== "alarm" || !el.dataset.alarmSession) return;
    try { window.localStorage.setItem(ackKey(el.dataset.lamp), el.dataset.alarmSession); } catch (err) { /* kept in the page only */ }
  }

  document.addEventListener("click", function (ev) {
    const ack = ev.target.closest && ev.target.closest("[data-ack]");
    if (!ack) return;
    const el = ack.closest("[data-lamp]");
    remember(el);
    unmark(el);
  });

  function ended(el, quiet) {
    el.classList.remove("ended");
    void el.offsetWidth; // restart the animation
    el.classList.add("ended");
    el.dataset.ended = String(Number(el.dataset.ended || 0) + 1);
    const name = el.querySelector("h2").textContent;
    // After the user's own Stop, the reply's message ("Room 1 stopped.") stays on screen, and nothing is marked.
    if (quiet) {
      chime();
      return;
    }
    showMessage(fill(words.ended, { name: name }), true);
    mark(el, "ended", words.endedMark, true);
  }

  // quiet: after the user's own E-stop its reply says what happened, and the mark stays silent.
  // inBanner: the page's banner already says it (an E-stop): the message would only repeat it.
  function alarm(el, text, quiet, inBanner) {
    el.dataset.alarmed = String(Number(el.dataset.alarmed || 0) + 1);
    if (!quiet && !inBanner) showMessage(text, false);
    else if (!quiet) document.getElementById("messages").replaceChildren(); // old news beside an alarm misleads
    mark(el, "alarm", words.alarmMark, !quiet);
  }

  function enable(el, lamp) {
    el.querySelectorAll("[data-when]").forEach(function (b) { b.disabled = b.dataset.when !== lamp.state; });
    // Nothing can start without contact, whatever the last known state allowed.
    el.querySelectorAll("[data-ok]").forEach(function (b) { b.disabled = offline || !lamp[b.dataset.ok]; });
    el.querySelectorAll("[data-show]").forEach(function (x) {
      const shown = x.dataset.show === lamp.state;
      x.toggleAttribute("data-off", !shown);
      x.querySelectorAll("button").forEach(function (b) { b.disabled = !shown; });
    });
  }

  function apply(lamp, syncedAt, quiet) {
    const el = regions.get(lamp.id);
    if (!el) return;
    const session = lamp.session_id === null ? "" : String(lamp.session_id);
    const before = el.dataset.state;
    const first = !seen.has(lamp.id);
    seen.add(lamp.id);
    if (lamp.alarm_session !== null && lamp.alarm_session !== undefined) el.dataset.alarmSession = String(lamp.alarm_session);
    if (before === "on" && el.dataset.session && (lamp.state !== "on" || session !== el.dataset.session)) {
      if (lamp.end_alarm) alarm(el, lamp.end_alarm, quiet, lamp.estop);
      else ended(el, quiet);
    } else if (before && before !== "fault" && lamp.state === "fault") {
      alarm(el, lamp.note, quiet, lamp.estop); // latched with no session running (an E-stop of an idle lamp)
    } else if (first && lamp.end_alarm && lamp.state !== "on" && lamp.alarm_ago_s !== null &&
               lamp.alarm_ago_s < RECENT_ALARM_S && !acked(lamp.id, lamp.alarm_session)) {
      alarm(el, lamp.end_alarm, quiet, lamp.estop); // ended before this page was loaded, and nobody tapped OK here
    }
    if (lamp.state === "on" && session !== el.dataset.session) unmark(el); // a new session: someone is there
    lamps.set(lamp.id, lamp);
    el.dataset.state = lamp.state;
    document.querySelectorAll('[data-quick="' + lamp.id + '"]').forEach(function (f) { f.hidden = lamp.state !== "on"; });
    el.dataset.session = session;
    setField(el, "label", lamp.label);
    setField(el, "note", lamp.note);
    setField(el, "guards", lamp.guards);
    enable(el, lamp);
    deadlines.set(lamp.id, lamp.clock === null ? null : syncedAt + lamp.clock * 1000);
  }

  function applyState(data, syncedAt, quiet) {
    data.lamps.forEach(function (lamp) { apply(lamp, syncedAt, quiet); });
    document.body.dataset.states = String(Number(document.body.dataset.states || 0) + 1); // states applied
    if (undelivered && data.lamps.every(function (l) { return l.state !== "on" && !l.relay_on; })) undelivered = false;
    serverBanners = data.banners || [];
    const lockNote = document.getElementById("lock-note");
    if (lockNote) lockNote.hidden = !data.locked;
    renderBanners();
    draw();
  }

  function draw() {
    if (offline) return; // the clocks stay at their last known value, marked as such
    const now = performance.now();
    deadlines.forEach(function (at, id) {
      const el = regions.get(id);
      const lamp = lamps.get(id);
      const idle = lamp ? lamp.idle_text : el.querySelector('[data-field="clock"]').textContent;
      setField(el, "clock", at === null ? idle : clockText((at - now) / 1000));
      const left = at === null ? null : (at - now) / 1000;
      const warning = lamp && lamp.state === "on" && lamp.planned_s > 60 && left !== null && left <= 60;
      el.classList.toggle("warning", Boolean(warning));
      if (warning && warned.get(id) !== lamp.session_id + ":" + lamp.planned_s) {
        warned.set(id, lamp.session_id + ":" + lamp.planned_s);
        showMessage(fill(words.warning, { name: lamp.name }), "warn");
        softChime();
      }
    });
  }

  // ---- requests with a time limit: a frozen server must never look like a working one ----
  async function timedFetch(url, options, ms) {
    const ctrl = new AbortController();
    const timer = window.setTimeout(function () { ctrl.abort(); }, ms);
    try {
      return await fetch(url, Object.assign({ signal: ctrl.signal, credentials: "same-origin" }, options));
    } finally {
      window.clearTimeout(timer);
    }
  }

  let pollTimer = null;
  async function poll() {
    window.clearTimeout(pollTimer);
    const sent = performance.now();
    try {
      const resp = await timedFetch(stateUrl, { cache: "no-store", headers: { Accept: "application/json" } },
                                    REQUEST_TIMEOUT_MS);
      if (resp.status === 401) { window.location.reload(); return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      const received = performance.now();
      lastGood = received;
      serverOffset = data.server_time - Date.now() / 1000;
      setOffline(false);
      // The server read its clock somewhere between send and receive: take the middle.
      applyState(data, (sent + received) / 2);
    } catch (err) {
      // judged by watch() below
    }
    pollTimer = window.setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - sent)));
  }

  function watch() {
    if (performance.now() - lastGood > STALE_MS) setOffline(true);
    draw();
  }

  // ---- the continuation question ----
  function closeAsk() { document.getElementById("ask-slot").replaceChildren(); }
  function openAsk(html) {
    const slot = document.getElementById("ask-slot");
    slot.innerHTML = html; // rendered by the server from its own template (values escaped there)
    const first = slot.querySelector("button:not([disabled])");
    if (first) first.focus();
  }
  document.addEventListener("click", function (ev) {
    const cancel = ev.target.closest && ev.target.closest("[data-ask-cancel]");
    if (!cancel) return;
    ev.preventDefault();
    closeAsk();
  });

  // ---- actions: post the form with fetch so the page (and its unlocked audio) stays ----
  document.addEventListener("submit", async function (ev) {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-js")) return;
    ev.preventDefault();
    unlockAudio();
    const isStop = form.hasAttribute("data-stop");
    if (isStop && offline) { undelivered = true; renderBanners(); } // say so at once, and still try
    const body = new FormData(form, ev.submitter || null);
    // On the server's clock, so a start that sat in a stalled connection is refused when it finally arrives.
    if (!isStop && serverOffset !== null) body.set("sent_at", (Date.now() / 1000 + serverOffset).toFixed(3));
    const buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    const sent = performance.now();
    try {
      const resp = await timedFetch(form.action, { method: "POST", body: body, headers: { Accept: "application/json" } },
                                    ACTION_TIMEOUT_MS);
      let data = null;
      try { data = await resp.json(); } catch (err) { data = null; }
      if (resp.status === 401) { window.location.reload(); return; }
      if (form.closest("#ask")) closeAsk();
      if (isStop && resp.ok && undelivered) { undelivered = false; renderBanners(); }
      if (data === null) {
        showMessage(words.badReply + " (HTTP " + resp.status + ")", false);
      } else if (data.ask_html) {
        openAsk(data.ask_html);
      } else {
        showMessage(data.message || data.error, resp.ok);
      }
      if (data && data.lamps) applyState(data, (sent + performance.now()) / 2, true);
    } catch (err) {
      if (form.closest("#ask")) closeAsk();
      if (isStop) {
        undelivered = true;
        renderBanners();
      } else {
        showMessage(words.notDelivered, false);
      }
    } finally {
      // Buttons that follow a lamp's state get it back from the state; the rest come back now.
      buttons.forEach(function (b) { if (!b.dataset.when && !b.dataset.ok) b.disabled = false; });
      lamps.forEach(function (lamp, id) { enable(regions.get(id), lamp); });
      poll();
    }
  });

  window.setInterval(watch, 200);
  window.setInterval(ring, 250);
  poll();
})();
