"""What ends or refuses on the firmware link: refusals as sentences, the link's exceptions, the HELLO checks."""

import threading

from firmware_bridge import protocol

REFUSALS = {
    protocol.NO_SUCH_LAMP: "the firmware has no output with that index",
    protocol.MS_OUT_OF_RANGE: "the duration is outside 1..%d ms" % protocol.MAX_ARM_MS,
    protocol.OVER_CEILING: ("the lamp would stay on longer than the firmware's %d s ceiling"
                            % (protocol.MAX_ARM_MS // 1000)),
    protocol.NEED_HELLO: "the firmware has cut its lamps and waits for a new HELLO",
    protocol.REPLAY: "the firmware saw a sequence number that was not newer than the last one",
}


class FirmwareError(Exception):
    """The firmware refused a command (it answered ERR); str() is one sentence."""


class FirmwareTimeout(FirmwareError):
    """No answer within reply_timeout_s, or the link is down."""


class LinkFailure(Exception):
    """Ends one connection; the message is the sentence reported to on_link_change."""


class Waiter:
    """One caller waiting for the reply to its seq."""

    __slots__ = ("word", "event", "reply", "error")

    def __init__(self, word):
        self.word = word
        self.event = threading.Event()
        self.reply = None
        self.error = None


def sentence(text):
    text = text.rstrip(".")
    return text[:1].upper() + text[1:] + "."


def check_hello(args, url, lamp_count, watchdog_s, heartbeat_s):
    """The fields of a HELLO reply, or LinkFailure when this host must not use that firmware."""
    try:
        info = protocol.parse_hello(args)
    except protocol.FrameError:
        raise LinkFailure("The firmware on %s sent a HELLO reply that could not be read: %r."
                          % (url, " ".join(args))) from None
    if info["protocol"] != protocol.PROTOCOL_VERSION:
        raise LinkFailure("The firmware on %s speaks protocol %d; this host speaks %d."
                          % (url, info["protocol"], protocol.PROTOCOL_VERSION))
    if info["lamps"] < lamp_count:
        raise LinkFailure("The firmware on %s drives %d lamps but %d are configured."
                          % (url, info["lamps"], lamp_count))
    firmware_s = info["watchdog_ms"] / 1000
    if firmware_s > watchdog_s + 0.0005:
        raise LinkFailure("The firmware on %s cuts after %g s of silence, longer than the "
                          "configured watchdog of %g s." % (url, firmware_s, watchdog_s))
    if firmware_s <= 2 * heartbeat_s:
        raise LinkFailure("The firmware on %s cuts after %g s of silence, too short for "
                          "heartbeats every %g s." % (url, firmware_s, heartbeat_s))
    return info
