"""Where a policy aims: at the object, or where its demos went.

A clone of a few demos can succeed without looking. It replays the demos' motion from
wherever the gripper starts, and succeeds whenever the jittered object happens to lie near
where that motion ends. GRPO can then only centre the replayed path: it cannot make a blind
policy look, so success stops where the best blind path stops.

:func:`measure_aim` tells the two apart. It runs greedy episodes of a reach-first task
(press the button, or grasp a cube), takes the gripper's lowest point of each episode as
where it aimed, and fits per axis::

    aim - nominal object = slope_object · (object offset) + slope_start · (gripper start offset) + bias

A policy that reaches for the object has ``slope_object`` near 1 and ``slope_start`` near 0;
one that replays a path has ``slope_object`` near 0 and ``slope_start`` near 1. Offsets are
from the task's nominal layout, so this needs LIBERO-style initial states (``env.jitter``).

Run it on a checkpoint::

    python -m pushcut.plugins.envs.tabletop.aim runs/quickstart/config.yaml runs/quickstart/sft/policy
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pushcut.contracts import ObsBatch, Observation
from pushcut.errors import ConfigError, PushcutError
from pushcut.plugins.envs.tabletop.config import TabletopConfig
from pushcut.plugins.envs.tabletop.env import TabletopEnv
from pushcut.plugins.envs.tabletop.scene import Layout
from pushcut.plugins.envs.tabletop.tasks import TASKS

AIM_OBJECTS: dict[str, Callable[[Layout], np.ndarray]] = {
    "press_button": lambda layout: np.array(layout.button),
    "lift_blue": lambda layout: np.array(layout.cubes["blue"][:2]),
    "place_red_on_plate": lambda layout: np.array(layout.cubes["red"][:2]),
    "stack_green_on_red": lambda layout: np.array(layout.cubes["green"][:2]),
}
"""The tasks whose first contact is a descent onto one object, and where that object starts (x, y)."""

HIT_RADIUS = 0.015
"""An aim within this distance (m) of the object counts as on target (the fingers' play on a cube)."""

Actor = Callable[[Observation, str, str], np.ndarray]
"""``act(observation, instruction, task_id)`` → an action chunk (chunk, 4)."""


@dataclass(frozen=True)
class Aim:
    """How one task's aim depends on where its object and the gripper start."""

    task_id: str
    episodes: int
    success: float
    """Fraction of the episodes that succeeded."""
    slope_object: tuple[float, float]
    """d aim / d object offset, per axis (x, y): 1 follows the object, 0 ignores it."""
    slope_start: tuple[float, float]
    """d aim / d gripper start offset, per axis: 1 replays a path from wherever it starts."""
    bias_cm: tuple[float, float]
    """Aim minus object (cm) at zero offsets, per axis."""
    residual_cm: tuple[float, float]
    """Std (cm) of what the fit leaves unexplained, per axis."""
    median_miss_cm: float
    """Median distance (cm) from the aim to the object."""
    on_target: float
    """Fraction of the episodes that aimed within :data:`HIT_RADIUS` of the object."""

    def describe(self) -> str:
        """One line: success, both slopes, the fit's residual, the miss and the on-target share."""
        return (f"{self.task_id:20s} success {self.success:4.0%}  follows object {_pair(self.slope_object, '+.2f')}  "
                f"follows own start {_pair(self.slope_start, '+.2f')}  unexplained {_pair(self.residual_cm, '.1f')} cm  "
                f"median miss {self.median_miss_cm:.1f} cm  "
                f"on target {self.on_target:4.0%}  ({self.episodes} episodes; slopes x/y)")


def _pair(values: tuple[float, float], spec: str) -> str:
    return "/".join(format(v, spec) for v in values)


def fit_aim(task_id: str, object_offsets: np.ndarray, start_offsets: np.ndarray, aims: np.ndarray,
            successes: Sequence[bool]) -> Aim:
    """Fit aim = slope_object · object offset + slope_start · start offset + bias per axis.

    ``object_offsets``, ``start_offsets`` and ``aims`` (aim minus the nominal object
    position) are (n, 2) arrays in metres, one row per episode.
    """
    object_offsets, start_offsets, aims = (np.asarray(a, dtype=float) for a in (object_offsets, start_offsets, aims))
    n = len(aims)
    if n < 6:
        raise ValueError(f"fit_aim needs at least 6 episodes (3 coefficients per axis and a residual), got {n}")
    slope_object, slope_start, bias, residual = [], [], [], []
    for axis in range(2):
        design = np.column_stack([object_offsets[:, axis], start_offsets[:, axis], np.ones(n)])
        coef, *_ = np.linalg.lstsq(design, aims[:, axis], rcond=None)
        slope_object.append(float(coef[0]))
        slope_start.append(float(coef[1]))
        bias.append(float(coef[2]) * 100)
        residual.append(float(np.std(aims[:, axis] - design @ coef)) * 100)
    miss = np.linalg.norm(aims - object_offsets, axis=1)
    return Aim(task_id=task_id, episodes=n, success=float(np.mean(successes)),
               slope_object=tuple(slope_object), slope_start=tuple(slope_start), bias_cm=tuple(bias),
               residual_cm=tuple(residual), median_miss_cm=float(np.median(miss)) * 100,
               on_target=float(np.mean(miss < HIT_RADIUS)))


def measure_aim(env: TabletopEnv, act: Actor, task_id: str, init_states: Sequence[int]) -> Aim:
    """Run one episode of ``task_id`` from each of ``init_states`` with ``act`` and fit its aim.

    The gripper's height is read after every action chunk; a grasp or a press holds the
    gripper at the bottom for several steps, so the lowest reading is where it aimed."""
    if task_id not in AIM_OBJECTS:
        raise ConfigError(f"aim: task {task_id!r} does not start with a descent onto one object; "
                          f"aim works on {', '.join(AIM_OBJECTS)}")
    if env.config.jitter is None:
        raise ConfigError("aim: needs LIBERO-style initial states around a nominal layout (env.jitter, e.g. 0.03); "
                          "with env.jitter=null objects start anywhere and there is no nominal position to compare")
    specs = {s.task_id: s for s in env.tasks()}
    if task_id not in specs:
        raise ConfigError(f"aim: task {task_id!r} is not offered by this env (env.tasks); it offers {', '.join(specs)}")
    task, spec = TASKS[task_id], specs[task_id]
    nominal = task.nominal_layout()
    where = AIM_OBJECTS[task_id]
    object_offsets, start_offsets, aims, successes = [], [], [], []
    for k in init_states:
        layout = task.layout(k, env.config.jitter)
        obs = env.reset(task_id, k)
        lowest = env.scene.grip_pos.copy()
        done = False
        while not done:
            result = env.step(act(obs, spec.instruction, task_id))
            obs = result.observation
            grip = env.scene.grip_pos
            if grip[2] < lowest[2]:
                lowest = grip.copy()
            done = result.done
        object_offsets.append(where(layout) - where(nominal))
        start_offsets.append(np.array(layout.gripper[:2]) - np.array(nominal.gripper[:2]))
        aims.append(lowest[:2] - where(nominal))
        successes.append(env.success)
    return fit_aim(task_id, np.array(object_offsets), np.array(start_offsets), np.array(aims), successes)


def policy_actor(policy) -> Actor:
    """An :data:`Actor` that decodes ``policy`` greedily, one observation at a time."""
    import torch

    def act(obs: Observation, instruction: str, task_id: str) -> np.ndarray:
        with torch.no_grad():
            return policy.act(ObsBatch.from_observations([obs], [instruction], [task_id]), 0.0).actions[0]

    return act


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pushcut.plugins.envs.tabletop.aim",
        description="Does a tabletop policy reach for the object, or replay its demos' path? "
                    "Greedy episodes on held-out initial states; slopes near 1 under 'follows object' mean it looks.")
    parser.add_argument("config", help="the run's config.yaml (its env and policy sections are used)")
    parser.add_argument("weights", help="policy directory, e.g. runs/quickstart/sft/policy")
    parser.add_argument("--tasks", nargs="*", default=None, help=f"tasks to measure (default: {' '.join(AIM_OBJECTS)} "
                                                                  "among the config's tasks)")
    parser.add_argument("--states", type=int, default=40, help="held-out initial states per task (default 40)")
    args = parser.parse_args(argv)

    from pushcut.build import build_policy
    from pushcut.configio import load_config

    try:
        config = load_config(args.config, [])
        if not isinstance(config.env.options, TabletopConfig):
            raise ConfigError(f"aim: {args.config} runs env {config.env.type!r}; aim measures the tabletop env only")
        env = TabletopEnv(config.env.options)
        offered = {s.task_id: s for s in env.tasks()}
        tasks = args.tasks if args.tasks else [t for t in AIM_OBJECTS if t in offered]
        unknown = [t for t in tasks if t not in offered]
        if unknown:
            raise ConfigError(f"aim: task(s) {unknown} are not in {args.config}'s env; it offers {', '.join(offered)}")
        act = policy_actor(build_policy(config, args.weights).eval())
        for task_id in tasks:
            states = offered[task_id].eval_init_states[:args.states]
            print(measure_aim(env, act, task_id, states).describe(), flush=True)
        env.close()
    except PushcutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
