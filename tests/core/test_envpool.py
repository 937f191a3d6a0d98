"""The env pool: persistent workers, identical resets, crash and hang handling."""

import os

import numpy as np
import pytest

from pushcut.envpool import EnvPool, SlotFailure
from pushcut.errors import EnvError
from faulty_reach import FaultyReachConfig, FaultyReachEnv
from pushcut.toys import ReachConfig, ReachEnv


@pytest.fixture(scope="module")
def pool():
    p = EnvPool(FaultyReachEnv, FaultyReachConfig(crash_on_init_state=3), num_workers=2, envs_per_worker=3,
                timeout_s=20)
    yield p
    p.close()


def test_workers_are_persistent(pool):
    pids = pool.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    pool.step({s: np.zeros((2, 1), np.float32) for s in range(pool.num_slots)})
    assert pool.worker_pids() == pids


def test_group_members_start_identically(pool):
    obs = pool.reset({s: ("reach_0", 5) for s in range(pool.num_slots)})
    first = obs[0]
    for o in obs.values():
        np.testing.assert_array_equal(o["state"], first["state"])
        np.testing.assert_array_equal(o["image"], first["image"])
    out = pool.step({s: np.full((3, 1), 0.5, np.float32) for s in range(pool.num_slots)})
    states = {tuple(r.observation["state"]) for r in out.values()}
    assert len(states) == 1


def test_env_raising_in_step_is_a_slot_failure(pool):
    pool.reset({0: ("reach_0", 3), 1: ("reach_0", 4)})
    out = pool.step({0: np.zeros((1, 1), np.float32), 1: np.zeros((1, 1), np.float32)})
    assert isinstance(out[0], SlotFailure) and "simulated simulator crash" in out[0].reason
    assert not isinstance(out[1], SlotFailure)
    assert pool.pop_lost_slots() == set()  # the worker survived


def test_results_come_in_slot_order_whatever_order_workers_answer_in():
    with EnvPool(ReachEnv, ReachConfig(step_delay_s=0.05), num_workers=2, envs_per_worker=2, timeout_s=20) as pool:
        pool.reset({s: ("reach_0", 1) for s in range(4)})
        # worker 0 (slots 0, 1) runs 6 steps per env, worker 1 one step: worker 1 answers first
        out = pool.step({0: np.zeros((6, 1), np.float32), 1: np.zeros((6, 1), np.float32),
                         3: np.zeros((1, 1), np.float32), 2: np.zeros((1, 1), np.float32)})
        assert list(out) == [0, 1, 2, 3]
        assert [r.steps for r in out.values()] == [6, 6, 1, 1]


def test_tasks_and_action_spec(pool):
    assert [t.task_id for t in pool.tasks()] == ["reach_0", "reach_1"]
    assert pool.action_spec.action_dim == 1


def test_hanging_worker_is_restarted():
    with EnvPool(FaultyReachEnv, FaultyReachConfig(hang_on_init_state=2), num_workers=2, envs_per_worker=2,
                 timeout_s=3) as pool:
        pool.reset({0: ("reach_0", 2), 1: ("reach_0", 1), 2: ("reach_0", 1)})
        out = pool.step({0: np.zeros((1, 1), np.float32), 1: np.zeros((1, 1), np.float32),
                         2: np.zeros((1, 1), np.float32)})
        assert isinstance(out[0], SlotFailure) and "did not answer within 3 s" in out[0].reason
        assert isinstance(out[1], SlotFailure)  # same worker: its state is gone too
        assert not isinstance(out[2], SlotFailure)
        assert pool.pop_lost_slots() == {0, 1} and pool.restarts == 1
        # the restarted worker serves again
        obs = pool.reset({0: ("reach_1", 0)})
        assert obs[0]["state"].shape == (2,)


def test_env_creation_failure_is_one_clear_error():
    with pytest.raises(EnvError, match="creating the env failed"):
        EnvPool(ReachEnv, "not a config", num_workers=1, envs_per_worker=1)


def test_inline_transport_matches_process(pool):
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=2, transport="inline") as inline:
        a = inline.reset({0: ("reach_1", 7)})[0]
        b = pool.reset({0: ("reach_1", 7)})[0]
        np.testing.assert_array_equal(a["state"], b["state"])
        ra = inline.step({0: np.full((2, 1), -1.0, np.float32)})[0]
        rb = pool.step({0: np.full((2, 1), -1.0, np.float32)})[0]
        np.testing.assert_array_equal(ra.observation["state"], rb.observation["state"])


