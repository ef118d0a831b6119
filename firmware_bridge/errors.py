"""What ends or refuses on the firmware link: refusals as sentences, the link's exceptions."""

from __future__ import annotations

from firmware_bridge import protocol

REFUSALS = {
    protocol.NO_SUCH_LAMP: "the firmware has no output with that index",
    protocol.MS_OUT_OF_RANGE: "the duration is outside 1..%d ms" % protocol.MAX_ARM_MS,
    protocol.OVER_CEILING: (
        "the lamp would stay on longer than the firmware's %d s ceiling" % (protocol.MAX_ARM_MS // 1000)
    ),
    protocol.NEED_HELLO: "the firmware has cut its lamps and waits for a new HELLO",
    protocol.REPLAY: "the firmware saw a sequence number that was not newer than the last one",
    protocol.GUARD_TRIPPED: (
        "a temperature or current guard of that lamp has tripped or reads out of range, "
        "and the firmware keeps the lamp off until it reads in range and is cleared"
    ),
}


class FirmwareError(Exception):
    """The firmware refused a command (it answered ERR); str() is one sentence.

    ``reason`` is the firmware's ERR token (e.g. protocol.GUARD_TRIPPED) when it answered
    one, else None (a local check, a timeout, a link that went down).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class FirmwareTimeout(FirmwareError):
    """No answer within reply_timeout_s, or the link is down."""


class LinkFailure(Exception):
    """Ends one connection; the message is the sentence reported to on_link_change."""


def sentence(text: str) -> str:
    text = text.rstrip(".")
    return text[:1].upper() + text[1:] + "."
