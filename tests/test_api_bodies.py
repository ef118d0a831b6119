"""No body makes the API answer 5xx or leaves a lamp on: oversize numbers, deep nesting, any JSON at all."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import bearer, pin_history

NASTY = [
    ('{"minutes": %s}' % ("9" * 400), "too-long"),  # OverflowError in float()
    ('{"seconds": %s}' % ("1" + "0" * 399), "too-long"),
    ('{"minutes": 1e308}', "too-long"),  # finite, but x 60 is not
    ('{"minutes": 1e999}', "bad-duration"),  # parses as infinity
    ('{"minutes": NaN}', "bad-duration"),
    ('{"minutes": -%s}' % ("9" * 400), "bad-duration"),
    ('{"minutes": true}', "bad-duration"),
    ('{"minutes": 10, "new_patient": "yes"}', "bad-body"),
    ('{"minutes": 10, "new_patient": 1}', "bad-body"),
    ("[" * 30000 + "]" * 30000, "bad-body"),  # RecursionError in the parser
    ('{"a": ' * 5000 + "1" + "}" * 5000, "bad-body"),
    ('"minutes"', "bad-body"),
    ("null", "bad-body"),
    ("10", "bad-body"),
    ("\xff\xfe", "bad-body"),
    ('{"minutes": 10, "%s": 1}' % ("x" * 5000), "bad-body"),
]


@pytest.mark.parametrize("data,code", NASTY, ids=range(len(NASTY)))
def test_api_start_hostile_body_is_400_never_500(client, users, factory, data, code):
    resp = client.post(
        "/api/lamps/room1/start",
        data=data.encode("utf-8", "surrogateescape"),
        content_type="application/json",
        headers=bearer(users["ann"]),
    )
    assert resp.status_code == 400, resp.data[:200]
    body = resp.get_json()
    assert body["code"] == code and body["error"].endswith(".") and len(body["error"]) < 200
    assert pin_history(factory, 17) == [False]


def test_api_extend_hostile_body_is_400_and_plan_unchanged(client, users):
    client.post("/api/lamps/room1/start", json={"minutes": 10}, headers=bearer(users["ann"]))
    for data, _ in NASTY:
        resp = client.post(
            "/api/lamps/room1/extend", data=data, content_type="application/json", headers=bearer(users["ann"])
        )
        assert resp.status_code == 400
    lamp = client.get("/api/lamps/room1", headers=bearer(users["ann"])).get_json()
    assert lamp["planned_s"] == 600


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["minutes", "seconds", "new_patient"]) | st.text(max_size=8), inner, max_size=4
        )
    ),
    max_leaves=12,
)
bodies = json_values | st.fixed_dictionaries(
    {"minutes": json_values}, optional={"new_patient": json_values, "seconds": json_values}
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, action=st.sampled_from(["start", "extend"]), lamp=st.sampled_from(["room1", "room2"]))
def test_api_any_json_body_is_answered_4xx_never_5xx_and_no_lamp_left_on(client, users, controller, body, action, lamp):
    resp = client.post(
        f"/api/lamps/{lamp}/{action}",
        data=json.dumps(body),
        content_type="application/json",
        headers=bearer(users["ann"]),
    )
    assert resp.status_code < 500, resp.data[:300]
    reply = resp.get_json()
    if resp.status_code in (200, 201):
        controller.stop_all("test")
    else:
        assert 400 <= resp.status_code < 500 and reply["error"].endswith(".") and reply["code"]
    assert not any(view.relay_on for view in controller.lamps())


@pytest.mark.parametrize("action,status,code", [("start", 400, "too-long"), ("extend", 409, "over-limit")])
def test_api_huge_finite_duration_is_one_short_sentence(client, users, action, status, code):
    """1.3e308 s is finite, so it reaches the limit check: the refusal must not print its 309 digits."""
    if action == "extend":
        client.post("/api/lamps/room1/start", json={"minutes": 10}, headers=bearer(users["ann"]))
    resp = client.post(f"/api/lamps/room1/{action}", json={"seconds": 1.3e308}, headers=bearer(users["ann"]))
    body = resp.get_json()
    assert (resp.status_code, body["code"]) == (status, code)
    assert len(body["error"]) < 200 and "over 100 h" in body["error"], body["error"]
