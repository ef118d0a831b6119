"""`lampctl serve`: relays OFF first, then recovery, controller, E-stop, web server, systemd pings."""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from lampctl import config as config_mod

log = logging.getLogger("lampctl")

CLI_USER = "cli"
CLI_TOKEN_FILE = "cli.token"
WATCHDOG_PERIOD_S = 1.0
# The scheduler wakes at least once a second; twice that without a tick means it is stuck.
SCHEDULER_STALL_S = 3.0


def sd_notify(message: str) -> None:
    """systemd's notify protocol, in a few lines (sdnotify leaves its socket open)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("systemd notify failed: %s", exc)


def write_secret_file(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from creation, no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def serve(config_path: str, *, simulate: bool = False) -> int:
    t_exec = time.monotonic()
    # S1: before any slow import, parse the config (tomllib, fast) and claim every relay OFF.
    cfg = config_mod.load(config_path)
    from lampctl.hardware import RelayBank, make_pin_factory

    factory = make_pin_factory("mock" if simulate else cfg.service.pin_factory)
    relays = RelayBank(cfg.lamps, factory, estop_pin=cfg.safety.estop_pin,
                       indicator_pin=cfg.safety.indicator_pin, wire_feedback=simulate)
    t_off = time.monotonic()
    log.info("relays off: %d lamps at monotonic %.6f (%.1f ms after entry)", len(relays), t_off,
             (t_off - t_exec) * 1000)

    state: dict = {"controller": None}

    def emergency_off(why: str) -> None:
        relays.all_off()
        controller = state["controller"]
        if controller is not None:
            try:
                controller.shutdown(why)
            except Exception:
                log.exception("controller shutdown failed; relays are off")

    def thread_crashed(why: str) -> None:
        relays.all_off()
        controller = state["controller"]
        if controller is not None:
            controller.fault(why)

    from lampctl.safety import s1_install_guards

    s1_install_guards(emergency_off, thread_crashed)

    # Spawned before any thread of ours starts: preexec_fn is only safe in a single-threaded parent.
    simulator = None
    url = cfg.firmware.port if cfg.firmware else None
    if simulate and cfg.firmware is not None:
        simulator, url = start_simulator(cfg)

    from lampctl.clock import MonotonicClock
    from lampctl.controller import SessionController
    from lampctl.store import UsageLog

    usage_log = UsageLog(cfg.service.database, queue_size=cfg.service.log_queue)
    recovered = usage_log.recover_interrupted()
    if recovered:
        log.warning("S4: %d session(s) left open by the last run marked interrupted: %s", len(recovered), recovered)
    usage_log.start()
    usage_log.event(None, None, None, "system", f"service started (pid {os.getpid()}{', simulated GPIO' if simulate else ''})")
    # A fresh admin token for the local CLI at every start, readable only by the service's user.
    write_secret_file(cfg.service.database.parent / CLI_TOKEN_FILE, usage_log.replace_system_token(CLI_USER) + "\n")

    backstop = None
    if cfg.firmware is not None:
        from lampctl.backstop import FirmwareBackstop

        backstop = FirmwareBackstop.from_config(cfg.firmware, len(cfg.lamps), cfg.safety.heartbeat_s,
                                                usage_log, url=url)

    clock = MonotonicClock()
    controller = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    state["controller"] = controller
    if backstop is not None:
        backstop.attach(controller)
        if backstop.start(wait_s=5.0):
            log.info("firmware link up on %s", url)
        else:
            # Serve anyway: starts answer 503 until the link is up, and the panel says why.
            log.error("firmware link on %s is not up; lamps cannot start until it is", url)
    if relays.estop_pressed:
        controller.estop()
    relays.on_estop(controller.estop)
    controller.start_scheduler()

    from waitress import create_server

    from web import Services, create_app

    app = create_app(Services(controller=controller, usage_log=usage_log, config=cfg,
                              firmware_status=backstop.status if backstop else (lambda: "absent")))
    server = create_server(app, host=cfg.service.host, port=cfg.service.port, threads=8,
                           ident="lampctl", clear_untrusted_proxy_headers=True)
    # effective_port is a str in some waitress versions.
    port = int(server.effective_port)
    log.info("serving on http://%s:%d/", cfg.service.host, port)
    print(f"lampctl: listening on http://{cfg.service.host}:{port}/", flush=True)

    stop = threading.Event()
    watchdog = threading.Thread(target=_watchdog, args=(controller, stop), name="service-watchdog", daemon=True)
    watchdog.start()
    sd_notify("READY=1")
    try:
        server.run()
    finally:
        stop.set()
        emergency_off("service stopping")
        controller.stop_scheduler()
        if backstop is not None:
            backstop.close()
        if simulator is not None:
            stop_simulator(simulator)
        usage_log.event(None, None, None, "system", "service stopped")
        usage_log.close()
        relays.close()
        server.close()
    return 0


def start_simulator(cfg) -> tuple:
    """`serve --simulate` with [firmware]: run the simulated microcontroller as a child process.

    Returns (process, pyserial URL). Its JSON lines go to simulator.log beside the database.
    """
    import subprocess

    logdir = cfg.service.database.parent
    logdir.mkdir(parents=True, exist_ok=True)
    out = open(logdir / "simulator.log", "ab")
    err_path = logdir / "simulator.err"
    err = open(err_path, "wb")
    cmd = [sys.executable, "-m", "firmware_bridge.simulator", "--listen", "127.0.0.1:0",
           "--lamps", str(len(cfg.lamps)), "--watchdog", str(cfg.firmware.watchdog_s)]
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    out.close()
    err.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = err_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("listening 127.0.0.1:"):
                return proc, "socket://" + line.split(" ", 1)[1].strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the firmware simulator exited {proc.returncode}: {text.strip()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("the firmware simulator did not start listening within 10 s")


def _die_with_parent() -> None:
    # A simulated microcontroller should not outlive the demo that started it.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except OSError:
        pass


def stop_simulator(proc) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except Exception:
        proc.kill()
        proc.wait(5)


def _watchdog(controller, stop: threading.Event) -> None:
    """Ping systemd only while the scheduler is alive and ticking; otherwise latch a fault (S6)."""
    faulted = False
    while not stop.wait(WATCHDOG_PERIOD_S):
        stalled = time.monotonic() - controller.last_tick > SCHEDULER_STALL_S
        if controller.scheduler_alive and not stalled:
            sd_notify("WATCHDOG=1")
        elif not faulted:
            faulted = True
            controller.fault("scheduler died" if not controller.scheduler_alive else "scheduler stalled")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
