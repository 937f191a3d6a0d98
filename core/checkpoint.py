"""Atomic checkpoints with exact resume.

``<run_dir>/checkpoints/step_000010/`` holds ``policy/`` (written by
``Policy.save``), ``trainer.pt`` (optimizer, RNG states, sampler position,
step) and, from sharded learners, ``learner/`` (their model and optimizer shards,
``torch.distributed.checkpoint``; any world size reads them back). It is
written under a temporary name and renamed into place, so a kill
at any moment leaves either the previous checkpoint or the new one — never a
half-written one. ``manifest.json``, written last, lists every file with its
size and SHA-256: a checkpoint damaged later (a truncated copy, a bad disk) is
recognised, and resuming falls back to the newest one that verifies and loads
(:func:`resume_candidates`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pushcut.errors import CheckpointError
from pushcut.rundir import CHECKPOINT_MANIFEST, CHECKPOINT_STATE, STEP_DIR, RunDir, step_name

MANIFEST_FILE = CHECKPOINT_MANIFEST
log = logging.getLogger(__name__)


def checkpoint_dir(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], dict[str, Any]], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the ``keep`` newest. ``write(directory)``
    puts the learner's files there (``policy/``, a sharded state) and returns its entries of
    ``trainer.pt`` (:meth:`pushcut.learner.Learner.save`); ``state`` holds the driver's own."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = RunDir(run_dir).checkpoint(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    learner_state = write(tmp)
    torch.save({**state, **learner_state, "step": step, "rng": rng_state()}, tmp / CHECKPOINT_STATE)
    write_manifest(tmp)
    if final.exists() and verify_checkpoint(final) is not None:  # a damaged one that resume skipped: keep it aside
        kept = root / f"{final.name}.damaged-{int(time.time())}"
        final.rename(kept)
        log.warning("kept the damaged checkpoint %s as %s", final, kept)
    if final.exists():  # re-saving a step (after a resume): replace it
        old = root / f".old-{step_name(step)}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary leftovers are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clean_partial(run_dir: Path) -> None:
    """Remove temporary directories left by a checkpoint write that was killed."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".old-"):  # killed between the two renames of a re-save: the old one is whole
                final = root / p.name[len(".old-"):].rsplit("-", 1)[0]
                if not final.exists():
                    p.rename(final)
                    continue
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def load_trainer_state(path: Path) -> dict[str, Any]:
    file = Path(path) / CHECKPOINT_STATE
    if not file.is_file():
        raise CheckpointError(f"{str(path)!r} is not a pushcut checkpoint: no trainer.pt inside")
    return torch.load(file, weights_only=False)


# --------------------------------------------------------------------------- integrity


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> Path:
    """``manifest.json``: every file under ``directory`` with its size and SHA-256 (written last)."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    target = directory / MANIFEST_FILE
    target.write_text(json.dumps({"files": files}, indent=1) + "\n")
    return target


def verify_checkpoint(directory: Path) -> str | None:
    """None when ``directory`` matches its manifest, else what is wrong (one line). A checkpoint
    written before manifests existed has none and is taken as it is."""
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        return None if (directory / CHECKPOINT_STATE).is_file() else "no trainer.pt and no manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST_FILE} ({exc})"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def resume_candidates(run_dir: Path):
    """The run's checkpoints that verify, newest first. Each damaged one is skipped with one
    warning naming it and the reason; nothing is deleted. The caller loads a candidate and, if
    loading still fails, should warn and take the next one."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            yield ckpt
        else:
            log.warning("skipping damaged checkpoint %s: %s (left in place; resuming from an earlier one)",
                        ckpt, problem)
