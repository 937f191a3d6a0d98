"""The guard in front of pushcut's local web pages: the robot's operator page and the human verdict page.

Both pages listen on the machine a person sits at, usually on loopback, and
both can do something that matters (release an e-stop, score an episode). A
browser on that machine will send requests to them on behalf of *any* site it
has open, so "it came from loopback" proves nothing. What the guard trusts:

* ``Host`` must name the page itself (the bound loopback names and port, or the
  configured host when bound elsewhere). A DNS-rebinding site reaches the page
  under its own name and is refused, so it can neither read the page's secret
  nor its state.
* ``Origin``, when the browser sends one, must be the page's own origin.
* Every state-changing request carries the page's secret (a random value made
  per process and embedded in the page it serves) in :data:`SECRET_HEADER`. A
  foreign page cannot read it (same-origin policy) and cannot send a custom
  header cross-origin without a CORS pre-flight, which these pages never grant.
* Bodies are JSON only (``Content-Type: application/json``), with a
  ``Content-Length`` checked before anything is read (digits only, at most
  :data:`MAX_BODY_BYTES`).

Refusals are ``403`` (or ``400``/``411``/``413``/``415`` for a bad body) and
change nothing. This module imports only the standard library.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET_HEADER = "X-Pushcut-Page"
"""The header a state-changing request carries the page's secret in."""
SECRET_PLACEHOLDER = "__PUSHCUT_PAGE_SECRET__"
"""Where a page's HTML wants its secret; :meth:`PageGuard.embed` fills it in."""
MAX_BODY_BYTES = 1 << 16
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class Refused(Exception):
    """A request the guard turned away: ``code`` and a one-line ``reason`` for the JSON reply."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port or None)`` of a ``Host`` header value (``[v6]:port`` too); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    elif ":" in value:
        return None  # a bare IPv6 address must be bracketed in Host
    else:
        name, port = value, ""
    if not name or (port and not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536)):
        return None
    return name, int(port) if port else None


class PageGuard:
    """What one page (bound to ``bind_host``:``port``) accepts; ``secret`` is new per process."""

    def __init__(self, bind_host: str, port: int) -> None:
        self.port = port
        self.secret = secrets.token_urlsafe(32)
        bind = bind_host.strip("[]").lower()
        self.any_ip = bind in WILDCARDS
        """Bound to every interface: any IP literal names it (an IP cannot be DNS-rebound)."""
        self.names = set(LOOPBACK_NAMES) if (is_loopback(bind) or self.any_ip) else set()
        if bind and bind not in WILDCARDS:
            self.names.add(bind)
        if self.any_ip:
            self.names.add(socket.gethostname().lower())

    def host_ok(self, header: str | None) -> bool:
        parsed = split_host(header or "")
        if parsed is None:
            return False
        name, port = parsed
        if (port or 80) != self.port:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def origin_ok(self, origin: str | None) -> bool:
        """No ``Origin`` (curl, a same-origin GET) is fine; one that is sent must be this page's own."""
        if origin is None:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme.lower() == "http" and "/" not in rest and self.host_ok(rest)

    def embed(self, page: str) -> str:
        """``page`` with its secret filled in where :data:`SECRET_PLACEHOLDER` stands."""
        return page.replace(SECRET_PLACEHOLDER, self.secret)

    def check(self, headers: Any, state_changing: bool, host_only: bool = False) -> None:
        """:class:`Refused` unless ``headers`` (a request's) pass: Host always; Origin unless
        ``host_only`` (an e-stop is never refused for where it came from); the secret for a
        state-changing request."""
        if not self.host_ok(headers.get("Host")):
            raise Refused(403, "this page answers only to its own address (Host header refused)")
        if host_only:
            return
        if not self.origin_ok(headers.get("Origin")):
            raise Refused(403, "cross-origin requests are refused")
        if state_changing:
            given = headers.get(SECRET_HEADER, "")
            if not secrets.compare_digest(given.encode(), self.secret.encode()):
                raise Refused(403, f"missing or wrong {SECRET_HEADER} header: use the buttons of the page itself")


