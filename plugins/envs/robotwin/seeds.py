"""``pushcut robotwin seeds TASK --n N``: the seeds of a RoboTwin 2.0 task where its scripted
expert succeeds, as SimpleVLA-RL and RLinf pre-collect them for RoboTwin's evaluation.

For each seed from ``--start`` on: ``setup_demo(seed)`` (a seed whose objects do not settle is
skipped), then ``play_once()``; the seed is kept when the plan succeeded and ``check_success()``
holds. Writes ``OUT/TASK.json`` (``{"task", "seeds", "verified", ...}``), which ``env.seeds_dir=OUT``
reads. Runs in the RoboTwin venv; started from another interpreter, it re-runs itself there
(``--python``, else ``$PUSHCUT_ROBOTWIN_PYTHON``, else ``.venv-robotwin/bin/python``).

On the stand-in assets the expert fails for every seed (its embodiment constants are guesses), so
``--allow-unverified`` writes the seeds whose scene builds and settles instead, marked
``"verified": false``; success rates on such seeds are not comparable with published numbers.

    python -m pushcut.plugins.envs.robotwin.seeds stack_blocks_two --n 100 --out seeds/ env.assets_dir=...
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pushcut.errors import ConfigError, EnvError

ROBOTWIN_PYTHON_ENV = "PUSHCUT_ROBOTWIN_PYTHON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="RoboTwin 2.0 task name, e.g. stack_blocks_two")
    p.add_argument("--n", type=int, default=100, help="seeds to keep (default 100)")
    p.add_argument("--out", default="robotwin_seeds", help="folder to write TASK.json into")
    p.add_argument("--start", type=int, default=100000, help="first seed to try (RoboTwin's eval starts at 100000)")
    p.add_argument("--max-tries", type=int, default=0, help="seeds to try at most (default 10 x --n)")
    p.add_argument("--config", default="", help="YAML file with an env: section (embodiment, assets_dir, ...)")
    p.add_argument("--allow-unverified", action="store_true",
                   help="keep seeds whose scene settles even when the expert fails (stand-in assets)")
    p.add_argument("--python", default="", help="the RoboTwin venv's python (when this one has no RoboTwin)")
    p.add_argument("overrides", nargs="*", help="env.key=value overrides (env.embodiment=[piper,piper,0.6] ...)")


def _config(args: Any):
    from pushcut.configio import apply_overrides, build_dataclass, read_yaml
    from pushcut.plugins.envs.robotwin.config import RobotwinConfig

    data = apply_overrides(read_yaml(args.config) if args.config else {}, args.overrides)
    env = dict(data.get("env") or {})
    env.pop("type", None)
    env["tasks"] = [args.task]
    return build_dataclass(RobotwinConfig, env, "env")


def _robotwin_python(args: Any) -> str:
    if args.python:
        return args.python
    if os.environ.get(ROBOTWIN_PYTHON_ENV):
        return os.environ[ROBOTWIN_PYTHON_ENV]
    return str(Path(__file__).resolve().parents[3] / ".venv-robotwin" / "bin" / "python")


def run(args: Any) -> int:
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if importlib.util.find_spec("robotwin") is None:
        python = _robotwin_python(args)
        if not os.path.isfile(python):
            raise EnvError(f"RoboTwin is not installed here and {python} does not exist: run "
                           "scripts/setup-robotwin.sh, or pass --python /path/to/robotwin-venv/bin/python")
        argv = [python, "-m", "pushcut.plugins.envs.robotwin.seeds", args.task, "--n", str(args.n), "--out", args.out,
                "--start", str(args.start), "--max-tries", str(args.max_tries)]
        argv += ["--config", args.config] if args.config else []
        argv += ["--allow-unverified"] if args.allow_unverified else []
        return subprocess.call([*argv, *args.overrides])
    config = _config(args)
    result = collect(config, args.task, args.n, args.start, args.max_tries or 10 * args.n, args.allow_unverified)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.task}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    kind = "expert-verified" if result["verified"] else "UNVERIFIED (scene settles; expert not checked or failed)"
    print(f"pushcut robotwin seeds: {len(result['seeds'])} {kind} seeds of {args.task} in {path} "
          f"({result['tried']} tried, {result['expert_failed']} expert failures, {result['unstable']} unstable)")
    if len(result["seeds"]) < args.n:
        print(f"pushcut robotwin seeds: only {len(result['seeds'])} of {args.n} seeds found; the expert fails on this "
              "embodiment/assets? (--allow-unverified keeps settling seeds)", file=sys.stderr)
        return 1
    return 0


def check_seed(config: Any, task: str, seed: int, root: Path) -> str:
    """``"ok"``, ``"unstable"`` or ``"expert_failed"`` for one seed of ``task``."""
    from pushcut.plugins.envs.robotwin import runtime

    obj = runtime.task_class(task)()
    runtime.prepare(obj, config)
    args = runtime.setup_args(config, task, root)
    try:
        obj.setup_demo(now_ep_num=seed, seed=seed, is_test=True, **args)
    except runtime.unstable_error():
        return "unstable"
    try:
        obj.play_once()
        ok = bool(obj.plan_success) and bool(obj.check_success())
    except Exception:
        ok = False
    finally:
        try:
            obj.close_env(clear_cache=True)
        except Exception:
            pass
    return "ok" if ok else "expert_failed"


def collect(config: Any, task: str, n: int, start: int, max_tries: int, allow_unverified: bool) -> dict[str, Any]:
    from pushcut.plugins.envs.robotwin import runtime

    root = runtime.check_all(config)
    verified: list[int] = []
    settled: list[int] = []
    counts = {"unstable": 0, "expert_failed": 0}
    t0, tried = time.monotonic(), 0
    for seed in range(start, start + max_tries):
        if len(verified) >= n:
            break
        tried += 1
        verdict = check_seed(config, task, seed, root)
        if verdict == "ok":
            verified.append(seed)
            settled.append(seed)
        else:
            counts[verdict] += 1
            if verdict == "expert_failed":
                settled.append(seed)
        if allow_unverified and not verified and len(settled) >= n and counts["expert_failed"] >= n:
            break  # the expert fails everywhere: keep the settling seeds
    use_verified = len(verified) >= n or not allow_unverified
    seeds = verified[:n] if use_verified else settled[:n]
    return {"task": task, "seeds": seeds, "verified": use_verified, "embodiment": list(config.embodiment),
            "start": start, "tried": tried, "unstable": counts["unstable"], "expert_failed": counts["expert_failed"],
            "seconds": round(time.monotonic() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pushcut.plugins.envs.robotwin.seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    from pushcut.errors import PushcutError

    try:
        return run(args)
    except PushcutError as exc:
        print(f"pushcut: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
