"""The fault campaign: real processes under faults, judged by one oracle (tests/faults/oracle.py)."""
