"""The pipelined rollout schedule (``rollout.pipeline=true``) loses nothing.

Two lanes on disjoint workers: the policy serves one lane while the other's envs step, so the
trainer is away from each lane's workers for as long as the other lane takes. These tests run
the pipeline where that takes longer than the heartbeat window and check that every episode
completes, with the same lengths, final states and rewards as the plain schedule, for
deterministic actions, on the toy env, the tabletop and (when its extra and assets are here)
LIBERO.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pushcut.contracts import ActionSample, ObsBatch
from pushcut.envpool import EnvPool
from pushcut.plugins.rewards.env_success import EnvSuccess
from pushcut.rollout import RolloutCollector, StartState
from pushcut.toys import ReachConfig, ReachEnv

REPO = Path(__file__).resolve().parents[2]


def _sample(actions: np.ndarray) -> ActionSample:
    n = len(actions)
    return ActionSample(np.asarray(actions, np.float32), {"x": torch.zeros(n, 1)}, torch.zeros(n, 1),
                        torch.ones(n, 1, dtype=torch.bool))


def _both_schedules(pool: EnvPool, act, starts, group_size: int, max_steps: int = 0):
    plain, plain_stats = RolloutCollector(pool, act, EnvSuccess(), max_steps).collect(starts, group_size, 0.0)
    piped, piped_stats = RolloutCollector(pool, act, EnvSuccess(), max_steps, pipeline=True).collect(
        starts, group_size, 0.0)
    return plain, piped, plain_stats, piped_stats


def _assert_same_episodes(plain, piped) -> None:
    assert all(ep.ok for ep in plain), [ep.failure for ep in plain if not ep.ok]
    assert all(ep.ok for ep in piped), [ep.failure for ep in piped if not ep.ok]
    assert [ep.reward for ep in piped] == [ep.reward for ep in plain]
    assert [ep.length for ep in piped] == [ep.length for ep in plain]
    for a, b in zip(plain, piped):
        np.testing.assert_array_equal(a.observations[-1]["state"], b.observations[-1]["state"])


def test_a_lane_slower_than_the_heartbeat_window_loses_nothing():
    """Each step request takes 4.5 s, the silence window is 3 s (2 beats + 1 s): while the trainer
    waits on one lane, the other lane's heartbeats pile up unread. Before the fix every such
    worker was declared frozen and restarted, and its episodes lost."""

    def toward_target(obs: ObsBatch, temperature: float) -> ActionSample:
        pos, target = obs.states[:, 0], obs.states[:, 1]
        step = np.clip((target - pos) / 0.25, -1, 1)
        return _sample(np.repeat(step[:, None, None], 3, axis=1))

    with EnvPool(ReachEnv, ReachConfig(step_delay_s=1.5, max_steps=3), num_workers=2, envs_per_worker=1,
                 timeout_s=60, silent_beats=2) as pool:
        starts = [StartState("reach_0", 0), StartState("reach_1", 4)]
        plain, piped, _, stats = _both_schedules(pool, toward_target, starts, 1)
        _assert_same_episodes(plain, piped)
        assert stats.failed == 0 and pool.restarts == 0
        assert {pool.worker_of(ep.slot) for ep in piped} == {0, 1}  # one lane each


# ----------------------------------------------------------------- the tabletop


class TwinExpert:
    """A deterministic act for the tabletop that reaches success: each observation is matched (by
    task and exact proprio state) to a twin env in this process that is in the same state, and the
    twin's scripted expert plans the chunk (stepping the twin). Episodes of one group are identical,
    so a plan is computed once per state and replayed to every episode that reaches it, in
    whatever order the schedule brings them."""

    def __init__(self, config, starts, chunk: int) -> None:
        from pushcut.plugins.envs.tabletop import TabletopEnv

        self.chunk = chunk
        self.twins: dict[tuple[str, bytes], object] = {}
        self.plans: dict[tuple[str, bytes], np.ndarray] = {}
        for s in starts:
            twin = TabletopEnv(config)
            obs = twin.reset(s.task_id, s.init_state)
            self.twins[(s.task_id, obs["state"].tobytes())] = twin

    def __call__(self, obs: ObsBatch, temperature: float) -> ActionSample:
        rows = []
        for i, task in enumerate(obs.task_ids):
            key = (task, np.asarray(obs.states[i], np.float32).tobytes())
            if key not in self.plans:
                twin = self.twins.pop(key)
                plan = np.zeros((self.chunk, 4), np.float32)
                state = None
                for j in range(self.chunk):
                    plan[j] = twin.expert_action()
                    result = twin.step(plan[j][None])
                    state = result.observation["state"]
                    if result.success or result.done:
                        break
                self.plans[key] = plan
                self.twins[(task, state.tobytes())] = twin
            rows.append(self.plans[key])
        return _sample(np.stack(rows))

    def close(self) -> None:
        for twin in self.twins.values():
            twin.close()


def test_the_pipeline_equals_the_plain_schedule_on_the_tabletop():
    """Scripted-expert episodes through the pool, with a step budget that lets the short tasks
    succeed and cuts the long ones: mixed rewards, equal in both schedules, none lost."""
    from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv

    config = TabletopConfig()
    starts = [StartState("press_button", 0), StartState("lift_blue", 1), StartState("close_drawer", 2),
              StartState("open_drawer", 3), StartState("press_button", 5)]
    with EnvPool(TabletopEnv, config, num_workers=2, envs_per_worker=2, timeout_s=60, silent_beats=2) as pool:
        # a twin set per schedule: twins are stepped as the plans are made
        plain_act, piped_act = TwinExpert(config, starts, 4), TwinExpert(config, starts, 4)
        try:
            plain, plain_stats = RolloutCollector(pool, plain_act, EnvSuccess(), 20).collect(starts, 2, 0.0)
            piped, piped_stats = RolloutCollector(pool, piped_act, EnvSuccess(), 20, pipeline=True).collect(
                starts, 2, 0.0)
        finally:
            plain_act.close()
            piped_act.close()
        _assert_same_episodes(plain, piped)
        rewards = [ep.reward for ep in plain]
        assert 0.0 < sum(rewards) < len(rewards)  # some succeed within 20 steps, some do not
        assert pool.restarts == 0 and piped_stats.failed == 0
        assert piped_stats.env_steps == plain_stats.env_steps


# ----------------------------------------------------------------- LIBERO


def _libero_assets() -> Path | None:
    configured = os.environ.get("PUSHCUT_LIBERO_ASSETS", "").strip()
    path = Path(configured) if configured else REPO.parent / "shared" / "libero-assets" / "assets"
    return path if (path / "scenes").is_dir() else None


HAVE_LIBERO = all(importlib.util.find_spec(m) is not None for m in ("libero", "robosuite", "bddl"))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LIBERO or _libero_assets() is None,
                    reason="needs the [libero] extra and LIBERO's assets ($PUSHCUT_LIBERO_ASSETS or "
                           "../shared/libero-assets/assets)")
def test_the_pipeline_equals_the_plain_schedule_on_libero():
    """LIBERO's hard reset takes about 3 s per env here, so while the trainer resets one lane's
    3 envs (about 9 s) the other lane's worker goes unread for longer than the silence window
    (5 s here): the schedule that lost half the episodes of every round. A LIBERO worker is also
    silent while it compiles a scene or hard-resets (the call holds the GIL, its heartbeat thread
    waits: up to 5.7 s measured on a loaded machine); the pool sees it computing and waits.
    Deterministic actions (a fixed gain on the proprio state)."""
    from pushcut.plugins.envs.libero import LiberoConfig, LiberoEnv
    from pushcut.plugins.envs.libero.runtime import suite_tasks

    task = suite_tasks("libero_spatial")[0].name
    config = LiberoConfig(assets_dir=str(_libero_assets()), tasks=(task,), image_size=64, render_size=0,
                          gripper_convention="libero", max_steps=16)
    gain = np.random.default_rng(0).uniform(-1, 1, (8, 7))

    def act(obs: ObsBatch, temperature: float) -> ActionSample:
        base = np.tanh(obs.states @ gain)  # (n, 7), a function of the state only
        return _sample(np.repeat(base[:, None, :], 8, axis=1))

    with EnvPool(LiberoEnv, config, num_workers=2, envs_per_worker=3, timeout_s=300, silent_beats=4) as pool:
        starts = [StartState(task, 0), StartState(task, 3)]
        plain, piped, _, stats = _both_schedules(pool, act, starts, 3)
        _assert_same_episodes(plain, piped)
        assert all(ep.length == 16 for ep in piped)
        assert stats.failed == 0 and pool.restarts == 0
