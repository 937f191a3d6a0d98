"""The RL loop on a toy env/policy defined for the engine: success rises from
the engine alone; an interrupted run resumes to the same result; bad cases are
counted, never silently trained on."""

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pushcut import hookimpl
from pushcut.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from pushcut.config import TrainConfig
from pushcut.errors import CheckpointError, ConfigError
from pushcut.rundir import RunDir
from pushcut.testing import registered_plugin
from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv, ToyPlugin
from pushcut.learner import warmup_lr
from toyrun import train


BASE = [
    "env.type=reach", "policy.type=bins", "algo.temperature=1.0", "train.lr=0.03", "train.batch_size=8",
    "train.minibatch_size=32", "rollout.num_workers=1", "rollout.envs_per_worker=16", "rollout.transport=inline",
]


@pytest.fixture
def manager():
    with registered_plugin(ToyPlugin(), "toys") as m:
        yield m


def run(manager, tmp_path, name, *overrides):
    return train(manager, BASE, tmp_path / name, *overrides)


def test_success_rises_from_the_engine_alone(manager, tmp_path):
    _, summary, lines = run(manager, tmp_path, "rise", "train.iterations=10", "train.eval_every=5",
                            "rollout.transport=process", "rollout.num_workers=2", "rollout.envs_per_worker=8")
    evals = [r["eval/success_rate"] for r in lines if "eval/success_rate" in r]
    assert len(evals) == 3  # before training, at 5, at 10
    assert evals[-1] >= evals[0] + 0.25, evals
    rollout = [r["rollout/success_rate"] for r in lines if "rollout/success_rate" in r]
    assert np.mean(rollout[-3:]) > np.mean(rollout[:3]) + 0.1, rollout
    assert summary["status"] == "completed"


def test_metrics_tensorboard_config_and_eval_files(manager, tmp_path):
    cfg, _, lines = run(manager, tmp_path, "files", "train.iterations=2", "train.eval_every=0")
    rec = lines[-1]
    for key in ("step", "rollout/success_rate", "rollout/groups_total", "rollout/groups_kept", "rollout/episodes",
                "rollout/env_steps", "actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy",
                "actor/grad_norm", "time/rollout_s", "time/update_s", "eval/success_rate"):
        assert key in rec, key
    assert rec["rollout/episodes"] >= 8 * 8 and rec["actor/entropy"] > 0
    run_dir = tmp_path / "files"
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "evals" / "step_000002.json").is_file()
    assert (run_dir / "success.png").stat().st_size > 5000  # every finished run draws its curves
    assert not (run_dir / "stages.png").exists()  # the toy env names no stages
    again = RunDir(run_dir).load_config([], manager)
    assert again.run_dir == str(run_dir) and dataclasses.replace(again, run_dir=cfg.run_dir) == cfg
    # RunDir names exactly what the run wrote: nothing elsewhere, nothing it names missing
    paths = RunDir(run_dir)
    named = [paths.config, paths.metrics, paths.tensorboard, paths.checkpoint(2), paths.eval_report(0),
             paths.eval_report(2), paths.success_plot, paths.videos]
    assert all(p.exists() for p in named), [p for p in named if not p.exists()]
    top = {p.relative_to(run_dir).parts[0] for p in named}
    assert {p.name for p in run_dir.iterdir()} == top
    assert {p.name for p in paths.checkpoint(2).iterdir()} == {"policy", "trainer.pt", "manifest.json"}


class Interrupt:
    """Raises KeyboardInterrupt after the rollout of a given iteration (mid-iteration kill)."""

    def __init__(self, at):
        self.at = at

    @hookimpl
    def pushcut_after_rollout(self, run_dir, step, metrics):
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("extra", [[], ["train.lr_warmup_steps=6", "train.start_sampling=mixed"]],
                         ids=["recipe", "lr-warmup-mixed-sampling"])