REQUEST_DEADLINE_S = 10.0
"""A page connection is closed this long after it opened, whatever it is still sending."""
MAX_CONNECTIONS = 32
"""Page connections served at once; one more is closed at once (the console and signals still stop the robot)."""


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler with the guard's checks and a bounded JSON body reader; a page's handler
    sets ``guard`` and implements ``get`` / ``post`` (called only after the Host/Origin checks).
    Each connection has one deadline (:data:`REQUEST_DEADLINE_S`) however slowly it sends."""

    guard: PageGuard
    timeout = REQUEST_DEADLINE_S
    """Seconds per read; the whole connection is also cut at the deadline."""

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:  # the client went away: nothing to flush to
            pass

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError):  # a client that hung up or was cut at its deadline: not worth a traceback
            pass
    protected_posts: frozenset[str] = frozenset()
    """Paths a POST to changes state: they need the page's origin, its secret and a JSON body."""
    open_posts: frozenset[str] = frozenset()
    """Paths any local request may POST to, with only the Host check and no body read (the e-stop)."""

    def log_message(self, fmt: str, *args: Any) -> None:  # requests are not worth a line each
        pass

    def send_body(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, code: int, data: Any) -> None:
        self.send_body(code, json.dumps(data).encode())

    def read_json(self) -> Any:
        """The request's JSON body (``None`` when empty), or :class:`Refused`."""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                raise Refused(411, "send a Content-Length (chunked bodies are not accepted)")
            length = "0"
        length = length.strip()
        if not re.fullmatch(r"[0-9]{1,12}", length):
            raise Refused(400, "Content-Length must be a non-negative whole number")
        size = int(length)
        if size > MAX_BODY_BYTES:
            raise Refused(413, f"the body may be at most {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(size) if size else b""
        if len(body) != size:
            raise Refused(400, "the body is shorter than its Content-Length")
        if not body:
            return None
        if kind != "application/json":
            raise Refused(415, "the body must be JSON (Content-Type: application/json)")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the body must be JSON") from None

    def do_GET(self) -> None:
        try:
            self.guard.check(self.headers, state_changing=False)
            self.get()
        except Refused as exc:
            self.send_json(exc.code, {"error": exc.reason})

    def do_POST(self) -> None:
        try:
            path = self.path
            if path in self.open_posts:
                self.guard.check(self.headers, state_changing=False, host_only=True)
                self.post(None)
                return
            if path not in self.protected_posts:
                raise Refused(404, "unknown path")
            self.guard.check(self.headers, state_changing=True)
            data = self.read_json()
            if data is None:
                raise Refused(415, "the body must be JSON (Content-Type: application/json)")
            self.post(data)
        except Refused as exc:
            self.send_json(exc.code, {"error": exc.reason})

    def get(self) -> None:  # pragma: no cover - pages implement it
        self.send_json(404, {"error": "unknown path"})

    def post(self, data: Any) -> None:  # pragma: no cover - pages implement it
        self.send_json(404, {"error": "unknown path"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many connections at once: this one is closed
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a request that failed is the client's problem; never a traceback on the operator's terminal


def open_page(host: str, port: int, handler: type[GuardedHandler], name: str) -> tuple[ThreadingHTTPServer, PageGuard]:
    """Bind ``handler``'s page on ``host``:``port`` (IPv4 or IPv6; port 0 = any free one), give it a
    :class:`PageGuard` for the address it got, and serve it on a daemon thread; ``OSError`` if it
    cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("PageServer", (_Server,), {"address_family": family})
    bound_handler = type(handler.__name__, (handler,), {})
    server = server_class((host.strip("[]"), port), bound_handler)
    guard = PageGuard(host, server.server_address[1])
    bound_handler.guard = guard
    threading.Thread(target=server.serve_forever, daemon=True, name=name).start()
    return server, guard


def page_url(server: ThreadingHTTPServer) -> str:
    """``http://host:port/`` of a page :func:`open_page` opened (IPv6 hosts bracketed)."""
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class PageClient:
    """Talks to a pushcut page the way its own buttons do: reads the page's secret from the page,
    then sends JSON with it. For scripts at the robot (a foot pedal, a confirm key) and for tests."""

    _SECRET = re.compile(r'<meta name="pushcut-page" content="([^"]+)">')

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.timeout_s = timeout_s
        self._secret = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """``(status, decoded JSON or raw bytes)`` of one request; HTTP errors are returned, not raised."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path.lstrip("/"), data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as reply:
                status, raw, kind = reply.status, reply.read(), reply.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        return status, json.loads(raw) if kind.startswith("application/json") else raw

    @property
    def secret(self) -> str:
        if not self._secret:
            status, page = self.request("GET", "/")
            found = self._SECRET.search(page.decode() if isinstance(page, bytes) else "")
            if status != 200 or found is None:
                raise RuntimeError(f"{self.url} served no pushcut page (status {status})")
            self._secret = found.group(1)
        return self._secret

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, data: Any = None) -> tuple[int, Any]:
        """POST ``data`` (default ``{}``) as JSON with the page's secret, as the page's buttons do."""
        body = json.dumps({} if data is None else data).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json", SECRET_HEADER: self.secret})
