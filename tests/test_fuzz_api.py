"""Schemathesis against a live `lampctl serve --simulate`: no 5xx, every reply as web/openapi.json says.

CI sends at least FUZZ_CASES requests (about FUZZ_CASES / operations each); `pytest -m soak`
runs the long form, SOAK_CASES. Afterwards no lamp may be on outside a session, every
session must be closed once the service stops, and the service must have logged no traceback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sqlite3
from pathlib import Path

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.procs import TWO_LAMPS, ServiceProcess, add_users, service_config

SPEC_PATH = Path(__file__).resolve().parent.parent / "web" / "openapi.json"
LAMP_IDS = ["room1", "room2"]  # TWO_LAMPS
FUZZ_CASES = 1000
SOAK_CASES = 10_000


def fuzz_spec() -> dict:
    """The spec, with the test service's lamp ids as the valid ones, so sessions really run.

    Other ids still come, from the negative cases, and must get a 4xx (404).
    """
    spec = copy.deepcopy(json.loads(SPEC_PATH.read_text()))
    for item in spec["paths"].values():
        for param in item.get("parameters", []) + item.get("get", {}).get("parameters", []):
            if param["name"] == "lamp_id":
                param["schema"] = {"type": "string", "enum": LAMP_IDS}
            elif param["name"] == "lamp":  # the sessions filter: empty means every lamp
                param["schema"] = {"type": "string", "enum": [*LAMP_IDS, ""]}
    return spec


SCHEMA = schemathesis.openapi.from_dict(fuzz_spec())
# The tokens are real (an admin's or a practitioner's on every request), not generated: a
# request without a valid one is a 401 before any input is read (tests/test_api.py checks
# that for every route). Unknown query parameters are ignored by design, as most APIs do.
SCHEMA.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
# ignored_auth probes every 2xx again with a made-up token, which waits for the accounts'
# next reload (1.5 s): tests/test_api.py covers missing and bad tokens on every route.
EXCLUDED_CHECKS = [schemathesis.checks.ignored_auth]
START = "/api/lamps/{lamp_id}/start"
LAMP_MAX_S = 30 * 60  # both lamps of TWO_LAMPS
START_BODY = jsonschema_rs.Draft202012Validator(
    {**SCHEMA.raw_schema["paths"][START]["post"]["requestBody"]["content"]["application/json"]["schema"]}
)
OPERATIONS = sum(len([m for m in item if m != "parameters"]) for item in SCHEMA.raw_schema["paths"].values())


def _examples(total: int) -> int:
    # Operations without parameters run out of distinct cases early, so ask the others for more.
    return math.ceil(total / OPERATIONS * 1.6)


def _soak_examples(total: int) -> int:
    # Hypothesis stops early on the small operations; the long form asks the rest for more still.
    return math.ceil(total / OPERATIONS * 2.2)


STATS = {"requests": 0, "soak": False, "by_token": {"admin": 0, "ann": 0}, "statuses": {}}


@pytest.fixture
def soak_only(request):
    """The long form runs only when asked for (`pytest -m soak`), whatever else selects it."""
    if "soak" not in (request.config.option.markexpr or "") or "not soak" in request.config.option.markexpr:
        pytest.skip("the long form runs with -m soak")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    service = ServiceProcess(service_config(tmp, TWO_LAMPS)).start(timeout=60)
    try:
        tokens = add_users(service.config)
        yield service, tokens
        # Here too, so the long form (-m soak, which deselects the test below) is checked the same way.
        check_afterwards(service, tokens)
    finally:
        service.stop()


def check_afterwards(service, tokens) -> None:
    """S2: no lamp on outside a session; then every session closed once the service stops, and no traceback."""
    if service.proc.poll() is not None:
        return  # already checked and stopped
    status, body = service.get("/api/lamps", token=tokens["admin"])
    assert status == 200
    for lamp in body["lamps"]:
        # The relay is read back from the output device: on exactly while a session runs.
        assert lamp["relay_on"] == (lamp["state"] == "on" and lamp["session_id"] is not None), lamp
    status, body = service.post("/api/stop-all", token=tokens["admin"])
    assert status == 200 and not any(l["relay_on"] for l in body["lamps"]), body
    assert service.stop() == 0
    db = sqlite3.connect(service.config.parent / "var" / "lampctl.db")
    try:
        open_sessions = db.execute("SELECT id, lamp_id FROM sessions WHERE ended_at IS NULL").fetchall()
    finally:
        db.close()
    assert open_sessions == []
    assert "Traceback" not in service.stderr()
    print(f"fuzz: {STATS}")
    assert not STATS["soak"] or STATS["requests"] >= SOAK_CASES, STATS


def _digest(case) -> bytes:
    """The case and its place in the run: many cases are alike (POST /api/lamps/room1/stop), their turns differ."""
    key = (STATS["requests"], case.method, case.path, case.path_parameters, case.query, case.body)
    return hashlib.sha256(repr(key).encode()).digest()


def _token_for(case, tokens: dict) -> tuple[str, str]:
    """Half the cases as the admin, half as a practitioner."""
    name = ("admin", "ann")[_digest(case)[0] % 2]
    return name, tokens[name]


def _prepare_lamp(case, service, tokens) -> None:
    """Put the case's lamp as it is, off, on or latched (chosen by the case), so each action meets each state."""
    lamp = (case.path_parameters or {}).get("lamp_id")
    if lamp not in LAMP_IDS:
        return
    steps = [
        [],
        [f"/api/lamps/{lamp}/stop", f"/api/lamps/{lamp}/reset"],
        [f"/api/lamps/{lamp}/reset", f"/api/lamps/{lamp}/start"],
        ["/api/estop"],
    ][_digest(case)[1] % 4]
    for path in steps:
        body = {"minutes": 10, "new_patient": True} if path.endswith("/start") else None
        status, _ = service.post(path, body, token=tokens["admin"])
        assert status < 500, (path, status)


