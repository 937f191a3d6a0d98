"""Getting the ``libero`` package ready to import, in any process.

``libero`` 0.1.1 has three habits that break unattended use, each handled here
before its first import (env workers are spawned, so every worker runs this too):

* It asks on stdin where to put its datasets when ``$LIBERO_CONFIG_PATH/config.yaml``
  does not exist (and crashes without a terminal). We write that file ourselves,
  non-interactively, into a directory pushcut owns (:func:`config_dir`).
* It looks for its scene and object assets only at
  ``<site-packages>/libero/libero/assets`` (the config file's ``assets`` key is
  ignored) and downloads them from a model hub when they are missing. We resolve
  the assets directory from the env config or ``$PUSHCUT_LIBERO_ASSETS``, check
  it, and hand it to the package through its asset-path cache, so nothing is
  downloaded and the installed package is not modified.
* robosuite picks its OpenGL backend from ``$MUJOCO_GL`` once, at import. We set
  ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM`` from the ``gl_backend`` option first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pushcut.errors import EnvError
from pushcut.gl import resolve_backend

ASSETS_ENV_VAR = "PUSHCUT_LIBERO_ASSETS"
"""Environment variable naming the LIBERO assets directory (when ``env.assets_dir`` is empty)."""
CONFIG_DIR_ENV_VAR = "PUSHCUT_LIBERO_CONFIG_DIR"
"""Environment variable naming where pushcut writes LIBERO's config.yaml (default: a pushcut cache dir)."""

PROBE_DIR = "scenes"
"""A folder every assets directory has; its absence means a wrong directory (missing files inside
are named when a task's scene is built)."""


def package_root() -> Path:
    """``<site-packages>/libero/libero`` without importing it (importing may prompt)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise EnvError('the libero package is not installed: pip install "pushcut[libero]"')
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def config_dir() -> Path:
    """Where pushcut keeps LIBERO's config.yaml: ``$PUSHCUT_LIBERO_CONFIG_DIR``,
    else ``$XDG_CACHE_HOME/pushcut/libero`` (``~/.cache/pushcut/libero``)."""
    explicit = os.environ.get(CONFIG_DIR_ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pushcut" / "libero"


def write_libero_config(assets: Path | None = None) -> Path:
    """Write LIBERO's config.yaml (paths into the installed package) and point
    ``$LIBERO_CONFIG_PATH`` at it. Atomic, so concurrent workers never read half a file."""
    import yaml

    root = package_root()
    paths = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(assets if assets is not None else root / "assets"),  # informative: 0.1.1 ignores it
    }
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "config.yaml"
    text = yaml.safe_dump(paths, sort_keys=True)
    if not target.is_file() or target.read_text() != text:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    os.environ["LIBERO_CONFIG_PATH"] = str(directory)
    return target


# --------------------------------------------------------------------------- assets


def resolve_assets(configured: str = "") -> Path:
    """The assets directory to use: ``configured`` (``env.assets_dir``), else
    ``$PUSHCUT_LIBERO_ASSETS``, else the package's own ``libero/libero/assets``.
    Raises :class:`EnvError` naming the missing file and the fix."""
    if configured:
        where, candidate = "env.assets_dir", Path(configured).expanduser()
    elif os.environ.get(ASSETS_ENV_VAR, "").strip():
        where, candidate = f"${ASSETS_ENV_VAR}", Path(os.environ[ASSETS_ENV_VAR].strip()).expanduser()
    else:
        try:
            candidate = package_root() / "assets"
        except EnvError:
            candidate = Path("<site-packages>/libero/libero/assets")
        where = f"the libero package's own assets folder (neither env.assets_dir nor ${ASSETS_ENV_VAR} is set)"
    probe = candidate / PROBE_DIR
    if not probe.is_dir():
        raise EnvError(missing_assets_message(probe, where))
    return candidate.resolve()


def missing_assets_message(missing: Path | str, where: str = "") -> str:
    source = f" (looked in {where})" if where else ""
    return (
        f"LIBERO asset {str(missing)!r} not found{source}. The libero package does not ship its scene and "
        f"object assets: get LIBERO's assets folder (scenes/, textures/, *_objects/ from the upstream "
        f"Lifelong-Robot-Learning/LIBERO repository, libero/libero/assets) and point pushcut at it with "
        f"env.assets_dir=/path/to/assets or {ASSETS_ENV_VAR}=/path/to/assets (see docs/libero.md)"
    )


def asset_error(exc: BaseException, assets: Path) -> EnvError | None:
    """If ``exc`` (raised while building a LIBERO scene) is about a missing file,
    the :class:`EnvError` that names it; else None."""
    text = str(exc)
    for token in text.replace("'", " ").replace('"', " ").split():
        if "/" in token and not os.path.exists(token.rstrip(".,:;")):
            path = token.rstrip(".,:;")
            if str(assets) in path or path.endswith((".xml", ".obj", ".stl", ".png", ".msh")):
                return EnvError(missing_assets_message(path, str(assets)))
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return EnvError(missing_assets_message(exc.filename, str(assets)))
    return None


# --------------------------------------------------------------------------- import


def _select_backend(backend: str) -> None:
    """Set the GL platform before robosuite (which reads it once) is imported."""
    if "robosuite" in sys.modules:
        loaded = os.environ.get("MUJOCO_GL", "").strip().lower()
        if loaded and loaded != backend:
            raise EnvError(
                f"libero: gl_backend {backend!r} requested, but robosuite was already imported in this process "
                f"with MUJOCO_GL={loaded} and one process can use only one: set env.gl_backend to {loaded!r} "
                f"or 'auto', or start Python with MUJOCO_GL={backend}"
            )
        return
    platform = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if "OpenGL" in sys.modules and platform and platform != backend:
        raise EnvError(
            f"libero: gl_backend {backend!r} requested, but this process already loaded the {platform!r} OpenGL "
            f"platform: set env.gl_backend to {platform!r}, or start Python with MUJOCO_GL={backend}"
        )
    os.environ["MUJOCO_GL"] = backend
    os.environ["PYOPENGL_PLATFORM"] = backend


@dataclass(frozen=True)
class SuiteTask:
    """One LIBERO task as the benchmark lists it."""

    name: str
    """The BDDL file's stem, e.g. ``pick_up_the_black_bowl_..._on_the_plate``."""
    instruction: str
    """The language the evaluation protocol gives the policy (the benchmark's ``task.language``)."""
    bddl_file: str
    """Absolute path of the task's BDDL file."""


