"""The serving side of an env worker: envs behind the wire protocol.

:class:`EnvHost` runs requests on the envs it holds; :func:`serve_session`
answers one peer's requests over a :class:`~pushcut.envpool.wire.FramedSocket`,
sending a heartbeat while a request runs. Both the ``process`` transport's
worker (:func:`main`, possibly on another
interpreter) and ``pushcut env serve`` use them. No torch import here.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from pushcut.envcontract import Env, can_restore_state
from pushcut.envpool.spec import EnvSpec, build_envs
from pushcut.errors import EnvError
from pushcut.envpool.wire import (
    PROTOCOL_VERSION,
    ChannelClosed,
    ChannelTimeout,
    FramedSocket,
    ProtocolError,
    action_spec_to_wire,
    encode,
    step_to_wire,
    tasks_to_wire,
)

HEARTBEAT_S = 1.0
"""While a request runs, the worker sends a ``beat`` this often, so a peer tells a slow
simulator from a dead or frozen one."""

REQUESTS = ("reset", "step", "render", "expert")


class Failure(str):
    """A per-env failure reason (the env raised); the worker keeps serving the others."""


class EnvHost:
    """The envs of one worker, addressed by local index 0 … len(envs)-1."""

    def __init__(self, envs: Sequence[Env], name: str = "", options: Any = None) -> None:
        self.envs = list(envs)
        self.name = name
        self.options = options
        self.lock = threading.Lock()
        """Held by the session that owns the envs (a server admits one trainer at a time)."""

    def describe(self) -> dict[str, Any]:
        """What a ``welcome`` tells the peer."""
        env = self.envs[0]
        return {"env": self.name, "num_envs": len(self.envs), "tasks": tasks_to_wire(env.tasks()),
                "action_spec": action_spec_to_wire(env.action_spec), "pid": os.getpid(),
                "heartbeat_s": HEARTBEAT_S, "options": self.options,
                "restores_state": all(can_restore_state(e) for e in self.envs)}

    def check_items(self, cmd: str, items: Any) -> None:
        """A :class:`ProtocolError` unless ``items`` is a list of ``[env index, ...]`` lists naming
        each env at most once: a request can never make the server do more than one call per env."""
        if not isinstance(items, list) or not all(isinstance(i, list) and i for i in items):
            raise ProtocolError(f"malformed {cmd} request: items must be a list of [env index, ...] lists")
        if len(items) > len(self.envs):
            raise ProtocolError(f"{cmd} request names {len(items)} envs, this worker holds {len(self.envs)}")
        seen: set[int] = set()
        for local, *_ in items:
            if not (isinstance(local, int) and not isinstance(local, bool) and 0 <= local < len(self.envs)):
                shown = repr(local) if isinstance(local, (int, float, str)) else f"a {type(local).__name__}"
                raise ProtocolError(f"env index {shown[:40]} outside 0..{len(self.envs) - 1}")
            if local in seen:
                raise ProtocolError(f"{cmd} request names env {local} twice")
            seen.add(local)

    def run(self, cmd: str, items: Sequence[Sequence[Any]]) -> list[tuple[int, Any]]:
        """``[(local, result or Failure)]`` for ``cmd`` over ``items`` (each ``[local, *args]``);
        a :class:`ProtocolError` for items :meth:`check_items` refuses."""
        self.check_items(cmd, items)
        out: list[tuple[int, Any]] = []
        for local, *args in items:
            env = self.envs[local]
            try:
                if cmd == "step":
                    actions, record = args
                    out.append((local, env.step(np.asarray(actions), record=bool(record))))
                elif cmd == "reset":  # [local, task, init state] or [..., recorded simulator state]
                    task_id, init_state, *state = args
                    if state:
                        out.append((local, _restore(env, str(task_id), state[0])))
                    else:
                        out.append((local, env.reset(str(task_id), int(init_state))))
                elif cmd == "expert":
                    out.append((local, np.asarray(env.expert_action(), dtype=np.float64)))
                else:
                    out.append((local, env.render()))
            except Exception as exc:  # reported per env
                out.append((local, Failure(f"env.{cmd} raised {type(exc).__name__}: {exc}")))
        return out

    def close(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:
                pass


def _restore(env: Env, task_id: str, state: Any) -> Any:
    """``env.restore_state`` for a reset request that carries a recorded simulator state."""
    if not can_restore_state(env):
        raise EnvError(f"{type(env).__name__} cannot restore a recorded simulator state (it has no "
                       "get_state/restore_state, see pushcut.envcontract.RestoresState)")
    if not isinstance(state, np.ndarray) or state.ndim != 1 or state.dtype.kind not in "iuf":
        raise EnvError(f"a reset's simulator state must be a 1-D numeric array, got {type(state).__name__}")
    return env.restore_state(task_id, state)


def result_to_wire(cmd: str, value: Any) -> Any:
    if isinstance(value, Failure):
        return {"failure": str(value)}
    return step_to_wire(value) if cmd == "step" else value


def encode_reply(req_id: int, cmd: str, results: list[tuple[int, Any]]) -> bytes:
    """The encoded ``result`` message; a result that cannot be encoded (an info value of an odd
    type) becomes that env's failure instead of the whole reply's."""
    items = [[local, result_to_wire(cmd, value)] for local, value in results]
    try:
        return encode({"t": "result", "id": req_id, "items": items})
    except TypeError:
        for item in items:
            try:
                encode({"v": item[1]})
            except TypeError as exc:
                item[1] = {"failure": f"env.{cmd} returned something that cannot cross the wire: {exc}"}
    return encode({"t": "result", "id": req_id, "items": items})


class _Beat:
    """Sends ``beat`` messages on ``framed`` every ``period`` seconds while active."""

    def __init__(self, framed: FramedSocket, send_lock: threading.Lock, period: float) -> None:
        self.framed, self.send_lock, self.period = framed, send_lock, period
        self.req_id = 0
        self.busy = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="pushcut-heartbeat")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.period):
            if not self.busy.is_set():
                continue
            with self.send_lock:
                if self.busy.is_set():
                    try:
                        self.framed.send({"t": "beat", "id": self.req_id})
                    except EnvError:
                        return


def serve_session(framed: FramedSocket, host: EnvHost, heartbeat_s: float = HEARTBEAT_S,
                  idle_timeout_s: float = 0.0) -> str:
    """Answer requests on ``framed`` until the peer closes or says ``close``; returns why it ended.
    A malformed message ends the session (the peer is told, when it can still be told), and so
    does a peer silent for ``idle_timeout_s`` seconds between requests (0 = wait forever)."""
    send_lock = threading.Lock()
    beat = _Beat(framed, send_lock, heartbeat_s)
    try:
        while True:
            try:
                msg = framed.recv(idle_timeout_s or None)
            except ChannelClosed:
                return "peer closed the connection"
            except ChannelTimeout:
                return f"the trainer sent nothing for {idle_timeout_s:g} s (idle session timeout)"
            t, req_id = msg["t"], msg.get("id", 0)
            if t == "close":
                return "peer said close"
            if t == "ping":
                with send_lock:
                    framed.send({"t": "pong", "id": req_id})
                continue
            if t not in REQUESTS:
                raise ProtocolError(f"unexpected message type {t!r} after the handshake")
            items = msg.get("items")
            beat.req_id = req_id
            beat.busy.set()
            try:
                reply = encode_reply(req_id, t, host.run(t, items))
            finally:
                beat.busy.clear()
            with send_lock:
                framed.send_encoded(reply)
    except ProtocolError as exc:
        try:
            with send_lock:
                framed.send({"t": "error", "id": 0, "reason": str(exc)})
        except EnvError:
            pass
        return f"protocol error: {exc}"
    except ChannelClosed as exc:
        return str(exc)
    finally:
        beat.stop.set()
        beat.busy.clear()


# --------------------------------------------------------------------------- process worker


def main(argv: Sequence[str] | None = None) -> int:
    """A ``process`` transport worker on the inherited socket whose descriptor is ``argv[0]``."""
    import socket

    argv = list(sys.argv[1:] if argv is None else argv)
    framed = FramedSocket(socket.socket(fileno=int(argv[0])), peer="the trainer")
    try:
        hello = framed.recv(None)
    except EnvError:
        return 1
    if hello.get("t") != "hello" or hello.get("v") != PROTOCOL_VERSION:
        framed.send({"t": "refuse", "reason": f"protocol version mismatch: the trainer speaks {hello.get('v')!r}, "
                     f"this worker's pushcut speaks {PROTOCOL_VERSION}; install the same pushcut version in both "
                     f"environments"})
        return 2
    sys.path[:0] = [p for p in hello.get("path", []) if p not in sys.path]
    spec = EnvSpec.from_wire(hello["spec"])
    try:
        host = EnvHost(build_envs(spec, int(hello["num_envs"])), spec.name, spec.options)
    except EnvError as exc:
        framed.send({"t": "refuse", "reason": str(exc)})
        return 2
    try:
        framed.send({"t": "welcome", "v": PROTOCOL_VERSION, **host.describe()})
        serve_session(framed, host)
    except (EnvError, KeyboardInterrupt):
        pass
    finally:
        host.close()
        framed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
