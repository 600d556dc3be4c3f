"""Headless Chromium for tests: open a page (file or http://127.0.0.1), collect console errors, screenshot.

Uses Debian's ``chromium`` (``apt-get install chromium``; ``$MAME_CHROMIUM`` overrides the path) driven by the
``playwright`` Python package with ``executable_path`` (its bundled browsers are never downloaded). Requests to
anything but ``file:``, ``data:``, ``blob:`` and ``127.0.0.1`` / ``localhost`` are blocked and recorded, so a
page that needs a CDN fails its test.

Example::

    from browser import open_page

    with open_page(tmp_path / "site" / "index.html") as view:
        view.page.click("figure.thumb")
        view.screenshot(tmp_path / "shot.png")
        view.assert_clean()
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def chromium_path() -> str | None:
    """The Chromium executable: ``$MAME_CHROMIUM``, else ``chromium`` on PATH, else None."""
    env = os.environ.get("MAME_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def require_chromium() -> str:
    """Skip the calling test with the reason when Chromium or playwright is absent; returns the executable."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("headless Chromium not found: apt-get install -y chromium (or set MAME_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed: pip install playwright "
                    "(its own browsers are not needed)")
    return exe


@dataclass
class View:
    """An open page plus what went wrong while it ran.

    Attributes:
        page: the playwright ``Page``.
        errors: console errors, uncaught exceptions and failed requests, as text.
        blocked: URLs of non-local requests that were refused.
        dialogs: messages of alert/confirm/prompt dialogs (dismissed).
    """

    page: object
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def screenshot(self, path: str | os.PathLike, full_page: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_clean(self) -> None:
        """Fail on console errors, page exceptions, failed or non-local requests, or dialogs."""
        problems = self.errors + [f"blocked non-local request {u}" for u in self.blocked] + \
            [f"dialog {d!r}" for d in self.dialogs]
        assert not problems, "page problems:\n" + "\n".join(problems)


def _url(target: str | os.PathLike) -> str:
    text = str(target)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()


def _local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("file", "data", "blob", "about"):
        return True
    return parsed.scheme in ("http", "https", "ws") and (parsed.hostname or "") in LOCAL_HOSTS


@contextlib.contextmanager
def open_page(target: str | os.PathLike, *, viewport=(1400, 900), wait_until: str = "load", timeout_ms: int = 30000):
    """Open a file path or URL in headless Chromium; yields a :class:`View` (browser closed on exit)."""
    exe = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            view = View(page)

            def route(r):
                if _local(r.request.url):
                    r.continue_()
                else:
                    view.blocked.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page.on("console", lambda m: view.errors.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: view.errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: view.errors.append(f"request failed: {r.url} ({r.failure})")
                    if _local(r.url) else None)

            def dialog(d):
                view.dialogs.append(d.message)
                d.dismiss()

            page.on("dialog", dialog)
            page.goto(_url(target), wait_until=wait_until)
            yield view
        finally:
            browser.close()