def import_libero(gl_backend: str = "auto", assets: Path | None = None) -> Any:
    """Import ``libero.libero`` safely (see the module docstring) and return it."""
    _select_backend(resolve_backend(gl_backend))
    write_libero_config(assets)
    try:
        import libero.libero as lib
    except ModuleNotFoundError as exc:
        raise EnvError(f"libero could not be imported ({exc}): pip install \"pushcut[libero]\"") from exc
    if assets is not None:
        # libero 0.1.1 returns this cached path from get_assets_path() whenever it exists,
        # so the package never falls back to downloading.
        lib._assets_path_cache = str(assets)
    return lib


def suite_tasks(suite: str) -> list[SuiteTask]:
    """The tasks of ``suite`` in LIBERO's benchmark order (task order 0, as the
    published evaluations use). Needs no assets and no GL."""
    write_libero_config()
    with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its task order
        from libero.libero import benchmark

        bench = benchmark.get_benchmark_dict()[suite]()
    root = package_root() / "bddl_files"
    return [
        SuiteTask(t.name, t.language, str(root / t.problem_folder / t.bddl_file))
        for t in bench.tasks
    ]


def init_states(suite: str, task_name: str) -> np.ndarray:
    """The stored initial states (N, state_dim) of one task (flattened MuJoCo states)."""
    import torch

    path = package_root() / "init_files" / suite / f"{task_name}.pruned_init"
    if not path.is_file():
        raise EnvError(f"libero: initial-state file {str(path)!r} is missing from the installed libero package; "
                       f"reinstall it: pip install --force-reinstall \"libero==0.1.1\"")
    return np.asarray(torch.load(path, weights_only=False))
