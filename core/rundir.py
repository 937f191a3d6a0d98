"""What a run directory holds, named once, and when a run in it may continue.

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

:meth:`RunDir.save_config` / :meth:`RunDir.load_config` write and read ``config.yaml`` so that
the directory survives ``cp -r``, ``mv`` and a change of working directory;
:meth:`RunDir.check_continues` refuses to continue a run with a config that changes what it
learns (:data:`RESUME_SAFE` lists what may change).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushcut.config import PluginChoice, RunConfig
from pushcut.configio import apply_overrides, dump_config, read_yaml, resolve, to_dict
from pushcut.errors import ConfigError

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

    # ------------------------------------------------------------------ its config

    def save_config(self, config: RunConfig) -> Path:
        """Write ``config.yaml`` atomically, with ``run_dir: .`` and paths relative to the run
        directory where they point inside it, absolute elsewhere (see :meth:`load_config`)."""
        return _save(config, self.root)

    def load_config(self, overrides: Sequence[str] = (), manager: Any | None = None) -> RunConfig:
        """The config of the run here (its config.yaml < overrides): ``run_dir`` is this directory,
        and relative paths recorded in the file resolve against it (a path given as an override is
        relative to the working directory, as on any command line). An explicit ``run_dir=`` naming
        another directory is refused: copy the run to fork it."""
        return _load(self.root, overrides, manager)

    def check_continues(self, config: RunConfig, allowed: Sequence[str] | None = None, manager: Any | None = None,
                        only: Sequence[str] | None = None) -> None:
        """Refuse to continue the run here with a config that would change what it learns (``allowed``:
        what may change, default :data:`RESUME_SAFE`; ``only``: just these keys or sections, the ones
        the run's finished stages depend on). A directory without a config passes."""
        _check_continues(config, self.root, RESUME_SAFE if allowed is None else allowed, manager, only)


CHECKPOINT_POLICY = "policy"
"""Inside a checkpoint: the directory ``Policy.save`` writes."""
CHECKPOINT_STATE = "trainer.pt"
"""Inside a checkpoint: optimizer, sampler, generator and RNG state."""
CHECKPOINT_MANIFEST = "manifest.json"
"""Inside a checkpoint: sizes and SHA-256 of every file, written last."""


# --------------------------------------------------------------------------- resuming and portable paths


RESUME_SAFE = (
    "run_dir", "train.iterations", "train.eval_every", "train.save_every", "train.keep_checkpoints", "train.device",
    "train.torch_threads", "train.resume", "train.init_from", "train.eval_at_start", "rollout.num_workers",
    "rollout.envs_per_worker", "rollout.step_timeout_s", "rollout.pipeline", "rollout.transport",
    "rollout.startup_timeout_s", "train.backend", "train.learners",
    "train.learner_num_cpus", "train.strategy", "train.offload", "train.activation_checkpointing",
    "rollout.inference", "eval", "sft",
)
"""Keys (or whole sections) a run may change when it continues: how long it runs, how often it
evaluates and saves, on what hardware, and how it is evaluated; never what it learns from or how."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(saved: RunConfig, new: RunConfig, allowed: Sequence[str] = RESUME_SAFE,
                   only: Sequence[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every key that differs, is not in ``allowed`` (a key,
    or a section that allows all of its keys) and, when ``only`` is given, is in ``only``."""
    old, now = _flatten(to_dict(saved)), _flatten(to_dict(new))
    changes = {}
    for key in dict.fromkeys([*old, *now]):
        if old.get(key) != now.get(key) and not _under(key, allowed) and (only is None or _under(key, only)):
            changes[key] = (old.get(key), now.get(key))
    return changes


# --------------------------------------------------------------------------- paths in a run directory
#
# A run directory must survive `cp -r`, `mv` and a change of working directory. Its config.yaml
# therefore records ``run_dir: .`` and every path field (a dataclass field with metadata
# {"path": True}, in the core sections or a plugin's own config) relative to the run directory
# when it points inside it, absolute otherwise. Loading a run directory resolves them against the
# directory it was loaded from, whatever it was called when the run began.

def _path_fields(config: Any, prefix: str = ""):
    """(object, field name, dotted key, link) of every path field in a resolved config, plugin options
    included; ``link``: metadata ``{"path": "link"}``, a path whose symlinks must be kept (a venv's
    ``bin/python`` links to the base interpreter: resolving it would leave the venv)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("path"):
            yield config, f.name, prefix + f.name, f.metadata["path"] == "link"
        elif isinstance(value, PluginChoice) and dataclasses.is_dataclass(value.options):
            yield from _path_fields(value.options, f"{prefix}{f.name}.")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _path_fields(value, f"{prefix}{f.name}.")


def _map_paths(config: RunConfig, fn, skip: Sequence[str] = ()) -> RunConfig:
    """A copy of ``config`` with ``fn(path, link)`` applied to every non-empty path (one string, or
    each of a list), except the fields whose dotted keys are in ``skip``."""
    config = copy.deepcopy(config)
    for obj, name, key, link in _path_fields(config):
        value = getattr(obj, name)
        if key in skip:
            continue
        if isinstance(value, (list, tuple)):
            setattr(obj, name, type(value)(fn(v, link) if v else v for v in value))
        elif value:
            setattr(obj, name, fn(value, link))
    return config


def _absolute(path: str | Path, link: bool = False) -> Path:
    """``path`` made absolute; with ``link`` its symlinks are kept (see :func:`_path_fields`)."""
    expanded = Path(path).expanduser()
    return Path(os.path.abspath(expanded)) if link else expanded.resolve()


def _relative_to_run(path: str, run_dir: Path, link: bool = False) -> str:
    absolute = _absolute(path, link)
    try:
        return str(absolute.relative_to(_absolute(run_dir, link)))
    except ValueError:
        return str(absolute)


def _load(run_dir: Path, overrides: Sequence[str] = (), manager: Any | None = None) -> RunConfig:
    """The config of the run in ``run_dir`` (its config.yaml < overrides): ``run_dir`` is the
    directory given, and relative paths recorded in the file resolve against it (a path given as
    an override is relative to the working directory, as on any command line). An explicit
    ``run_dir=`` naming another directory is refused: copy the run to fork it."""
    run_dir = Path(run_dir)
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"{str(run_dir)!r} is a directory without {CONFIG_FILE}: pass a config file or a run "
                          "directory")
    keys = {o.split("=", 1)[0].strip(): o.split("=", 1)[1] for o in overrides if "=" in o}
    asked = keys.get("run_dir")
    if asked is not None and Path(asked).expanduser().resolve() != run_dir.resolve():
        raise ConfigError(
            f"run_dir={asked} differs from the run directory given ({run_dir}): a run trains and evaluates in "
            f"its own directory; to fork it, copy it first (cp -r {run_dir} {asked}) and pass the copy"
        )
    data = apply_overrides(read_yaml(saved), overrides)
    data["run_dir"] = str(run_dir)
    config = resolve(data, manager)
    return _map_paths(config, lambda p, link: p if Path(p).is_absolute() else str(run_dir / p), skip=tuple(keys))


def _check_continues(config: RunConfig, run_dir: Path, allowed: Sequence[str] = RESUME_SAFE,
                     manager: Any | None = None, only: Sequence[str] | None = None) -> None:
    """Refuse to continue the run in ``run_dir`` with a config that would change what it learns
    (``only``: just these keys or sections, the ones the run's finished stages depend on)."""
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.is_file():
        return
    changes = config_changes(_absolute_paths(_load(Path(run_dir), manager=manager)), _absolute_paths(config),
                             allowed, only)
    if changes:
        listed = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in changes.items())
        raise ConfigError(
            f"{run_dir} holds a run made with another config, and running again continues it: {listed}. "
            f"Pick a fresh run_dir=..., or delete {run_dir} to start over"
        )


def _absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with every path absolute and ``run_dir`` absolute: two configs of one run compare equal
    wherever they were loaded from."""
    config = _map_paths(config, lambda p, link: str(_absolute(p, link)))
    config.run_dir = str(Path(config.run_dir).expanduser().resolve())
    return config


def _save(config: RunConfig, run_dir: Path) -> Path:
    """Write ``<run_dir>/config.yaml`` atomically, with ``run_dir: .`` and paths relative to the run
    directory where they point inside it, absolute elsewhere (see :meth:`RunDir.load_config`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    portable = _map_paths(config, lambda p, link: _relative_to_run(p, run_dir, link))
    portable.run_dir = "."
    target = run_dir / CONFIG_FILE
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(dump_config(portable))
    tmp.replace(target)
    return target
