"""Demonstrations in the robomimic / LIBERO HDF5 layout.

One file holds many demos::

    data/                      attrs: env, total (number of samples), problem_info (JSON, LIBERO)
      demo_0/                  attrs: num_samples, task_id, instruction, init_state
        actions                (L, action_dim) float32, env units
        obs/image              (L, H, W, 3) uint8   (LIBERO: obs/agentview_rgb)
        obs/wrist_image        (L, H, W, 3) uint8   (LIBERO: obs/eye_in_hand_rgb)
        obs/state              (L, D) float32       (LIBERO: obs/ee_states + obs/gripper_states …)
        states                 (L, S) float64       the simulator state before each action, when the env
                                                    restores states (pushcut.envcontract.RestoresState);
                                                    LIBERO's files hold its flattened MuJoCo states here
        rewards, dones         (L,)

``pushcut demos`` writes this layout from an env's scripted expert; ``pushcut
sft`` reads it — the same reader reads LIBERO's own demo files, with the obs
key names mapped by config. This module imports no torch: a simulator's own
venv can record, and so can the trainer's through the env transport
(:class:`pushcut.envpool.slot.SlotEnv`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pushcut.envcontract import Env, Observation, TaskSpec, can_restore_state
from pushcut.errors import DataError

SIM_STATES = "states"
"""A demo group's dataset of simulator states, (L, S): robomimic's and LIBERO's name."""


@dataclass
class Demo:
    """One demonstration: per-step observations and the actions taken from them."""

    task_id: str
    instruction: str
    images: np.ndarray
    """(L, H, W, 3) uint8"""
    actions: np.ndarray
    """(L, action_dim) float32"""
    states: np.ndarray | None = None
    """(L, D) float32"""
    wrist_images: np.ndarray | None = None
    """(L, H, W, 3) uint8"""
    init_state: int = -1
    sim_states: np.ndarray | None = None
    """(L, S) float64: the env's simulator state before each action (see
    :class:`pushcut.envcontract.RestoresState`), or None when the env does not offer it"""

    def __len__(self) -> int:
        return len(self.actions)


def record_expert_demo(env: Env, task: TaskSpec, init_state: int, max_steps: int | None = None,
                       noise: float = 0.0) -> tuple[Demo, bool]:
    """Run the env's scripted expert from ``init_state``; returns the demo and whether it succeeded.

    ``noise`` > 0 records DART-style demos: each executed action is the expert's
    plus Gaussian noise of that std (env action units, on every dimension, seeded
    by task and init state), while the demo keeps the expert's clean action as the label. The
    closed-loop expert then corrects the drift, so the demos show how to recover
    from states just off its own path.
    """
    obs: Observation = env.reset(task.task_id, init_state)
    rng = np.random.default_rng([zlib.crc32(task.task_id.encode()), init_state])
    frames: list[Observation] = []
    actions: list[np.ndarray] = []
    sim_states: list[np.ndarray] | None = [] if can_restore_state(env) else None
    success = False
    for _ in range(max_steps or task.max_steps):
        action = np.asarray(env.expert_action(), dtype=np.float32)
        frames.append(obs)
        if sim_states is not None:
            sim_states.append(np.asarray(env.get_state(), dtype=np.float64))
        actions.append(action)
        executed = action + rng.normal(0.0, noise, action.shape).astype(np.float32) if noise else action
        result = env.step(executed[None])
        obs = result.observation
        if result.success or result.done:
            success = result.success
            break
    stack = lambda key: np.stack([o[key] for o in frames]) if key in frames[0] else None  # noqa: E731
    demo = Demo(task.task_id, task.instruction, stack("image"), np.stack(actions), stack("state"),
                stack("wrist_image"), init_state, None if sim_states is None else np.stack(sim_states))
    return demo, success


