"""The contract suites (pytest classes) behind :mod:`pushcut.testing`; importing this module imports pytest."""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from pushcut.envcontract import (
    OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE, Env, StepResult, TaskSpec, can_restore_state,
)

try:  # the policy and success-detector suites need torch; the Env and robot-driver suites do not, so a
    import torch  # simulator's own venv (no torch) can run them

    from pushcut.contracts import ActionSample, EpisodeOutcome, ObsBatch, Policy, SuccessDetector
except ImportError:
    torch = None
from pushcut.errors import EnvError


def _check_observation(obs: dict, where: str) -> None:
    assert isinstance(obs, dict), f"{where}: observation must be a dict, got {type(obs).__name__}"
    assert OBS_IMAGE in obs, f"{where}: observation lacks {OBS_IMAGE!r} (keys: {sorted(obs)})"
    for key in (OBS_IMAGE, OBS_WRIST_IMAGE):
        if key in obs:
            img = obs[key]
            assert isinstance(img, np.ndarray) and img.dtype == np.uint8, f"{where}: {key} must be a uint8 array"
            assert img.ndim == 3 and img.shape[2] == 3, f"{where}: {key} must be (H, W, 3), got {img.shape}"
    if OBS_STATE in obs:
        state = obs[OBS_STATE]
        assert isinstance(state, np.ndarray) and state.ndim == 1, f"{where}: state must be a 1-D array"
        assert np.isfinite(state).all(), f"{where}: state has NaN/inf"


