"""What a run directory holds, named once.

Every module that reads or writes a run's files asks a :class:`RunDir` for the
path, so the layout below is the whole truth (README's "What a run directory
carries" describes it for users)::

    config.yaml          the resolved config (run_dir: . and run-relative paths)
    metrics.jsonl        one line per RL iteration          tb/  TensorBoard
    checkpoints/step_N/  policy/, trainer.pt, manifest.json
    evals/step_N.json    each periodic evaluation            eval.json  `pushcut eval`
    videos/*.mp4         rollout videos                      success.png, stages.png
    demos.hdf5           quickstart demonstrations           sft/policy/, sft_metrics.jsonl
    summary.json         the quickstart's before/after report
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
STEP_DIR = re.compile(r"^step_(\d+)$")
"""A checkpoint directory's name."""


def step_name(step: int) -> str:
    """``step_000010``: how a step names its checkpoint and evaluation report."""
    return f"step_{step:06d}"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created until a writer needs it)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    def eval_report(self, step: int) -> Path:
        """The periodic evaluation at iteration ``step``."""
        return self.evals / f"{step_name(step)}.json"

    @property
    def eval_json(self) -> Path:
        """What ``pushcut eval`` writes."""
        return self.root / "eval.json"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def success_plot(self) -> Path:
        return self.root / "success.png"

    @property
    def stages_plot(self) -> Path:
        return self.root / "stages.png"

    @property
    def demos(self) -> Path:
        """The quickstart's recorded demonstrations."""
        return self.root / "demos.hdf5"

    @property
    def sft_policy(self) -> Path:
        """Where SFT saves the cold-start policy (what ``train.init_from`` takes)."""
        return self.root / "sft" / "policy"

    @property
    def sft_metrics(self) -> Path:
        return self.root / "sft_metrics.jsonl"

    @property
    def summary(self) -> Path:
        """The quickstart's before/after report."""
        return self.root / "summary.json"


CHECKPOINT_POLICY = "policy"
"""Inside a checkpoint: the directory ``Policy.save`` writes."""
CHECKPOINT_STATE = "trainer.pt"
"""Inside a checkpoint: optimizer, sampler, generator and RNG state."""
CHECKPOINT_MANIFEST = "manifest.json"
"""Inside a checkpoint: sizes and SHA-256 of every file, written last."""