def record_demos(
    env: Env, per_task: int, tasks: Sequence[str] = (), progress: Callable[[int, int], None] | None = None,
    noise: float = 0.0,
) -> tuple[list[Demo], dict[str, int]]:
    """``per_task`` successful expert demos per task from its *train* initial
    states (in order; failed attempts are skipped). Returns demos and attempts per task.
    ``noise``: DART execution noise, see :func:`record_expert_demo`."""
    specs = [t for t in env.tasks() if not tasks or t.task_id in tasks]
    demos, attempts = [], {}
    total = per_task * len(specs)
    for spec in specs:
        got = tried = 0
        for init_state in spec.train_init_states:
            if got == per_task:
                break
            demo, ok = record_expert_demo(env, spec, init_state, noise=noise)
            tried += 1
            if ok:
                demos.append(demo)
                got += 1
                if progress:
                    progress(len(demos), total)
        attempts[spec.task_id] = tried
        if got < per_task:
            raise DataError(f"the expert solved only {got} of {tried} train initial states of {spec.task_id!r}; "
                            f"asked for {per_task} demos")
    return demos, attempts


def record_demo_file(env: Env, env_name: str, per_task: int, path: str | Path,
                     noise: float = 0.0) -> tuple[Path, list[Demo]]:
    """Record ``per_task`` expert demos per task (DART ``noise``, see :func:`record_expert_demo`)
    with a progress display and write them to ``path``."""
    from pushcut.errors import ConfigError
    from pushcut.events import Progress

    progress = Progress(per_task * len(env.tasks()), "demos")
    try:
        demos, _ = record_demos(env, per_task, progress=lambda done, total: progress.advance(done, ""), noise=noise)
    except NotImplementedError as exc:
        raise ConfigError(f"env {env_name!r} cannot record demos: {exc}") from None
    finally:
        progress.close()
    return write_demos(path, demos, env_name=env_name, noise=noise), demos


