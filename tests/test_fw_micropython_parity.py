"""The same inputs give the same outputs on CPython and on MicroPython: parsers, splitter, firmware traces."""

import json
import os
import random

import pytest

from firmware_bridge import protocol
from firmware_bridge.firmware.logic import Firmware
from firmware_bridge.firmware.mpshim import (
    TICKS_PERIOD,
    FakeTicks,
    Pin,
    ticks_add,
    ticks_diff,
)
from tests.mpvm_runner import Vm, find_node, scenario
from tests.test_fw_micropython_board import noise_line

# Long form: MPVM_SCALE=N runs N times the lines and traces (the default 1 is CI's short form).
SCALE = int(os.environ.get("MPVM_SCALE", "1"))


@pytest.fixture(scope="module")
def vm():
    return Vm(find_node())


def frame(seq, word, *args):
    return protocol.encode_command(seq, word, *args)


def crc_framed(body):
    return b"%s*%04X\n" % (body, protocol.crc16(body))


def parser_cases(rnd, count):
    """Valid, damaged and hostile lines: everything the board's parser meets on a noisy link."""
    words = sorted(protocol.COMMANDS) + ["OK", "ERR", "ping", "FIRE", ""]
    cases = []
    for _ in range(count):
        seq = rnd.choice([0, 1, 7, protocol.MAX_SEQ, protocol.MAX_SEQ + 1, rnd.randrange(1, 70000)])
        word = rnd.choice(words)
        args = [
            rnd.choice(["0", "3", "01", "+5", "-1", "1_0", "4000", "9999999999", "12345678901", "a:b", "1:500"])
            for _ in range(rnd.randrange(3))
        ]
        line = crc_framed(" ".join([str(seq), word] + args).encode())
        kind = rnd.randrange(6)
        if kind == 1:
            i = rnd.randrange(len(line) - 1)
            line = line[:i] + bytes([rnd.randrange(256)]) + line[i + 1 :]
        elif kind == 2:
            line = line[: rnd.randrange(len(line))]
        elif kind == 3:
            line = bytes(rnd.randrange(256) for _ in range(rnd.randrange(200)))
        elif kind == 4:
            line = line.replace(b" ", b"  ", 1).replace(b"\n", b"\r\n")
        cases.append(line)
    return cases


def cpython_parse(parse, line):
    try:
        got = parse(line)
    except protocol.FrameError as err:
        return ["error", err.reason, err.seq]
    return [got.seq, got.word, [str(a) for a in got.args]]


def test_mpvm_parsers_and_splitter_agree_with_cpython(vm):
    rnd = random.Random(5)
    lines = parser_cases(rnd, 1500 * SCALE)
    stream = b"".join(lines)
    cuts = sorted(rnd.sample(range(len(stream)), 300))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)], strict=False)]
    emitted = scenario(
        vm,
        """
        import json
        case = json.load(open("/lib/case.json"))
        def parse(fn, line):
            try:
                got = fn(line)
            except protocol.FrameError as err:
                return ["error", err.reason, err.seq]
            return [got.seq, got.word, [str(a) for a in got.args]]
        for hexline in case["lines"]:
            line = bytes.fromhex(hexline)
            emit(c=parse(protocol.parse_command, line), r=parse(protocol.parse_reply, line), crc=protocol.crc16(line))
        splitter = protocol.LineSplitter()
        items = []
        for hexchunk in case["chunks"]:
            for item in splitter.feed(bytes.fromhex(hexchunk)):
                items.append(item.reason if isinstance(item, protocol.FrameError) else item.hex())
        emit(items=items)
    """,
        extra={"/lib/case.json": json.dumps({"lines": [x.hex() for x in lines], "chunks": [c.hex() for c in chunks]})},
    )
    expected = [
        {
            "c": cpython_parse(protocol.parse_command, line),
            "r": cpython_parse(protocol.parse_reply, line),
            "crc": protocol.crc16(line),
        }
        for line in lines
    ]
    assert emitted[:-1] == expected
    splitter = protocol.LineSplitter()
    items = [i.reason if isinstance(i, protocol.FrameError) else i.hex() for i in splitter.feed(stream)]
    assert emitted[-1] == {"items": items}
    outcomes = {e["c"][1] if e["c"][0] == "error" else "frame" for e in expected}
    assert outcomes >= {
        "frame",
        "too-long",
        "not-ascii",
        "malformed",
        "bad-crc",
        "bad-seq",
        "unknown-command",
        "bad-args",
    }, "the cases must reach every parser outcome"


