"""Line frames between the host and the lamp firmware: pure encode/parse, no I/O.

This module runs on CPython (host, simulator, tests) and on MicroPython (the
Pico), so it sticks to the common subset: no dataclasses, no typing at run
time, no annotations (types are in ``# type:`` comments, for mypy), %-formatting,
explicit character checks instead of int()'s lenient parsing.

Wire format (ASCII, one frame per line)::

    <seq> <WORD> [<arg> ...]*<crc>\\n

* ``seq``  decimal 1..65535, no leading zeros.  Host commands carry their own
  seq; a reply carries the seq of the command it answers (0 when the command
  was too damaged to trust its seq).
* ``WORD`` a command (HELLO ARM OFF OFFALL PING STATUS GUARDS SENSE CLEAR) or a
  reply (OK ERR).
* ``crc``  CRC-16/CCITT-FALSE of every byte before ``*``, four upper-case hex
  digits.
* single spaces between fields; an optional ``\\r`` before ``\\n`` is dropped;
  a line is at most MAX_LINE bytes including the newline.
"""

# True for type checkers only (mypy reads a module's TYPE_CHECKING as true): the board never imports typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypedDict

    # The fields of a HELLO reply, and one lamp of a STATUS reply.
    Hello = TypedDict("Hello", {"protocol": int, "firmware": str, "lamps": int, "watchdog_ms": int, "max_arm_ms": int})
    LampStatus = TypedDict("LampStatus", {"on": bool, "remaining_ms": int})
    # One guard channel as (lamp, adc, low, high), and one channel of a SENSE reply.
    GuardRow = tuple[int, int, int, int]
    Sense = TypedDict("Sense", {"raw": int, "trip": int, "trip_raw": int, "trip_ago_ms": int})

PROTOCOL_VERSION = 2  # 2: the analog guard (GUARDS, SENSE, CLEAR, ERR guard-tripped)
MAX_LINE = 128  # bytes including "\n": bounds every buffer on both sides
SEQ_MODULO = 65536  # seq lives in 1..65535; 0 means "no trustworthy seq"
MAX_SEQ = SEQ_MODULO - 1
MAX_LAMPS = 8  # a STATUS reply for 8 lamps still fits in MAX_LINE
# Hard ceiling of one ARM: a 60 min session x 1.10 backstop plus up to 10 s grace.
MAX_ARM_MS = 60 * 60 * 1000 * 11 // 10 + 10 * 1000  # 3 970 000 ms
# The analog guard: channels (lamp, adc, low, high) on the Pico's ADC inputs 0..2 (GP26..GP28),
# each reading (ADC.read_u16() units) held inside low..high, at most 2 channels per lamp.
MAX_GUARDS = 3
MAX_GUARDS_PER_LAMP = 2
MAX_RAW = 65535
# Why a channel tripped (SENSE's <trip>): its reading was below low, above high, or could not be read.
TRIP_NONE = 0
TRIP_LOW = 1
TRIP_HIGH = 2
TRIP_FAIL = 3
# A trip's age saturates here (about 3.1 days), well inside the ticks' 2**29 ms half-period.
MAX_TRIP_AGO_MS = 1 << 28

# Host -> firmware commands and how many (decimal, non-negative) arguments each takes.
COMMANDS = {
    "HELLO": 0,  # reply: OK <proto> <fw-version> <lamps> <watchdog_ms> <max_arm_ms>
    "ARM": 2,  # ARM <lamp> <ms>   reply: OK
    "OFF": 1,  # OFF <lamp>        reply: OK
    "OFFALL": 0,  # every lamp off    reply: OK
    "PING": 0,  # heartbeat         reply: OK
    "STATUS": 0,  # reply: OK <on>:<remaining_ms> per lamp, e.g. OK 1:59000 0:0
    "GUARDS": 0,  # reply: OK <lamp>:<adc>:<low>:<high> per guard channel (also before HELLO)
    "SENSE": 0,  # reply: OK <raw>:<trip>:<trip_raw>:<trip_ago_ms> per channel (also before HELLO)
    "CLEAR": 1,  # CLEAR <lamp>      reply: OK once every channel of the lamp reads in range
}
# Read-only commands answered before HELLO too; before HELLO they neither feed the
# watchdog nor sync the host (after it they are ordinary frames, SENSE the heartbeat).
READ_ONLY = ("GUARDS", "SENSE")
REPLIES = ("OK", "ERR")

