"""The env pool: ``num_workers`` persistent workers × ``envs_per_worker`` envs.

Envs are built once per worker and reused for the whole run (never a worker
per chunk). The pool addresses env instances by *slot* (0 … num_slots-1; slot
s lives on worker ``s // envs_per_worker``); :meth:`EnvPool.spread` hands free
slots out least-loaded worker first, so no worker idles while another has
queued episodes. Requests go to all involved workers at once and are answered
in parallel; a worker that crashes, closes,
goes silent or does not answer within ``timeout_s`` is handed to its
transport's recovery policy, and the slots it held are reported as
:class:`SlotFailure` — the caller counts those episodes as lost, nothing hangs.
"""

from __future__ import annotations

import itertools
import select
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pushcut.envcontract import ActionSpec, Env, Observation, StepResult, TaskSpec
from pushcut.envpool.transports.inline import InlineChannel
from pushcut.envpool.spec import EnvSpec
from pushcut.envpool.transport import Channel, FramedChannel, Transport, check_same, describe_all
from pushcut.envpool.host import Failure
from pushcut.errors import EnvError
from pushcut.envpool.wire import ChannelClosed, ChannelTimeout, ProtocolError

SILENT_BEATS = 5
"""A busy worker that sends no heartbeat for this many of its periods (+1 s) counts as frozen."""


@dataclass
class SlotFailure:
    """A slot whose request did not complete: the env raised, or its worker died / hung / went away."""

    slot: int
    reason: str


@dataclass
class Ticket:
    """A submitted, not yet collected request (see :meth:`EnvPool.submit`)."""

    sent: dict[int, int | None]
    """Worker → request id (None: not sent, the worker is down; -1: sending failed)."""
    grouped: dict[int, list]
    done: dict[int, Any]


def make_transport(name: str, startup_timeout_s: float = 300.0) -> Transport:
    """The transport registered as ``name`` with its default options (``process``, ``inline``, ``ray``;
    ``socket`` needs addresses: pass a SocketTransport, or build it with :func:`transport_from_config`)."""
    from pushcut.config import PluginChoice, RolloutConfig
    from pushcut.envpool import transport_from_config
    from pushcut.errors import PushcutError

    try:
        return transport_from_config(RolloutConfig(transport=PluginChoice(name), startup_timeout_s=startup_timeout_s))
    except PushcutError as exc:
        raise EnvError(f"env-pool transport {name!r}: {exc}") from None


