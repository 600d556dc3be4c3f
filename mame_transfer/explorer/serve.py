"""Serve a built explorer site on 127.0.0.1 (``explore --serve``, and the browser tests)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from pathlib import Path

from mame_transfer.core.errors import DataError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


def serve(site: str | os.PathLike, port: int = 8765) -> http.server.ThreadingHTTPServer:
    """An HTTP server for a built site, bound to 127.0.0.1 (call ``serve_forever`` or run it in a thread)."""
    site = Path(site)
    if not (site / "index.html").is_file():
        raise DataError(f"{site}/index.html does not exist: build the site first.")
    handler = functools.partial(_QuietHandler, directory=str(site))
    return http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)


@contextlib.contextmanager
def serving(site: str | os.PathLike, port: int = 0):
    """Serve a site in a background thread; yields its base URL."""
    server = serve(site, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()