def _same_obs(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class EnvContract:
    """Contract tests for an :class:`~pushcut.contracts.Env`. Provide an ``env`` fixture."""

    chunk: int = 4
    """Actions per chunk the suite sends."""

    @pytest.fixture
    def env(self) -> Env:  # pragma: no cover - must be overridden
        raise NotImplementedError("provide an `env` fixture returning your Env instance")

    def _first_task(self, env: Env) -> TaskSpec:
        return env.tasks()[0]

    def _actions(self, env: Env, seed: int = 0) -> np.ndarray:
        spec = env.action_spec
        rng = np.random.default_rng(seed)
        return rng.uniform(spec.low, spec.high, size=(self.chunk, spec.action_dim)).astype(np.float32)

    def test_tasks(self, env: Env) -> None:
        tasks = env.tasks()
        assert tasks, "tasks() must list at least one task"
        assert all(isinstance(t, TaskSpec) for t in tasks)
        ids = [t.task_id for t in tasks]
        assert len(ids) == len(set(ids)), f"task ids must be unique, got {ids}"
        for t in tasks:
            assert t.instruction.strip(), f"task {t.task_id!r} has an empty instruction"
            assert t.train_init_states, f"task {t.task_id!r} has no train initial states"
            assert t.eval_init_states, f"task {t.task_id!r} has no eval initial states"

    def test_action_spec(self, env: Env) -> None:
        spec = env.action_spec
        assert spec.action_dim >= 1
        assert all(lo < hi for lo, hi in zip(spec.low, spec.high)), "action bounds must have low < high"

    def _needs_determinism(self, env: Env) -> None:
        if not getattr(env, "deterministic", True):
            pytest.skip(f"{type(env).__name__}.deterministic is False (a real robot): no determinism to check")

    def test_reset_is_deterministic(self, env: Env) -> None:
        self._needs_determinism(env)
        task = self._first_task(env)
        init = task.train_init_states[0]
        a = env.reset(task.task_id, init)
        _check_observation(a, "reset()")
        env.step(self._actions(env))
        b = env.reset(task.task_id, init)
        assert _same_obs(a, b), "reset() to the same (task, initial state) must give the same observation"

    def test_different_init_states_differ(self, env: Env) -> None:
        task = self._first_task(env)
        states = (*task.train_init_states, *task.eval_init_states)
        if len(states) < 2:
            pytest.skip("task has a single initial state")
        a = env.reset(task.task_id, states[0])
        b = env.reset(task.task_id, states[-1])
        assert not _same_obs(a, b), "different initial states should give different observations"

    def test_step_chunk(self, env: Env) -> None:
        task = self._first_task(env)
        obs0 = env.reset(task.task_id, task.train_init_states[0])
        result = env.step(self._actions(env), record=True)
        assert isinstance(result, StepResult)
        assert 1 <= result.steps <= self.chunk, f"steps must be in 1..{self.chunk}, got {result.steps}"
        _check_observation(result.observation, "step()")
        assert result.observation.keys() == obs0.keys(), "step() and reset() must return the same observation keys"
        for key in obs0:
            assert result.observation[key].shape == obs0[key].shape, f"{key} changed shape between reset and step"
        assert isinstance(result.success, bool) and isinstance(result.done, bool)
        if result.success:
            assert result.done, "a successful step must be done"
        assert len(result.frames) == result.steps, "record=True must return one frame per executed action"

    def test_step_is_deterministic(self, env: Env) -> None:
        self._needs_determinism(env)
        task = self._first_task(env)
        outs = []
        for _ in range(2):
            env.reset(task.task_id, task.train_init_states[0])
            outs.append(env.step(self._actions(env, seed=1)))
        assert _same_obs(outs[0].observation, outs[1].observation), "same reset + same actions must give the same result"
        assert outs[0].steps == outs[1].steps and outs[0].success == outs[1].success

    def test_bad_action_shape_is_rejected(self, env: Env) -> None:
        task = self._first_task(env)
        env.reset(task.task_id, task.train_init_states[0])
        dim = env.action_spec.action_dim
        bad = np.zeros((self.chunk, dim + 1), dtype=np.float32)
        with pytest.raises((ValueError, EnvError)) as info:
            env.step(bad)
        assert re.search(rf"\b{dim}\b", str(info.value)), f"the error should name the expected action_dim {dim}"

    def test_config_is_plain_data(self, env: Env) -> None:
        """Envs are rebuilt in their workers from the config as plain data (never a pickle)."""
        from pushcut.configio import build_dataclass, to_dict

        config = getattr(env, "config", None)
        if config is None:
            pytest.skip("env has no `config` attribute")
        assert build_dataclass(type(config), to_dict(config), "env") == config, (
            "the env config must round-trip through plain data (to_dict -> build_dataclass)"
        )

    def successful_actions(self, env: Env) -> tuple[str, int, np.ndarray] | None:
        """``(task_id, init_state, actions)``: an action sequence that succeeds from that start
        state, one action per step. Default: the env's scripted expert (``expert_action``) run
        step by step; override it for an env without one (or return None to skip the check)."""
        for task in env.tasks():
            env.reset(task.task_id, task.train_init_states[0])
            actions = []
            try:
                for _ in range(task.max_steps):
                    action = np.asarray(env.expert_action(), dtype=np.float64)
                    actions.append(action)
                    result = env.step(action[None])
                    if result.success:
                        return task.task_id, task.train_init_states[0], np.stack(actions)
                    if result.done:
                        break
            except NotImplementedError:
                return None
        return None

    def test_early_stop_and_step_bookkeeping(self, env: Env) -> None:
        """Replay a sequence known to succeed in chunks that run past the success: the chunk holding
        the success step must stop right there (``steps`` = the actions it executed, ``success`` and
        ``done`` set), and the steps must add up to where success came."""
        self._needs_determinism(env)  # the replay must meet the same states as the expert did
        found = self.successful_actions(env)
        if found is None:
            pytest.skip("no action sequence known to succeed: give the env an expert_action() or override "
                        "successful_actions()")
        task_id, init_state, actions = found
        n = len(actions)
        chunk = max(2, self.chunk)
        if n % chunk == 0:  # the success step must land inside a chunk, with actions after it to skip
            chunk += 1
        padded = np.concatenate([actions, np.repeat(actions[-1:], chunk, axis=0)])
        env.reset(task_id, init_state)
        executed, result = 0, None
        for start in range(0, len(padded), chunk):
            result = env.step(padded[start:start + chunk], record=True)
            assert 1 <= result.steps <= chunk and len(result.frames) == result.steps, (
                f"a chunk of {chunk} reported {result.steps} steps and {len(result.frames)} frames")
            executed += result.steps
            if result.done:
                break
        assert result is not None and result.success and result.done, (
            f"replaying {n} actions that succeeded one by one did not succeed in chunks of {chunk}")
        assert executed == n, (f"success came after {n} actions one by one but the chunks reported {executed} "
                               "executed steps: a chunk must stop at success and count exactly what it ran")
        if "episode_steps" in result.info:
            assert result.info["episode_steps"] == n, f"info['episode_steps'] is {result.info['episode_steps']}, not {n}"

    def test_restore_state_round_trip(self, env: Env) -> None:
        """Optional capability (``get_state`` / ``restore_state``): a state recorded mid-episode, restored
        after the episode ran on, gives back the observation seen when it was recorded, and the same
        actions from there give the same result as they did then."""
        if not can_restore_state(env):
            pytest.skip(f"{type(env).__name__} does not restore simulator states (optional capability)")
        self._needs_determinism(env)
        task = self._first_task(env)
        env.reset(task.task_id, task.train_init_states[0])
        first = env.step(self._actions(env, seed=2))
        if first.done:
            pytest.skip("the episode ended within the first chunk")
        state = np.asarray(env.get_state())
        assert state.ndim == 1 and state.dtype.kind == "f" and np.isfinite(state).all(), (
            f"get_state() must return a 1-D finite float array, got {state.dtype} {state.shape}")
        then = env.step(self._actions(env, seed=3))
        env.reset(task.task_id, task.train_init_states[-1])  # somewhere else entirely
        back = env.restore_state(task.task_id, state.copy())
        _check_observation(back, "restore_state()")
        assert np.array_equal(np.asarray(env.get_state()), state), "get_state() right after restore_state() must give it back"
        with pytest.raises((ValueError, EnvError)):
            env.restore_state(task.task_id, np.zeros(len(state) + 3))
        back = env.restore_state(task.task_id, state.copy())
        if not getattr(env, "restores_observation", True):
            return  # the env says its observation after a step is not a function of the state alone (see RestoresState)
        assert _same_obs(back, first.observation), "restore_state() must give the observation seen when the state was recorded"
        again = env.step(self._actions(env, seed=3))
        assert _same_obs(again.observation, then.observation) and again.success == then.success, (
            "the same actions after restore_state() must give the same result as after the recorded state")

    def test_render(self, env: Env) -> None:
        task = self._first_task(env)
        env.reset(task.task_id, task.train_init_states[0])
        frame = env.render()
        assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert frame.std() > 0, "render() returned a constant image"


class PolicyContract:
    """Contract tests for a :class:`~pushcut.contracts.Policy`. Provide fixtures
    ``policy`` and ``obs_batch`` (an :class:`ObsBatch` the policy accepts, B ≥ 2),
    and ``make_policy`` (a zero-argument callable building a fresh policy with the
    same config, for the save/load test)."""

    temperature: float = 1.6
    atol: float = 1e-4
    log_densities: bool = False
    """True for a continuous head (Gaussian, diffusion, flow): its log-probs are log-densities and may
    be positive. False keeps the check that a discrete head's log-probs are <= 0."""

    @pytest.fixture
    def policy(self) -> Policy:  # pragma: no cover - must be overridden
        raise NotImplementedError("provide a `policy` fixture")

    @pytest.fixture
    def obs_batch(self) -> ObsBatch:  # pragma: no cover - must be overridden
        raise NotImplementedError("provide an `obs_batch` fixture")

    @pytest.fixture
    def make_policy(self):  # pragma: no cover - must be overridden
        raise NotImplementedError("provide a `make_policy` fixture: a zero-argument callable building a fresh policy")

    def test_act_shapes(self, policy: Policy, obs_batch: ObsBatch) -> None:
        with torch.no_grad():
            sample = policy.act(obs_batch, self.temperature)
        assert isinstance(sample, ActionSample)
        b = len(obs_batch)
        assert sample.actions.shape == (b, policy.chunk_size, policy.action_dim), (
            f"actions must be (B={b}, chunk={policy.chunk_size}, action_dim={policy.action_dim}), "
            f"got {sample.actions.shape}"
        )
        assert np.isfinite(sample.actions).all(), "actions contain NaN/inf"
        assert sample.mask.dtype == torch.bool, "mask must be a bool tensor"
        lp = sample.log_probs[sample.mask]
        assert torch.isfinite(lp).all(), "sampled log-probs must be finite"
        if not self.log_densities:
            assert (lp <= 1e-6).all(), (
                "sampled log-probs of a discrete head must be <= 0 (a continuous head's log-densities may be "
                "positive: set log_densities = True on the contract class)"
            )
        assert not sample.log_probs.requires_grad, "act() must return detached log-probs"
        assert not any(v.requires_grad for v in sample.sample.values()), "act() must return detached samples"

    def test_recomputed_log_probs_match(self, policy: Policy, obs_batch: ObsBatch) -> None:
        with torch.no_grad():
            sample = policy.act(obs_batch, self.temperature)
            scores = policy.log_probs(obs_batch, sample.sample, self.temperature)
        assert scores.log_probs.shape == sample.log_probs.shape
        diff = (scores.log_probs - sample.log_probs)[sample.mask].abs().max().item()
        assert diff <= self.atol, f"log_probs() differs from act()-time log-probs by {diff}"

    def test_log_probs_are_differentiable(self, policy: Policy, obs_batch: ObsBatch) -> None:
        with torch.no_grad():
            sample = policy.act(obs_batch, self.temperature)
        policy.zero_grad(set_to_none=True)
        scores = policy.log_probs(obs_batch, sample.sample, self.temperature)
        scores.log_probs[sample.mask].sum().backward()
        grads = [p.grad for p in policy.trainable_parameters()]
        assert grads, "trainable_parameters() is empty"
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the trainable parameters"

    def test_greedy_is_deterministic(self, policy: Policy, obs_batch: ObsBatch) -> None:
        with torch.no_grad():
            a = policy.act(obs_batch, 0.0).actions
            b = policy.act(obs_batch, 0.0).actions
        np.testing.assert_array_equal(a, b)

    def test_sampling_varies(self, policy: Policy, obs_batch: ObsBatch) -> None:
        with torch.no_grad():
            runs = [policy.act(obs_batch, self.temperature).actions for _ in range(3)]
        assert any(not np.array_equal(runs[0], r) for r in runs[1:]), "sampling at temperature > 0 never varies"

    def test_sft_loss(self, policy: Policy, obs_batch: ObsBatch) -> None:
        with torch.no_grad():
            expert = policy.act(obs_batch, 0.0).actions
        loss = policy.sft_loss(obs_batch, expert)
        assert loss.ndim == 0 and torch.isfinite(loss), f"sft_loss must be a finite scalar, got {loss}"
        loss.backward()

    def test_save_load_round_trip(self, policy: Policy, obs_batch: ObsBatch, make_policy, tmp_path: Path) -> None:
        policy.save(tmp_path / "ckpt")
        fresh = make_policy()
        fresh.load(tmp_path / "ckpt")
        with torch.no_grad():
            a = policy.act(obs_batch, 0.0).actions
            b = fresh.act(obs_batch, 0.0).actions
        np.testing.assert_array_equal(a, b)


class SuccessDetectorContract:
    """Contract tests for a :class:`~pushcut.contracts.SuccessDetector`. Provide a
    ``detector`` fixture; override ``outcomes`` to return (outcome, expected) pairs
    your detector must get right."""

    @pytest.fixture
    def detector(self) -> SuccessDetector:  # pragma: no cover - must be overridden
        raise NotImplementedError("provide a `detector` fixture")

    def outcomes(self) -> list[tuple[EpisodeOutcome, bool]]:
        frame = np.zeros((8, 8, 3), np.uint8)
        return [
            (EpisodeOutcome("t", "do it", 0, True, 5, {"success": True}, [frame]), True),
            (EpisodeOutcome("t", "do it", 0, False, 9, {"success": False}, [frame]), False),
        ]

    def test_judges_outcomes(self, detector: SuccessDetector) -> None:
        for outcome, expected in self.outcomes():
            verdict = detector.judge(outcome)
            assert isinstance(verdict, (bool, np.bool_)), f"judge() must return a bool, got {type(verdict).__name__}"
            assert bool(verdict) == expected, f"judge() said {verdict} for {outcome}"

    def test_config_is_picklable(self, detector: SuccessDetector) -> None:
        pickle.dumps(getattr(detector, "config", None))


class RobotDriverContract:
    """Contract tests for a robot driver of the real-robot bridge (``pushcut_register_robot_drivers``).
    Provide a ``driver`` fixture returning an unconnected driver (close it after the test); every
    test connects it and homes it to the first task's first start pose. Run it on the robot with
    a clear workspace: the tests send small motions.

    The rule that matters most: after ``stop()`` a ``command`` moves nothing until the next
    ``home()`` (it is ignored, or it raises)."""

    @pytest.fixture
    def driver(self):  # pragma: no cover - must be overridden
        raise NotImplementedError("provide a `driver` fixture")

    def _home(self, driver):
        spec = driver.connect()
        task = spec.tasks[0]
        first = task.train_init_states[0] if task.train_init_states else 0
        return spec, driver.home(task.task_id, first)

    def _moving_action(self, driver, spec, state) -> np.ndarray:
        """The in-bounds action the driver's own model says moves the end effector furthest."""
        hold = np.asarray(driver.hold_action(state, None), dtype=np.float64)
        low, high = np.array(spec.action_spec.low), np.array(spec.action_spec.high)
        best, reach = hold, 0.0
        for dim in range(spec.action_spec.action_dim):
            for value in (low[dim], high[dim]):
                action = hold.copy()
                action[dim] = value
                moved = float(np.linalg.norm(np.asarray(driver.predict(state, action).ee) - np.asarray(state.ee)))
                if moved > reach:
                    best, reach = action, moved
        assert reach > 0, "no in-bounds action moves the end effector by the driver's own predict()"
        return best

    def test_connect_and_home(self, driver) -> None:
        spec, obs = self._home(driver)
        assert spec.action_spec.action_dim >= 1 and spec.tasks, "connect() must return the action spec and tasks"
        image = obs.cameras.get(OBS_IMAGE)
        assert image is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (
            "home() must return an observation with an (H, W, 3) uint8 `image` camera")
        assert np.asarray(obs.robot.ee).shape == (3,), "RobotState.ee must be (3,) metres"
        assert np.isfinite(np.asarray(obs.state, dtype=np.float64)).all()

    def test_command_after_stop_moves_nothing_until_home(self, driver) -> None:
        spec, obs = self._home(driver)
        action = self._moving_action(driver, spec, obs.robot)
        before = np.asarray(driver.observe().robot.ee, dtype=np.float64).copy()
        driver.command(action)
        moved = np.asarray(driver.observe().robot.ee, dtype=np.float64)
        assert not np.allclose(moved, before, atol=1e-6), (
            "a command before stop did not move the end effector: this suite cannot see motion on this driver")
        driver.stop()
        stopped = np.asarray(driver.observe().robot.ee, dtype=np.float64).copy()
        for _ in range(3):
            with contextlib.suppress(Exception):  # ignoring or raising are both fine; moving is not
                driver.command(action)
        after = np.asarray(driver.observe().robot.ee, dtype=np.float64)
        assert np.allclose(after, stopped, atol=1e-6), (
            f"the driver moved after stop ({stopped.round(4).tolist()} -> {after.round(4).tolist()}): command() "
            "must be ignored (or raise) from stop() until the next home()")
        task = spec.tasks[0]
        obs = driver.home(task.task_id, task.train_init_states[0] if task.train_init_states else 0)
        start = np.asarray(driver.observe().robot.ee, dtype=np.float64).copy()
        driver.command(self._moving_action(driver, spec, obs.robot))
        assert not np.allclose(np.asarray(driver.observe().robot.ee, dtype=np.float64), start, atol=1e-6), (
            "home() must release the latch that stop() set: the next command did not move")

    def test_stop_from_another_thread_while_commanding(self, driver) -> None:
        import threading

        spec, obs = self._home(driver)
        action = self._moving_action(driver, spec, obs.robot)
        stopper = threading.Thread(target=driver.stop)
        stopper.start()
        for _ in range(20):
            with contextlib.suppress(Exception):
                driver.command(action)
        stopper.join(10)
        assert not stopper.is_alive(), "stop() did not return within 10 s while commands were being sent"
        settled = np.asarray(driver.observe().robot.ee, dtype=np.float64).copy()
        with contextlib.suppress(Exception):
            driver.command(action)
        assert np.allclose(np.asarray(driver.observe().robot.ee, dtype=np.float64), settled, atol=1e-6), (
            "the driver moved after a stop() that came from another thread")
