"""The wire format of every env process boundary: length-framed msgpack.

A frame is a 4-byte big-endian payload length, then one msgpack map. numpy
arrays travel as a msgpack extension (type :data:`NDARRAY_EXT`) holding
``[dtype, shape, bytes]``; only boolean and numeric dtypes are accepted, never
``object`` and never pickles, so decoding a frame cannot run code. Every
message is a map with a type ``"t"`` from :data:`MESSAGE_TYPES` (anything else
is refused) and, for requests and their replies, an ``"id"``.

A ``reset`` request's items are ``[env index, task id, init state]``, or with a fourth
field, a recorded simulator state (a 1-D float64 array, as a typed buffer): the env then
starts the episode there (``restore_state``, offered when the worker's ``welcome`` says
``restores_state``).

This module imports numpy, msgpack and the torch-free env contract only: it
runs inside a simulator's own virtualenv.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from pushcut.envcontract import ActionSpec, StepResult, TaskSpec
from pushcut.errors import EnvError

PROTOCOL_VERSION = 1
"""Bumped whenever a message changes meaning; both sides must speak the same one."""

NDARRAY_EXT = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_MB = 64.0
"""Frames above this many MiB are refused (``--max-frame-mb`` / ``rollout.transport.max_frame_mb``)."""

TOKEN_ENV = "PUSHCUT_ENV_TOKEN"
"""Environment variable holding the shared token (both sides); a token file is the alternative."""

MESSAGE_TYPES = frozenset({
    "hello", "welcome", "refuse",            # handshake
    "reset", "step", "render", "expert",     # requests ("expert": the env's scripted expert's next action)
    "ping",
    "result", "error", "pong", "beat",       # replies; "beat": still working on a request
    "close",
})
_ARRAY_KINDS = frozenset("biufc")
"""numpy dtype kinds allowed on the wire: bool, signed, unsigned, float, complex."""


class ProtocolError(EnvError):
    """The peer sent something that is not a valid frame or message."""


class ChannelClosed(EnvError):
    """The connection to the peer is gone (EOF, reset, killed process)."""


class ChannelTimeout(EnvError):
    """The peer did not send a (whole) frame in time."""


def load_token(token_file: str | Path = "") -> str:
    """The shared token: the contents of ``token_file`` when given, else ``$PUSHCUT_ENV_TOKEN``, else empty."""
    import os

    if token_file:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise EnvError(f"cannot read the token file {str(path)!r}: {exc.strerror or exc}; "
                           f"write the token there or set {TOKEN_ENV}") from None
        if not token:
            raise EnvError(f"the token file {str(path)!r} is empty; write the token there or set {TOKEN_ENV}")
        return token
    return os.environ.get(TOKEN_ENV, "").strip()


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (``[v6addr]:port`` for IPv6), or an EnvError naming the form."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnvError(f"env server address {address!r} must look like host:port, e.g. 127.0.0.1:7171")
    return host, int(port)


# --------------------------------------------------------------------------- codec


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"numpy arrays of dtype {obj.dtype} cannot cross the wire (numeric and bool only)")
        arr = np.ascontiguousarray(obj)
        meta = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(NDARRAY_EXT, meta + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"a {type(obj).__name__} cannot cross the wire (use numbers, strings, lists, dicts, arrays)")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
    unpacker.feed(data)
    try:
        dtype_str, shape = unpacker.unpack()
        dtype = np.dtype(dtype_str)
    except Exception as exc:
        raise ProtocolError(f"malformed array header: {exc}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.hasobject or dtype.fields is not None:
        raise ProtocolError(f"array dtype {dtype_str!r} is not allowed on the wire (numeric and bool only)")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError(f"malformed array shape {shape!r}")
    offset = unpacker.tell()
    body = memoryview(data)[offset:]
    if len(body) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise ProtocolError(f"array of shape {shape} and dtype {dtype_str} does not match its {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as msgpack bytes (no frame header)."""
    return msgpack.packb(message, default=_default, use_bin_type=True)


SMALL_LIMITS = {"max_str_len": 1 << 16, "max_bin_len": 1 << 16, "max_ext_len": 1 << 16, "max_array_len": 4096,
                "max_map_len": 256}
"""Container limits for a message from a peer that has not said hello: a small frame of nested empty
maps must not become a large heap."""


def decode(payload: bytes, small: bool = False) -> dict[str, Any]:
    """One message from msgpack bytes; a :class:`ProtocolError` unless it is a map
    with a known type ``"t"``. ``small``: within :data:`SMALL_LIMITS`."""
    try:
        message = msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False, strict_map_key=True,
                                  **(SMALL_LIMITS if small else {}))
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"unknown message type (a message is a map with a type \"t\", got a "
                            f"{type(message).__name__})")
    kind = message.get("t")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:  # str first: an unhashable "t" is no TypeError
        shown = repr(kind) if isinstance(kind, (str, int, float, bool, type(None))) else f"a {type(kind).__name__}"
        raise ProtocolError(f"unknown message type {shown[:80]}")
    return message


# --------------------------------------------------------------------------- framing


