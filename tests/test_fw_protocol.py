"""Firmware protocol: framing, CRC, strict parsing, seq arithmetic, line splitting, MicroPython subset."""

import ast
import builtins
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol
from firmware_bridge.protocol import FrameError

PACKAGE = Path(protocol.__file__).resolve().parent

PARSER_REASONS = {
    protocol.TOO_LONG,
    protocol.NOT_ASCII,
    protocol.MALFORMED,
    protocol.BAD_CRC,
    protocol.BAD_SEQ,
    protocol.UNKNOWN_COMMAND,
    protocol.BAD_ARGS,
}

seqs = st.integers(min_value=1, max_value=protocol.MAX_SEQ)
lamps = st.integers(min_value=0, max_value=protocol.MAX_LAMPS - 1)
durations = st.integers(min_value=0, max_value=9_999_999_999)


@st.composite
def commands(draw):
    word = draw(st.sampled_from(sorted(protocol.COMMANDS)))
    if word == "ARM":
        args = (draw(lamps), draw(durations))
    elif word in ("OFF", "CLEAR"):
        args = (draw(lamps),)
    else:
        args = ()
    return protocol.Frame(draw(seqs), word, args)


tokens = st.text(alphabet=protocol._TOKEN_CHARS, min_size=1, max_size=10)


def frame_with_crc(body):
    """A frame whose CRC is right for ``body``, to reach the checks that come after the CRC."""
    return b"%s*%04X\n" % (body, protocol.crc16(body))


def test_protocol_crc16_is_ccitt_false():
    assert protocol.crc16(b"123456789") == 0x29B1
    assert protocol.crc16(b"") == 0xFFFF


def test_protocol_encode_command_wire_format():
    assert protocol.encode_command(7, "ARM", 0, 600000) == b"7 ARM 0 600000*C1AC\n"
    assert protocol.encode_command(1, "OFFALL").startswith(b"1 OFFALL*")


@given(commands())
def test_protocol_command_round_trip(frame):
    line = protocol.encode_command(frame.seq, frame.word, *frame.args)
    assert len(line) <= protocol.MAX_LINE
    assert protocol.parse_command(line) == frame
    assert protocol.parse_command(line.rstrip(b"\n")) == frame
    assert protocol.parse_command(line.rstrip(b"\n") + b"\r\n") == frame


@given(st.integers(min_value=0, max_value=protocol.MAX_SEQ), st.lists(tokens, max_size=8))
def test_protocol_ok_reply_round_trip(seq, args):
    line = protocol.encode_reply(seq, True, *args)
    assert protocol.parse_reply(line) == protocol.Frame(seq, "OK", args)


@given(seqs, tokens)
def test_protocol_err_reply_round_trip(seq, reason):
    assert protocol.parse_reply(protocol.encode_reply(seq, False, reason)) == protocol.Frame(seq, "ERR", [reason])


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_protocol_no_byte_string_crashes_the_parsers(data):
    for parse in (protocol.parse_command, protocol.parse_reply):
        try:
            frame = parse(data)
        except FrameError as err:
            assert err.reason in PARSER_REASONS
            assert 0 <= err.seq <= protocol.MAX_SEQ
        else:
            assert isinstance(frame, protocol.Frame)


@given(commands(), st.data())
def test_protocol_any_single_byte_corruption_is_rejected(frame, data):
    line = protocol.encode_command(frame.seq, frame.word, *frame.args)
    index = data.draw(st.integers(min_value=0, max_value=len(line) - 2))  # keep the newline
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != line[index]))
    corrupted = line[:index] + bytes([new]) + line[index + 1 :]
    with pytest.raises(FrameError):
        protocol.parse_command(corrupted)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1 PING*" + b"0" * 200 + b"\n", protocol.TOO_LONG),
        (b"1 PING\xff*0000\n", protocol.NOT_ASCII),
        (b"1 PING\t*0000\n", protocol.NOT_ASCII),
        (b"1 PING\n", protocol.MALFORMED),
        (b"1 PING*12\n", protocol.MALFORMED),
        (b"1 PING*abcd\n", protocol.MALFORMED),
        (b"1  PING*0000\n", protocol.MALFORMED),
        (b"PING*0000\n", protocol.MALFORMED),
        (b"1 PING*0000\n", protocol.BAD_CRC),
        (frame_with_crc(b"0 PING"), protocol.BAD_SEQ),
        (frame_with_crc(b"01 PING"), protocol.BAD_SEQ),
        (frame_with_crc(b"65536 PING"), protocol.BAD_SEQ),
        (frame_with_crc(b"-1 PING"), protocol.BAD_SEQ),
        (frame_with_crc(b"1 FIRE"), protocol.UNKNOWN_COMMAND),
        (frame_with_crc(b"1 ping"), protocol.UNKNOWN_COMMAND),
        (frame_with_crc(b"1 ARM 0"), protocol.BAD_ARGS),
        (frame_with_crc(b"1 ARM 0 01"), protocol.BAD_ARGS),
        (frame_with_crc(b"1 ARM 0 +5"), protocol.BAD_ARGS),
        (frame_with_crc(b"1 ARM 0 1_000"), protocol.BAD_ARGS),
        (frame_with_crc(b"1 ARM 0 12345678901"), protocol.BAD_ARGS),
        (frame_with_crc(b"1 PING 3"), protocol.BAD_ARGS),
    ],
)
def test_protocol_parse_command_rejects_with_reason(line, reason):
    with pytest.raises(FrameError) as caught:
        protocol.parse_command(line)
    assert caught.value.reason == reason


