"""Words for people at the couch: fault reasons in plain language, state labels, durations and refused
user names, translated."""

from __future__ import annotations

import math

from flask_babel import format_decimal, gettext, lazy_gettext

from lampctl.core.lamp import parse_estop_reason

STATE_LABELS = {
    "off": lazy_gettext("Off · ready"),
    "on": lazy_gettext("ON · heating"),
    "cooldown": lazy_gettext("Cooling down"),
    "fault": lazy_gettext("FAULT · locked off"),
}

# (what the developer text contains, what the practitioner reads). First match wins; the
# full reason stays in the events page for the admin.
_FAULTS = [
    (
        "tilted",
        lazy_gettext(
            "The lamp stand tilted, so the lamp was switched off. Set it upright and check the patient; "
            "it stays off until an admin resets it."
        ),
    ),
    (
        "over-temperature",
        lazy_gettext(
            "The lamp got too hot, so the safety controller switched it off. Check the patient; it stays "
            "off until an admin resets it."
        ),
    ),
    (
        "over-current",
        lazy_gettext(
            "The lamp drew too much current (a short or the wrong bulb), so it was switched off. It stays "
            "off until an admin checks it."
        ),
    ),
    (
        "sensor of",
        lazy_gettext("A safety sensor of this lamp failed, so it stays off until an admin checks it."),
    ),
    (
        "still powered",
        lazy_gettext(
            "This lamp may still be powered although it was switched off. Switch it off "
            "at the wall now and tell an admin."
        ),
    ),
    (
        "could not be switched off",
        lazy_gettext("This lamp's switch did not respond. Switch it off at the wall now and tell an admin."),
    ),
    (
        "not powered",
        lazy_gettext(
            "The lamp did not light (the bulb or its switch may have failed). It stays off until an admin checks it."
        ),
    ),
    (
        "could not be switched on",
        lazy_gettext("The lamp's switch did not respond, so it stays off until an admin checks it."),
    ),
    (
        "firmware",
        lazy_gettext(
            "The safety controller stopped answering, so this lamp was switched off. It stays "
            "off until an admin resets it."
        ),
    ),
    (
        "scheduler",
        lazy_gettext(
            "The lamp timer stopped working, so every lamp was switched off. They stay off until an admin resets them."
        ),
    ),
]


_VIA = {
    "from the panel": lazy_gettext("Emergency stop from the panel by %(name)s."),
    "from the API": lazy_gettext("Emergency stop from the API by %(name)s."),
    "over MQTT": lazy_gettext("Emergency stop over MQTT (home automation) by %(name)s."),
    None: lazy_gettext("Emergency stop by %(name)s."),
}


def fault_text(reason: str | None) -> str:
    """A latched fault as a practitioner should read it: what happened and what to do."""
    text = reason or ""
    estop = parse_estop_reason(text)
    if estop is not None:
        who, via = estop
        what = (
            gettext("Emergency stop from the command line on the controller.")
            if via == "from the command line"
            else _VIA[via] % {"name": who}
        )
        return what + " " + gettext("Every lamp stays off until an admin resets it.")
    if text.lower().startswith("e-stop"):
        return gettext("The emergency stop button was pressed. Every lamp stays off until an admin resets it.")
    for needle, words in _FAULTS:
        if needle in text:
            return str(words)
    return gettext("A safety check switched this lamp off. It stays off until an admin resets it.")


# Ends that are alarms, not a normal end: the panel marks them red, with the alarm tone, until acknowledged.
ALARM_ENDS = ("estop", "fault", "firmware", "interrupted", "patient", "over-temperature", "over-current")


def end_alarm(view) -> str | None:
    """What an abnormal end of the lamp's last session says at the couch, or None for a normal end."""
    reason = view.last_end_reason
    if reason not in ALARM_ENDS:
        return None
    if reason == "firmware":
        return gettext(
            "%(name)s: the safety controller cut the lamp off before the service did. Check the patient "
            "and tell an admin.",
            name=view.name,
        )
    if reason == "patient":
        return gettext("%(name)s: stopped by the patient. Go to the couch.", name=view.name)
    if reason == "interrupted":
        return gettext("%(name)s: the session was interrupted. Check the patient.", name=view.name)
    return (
        gettext("%(name)s: the session was cut short.", name=view.name)
        + " "
        + fault_text(view.fault_reason or view.last_end_why)
    )