def check_start_accepted_within_the_limit(case, response) -> None:
    """positive_data_acceptance for a start, less what no spec can say: past the lamp's own limit is a 400."""
    if case.operation.path != START or response.status_code != 400:
        return
    body = case.body
    if not isinstance(body, dict) or not START_BODY.is_valid(body):
        return  # not valid data: a 400 is right
    seconds = body["seconds"] if "seconds" in body else body["minutes"] * 60
    assert seconds > LAMP_MAX_S and response.json()["code"] == "too-long", (body, response.text)


def _run_case(case, live) -> None:
    service, tokens = live
    name, token = _token_for(case, tokens)
    _prepare_lamp(case, service, tokens)
    excluded = EXCLUDED_CHECKS + (
        [schemathesis.checks.positive_data_acceptance] if case.operation.path == START else []
    )
    response = case.call_and_validate(
        base_url=service.url, headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded, timeout=30
    )
    check_start_accepted_within_the_limit(case, response)
    STATS["requests"] += 1
    STATS["by_token"][name] += 1
    key = f"{case.method} {case.path} {response.status_code}"
    STATS["statuses"][key] = STATS["statuses"].get(key, 0) + 1


@SCHEMA.parametrize()
@settings(
    max_examples=_examples(FUZZ_CASES),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_api_no_5xx_and_every_reply_matches_the_spec(case, live):
    _run_case(case, live)


@pytest.mark.soak
@SCHEMA.parametrize()
@settings(
    max_examples=_soak_examples(SOAK_CASES), deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_fuzz_api_soak(case, soak_only, live):
    STATS["soak"] = True
    _run_case(case, live)


def test_fuzz_api_s2_no_lamp_on_outside_a_session_afterwards(live, request):
    check_afterwards(*live)
    fuzzed = request.session.items
    if any(item.originalname == "test_fuzz_api_no_5xx_and_every_reply_matches_the_spec" for item in fuzzed):
        assert STATS["requests"] >= FUZZ_CASES, STATS
        assert min(STATS["by_token"].values()) > STATS["requests"] // 4, STATS