def test_interrupted_run_resumes_to_the_same_result(manager, tmp_path, extra):
    common = ["train.iterations=4", "train.save_every=1", "train.eval_every=2", "eval.max_init_states=4", *extra]
    run(manager, tmp_path, "straight", *common)
    with registered_plugin(Interrupt(3), "interrupt", manager):
        with pytest.raises(KeyboardInterrupt):
            run(manager, tmp_path, "resumed", *common)
    assert latest_checkpoint(tmp_path / "resumed").name == "step_000002"
    _, summary, lines = run(manager, tmp_path, "resumed", *common)
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop(r) for r in lines] == [drop(r) for r in straight]
    if extra:  # mixed sampling logs where it sends the next rollouts; the warmup ramps the rate up
        weights = [v for k, v in lines[-1].items() if k.startswith("rollout/draw_weight/")]
        assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)
        rates = [r["actor/lr"] for r in lines if "actor/lr" in r]
        assert rates[0] < rates[-1] and rates == sorted(rates)
    a = torch.load(tmp_path / "straight/checkpoints/step_000004/policy/bin_policy.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "resumed/checkpoints/step_000004/policy/bin_policy.pt", weights_only=True)["state"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert len(list_checkpoints(tmp_path / "resumed")) == 2  # keep_checkpoints


def test_lr_warmup_is_linear_and_follows_the_optimizer_state():
    weight = torch.nn.Parameter(torch.zeros(3))
    train = TrainConfig(lr=0.1, lr_warmup_steps=4)
    optimizer = torch.optim.AdamW([weight], lr=train.lr)

    def step(opt):
        weight.grad = torch.ones(3)
        warmup_lr(opt, train)
        opt.step()
        return opt.param_groups[0]["lr"]

    assert [step(optimizer) for _ in range(2)] == pytest.approx([0.025, 0.05])
    # a fresh optimizer loaded from the saved state continues the ramp instead of restarting it
    resumed = torch.optim.AdamW([weight], lr=train.lr)
    resumed.load_state_dict(optimizer.state_dict())
    assert [step(resumed) for _ in range(3)] == pytest.approx([0.075, 0.1, 0.1])
    # without warmup the configured rate is left alone
    plain = torch.optim.AdamW([weight], lr=0.1)
    warmup_lr(plain, TrainConfig(lr=0.1))
    assert plain.param_groups[0]["lr"] == 0.1


def test_a_continued_run_refuses_a_config_that_changes_what_it_learns(manager, tmp_path):
    run(manager, tmp_path, "run", "train.iterations=1")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"algo.clip_ratio_high: 0.28 there, 0.3 now"):
        run(manager, tmp_path, "run", "train.iterations=2", "algo.clip_ratio_high=0.3")
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # untouched: the run can still continue
    assert latest_checkpoint(tmp_path / "run").name == "step_000001"
    run(manager, tmp_path, "run", "train.iterations=2", "eval.max_init_states=2")  # longer, evaluated on fewer
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"


def test_partial_checkpoint_is_ignored(manager, tmp_path):
    run(manager, tmp_path, "partial", "train.iterations=1")
    leftover = tmp_path / "partial" / "checkpoints" / ".tmp-step_000002-123"
    leftover.mkdir()
    (leftover / "trainer.pt").write_bytes(b"truncated")
    assert latest_checkpoint(tmp_path / "partial").name == "step_000001"
    run(manager, tmp_path, "partial", "train.iterations=2")
    assert not leftover.exists() and latest_checkpoint(tmp_path / "partial").name == "step_000002"


def test_unfillable_batch_warns_and_skips_update(manager, tmp_path, caplog):
    # a huge tolerance: every episode succeeds at once, so no group has mixed outcomes
    _, _, lines = run(manager, tmp_path, "easy", "train.iterations=1", "env.tolerance=5.0",
                      "train.max_sample_rounds=2", "train.eval_at_start=false")
    rec = lines[-1]
    assert rec["rollout/groups_kept"] == 0 and rec["rollout/groups_total"] == 16 and rec["rollout/sample_rounds"] == 2
    assert rec["actor/skipped_updates"] == 1.0 and "actor/pg_loss" not in rec
    assert "dynamic sampling cap hit" in caplog.text


def test_crashing_env_groups_are_excluded_and_reported(tmp_path, caplog):
    from faulty_reach import FaultyToyPlugin

    with registered_plugin(FaultyToyPlugin(), "toys") as manager:
        _, _, lines = run(manager, tmp_path, "crash", "train.iterations=1", "env.crash_on_init_state=0",
                          "env.num_init_states=3", "env.num_eval=1", "train.eval_at_start=false")
    rec = lines[-1]
    assert rec["rollout/episodes_failed"] > 0 and rec["rollout/groups_failed"] > 0
    assert "episode dropped" in caplog.text


