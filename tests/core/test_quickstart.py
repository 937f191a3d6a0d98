"""The main job end to end on a very small budget: every artefact it promises is written."""

import json
import re

import pytest

from pushcut.errors import ConfigError
from pushcut.quickstart import default_config_path, run_quickstart

SMALL = [
    "env.tasks=[press_button, close_drawer]", "env.num_init_states=12", "env.num_eval_init_states=3",
    "sft.demos_per_task=1", "sft.steps=6", "sft.batch_size=8", "train.iterations=2", "train.eval_every=1",
    "train.batch_size=2", "algo.group_size=2", "rollout.num_workers=1", "rollout.envs_per_worker=4",
    "train.max_sample_rounds=1", "eval.videos_per_task=1",
]


def test_default_config_ships_with_the_package():
    assert default_config_path().is_file()


@pytest.mark.slow
def test_quickstart_writes_summary_curve_videos(tmp_path, capsys):
    run_dir = tmp_path / "qs"
    summary = run_quickstart([*SMALL, f"run_dir={run_dir}"])
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["per_task"].keys() == {"press_button", "close_drawer"}
    for row in on_disk["per_task"].values():
        assert 0 <= row["sft_success"] <= 1 and 0 <= row["rl_success"] <= 1 and row["episodes"] == 3
        for when in ("sft", "rl"):  # every failed episode is counted at the furthest stage it reached
            stages = row[f"{when}_failures_by_stage"]
            assert list(stages)[0] == "none" and len(stages) >= 2
            assert sum(stages.values()) == round(3 * (1 - row[f"{when}_success"]))
    assert on_disk["eval_steps"] == [0, 1, 2] and on_disk["seeds"]["run"] == 0
    rollouts = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rollouts = [row for row in rollouts if "rollout/success_rate" in row]
    for row in rollouts:  # the share of rollouts reaching each stage: from the first stage down, never rising
        press = row["rollout/reached/press_button/touched"]
        assert row["rollout/success/press_button"] <= press <= 1
        opened = [row[f"rollout/reached/close_drawer/{stage}"] for stage in ("touched", "moved")]
        assert opened == sorted(opened, reverse=True) and row["rollout/success/close_drawer"] <= opened[-1]
    assert summary["rl_success"] == on_disk["rl_success"]
    assert (run_dir / "success.png").stat().st_size > 5000 and (run_dir / "stages.png").stat().st_size > 5000
    assert len(on_disk["videos"]) == 2 and (run_dir / "demos.hdf5").is_file()
    out = capsys.readouterr().out
    assert "SFT+RL" in out and "press_button" in out and "improvement" in out and "furthest stage" in out
    # a second run resumes: stages with outputs are skipped, the finished RL run is not repeated
    again = run_quickstart([*SMALL, f"run_dir={run_dir}"])
    assert again["rl_success"] == summary["rl_success"]
    # a rerun that would change what the run learns from says so instead of continuing it
    for change, found in (("env.jitter=null", "env.jitter: 0.03 there, None now"),
                          ("sft.steps=7", "sft.steps: 6 there, 7 now"),
                          ("sft.demo_noise=0.2", "sft.demo_noise: 0.0 there, 0.2 now")):
        with pytest.raises(ConfigError, match=re.escape(found)):
            run_quickstart([*SMALL, f"run_dir={run_dir}", change])
    # demos copied into a directory without the run's config: the demo file itself is checked
    (run_dir / "config.yaml").unlink()
    for change, found in (("sft.demo_noise=0.2", "sft.demo_noise=0"), ("sft.demos_per_task=2", "sft.demos_per_task=1,")):
        with pytest.raises(ConfigError, match=re.escape("holds demos recorded with ") + ".*" + re.escape(found)):
            run_quickstart([*SMALL, f"run_dir={run_dir}", change])
    assert not (run_dir / "config.yaml").exists()  # a refused rerun leaves no config behind to block the next


@pytest.mark.slow
def test_quickstart_with_the_wrist_camera_clones_from_the_wrist_frames_it_recorded(tmp_path):
    # Only the env and the policy are told; SFT learns which demo key holds the wrist frames from
    # the file the quickstart recorded (without that, its first batch has no wrist images).
    run_dir = tmp_path / "wrist"
    wrist = ["env.wrist_camera=true", "policy.use_wrist_image=true", "train.iterations=1"]
    summary = run_quickstart([*SMALL, *wrist, f"run_dir={run_dir}"])
    assert set(summary["per_task"]) == {"press_button", "close_drawer"}
    assert "wrist_image_key: wrist_image" in (run_dir / "config.yaml").read_text()
    saved = json.loads((run_dir / "sft" / "policy" / "pushcut_policy.json").read_text())
    assert saved["config"]["use_wrist_image"] is True
