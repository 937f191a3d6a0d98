"""The reverse curriculum wired end to end (issue 39, item 3): the tabletop restores recorded
simulator states, demo files carry them, the env pool resets a slot to one (inline and process
transports), the curriculum sampler moves a real task's start back, and ``train.curriculum=reverse``
runs in the trainer, logs its metrics and resumes exactly. Bad input is one line, exit 2."""

import json

import h5py
import numpy as np
import pytest
import torch

from pushcut.cli import main
from pushcut.config import TrainConfig
from pushcut.configio import load_config
from pushcut.contracts import ActionSample, ObsBatch
from pushcut.demos import SIM_STATES, read_demo_states, record_demos, write_demos
from pushcut.envcontract import can_restore_state
from pushcut.envpool import EnvPool, SlotFailure
from pushcut.errors import ConfigError, DataError
from pushcut.rollout import RolloutCollector
from pushcut.sampling import CurriculumSampler, ReverseCurriculum, StartState, UniformSampler, with_curriculum
from pushcut.toys import ReachConfig, ReachEnv

tabletop = pytest.importorskip("pushcut.plugins.envs.tabletop.env", reason="needs mujoco (the tabletop env)")
from pushcut.plugins.envs.tabletop.config import TabletopConfig  # noqa: E402
from pushcut.plugins.envs.tabletop.env import TabletopEnv  # noqa: E402

SMALL = dict(image_size=32, jitter=0.03, num_init_states=12, num_eval_init_states=4)


class EnvSuccess:
    needs_frames = False

    def judge_all(self, outcomes):
        return [o.env_success for o in outcomes]


def _still(obs: ObsBatch, temperature: float) -> ActionSample:
    """A 'policy' that holds still (no motion, gripper half open), in chunks of 4."""
    n = len(obs)
    return ActionSample(np.zeros((n, 4, 4), np.float32), {}, torch.zeros(n, 1), torch.ones(n, 1, dtype=torch.bool))


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    env = TabletopEnv(TabletopConfig(tasks=("close_drawer", "press_button"), **SMALL))
    demos, _ = record_demos(env, 2)
    env.close()
    return write_demos(tmp_path_factory.mktemp("demos") / "demos.hdf5", demos, env_name="tabletop")


def test_tabletop_restores_a_recorded_state_exactly():
    env = TabletopEnv(TabletopConfig(tasks=("stack_green_on_red",), **SMALL))
    assert can_restore_state(env) and not can_restore_state(ReachEnv(ReachConfig()))
    env.reset("stack_green_on_red", 3)
    states, observations = [], []
    for _ in range(20):
        states.append(env.get_state())
        observations.append(env.observe())
        env.step(env.expert_action()[None])
    after = env.step(np.full((3, 4), 0.4))
    env.reset("stack_green_on_red", 0)
    obs = env.restore_state("stack_green_on_red", states[12])
    assert all(np.array_equal(obs[k], observations[12][k]) for k in obs)
    env.restore_state("stack_green_on_red", states[19])
    env.step(env.expert_action()[None])
    again = env.step(np.full((3, 4), 0.4))
    assert all(np.array_equal(again.observation[k], after.observation[k]) for k in after.observation)
    assert again.info["episode_steps"] == 4  # a restored episode counts its steps from 0
    with pytest.raises(Exception, match="must be .* finite floats"):
        env.restore_state("stack_green_on_red", states[0][:-1])
    env.close()


def test_demo_files_carry_states_and_old_ones_are_one_clear_error(demo_file, tmp_path):
    by_task = read_demo_states(demo_file)
    assert sorted(by_task) == ["close_drawer", "press_button"] and all(len(v) == 2 for v in by_task.values())
    with h5py.File(demo_file, "r") as f:
        g = f["data/demo_0"]
        assert g[SIM_STATES].shape == (len(g["actions"]), by_task[g.attrs["task_id"]][0][1].shape[1])
    init, states = by_task["close_drawer"][0]
    assert init >= 0 and states.dtype == np.float64
    old = tmp_path / "old.hdf5"
    with h5py.File(demo_file, "r") as src, h5py.File(old, "w") as dst:
        src.copy("data", dst)
        for name in dst["data"]:
            del dst["data"][name][SIM_STATES]
    with pytest.raises(DataError, match="has no simulator states .* re-record"):
        read_demo_states(old)