class EnvPool:
    """Persistent env workers reached through a :class:`Transport`.

    ``env`` is an :class:`EnvSpec` (registered name + plain options), or a top-level
    factory with its ``config`` (``EnvPool(ReachEnv, ReachConfig())``), which travels as
    import references, never as a pickle.
    """

    def __init__(
        self,
        env: EnvSpec | Callable[[Any], Env],
        config: Any = None,
        num_workers: int = 2,
        envs_per_worker: int = 8,
        timeout_s: float = 120.0,
        transport: str | Transport = "process",
        startup_timeout_s: float = 300.0,
        silent_beats: int = SILENT_BEATS,
    ) -> None:
        self.spec = env if isinstance(env, EnvSpec) else EnvSpec.from_factory(env, config)
        self.transport = make_transport(transport, startup_timeout_s) if isinstance(transport, str) else transport
        self.num_workers = self.transport.num_workers(num_workers)
        self.envs_per_worker = envs_per_worker
        self.timeout_s = timeout_s
        self.silent_beats = silent_beats
        """A busy worker silent for this many of its heartbeat periods (+1 s) counts as frozen."""
        self.restarts = 0
        """Workers the transport restarted or reconnected."""
        self._lost: set[int] = set()
        self._down: dict[int, str] = {}
        self._req = itertools.count(1)
        self._channels: list[Channel] = self.transport.start_all(self.spec, self.num_workers, envs_per_worker)
        try:
            self._tasks, self._action_spec = describe_all(self._channels)
        except BaseException:  # never leave workers behind
            self.close()
            raise

    @property
    def num_slots(self) -> int:
        return self.num_workers * self.envs_per_worker

    def worker_of(self, slot: int) -> int:
        return slot // self.envs_per_worker

    def spread(self, free: Iterable[int], busy: Iterable[int], n: int, per_worker: int | None = None) -> list[int]:
        """Up to ``n`` of the ``free`` slots, each taken on the worker that then has the fewest busy
        slots (``busy`` plus those already picked; ties: the lower worker, then the lower slot), and
        never past ``per_worker`` busy slots on one worker.

        Episodes handed out this way keep every worker (process, env server, Ray actor) working
        while another has queued ones: 8 episodes on 2 workers × 8 slots run 4 + 4, not 8 + 0.
        Deterministic, so the same seed gives the same episodes on the same slots."""
        load = Counter(self.worker_of(s) for s in busy)
        by_worker: dict[int, list[int]] = {}
        for slot in sorted(set(free)):
            by_worker.setdefault(self.worker_of(slot), []).append(slot)
        picked: list[int] = []
        while len(picked) < n:
            options = [w for w, slots in by_worker.items() if slots and (per_worker is None or load[w] < per_worker)]
            if not options:
                break
            w = min(options, key=lambda w: (load[w], w))
            picked.append(by_worker[w].pop(0))
            load[w] += 1
        return picked

    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    @property
    def action_spec(self) -> ActionSpec:
        return self._action_spec

    def worker_pids(self) -> list[int | None]:
        """The process id each worker reported (on its own machine, for a server)."""
        return [ch.info.pid for ch in self._channels]

    def down(self) -> dict[int, str]:
        """Worker → why it is down (it could not be restarted or reconnected)."""
        return dict(self._down)

    # ----------------------------------------------------------------- requests

    def _send(self, per_worker: Mapping[int, tuple[str, list]]) -> dict[int, int | None]:
        sent: dict[int, int | None] = {}
        for w, (cmd, items) in per_worker.items():
            if w in self._down:
                sent[w] = None
                continue
            req_id = next(self._req)
            try:
                self._channels[w].request(req_id, cmd, items)
                sent[w] = req_id
            except EnvError:
                sent[w] = -1
        return sent

    def _wait(self, pending: set[int], timeout: float) -> list[int]:
        """The pending workers that sent something: those with a buffered frame, and those whose
        descriptor is readable (waiting up to ``timeout`` only when none has a buffered frame).
        Every worker is polled, so silence is never judged on a worker whose data sits unread."""
        ready = [w for w in pending if self._channels[w].ready()]
        by_fd = {self._channels[w].fileno(): w for w in pending if w not in ready}
        by_fd.pop(-1, None)  # inline channels: answered at once, nothing to select on
        if not by_fd:
            if not ready:
                time.sleep(max(0.0, min(timeout, 0.01)))
            return ready
        readable, _, _ = select.select(list(by_fd), [], [], 0.0 if ready else max(0.0, timeout))
        return ready + [by_fd[fd] for fd in readable]

    def _silence_limit(self, w: int) -> float | None:
        beat = self._channels[w].info.heartbeat_s
        return self.silent_beats * beat + 1.0 if beat > 0 else None

    def _gather(self, sent: Mapping[int, int | None]) -> dict[int, Any]:
        """Worker → reply items, or a SlotFailure for the whole worker."""
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout_s
        for w, req_id in sent.items():
            label = self._channels[w].label
            if req_id is None:
                replies[w] = SlotFailure(-1, f"{label} is down: {self._down[w]}")
            elif req_id == -1:
                why = self._channels[w].dead()
                replies[w] = self._fail(w, f"{label} had died ({why})" if why else f"{label} had closed the connection")
        pending = {w for w, r in sent.items() if r is not None and r != -1}
        while pending:
            now = time.monotonic()
            if now >= deadline:
                for w in sorted(pending):
                    replies[w] = self._fail(w, f"{self._channels[w].label} did not answer within {self.timeout_s:.0f} s")
                break
            wait = deadline - now
            if any(self._silence_limit(w) is not None for w in pending):
                wait = min(wait, 0.5)
            heard: set[int] = set()
            for w in self._wait(pending, wait):
                heard.add(w)
                ch = self._channels[w]
                try:
                    reply = ch.receive(timeout=max(1.0, min(deadline - time.monotonic(), self._silence_limit(w) or 1e9)))
                except ChannelTimeout as exc:
                    replies[w] = self._fail(w, f"{exc} (truncated frame)")
                except ProtocolError as exc:
                    replies[w] = self._fail(w, str(exc))
                except EnvError:  # closed
                    why = ch.dead()
                    replies[w] = self._fail(w, f"{ch.label} crashed ({why})" if why else f"{ch.label} closed the connection")
                else:
                    if reply is None or reply.req_id != sent[w]:  # a heartbeat, or a late answer
                        continue
                    replies[w] = reply.items
                pending.discard(w)
            # Silence is judged only now, after reading what each worker sent: while the caller was
            # away (serving the other lane of a pipeline, running the policy), a healthy worker's
            # reply and heartbeats wait in its socket, and the time since we last *read* it says
            # nothing about whether it is alive. A worker that sent nothing during this wait and
            # nothing since we last heard from it is the frozen one.
            # A worker inside one long call that holds the GIL (LIBERO compiling a scene: up to 6 s
            # measured on a loaded machine) cannot send its heartbeat either; where the transport
            # sees it computing, the silence counts from now.
            now = time.monotonic()
            for w in sorted(pending - heard):
                limit, ch = self._silence_limit(w), self._channels[w]
                if limit is not None and isinstance(ch, FramedChannel) and now - ch.last_seen > limit:
                    if ch.working():
                        ch.last_seen = now
                        continue
                    replies[w] = self._fail(w, f"{ch.label} stopped answering (no heartbeat for {limit:.0f} s)")
                    pending.discard(w)
        return replies

    def _fail(self, w: int, reason: str) -> SlotFailure:
        """Hand worker ``w`` to its transport's recovery; its slots' env state is lost either way."""
        base = w * self.envs_per_worker
        self._lost.update(range(base, base + self.envs_per_worker))
        old = self._channels[w]
        try:
            new = self.transport.recover(w, old, self.spec, self.envs_per_worker)
        except EnvError as exc:
            self._down[w] = f"{reason}; {exc}"
            return SlotFailure(-1, f"{reason}; could not bring it back: {exc}")
        try:
            check_same(old.info, new, f"{old.label} before the failure")
        except EnvError as exc:
            new.close()
            self._down[w] = str(exc)
            return SlotFailure(-1, f"{reason}; it came back with another env: {exc}")
        self._channels[w] = new
        self.restarts += 1
        return SlotFailure(-1, f"{reason}; {self.transport.recovery}")

    def pop_lost_slots(self) -> set[int]:
        """Slots whose env state was lost to a worker failure since the last call."""
        lost, self._lost = self._lost, set()
        return lost

    def submit(self, cmd: str, items: Mapping[int, tuple]) -> Ticket:
        """Start ``cmd`` ("step", "reset" or "render") on the given slots without waiting;
        :meth:`collect` returns the results. Lets the caller overlap policy inference
        with env stepping on other workers.

        Raises EnvError when a slot's worker is down (its transport could not bring it back
        after a failure, whose episodes were already reported as SlotFailures): the run
        stops with the fix instead of losing every later episode on those slots."""
        for slot in items:
            if not 0 <= slot < self.num_slots:
                raise EnvError(f"slot {slot} outside 0..{self.num_slots - 1}")
        down = sorted({self.worker_of(slot) for slot in items} & set(self._down))
        if down:
            w = down[0]
            raise EnvError(f"{self._channels[w].label} is down ({self._down[w]}); {self.transport.down_fix}")
        grouped: dict[int, list] = {}
        for slot, args in items.items():
            grouped.setdefault(self.worker_of(slot), []).append([slot % self.envs_per_worker, *args])
        return Ticket(self._send({w: (cmd, payload) for w, payload in grouped.items()}), grouped, {})

    def collect(self, ticket: Ticket) -> dict[int, Any]:
        """Slot → result (or SlotFailure) of a submitted request, in slot order.

        Workers answer in whatever order they finish; the caller frees and refills
        slots in the order of this dict, so it must not depend on that, or the same
        seed would give different episodes from run to run."""
        out: dict[int, Any] = dict(ticket.done)
        for w, reply in self._gather(ticket.sent).items():
            base = w * self.envs_per_worker
            if isinstance(reply, SlotFailure):
                for local, *_ in ticket.grouped[w]:
                    out[base + local] = SlotFailure(base + local, reply.reason)
                continue
            for local, value in reply:
                out[base + local] = SlotFailure(base + local, str(value)) if isinstance(value, Failure) else value
        return dict(sorted(out.items()))

    def _per_slot(self, cmd: str, items: Mapping[int, tuple]) -> dict[int, Any]:
        return self.collect(self.submit(cmd, items))

    @property
    def restores_state(self) -> bool:
        """True when every worker's envs restore recorded simulator states, so :meth:`reset` may
        start a slot at one (see :class:`pushcut.envcontract.RestoresState`)."""
        return all(ch.info.restores_state for ch in self._channels)

    def reset(self, assignments: Mapping[int, tuple]) -> dict[int, Observation | SlotFailure]:
        """Reset each slot to (task_id, init_state), or to (task_id, init_state, state): a recorded
        simulator state (a 1-D float array, sent as a typed array) where the episode starts instead."""
        return self._per_slot("reset", assignments)

    def render(self, slots: list[int]) -> dict[int, np.ndarray | SlotFailure]:
        """An RGB frame (H, W, 3) uint8 of each slot's current state."""
        return self._per_slot("render", {s: () for s in slots})

    def step(self, actions: Mapping[int, np.ndarray], record: bool | Mapping[int, bool] = False) -> dict[int, StepResult | SlotFailure]:
        """Execute one action chunk (chunk, action_dim) per slot."""
        return self.collect(self.submit_step(actions, record))

    def submit_step(self, actions: Mapping[int, np.ndarray], record: bool | Mapping[int, bool] = False) -> Ticket:
        """Like :meth:`step`, without waiting (see :meth:`submit`)."""
        rec = (lambda s: bool(record.get(s, False))) if isinstance(record, Mapping) else (lambda s: bool(record))
        return self.submit("step", {slot: (a, rec(slot)) for slot, a in actions.items()})

    def call(self, slot: int, fn: Callable[[Env], Any]) -> Any:
        """``fn(env)`` on the env at ``slot`` — inline transport only: no code crosses a process boundary."""
        channel = self._channels[self.worker_of(slot)]
        if not isinstance(channel, InlineChannel):
            raise EnvError(f"EnvPool.call runs a Python function on an env, which only the inline transport does "
                           f"(this pool uses {self.transport.name!r}): build the pool with transport='inline'")
        return channel.call(slot % self.envs_per_worker, fn)

    def close(self) -> None:
        for channel in self._channels:
            try:
                channel.close()
            except Exception:
                pass
        self._channels = []
        self.transport.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
