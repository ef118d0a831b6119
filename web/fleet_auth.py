"""The collector's login: admins only, with the node's PIN check, per-name lockout, login cookie and CSRF (web.auth)."""

from __future__ import annotations

from flask import Blueprint, abort, g, jsonify, redirect, render_template, request, session, url_for

from web import accounts, auth
from web.params import safe_next

bp = Blueprint("fleet_auth", __name__)

# Views anyone may reach; every other page, the CSV and /api/fleet need an admin's login.
PUBLIC_ENDPOINTS = {"fleet_auth.login", "static"}
ADMINS_ONLY = "Only an admin may open the fleet pages; {name} is a practitioner."


def before_request():
    auth._load_user()
    if request.endpoint is not None and request.endpoint not in PUBLIC_ENDPOINTS:
        if g.user is None:
            if auth.wants_json() or request.path.startswith("/api/"):
                return jsonify(error="Log in first.", code="unauthorized"), 401
            target = request.full_path if request.query_string else request.path
            return redirect(url_for("fleet_auth.login", next=target if request.method == "GET" else None))
        if g.user["role"] != "admin" and request.endpoint != "fleet_auth.logout":
            abort(403, ADMINS_ONLY.format(name=g.user["name"]))  # made a practitioner since logging in
    if request.method == "POST":
        auth._check_csrf()
    return None


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if g.user is not None and g.user["role"] == "admin":
            return redirect(url_for("fleet.fleet"))
        return render_template("fleet/login.html", name="", next=request.args.get("next", ""))
    name = (request.form.get("name") or "").strip()
    nxt = request.form.get("next", "")
    user, message, status = auth._check_login(name, request.form.get("pin") or "")
    if user is not None and user["role"] != "admin":
        user, message, status = None, ADMINS_ONLY.format(name=user["name"]), 403
    if user is not None:
        message = auth._begin_login(user, "logged in to the fleet pages")
        status = 503
    if message:
        return render_template("fleet/login.html", name=name, next=nxt, error=message), status
    return redirect(safe_next(nxt, "fleet.fleet"), code=303)


@bp.post("/logout")
def logout():
    name = g.user["name"]
    accounts().end_login(session.get("login"))  # a copy of this cookie stops working too
    session.clear()
    auth.audit(name, "logged out of the fleet pages")
    return redirect(url_for("fleet_auth.login"), code=303)
