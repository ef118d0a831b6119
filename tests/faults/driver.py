"""Client threads that start, extend, stop, stop all, E-stop and reset at random, each call written down in the rig."""

from __future__ import annotations

import random
import threading

from tests.faults.rig import LAMP_IDS, Rig

# (action, weight): mostly sessions and Stops; E-stops latch every lamp, so resets follow them.
MIX = (("start", 30), ("extend", 15), ("stop", 25), ("stop-all", 8), ("estop", 4), ("reset", 18))


class Driver:
    """`threads` clients, each looping random calls until stop(); seeded, so a failure can be replayed."""

    def __init__(self, rig: Rig, threads: int, seed: int, mix=MIX):
        self.rig = rig
        self.stopping = threading.Event()
        self.rngs = [random.Random(seed * 1000 + i) for i in range(threads)]
        self.actions = [a for a, _ in mix]
        self.weights = [w for _, w in mix]
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(rng,), name=f"driver-{i}", daemon=True)
            for i, rng in enumerate(self.rngs)
        ]

    def __enter__(self) -> Driver:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        if self.errors:
            raise self.errors[0]

    def _run(self, rng: random.Random) -> None:
        try:
            while not self.stopping.is_set():
                status = self.one(rng)
                if status is None:
                    self.stopping.wait(0.05)  # the service is down: do not spin while it restarts
        except BaseException as exc:  # surfaced by stop(): a driver bug must not pass silently
            self.errors.append(exc)

    def one(self, rng: random.Random) -> int | None:
        rig = self.rig
        action = rng.choices(self.actions, self.weights)[0]
        lamp = rng.choice(LAMP_IDS)
        if action == "start":
            call = rig.call("start", lamp, seconds=round(rng.uniform(0.3, 4.0), 2), new_patient=rng.random() < 0.3)
        elif action == "extend":
            call = rig.call("extend", lamp, seconds=round(rng.uniform(0.5, 20.0), 2))
        elif action == "reset":
            call = rig.call("reset", lamp, user="admin")
        elif action == "stop":
            call = rig.call("stop", lamp)
        else:
            call = rig.call(action, user=rng.choice(("ann", "admin")))
        return call.status
