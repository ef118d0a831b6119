"""The board's files on MicroPython's own interpreter (WebAssembly port): compile, import, fit, behave."""

import textwrap

import pytest

from firmware_bridge import protocol
from firmware_bridge.firmware.mpshim import TICKS_PERIOD, ticks_add, ticks_diff
from tests.mpvm_runner import (
    FLAT_LAYOUT,
    PACKAGE_LAYOUT,
    PRELUDE,
    Vm,
    find_node,
    scenario,
)

HOUR_MS = 60 * 60 * 1000


@pytest.fixture(scope="module")
def vm():
    return Vm(find_node())


def frame(seq, word, *args):
    return protocol.encode_command(seq, word, *args)


# -- what goes on the board compiles and imports ---------------------------


@pytest.mark.parametrize("vm_path", sorted(PACKAGE_LAYOUT))
def test_mpvm_every_board_file_compiles_as_micropython_sees_it(vm, vm_path):
    emitted = vm.ok(
        textwrap.dedent(
            """
        import json
        with open(%r) as f:
            source = f.read()
        compile(source, %r, "exec")
        print(json.dumps({"compiled": %r, "chars": len(source)}))
    """
            % (vm_path, vm_path, vm_path)
        )
    )
    assert emitted == [{"compiled": vm_path, "chars": len(PACKAGE_LAYOUT[vm_path].read_text())}]


@pytest.mark.parametrize(
    "layout, modules",
    [
        (
            PACKAGE_LAYOUT,
            [
                "firmware_bridge",
                "firmware_bridge.protocol",
                "firmware_bridge.firmware",
                "firmware_bridge.firmware.logic",
                "main",
            ],
        ),
        (FLAT_LAYOUT, ["protocol", "logic", "main"]),
    ],
    ids=["package", "flat"],
)
def test_mpvm_every_board_module_imports(vm, layout, modules):
    emitted = scenario(
        vm,
        """
        import sys
        for name in %r:
            __import__(name)
        import main
        emit(imported=%r, runs_firmware=main.Firmware.__name__, machine=sys.modules["machine"].__file__,
             looped=len(machine.wdts))
    """
        % (modules, modules),
        layout=layout,
    )
    # Imported as a module, main.py builds nothing and starts no loop: only the board runs it as __main__.
    assert emitted == [{"imported": modules, "runs_firmware": "Firmware", "machine": "/lib/machine.py", "looped": 0}]


