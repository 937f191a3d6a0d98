"""A pool of persistent env worker processes.

Each worker process holds ``envs_per_worker`` instances of one registered Env,
built once and reused for the whole run (never a process per chunk). The pool
addresses instances by *slot* (0 … num_slots-1). Requests go to all involved
workers at once and are answered in parallel; a worker that crashes or does not
answer within ``timeout_s`` is killed and restarted, and the slots it held are
reported as :class:`SlotFailure` — the caller drops those episodes, nothing
deadlocks.

The transport is pluggable: ``process`` (multiprocessing, spawn) or ``inline``
(the envs live in the calling process — for debugging and tiny tests).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from pushcut.contracts import ActionSpec, Env, Observation, StepResult, TaskSpec
from pushcut.errors import EnvError


@dataclass
class SlotFailure:
    """A slot whose request did not complete: the env raised, or its worker died / hung."""

    slot: int
    reason: str


@dataclass
class Ticket:
    """A submitted, not yet collected request (see :meth:`EnvPool.submit`)."""

    sent: dict[int, int]
    grouped: dict[int, list]
    done: dict[int, Any]


# --------------------------------------------------------------------------- worker side


def _run_command(envs: list[Env], cmd: str, payload: Any) -> Any:
    if cmd == "step":
        out = []
        for local, actions, record in payload:
            try:
                out.append((local, envs[local].step(actions, record=record)))
            except Exception as exc:  # reported per env; the worker keeps serving the others
                out.append((local, SlotFailure(-1, f"env.step raised {type(exc).__name__}: {exc}")))
        return out
    if cmd == "reset":
        out = []
        for local, task_id, init_state in payload:
            try:
                out.append((local, envs[local].reset(task_id, init_state)))
            except Exception as exc:
                out.append((local, SlotFailure(-1, f"env.reset raised {type(exc).__name__}: {exc}")))
        return out
    if cmd == "render":
        return [(local, envs[local].render()) for local in payload]
    if cmd == "describe":
        return envs[0].tasks(), envs[0].action_spec
    if cmd == "call":  # tests and benchmarks: run an arbitrary picklable function on one env
        local, fn = payload
        return fn(envs[local])
    raise ValueError(f"unknown env-pool command {cmd!r}")


def _worker_main(conn: Connection, factory: Callable[[Any], Env], config: Any, n_envs: int, threads: int) -> None:
    """Worker process: build the envs, then serve (req_id, cmd, payload) messages."""
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency, but envs must not need it
        pass
    try:
        envs = [factory(config) for _ in range(n_envs)]
    except Exception as exc:
        conn.send((0, False, f"creating the env failed: {type(exc).__name__}: {exc}"))
        return
    conn.send((0, True, None))
    try:
        while True:
            req_id, cmd, payload = conn.recv()
            if cmd == "close":
                break
            try:
                conn.send((req_id, True, _run_command(envs, cmd, payload)))
            except Exception as exc:
                conn.send((req_id, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for env in envs:
            try:
                env.close()
            except Exception:
                pass


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""One env worker = one core's worth of work: no BLAS/OpenMP thread pools inside it."""