class FramedSocket:
    """A socket (TCP, TLS or a socketpair end) carrying length-framed messages.

    ``recv`` waits at most ``timeout`` seconds for a whole frame; a frame larger
    than ``max_frame_bytes`` is refused before its body is read.
    """

    def __init__(self, sock: socket.socket, max_frame_mb: float = DEFAULT_MAX_FRAME_MB, peer: str = "peer") -> None:
        self.sock = sock
        self.max_frame_bytes = int(max_frame_mb * 2**20)
        self.peer = peer
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        """True when a TLS layer holds decrypted bytes that ``select`` cannot see."""
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_encoded(encode(message))

    def send_encoded(self, payload: bytes) -> None:
        """Send a message already turned into bytes by :func:`encode`."""
        if len(payload) > self.max_frame_bytes:
            raise ProtocolError(f"message of {len(payload)} bytes exceeds the frame limit of "
                                f"{self.max_frame_bytes} bytes; raise the max frame size on both sides")
        try:
            self.sock.sendall(HEADER.pack(len(payload)) + payload)
        except (OSError, ValueError) as exc:
            self.closed = True
            raise ChannelClosed(f"connection to {self.peer} lost while sending ({exc})") from None

    def recv(self, timeout: float | None, *, deadline: float | None = None,
             max_bytes: int | None = None) -> dict[str, Any]:
        """The next message; :class:`ChannelTimeout`, :class:`ChannelClosed` or
        :class:`ProtocolError` otherwise.

        ``timeout`` bounds each wait for more bytes (a slow peer sending a large frame is
        fine); ``deadline`` (a ``time.monotonic()`` instant) bounds the whole frame, so a peer
        dripping one byte at a time cannot hold the connection. ``max_bytes`` lowers the
        frame limit for this one message (a peer that has not said hello gets a small one),
        checked at the header, before the body is read."""
        limit = self.max_frame_bytes if max_bytes is None else min(max_bytes, self.max_frame_bytes)
        header = self._read_exact(HEADER.size, timeout, deadline)
        (size,) = HEADER.unpack(header)
        if size > limit:
            raise ProtocolError(f"{self.peer} sent a frame of {size} bytes, over the limit of "
                                f"{limit} bytes (raise the max frame size if that is intended)")
        return decode(self._read_exact(size, timeout, deadline), small=max_bytes is not None)

    def _read_exact(self, n: int, timeout: float | None, deadline: float | None = None) -> bytes:
        chunks, got = [], 0
        try:
            self.sock.settimeout(timeout)
            while got < n:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout
                    self.sock.settimeout(left if timeout is None else min(left, timeout))
                chunk = self.sock.recv(min(n - got, 1 << 20))
                if not chunk:
                    self.closed = True
                    if got:
                        raise ProtocolError(f"{self.peer} closed the connection inside a frame (truncated frame)")
                    raise ChannelClosed(f"{self.peer} closed the connection")
                chunks.append(chunk)
                got += len(chunk)
        except (socket.timeout, ssl.SSLWantReadError):
            what = "a whole frame" if got else "a frame"
            if got or n != HEADER.size:  # the stream is out of step: this connection is done
                self.closed = True
            if deadline is not None and (timeout is None or time.monotonic() >= deadline - 1e-3):
                self.closed = True
                raise ChannelTimeout(f"{self.peer} did not send {what} before its deadline") from None
            raise ChannelTimeout(f"{self.peer} did not send {what} within {timeout:.0f} s") from None
        except ssl.SSLError as exc:
            self.closed = True
            raise ProtocolError(f"TLS error from {self.peer}: {exc.reason or exc}") from None
        except OSError as exc:
            self.closed = True
            raise ChannelClosed(f"connection to {self.peer} lost ({exc})") from None
        return b"".join(chunks)

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- contract data


def tasks_to_wire(tasks: list[TaskSpec]) -> list[dict[str, Any]]:
    return [asdict(t) for t in tasks]


def tasks_from_wire(data: Any) -> list[TaskSpec]:
    try:
        return [TaskSpec(**{**t, "train_init_states": tuple(t["train_init_states"]),
                            "eval_init_states": tuple(t["eval_init_states"]), "stages": tuple(t.get("stages", ()))})
                for t in data]
    except (TypeError, KeyError, ValueError) as exc:
        raise ProtocolError(f"malformed task list: {exc}") from None


def action_spec_to_wire(spec: ActionSpec) -> dict[str, Any]:
    return asdict(spec)


def action_spec_from_wire(data: Any) -> ActionSpec:
    try:
        return ActionSpec(int(data["action_dim"]), tuple(map(float, data["low"])), tuple(map(float, data["high"])))
    except (TypeError, KeyError, ValueError) as exc:
        raise ProtocolError(f"malformed action spec: {exc}") from None


def step_to_wire(result: StepResult) -> dict[str, Any]:
    return {"obs": result.observation, "steps": result.steps, "success": bool(result.success),
            "done": bool(result.done), "info": result.info, "frames": result.frames}


def step_from_wire(data: Any) -> StepResult:
    try:
        return StepResult(data["obs"], int(data["steps"]), bool(data["success"]), bool(data["done"]),
                          dict(data["info"]), list(data["frames"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise ProtocolError(f"malformed step result: {exc}") from None