def fault_trace(rnd, steps):
    """Ops for run_trace(): valid traffic from a host, damaged and hostile input, silences."""
    ops, seq, sent = [], 0, []
    for _ in range(steps):
        roll = rnd.random()
        if roll < 0.2:
            ops.append(["advance", rnd.choice([1, 10, 200, 999, 2999, 3000, 5000])])
            continue
        seq = protocol.next_seq(seq)
        word = rnd.choice(["HELLO", "ARM", "ARM", "PING", "PING", "STATUS", "OFF", "OFFALL"])
        args = {
            "ARM": (rnd.randrange(4), rnd.choice([1, 500, 4000, protocol.MAX_ARM_MS, protocol.MAX_ARM_MS + 1])),
            "OFF": (rnd.randrange(4),),
        }.get(word, ())
        line = frame(seq, word, *args)
        if roll < 0.6:
            data = line
        elif roll < 0.7 and sent:
            data = rnd.choice(sent)  # replay
        elif roll < 0.8:
            data = noise_line(rnd, rnd.randrange(1, 300))  # noise, maybe overlong
        elif roll < 0.9:
            i = rnd.randrange(len(line) - 1)  # one flipped bit
            data = line[:i] + bytes([line[i] ^ (1 << rnd.randrange(8))]) + line[i + 1 :]
        else:
            data = line[: rnd.randrange(1, len(line))]  # cut short
        sent.append(line)
        ops.append(["feed", data.hex()])
    return ops


def cpython_trace(ops, start):
    clock = FakeTicks(start)
    pins = [Pin(n) for n in range(3)]
    changes = []
    fw = Firmware(
        pins,
        clock.ticks_ms,
        ticks_diff,
        ticks_add,
        on_change=lambda lamp, on, why: changes.append([clock.now, lamp, on, why]),
    )
    replies = []
    for op, value in ops:
        if op == "feed":
            replies += [line.decode() for line in fw.feed(bytes.fromhex(value))]
            continue
        target = clock.now + value
        while True:
            wait = fw.poll()
            if wait is None or clock.now + wait > target:
                clock.advance(target - clock.now)
                fw.poll()
                break
            clock.advance(wait)
    return {"replies": replies, "changes": changes, "states": [p.states for p in pins]}


def test_s2_mpvm_fault_traces_match_cpython_step_for_step(vm):
    whys = set()
    for seed in range(1, 3 * SCALE + 1):
        rnd = random.Random(seed)
        start = rnd.choice([TICKS_PERIOD - 20_000, rnd.randrange(TICKS_PERIOD)])
        ops = fault_trace(rnd, 600)
        emitted = scenario(
            vm,
            """
            import json
            rig = Rig(lamps=3, start=%d)
            replies = run_trace(rig, json.load(open("/lib/ops.json")))
            emit(replies=replies, changes=rig.changes, states=rig.states())
        """
            % start,
            extra={"/lib/ops.json": json.dumps(ops)},
        )
        expected = cpython_trace(ops, start)
        assert emitted == [expected], "seed %d: MicroPython and CPython part ways" % seed
        whys |= {why for _, _, _, why in expected["changes"]}
    assert whys == {"boot", "armed", "off", "deadline", "watchdog", "bad-frames"}, "the traces must reach every cut"