class NaNLossPolicy(BinPolicy):
    def log_probs(self, obs, sample, temperature):
        scores = super().log_probs(obs, sample, temperature)
        scores.log_probs = scores.log_probs * float("nan")
        return scores


def test_nan_loss_skips_the_update_and_keeps_weights(manager, tmp_path, caplog):
    class P:
        @hookimpl
        def pushcut_register_policies(self, registry):
            registry.add("nanpol", BinPolicyConfig, NaNLossPolicy)

    with registered_plugin(P(), "nanpol", manager):
        cfg, _, lines = run(manager, tmp_path, "nan", "policy.type=nanpol", "train.iterations=1",
                            "train.eval_at_start=false")
    assert lines[-1]["actor/skipped_updates"] >= 1 and lines[-1]["actor/optimizer_steps"] == 0
    state = torch.load(tmp_path / "nan/checkpoints/step_000001/policy/bin_policy.pt", weights_only=True)["state"]
    fresh = BinPolicy(BinPolicyConfig()).state_dict()
    for k in fresh:
        torch.testing.assert_close(state[k], fresh[k])
    assert "non-finite" in caplog.text


def test_cli_train_then_eval_writes_report_and_videos(manager, tmp_path, capsys):
    from pushcut.cli import main

    cfg_file = tmp_path / "reach.yaml"
    cfg_file.write_text("env: {type: reach}\npolicy: {type: bins}\ntrain: {iterations: 1, eval_at_start: false}\n"
                        f"rollout: {{transport: inline, num_workers: 1, envs_per_worker: 8}}\nrun_dir: {tmp_path / 'cli'}\n")
    assert main(["train", str(cfg_file)]) == 0
    assert main(["eval", str(tmp_path / "cli"), "eval.videos_per_task=1"]) == 0
    report = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert set(report["per_task"]) == {"reach_0", "reach_1"}
    assert all(r["episodes"] == 10 for r in report["per_task"].values())
    videos = sorted((tmp_path / "cli" / "videos").glob("eval_*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 0 for v in videos)
    import imageio.v2 as imageio

    frames = imageio.mimread(str(videos[0]))
    assert len(frames) >= 1 and frames[0].shape[2] == 3
    # a checkpoint directory works as well; a random directory is a one-line error
    assert main(["eval", str(tmp_path / "cli" / "checkpoints" / "step_000001")]) == 0
    assert main(["eval", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_cli_eval_takes_a_policy_directory_and_the_train_split(manager, tmp_path, capsys):
    from pushcut.cli import main

    run_dir = tmp_path / "r"
    cfg_file = tmp_path / "reach.yaml"
    cfg_file.write_text("env: {type: reach}\npolicy: {type: bins}\ntrain: {iterations: 1, eval_at_start: false}\n"
                        f"rollout: {{transport: inline, num_workers: 1, envs_per_worker: 8}}\nrun_dir: {run_dir}\n")
    assert main(["train", str(cfg_file)]) == 0
    tasks = ReachEnv(ReachConfig()).tasks()
    policy_dir = run_dir / "checkpoints" / "step_000001" / "policy"
    assert main(["eval", str(policy_dir), "eval.split=train", "eval.videos_per_task=1"]) == 0
    assert "on the train split" in capsys.readouterr().out
    report = json.loads((run_dir / "eval.json").read_text())
    assert (report["split"], report["checkpoint"]) == ("train", str(policy_dir))
    assert {k: r["episodes"] for k, r in report["per_task"].items()} == {
        t.task_id: len(t.train_init_states) for t in tasks}
    # videos come from each task's first train state and say so in their names
    names = sorted(p.name for p in (run_dir / "videos").glob("eval_train_*.mp4"))
    assert [n.split("_init")[0] for n in names] == ["eval_train_reach_0", "eval_train_reach_1"]
    assert [int(n.split("_init")[1].split("_")[0]) for n in names] == [t.train_init_states[0] for t in tasks]
    # the default is the held-out split
    assert main(["eval", str(policy_dir), "eval.max_init_states=3"]) == 0
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["split"] == "eval" and report["episodes"] == 3 * len(tasks)
    assert main(["eval", str(run_dir), "eval.split=test"]) == 2
    assert "eval.split must be one of eval, train, got 'test'" in capsys.readouterr().err
    # a run directory without a checkpoint points at its SFT policy when it has one
    bare = tmp_path / "bare"
    (bare / "sft" / "policy").mkdir(parents=True)
    (bare / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["eval", str(bare)]) == 2
    assert f"pushcut eval {bare / 'sft' / 'policy'}" in capsys.readouterr().err
    # an empty directory inside a run directory is no policy
    (run_dir / "empty").mkdir()
    assert main(["eval", str(run_dir / "empty")]) == 2
    assert "nor a policy directory inside a run directory" in capsys.readouterr().err


def test_cli_eval_can_sample_several_episodes_per_state(manager, tmp_path, capsys):
    from pushcut.cli import main

    cfg_file = tmp_path / "reach.yaml"
    cfg_file.write_text("env: {type: reach}\npolicy: {type: bins}\ntrain: {iterations: 1, eval_at_start: false}\n"
                        f"rollout: {{transport: inline, num_workers: 1, envs_per_worker: 8}}\nrun_dir: {tmp_path / 'r'}\n")
    assert main(["train", str(cfg_file)]) == 0
    greedy_first = {t.task_id: t.eval_init_states[0] for t in ReachEnv(ReachConfig()).tasks()}
    assert main(["eval", str(tmp_path / "r"), "eval.temperature=1.0", "eval.samples_per_state=3",
                 "eval.videos_per_task=1"]) == 0
    assert "sampled at temperature 1, 3 episode(s) per start state" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert (report["temperature"], report["samples_per_state"]) == (1.0, 3)
    assert all(r["episodes"] == 30 for r in report["per_task"].values())
    # one video per task, of the first episode from that task's first eval state
    names = sorted(p.name for p in (tmp_path / "r" / "videos").glob("eval_*.mp4"))
    assert [n.split("_init")[0] for n in names] == ["eval_T1_reach_0", "eval_T1_reach_1"]
    assert all(f"_init{greedy_first[n[8:15]]}_" in n for n in names)
    # a sampled eval draws from its own seeded stream, so it repeats exactly
    assert main(["eval", str(tmp_path / "r"), "eval.temperature=1.0", "eval.samples_per_state=3"]) == 0
    again = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert again["per_task"] == report["per_task"]
    assert main(["eval", str(tmp_path / "r"), "eval.samples_per_state=2"]) == 2
    assert "needs eval.temperature > 0" in capsys.readouterr().err


def test_sampled_eval_during_training_leaves_the_rollouts_alone(manager, tmp_path):
    common = ["train.iterations=3", "train.eval_every=1", "eval.max_init_states=4"]
    _, _, greedy = run(manager, tmp_path, "greedy", *common)
    _, _, sampled = run(manager, tmp_path, "sampled", *common, "eval.temperature=1.0", "eval.samples_per_state=2")
    rollouts = lambda lines: [{k: v for k, v in r.items() if k.startswith(("rollout/", "actor/"))} for r in lines]  # noqa: E731
    assert rollouts(sampled) == rollouts(greedy)
    assert {r["eval/temperature"] for r in sampled if "eval/temperature" in r} == {1.0}
    assert sum(r["eval/episodes"] for r in sampled if "eval/episodes" in r) == 2 * sum(
        r["eval/episodes"] for r in greedy if "eval/episodes" in r)


def test_fresh_run_refuses_to_mix_with_old_checkpoints(manager, tmp_path, capsys):
    from pushcut.errors import ConfigError

    run(manager, tmp_path, "mix", "train.iterations=1", "train.eval_at_start=false")
    with pytest.raises(ConfigError, match="already holds checkpoints and train.resume=false"):
        run(manager, tmp_path, "mix", "train.iterations=1", "train.resume=false")


def test_half_written_metrics_line_and_interrupted_resave_are_recovered(manager, tmp_path):
    from pushcut.checkpoint import clean_partial

    run(manager, tmp_path, "torn", "train.iterations=1", "train.eval_at_start=false")
    with (tmp_path / "torn" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "rollout/succ')  # killed mid-write
    ckpts = tmp_path / "torn" / "checkpoints"
    (ckpts / "step_000001").rename(ckpts / ".old-step_000001-999")  # killed between the renames of a re-save
    clean_partial(tmp_path / "torn")
    assert latest_checkpoint(tmp_path / "torn").name == "step_000001"
    _, _, lines = run(manager, tmp_path, "torn", "train.iterations=2")
    assert [r["step"] for r in lines] == [1, 2]


def _digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_copied_or_moved_run_resumes_in_place_from_anywhere(manager, tmp_path, monkeypatch, caplog):
    from pushcut.cli import main

    monkeypatch.chdir(tmp_path)
    common = ["train.iterations=2", "train.save_every=1", "train.eval_every=0", "eval.max_init_states=2"]
    run(manager, tmp_path, "runs/original", *common)
    (tmp_path / "runs/original/sft/policy").mkdir(parents=True)  # a path inside the run, as the quickstart records
    cfg = RunDir(tmp_path / "runs/original").load_config([], manager)
    cfg.train.init_from = "runs/original/checkpoints/step_000001/policy"  # relative to the cwd when given
    RunDir(tmp_path / "runs/original").save_config(cfg)
    assert "init_from: checkpoints/step_000001/policy" in (tmp_path / "runs/original/config.yaml").read_text()
    before = _digests(tmp_path / "runs/original")
    shutil.copytree(tmp_path / "runs/original", tmp_path / "elsewhere/copy")
    shutil.copytree(tmp_path / "runs/original", tmp_path / "to_move")
    (tmp_path / "to_move").rename(tmp_path / "elsewhere/moved")
    (tmp_path / "other_cwd").mkdir()
    monkeypatch.chdir(tmp_path / "other_cwd")
    for name in ("copy", "moved"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pushcut"):
            assert main(["train", str(tmp_path / "elsewhere" / name), "train.iterations=3"]) == 0
        resumed_from = tmp_path / "elsewhere" / name / "checkpoints" / "step_000002"
        assert any(f"resuming from {resumed_from}" in r.getMessage() for r in caplog.records)
        steps = [json.loads(x)["step"] for x in (tmp_path / "elsewhere" / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3]
        assert latest_checkpoint(tmp_path / "elsewhere" / name).name == "step_000003"
        assert main(["eval", str(tmp_path / "elsewhere" / name)]) == 0
        assert (tmp_path / "elsewhere" / name / "eval.json").is_file()
    assert _digests(tmp_path / "runs/original") == before  # the original is untouched
    assert not (tmp_path / "other_cwd" / "runs").exists()  # and nothing was created relative to the cwd
    # run_dir= naming another directory than the one given is refused, with how to fork
    assert main(["train", str(tmp_path / "elsewhere/copy"), "run_dir=fork"]) == 2


def test_resume_skips_a_damaged_newest_checkpoint(manager, tmp_path, caplog):
    common = ["train.iterations=3", "train.save_every=1", "train.keep_checkpoints=3", "train.eval_every=0"]
    run(manager, tmp_path, "straight", *common)
    run(manager, tmp_path, "damaged", *common[:1], "train.iterations=2", *common[1:])
    newest = tmp_path / "damaged/checkpoints/step_000002"
    weights = next(p for p in (newest / "policy").iterdir() if p.is_file())
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated copy
    damaged_size = weights.stat().st_size
    with caplog.at_level(logging.WARNING, logger="pushcut.checkpoint"):
        _, summary, lines = run(manager, tmp_path, "damaged", *common)
    warnings = [r.getMessage() for r in caplog.records if "skipping damaged checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "step_000002" in warnings[0] and weights.name in warnings[0]
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop(r) for r in lines] == [drop(r) for r in straight]  # resumed from step 1: the same run
    kept = list((tmp_path / "damaged/checkpoints").glob("step_000002.damaged-*"))  # set aside, never deleted
    assert len(kept) == 1 and (kept[0] / "policy" / weights.name).stat().st_size == damaged_size
    assert verify_checkpoint(tmp_path / "damaged/checkpoints/step_000002") is None  # rewritten whole


def test_no_checkpoint_that_loads_is_one_clear_error(manager, tmp_path):
    run(manager, tmp_path, "broken", "train.iterations=1", "train.eval_every=0")
    (tmp_path / "broken/checkpoints/step_000001/trainer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"none of the 1 checkpoint\(s\) .* verifies and loads"):
        run(manager, tmp_path, "broken", "train.iterations=2", "train.eval_every=0")
