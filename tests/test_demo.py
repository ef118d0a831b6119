"""demo.sh's own checks, run as the script runs them."""

import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _port_check() -> str:
    """The Python that demo.sh runs to say a port is taken, cut from the script itself."""
    script = (ROOT / "demo.sh").read_text()
    return re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.S).group(1)


def _port_in_time_wait() -> int:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server's side closes first, as a demo stopped by Ctrl-C does: its port is in TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_demo_port_check_takes_a_port_the_stopped_demo_left_in_time_wait():
    port = _port_in_time_wait()
    check = subprocess.run(
        [sys.executable, "-", "127.0.0.1", str(port)], input=_port_check(), text=True, capture_output=True, timeout=30
    )
    assert check.returncode == 0, "demo.sh would refuse a port its previous run has just let go"


def test_demo_port_check_still_refuses_a_port_in_use():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        check = subprocess.run(
            [sys.executable, "-", "127.0.0.1", str(listener.getsockname()[1])],
            input=_port_check(),
            text=True,
            capture_output=True,
            timeout=30,
        )
    assert check.returncode == 1