def test_protocol_rejection_carries_seq_only_once_crc_checked():
    with pytest.raises(FrameError) as caught:
        protocol.parse_command(frame_with_crc(b"42 FIRE"))
    assert caught.value.seq == 42
    with pytest.raises(FrameError) as caught:
        protocol.parse_command(b"42 PING*0000\n")
    assert caught.value.seq == 0


def test_protocol_parse_reply_rejects_commands_and_bare_err():
    with pytest.raises(FrameError):
        protocol.parse_reply(protocol.encode_command(3, "PING"))
    with pytest.raises(FrameError):
        protocol.parse_reply(frame_with_crc(b"3 ERR"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: protocol.encode_command(0, "PING"),
        lambda: protocol.encode_command(1, "FIRE"),
        lambda: protocol.encode_command(1, "ARM", 0),
        lambda: protocol.encode_command(1, "ARM", 0, -5),
        lambda: protocol.encode_command(1, "OFF", True),
        lambda: protocol.encode_command(70000, "PING"),
        lambda: protocol.encode_reply(1, False),
        lambda: protocol.encode_reply(1, True, "two words"),
    ],
)
def test_protocol_encoders_refuse_what_the_parser_would_reject(call):
    with pytest.raises(ValueError):
        call()


def test_protocol_seq_is_newer_wraps_and_refuses_replays():
    assert protocol.seq_is_newer(2, 1)
    assert protocol.seq_is_newer(1, protocol.MAX_SEQ)  # wrap 65535 -> 1
    assert not protocol.seq_is_newer(5, 5)
    assert not protocol.seq_is_newer(4, 5)
    assert not protocol.seq_is_newer(protocol.MAX_SEQ, 1)
    assert protocol.next_seq(protocol.MAX_SEQ) == 1
    assert protocol.next_seq(1) == 2


def test_protocol_status_and_hello_payloads():
    args = protocol.format_status([(True, 59000), (False, 0)])
    assert args == ["1:59000", "0:0"]
    assert protocol.parse_status(args) == [{"on": True, "remaining_ms": 59000}, {"on": False, "remaining_ms": 0}]
    for junk in (["2:5"], ["1:"], ["1"], ["1:5:6"], ["x:5"]):
        with pytest.raises(FrameError):
            protocol.parse_status(junk)
    assert protocol.parse_hello(["1", "1.0.0", "4", "3000", "3970000"]) == {
        "protocol": 1,
        "firmware": "1.0.0",
        "lamps": 4,
        "watchdog_ms": 3000,
        "max_arm_ms": 3970000,
    }
    with pytest.raises(FrameError):
        protocol.parse_hello(["1", "1.0.0", "4"])


def test_protocol_status_reply_for_max_lamps_fits_a_line():
    args = protocol.format_status([(True, protocol.MAX_ARM_MS)] * protocol.MAX_LAMPS)
    assert len(protocol.encode_reply(protocol.MAX_SEQ, True, *args)) <= protocol.MAX_LINE


def test_protocol_max_arm_is_66_minutes_plus_10_s():
    assert protocol.MAX_ARM_MS == (66 * 60 + 10) * 1000


def test_protocol_splitter_bounds_overlong_lines():
    splitter = protocol.LineSplitter()
    ping = protocol.encode_command(1, "PING")
    out = splitter.feed(b"x" * (protocol.MAX_LINE * 2) + b"\n" + ping)
    assert [getattr(item, "reason", item) for item in out] == [protocol.TOO_LONG, protocol.TOO_LONG, ping]
    # A line of exactly MAX_LINE bytes, newline included, is still a line.
    exact = b"y" * (protocol.MAX_LINE - 1) + b"\n"
    assert splitter.feed(exact) == [exact]
    assert splitter.feed(b"\n\r\n\n") == []


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=12))
def test_protocol_splitter_output_does_not_depend_on_chunking(data, cuts):
    def items(chunks):
        splitter = protocol.LineSplitter()
        out = []
        for chunk in chunks:
            out.extend(splitter.feed(chunk))
            assert len(splitter._buf) < protocol.MAX_LINE
        return [("E", item.reason) if isinstance(item, FrameError) else item for item in out]

    points = sorted(set(c for c in cuts if c <= len(data)))
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=False)]
    assert items(chunks) == items([data])
    assert items(chunks) == items([bytes([b]) for b in data])


# The modules the Pico runs must stay inside what MicroPython parses.
MICROPYTHON_MODULES = [
    PACKAGE / "protocol.py",
    PACKAGE / "firmware" / "logic.py",
    PACKAGE / "firmware" / "main.py",
]


