"""Synchronous vs one-step asynchronous training (``train.async_rollouts``) on the tabletop quickstart.

    python benchmarks/async_training.py --init-from runs/quickstart/sft/policy --seeds 0 1 --iterations 12
    python benchmarks/async_training.py --toy --iterations 8 --root runs/bench_async   # a simulated step cost

Each (mode, seed) is one ``pushcut train configs/quickstart.yaml`` from the same SFT policy, run one
after another (never side by side: they would share the cores). Prints one JSON line per run — wall
time per iteration (median of ``time/iteration_s``, the first iteration left out), env steps, the
greedy eval before and after — and one per mode with the async / sync speed ratio; writes
``async_training.png``: rollout success against cumulative env steps, one line per run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path


def run(args: argparse.Namespace, mode: str, seed: int) -> dict:
    run_dir = Path(args.root) / f"{mode}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (an old one would be resumed)
    overrides = [f"run_dir={run_dir}", f"seed={seed}", f"policy.seed={seed}", f"train.init_from={args.init_from}",
                 f"train.iterations={args.iterations}", f"train.batch_size={args.batch_size}", "train.save_every=0",
                 f"train.eval_every={args.iterations}", f"eval.max_init_states={args.eval_states}",
                 "eval.videos_per_task=0", f"train.async_rollouts={'true' if mode == 'async' else 'false'}",
                 *args.overrides]
    subprocess.run([sys.executable, "-m", "pushcut.cli", "train", args.config, *overrides], check=True,
                   stdout=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["step"] > 0]
    evals = [r["eval/success_rate"] for r in lines if "eval/success_rate" in r]
    return {"mode": mode, "seed": seed, "iterations": len(steps),
            "iteration_s": statistics.median(r["time/iteration_s"] for r in steps[1:]),
            "env_steps": sum(r["rollout/env_steps"] for r in steps), "eval_start": evals[0], "eval_end": evals[-1],
            "stale_mean": statistics.mean(r["rollout/stale_versions"] for r in steps),
            "curve": [(r["rollout/env_steps"], r["rollout/success_rate"]) for r in steps]}


def toy(args: argparse.Namespace) -> None:
    """The same comparison where the overlap has something to hide: the toy reaching env waits
    ``--toy-step-ms`` per step (a simulator on other cores, or a robot) and the toy policy is wide
    its update (one row per micro-batch, ``--toy-epochs`` passes) costs about as much as a round of
    rollouts."""
    import os

    os.environ.setdefault("PUSHCUT_DISABLE_PLUGIN_AUTOLOAD", "1")
    from pushcut.configio import load_config
    from pushcut.testing import registered_plugin
    from pushcut.toys import ToyPlugin
    from pushcut.trainer import Trainer

    times = {}
    with registered_plugin(ToyPlugin(), "toys") as manager:
        for mode in ("sync", "async"):
            run_dir = Path(args.root) / f"toy_{mode}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = load_config(None, [
                "env.type=reach", f"env.step_delay_s={args.toy_step_ms / 1000}", "policy.type=bins",
                f"policy.hidden={args.toy_hidden}", "algo.temperature=1.0", "train.lr=0.002", "train.batch_size=8",
                "train.minibatch_size=16", f"train.ppo_epochs={args.toy_epochs}", "train.micro_batch_size=1",
                "rollout.num_workers=2", "rollout.envs_per_worker=32", "train.max_sample_rounds=1",
                f"train.iterations={args.iterations}", "train.save_every=0", f"train.eval_every={args.iterations}",
                "eval.max_init_states=2", "train.torch_threads=1", f"run_dir={run_dir}",
                f"train.async_rollouts={'true' if mode == 'async' else 'false'}"], manager)
            Trainer(cfg, manager).run()
            lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in lines if r["step"] > 0]
            times[mode] = statistics.median(r["time/iteration_s"] for r in steps[1:-1])
            updated = sum(r.get("actor/optimizer_steps", 0) > 0 for r in steps)
            print(json.dumps({"what": "toy", "mode": mode, "iteration_s": round(times[mode], 3),
                              "update_s": round(statistics.median(r["time/update_s"] for r in steps[1:-1]), 3),
                              "iterations_with_an_update": updated, "step_ms": args.toy_step_ms,
                              "eval_end": lines[-1].get("eval/success_rate")}), flush=True)
    print(json.dumps({"what": "toy", "speedup": round(times["sync"] / times["async"], 3)}), flush=True)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        total, xs, ys = 0.0, [], []
        for steps, success in r["curve"]:
            total += steps
            xs.append(total)
            ys.append(success)
        ax.plot(xs, ys, ("-" if r["mode"] == "sync" else "--"), label=f"{r['mode']} seed {r['seed']}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("rollout success rate")
    ax.set_title("synchronous vs one-step asynchronous training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--init-from", default="", help="the SFT policy directory both modes start from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-states", type=int, default=10)
    parser.add_argument("--root", default="runs/bench_async")
    parser.add_argument("--toy", action="store_true", help="the toy env and policy instead (see toy())")
    parser.add_argument("--toy-step-ms", type=float, default=20.0)
    parser.add_argument("--toy-hidden", type=int, default=256)
    parser.add_argument("--toy-epochs", type=int, default=4, help="update passes: how much the update costs")
    parser.add_argument("overrides", nargs="*", help="more section.key=value overrides for every run")
    args = parser.parse_args()
    if args.toy:
        toy(args)
        return
    results = []
    for seed in args.seeds:
        for mode in ("sync", "async"):
            results.append(run(args, mode, seed))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "curve"}), flush=True)
    by_mode = {m: [r for r in results if r["mode"] == m] for m in ("sync", "async")}
    sync_s = statistics.mean(r["iteration_s"] for r in by_mode["sync"])
    async_s = statistics.mean(r["iteration_s"] for r in by_mode["async"])
    print(json.dumps({"sync_iteration_s": round(sync_s, 2), "async_iteration_s": round(async_s, 2),
                      "speedup": round(sync_s / async_s, 3),
                      "eval_end_sync": [r["eval_end"] for r in by_mode["sync"]],
                      "eval_end_async": [r["eval_end"] for r in by_mode["async"]]}))
    Path(args.root).mkdir(parents=True, exist_ok=True)
    plot(results, Path(args.root) / "async_training.png")


if __name__ == "__main__":
    main()