class _Worker:
    """Main-process handle of one worker process."""

    def __init__(self, ctx: Any, factory: Callable[[Any], Env], config: Any, n_envs: int, startup_timeout: float) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, factory, config, n_envs, 1), daemon=True)
        # thread caps must be in the environment before the child imports numpy/torch
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
        try:
            self.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        if not self.conn.poll(startup_timeout):
            self.kill()
            raise EnvError(f"an env worker did not start within {startup_timeout:.0f} s")
        try:
            _, ok, err = self.conn.recv()
        except EOFError:
            self.kill()
            raise EnvError(f"an env worker died while creating its envs (exit code {self.process.exitcode})") from None
        if not ok:
            self.kill()
            raise EnvError(err)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class _Inline:
    """The inline transport: envs in this process."""

    def __init__(self, factory: Callable[[Any], Env], config: Any, n_envs: int) -> None:
        try:
            self.envs = [factory(config) for _ in range(n_envs)]
        except Exception as exc:
            raise EnvError(f"creating the env failed: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- pool


class EnvPool:
    """``num_workers`` persistent processes × ``envs_per_worker`` env instances."""

    def __init__(
        self,
        factory: Callable[[Any], Env],
        config: Any,
        num_workers: int = 2,
        envs_per_worker: int = 8,
        timeout_s: float = 120.0,
        transport: str = "process",
        startup_timeout_s: float = 300.0,
    ) -> None:
        if transport not in ("process", "inline"):
            raise EnvError(f"unknown env-pool transport {transport!r}; use 'process' or 'inline'")
        self.factory, self.config = factory, config
        self.transport = transport
        self.num_workers = max(1, num_workers)
        self.envs_per_worker = envs_per_worker
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        self._lost: set[int] = set()
        self._req = itertools.count(1)
        self._ctx = mp.get_context("spawn")
        if transport == "inline":
            self._inline: _Inline | None = _Inline(factory, config, self.num_workers * envs_per_worker)
            self._workers: list[_Worker] = []
        else:
            self._inline = None
            self._workers = []
        try:
            for _ in range(self.num_workers if transport == "process" else 0):
                self._workers.append(self._spawn())
            self._tasks, self._action_spec = self._describe()
        except BaseException:  # never leave worker processes behind
            self.close()
            raise

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.factory, self.config, self.envs_per_worker, self.startup_timeout_s)

    @property
    def num_slots(self) -> int:
        return self.num_workers * self.envs_per_worker

    def worker_of(self, slot: int) -> int:
        return slot // self.envs_per_worker

    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    @property
    def action_spec(self) -> ActionSpec:
        return self._action_spec

    def _describe(self) -> tuple[list[TaskSpec], ActionSpec]:
        if self._inline is not None:
            return _run_command(self._inline.envs, "describe", None)
        return self._request({0: ("describe", None)}, raise_on_failure=True)[0]

    # ----------------------------------------------------------------- requests

    def _send(self, per_worker: Mapping[int, tuple[str, Any]]) -> dict[int, int]:
        """Send one command per worker; returns worker → request id (-1: could not send)."""
        sent: dict[int, int] = {}
        for w, (cmd, payload) in per_worker.items():
            req_id = next(self._req)
            try:
                self._workers[w].conn.send((req_id, cmd, payload))
                sent[w] = req_id
            except (BrokenPipeError, OSError):
                sent[w] = -1
        return sent

    def _gather(self, sent: Mapping[int, int]) -> dict[int, Any]:
        """Wait for the replies to ``sent``; restart workers that die or time out.
        Returns worker → reply payload or SlotFailure."""
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout_s
        pending = {w for w, r in sent.items() if r != -1}
        for w in set(sent) - pending:
            replies[w] = self._restart(w, f"worker {w} had died (exit code {self._workers[w].process.exitcode})")
        while pending:
            by_conn = {self._workers[w].conn: w for w in pending}
            ready = wait(list(by_conn), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for w in pending:
                    replies[w] = self._restart(w, f"worker {w} did not answer within {self.timeout_s:.0f} s")
                break
            for conn in ready:
                w = by_conn[conn]
                try:
                    req_id, ok, payload = conn.recv()
                except (EOFError, OSError):
                    code = self._workers[w].process.exitcode
                    replies[w] = self._restart(w, f"worker {w} crashed (exit code {code})")
                    pending.discard(w)
                    continue
                if req_id != sent[w]:  # a late answer to a request given up on
                    continue
                pending.discard(w)
                replies[w] = payload if ok else SlotFailure(-1, f"worker {w}: {payload}")
        return replies

    def _request(self, per_worker: Mapping[int, tuple[str, Any]], raise_on_failure: bool = False) -> dict[int, Any]:
        replies = self._gather(self._send(per_worker))
        if raise_on_failure:
            for reply in replies.values():
                if isinstance(reply, SlotFailure):
                    raise EnvError(reply.reason)
        return replies

    def _restart(self, w: int, reason: str) -> SlotFailure:
        self._workers[w].kill()
        self._workers[w] = self._spawn()
        self.restarts += 1
        base = w * self.envs_per_worker
        self._lost.update(range(base, base + self.envs_per_worker))
        return SlotFailure(-1, f"{reason}; restarted it")

    def pop_lost_slots(self) -> set[int]:
        """Slots whose env state was lost to a worker restart since the last call."""
        lost, self._lost = self._lost, set()
        return lost

    def submit(self, cmd: str, items: Mapping[int, tuple]) -> Ticket:
        """Start ``cmd`` ("step" or "reset") on the given slots without waiting;
        :meth:`collect` returns the results. Lets the caller overlap policy
        inference with env stepping on other workers."""
        for slot in items:
            if not 0 <= slot < self.num_slots:
                raise EnvError(f"slot {slot} outside 0..{self.num_slots - 1}")
        if self._inline is not None:
            payload = [(slot, *args) for slot, args in items.items()]
            done = {slot: value for slot, value in _run_command(self._inline.envs, cmd, payload)}
            return Ticket({}, {}, done)
        grouped: dict[int, list] = {}
        for slot, args in items.items():
            grouped.setdefault(self.worker_of(slot), []).append((slot % self.envs_per_worker, *args))
        sent = self._send({w: (cmd, payload) for w, payload in grouped.items()})
        return Ticket(sent, grouped, {})

    def collect(self, ticket: Ticket) -> dict[int, Any]:
        """Slot → result (or SlotFailure) of a submitted request, in slot order.

        Workers answer in whatever order they finish; the caller frees and refills
        slots in the order of this dict, so it must not depend on that, or the same
        seed would give different episodes from run to run."""
        out: dict[int, Any] = {slot: SlotFailure(slot, v.reason) if isinstance(v, SlotFailure) else v
                               for slot, v in ticket.done.items()}
        for w, reply in self._gather(ticket.sent).items():
            base = w * self.envs_per_worker
            if isinstance(reply, SlotFailure):
                for local, *_ in ticket.grouped[w]:
                    out[base + local] = SlotFailure(base + local, reply.reason)
                continue
            for local, value in reply:
                out[base + local] = SlotFailure(base + local, value.reason) if isinstance(value, SlotFailure) else value
        return dict(sorted(out.items()))

    def _per_slot(self, cmd: str, items: Mapping[int, tuple]) -> dict[int, Any]:
        return self.collect(self.submit(cmd, items))

    def reset(self, assignments: Mapping[int, tuple[str, int]]) -> dict[int, Observation | SlotFailure]:
        """Reset each slot to (task_id, init_state)."""
        return self._per_slot("reset", assignments)

    def step(self, actions: Mapping[int, np.ndarray], record: bool | Mapping[int, bool] = False) -> dict[int, StepResult | SlotFailure]:
        """Execute one action chunk (chunk, action_dim) per slot."""
        return self.collect(self.submit_step(actions, record))

    def submit_step(self, actions: Mapping[int, np.ndarray], record: bool | Mapping[int, bool] = False) -> Ticket:
        """Like :meth:`step`, without waiting (see :meth:`submit`)."""
        rec = (lambda s: bool(record.get(s, False))) if isinstance(record, Mapping) else (lambda s: bool(record))
        return self.submit("step", {slot: (a, rec(slot)) for slot, a in actions.items()})

    def call(self, slot: int, fn: Callable[[Env], Any]) -> Any:
        """Run ``fn(env)`` on the env at ``slot`` (a picklable function) and return its result."""
        if self._inline is not None:
            return fn(self._inline.envs[slot])
        w = self.worker_of(slot)
        reply = self._request({w: ("call", (slot % self.envs_per_worker, fn))})[w]
        if isinstance(reply, SlotFailure):
            raise EnvError(reply.reason)
        return reply

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send((0, "close", None))
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            worker.kill()
        self._workers = []
        if self._inline is not None:
            for env in self._inline.envs:
                env.close()
            self._inline = None

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
