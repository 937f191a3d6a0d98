"""``pushcut env serve``: any registered env, served over TCP to a trainer.

The server builds ``envs`` instances of the env its config names, then admits
one trainer session at a time. A connection must open with a ``hello``
within ``hello_timeout_s``: the token is checked first (constant time), then
the protocol version, the env name and how many envs the trainer wants; only
then is the ``welcome`` sent (tasks, action spec, options) and requests
served. A malformed, truncated or oversized frame ends that connection with
one log line; the server keeps serving.

Security model: bind to loopback by default; any other bind needs a token
(``$PUSHCUT_ENV_TOKEN`` or ``--token-file``); TLS (stdlib ``ssl``) with
``--tls-cert``/``--tls-key``. Nothing on the wire is ever unpickled or
executed. This module imports no torch: it runs in a simulator's own venv.
"""

from __future__ import annotations

import hmac
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pushcut.envpool.host import HEARTBEAT_S, EnvHost, serve_session
from pushcut.errors import EnvError
from pushcut.webguard import is_loopback
from pushcut.envpool.wire import (
    DEFAULT_MAX_FRAME_MB,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ChannelClosed,
    ChannelTimeout,
    FramedSocket,
    ProtocolError,
)

DEFAULT_PORT = 7171
HELLO_MAX_BYTES = 64 << 10
"""Largest first frame a peer that has not said hello may send (checked at the header), decoded with
small container limits: a hello is a token, an env name and its options, a few KiB; the full frame
limit is for observations."""
MAX_PENDING_HELLOS = 16
"""Connections not yet admitted (hello unread, or waiting for the envs), at most; a new one past
this closes the oldest, so connections that never say hello cannot lock trainers out."""


