"""The one browser setup for every browser test: Debian's Chromium through Playwright, viewports, screenshots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parent / "screenshots"
TABLET = {"width": 1024, "height": 768}
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 360, "height": 740}
PORTRAIT = {"width": 768, "height": 1024}
SIZES = [SMALL_PHONE, PHONE, PORTRAIT, TABLET]
PHONES = (SMALL_PHONE, PHONE)


def size_name(viewport: dict) -> str:
    return f"{viewport['width']}x{viewport['height']}"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(browser, viewport: dict, **options):
    """A fresh context at `viewport` (a phone size gets touch and mobile); console errors are collected."""
    if viewport in PHONES:
        options = {"has_touch": True, "is_mobile": True, **options}
    context = browser.new_context(viewport=viewport, accept_downloads=True, **options)
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    # A CSP violation or a script error shows up as a console error: none is allowed.
    # (A refused action's 4xx also logs "Failed to load resource"; that one is expected.)
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors
    return context, page


def shot(page, name: str, *, full_page: bool = True) -> None:
    """A screenshot to look at; full_page=False shows what is on screen (fixed overlays as the user sees them)."""
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-{size_name(page.viewport_size)}.png"), full_page=full_page)


def log_in(page, base: str, name: str, pin: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("Name").fill(name)
    page.get_by_label("PIN").fill(pin)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/panel/$"))


def button_boxes(page) -> dict[str, tuple]:
    """Every button's place on the page, scrolled to the top (the Stop all bar is sticky), by a stable key."""
    return page.evaluate("""() => {
      window.scrollTo(0, 0);
      const out = {};
      document.querySelectorAll('button').forEach((b, i) => {
        const r = b.getBoundingClientRect();
        const key = (b.closest('[data-lamp]')?.dataset.lamp || 'page') + ':' + i + ':' + b.className;
        out[key] = [Math.round(r.left + scrollX), Math.round(r.top + scrollY), Math.round(r.width), Math.round(r.height)];
      });
      return out;
    }""")


def overflowing(page) -> list[str]:
    """Elements whose content spills out of their own box sideways, and the page's own sideways scroll."""
    return page.evaluate("""() => {
      const bad = [];
      const doc = document.documentElement;
      if (doc.scrollWidth > doc.clientWidth + 1) bad.push('page scrolls sideways: ' + doc.scrollWidth);
      document.querySelectorAll('button, .btn, a, th, td, h1, h2, label, .lamp, .lamp-state, .countdown, p, li, svg')
        .forEach(el => {
          const r = el.getBoundingClientRect();
          if (r.width <= 2 || getComputedStyle(el).visibility === 'hidden') return;  // hidden, or for screen readers only
          // A button or a clock that clips its text counts too (they hide their overflow).
          const clips = el.matches('button, .btn, .countdown');
          if (el.scrollWidth > el.clientWidth + 1 && (clips || getComputedStyle(el).overflowX === 'visible')
              && !['A', 'SVG'].includes(el.tagName.toUpperCase()))
            bad.push(el.tagName + '.' + el.className + ' "' + el.textContent.trim().slice(0, 40) + '" ' + el.scrollWidth + '>' + el.clientWidth);
          // A chart may scroll inside its own box on a phone (its figures are also in a table below it).
          if (r.right > doc.clientWidth + 1 && !el.closest('.table-wrap, .chart-wrap'))
            bad.push(el.tagName + '.' + el.className + ' "' + el.textContent.trim().slice(0, 40) + '" right edge ' + Math.round(r.right));
        });
      document.querySelectorAll('.table-wrap').forEach(el => {
        if (el.scrollWidth > el.clientWidth + 1) bad.push('table scrolls sideways: ' + el.firstElementChild.className);
      });
      return bad;
    }""")


def tap(page, locator) -> None:
    """A finger on a phone size, a mouse elsewhere, at the middle of `locator` scrolled to the middle of the
    screen (never under the sticky Stop-all bar)."""
    locator.evaluate("e => e.scrollIntoView({block: 'center'})")
    box = locator.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    if page.viewport_size in PHONES:
        page.touchscreen.tap(x, y)
    else:
        page.mouse.click(x, y)


def served(tmp_path_factory, name: str, lamps: str):
    """For a module fixture (`yield from served(...)`): a real `lampctl serve --simulate` with `lamps`, its
    admin's and ann's API tokens as `.tokens`, stopped after the module."""
    from tests.procs import ServiceProcess, add_users, service_config

    config = service_config(tmp_path_factory.mktemp(name), lamps)
    svc = ServiceProcess(config).start()
    svc.tokens = add_users(config)
    try:
        yield svc
    finally:
        svc.stop()
