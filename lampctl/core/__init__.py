"""The safety core: each lamp's state machine, its deadlines and the rules named after the invariants; no I/O (hardware, clock and log are handed in)."""