@pytest.mark.parametrize("transport", ["inline", "process"])
def test_the_pool_resets_a_slot_to_a_recorded_state(demo_file, transport):
    _, states = read_demo_states(demo_file)["close_drawer"][0]
    reference = TabletopEnv(TabletopConfig(tasks=("close_drawer",), **SMALL))
    expected = reference.restore_state("close_drawer", states[5])
    with EnvPool(TabletopEnv, TabletopConfig(tasks=("close_drawer",), **SMALL), num_workers=1, envs_per_worker=2,
                 transport=transport, timeout_s=60) as pool:
        assert pool.restores_state
        out = pool.reset({0: ("close_drawer", 0, states[5]), 1: ("close_drawer", 0)})
        assert all(np.array_equal(out[0][k], expected[k]) for k in expected)
        assert not np.array_equal(out[1]["image"], expected["image"])
        bad = pool.reset({0: ("close_drawer", 0, states[5][:3])})
        assert isinstance(bad[0], SlotFailure) and "finite floats" in bad[0].reason
    reference.close()


def test_a_pool_of_envs_without_the_capability_says_so():
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=1, transport="process", timeout_s=30) as pool:
        assert not pool.restores_state
        out = pool.reset({0: ("reach_0", 0, np.zeros(2))})
        assert isinstance(out[0], SlotFailure) and "cannot restore" in out[0].reason


def test_the_start_moves_back_on_the_tabletop(demo_file):
    """Holding still closes the drawer only from the demo's last state: the start begins there
    (fraction 1), moves back one step (to 0.5) once the running success passes the threshold, and
    stays, since from half-way holding still fails."""
    with EnvPool(TabletopEnv, TabletopConfig(tasks=("close_drawer",), **SMALL), num_workers=1, envs_per_worker=4,
                 transport="inline") as pool:
        collector = RolloutCollector(pool, _still, EnvSuccess(), max_steps=8)
        demos = {t: v for t, v in read_demo_states(demo_file).items() if t == "close_drawer"}
        curriculum = ReverseCurriculum({t: [len(s) for _, s in v] for t, v in demos.items()}, seed=0,
                                       threshold=0.5, step=0.5, initial=1.0, apply_below=0.3)
        sampler = CurriculumSampler(UniformSampler(pool.tasks(), 0, 2), curriculum, demos)
        sampler.begin(collector, None)  # greedy from the real starts: holding still never succeeds
        assert sampler.enrolment == {"close_drawer": 0.0} and curriculum.active("close_drawer")
        fractions, rates = [], []
        for _ in range(3):
            starts = sampler.draw(2)
            assert all(s.sim_state is not None and s.demo is not None for s in starts)
            batch, _ = collector.collect(starts, 2, 1.0)
            rates.append(np.mean([ep.success for ep in batch]))
            sampler.observe(batch)
            fractions.append(curriculum.start_fraction["close_drawer"])
        assert rates[0] == 1.0 and fractions == [0.5, 0.5, 0.5] and rates[1:] == [0.0, 0.0]
        assert sampler.metrics()["curriculum/close_drawer/start_fraction"] == 0.5


def test_curriculum_bad_input_is_one_line():
    for name in ("curriculum_threshold", "curriculum_apply_below"):
        for bad in (0.0, 1.0, 1.5):
            with pytest.raises(ConfigError, match=f"train.{name} must be in \\(0, 1\\)"):
                TrainConfig(**{name: bad})
    with pytest.raises(ConfigError, match="train.curriculum must be one of none, reverse"):
        TrainConfig(curriculum="forward")


class _Cfg:
    def __init__(self, demos="", **train):
        self.train = TrainConfig(curriculum="reverse", curriculum_demos=str(demos), **train)
        self.env = type("E", (), {"type": "reach"})()
        self.sft = type("S", (), {"demos": ()})()
        self.seed = 0


def test_with_curriculum_refuses_what_cannot_run(demo_file):
    env = ReachEnv(ReachConfig())
    sampler = UniformSampler(env.tasks(), 0)
    no_restore = type("P", (), {"restores_state": False})()
    with pytest.raises(ConfigError, match="needs an env that restores recorded simulator states.*env.type=reach"):
        with_curriculum(sampler, _Cfg(demo_file), no_restore)
    restores = type("P", (), {"restores_state": True})()
    with pytest.raises(ConfigError, match="set train.curriculum_demos"):
        with_curriculum(sampler, _Cfg(), restores)
    with pytest.raises(ConfigError, match="hold no demo of the env's tasks"):
        with_curriculum(sampler, _Cfg(demo_file), restores)


