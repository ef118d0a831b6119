"""The board's main loop (main.py) on MicroPython's own interpreter: line noise, failures, as the board runs it."""

import random

import pytest

from firmware_bridge import protocol
from tests.mpvm_runner import FLAT_LAYOUT, PACKAGE_LAYOUT, Vm, find_node, scenario


@pytest.fixture(scope="module")
def vm():
    return Vm(find_node())


def frame(seq, word, *args):
    return protocol.encode_command(seq, word, *args)


def noise_line(rnd, size):
    """Random bytes without a newline, then one: exactly one bad frame on the wire."""
    return bytes(rnd.choice([b for b in range(256) if b != 0x0A]) for _ in range(size)) + b"\n"


def test_s2_mpvm_line_noise_never_ends_the_loop_and_follows_the_bad_frame_rule(vm):
    rnd = random.Random(11)
    events = [(0, b"\n" + frame(1, "HELLO")), (10, frame(2, "ARM", 0, 2000))]
    seq = 2
    for at in range(100, 2000, 200):  # one bad frame, then a heartbeat: the run never reaches 3
        seq += 1
        events += [(at, noise_line(rnd, rnd.randrange(1, 126))), (at + 50, frame(seq, "PING"))]
    noise_count = (len(events) - 2) // 2
    events += [
        (2550, frame(seq + 1, "ARM", 1, 10_000)),
        (2600, b"".join(noise_line(rnd, 40) for _ in range(3))),
        (2700, frame(seq + 2, "ARM", 1, 10_000)),
        (2800, frame(1, "HELLO")),
    ]
    emitted = scenario(
        vm,
        """
        import main
        changes = []
        main._log_change = lambda lamp, on, why: changes.append([machine.now(), lamp, on, why])
        fw, outputs = main.build(machine.ticks_ms)
        port = ScriptedPort([(at, bytes.fromhex(data)) for at, data in %r], tail_ms=100)
        wdt = FeedLog()
        main.serve(fw, outputs, port, wdt)
        emit(written=port.written, changes=changes, gap=wdt.longest_gap(),
             relays=[machine.pins[g].value() for g in main.RELAY_PINS])
    """
        % [(at, data.hex()) for at, data in events],
    )
    [result] = emitted
    replies = [reply for _, reply in result["written"]]
    errs = [reply for reply in replies if reply[1] == "ERR"]
    assert len(errs) == noise_count + 3 + 1, "every noise line answered, then need-hello"
    assert {e[2][0] for e in errs[:noise_count]} <= {"malformed", "not-ascii", "bad-crc"}
    assert all(e[0] == 0 for e in errs[:-1]) and errs[-1] == [seq + 2, "ERR", ["need-hello"]]
    assert [r for r in replies if r[1] == "OK"][-1] == [1, "OK", ["2", "2.0.0", "4", "3000", str(protocol.MAX_ARM_MS)]]
    on_off = [c[1:] for c in result["changes"] if c[3] != "boot"]
    assert on_off == [[0, True, "armed"], [0, False, "deadline"], [1, True, "armed"], [1, False, "bad-frames"]]
    assert [c[0] for c in result["changes"] if c[3] in ("deadline", "bad-frames")] == [2010, 2600]
    assert result["gap"] <= 50, "the hardware watchdog must be fed at least every MAX_WAIT_MS"
    assert result["relays"] == [0, 0, 0, 0]


def test_mpvm_main_loop_survives_a_failure_under_the_firmware(vm):
    emitted = scenario(
        vm,
        """
        import main
        fw, outputs = main.build(machine.ticks_ms)
        real_feed = fw.feed
        calls = []
        def flaky_feed(data):
            calls.append(len(data))
            if len(calls) == 3:
                raise MemoryError("heap fragmented")
            return real_feed(data)
        fw.feed = flaky_feed
        port = ScriptedPort([(at, bytes.fromhex(data)) for at, data in %r], tail_ms=10)
        main.serve(fw, outputs, port, FeedLog())
        emit(written=[w[1] for w in port.written], calls=len(calls))
    """
        % [
            (10 * n, line.hex())
            for n, line in enumerate(
                [frame(1, "HELLO"), frame(2, "ARM", 0, 5000), frame(3, "PING"), frame(4, "STATUS")]
            )
        ],
    )
    assert emitted[0]["written"] == [
        [1, "OK", ["2", "2.0.0", "4", "3000", str(protocol.MAX_ARM_MS)]],
        [2, "OK", []],
        [0, "ERR", ["internal"]],
        [4, "OK", ["1:4980", "0:0", "0:0", "0:0"]],
    ]
    assert emitted[0]["calls"] == 4