# ----------------------------------------------------------------- transports and env specs


def test_call_runs_a_function_on_the_inline_transport_only(pool):
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=1, transport="inline") as inline:
        inline.reset({0: ("reach_0", 3)})
        assert inline.call(0, lambda env: env.init_state) == 3
    with pytest.raises(EnvError, match="only the inline transport does .* transport='inline'"):
        pool.call(0, os.getpid)


def test_an_env_crosses_as_its_name_and_plain_options(tmp_path):
    """A registered env (here registered in-process) reaches a process worker as name + options +
    the import reference of the plugin that registered it: the worker's own registry builds it."""
    from pushcut.configio import load_config
    from pushcut.envpool import EnvSpec, pool_from_config
    from pushcut.testing import registered_plugin
    from pushcut.toys import ToyPlugin

    with registered_plugin(ToyPlugin(), "toys") as manager:
        cfg = load_config(None, ["env.type=reach", "env.targets=[0.25]", "policy.type=bins", "rollout.num_workers=1",
                                 "rollout.envs_per_worker=1"], manager)
        spec = EnvSpec.from_registry("reach", cfg.env.options, manager)
        assert spec.name == "reach" and spec.plugins == ("pushcut.toys:ToyPlugin",)
        assert spec.to_wire()["options"]["targets"] == [0.25]
        with pool_from_config(cfg, manager) as pool:
            assert [t.instruction for t in pool.tasks()] == ["move the dot to +0.25"]


def test_a_worker_that_cannot_resolve_the_env_says_why():
    from pushcut.envpool import EnvSpec

    with pytest.raises(EnvError, match="creating the env failed: PluginError: unknown env 'nope'"):
        EnvPool(EnvSpec("nope", {}, plugins=("pushcut.toys:ToyPlugin",)), num_workers=1, envs_per_worker=1)


def test_a_worker_killed_between_requests_is_restarted():
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=2, timeout_s=20) as pool:
        os.kill(pool.worker_pids()[0], 9)
        out = pool.reset({0: ("reach_0", 1)})
        assert isinstance(out[0], SlotFailure) and "restarted it" in out[0].reason and pool.restarts == 1
        assert not isinstance(pool.reset({0: ("reach_0", 1)})[0], SlotFailure)


@pytest.mark.parametrize("fields, message", [
    ({"transport": "socket"}, "rollout.transport=socket needs rollout.transport.addresses"),
    ({"transport": {"type": "socket", "addresses": ["localhost"]}}, "'localhost' must look like host:port"),
    ({"addresses": ["127.0.0.1:7171"]}, "'rollout.addresses' has moved: set rollout.transport.addresses"),
    ({"transport": {"type": "inline", "python": "/usr/bin/python3"}},
     "unknown config key 'rollout.transport.python'; valid keys in 'rollout.transport': "),
    ({"transport": "zmq"}, "unknown transport 'zmq'; registered: inline, process, ray, socket"),
    ({"transport": {"type": "socket", "addresses": ["127.0.0.1:7171"], "connect_attempts": 0}},
     "rollout.transport.connect_attempts must be >= 1"),
])
def test_transport_config_errors_name_the_fix(fields, message):
    from pushcut.config import RolloutConfig
    from pushcut.configio import build_dataclass
    from pushcut.errors import PushcutError

    with pytest.raises(PushcutError, match=message):
        build_dataclass(RolloutConfig, fields, "rollout")


def test_socket_transport_config_counts_one_worker_per_address():
    from pushcut.config import RolloutConfig
    from pushcut.configio import build_dataclass

    cfg = build_dataclass(RolloutConfig, {"transport": {"type": "socket", "addresses": ["10.0.0.5:7171", "[::1]:7172"]},
                                          "pipeline": True}, "rollout")
    assert cfg.num_workers == 2 and cfg.transport.options.addresses == ("10.0.0.5:7171", "[::1]:7172")


# ----------------------------------------------------------------- balanced slots and silence


