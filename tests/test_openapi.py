"""web/openapi.json against the app: served at /api/openapi.json, the same routes both ways, valid OpenAPI 3.1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from tests.conftest import bearer

SPEC_PATH = Path(__file__).resolve().parent.parent / "web" / "openapi.json"
SPEC = json.loads(SPEC_PATH.read_text())
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    """{(path, METHOD)} with Flask's <name> for OpenAPI's {name}."""
    return {
        (re.sub(r"\{(\w+)\}", r"<\1>", path), method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def api_routes(app) -> set[tuple[str, str]]:
    """{(rule, METHOD)} of every /api route; HEAD and OPTIONS are Flask's own additions."""
    return {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_openapi_every_api_route_is_in_the_spec(app):
    missing = api_routes(app) - spec_operations(SPEC)
    assert not missing, f"routes the spec does not describe: {sorted(missing)}"


def test_openapi_every_spec_operation_is_a_route(app):
    extra = spec_operations(SPEC) - api_routes(app)
    assert not extra, f"operations in the spec that no route serves: {sorted(extra)}"


def test_openapi_path_parameters_match_the_route_variables(app):
    for path, item in SPEC["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        for method in HTTP_METHODS & set(item):
            declared |= {p["name"] for p in item[method].get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), path


def test_openapi_is_a_valid_openapi_3_1_document():
    assert SPEC["openapi"].startswith("3.1.")
    OPENAPI_31_VALIDATOR.validate(SPEC)


def test_openapi_every_operation_documents_its_auth_and_errors():
    for path, item in SPEC["paths"].items():
        for method in HTTP_METHODS & set(item):
            op = item[method]
            public = op.get("security", SPEC["security"]) == []
            assert public or "401" in op["responses"], f"{method} {path} needs a 401"
            assert all(code[0] in "245" for code in op["responses"]), f"{method} {path}: {op['responses']}"


def test_openapi_served_without_auth_equals_the_file(client):
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == SPEC


def _validator(schema: dict) -> jsonschema_rs.Validator:
    """A validator for one schema of the spec, its $refs resolved against the whole document."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": SPEC["components"]})


def _response_schema(path: str, method: str, status: int) -> dict:
    response = SPEC["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    "method,url,body,token,path,status",
    [
        ("get", "/api/health", None, None, "/api/health", 200),
        ("get", "/api/lamps", None, "ann", "/api/lamps", 200),
        ("get", "/api/lamps/room1", None, "ann", "/api/lamps/{lamp_id}", 200),
        ("get", "/api/lamps/nope", None, "ann", "/api/lamps/{lamp_id}", 404),
        ("get", "/api/lamps", None, None, "/api/lamps", 401),
        ("post", "/api/lamps/room1/start", {"minutes": 10}, "ann", "/api/lamps/{lamp_id}/start", 201),
        ("post", "/api/lamps/room1/start", {"minutes": "ten"}, "ann", "/api/lamps/{lamp_id}/start", 400),
        ("post", "/api/lamps/room1/extend", {"minutes": 5}, "ann", "/api/lamps/{lamp_id}/extend", 409),
        ("post", "/api/lamps/room1/stop", None, "ann", "/api/lamps/{lamp_id}/stop", 200),
        ("post", "/api/lamps/room1/stop", None, None, "/api/lamps/{lamp_id}/stop", 200),
        ("post", "/api/estop", None, None, "/api/estop", 200),
        ("post", "/api/lamps/room1/reset", None, "ann", "/api/lamps/{lamp_id}/reset", 403),
        ("post", "/api/reset-all", None, "ann", "/api/reset-all", 403),
        ("post", "/api/reset-all", None, "admin", "/api/reset-all", 409),
        ("post", "/api/stop-all", None, "ann", "/api/stop-all", 200),
        ("get", "/api/sessions?from=yesterday", None, "admin", "/api/sessions", 400),
    ],
)
def test_openapi_schemas_describe_the_replies(client, users, method, url, body, token, path, status):
    headers = bearer(users[token]) if token else {}
    resp = getattr(client, method)(url, json=body, headers=headers)
    assert resp.status_code == status, resp.get_json()
    _validator(_response_schema(path, method, status)).validate(resp.get_json())


def test_openapi_session_and_lamp_schemas_describe_a_whole_session(client, users):
    ann, admin = bearer(users["ann"]), bearer(users["admin"])
    started = client.post("/api/lamps/room1/start", json={"seconds": 90, "new_patient": True}, headers=ann)
    extended = client.post("/api/lamps/room1/extend", json={"minutes": 1}, headers=ann)
    stopped = client.post("/api/lamps/room1/stop", headers=ann)
    estopped = client.post("/api/estop", headers=ann)
    reset = client.post("/api/lamps/room1/reset", headers=admin)
    reset_all = client.post("/api/reset-all", headers=admin)  # room2, still latched
    sessions = client.get("/api/sessions?from=2000-01-01&reason=stopped", headers=admin)
    replies = [
        (started, "/api/lamps/{lamp_id}/start", "post", 201),
        (extended, "/api/lamps/{lamp_id}/extend", "post", 200),
        (stopped, "/api/lamps/{lamp_id}/stop", "post", 200),
        (estopped, "/api/estop", "post", 200),
        (reset, "/api/lamps/{lamp_id}/reset", "post", 200),
        (reset_all, "/api/reset-all", "post", 200),
        (sessions, "/api/sessions", "get", 200),
    ]
    for resp, path, method, status in replies:
        assert resp.status_code == status, (path, resp.get_json())
        _validator(_response_schema(path, method, status)).validate(resp.get_json())
    assert [s["end_reason"] for s in sessions.get_json()["sessions"]] == ["stopped"]
    assert estopped.get_json()["lamps"][0]["state"] == "fault"


@pytest.mark.parametrize(
    "method,path",
    [
        ("put", "/api/lamps"),
        ("delete", "/api/lamps/room1"),
        ("get", "/api/stop-all"),
        ("post", "/api/openapi.json"),
        ("put", "/login"),
    ],
)
def test_openapi_a_405_names_the_allowed_methods(client, method, path):
    resp = getattr(client, method)(path)
    assert resp.status_code == 405
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allowed and method.upper() not in allowed
    if path.startswith("/api/"):
        assert resp.get_json()["code"] == "method-not-allowed"
