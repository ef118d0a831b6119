"""`lampctl serve`: a Service that starts its parts in order and closes them in reverse, each close step guarded."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from lampctl import config as config_mod
from lampctl.platform.runtime import InstanceLock, cli_token_path, remove_address, write_address, write_secret_file

if TYPE_CHECKING:  # each part is imported where it opens, after the relays are off (S1)
    from lampctl.config import Config
    from lampctl.core.carryover import Carried
    from lampctl.core.controller import SessionController
    from lampctl.devices.backstop import FirmwareBackstop
    from lampctl.devices.hardware import RelayBank
    from lampctl.fleet.mqtt import MqttLink
    from lampctl.platform.clocksync import ClockProbe
    from lampctl.platform.httpserver import BoundedServer
    from lampctl.storage.accounts import Accounts
    from lampctl.storage.store import UsageLog

log = logging.getLogger("lampctl")

WATCHDOG_PERIOD_S = 1.0
# The scheduler wakes at least once a second; twice that without a tick means it is stuck.
SCHEDULER_STALL_S = 3.0
# How long the panel may take to answer its first request before systemd is left waiting.
READY_PROBE_S = 60.0


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


class Service:
    """The running service: each part started in order, each close step guarded and logged.

    Start: config -> S16 lock -> relays OFF -> guards -> simulator -> usage log and
    recovery -> accounts -> backstop -> controller -> E-stop -> scheduler -> MQTT -> web server
    -> READY=1 -> watchdog pings. Close: relays OFF and sessions `interrupted` first,
    then every part in reverse through an ExitStack; a step that raises is logged and
    the rest still run (Klipper's shutdown handlers), so whichever part fails, the
    relays end OFF (S1, S15) and the log is flushed.
    """

    def __init__(self, config_path: str, *, simulate: bool = False, notify: Callable[[str], None] | None = None):
        self.config_path = config_path
        self.simulate = simulate
        self.notify = notify or sd_notify
        # Each part is set as it opens, in this order; the ones without a value exist only from then on.
        self.cfg: Config
        self.relays: RelayBank | None = None
        self.usage_log: UsageLog
        self.clock_probe: ClockProbe
        self.accounts: Accounts
        self.backstop: FirmwareBackstop | None = None  # with a [firmware] table
        self.controller: SessionController | None = None
        self.mqtt: MqttLink | None = None  # with an [mqtt] table
        self.server: BoundedServer
        self.close_errors: list[str] = []
        self._leaving: threading.Event | None = None
        self._stop_pings = threading.Event()

    # ---- the whole life ----------------------------------------------------------------
    def run(self) -> int:
        with ExitStack() as stack:
            try:
                self._open(stack)
                self.server.run()
            finally:
                # Before any other close step: nothing between the exit and the relay.
                self._begin_close("service stopping")
        return 0

    def _open(self, stack: ExitStack) -> None:
        t_exec = time.monotonic()
        # S1: before any slow import, parse the config (tomllib, fast) and claim every relay OFF.
        self.cfg = cfg = config_mod.load(self.config_path)
        # S16: before the relays, the records, the tokens or the serial port.
        lock = InstanceLock(cfg.service.database).acquire()
        self.on_close(stack, "instance lock", lock.release)
        relays = self._open_relays(stack, t_exec)
        from lampctl.platform.signals import s1_install_guards
        from lampctl.service.memory import limit_arenas

        limit_arenas()  # after the relays (S1), before the service's threads ask for arenas

        self._leaving = s1_install_guards(self.emergency_off, self.thread_crashed)
        # Spawned before any thread of ours starts: preexec_fn is only safe in a single-threaded parent.
        url = self._open_simulator(stack)
        self._open_usage_log(stack)
        self._open_accounts(stack)
        controller = self._open_controller(stack, url, relays)
        self._open_mqtt(stack, controller)
        self._open_web(stack, controller)
        self._open_watchdog(stack, controller)

    def on_close(self, stack: ExitStack, name: str, fn: Callable[..., object], *args: object) -> None:
        """Push a close step that logs its failure and lets the steps after it run."""

        def step() -> None:
            try:
                fn(*args)
            except Exception as exc:
                self.close_errors.append(f"{name}: {exc}")
                log.exception("closing %s failed; going on with the other close steps", name)
            else:
                log.info("closed %s", name)

        stack.callback(step)

    # ---- safety paths (signals, crashes, exit) -----------------------------------------
    def emergency_off(self, why: str) -> None:
        """Relays OFF (GPIO only), then running sessions end `interrupted`. Any thread, idempotent."""
        try:
            if self.relays is not None:
                self.relays.all_off()
        except Exception:
            log.exception("all_off failed (%s)", why)
        if self.controller is not None:
            try:
                self.controller.shutdown(why)
            except Exception:
                log.exception("controller shutdown failed; relays are off")

    def thread_crashed(self, why: str) -> None:
        if self.relays is not None:
            self.relays.all_off()
        if self.controller is not None:
            self.controller.fault(why)

    def _begin_close(self, why: str) -> None:
        if self._leaving is not None:
            self._leaving.set()  # a signal now turns the relays off but cuts no close step short
        self._stop_pings.set()
        if self.relays is not None:
            self.emergency_off(why)

    # ---- the parts, in start order -----------------------------------------------------
    def _open_relays(self, stack: ExitStack, t_exec: float) -> RelayBank:
        from lampctl.devices.hardware import RelayBank, make_pin_factory

        cfg = self.cfg
        factory = make_pin_factory("mock" if self.simulate else cfg.service.pin_factory)
        self.relays = relays = RelayBank(
            cfg.lamps,
            factory,
            estop_pin=cfg.safety.estop_pin,
            indicator_pin=cfg.safety.indicator_pin,
            wire_feedback=self.simulate,
        )
        self.on_close(stack, "relays", relays.close)
        t_off = time.monotonic()
        log.info(
            "relays off: %d lamps at monotonic %.6f (%.1f ms after entry)", len(relays), t_off, (t_off - t_exec) * 1000
        )
        return relays

    def _open_simulator(self, stack: ExitStack) -> str | None:
        """The firmware's URL: the config's port, or a simulator's with `serve --simulate`."""
        fw = self.cfg.firmware
        if fw is None:
            return None
        if not self.simulate:
            return fw.port
        from lampctl.core.sensors import guard_table
        from lampctl.devices.simproc import start_simulator, stop_simulator

        proc, url = start_simulator(self.cfg, guard_table(self.cfg.lamps))  # flashed with the config's guards (S23)
        self.on_close(stack, "firmware simulator", stop_simulator, proc)
        return url

    def _open_usage_log(self, stack: ExitStack) -> None:
        from lampctl.platform.clocksync import ClockProbe
        from lampctl.storage.store import UsageLog

        self.clock_probe = ClockProbe()  # one probe: the records' clock anchors (S20) and /api/health
        self.usage_log = usage_log = UsageLog(
            self.cfg.service.database, queue_size=self.cfg.service.log_queue, clock_synced=self.clock_probe
        )
        from lampctl.fleet.outbox import set_enabled

        set_enabled(self.cfg.service.database, self.cfg.mqtt is not None)  # before S4 recovery: those records count
        recovered = usage_log.recover_interrupted()
        if recovered:
            log.warning("S4: %d session(s) left open by the last run marked interrupted: %s", len(recovered), recovered)
        usage_log.start()
        self.on_close(stack, "usage log", usage_log.close)
        self.on_close(stack, "stop event", usage_log.event, None, None, None, "system", "service stopped")
        simulated = ", simulated GPIO" if self.simulate else ""
        usage_log.event(None, None, None, "system", f"service started (pid {os.getpid()}{simulated})")

    def _open_accounts(self, stack: ExitStack) -> None:
        """Users and tokens held in memory (auth never waits for the disk), and a fresh token for the local CLI."""
        from lampctl.storage.accounts import Accounts

        self.accounts = Accounts(
            self.cfg.service.database, audit=self.usage_log.event, clock_synced=self.clock_probe
        )  # S20: lockouts are kept with a clock anchor
        token = self.accounts.replace_system_token()
        self.accounts.start()
        self.on_close(stack, "accounts", self.accounts.close)
        # Readable only by the service's user.
        write_secret_file(cli_token_path(self.cfg.service.database), token + "\n")

    def _open_controller(self, stack: ExitStack, url: str | None, relays: RelayBank) -> SessionController:
        from lampctl.core.clock import MonotonicClock
        from lampctl.core.controller import SessionController

        cfg = self.cfg
        if cfg.firmware is not None:
            from lampctl.devices.backstop import FirmwareBackstop

            self.backstop = FirmwareBackstop.from_config(
                cfg.firmware, len(cfg.lamps), cfg.safety.heartbeat_s, self.usage_log, url=url, lamps=cfg.lamps
            )
        self.controller = controller = SessionController(
            cfg.lamps,
            relays,
            MonotonicClock(),
            self.usage_log,
            backstop=self.backstop,
            latched=self.usage_log.latched_faults(),  # S17: a latch outlives a restart
            carried=self._carried(),  # S20: so do the cooldowns and the patients' budgets
            max_lamps_on=cfg.service.max_lamps_on,  # S26
        )
        if self.backstop is not None:
            self.backstop.attach(controller)
            self.on_close(stack, "firmware backstop", self.backstop.close)
            if self.backstop.start(wait_s=5.0):
                log.info("firmware link up on %s", url)
            else:
                # Serve anyway: starts answer 503 until the link is up, and the panel says why.
                log.error("firmware link on %s is not up; lamps cannot start until it is", url)
        if relays.estop_pressed:
            controller.estop()
        relays.on_estop(controller.estop)
        relays.on_patient_stop(controller.patient_stop)  # S24
        relays.on_tilt(controller.tilted)  # S25; one open at start is latched by the scheduler's first look
        controller.start_scheduler()
        self.on_close(stack, "scheduler", controller.stop_scheduler)
        return controller

    def _carried(self) -> dict[str, Carried]:
        """S20: each lamp's cooldown and rest-window budget from its last session on disk, aged on this clock."""
        from datetime import UTC, datetime

        from lampctl.core.carryover import ClockRef, s20_carry_over

        now = ClockRef(self.usage_log.boot_id, time.monotonic(), datetime.now(UTC), self.clock_probe())
        carried = s20_carry_over(self.usage_log.last_sessions([lamp.id for lamp in self.cfg.lamps]), now)
        for lamp_id, state in carried.items():
            log.info(
                "S20: %s last ended session %d %s; its patient has used %.1f s",
                lamp_id,
                state.last_id,
                f"{state.age_s:.1f} s ago" if state.trusted else "at an untrusted time (taken as now)",
                state.used_s,
            )
        return carried

    def _open_mqtt(self, stack: ExitStack, controller: SessionController) -> None:
        """Fleet (optional [mqtt]): a client on its own threads; the lamps never wait for it (S9, S10)."""
        if self.cfg.mqtt is None:
            return
        from lampctl.fleet.mqtt import MqttLink
        from lampctl.storage.accounts import BUILTIN_USER

        try:
            self.mqtt = link = MqttLink(
                self.cfg.mqtt,
                self.cfg.service.database,
                controller,
                self.accounts,
                self.cfg.lamps,
                builtin_users=(BUILTIN_USER,),
                usage_log=self.usage_log,
            )
        except ImportError as exc:  # the lamps do not need the broker: serve, and keep the records in the outbox
            log.error(
                "[mqtt] is set but paho-mqtt cannot be loaded (%s): pip install 'lampctl[mqtt]'; "
                "records wait in the outbox until then",
                exc,
            )
            return
        controller.add_listener(link.on_view)
        link.start()
        self.on_close(stack, "MQTT client", link.close)
        self.on_close(stack, "lamp listeners", controller.listeners.close)
        log.info("MQTT: node %s publishing to %s", self.cfg.mqtt.node, self.cfg.mqtt.url)

    def _mqtt_health(self):
        """/api/health's mqtt part: the link's, or, when [mqtt] is set but paho-mqtt is missing, that alone."""
        if self.mqtt is not None:
            return self.mqtt.health
        if self.cfg.mqtt is None:
            return None
        missing = {
            "connected": False,
            "backlog": None,
            "oldest_unsent_s": None,
            "problems": [
                "[mqtt] is set but paho-mqtt cannot be loaded; records wait in the outbox "
                "(pip install 'lampctl[mqtt]')."
            ],
        }
        return lambda: missing

    def _open_web(self, stack: ExitStack, controller: SessionController) -> None:
        from lampctl.service.serving import serve_panel

        backstop = self.backstop
        services = dict(
            controller=controller,
            usage_log=self.usage_log,
            config=self.cfg,
            accounts=self.accounts,
            clock_synchronised=self.clock_probe,
            firmware_status=backstop.status if backstop else (lambda: "absent"),
            mqtt_health=self._mqtt_health(),
        )
        self.server = serve_panel(services, self.cfg.service.host, self.cfg.service.port, arrivals=controller)
        self.on_close(stack, "web server", self.server.close)
        # The CLI reads where the panel really listens (service.bind may say port 0) beside cli.token.
        write_address(self.cfg.service.database, self.cfg.service.host, self.server.port)
        self.on_close(stack, "address file", remove_address, self.cfg.service.database)
        log.info("serving on http://%s:%d/", self.cfg.service.host, self.server.port)
        print(f"lampctl: listening on http://{self.cfg.service.host}:{self.server.port}/", flush=True)

    def _open_watchdog(self, stack: ExitStack, controller: SessionController) -> None:
        url = f"http://{_loopback(self.cfg.service.host)}:{self.server.port}/api/health"

        def run() -> None:
            if wait_serving(url, self._stop_pings, READY_PROBE_S):
                self.notify("READY=1")
                _watchdog(controller, self._stop_pings, self.notify)

        thread = threading.Thread(target=run, name="service-watchdog", daemon=True)
        thread.start()
        self.on_close(stack, "watchdog", thread.join, 5)


def serve(config_path: str, *, simulate: bool = False) -> int:
    """`lampctl serve`: run the service until a signal ends it."""
    return Service(config_path, simulate=simulate).run()


def wait_serving(url: str, stop: threading.Event, timeout: float) -> bool:
    """Wait until the panel answers url (READY=1 means it serves, not merely listens)."""
    import urllib.error
    import urllib.request

    # Straight to our own port: an http_proxy in the environment must not answer for the panel.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            with opener.open(url, timeout=2) as resp:
                resp.read()
                return True
        except urllib.error.HTTPError:
            return True  # an answer, even a refusal, means it serves
        except OSError:
            if time.monotonic() >= deadline:
                log.error("the panel did not answer %s within %.0f s; systemd is not told READY", url, timeout)
                return False
            stop.wait(0.05)
    return False


def _loopback(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _watchdog(controller, stop: threading.Event, notify: Callable[[str], None] = sd_notify) -> None:
    """Ping systemd only while the scheduler is alive and ticking; otherwise latch a fault (S6)."""
    faulted = False
    while not stop.wait(WATCHDOG_PERIOD_S):
        stalled = time.monotonic() - controller.last_tick > SCHEDULER_STALL_S
        if controller.scheduler_alive and not stalled:
            notify("WATCHDOG=1")
        elif not faulted:
            faulted = True
            controller.fault("scheduler died" if not controller.scheduler_alive else "scheduler stalled")