def write_demos(path: str | Path, demos: Sequence[Demo], env_name: str = "", noise: float = 0.0) -> Path:
    """Write ``demos`` in the robomimic/LIBERO layout; ``noise`` (the DART std they were
    recorded with) goes into ``data.attrs["dart_noise"]``."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs["env"] = env_name
        data.attrs["total"] = int(sum(len(d) for d in demos))
        data.attrs["dart_noise"] = float(noise)
        for i, d in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs.update(num_samples=len(d), task_id=d.task_id, instruction=d.instruction, init_state=d.init_state)
            g.create_dataset("actions", data=d.actions.astype(np.float32))
            obs = g.create_group("obs")
            obs.create_dataset("image", data=d.images, compression="gzip")
            if d.wrist_images is not None:
                obs.create_dataset("wrist_image", data=d.wrist_images, compression="gzip")
            if d.states is not None:
                obs.create_dataset("state", data=d.states.astype(np.float32))
            if d.sim_states is not None:
                g.create_dataset(SIM_STATES, data=np.asarray(d.sim_states, dtype=np.float64))
            rewards = np.zeros(len(d), np.float32)
            rewards[-1] = 1.0
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=rewards.astype(np.uint8))
    tmp.replace(path)
    return path


@dataclass
class DemoKeys:
    """How a file's obs keys map to pushcut's observation (defaults: pushcut's own files)."""

    image: str = "image"
    wrist_image: str = ""
    state: tuple[str, ...] = ("state",)
    flip_images: bool = False


def _instruction(f, group, fallback: str) -> str:
    if "instruction" in group.attrs:
        return str(group.attrs["instruction"])
    info = f["data"].attrs.get("problem_info")
    if info is not None:
        try:
            return json.loads(info)["language_instruction"]
        except (ValueError, KeyError, TypeError):
            pass
    if fallback:
        return fallback
    raise DataError(f"{f.filename}: {group.name} has no 'instruction' attribute and data has no problem_info")


def _open_demo_file(path: str | Path):
    """``path`` opened read-only with h5py; a missing file or one that is not HDF5 is one :class:`DataError`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"demo file {str(path)!r} does not exist (record some with `pushcut demos`)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{str(path)!r} is not an HDF5 file: {exc}") from None


def read_demos(path: str | Path, keys: DemoKeys | None = None, instruction: str = "") -> list[Demo]:
    """Read every ``data/demo_*`` group; a wrong layout is a :class:`DataError`
    naming what was expected and what was found."""
    keys = keys or DemoKeys()
    path = Path(path)
    demos = []
    with _open_demo_file(path) as f:
        if "data" not in f:
            raise DataError(f"{str(path)!r}: expected a top-level 'data' group (robomimic/LIBERO layout), "
                            f"found {sorted(f.keys())}")
        names = sorted((n for n in f["data"] if n.startswith("demo_")), key=lambda n: int(n.split("_")[1]))
        if not names:
            raise DataError(f"{str(path)!r}: no data/demo_N groups, found {sorted(f['data'].keys())}")
        for name in names:
            g = f["data"][name]
            where = f"{path.name}:data/{name}"
            if "actions" not in g or "obs" not in g:
                raise DataError(f"{where}: expected 'actions' and 'obs', found {sorted(g.keys())}")
            obs = g["obs"]
            wanted = [keys.image, *keys.state] + ([keys.wrist_image] if keys.wrist_image else [])
            missing = [k for k in wanted if k and k not in obs]
            if missing:
                raise DataError(f"{where}: obs lacks {missing}; found obs keys {sorted(obs.keys())} "
                                f"(map them with sft.image_key / sft.state_keys / sft.wrist_image_key)")
            images = np.asarray(obs[keys.image])
            actions = np.asarray(g["actions"], dtype=np.float32)
            if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(actions):
                raise DataError(f"{where}: obs/{keys.image} must be (L, H, W, 3) with L = len(actions) = "
                                f"{len(actions)}, found {images.shape}")
            if actions.ndim != 2:
                raise DataError(f"{where}: actions must be (L, action_dim), found {actions.shape}")
            wrist = np.asarray(obs[keys.wrist_image]) if keys.wrist_image else None
            if keys.flip_images:  # LIBERO renders upside down; the OpenVLA family trains on flipped frames
                images = images[:, ::-1, ::-1].copy()
                wrist = wrist[:, ::-1, ::-1].copy() if wrist is not None else None
            states = (np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(len(actions), -1)
                                      for k in keys.state], axis=1) if keys.state else None)
            demos.append(Demo(
                task_id=str(g.attrs.get("task_id", path.stem)),
                instruction=_instruction(f, g, instruction),
                images=images.astype(np.uint8), actions=actions, states=states, wrist_images=wrist,
                init_state=_init_state_index(g.attrs.get("init_state", -1)),
            ))
    return demos


def read_demo_states(paths: str | Path | Sequence[str | Path]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """The simulator states of every demo in ``paths``, by task: ``{task_id: [(init_state, (L, S)
    float64), ...]}`` (the init-state index the demo started from, -1 if unknown), in file and demo
    order (what the reverse curriculum starts episodes from). Reads no images.
    A file whose demos carry no ``states`` is a :class:`DataError` saying how to get them."""
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        with _open_demo_file(path) as f:
            names = sorted((n for n in f.get("data", {}) if n.startswith("demo_")), key=lambda n: int(n.split("_")[1]))
            if not names:
                raise DataError(f"{str(path)!r}: no data/demo_N groups (robomimic/LIBERO layout)")
            for name in names:
                g = f["data"][name]
                if SIM_STATES not in g:
                    raise DataError(f"{path}: data/{name} has no simulator states ('{SIM_STATES}'): the reverse "
                                    "curriculum starts episodes from them; re-record the demos with `pushcut demos` "
                                    "(in-process, on an env that restores states, e.g. tabletop)")
                states = np.asarray(g[SIM_STATES], dtype=np.float64)
                if states.ndim != 2 or not len(states):
                    raise DataError(f"{path}: data/{name}/{SIM_STATES} must be (L, S), found {states.shape}")
                # LIBERO's own files name no task: <task>_demo.hdf5
                out.setdefault(str(g.attrs.get("task_id", path.stem.removesuffix("_demo"))), []).append(
                    (_init_state_index(g.attrs.get("init_state", -1)), states))
    return out


def _init_state_index(value: object) -> int:
    """Our files store the init-state index; LIBERO's own store the flattened MuJoCo state
    array there, which names no index (-1)."""
    return int(value) if np.ndim(value) == 0 else -1


def chunk_targets(actions: np.ndarray, chunk: int) -> np.ndarray:
    """(L, action_dim) → (L, chunk, action_dim): the expert chunk starting at each
    step, padded past the end by repeating the last action."""
    idx = np.minimum(np.arange(len(actions))[:, None] + np.arange(chunk)[None, :], len(actions) - 1)
    return actions[idx]
