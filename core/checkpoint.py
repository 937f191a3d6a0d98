"""Atomic checkpoints with exact resume.

``<run_dir>/checkpoints/step_000010/`` holds ``policy/`` (written by
``Policy.save``) and ``trainer.pt`` (optimizer, RNG states, sampler position,
step). It is written under a temporary name and renamed into place, so a kill
at any moment leaves either the previous checkpoint or the new one — never a
half-written one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pushcut.contracts import Policy
from pushcut.errors import CheckpointError

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


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


def save_checkpoint(run_dir: Path, step: int, policy: Policy, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the ``keep`` newest."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    policy.save(tmp / "policy")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "trainer.pt")
    if final.exists():  # re-saving a step (after a resume): replace it
        old = root / f".old-step_{step:06d}-{os.getpid()}"
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
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
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
    file = Path(path) / "trainer.pt"
    if not file.is_file():
        raise CheckpointError(f"{str(path)!r} is not a pushcut checkpoint: no trainer.pt inside")
    return torch.load(file, weights_only=False)
