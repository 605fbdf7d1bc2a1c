"""The explorer's local web server (standard library ``http.server``, one thread a request).

Routes (``GET`` only; anything else is 404, or 501 for another method)::

    /  /app.js  /style.css        the page, shipped in the package (web/)
    /api/meta                     the set, the runs and their metrics
    /api/search?q=TEXT&k=K        each run's top-k images
    /api/image?i=INDEX&k=K        each run's top-k captions of an image (+ the teachers')
    /api/disagreements?offset=&limit=
    /api/zeroshot
    /image/INDEX                  the set's image INDEX (only the set's own files)
    /train/ROW                    a training sample's image (with banks only)

A bad value is answered 400 with a JSON ``{"error": ...}``; an unexpected failure 500; the
server keeps serving either way. The page loads nothing from elsewhere, and its
Content-Security-Policy forbids it to.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import torch

from ..errors import UserError
from .explorer import BadRequest, Explorer

log = logging.getLogger("clip_ping")
WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_FIELDS = 8


def web_file(name: str) -> bytes:
    """A file of the page shipped in the package (``clip_ping/explore/web/``)."""
    return resources.files("clip_ping.explore").joinpath("web", name).read_bytes()


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only.

    Examples:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_handler(explorer: Explorer) -> type[BaseHTTPRequestHandler]:
    """A request handler class answering for ``explorer``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "clip-ping-explore"
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            log.debug("explore: " + format, *args)

        def do_GET(self):  # noqa: N802 - the base class's name
            try:
                self._route()
            except BadRequest as exc:
                self._json({"error": str(exc)}, 400)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # a bug answers 500; the server goes on
                log.exception("explore: %s failed", self.path)
                self._json({"error": f"internal error: {type(exc).__name__}"}, 500)

        def _route(self):
            parts = urlsplit(self.path)
            path = parts.path
            if path == "/data.js":  # the static folder's data; the server answers its API
                return self._send(b"", "text/javascript; charset=utf-8")
            if path in WEB_FILES:
                name, kind = WEB_FILES[path]
                return self._send(web_file(name), kind)
            if path.startswith("/api/"):
                try:
                    query = parse_qs(parts.query, max_num_fields=MAX_FIELDS)
                except ValueError as exc:
                    raise BadRequest(f"malformed query string ({exc})") from None
                return self._json(api(explorer, path[5:], query))
            head, _, tail = path[1:].partition("/")
            if head == "image" and (png := explorer.image_png(tail)) is not None:
                return self._send(png, "image/png")
            if head in ("image", "train"):
                found = explorer.image_file(tail) if head == "image" else explorer.train_file(tail)
                if found is not None:
                    kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
                    return self._send(found.read_bytes(), kind)
            self._json({"error": "not found"}, 404)

        def _json(self, value, status: int = 200):
            body = json.dumps(value).encode()
            self._send(body, "application/json", status)

        def _send(self, body: bytes, kind: str, status: int = 200):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _one(query: dict, name: str, default=None):
    values = query.get(name)
    if not values:
        if default is None:
            raise BadRequest(f"missing parameter {name}")
        return default
    return values[0]


def api(explorer: Explorer, name: str, query: dict) -> dict:
    """The answer of ``/api/<name>`` with the parsed ``query``."""
    if name == "meta":
        return explorer.meta()
    if name == "search":
        return explorer.search(_one(query, "q"), _one(query, "k", 8))
    if name == "image":
        return explorer.image_view(_one(query, "i"), _one(query, "k", 8))
    if name == "disagreements":
        return explorer.disagreements(_one(query, "offset", 0), _one(query, "limit", 50))
    if name == "zeroshot":
        return explorer.zeroshot()
    raise BadRequest(f"no such API {name[:40]!r}: meta, search, image, disagreements, zeroshot")


class ExploreServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


def start_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> ExploreServer:
    """A server for ``explorer`` bound to ``host:port`` (0: a free port), serving in a
    background thread; ``server.url`` is its address, ``server.shutdown()`` stops it."""
    try:
        server = ExploreServer((host, port), make_handler(explorer))
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
            "(0 picks a free one) or --host"
        ) from None
    bound_host, bound_port = server.server_address[:2]
    server.url = f"http://{host if ':' not in host else f'[{host}]'}:{bound_port}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="explore")
    thread.start()
    return server


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until interrupted, printing the address (and a warning off loopback)."""
    if not is_loopback(host):
        print(
            f"clip-ping: warning: --host {host} is not a loopback address: anyone who can "
            "reach this machine can read the set's images and captions",
            file=sys.stderr,
        )
    # A typed query is one batch-1 text forward: a second thread buys little, and on cores
    # that other processes share it costs much (docs/benchmarks.md: 14 against 72 ms).
    torch.set_num_threads(1)
    server = start_server(explorer, host, port)
    print(f"explorer of {explorer.data.name} at {server.url} (Ctrl-C stops it)", flush=True)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
