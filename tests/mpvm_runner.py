"""Run scenario scripts on MicroPython's own interpreter (its WebAssembly port under Node) with the board's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPVM = ROOT / "tests" / "mpvm"
PACKAGE = "@micropython/micropython-webassembly-pyscript"
FIRMWARE = ROOT / "firmware_bridge"

# What goes on the board, and where: the README's mpremote steps (package layout)...
PACKAGE_LAYOUT = {
    "/firmware_bridge/__init__.py": FIRMWARE / "__init__.py",
    "/firmware_bridge/protocol.py": FIRMWARE / "protocol.py",
    "/firmware_bridge/firmware/__init__.py": FIRMWARE / "firmware" / "__init__.py",
    "/firmware_bridge/firmware/logic.py": FIRMWARE / "firmware" / "logic.py",
    "/main.py": FIRMWARE / "firmware" / "main.py",
}
# ...or every file at the root of the board's filesystem (flat layout).
FLAT_LAYOUT = {
    "/protocol.py": FIRMWARE / "protocol.py",
    "/logic.py": FIRMWARE / "firmware" / "logic.py",
    "/main.py": FIRMWARE / "firmware" / "main.py",
}
# Test-only stand-ins, in /lib as a board keeps its libraries.
STAND_INS = {
    "/lib/machine.py": MPVM / "machine.py",
    "/lib/vmrig.py": MPVM / "vmrig.py",
}


# A scenario starts with the stand-ins and the rig in scope.
PRELUDE = "import machine, time\nfrom vmrig import Rig, ScriptedPort, FeedLog, emit, run_trace, protocol\n"


class VmUnavailable(Exception):
    pass


def _install_package() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise VmUnavailable(
            "npm is missing, so %s cannot be installed into tests/mpvm "
            "(./test.sh installs Debian's nodejs and npm)" % PACKAGE
        )
    proc = subprocess.run(
        [npm, "ci", "--prefix", str(MPVM), "--no-audit", "--no-fund"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise VmUnavailable("npm ci --prefix tests/mpvm failed: %s" % proc.stderr.strip()[-500:])


def find_node() -> str:
    """The node binary with the package installed; skips (fails under CI) when node is missing."""
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed, so MicroPython's VM cannot run (./test.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run these tests")
        pytest.skip(reason)
    if not (MPVM / "node_modules" / PACKAGE / "micropython.mjs").is_file():
        try:
            _install_package()
        except VmUnavailable as err:
            pytest.fail(str(err))
    return node


class Vm:
    """Runs one scenario per call in a fresh MicroPython VM."""

    def __init__(self, node: str):
        self.node = node

    def run(self, script, layout=None, stdin: bytes = b"", extra=None, heapsize: int = 1 << 20):
        """Returns (JSON lines the script emitted, other printed lines, error dict or None).

        ``script`` is one source or a list run in order in the same VM (see run.mjs).

        ``heapsize`` is the VM's first heap; this build grows it on demand, so it
        is no stand-in for a Pico's RAM (test_mpvm_firmware_fits_a_pico_heap is).
        """
        files = {
            path: src.read_text()
            for path, src in {**(PACKAGE_LAYOUT if layout is None else layout), **STAND_INS}.items()
        }
        files.update(extra or {})
        request = {"files": files, "script": script, "stdin": stdin.decode("latin-1"), "heapsize": heapsize}
        proc = subprocess.run(
            [self.node, str(MPVM / "run.mjs")],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=90,
            cwd=MPVM,
        )
        assert proc.returncode == 0, "run.mjs failed: %s" % proc.stderr[-2000:]
        result = json.loads(proc.stdout)
        emitted, other = [], []
        for line in result["stdout"].splitlines():
            try:
                emitted.append(json.loads(line) if line.startswith("{") else None)
            except ValueError:
                emitted.append(None)
            if emitted[-1] is None:
                emitted.pop()
                other.append(line)
        return emitted, other, result["error"]

    def ok(self, script, **kwargs):
        """Like run(), but the scenario must end without an exception; returns the emitted objects."""
        emitted, other, error = self.run(script, **kwargs)
        assert error is None, "the scenario raised on MicroPython:\n%s\n%s" % (error["message"], "\n".join(other))
        return emitted


def scenario(vm: Vm, body: str, **kwargs):
    """Run ``body`` (indented freely) after PRELUDE; returns what it emitted."""
    return vm.ok(PRELUDE + textwrap.dedent(body), **kwargs)