# Rejection reasons a parser raises; the firmware answers them as "ERR <reason>".
TOO_LONG = "too-long"
NOT_ASCII = "not-ascii"
MALFORMED = "malformed"
BAD_CRC = "bad-crc"
BAD_SEQ = "bad-seq"
UNKNOWN_COMMAND = "unknown-command"
BAD_ARGS = "bad-args"
# Reasons the firmware adds from its own state (not parse errors).
REPLAY = "replay"  # seq not newer than the last accepted one (a bad frame)
NEED_HELLO = "need-hello"  # no HELLO since boot or since the last safety cut
NO_SUCH_LAMP = "no-such-lamp"
MS_OUT_OF_RANGE = "ms-out-of-range"  # ARM ms outside 1..MAX_ARM_MS
OVER_CEILING = "over-ceiling"  # re-ARM would keep a lamp on longer than MAX_ARM_MS in one go
INTERNAL = "internal"  # handling the frame failed inside the firmware (a bad frame)
GUARD_TRIPPED = "guard-tripped"  # ARM/CLEAR of a lamp whose guard tripped or reads out of range now

_DIGITS = "0123456789"
_HEX = "0123456789ABCDEF"
_TOKEN_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.:_-"
_MAX_INT_DIGITS = 10


class FrameError(ValueError):
    """A line that is not a valid frame; ``reason`` is one of the tokens above.

    ``seq`` is the frame's seq when its CRC checked out (so it can be trusted
    for an ERR reply), else 0.
    """

    def __init__(self, reason, seq=0):
        # type: (str, int) -> None
        # super(), not ValueError.__init__(self, ...): MicroPython's built-in
        # exception types have no __init__ attribute, so that call raises
        # AttributeError on the board and the first bad frame would end the loop.
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


class Frame:
    """A parsed frame: ``seq``, ``word`` (command or OK/ERR) and ``args`` (tuple).

    Command args are ints (a Command); reply args are str tokens (a Reply).
    """

    def __init__(self, seq, word, args=()):
        # type: (int, str, list[int] | list[str] | tuple[int | str, ...]) -> None
        self.seq = seq
        self.word = word
        self.args = tuple(args)  # type: tuple[int | str, ...]

    def __eq__(self, other):
        # type: (object) -> bool
        return (
            isinstance(other, Frame) and self.seq == other.seq and self.word == other.word and self.args == other.args
        )

    def __ne__(self, other):
        # type: (object) -> bool
        return not self.__eq__(other)

    def __hash__(self):
        # type: () -> int
        return hash((self.seq, self.word, self.args))

    def __repr__(self):
        # type: () -> str
        return "Frame(%d, %r, %r)" % (self.seq, self.word, self.args)


class Command(Frame):
    """A host command as parse_command read it: its args are ints."""

    args = ()  # type: tuple[int, ...]


class Reply(Frame):
    """A firmware reply (OK or ERR) as parse_reply read it: its args are str tokens."""

    args = ()  # type: tuple[str, ...]


