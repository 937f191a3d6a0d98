"""The ``socket`` transport: envs served by running ``pushcut env serve`` processes.

One worker per address (``rollout.transport.addresses``). Connecting sends a versioned
hello with the token; the server's welcome must name the configured env with
the same options, enough envs, and (checked by the pool) the same tasks and
action spec as every other server. A server that fails (closes, stops
answering, sends garbage) is reconnected a bounded number of times; one that
cannot be reached again is reported down, never waited on forever.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence

from pushcut.envpool.spec import EnvSpec
from pushcut.envpool.transport import Channel, FramedChannel, Transport
from pushcut.errors import EnvError
from pushcut.envpool.wire import DEFAULT_MAX_FRAME_MB, ChannelClosed, ChannelTimeout, FramedSocket, parse_address

BUSY = "busy:"
"""Prefix of a server's refusal that is worth retrying (its envs are still held by an old session)."""


class SocketChannel(FramedChannel):
    """A TCP (optionally TLS) connection to one env server."""


class SocketTransport(Transport):
    """Connects to ``addresses``; reconnects at most ``connect_attempts`` times after a failure."""

    name = "socket"
    recovery = "reconnected"
    down_fix = ("restart the env servers (pushcut env serve ...) or fix rollout.transport.addresses, then resume the run "
                "(pushcut train RUN_DIR)")

    def __init__(self, addresses: Sequence[str], token: str = "", tls_ca: str = "", connect_timeout_s: float = 30.0,
                 connect_attempts: int = 3, max_frame_mb: float = DEFAULT_MAX_FRAME_MB) -> None:
        if not addresses:
            raise EnvError("the socket transport needs at least one server address: set rollout.transport.addresses=[host:port]")
        self.addresses = [parse_address(a) for a in addresses]
        self.token = token
        self.connect_timeout_s = connect_timeout_s
        self.connect_attempts = max(1, connect_attempts)
        self.max_frame_mb = max_frame_mb
        self.tls: ssl.SSLContext | None = None
        if tls_ca:
            try:
                self.tls = ssl.create_default_context(cafile=tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise EnvError(f"cannot load the TLS certificate {tls_ca!r}: {exc}; set rollout.transport.tls_ca to the "
                               "server's certificate (or its CA) in PEM form") from None

    def num_workers(self, requested: int) -> int:
        return len(self.addresses)

    def label(self, index: int) -> str:
        host, port = self.addresses[index]
        return f"env server {host}:{port}"

    def start(self, index: int, spec: EnvSpec, num_envs: int) -> Channel:
        host, port = self.addresses[index]
        label = self.label(index)
        last = ""
        for attempt in range(self.connect_attempts):
            if attempt:
                time.sleep(min(2.0, 0.25 * 2 ** attempt))
            try:
                sock = socket.create_connection((host, port), timeout=self.connect_timeout_s)
            except OSError as exc:
                last = str(exc.strerror or exc)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_hostname=host)
                except (ssl.SSLError, OSError) as exc:
                    sock.close()
                    raise EnvError(f"TLS handshake with {label} failed: {getattr(exc, 'reason', None) or exc}; "
                                   "check rollout.transport.tls_ca and that the server runs with --tls-cert") from None
            channel = SocketChannel(FramedSocket(sock, self.max_frame_mb, peer=label), label)
            try:
                channel.hello({"token": self.token, "env": spec.name, "options": spec.options, "num_envs": num_envs},
                              spec, num_envs, self.connect_timeout_s, check_options=True)
            except (ChannelClosed, ChannelTimeout) as exc:
                channel.framed.close()
                last = str(exc)
                continue
            except EnvError as exc:
                channel.framed.close()
                if BUSY in str(exc):
                    last = str(exc)
                    continue
                raise
            return channel
        raise EnvError(f"cannot reach {label} after {self.connect_attempts} attempt(s) ({last}): start it with "
                       f"`pushcut env serve ENV_CONFIG --port {port}` or fix rollout.transport.addresses")

    def recover(self, index: int, channel: Channel, spec: EnvSpec, num_envs: int) -> Channel:
        if isinstance(channel, FramedChannel):
            channel.framed.close()  # no goodbye: the server may be the thing that hangs
        return self.start(index, spec, num_envs)