RUN_AS_BOARD = """
import json, machine
%s
try:
    exec(open("/main.py").read(), {"__name__": "__main__"})
except SystemExit as exc:
    print(json.dumps({"exit": exc.args[0] if exc.args else None}))
print(json.dumps({"relays": [machine.pins[g].states for g in (2, 3, 4, 5)],
                  "wdt": [w.timeout for w in machine.wdts]}))
"""


@pytest.mark.parametrize("layout", [PACKAGE_LAYOUT, FLAT_LAYOUT], ids=["package", "flat"])
def test_mpvm_main_py_runs_as_the_board_runs_it(vm, layout):
    frames = b"".join([b"\n", frame(1, "HELLO"), frame(2, "ARM", 3, 60_000), frame(3, "STATUS"), b"junk\n"])
    emitted, printed, error = vm.run(RUN_AS_BOARD % "", layout=layout, stdin=frames)
    assert error is None, error
    replies = [protocol.parse_reply(line.encode() + b"\n") for line in printed]
    assert [(r.seq, r.word) for r in replies] == [(1, "OK"), (2, "OK"), (3, "OK"), (0, "ERR")]
    lamp3 = protocol.parse_status(replies[2].args)[3]
    assert lamp3["on"] is True and 59_000 < lamp3["remaining_ms"] <= 60_000
    assert emitted[0] == {"exit": "stdin closed"}
    # Created off, boot, HELLO; lamp 3 on, then off when the loop ends; the hardware watchdog ran.
    assert emitted[1]["relays"][0] == [0, 0, 0, 0, 0]
    assert emitted[1]["relays"][3] == [0, 0, 0, 1, 0, 0]
    assert emitted[1]["wdt"] == [1000]


def test_mpvm_maintenance_jumper_keeps_outputs_off_and_the_watchdog_off(vm):
    emitted, printed, error = vm.run(
        RUN_AS_BOARD % "machine.input_levels[22] = 0", stdin=frame(1, "HELLO") + frame(2, "ARM", 0, 60_000)
    )
    assert error is None, error
    assert printed == [], "in maintenance the firmware must not answer (the REPL owns the port)"
    assert emitted == [{"relays": [[0, 0]] * 4, "wdt": []}]


def test_mpvm_main_loop_guard_reads_its_adc_pin_and_cuts_on_its_own(vm):
    events = [(0, b"\n" + frame(1, "HELLO")), (10, frame(2, "ARM", 0, 60_000)), (20, frame(3, "GUARDS"))]
    events += [(at, frame(4 + n, "SENSE")) for n, at in enumerate(range(300, 1200, 300))]
    emitted = scenario(
        vm,
        """
        import main
        main.GUARDS = ((0, 1, 9000, 52000),)  # lamp 0's thermistor on ADC 1, GP27
        machine.adc_readings[27] = 20000
        changes = []
        main._log_change = lambda lamp, on, why: changes.append([machine.now(), lamp, on, why])
        fw, outputs = main.build(machine.ticks_ms)

        class HeadHeats(ScriptedPort):
            def read(self, timeout_ms):
                if machine.now() - self.t0 >= 500:
                    machine.adc_readings[27] = 8000
                return ScriptedPort.read(self, timeout_ms)

        port = HeadHeats([(at, bytes.fromhex(data)) for at, data in %r], tail_ms=100)
        wdt = FeedLog()
        main.serve(fw, outputs, port, wdt)
        emit(written=port.written, changes=changes, gap=wdt.longest_gap(),
             relays=[machine.pins[g].value() for g in main.RELAY_PINS])
    """
        % [(at, data.hex()) for at, data in events],
    )
    [result] = emitted
    replies = [reply for _, reply in result["written"]]
    assert replies[2] == [3, "OK", ["0:1:9000:52000"]]
    # 300 ms: in range; 600 ms: out of range for two samples (not tripped yet); 900 ms: tripped at 650.
    assert [r[2] for r in replies[3:]] == [["20000:0:0:0"], ["8000:0:0:0"], ["8000:1:8000:250"]]
    [cut] = [c for c in result["changes"] if c[3] == "guard"]
    assert cut[1:] == [0, False, "guard"] and 500 < cut[0] <= 500 + 3 * 50
    assert result["gap"] <= 50
    assert result["relays"] == [0, 0, 0, 0]