def test_spread_takes_free_slots_least_loaded_worker_first(pool):
    """Slots 0-2 are worker 0's, 3-5 worker 1's: handed out alternately, never past the cap."""
    assert pool.spread(range(6), [], 4) == [0, 3, 1, 4]
    assert pool.spread([2, 3, 4, 5], busy=[0, 1], n=2) == [3, 4]  # worker 0 already runs two
    assert pool.spread([2, 3, 4, 5], busy=[0, 1], n=5) == [3, 4, 2, 5]
    assert pool.spread(range(6), [], 6, per_worker=2) == [0, 3, 1, 4]
    assert pool.spread([5, 1], [], 1) == [1]  # a tie goes to the lower worker


def test_a_reply_left_unread_while_the_caller_is_away_is_not_a_frozen_worker():
    """The pipeline's case: the trainer submits to one worker, then spends longer than the
    heartbeat window elsewhere (the other lane, the policy). The worker's reply and heartbeats
    wait in its socket; reading them shows it alive. (Before the fix the silence check ran before
    the socket was read, and this worker was killed and restarted as 'no heartbeat'.)"""
    import time

    with EnvPool(ReachEnv, ReachConfig(step_delay_s=0.5), num_workers=2, envs_per_worker=1, timeout_s=30,
                 silent_beats=2) as pool:  # silence limit 2 beats (2 s) + 1 s
        pool.reset({0: ("reach_0", 1), 1: ("reach_0", 2)})
        quick = pool.submit_step({0: np.zeros((1, 1), np.float32)})
        slow = pool.submit_step({1: np.zeros((6, 1), np.float32)})  # 3 s of stepping, beats meanwhile
        time.sleep(4.5)  # past the 3 s window, reading neither
        out = pool.collect(slow)
        assert not isinstance(out[1], SlotFailure) and out[1].steps == 6
        time.sleep(3.5)
        out = pool.collect(quick)
        assert not isinstance(out[0], SlotFailure) and out[0].steps == 1
        assert pool.restarts == 0 and pool.pop_lost_slots() == set()


def test_a_frozen_worker_is_still_found_after_the_caller_was_away():
    """A worker stopped mid-request (SIGSTOP: no reply, no heartbeat) is declared frozen and
    restarted, even when the caller comes back to it late; its healthy neighbour is not."""
    import signal
    import time

    with EnvPool(ReachEnv, ReachConfig(step_delay_s=0.5), num_workers=2, envs_per_worker=1, timeout_s=60,
                 silent_beats=2) as pool:
        pool.reset({0: ("reach_0", 1), 1: ("reach_0", 2)})
        frozen = pool.worker_pids()[1]
        ticket = pool.submit_step({0: np.zeros((2, 1), np.float32), 1: np.zeros((6, 1), np.float32)})
        os.kill(frozen, signal.SIGSTOP)
        try:
            time.sleep(3.5)
            start = time.monotonic()
            out = pool.collect(ticket)
        finally:
            try:
                os.kill(frozen, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not isinstance(out[0], SlotFailure) and out[0].steps == 2
        assert isinstance(out[1], SlotFailure) and "no heartbeat for 3 s" in out[1].reason
        assert time.monotonic() - start < 10 and pool.restarts == 1 and pool.pop_lost_slots() == {1}
        assert pool.worker_pids()[1] != frozen


class GilHoldingReach(ReachEnv):
    """A step that spends its time in one C call holding the GIL (as LIBERO's scene compile
    does): the worker's heartbeat thread cannot send for as long as the call runs."""

    def step(self, actions, record=False):
        import time

        exponent = 10**5
        while True:  # doubled until one call alone takes >= 4.5 s, whatever the machine's speed
            start = time.perf_counter()
            pow(3, exponent)
            if time.perf_counter() - start >= 4.5:
                break
            exponent *= 2
        return super().step(actions, record)


def test_a_worker_holding_the_gil_longer_than_the_window_is_working_not_frozen():
    """No heartbeat for longer than the 3 s window, but the process computes: the pool waits for
    its answer instead of killing it (what LIBERO's scene builds set off on a loaded machine)."""
    with EnvPool(GilHoldingReach, ReachConfig(), num_workers=1, envs_per_worker=1, timeout_s=120,
                 silent_beats=2) as pool:
        pool.reset({0: ("reach_0", 1)})
        out = pool.step({0: np.zeros((1, 1), np.float32)})
        assert not isinstance(out[0], SlotFailure) and out[0].steps == 1
        assert pool.restarts == 0
