"""The cold start on a published benchmark: Meta-World MT10 with ONE expert demonstration per task
-> SFT of the tiny VLA -> GRPO -> greedy evaluation on held-out task variations, beside the same SFT
from 10 and 30 demos per task (SimpleVLA-RL's "1 demo + RL vs many demos" comparison).

    bash scripts/setup-metaworld.sh
    MUJOCO_GL=egl python benchmarks/metaworld.py --seeds 0 1 [--demos 1 10 30] [--iterations 40] [overrides...]

Meta-World runs in its own venv (``--python``, default .venv-metaworld/bin/python) behind the env
transport; the trainer stays in this one. Per seed it writes, under ``--root`` (runs/bench_metaworld):
the demo files, one run per SFT size (``sft{k}``, evaluated), the RL run from the 1-demo SFT
(``rl{k}``, evaluated), ``results.json`` (per-task and mean success of every arm, wall times) and
``success.png`` (per-task success of each arm). Reruns reuse finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/metaworld_mt10_tiny.yaml"


def cli(*args: str, log: Path) -> float:
    """Run ``pushcut ARGS`` (output appended to ``log``); its wall time in seconds."""
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ pushcut {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run([sys.executable, "-m", "pushcut.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    if proc.returncode:
        raise SystemExit(f"pushcut {args[0]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def subset(src: Path, dst: Path, per_task: int) -> None:
    """The first ``per_task`` demos of every task of ``src`` (recorded from the first train states)."""
    from pushcut.demos import read_demos, write_demos

    demos, seen = [], {}
    for demo in read_demos(src):
        if seen.get(demo.task_id, 0) < per_task:
            demos.append(demo)
            seen[demo.task_id] = seen.get(demo.task_id, 0) + 1
    write_demos(dst, demos, env_name="metaworld")


def env_overrides(extra: list[str]) -> list[str]:
    """The config's ``env:`` options as overrides (then the command line's), for ``pushcut demos``,
    which takes no config file: demos must observe what the policy will (e.g. ``env.state_goal``)."""
    import yaml

    env = yaml.safe_load(CONFIG.read_text())["env"]
    return [f"env.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in env.items() if k != "type"] + [o for o in extra if o.startswith("env.")]


def eval_report(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())


def one_seed(seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    root = Path(args.root) / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    common = [f"seed={seed}", f"policy.seed={seed}", f"rollout.transport.python={args.python}", *extra]
    times: dict[str, float] = {}
    full = root / f"demos_{max(args.demos)}.hdf5"
    if not full.exists():
        times["demos_s"] = cli("demos", "metaworld", "--per-task", str(max(args.demos)), "--out", str(full),
                               f"rollout.transport.python={args.python}", *env_overrides(extra), log=log)
    arms: dict[str, dict] = {}
    for k in sorted(args.demos):
        demos = root / f"demos_{k}.hdf5"
        if not demos.exists():
            subset(full, demos, k)
        run = root / f"sft{k}"
        if not (run / "eval.json").exists():
            times[f"sft{k}_s"] = cli("sft", str(CONFIG), f"sft.demos=[{demos}]", f"run_dir={run}", *common, log=log)
            times[f"eval_sft{k}_s"] = cli("eval", str(run / "sft" / "policy"), log=log)
        arms[f"sft{k}"] = eval_report(run)
    for k in args.rl_from:
        run = root / f"rl{k}"
        if not (run / "eval.json").exists():
            times[f"rl{k}_s"] = cli("train", str(CONFIG), f"train.init_from={root / f'sft{k}' / 'sft' / 'policy'}",
                                    f"run_dir={run}", f"train.iterations={args.iterations}",
                                    "train.eval_at_start=false", "train.eval_every=0", *common, log=log)
            times[f"eval_rl{k}_s"] = cli("eval", str(run), log=log)
        arms[f"sft{k}+rl"] = eval_report(run)
    result = {"seed": seed, "iterations": args.iterations, "times": times,
              "mean": {arm: r["success_rate"] for arm, r in arms.items()},
              "per_task": {arm: {t: row["success_rate"] for t, row in r["per_task"].items()} for arm, r in arms.items()},
              "lost": {arm: r.get("failed", 0) for arm, r in arms.items()}}
    (root / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, root / "success.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(result["per_task"])
    tasks = sorted(next(iter(result["per_task"].values())))
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        ax.bar(np.arange(len(tasks)) + i * width, [result["per_task"][arm][t] for t in tasks], width,
               label=f"{arm} (mean {result['mean'][arm]:.2f})")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, [t.removesuffix("-v3") for t in tasks], rotation=30,
                  ha="right")
    ax.set_ylabel("greedy success, held-out variations")
    ax.set_title(f"Meta-World MT10, tiny VLA, seed {result['seed']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--demos", type=int, nargs="+", default=[1, 10, 30],
                        help="SFT sizes (demos per task; at most 40, one per train variation)")
    parser.add_argument("--rl-from", type=int, nargs="*", default=[1], help="SFT sizes RL starts from")
    parser.add_argument("--iterations", type=int, default=40, help="GRPO iterations")
    parser.add_argument("--python", default=str(REPO / ".venv-metaworld/bin/python"), help="the Meta-World venv")
    parser.add_argument("--root", default="runs/bench_metaworld")
    args, extra = parser.parse_known_args()
    if not Path(args.python).is_file():
        raise SystemExit(f"no Meta-World venv at {args.python}: run bash scripts/setup-metaworld.sh")
    if max(args.demos) > 40:
        raise SystemExit(f"--demos {max(args.demos)}: a task has 40 train variations (50, the last 10 held out) "
                         "and the scripted expert is deterministic, so at most 40 distinct demos per task")
    results = [one_seed(seed, args, extra) for seed in args.seeds]
    for r in results:
        print(json.dumps({"seed": r["seed"], "mean": r["mean"], "lost": r["lost"], "times": r["times"]}))


if __name__ == "__main__":
    main()