def test_mpvm_tick_arithmetic_is_what_the_shim_assumes(vm):
    # The CPython tests and the simulator run on mpshim's ticks_*: it must be MicroPython's own.
    pairs = [
        (5, TICKS_PERIOD - 5),
        (TICKS_PERIOD - 5, 5),
        (TICKS_PERIOD // 2, 0),
        (TICKS_PERIOD // 2 - 1, 0),
        (0, TICKS_PERIOD // 2),
        (123456, 654321),
        (TICKS_PERIOD - 1, 0),
    ]
    adds = [(TICKS_PERIOD - 1, 2), (1, -2), (0, protocol.MAX_ARM_MS), (TICKS_PERIOD - 1000, HOUR_MS), (7, -HOUR_MS)]
    emitted = scenario(
        vm,
        """
        emit(period=time.ticks_add(0, -1) + 1, diffs=[time.ticks_diff(a, b) for a, b in %r],
             adds=[time.ticks_add(t, d) for t, d in %r])
    """
        % (pairs, adds),
    )
    assert emitted == [
        {
            "period": TICKS_PERIOD,
            "diffs": [ticks_diff(a, b) for a, b in pairs],
            "adds": [ticks_add(t, d) for t, d in adds],
        }
    ]


@pytest.mark.parametrize(
    "guards", [(), ((0, 0, 9000, 52000), (0, 1, 0, 30000), (1, 2, 100, 200))], ids=["no-guards", "three-guards"]
)
def test_mpvm_firmware_fits_a_pico_heap_and_does_not_grow(vm, guards):
    # A Pico leaves MicroPython about 190 KiB of heap.  This VM collects garbage only
    # between top-level runs, hence one run per measuring step.  With guards, ADC 2 reads
    # out of range every other round, so trips, refusals and CLEARs are part of the traffic.
    traffic = textwrap.dedent("""
        for n in range(200):
            machine.adc_readings[28] = 150 if n % 2 else 250
            for data in (protocol.encode_command(1, "HELLO"), protocol.encode_command(2, "ARM", 0, 5000),
                         b"noise\\n", b"x" * 300, b"\\n1 PING*0000\\n", protocol.encode_command(3, "STATUS"),
                         protocol.encode_command(4, "SENSE"), protocol.encode_command(5, "GUARDS"),
                         protocol.encode_command(6, "CLEAR", 1), protocol.encode_command(7, "ARM", 1, 5000)):
                fw.feed(data)
            machine.advance(100)
            fw.poll()
            for pin in machine.pins.values():
                pin.states = []     # the stand-in's history is the only thing meant to grow
        gc.collect()
    """)
    emitted = vm.ok(
        [
            PRELUDE + "import gc\ngc.collect()",
            "base = gc.mem_alloc()\nimport main\nmain.GUARDS = %r\nfw, outputs = main.build(machine.ticks_ms)\n"
            "gc.collect()" % (guards,),
            "built = gc.mem_alloc()\n" + traffic,
            "settled = gc.mem_alloc()\n" + traffic,
            "emit(retained=built - base, growth=gc.mem_alloc() - settled)",
        ]
    )
    print("heap retained with %d guard channels: %d bytes" % (len(guards), emitted[0]["retained"]))
    assert emitted[0]["retained"] < 64 * 1024, "the board's modules and state must leave most of the heap free"
    assert emitted[0]["growth"] <= 512, "200 rounds of traffic must not grow the heap (a leak of 3 bytes a round would)"


def test_mpvm_parse_errors_are_frame_errors_on_micropython(vm):
    # FrameError used to call ValueError.__init__(self, ...): an AttributeError on
    # MicroPython, so every bad frame raised the wrong exception on the board.
    emitted = scenario(
        vm,
        """
        for line in [b"junk\\n", b"1 PING*0000\\n", b"\\xff\\n", b"7 FIRE*%04X\\n" % protocol.crc16(b"7 FIRE")]:
            try:
                protocol.parse_command(line)
            except protocol.FrameError as err:
                emit(kind="FrameError", reason=err.reason, seq=err.seq, args=list(err.args),
                     is_value_error=isinstance(err, ValueError))
        err = protocol.FrameError(protocol.BAD_ARGS, 9)
        emit(str=str(err), reason=err.reason, seq=err.seq)
    """,
    )
    assert emitted == [
        {"kind": "FrameError", "reason": "malformed", "seq": 0, "args": ["malformed"], "is_value_error": True},
        {"kind": "FrameError", "reason": "bad-crc", "seq": 0, "args": ["bad-crc"], "is_value_error": True},
        {"kind": "FrameError", "reason": "not-ascii", "seq": 0, "args": ["not-ascii"], "is_value_error": True},
        {
            "kind": "FrameError",
            "reason": "unknown-command",
            "seq": 7,
            "args": ["unknown-command"],
            "is_value_error": True,
        },
        {"str": "bad-args", "reason": "bad-args", "seq": 9},
    ]


# -- the firmware's behaviour on the VM ------------------------------------


def test_mpvm_hello_answers_and_starts_from_all_off(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig()
        emit(before=rig.send("PING"))
        emit(hello=rig.send("HELLO"))
        rig.send("ARM", 1, 60000)
        rig.seq = 10                # a new host starts its own count
        emit(hello=rig.send("HELLO"), levels=rig.levels(), changes=rig.changes)
    """,
    )
    hello = [0, "OK", ["2", "2.0.0", "2", "3000", str(protocol.MAX_ARM_MS)]]
    assert emitted[0] == {"before": [1, "ERR", ["need-hello"]]}
    assert emitted[1] == {"hello": [2, "OK", hello[2]]}
    assert emitted[2] == {
        "hello": [11, "OK", hello[2]],
        "levels": [0, 0],
        "changes": [[0, 0, False, "boot"], [0, 1, False, "boot"], [0, 1, True, "armed"], [0, 1, False, "off"]],
    }


@pytest.mark.parametrize(
    "start", [0, TICKS_PERIOD - 1, TICKS_PERIOD - 999, TICKS_PERIOD - 1000, TICKS_PERIOD // 2 - 500]
)
def test_s2_mpvm_arm_ends_at_its_deadline_across_the_tick_wrap(vm, start):
    emitted = scenario(
        vm,
        """
        rig = Rig(start=%d)
        rig.send("HELLO")
        emit(arm=rig.send("ARM", 0, 1000))
        rig.advance(999)
        emit(levels=rig.levels(), remaining=rig.fw.remaining_ms(0))
        rig.advance(1)
        emit(levels=rig.levels(), states=rig.states(), last=rig.changes[-1])
    """
        % start,
    )
    assert emitted == [
        {"arm": [2, "OK", []]},
        {"levels": [1, 0], "remaining": 1},
        # boot, HELLO (all off), ARM, deadline
        {"levels": [0, 0], "states": [[0, 0, 1, 0], [0, 0]], "last": [1000, 0, False, "deadline"]},
    ]


def test_s2_mpvm_sixty_minute_arm_ends_on_the_millisecond_across_the_wrap(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig(start=%d)
        rig.send("HELLO")
        rig.send("ARM", 0, %d)
        while rig.elapsed() + 2500 < %d:
            rig.advance(2500)
            rig.send("PING")
        rig.advance(%d - 1 - rig.elapsed())
        emit(status=rig.send("STATUS"), levels=rig.levels())
        rig.advance(1)
        emit(levels=rig.levels(), last=rig.changes[-1])
    """
        % (TICKS_PERIOD - 30 * 60 * 1000, HOUR_MS, HOUR_MS, HOUR_MS),
    )
    assert emitted[0]["status"][2] == ["1:1", "0:0"]
    assert emitted[0]["levels"] == [1, 0]
    assert emitted[1] == {"levels": [0, 0], "last": [HOUR_MS, 0, False, "deadline"]}


def test_mpvm_arm_limits_rearm_and_ceiling(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig()
        rig.send("HELLO")
        for args in [(0, 0), (0, protocol.MAX_ARM_MS + 1), (2, 1000)]:
            emit(refused=rig.send("ARM", *args)[2])
        rig.send("ARM", 0, protocol.MAX_ARM_MS)
        rig.advance(1000)
        rig.send("PING")
        emit(over=rig.send("ARM", 0, protocol.MAX_ARM_MS - 999)[2], ok=rig.send("ARM", 0, 5000)[1])
        rig.advance(2500)
        rig.send("PING")
        rig.advance(2500)
        emit(states=rig.states(), last=rig.changes[-1])
    """,
    )
    assert [e.get("refused") for e in emitted[:3]] == [["ms-out-of-range"], ["ms-out-of-range"], ["no-such-lamp"]]
    assert emitted[3] == {"over": ["over-ceiling"], "ok": "OK"}
    assert emitted[4] == {"states": [[0, 0, 1, 0], [0, 0]], "last": [6000, 0, False, "deadline"]}


def test_mpvm_off_offall_and_status(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig(lamps=3)
        rig.send("HELLO")
        rig.send("ARM", 0, 5000)
        rig.send("ARM", 2, 7000)
        rig.advance(1000)
        emit(status=rig.send("STATUS")[2])
        rig.send("OFF", 0)
        emit(levels=rig.levels())
        rig.send("OFFALL")
        emit(levels=rig.levels(), status=rig.send("STATUS")[2], whys=[c[1:] for c in rig.changes[3:]])
    """,
    )
    assert emitted == [
        {"status": ["1:4000", "0:0", "1:6000"]},
        {"levels": [0, 0, 1]},
        {
            "levels": [0, 0, 0],
            "status": ["0:0", "0:0", "0:0"],
            "whys": [[0, True, "armed"], [2, True, "armed"], [0, False, "off"], [2, False, "off"]],
        },
    ]


def test_s7_mpvm_watchdog_cuts_after_silence_and_wants_hello(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig(start=%d)
        rig.send("HELLO")
        rig.send("ARM", 0, 60000)
        rig.advance(1000)
        rig.send("PING")
        rig.advance(2999)
        emit(levels=rig.levels())
        rig.advance(1)
        emit(levels=rig.levels(), last=rig.changes[-1], ping=rig.send("PING")[2], arm=rig.send("ARM", 0, 1000)[2])
    """
        % (TICKS_PERIOD - 1500),
    )
    assert emitted == [
        {"levels": [1, 0]},
        {"levels": [0, 0], "last": [4000, 0, False, "watchdog"], "ping": ["need-hello"], "arm": ["need-hello"]},
    ]


def test_mpvm_bad_frames_and_replays_follow_the_bad_frame_rule(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig()
        rig.send("HELLO")
        rig.send("ARM", 0, 60000)
        arm = protocol.encode_command(rig.seq, "ARM", 0, 60000)
        for _ in range(3):
            emit(bad=rig.raw(b"x\\n" + arm), levels=rig.levels())
            rig.send("PING")
        emit(bad=rig.raw(b"\\xff\\xfe\\n" + b"A" * 200 + b"\\n" + arm), levels=rig.levels(),
             last=rig.changes[-1][1:], arm=rig.send("ARM", 0, 1000)[2])
    """,
    )
    for step in emitted[:3]:
        assert step == {"bad": [[0, "ERR", ["malformed"]], [2, "ERR", ["replay"]]], "levels": [1, 0]}
    assert emitted[3] == {
        "bad": [[0, "ERR", ["not-ascii"]], [0, "ERR", ["too-long"]], [2, "ERR", ["replay"]]],
        "levels": [0, 0],
        "last": [0, False, "bad-frames"],
        "arm": ["need-hello"],
    }


def test_mpvm_frame_that_fails_inside_the_firmware_is_one_bad_frame(vm):
    emitted = scenario(
        vm,
        """
        rig = Rig()
        rig.send("HELLO")
        rig.send("ARM", 0, 60000)
        def broken(lamps):
            raise MemoryError("no room for the reply")
        protocol.format_status = broken
        rig.seq = protocol.next_seq(rig.seq)
        emit(replies=rig.raw(protocol.encode_command(rig.seq, "STATUS")), levels=rig.levels())
        emit(ping=rig.send("PING"))
        frames = b""
        for _ in range(3):
            rig.seq = protocol.next_seq(rig.seq)
            frames += protocol.encode_command(rig.seq, "STATUS")
        emit(replies=rig.raw(frames), levels=rig.levels(), last=rig.changes[-1][1:])
    """,
    )
    internal = [0, "ERR", ["internal"]]
    assert emitted == [
        {"replies": [internal], "levels": [1, 0]},
        {"ping": [4, "OK", []]},
        {"replies": [internal] * 3, "levels": [0, 0], "last": [0, False, "bad-frames"]},
    ]


# -- the analog guard on the board's interpreter ------------------------------


def test_mpvm_guard_trips_latches_refuses_arm_and_clears(vm):
    emitted = scenario(
        vm,
        """
        from logic import GUARD_SAMPLE_MS
        machine.adc_readings[26] = 20000
        machine.adc_readings[28] = 100
        rig = Rig(guards=[(0, 0, 9000, 52000), (1, 2, 0, 30000)])
        emit(guards=rig.send("GUARDS"), sense=rig.send("SENSE"))   # before HELLO: read-only
        rig.send("HELLO")
        rig.send("ARM", 0, 60000)
        rig.send("ARM", 1, 60000)
        machine.adc_readings[26] = 8000                            # lamp 0's head too hot
        rig.advance(3 * GUARD_SAMPLE_MS)
        emit(levels=rig.levels(), last=rig.changes[-1])
        machine.adc_readings[26] = 20000
        emit(arm=rig.send("ARM", 0, 1000), sense=rig.send("SENSE"))
        rig.send("HELLO")
        emit(after_hello=rig.send("SENSE"))
        machine.adc_readings[28] = "fail"                          # the current sensor's read raises
        emit(arm_now=rig.send("ARM", 1, 1000), clear=rig.send("CLEAR", 1))
        rig.advance(3 * GUARD_SAMPLE_MS)
        machine.adc_readings[28] = 100
        emit(clear0=rig.send("CLEAR", 0), arm0=rig.send("ARM", 0, 1000), sense=rig.send("SENSE"))
    """,
        layout=FLAT_LAYOUT,
    )
    assert emitted[0] == {
        "guards": [1, "OK", ["0:0:9000:52000", "1:2:0:30000"]],
        "sense": [2, "OK", ["20000:0:0:0", "100:0:0:0"]],
    }
    assert emitted[1] == {"levels": [0, 1], "last": [150, 0, False, "guard"]}
    assert emitted[2] == {"arm": [6, "ERR", ["guard-tripped"]], "sense": [7, "OK", ["8000:1:8000:0", "100:0:0:0"]]}
    assert emitted[3] == {"after_hello": [9, "OK", ["8000:1:8000:0", "100:0:0:0"]]}  # not sampled since
    assert emitted[4] == {"arm_now": [10, "ERR", ["guard-tripped"]], "clear": [11, "ERR", ["guard-tripped"]]}
    assert emitted[5] == {
        "clear0": [12, "OK", []],
        "arm0": [13, "OK", []],
        "sense": [14, "OK", ["20000:0:0:0", "0:3:0:0"]],  # the failed read tripped at the last sample
    }
