"""The pictures of a run, drawn from its metrics and evaluation reports."""

import json
import logging

from pushcut.events import MetricsFile
from pushcut.plots import plot_run, trailing_mean


def test_stage_curves_average_each_metric_over_the_iterations_that_logged_it():
    records = [{"step": 1, "a": 0.0}, {"step": 2}, {"step": 3, "a": 1.0}, {"step": 4, "a": None}, {"step": 5, "a": 0.5},
               {"step": 6, "a": 1.0}]
    assert trailing_mean(records, "a", 2) == ([1, 3, 5, 6], [0.0, 0.5, 0.75, 0.75])


def test_a_run_without_stages_or_evaluations_still_gets_its_success_curve(tmp_path):
    metrics = MetricsFile(tmp_path)
    for step in (1, 2, 3):
        metrics.append({"step": step, "rollout/success_rate": 0.1 * step, "rollout/success/reach": 0.1 * step})
    assert plot_run(tmp_path, 1.6) == [tmp_path / "success.png"]  # no stage metrics: no stages.png
    assert (tmp_path / "success.png").stat().st_size > 5000


def test_a_picture_that_cannot_be_drawn_is_logged_not_raised(tmp_path, caplog):
    MetricsFile(tmp_path).append({"step": 1, "rollout/success_rate": 0.5, "rollout/reached/lift/grasped": 0.5})
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "step_000001.json").write_text(json.dumps({"step": 1}))  # no success_rate, no per_task
    with caplog.at_level(logging.WARNING, logger="pushcut"):
        assert plot_run(tmp_path, 1.0) == []
    assert "could not draw plot_curves" in caplog.text and "could not draw plot_stages" in caplog.text
