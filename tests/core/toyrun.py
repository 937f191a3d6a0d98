"""The core tests' one way to run the trainer on the toy env and policy and read back what it logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pushcut.configio import load_config
from pushcut.trainer import Trainer


def train(manager: Any, base: list[str], run_dir: str | Path, *overrides: str) -> tuple[Any, dict, list[dict]]:
    """``pushcut train`` with ``base`` + ``run_dir`` + ``overrides`` on ``manager``'s plugins:
    (the resolved config, the summary, every metrics.jsonl line)."""
    cfg = load_config(None, [*base, f"run_dir={run_dir}", *overrides], manager)
    summary = Trainer(cfg, manager).run()
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return cfg, summary, lines