def number(n: int) -> str:
    """A whole number in the page's locale, as Babel's format_decimal writes it.

    Below 1000 no locale groups digits and Babel writes Latin digits whatever the locale, so
    the figure is str(n): the panel's minutes and seconds then never load Babel's locale data,
    4-5 MiB that stayed in the service from its first page on.
    """
    if 0 <= n < 1000:
        return str(n)
    return format_decimal(n)


def guards_text(view) -> str:
    """The couch's guards in one line: the firmware's readings (S23), the patient's button (S24), the
    stand (S25) and a blown bulb; empty for a lamp with none of them."""
    parts = []
    if view.tilted:
        parts.append(gettext("Stand tilted"))
    if view.patient_pressed:
        parts.append(gettext("Patient button pressed: release it to start"))
    if view.guard == "unknown":  # the firmware link is down: no reading is better than a stale one
        parts.append(gettext("No sensor reading"))
    if view.temperature_c is not None:
        parts.append(gettext("%(n)s °C", n=number(round(view.temperature_c))))
    if view.current_a is not None:
        parts.append(gettext("%(n)s A", n=format_decimal(round(view.current_a, 1))))
    if view.guard not in (None, "ok", "unknown"):
        parts.append(gettext("Guard tripped"))
    if view.bulb_blown:
        parts.append(gettext("The bulb seems blown: it draws no current"))
    return " · ".join(parts)


def minutes_text(minutes: float) -> str:
    """A button label: "10 min"; under a minute in seconds ("3 s"); a part of a minute in seconds too
    ("1 min 15 s", never "1.25 min"); numbers in the page's locale."""
    if minutes < 1:
        return gettext("%(n)s s", n=number(round(minutes * 60)))
    if not math.isclose(minutes, round(minutes)):
        return seconds_text(round(minutes * 60))
    return gettext("%(n)s min", n=number(round(minutes)))


def seconds_text(seconds: float) -> str:
    """ "4 min 57 s", "20 min", "3 s": never a rounded figure that promises time that is not there."""
    whole = max(0, math.floor(seconds + 1e-6))
    if whole < 60:
        return gettext("%(n)s s", n=number(whole))
    minutes, rest = divmod(whole, 60)
    if rest:
        return gettext("%(m)s min %(s)s s", m=number(minutes), s=number(rest))
    return gettext("%(n)s min", n=number(minutes))


def clock_text(seconds: float | None) -> str:
    """Seconds as m:ss, rounded up so 0:00 shows only when time is really up."""
    if seconds is None:
        return "--:--"
    whole = max(0, math.ceil(seconds - 1e-6))
    return f"{whole // 60}:{whole % 60:02d}"


# lampctl.storage.user_names.NameRefused.why -> its sentence in the page's language (params from the refusal).
_NAME_REFUSALS = {
    "empty": lazy_gettext("Enter a name: letters, digits, spaces and . - ' _, at most %(most)s characters."),
    "bad-char": lazy_gettext("A name may hold letters, digits, spaces and . - ' _ only: %(name)s has %(char)s."),
    "too-long": lazy_gettext("A name may have at most %(most)s characters: %(name)s has %(count)s."),
    "edge-space": lazy_gettext("A name may not begin or end with a space: %(name)s."),
    "double-space": lazy_gettext("A name may not hold two spaces in a row: %(name)s."),
    "no-letter": lazy_gettext("A name needs at least one letter or digit: %(name)s has none."),
    "reserved": lazy_gettext("%(name)s is how the records name the system, not a person; choose another name."),
    "taken": lazy_gettext("A user named %(existing)s already exists."),
    "taken-case": lazy_gettext(
        "A user named %(existing)s already exists; %(name)s differs only in case, and names "
        "count as the same whatever their case."
    ),
}


def name_refusal(exc) -> str:
    """A refused user name (lampctl.storage.user_names.NameRefused) as one sentence in the page's language."""
    words = _NAME_REFUSALS.get(exc.why)
    return str(words) % exc.params if words is not None else str(exc)
