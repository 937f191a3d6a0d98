"""Where metrics go: ``metrics.jsonl`` (one JSON object per iteration),
TensorBoard event files (a built-in logger implemented on the same event hooks
a third-party logger plugin uses), and a live progress display."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from pushcut.hookspecs import hookimpl
from pushcut.rundir import RunDir


class MetricsFile:
    """Append-only ``metrics.jsonl``; on resume, lines past the checkpoint are dropped."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunDir(run_dir).metrics

    def truncate_after(self, step: int) -> None:
        """Keep records up to ``step`` (a line cut short by a kill is dropped)."""
        keep = [json.dumps(r) for r in self.read() if r["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)

    def append(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a half-written last line from a killed run
                continue
        return records


class TensorBoardLogger:
    """Built-in logger plugin: writes every metric to ``<run_dir>/tb``."""

    def __init__(self) -> None:
        self._writers: dict[Path, Any] = {}

    def _writer(self, run_dir: Path):
        if run_dir not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[run_dir] = SummaryWriter(str(RunDir(run_dir).tensorboard))
        return self._writers[run_dir]

    def _write(self, run_dir: Path, step: int, metrics: dict[str, float]) -> None:
        writer = self._writer(run_dir)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                writer.add_scalar(key, value, step)
        writer.flush()

    @hookimpl
    def pushcut_after_update(self, run_dir: Path, step: int, metrics: dict[str, float]) -> None:
        self._write(run_dir, step, metrics)

    @hookimpl
    def pushcut_after_eval(self, run_dir: Path, step: int, metrics: dict[str, float], videos: list[Path]) -> None:
        self._write(run_dir, step, metrics)

    @hookimpl
    def pushcut_run_end(self, run_dir: Path, summary: dict[str, Any]) -> None:
        writer = self._writers.pop(run_dir, None)
        if writer is not None:
            writer.close()


class Progress:
    """A live progress bar on a terminal; one line per iteration otherwise (CI logs)."""

    def __init__(self, total: int, description: str, start: int = 0) -> None:
        self.total, self.description = total, description
        self.live = sys.stderr.isatty()
        self._progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, completed=start, status="")
            self._progress.start()

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, status=text)

    def advance(self, step: int, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=text)
        elif step == self.total or step % max(1, self.total // 20) == 0:  # ~20 lines per stage in logs
            print(f"[{self.description}] {step}/{self.total} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
