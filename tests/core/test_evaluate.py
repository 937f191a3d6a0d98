"""Evaluation reports: per-task success and where failed episodes stopped."""

import pytest

from pushcut.commands import _print_eval
from pushcut.contracts import INFO_STAGE, NO_STAGE, TaskSpec
from pushcut.evaluate import format_stages, stage_reach, summarize
from pushcut.batch import Episode


def episode(task: str, success: bool, stage: str | None = None, failure: str | None = None) -> Episode:
    info = {} if stage is None else {INFO_STAGE: stage}
    return Episode(task, "do it", 0, 0, success=success, final_info=info, failure=failure)


def test_failures_are_counted_by_their_furthest_stage_in_the_tasks_order():
    episodes = [
        episode("lift", True, "lifted"),
        episode("lift", False, "lifted"),
        episode("lift", False, NO_STAGE),
        episode("lift", False, NO_STAGE),
        episode("lift", False, "grasped", failure="env crashed"),  # lost episodes are not failures of the policy
        episode("press", False, "touched"),
        episode("reach", False),
    ]
    report = summarize(episodes, {"lift": ("grasped", "lifted"), "press": ("touched",), "reach": ()})
    lift = report["per_task"]["lift"]
    assert lift["successes"] == 1 and lift["episodes"] == 4 and lift["failed"] == 1
    assert list(lift["failures_by_stage"].items()) == [(NO_STAGE, 2), ("grasped", 0), ("lifted", 1)]
    assert report["per_task"]["press"]["failures_by_stage"] == {NO_STAGE: 0, "touched": 1}
    assert "failures_by_stage" not in report["per_task"]["reach"]  # an env without stages reports none
    assert format_stages(lift["failures_by_stage"]) == "none 2 · grasped 0 · lifted 1"


def test_stage_reach_counts_every_episode_that_got_at_least_that_far():
    episodes = [
        episode("lift", True, "grasped"),  # a success reaches every stage, whatever its last info says
        episode("lift", False, "lifted"),
        episode("lift", False, "grasped"),
        episode("lift", False, NO_STAGE),
        episode("lift", False, "lifted", failure="worker timed out"),  # lost: not counted
        episode("reach", True),
    ]
    reach = stage_reach(episodes, {"lift": ("grasped", "lifted"), "reach": (), "press": ("touched",)})
    assert reach == {"lift": {"grasped": 0.75, "lifted": 0.5}}  # no stages or no episodes: no entry


def test_the_eval_table_shows_stages_only_where_the_env_names_them(capsys):
    staged = summarize([episode("lift", False, "grasped")], {"lift": ("grasped", "lifted")})
    staged.update(temperature=0.0, split="eval")
    _print_eval(staged)
    assert "failures by furthest stage" in capsys.readouterr().out
    plain = summarize([episode("reach", False)])
    plain.update(temperature=0.0, split="eval")
    _print_eval(plain)
    assert "stage" not in capsys.readouterr().out


@pytest.mark.parametrize("stages", [("grasped", "grasped"), (NO_STAGE, "lifted")])
def test_task_stages_must_be_distinct_and_not_none(stages):
    with pytest.raises(ValueError, match="must be distinct"):
        TaskSpec("lift", "pick it up", 4, (0, 1), (2, 3), 10, stages=stages)


def test_lost_episodes_are_a_warning_line_and_marked_rows_never_only_fewer_episodes(capsys):
    killed = "env worker 1 crashed (exit -9, killed: out of memory?); restarted it"
    episodes = [episode("pick", True), episode("pick", False), episode("pick", False, failure=killed),
                episode("pick", False, failure=killed), episode("door", True)]
    report = summarize(episodes)
    assert report["failed"] == 2 and report["per_task"]["pick"]["lost"] == {killed: 2}
    _print_eval(report)
    out = capsys.readouterr()
    pick_row = next(line for line in out.out.splitlines() if line.startswith("pick"))
    door_row = next(line for line in out.out.splitlines() if line.startswith("door"))
    assert "(2 lost)" in pick_row and "lost" not in door_row
    (warning,) = [line for line in out.err.splitlines() if "lost" in line]
    assert "2 episode(s) were lost" in warning and "killed" in warning and "envs_per_worker" in warning
