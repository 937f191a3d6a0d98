"""TinyVLA with incremental task adapters on the embedded tabletop: SFT the base + adapter A on
task A's demos, add adapter B, SFT it on a few demos of task B, then GRPO on B. Reports success
on B after SFT and after RL, success on A before and after B's training (and whether A's weights
moved at all), wall time and peak memory (the whole process tree, sampled every 0.5 s).

    python benchmarks/tinyvla.py --seeds 0 1 [--b-demos 2] [overrides of configs/tinyvla_tabletop.yaml ...]

Targets (issue 27): RL adds >= +20 points on B; A unchanged; two seeds under 30 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "tinyvla_tabletop.yaml"


# --------------------------------------------------------------------------- one seed, in process


def one_seed(seed: int, root: Path, b_demos: int, b_sft_steps: int, overrides: list[str]) -> dict:
    import torch

    from pushcut.build import build_collector, build_policy, build_pool
    from pushcut.checkpoint import latest_checkpoint
    from pushcut.configio import load_config
    from pushcut.demos import record_demo_file
    from pushcut.evaluate import evaluate
    from pushcut.plots import eval_reports
    from pushcut.pluginmanager import get_plugin_manager
    from pushcut.plugins.policies import tinyvla as plugin
    from pushcut.plugins.policies.tinyvla import TinyVLAPolicy
    from pushcut.sft import run_sft
    from pushcut.trainer import Trainer

    manager = get_plugin_manager()
    if "tinyvla" not in manager.policies:  # an install from before the entry point existed
        manager.register(plugin, name="tinyvla")
    common = [*overrides, f"seed={seed}", f"policy.seed={seed}"]
    base = load_config(CONFIG, common, manager)
    adapters = base.policy.options.adapters
    task_b = adapters.active
    task_a = next(t for t in adapters.tasks if t != task_b)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(base.train.torch_threads or 1)
    timings: dict[str, float] = {}

    def config(*extra: str):
        return load_config(CONFIG, [*common, *extra], manager)

    def demos(task: str, per_task: int) -> Path:
        path = root / f"demos_{task}.hdf5"
        if not path.exists():
            cfg = config(f"env.tasks=[{task}]")
            with manager.envs.get("tabletop").build(cfg.env.options) as env:
                record_demo_file(env, "tabletop", per_task, path, noise=cfg.sft.demo_noise)
        return path

    def evals(cfg, weights: Path) -> dict[str, float]:
        """Success of ``weights`` on the env's task: greedy (deterministic DDIM) and as cfg.eval samples."""
        pool = build_pool(cfg)
        task = cfg.env.options.tasks[0]
        try:
            collector = build_collector(cfg, pool, build_policy(cfg, weights))
            e = cfg.eval
            greedy, _ = evaluate(collector, dataclasses.replace(e, temperature=0.0, samples_per_state=1), seed=cfg.seed)
            sampled, _ = evaluate(collector, e, seed=cfg.seed)
        finally:
            pool.close()
        return {"greedy": greedy["per_task"][task]["success_rate"], "sampled": sampled["per_task"][task]["success_rate"],
                "sampled_episodes": sampled["per_task"][task]["episodes"]}

    t = time.perf_counter()
    demos_a, demos_b = demos(task_a, base.sft.demos_per_task), demos(task_b, b_demos)
    timings["demos_s"] = time.perf_counter() - t

    # 1. The base and adapter A (and A's head) learn from A's demos.
    t = time.perf_counter()
    sft_a = run_sft(config(f"run_dir={root / 'a_sft'}", f"env.tasks=[{task_a}]", f"policy.adapters.tasks=[{task_a}]",
                           f"policy.adapters.active={task_a}", "policy.adapters.train_base=true",
                           f"sft.demos=[{demos_a}]"))
    timings["sft_a_s"] = time.perf_counter() - t
    eval_a = config(f"run_dir={root / 'a_eval'}", f"env.tasks=[{task_a}]")
    t = time.perf_counter()
    a_before = evals(eval_a, sft_a)
    timings["eval_a_before_s"] = time.perf_counter() - t

    # 2. Adapter B (fresh LoRA, head copied from A's) learns from B's few demos; nothing else trains.
    t = time.perf_counter()
    sft_b = run_sft(config(f"run_dir={root / 'b_sft'}", f"train.init_from={sft_a}", f"sft.demos=[{demos_b}]",
                           f"sft.steps={b_sft_steps}"))
    timings["sft_b_s"] = time.perf_counter() - t
    eval_b = config(f"run_dir={root / 'b_eval'}")
    b_greedy_sft = evals(eval_b, sft_b)["greedy"]

    # 3. GRPO on B (the Trainer evaluates B before the first update and at the end).
    t = time.perf_counter()
    rl_dir = root / "b_rl"
    Trainer(config(f"run_dir={rl_dir}", f"train.init_from={sft_b}", "train.eval_at_start=true")).run()
    timings["rl_b_s"] = time.perf_counter() - t
    final = latest_checkpoint(rl_dir) / "policy"
    b_greedy_rl = evals(eval_b, final)["greedy"]

    # 4. A again, with the final policy: A's rows still route to adapter A.
    t = time.perf_counter()
    a_after = evals(eval_a, final)
    timings["eval_a_after_s"] = time.perf_counter() - t

    before, after = TinyVLAPolicy(eval_a.policy.options), TinyVLAPolicy(eval_a.policy.options)
    before.load(sft_a)  # the base and A as A's SFT left them; B as add_task makes it (fresh LoRA, A's head)
    after.load(final)
    old, new = before._canonical_state(), after._canonical_state()
    owned = (f"adapters.{task_b}.", f"heads.{task_b}.")
    moved_outside_b = sorted(k for k in old if not k.startswith(owned) and not (old[k] == new[k]).all())
    moved_b = sum(1 for k in old if k.startswith(owned) and not (old[k] == new[k]).all())
    # (B's SFT and RL together: every tensor outside B's LoRA and head must be bit-identical.)

    reports = eval_reports(rl_dir)
    result = {
        "seed": seed, "task_a": task_a, "task_b": task_b,
        "b_demos": b_demos, "a_demos": base.sft.demos_per_task, "b_sft_steps": b_sft_steps,
        "eval_temperature": base.eval.temperature, "samples_per_state": base.eval.samples_per_state,
        "b_sft_success": reports[0]["per_task"][task_b]["success_rate"],
        "b_rl_success": reports[-1]["per_task"][task_b]["success_rate"],
        "b_curve": [(r["step"], r["per_task"][task_b]["success_rate"]) for r in reports],
        "b_episodes": reports[-1]["per_task"][task_b]["episodes"],
        "b_greedy_sft": b_greedy_sft, "b_greedy_rl": b_greedy_rl,
        "a_before": a_before["sampled"], "a_after": a_after["sampled"], "a_episodes": a_after["sampled_episodes"],
        "a_greedy_before": a_before["greedy"], "a_greedy_after": a_after["greedy"],
        "tensors_moved_outside_b": moved_outside_b, "tensors_moved_in_b": moved_b,
        "rl_iterations": base.train.iterations, "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    result["b_improvement_points"] = round(100 * (result["b_rl_success"] - result["b_sft_success"]), 1)
    (root / "result.json").write_text(json.dumps(result, indent=2))
    return result


# --------------------------------------------------------------------------- driver


def figure(results: list[dict], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in results:
        steps, rates = zip(*r["b_curve"])
        left.plot(steps, rates, marker="o", label=f"seed {r['seed']}")
    left.set(title=f"task B ({results[0]['task_b']}): GRPO on adapter B", xlabel="RL iteration",
             ylabel=f"success (T={results[0]['eval_temperature']:g})", ylim=(-0.02, 1.02))
    left.legend()
    width = 0.35
    for i, r in enumerate(results):
        right.bar([i - width / 2], [r["a_before"]], width, color="tab:gray", label="before B" if i == 0 else None)
        right.bar([i + width / 2], [r["a_after"]], width, color="tab:blue", label="after B's SFT + RL" if i == 0 else None)
    right.set(title=f"task A ({results[0]['task_a']}): adapter A", xticks=range(len(results)),
              xticklabels=[f"seed {r['seed']}" for r in results], ylabel=f"success (T={results[0]['eval_temperature']:g})", ylim=(0, 1.02))
    right.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--root", default="runs/bench-tinyvla")
    ap.add_argument("--b-demos", type=int, default=2, help="scripted demos of task B for adapter B's SFT")
    ap.add_argument("--b-sft-steps", type=int, default=300, help="SFT steps of adapter B on its few demos")
    ap.add_argument("--figure", default="", help="also write the figure here (e.g. docs/tinyvla.png)")
    ap.add_argument("--one-seed", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    root = Path(args.root)
    if args.one_seed is not None:
        one_seed(args.one_seed, root / f"seed{args.one_seed}", args.b_demos, args.b_sft_steps, args.overrides)
        return
    taken = [str(root / f"seed{s}") for s in args.seeds if (root / f"seed{s}").exists()]
    if taken:
        ap.error(f"{', '.join(taken)} already exist: the benchmark times fresh runs; delete them or pass --root NEW")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quickstart import tree_rss  # the same process-tree memory probe as the quickstart benchmark

    results = []
    t_all = time.perf_counter()
    for seed in args.seeds:
        cmd = [sys.executable, __file__, "--one-seed", str(seed), "--root", str(root), "--b-demos",
               str(args.b_demos), "--b-sft-steps", str(args.b_sft_steps), *args.overrides]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.5)
        if proc.returncode != 0:
            raise SystemExit(f"seed {seed} failed (exit {proc.returncode})")
        result = json.loads((root / f"seed{seed}" / "result.json").read_text())
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["peak_rss_gb"] = round(peak / 2**30, 2)
        results.append(result)
    total = round(time.perf_counter() - t_all, 1)
    for r in results:
        print(f"seed {r['seed']}: {r['wall_s']:.0f} s, peak {r['peak_rss_gb']:.2f} GB | B ({r['task_b']}) "
              f"{r['b_sft_success']:.2f} -> {r['b_rl_success']:.2f} ({r['b_improvement_points']:+.1f} points; greedy "
              f"{r['b_greedy_sft']:.2f} -> {r['b_greedy_rl']:.2f}) | A ({r['task_a']}) {r['a_before']:.2f} -> "
              f"{r['a_after']:.2f} (greedy {r['a_greedy_before']:.2f} -> {r['a_greedy_after']:.2f}); tensors moved outside B: "
              f"{len(r['tensors_moved_outside_b'])}")
    summary = {"results": results, "total_wall_s": total}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    paths = [figure(results, root / "tinyvla.png")]
    if args.figure:
        paths.append(figure(results, Path(args.figure)))
    print(json.dumps(summary, indent=2))
    print(f"total {total:.0f} s; figure: {', '.join(str(p) for p in paths if p)}")


if __name__ == "__main__":
    main()