@dataclass
class ServeOptions:
    """How ``pushcut env serve`` listens."""

    host: str = "127.0.0.1"
    """Address to bind; anything but loopback needs a token."""
    port: int = DEFAULT_PORT
    """TCP port; 0 picks a free one (printed at start)."""
    token: str = ""
    """Shared secret a trainer must present in its hello; empty = none (loopback only)."""
    tls_cert: str = ""
    """PEM certificate for TLS; empty = plain TCP."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    max_frame_mb: float = DEFAULT_MAX_FRAME_MB
    """Largest accepted message, MiB."""
    hello_timeout_s: float = 10.0
    """A connection that has not sent its whole hello within this many seconds (one deadline for
    the TLS handshake and the whole frame, however slowly it drips) is closed."""
    busy_wait_s: float = 10.0
    """How long a new session waits for the envs while an old session still holds them."""
    heartbeat_s: float = HEARTBEAT_S
    """Period of the ``beat`` messages sent while a request runs."""
    idle_timeout_s: float = 0.0
    """A session whose trainer sends nothing for this many seconds between requests ends, freeing
    the envs for the next trainer; 0 = never (``pushcut robot serve`` sets its robot's)."""
    max_pending_hellos: int = MAX_PENDING_HELLOS
    """Connections not yet admitted, at most (each holds a thread); a new one past this closes the oldest."""

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise EnvError(f"serving on {self.host} (not loopback) needs a token: set {TOKEN_ENV} or pass "
                           "--token-file FILE, and give the trainer the same token")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise EnvError("TLS needs both --tls-cert and --tls-key (PEM files)")
        if not self.hello_timeout_s > 0 or self.idle_timeout_s < 0 or self.max_pending_hellos < 1:
            raise EnvError("serve options: hello_timeout_s must be > 0, idle_timeout_s >= 0 (0 = none) and "
                           f"max_pending_hellos >= 1, got {self.hello_timeout_s}, {self.idle_timeout_s}, "
                           f"{self.max_pending_hellos}")


class EnvServer:
    """Serves ``host``'s envs on a listening socket; :meth:`serve_forever` until :meth:`shutdown`."""

    def __init__(self, host: EnvHost, options: ServeOptions, log: Callable[[str], None] | None = None) -> None:
        options.check()
        self.host, self.options = host, options
        self.info = host.describe()
        """What every welcome says (read once, on the thread that built the envs)."""
        self.log = log or (lambda line: print(f"pushcut env serve: {line}", file=sys.stderr, flush=True))
        self.tls: ssl.SSLContext | None = None
        if options.tls_cert:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                self.tls.load_cert_chain(options.tls_cert, options.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise EnvError(f"cannot load the TLS certificate/key ({exc}); pass PEM files to --tls-cert and "
                               "--tls-key") from None
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((options.host, options.port))
        except OSError as exc:
            self.sock.close()
            raise EnvError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}; "
                           "pick another --port (0 = any free one) or --host") from None
        self.sock.listen(16)
        self.address = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._admitted: queue.Queue = queue.Queue()
        """Connections that passed the hello, for the serving thread."""
        self._pending: dict[str, socket.socket] = {}
        """Connections not admitted yet (label → socket), oldest first."""
        self._pending_lock = threading.Lock()

    def serve_forever(self) -> None:
        """Accept connections on a background thread; run admitted sessions on this one, so every env
        call (and a simulator's thread-bound GL context) stays on the thread that built the envs.
        Whatever one session's peer sends, that session ends with one log line and the next is served."""
        threading.Thread(target=self._accept, daemon=True, name="pushcut-accept").start()
        while not self._stop.is_set():
            try:
                framed, peer, done = self._admitted.get(timeout=0.5)
            except queue.Empty:
                continue
            why = "it never started"
            try:
                framed.send({"t": "welcome", "v": PROTOCOL_VERSION, **self.info,
                             "heartbeat_s": self.options.heartbeat_s})
                self.log(f"session from {peer} started")
                self.session_started(peer)
                why = serve_session(framed, self.host, self.options.heartbeat_s, self.options.idle_timeout_s)
                self.log(f"session from {peer} ended: {why}")
            except EnvError as exc:
                why = str(exc)
                self.log(f"session from {peer} ended: {exc}")
            except Exception as exc:  # whatever a peer's message did, this session ends and the server serves on
                why = f"internal error ({type(exc).__name__}: {exc})"
                self.log(f"session from {peer} ended: {why}")
                framed.close()
            finally:
                try:
                    self.session_ended(peer, why)
                except Exception as exc:
                    self.log(f"after the session from {peer}: {type(exc).__name__}: {exc}")
                finally:
                    done.set()

    def session_started(self, peer: str) -> None:
        """Called on the serving thread once a session is admitted, before its first request.
        Does nothing here; a robot server (``pushcut robot serve``) arms its safety layer."""

    def session_ended(self, peer: str, why: str) -> None:
        """Called on the serving thread after a session ended, however it ended (``why``).
        Does nothing here; a robot server holds the robot and ends the episode."""

    def _accept(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            label = f"{peer[0]}:{peer[1]}"
            self._add_pending(label, conn)
            try:
                threading.Thread(target=self._connection, args=(conn, label), daemon=True,
                                 name=f"pushcut-hello-{peer[1]}").start()
            except RuntimeError as exc:  # no thread to be had: this connection is dropped, the server goes on
                self._drop_pending(label)
                conn.close()
                self.log(f"closed {label}: cannot start a thread for it ({exc})")

    def _add_pending(self, label: str, conn: socket.socket) -> None:
        with self._pending_lock:
            evicted = None
            if len(self._pending) >= self.options.max_pending_hellos:
                evicted = next(iter(self._pending))
                old = self._pending.pop(evicted)
            self._pending[label] = conn
        if evicted is not None:
            self.log(f"closed {evicted}: the oldest of {self.options.max_pending_hellos} connections not yet admitted, "
                     f"for {label}")
            try:
                old.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _drop_pending(self, label: str) -> None:
        with self._pending_lock:
            self._pending.pop(label, None)

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass

    # ----------------------------------------------------------------- one connection

    def _connection(self, conn: socket.socket, peer: str) -> None:
        """One connection's thread: the hello (under one deadline, counted as pending until admitted), then
        waiting while the serving thread runs its session. Nothing a peer sends escapes as a traceback."""
        deadline = time.monotonic() + self.options.hello_timeout_s
        framed: FramedSocket | None = None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                conn.settimeout(self.options.hello_timeout_s)
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.log(f"closed {peer}: TLS handshake failed ({getattr(exc, 'reason', None) or exc})")
                    return
                with self._pending_lock:  # the wrapped socket is the one an eviction must shut
                    if peer in self._pending:
                        self._pending[peer] = conn
            framed = FramedSocket(conn, self.options.max_frame_mb, peer=f"client {peer}")
            hello = self._hello(framed, peer, deadline)
            if hello is not None:
                self._session(framed, peer, hello)
        except Exception as exc:
            self.log(f"closed {peer}: internal error ({type(exc).__name__}: {exc})")
        finally:
            self._drop_pending(peer)
            if framed is not None:
                framed.close()
            else:
                conn.close()

    def _refuse(self, framed: FramedSocket, peer: str, reason: str) -> None:
        self.log(f"refused {peer}: {reason}")
        try:
            framed.send({"t": "refuse", "v": PROTOCOL_VERSION, "reason": reason})
        except EnvError:
            pass

    def _hello(self, framed: FramedSocket, peer: str, deadline: float) -> dict | None:
        """The peer's hello, read under one deadline with the small pre-hello frame limit; None
        (after one log line) when it is late, too big, malformed or not a hello."""
        try:
            hello = framed.recv(self.options.hello_timeout_s, deadline=deadline, max_bytes=HELLO_MAX_BYTES)
        except ChannelTimeout:
            self.log(f"closed {peer}: it sent no hello within {self.options.hello_timeout_s:g} s (the whole hello must "
                     "arrive by then)")
            return None
        except ChannelClosed:
            return None
        except ProtocolError as exc:
            self._refuse(framed, peer, f"bad first message ({exc})")
            return None
        if hello["t"] != "hello":
            self._refuse(framed, peer, f"the first message must be a hello, got {hello['t']!r}")
            return None
        return hello

    def _session(self, framed: FramedSocket, peer: str, hello: dict) -> None:
        if self.options.token:
            given = hello.get("token")
            given_bytes = given.encode() if isinstance(given, str) else b""
            if not hmac.compare_digest(given_bytes, self.options.token.encode()):
                self._refuse(framed, peer, f"wrong or missing token: set {TOKEN_ENV} (or rollout.transport.token_file) to "
                                           "this server's token")
                return
        if hello.get("v") != PROTOCOL_VERSION:
            self._refuse(framed, peer, f"protocol version mismatch: the trainer speaks {hello.get('v')!r}, this "
                                       f"server speaks {PROTOCOL_VERSION}; install the same pushcut version on both sides")
            return
        info = self.info
        if hello.get("env") != self.host.name:
            self._refuse(framed, peer, f"this server serves env {self.host.name!r}, the trainer asks for "
                                       f"{hello.get('env')!r}: serve the configured env or set env.type={self.host.name}")
            return
        wanted = hello.get("num_envs")
        if not isinstance(wanted, int) or not 0 < wanted <= info["num_envs"]:
            self._refuse(framed, peer, f"the trainer wants {wanted!r} envs, this server holds {info['num_envs']}: "
                                       f"start it with --envs {wanted} or set rollout.envs_per_worker={info['num_envs']}")
            return
        got = self.host.lock.acquire(timeout=self.options.busy_wait_s)
        self._drop_pending(peer)  # admitted or refused: no longer waiting
        if not got:
            self._refuse(framed, peer, "busy: another session still holds this server's envs (a request of it may "
                                       "hang in the simulator); stop that trainer or restart the server")
            return
        try:
            done = threading.Event()
            self._admitted.put((framed, peer, done))
            while not done.wait(0.5):
                if self._stop.is_set():
                    return
        finally:
            self.host.lock.release()


def build_host(config_path: str, overrides: list[str], envs: int, plugins: list[str]) -> EnvHost:
    """``envs`` instances of the env that ``config_path``'s ``env:`` section names (a run config
    works), resolved through this process's own registry plus ``plugins`` (import references)."""
    from pushcut.configio import apply_overrides, build_dataclass, read_yaml, to_dict
    from pushcut.errors import ConfigError
    from pushcut.pluginmanager import PluginManager, get_plugin_manager

    if envs < 1:
        raise ConfigError(f"--envs must be >= 1, got {envs}")
    data = apply_overrides(read_yaml(config_path), overrides)
    section = data.get("env")
    if isinstance(section, str):
        section = {"type": section}
    if not isinstance(section, dict) or not isinstance(section.get("type"), str):
        raise ConfigError(f"{config_path} needs an env: section with a type, e.g. env: {{type: tabletop}}")
    section = dict(section)
    name = section.pop("type")
    manager = PluginManager.from_refs(plugins) if plugins else get_plugin_manager()
    entry = manager.envs.get(name)
    options = build_dataclass(entry.config_class, section, "env")
    built = []
    try:
        for _ in range(envs):
            built.append(entry.factory(options))
    except Exception as exc:
        for env in built:
            env.close()
        if isinstance(exc, EnvError):
            raise
        raise EnvError(f"creating the env failed: {type(exc).__name__}: {exc}") from None
    return EnvHost(built, name, to_dict(options))


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server like Ctrl-C: envs closed on their own thread


def serve(config_path: str, overrides: list[str], options: ServeOptions, envs: int = 4,
          plugins: list[str] | None = None, token_file: str = "") -> int:
    """``pushcut env serve``: build the envs, listen, serve until interrupted."""
    import signal

    from pushcut.envpool.wire import load_token

    options.token = options.token or load_token(token_file)
    options.check()
    host = build_host(config_path, list(overrides), envs, list(plugins or []))
    try:
        server = EnvServer(host, options)
        bound_host, bound_port = server.address
        if not is_loopback(options.host) and server.tls is None:
            server.log("the token and observations cross the network in plain text: use --tls-cert/--tls-key "
                       "or an SSH tunnel on networks you do not trust")
        signal.signal(signal.SIGTERM, _interrupt)
        print(f"pushcut env serve: serving {host.name} ({len(host.envs)} envs) on {bound_host}:{bound_port}"
              f"{' with TLS' if server.tls else ''}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        server.shutdown()
    finally:
        host.close()
    return 0