def crc16(data, crc=0xFFFF):
    # type: (bytes | bytearray, int) -> int
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0).

    Bitwise rather than a 512-byte table: frames are short and the Pico's RAM
    is better spent elsewhere.  crc16(b"123456789") == 0x29B1.
    """
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc


def next_seq(seq):
    # type: (int) -> int
    """The seq after ``seq``: 1..65535, skipping the reserved 0 on wrap."""
    return seq % MAX_SEQ + 1


def seq_is_newer(seq, last):
    # type: (int, int) -> bool
    """True when ``seq`` comes after ``last`` in serial-number arithmetic.

    Newer means 1..32767 steps ahead modulo 65536, so the counter may wrap from
    65535 to 1 while replays of the previous half-window are still refused.
    """
    ahead = (seq - last) % SEQ_MODULO
    return 0 < ahead < SEQ_MODULO // 2


def _is_token(text, chars):
    # type: (str, str) -> bool
    return bool(text) and all(ch in chars for ch in text)


def _parse_uint(text):
    # type: (str) -> int | None
    """Strict decimal: digits only, no sign, no leading zero, at most 10 digits."""
    if not _is_token(text, _DIGITS) or len(text) > _MAX_INT_DIGITS:
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    return int(text)


def _encode(seq, word, args):
    # type: (int, str, tuple[int | str, ...]) -> bytes
    if not (0 <= seq <= MAX_SEQ):
        raise ValueError("seq %r is outside 0..%d" % (seq, MAX_SEQ))
    parts = ["%d" % seq, word]
    for arg in args:
        parts.append(str(arg))
    body = " ".join(parts)
    line = ("%s*%04X\n" % (body, crc16(body.encode()))).encode()
    if len(line) > MAX_LINE:
        raise ValueError("frame of %d bytes is longer than the %d-byte limit" % (len(line), MAX_LINE))
    return line


def encode_command(seq, word, *args):
    # type: (int, str, *int) -> bytes
    """Bytes of one host command, e.g. encode_command(7, "ARM", 0, 600000)."""
    if word not in COMMANDS:
        raise ValueError("unknown command %r; expected one of %s" % (word, " ".join(sorted(COMMANDS))))
    if len(args) != COMMANDS[word]:
        raise ValueError("%s takes %d argument(s), got %d" % (word, COMMANDS[word], len(args)))
    for arg in args:
        if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0 or len(str(arg)) > _MAX_INT_DIGITS:
            raise ValueError("%s argument %r is not a non-negative integer of at most 10 digits" % (word, arg))
    if seq == 0:
        raise ValueError("seq 0 is reserved for replies to damaged frames")
    return _encode(seq, word, args)


def encode_reply(seq, ok, *args):
    # type: (int, bool, *int | str) -> bytes
    """Bytes of one firmware reply: ``OK [args]`` or ``ERR <reason>``."""
    for arg in args:
        if not _is_token(str(arg), _TOKEN_CHARS):
            raise ValueError("reply argument %r is not a token of [A-Za-z0-9.:_-]" % (arg,))
    if not ok and len(args) != 1:
        raise ValueError("an ERR reply carries exactly one reason token")
    return _encode(seq, "OK" if ok else "ERR", args)


def _split_frame(line):
    # type: (bytes) -> tuple[int, str, list[str]]
    """Check length, charset and CRC; return (seq, word, [arg strings])."""
    if len(line) > MAX_LINE:
        raise FrameError(TOO_LONG)
    if line[-1:] == b"\n":
        line = line[:-1]
    if line[-1:] == b"\r":
        line = line[:-1]
    for byte in line:
        if byte < 0x20 or byte > 0x7E:
            raise FrameError(NOT_ASCII)
    text = line.decode()
    star = text.rfind("*")
    if star < 0 or len(text) - star - 1 != 4 or not _is_token(text[star + 1 :], _HEX):
        raise FrameError(MALFORMED)
    body = text[:star]
    fields = body.split(" ")
    if len(fields) < 2:
        raise FrameError(MALFORMED)
    for field in fields:
        if not field:  # double, leading or trailing space
            raise FrameError(MALFORMED)
    if int(text[star + 1 :], 16) != crc16(line[:star]):
        raise FrameError(BAD_CRC)
    seq = _parse_uint(fields[0])
    if seq is None or seq > MAX_SEQ:
        raise FrameError(BAD_SEQ)
    return seq, fields[1], fields[2:]


def parse_command(line):
    # type: (bytes) -> Command
    """Parse one host command line (bytes, with or without its newline).

    Returns a Frame with int args; raises FrameError(reason) otherwise.
    """
    seq, word, raw_args = _split_frame(line)
    if seq == 0:
        raise FrameError(BAD_SEQ)
    if word not in COMMANDS:
        raise FrameError(UNKNOWN_COMMAND, seq)
    if len(raw_args) != COMMANDS[word]:
        raise FrameError(BAD_ARGS, seq)
    args = []
    for raw in raw_args:
        value = _parse_uint(raw)
        if value is None:
            raise FrameError(BAD_ARGS, seq)
        args.append(value)
    return Command(seq, word, args)


def parse_reply(line):
    # type: (bytes) -> Reply
    """Parse one firmware reply line; returns a Frame with str args or raises FrameError."""
    seq, word, raw_args = _split_frame(line)
    if word not in REPLIES:
        raise FrameError(UNKNOWN_COMMAND, seq)
    for raw in raw_args:
        if not _is_token(raw, _TOKEN_CHARS):
            raise FrameError(BAD_ARGS, seq)
    if word == "ERR" and len(raw_args) != 1:
        raise FrameError(BAD_ARGS, seq)
    return Reply(seq, word, raw_args)


def format_status(lamps):
    # type: (list[tuple[bool, int]]) -> list[str]
    """STATUS reply args from [(on, remaining_ms), ...]."""
    return ["%d:%d" % (1 if on else 0, remaining) for on, remaining in lamps]


def parse_status(args):
    # type: (tuple[str, ...] | list[str]) -> list[LampStatus]
    """[{"on": bool, "remaining_ms": int}, ...] from STATUS reply args; FrameError on junk."""
    result = []  # type: list[LampStatus]
    for arg in args:
        pair = arg.split(":")
        remaining = _parse_uint(pair[1]) if len(pair) == 2 else None
        if remaining is None or pair[0] not in ("0", "1"):
            raise FrameError(BAD_ARGS)
        result.append({"on": pair[0] == "1", "remaining_ms": remaining})
    return result


def check_guards(table, lamps=MAX_LAMPS):
    # type: (list[GuardRow] | tuple[GuardRow, ...], int) -> list[GuardRow]
    """The guard table as a list of (lamp, adc, low, high) int tuples; ValueError (one sentence) when it is not one.

    lamp 0..lamps-1, adc 0..MAX_GUARDS-1 and used once, 0 <= low <= high <= MAX_RAW,
    at most MAX_GUARDS_PER_LAMP channels on one lamp.
    """
    rows = []  # type: list[GuardRow]
    adcs = []  # type: list[int]
    per_lamp = [0] * MAX_LAMPS
    if len(table) > MAX_GUARDS:
        raise ValueError("the firmware has %d guard channels, got %d" % (MAX_GUARDS, len(table)))
    for row in table:
        if len(row) != 4:
            raise ValueError("a guard channel is (lamp, adc, low, high), got %r" % (row,))
        for value in row:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("a guard channel holds integers, got %r" % (row,))
        lamp, adc, low, high = row
        if not 0 <= lamp < lamps:
            raise ValueError("guard channel %r names lamp %d; lamps are 0..%d" % (row, lamp, lamps - 1))
        if not 0 <= adc < MAX_GUARDS:
            raise ValueError("guard channel %r names ADC %d; the ADC inputs are 0..%d" % (row, adc, MAX_GUARDS - 1))
        if adc in adcs:
            raise ValueError("ADC %d guards two channels; each ADC input serves one" % adc)
        if not 0 <= low <= high <= MAX_RAW:
            raise ValueError("guard channel %r needs 0 <= low <= high <= %d" % (row, MAX_RAW))
        per_lamp[lamp] += 1
        if per_lamp[lamp] > MAX_GUARDS_PER_LAMP:
            raise ValueError("lamp %d has more than %d guard channels" % (lamp, MAX_GUARDS_PER_LAMP))
        adcs.append(adc)
        rows.append((lamp, adc, low, high))
    return rows


def _parse_fields(arg, count):
    # type: (str, int) -> list[int]
    parts = arg.split(":")
    if len(parts) != count:
        raise FrameError(BAD_ARGS)
    values = []
    for part in parts:
        value = _parse_uint(part)
        if value is None:
            raise FrameError(BAD_ARGS)
        values.append(value)
    return values


def format_guards(table):
    # type: (list[GuardRow] | tuple[GuardRow, ...]) -> list[str]
    """GUARDS reply args from [(lamp, adc, low, high), ...], in channel order."""
    return ["%d:%d:%d:%d" % (lamp, adc, low, high) for lamp, adc, low, high in table]


def parse_guards(args):
    # type: (tuple[str, ...] | list[str]) -> list[GuardRow]
    """[(lamp, adc, low, high), ...] from GUARDS reply args; FrameError(BAD_ARGS) on junk."""
    rows = []  # type: list[GuardRow]
    for arg in args:
        lamp, adc, low, high = _parse_fields(arg, 4)
        rows.append((lamp, adc, low, high))
    try:
        return check_guards(rows)
    except ValueError:
        raise FrameError(BAD_ARGS) from None


def format_sense(channels):
    # type: (list[tuple[int, int, int, int]]) -> list[str]
    """SENSE reply args from [(raw, trip, trip_raw, trip_ago_ms), ...], in channel order."""
    return ["%d:%d:%d:%d" % (raw, trip, trip_raw, ago) for raw, trip, trip_raw, ago in channels]


def parse_sense(args):
    # type: (tuple[str, ...] | list[str]) -> list[Sense]
    """[{"raw", "trip", "trip_raw", "trip_ago_ms"}, ...] from SENSE reply args; FrameError(BAD_ARGS) on junk."""
    result = []  # type: list[Sense]
    if len(args) > MAX_GUARDS:
        raise FrameError(BAD_ARGS)
    for arg in args:
        raw, trip, trip_raw, ago = _parse_fields(arg, 4)
        if raw > MAX_RAW or trip_raw > MAX_RAW or trip > TRIP_FAIL or ago > MAX_TRIP_AGO_MS:
            raise FrameError(BAD_ARGS)
        if trip == TRIP_NONE and (trip_raw or ago):
            raise FrameError(BAD_ARGS)
        result.append({"raw": raw, "trip": trip, "trip_raw": trip_raw, "trip_ago_ms": ago})
    return result


def parse_hello(args):
    # type: (tuple[str, ...] | list[str]) -> Hello
    """Dict of a HELLO reply's fields; FrameError(BAD_ARGS) when they don't fit."""
    if len(args) != 5:
        raise FrameError(BAD_ARGS)
    numbers = []
    for index in (0, 2, 3, 4):
        value = _parse_uint(args[index])
        if value is None:
            raise FrameError(BAD_ARGS)
        numbers.append(value)
    return {
        "protocol": numbers[0],
        "firmware": args[1],
        "lamps": numbers[1],
        "watchdog_ms": numbers[2],
        "max_arm_ms": numbers[3],
    }


class LineSplitter:
    """Cuts a byte stream into lines without ever holding more than MAX_LINE bytes.

    ``feed(data)`` returns a list whose items are complete lines (bytes,
    newline included) or FrameError(TOO_LONG).  A line that reaches MAX_LINE
    bytes without its newline yields one TOO_LONG, and one more for every
    further MAX_LINE bytes, so endless garbage keeps counting as bad frames
    instead of growing a buffer.  The result does not depend on how the stream
    is chunked.  Empty lines are dropped: a lone newline is how a host flushes
    a half-received line before its first frame.
    """

    def __init__(self):
        # type: () -> None
        self._buf = bytearray()
        self._count = 0  # bytes of the current line so far, newline excluded

    def reset(self):
        # type: () -> None
        self._buf = bytearray()
        self._count = 0

    def feed(self, data):
        # type: (bytes) -> list[bytes | FrameError]
        out = []  # type: list[bytes | FrameError]
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl
            before = self._count
            self._count += end - start
            if self._count < MAX_LINE:
                self._buf.extend(data[start:end])
            else:
                self._buf = bytearray()
                for _ in range(self._count // MAX_LINE - before // MAX_LINE):
                    out.append(FrameError(TOO_LONG))
            if nl < 0:
                break
            line = bytes(self._buf)
            if self._count < MAX_LINE and line.strip(b"\r"):
                out.append(line + b"\n")
            self._buf = bytearray()
            self._count = 0
            start = nl + 1
        return out