@pytest.mark.parametrize("path", MICROPYTHON_MODULES, ids=lambda p: p.name)
def test_protocol_board_modules_use_only_the_micropython_subset(path):
    tree = ast.parse(path.read_text())
    # What only a type checker runs: the module's own `TYPE_CHECKING = False`, then `if TYPE_CHECKING:`.
    type_checking = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        where = "%s:%d" % (path.name, getattr(node, "lineno", 0))
        assert not isinstance(node, (ast.JoinedStr, ast.AnnAssign, ast.NamedExpr, ast.Match)), where
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.returns is None, where
            for arg in node.args.args + node.args.kwonlyargs:
                assert arg.annotation is None, where
            assert not node.args.kwonlyargs, where
        if isinstance(node, ast.ClassDef):
            assert not node.decorator_list, where
        # MicroPython's built-in types have no __init__ attribute: ValueError.__init__(self, ...)
        # raises AttributeError on the board (it did, in FrameError).  super().__init__ works.
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__":
            assert not (isinstance(node.func.value, ast.Name) and node.func.value.id in dir(builtins)), where
        # A Pico's floats are single precision: timer arithmetic stays in integers.
        assert not isinstance(node, ast.Div), where
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), where
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_checking:
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for banned in ("typing", "dataclasses", "__future__", "enum", "abc"):
                assert banned not in names, where


def test_protocol_version_2_has_the_guard_commands():
    assert protocol.PROTOCOL_VERSION == 2
    assert {w: protocol.COMMANDS[w] for w in ("GUARDS", "SENSE", "CLEAR")} == {"GUARDS": 0, "SENSE": 0, "CLEAR": 1}
    assert set(protocol.READ_ONLY) == {"GUARDS", "SENSE"}


def test_protocol_guards_and_sense_payloads_round_trip():
    table = [(0, 0, 9000, 52000), (1, 2, 0, 30000)]
    assert protocol.format_guards(table) == ["0:0:9000:52000", "1:2:0:30000"]
    assert protocol.parse_guards(protocol.format_guards(table)) == table
    assert protocol.parse_guards([]) == []
    channels = [(20000, 0, 0, 0), (30001, 2, 30002, 1500)]
    assert protocol.format_sense(channels) == ["20000:0:0:0", "30001:2:30002:1500"]
    assert protocol.parse_sense(protocol.format_sense(channels)) == [
        {"raw": 20000, "trip": 0, "trip_raw": 0, "trip_ago_ms": 0},
        {"raw": 30001, "trip": 2, "trip_raw": 30002, "trip_ago_ms": 1500},
    ]


@pytest.mark.parametrize(
    "case, args",
    [
        ("three fields", ["0:0:9000"]),
        ("a sign", ["0:0:-1:5"]),
        ("a leading zero", ["0:00:1:5"]),
        ("an adc past 2", ["0:3:1:5"]),
        ("a shared adc", ["0:0:1:5", "1:0:1:5"]),
        ("low above high", ["0:0:6:5"]),
        ("high past 65535", ["0:0:1:65536"]),
        ("three channels on a lamp", ["0:0:1:5", "0:1:1:5", "0:2:1:5"]),
        ("four channels", ["0:0:1:5", "1:1:1:5", "2:2:1:5", "3:0:1:5"]),
    ],
)
def test_protocol_parse_guards_rejects(case, args):
    with pytest.raises(FrameError):
        protocol.parse_guards(args)


@pytest.mark.parametrize(
    "case, args",
    [
        ("three fields", ["1:0:0"]),
        ("a raw past 65535", ["65536:0:0:0"]),
        ("a trip side past 3", ["1:4:0:0"]),
        ("no trip but a trip reading", ["1:0:5:0"]),
        ("no trip but an age", ["1:0:0:5"]),
        ("an age past the saturation", ["1:1:0:%d" % (protocol.MAX_TRIP_AGO_MS + 1)]),
        ("four channels", ["1:0:0:0"] * 4),
    ],
)
def test_protocol_parse_sense_rejects(case, args):
    with pytest.raises(FrameError):
        protocol.parse_sense(args)


def test_protocol_guard_replies_for_three_channels_at_their_widest_fit_a_line():
    widest_guards = protocol.format_guards(
        [(protocol.MAX_LAMPS - 1, adc, protocol.MAX_RAW, protocol.MAX_RAW) for adc in range(3)]
    )
    widest_sense = protocol.format_sense(
        [(protocol.MAX_RAW, protocol.TRIP_FAIL, protocol.MAX_RAW, protocol.MAX_TRIP_AGO_MS)] * protocol.MAX_GUARDS
    )
    for args in (widest_guards, widest_sense):
        assert len(protocol.encode_reply(protocol.MAX_SEQ, True, *args)) <= protocol.MAX_LINE
    assert len(protocol.encode_reply(protocol.MAX_SEQ, False, protocol.GUARD_TRIPPED)) <= protocol.MAX_LINE
    assert len(protocol.encode_command(protocol.MAX_SEQ, "CLEAR", 9_999_999_999)) <= protocol.MAX_LINE