# --------------------------------------------------------------------------- the trainer

TINY = ["env.tasks=[close_drawer,press_button]", "env.image_size=32", "env.num_init_states=12",
        "env.num_eval_init_states=4", "policy.image_size=32", "train.batch_size=2",
        "algo.group_size=2", "train.max_sample_rounds=1", "train.minibatch_size=4", "rollout.num_workers=1",
        "rollout.envs_per_worker=4", "rollout.transport=inline", "eval.max_init_states=2", "eval.videos_per_task=0",
        "train.eval_every=0", "train.save_every=1", "train.curriculum=reverse", "train.curriculum_apply_below=0.99",
        "train.curriculum_initial=1.0", "env.max_steps=12"]


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_train_with_the_reverse_curriculum_logs_and_resumes_exactly(demo_file, tmp_path, capsys):
    common = ["configs/tabletop_tiny.yaml", f"train.curriculum_demos={demo_file}", *TINY]
    whole = tmp_path / "whole"
    assert main(["train", *common, f"run_dir={whole}", "train.iterations=2"]) == 0
    lines = _metrics(whole)
    steps = [m for m in lines if m.get("step", 0) > 0 and "rollout/env_steps" in m]
    assert len(steps) == 2
    for m in steps:
        assert {"curriculum/close_drawer/start_fraction", "curriculum/press_button/start_fraction"} <= set(m)
    # the same run cut after one iteration and resumed gives the same curriculum and metrics
    cut = tmp_path / "cut"
    assert main(["train", *common, f"run_dir={cut}", "train.iterations=1"]) == 0
    assert main(["train", *common, f"run_dir={cut}", "train.iterations=2"]) == 0
    resumed = [m for m in _metrics(cut) if m.get("step", 0) > 0 and "rollout/env_steps" in m]
    for a, b in zip(steps, resumed):
        for key in a:
            if key.startswith(("curriculum/", "rollout/success", "rollout/env_steps", "actor/pg_loss")):
                assert a[key] == b[key], key
    from pushcut.checkpoint import latest_checkpoint, load_trainer_state

    saved = [load_trainer_state(latest_checkpoint(d))["sampler"] for d in (whole, cut)]
    assert saved[0]["curriculum"] == saved[1]["curriculum"] and saved[0]["started"]


def test_train_curriculum_bad_input_exits_2(demo_file, tmp_path, capsys):
    base = ["train", "configs/tabletop_tiny.yaml", *TINY, "train.iterations=1"]
    assert main([*base, f"run_dir={tmp_path / 'a'}", "train.curriculum_threshold=1.5",
                 f"train.curriculum_demos={demo_file}"]) == 2
    assert "train.curriculum_threshold must be in (0, 1), got 1.5" in capsys.readouterr().err
    old = tmp_path / "old.hdf5"
    with h5py.File(demo_file, "r") as src, h5py.File(old, "w") as dst:
        src.copy("data", dst)
        for name in dst["data"]:
            del dst["data"][name][SIM_STATES]
    assert main([*base, f"run_dir={tmp_path / 'b'}", f"train.curriculum_demos={old}"]) == 2
    err = capsys.readouterr().err
    assert "has no simulator states" in err and len(err.strip().splitlines()) == 1
    from pushcut.testing import registered_plugin
    from pushcut.toys import ToyPlugin

    reach = tmp_path / "reach.yaml"
    reach.write_text("env: {type: reach}\npolicy: {type: bins}\nrollout: {transport: inline, num_workers: 1, "
                     f"envs_per_worker: 8}}\nrun_dir: {tmp_path / 'c'}\ntrain: {{curriculum: reverse, "
                     f"curriculum_demos: {demo_file}}}\n")
    with registered_plugin(ToyPlugin(), "toys"):
        assert main(["train", str(reach)]) == 2
    err = capsys.readouterr().err
    assert "needs an env that restores recorded simulator states" in err and len(err.strip().splitlines()) == 1
