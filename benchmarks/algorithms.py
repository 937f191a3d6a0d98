"""The algorithms of issue 39 against today's GRPO, on the tabletop quickstart setting.

Per seed: the quickstart (scripted demos -> SFT -> greedy eval -> GRPO -> greedy eval) is the
``grpo`` arm; every other arm starts RL from that same SFT policy with the quickstart's config
plus its own overrides, so the arms differ only in the RL algorithm. Reported per arm and seed:
greedy success per task after SFT and after RL, the mean, env steps, groups kept / drawn by
dynamic sampling, wall time; and a PNG of mean greedy success against env steps.

    python benchmarks/algorithms.py --seeds 0 1                      # the full measurement
    python benchmarks/algorithms.py --seeds 0 --iterations 12 \\
        --arms grpo ppo_gae grpo_band -- eval.max_init_states=10   # a reduced one

Arms:
* ``grpo``: the quickstart as it is (GRPO, dynamic sampling, uniform start states).
* ``ppo_gae``: PPO with the tiny policy's value head (``algo.advantage=gae``), one critic
  warm-up iteration.
* ``grpo_band``: GRPO with the band start-state sampler (``train.start_sampling=band``).
* ``ppo_gae_fast_critic`` (not run by default): ``ppo_gae`` with the critic's lr at 1e-2 and
  three warm-up iterations.
* ``grpo_reverse``: GRPO with the reverse curriculum (``train.curriculum=reverse``) on the tasks the
  SFT policy solves from under ``--apply-below`` of its train states (greedy, 20 per task, not
  the demos' own), from
  the very demos the SFT learned from, recorded again with their simulator states
  (``ROOT/seedN/curriculum_demos.hdf5``).

Every arm runs the same number of RL iterations; env steps differ with how many dynamic-sampling
rounds each needs, so they are reported beside the success (the plot's x axis).
Results: ``ROOT/algorithms.json``, ``ROOT/algorithms.md`` (the table), ``ROOT/algorithms.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ARMS: dict[str, list[str]] = {
    "grpo": [],
    "ppo_gae": ["algo.advantage=gae", "algo.critic.warmup_iterations=1"],
    "grpo_band": ["train.start_sampling=band"],
    # a variant of ppo_gae: a faster critic (10x the lr) with a longer warm-up
    "ppo_gae_fast_critic": ["algo.advantage=gae", "algo.critic.warmup_iterations=3", "algo.critic.lr=0.01"],
    # + train.curriculum_demos and train.curriculum_apply_below, set per seed in main()
    "grpo_reverse": ["train.curriculum=reverse"],
}
DEFAULT_ARMS = ["grpo", "ppo_gae", "grpo_band"]


def quickstart_config() -> Path:
    return Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def record_curriculum_demos(path: Path, log: Path) -> Path:
    """The quickstart's demos (same env options, count and noise: the same expert episodes) recorded
    again, now with the simulator state at every step, for the reverse curriculum."""
    import yaml

    if path.is_file():
        return path
    cfg = yaml.safe_load(quickstart_config().read_text())
    env = [f"env.{k}={v}" for k, v in cfg["env"].items() if k != "type"]
    sft = cfg.get("sft", {})
    run([sys.executable, "-m", "pushcut.cli", "demos", cfg["env"]["type"], "--per-task",
         str(sft.get("demos_per_task", 1)), "--noise", str(sft.get("demo_noise", 0.0)), "--out", str(path), *env], log)
    return path


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def read_run(run_dir: Path, sft_report: dict | None) -> dict:
    """Per-task and mean greedy success (first and last eval), env steps, groups, from a run directory."""
    reports = [json.loads(p.read_text()) for p in sorted((run_dir / "evals").glob("step_*.json"))]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    iters = [m for m in metrics if m.get("step", 0) > 0 and "rollout/env_steps" in m]
    sft = sft_report if sft_report is not None else reports[0]
    rl = reports[-1]
    steps_at = {}
    total = 0.0
    for m in iters:
        total += m["rollout/env_steps"]
        steps_at[m["step"]] = total
    return {
        "sft_success": sft["success_rate"],
        "rl_success": rl["success_rate"],
        "per_task": {t: {"sft": sft["per_task"][t]["success_rate"], "rl": rl["per_task"][t]["success_rate"]}
                     for t in rl["per_task"]},
        "env_steps": total,
        "groups_kept": sum(m["rollout/groups_kept"] for m in iters),
        "groups_total": sum(m["rollout/groups_total"] for m in iters),
        "curve": [(steps_at.get(r["step"], 0.0), r["success_rate"]) for r in ([sft] if sft_report else []) + reports],
        "curriculum": {k: v for k, v in (iters[-1] if iters else {}).items() if k.startswith("curriculum/")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--iterations", type=int, default=72, help="RL iterations per arm (the quickstart: 72)")
    parser.add_argument("--root", type=Path, default=Path("runs/algorithms"))
    parser.add_argument("--apply-below", type=float, default=0.1,
                        help="grpo_reverse: enrol tasks whose greedy success from their real starts is below this")
    parser.add_argument("--reverse", nargs="*", default=[], metavar="KEY=VALUE",
                        help="grpo_reverse: more overrides, e.g. train.curriculum_threshold=0.3")
    parser.add_argument("extra", nargs="*", help="overrides for every arm, e.g. eval.max_init_states=10")
    args = parser.parse_args()
    if args.arms[0] != "grpo":
        args.arms = ["grpo", *[a for a in args.arms if a != "grpo"]]  # the quickstart arm makes the SFT policy
    common = [f"train.iterations={args.iterations}", f"train.eval_every={args.iterations}", *args.extra]
    results: dict[str, dict[str, dict]] = {}
    for seed in args.seeds:
        base = args.root / f"seed{seed}"
        base.mkdir(parents=True, exist_ok=True)
        seeds = [f"seed={seed}", f"policy.seed={seed}"]
        grpo_dir = base / "grpo"
        wall = run([sys.executable, "-m", "pushcut.cli", "quickstart", f"run_dir={grpo_dir}", *seeds, *common],
                   base / "grpo.log")
        timings = json.loads((grpo_dir / "summary.json").read_text())["timings"]
        grpo = read_run(grpo_dir, None)
        grpo["wall_s"] = timings.get("rl_s", wall)
        results.setdefault("grpo", {})[str(seed)] = grpo
        sft_report = json.loads(sorted((grpo_dir / "evals").glob("step_*.json"))[0].read_text())
        for arm in args.arms[1:]:
            run_dir = base / arm
            overrides = list(ARMS[arm])
            if arm == "grpo_reverse":
                demos = record_curriculum_demos(base / "curriculum_demos.hdf5", base / "curriculum_demos.log")
                overrides += [f"train.curriculum_demos={demos.resolve()}",
                              f"train.curriculum_apply_below={args.apply_below}", *args.reverse]
            wall = run([sys.executable, "-m", "pushcut.cli", "train", str(quickstart_config()), f"run_dir={run_dir}",
                        *seeds, f"train.init_from={grpo_dir / 'sft' / 'policy'}", "train.eval_at_start=false",
                        *common, *overrides], base / f"{arm}.log")
            out = read_run(run_dir, sft_report)
            out["wall_s"] = wall
            results.setdefault(arm, {})[str(seed)] = out
            print(f"seed {seed} {arm}: SFT {out['sft_success']:.3f} -> RL {out['rl_success']:.3f}", flush=True)
            write(args, results)  # after every arm, so a cut-short run keeps what it measured
        print(f"seed {seed} grpo: SFT {grpo['sft_success']:.3f} -> RL {grpo['rl_success']:.3f}", flush=True)
    print(write(args, results))


def write(args: argparse.Namespace, results: dict[str, dict[str, dict]]) -> str:
    complete = {arm: by_seed for arm, by_seed in results.items()
                if set(by_seed) == set(results["grpo"])}  # arms with every seed so far
    (args.root / "algorithms.json").write_text(json.dumps(
        {"iterations": args.iterations, "extra": args.extra, "apply_below": args.apply_below,
         "reverse": args.reverse, "results": results}, indent=2))
    table = markdown_table(complete)
    (args.root / "algorithms.md").write_text(table)
    plot(complete, args.root / "algorithms.png")
    return table


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    arms = list(results)
    seeds = list(next(iter(results.values())))
    tasks = list(next(iter(next(iter(results.values())).values()))["per_task"])
    head = "| task | SFT | " + " | ".join(arms) + " |\n|---|---|" + "---|" * len(arms) + "\n"
    rows = []
    for task in tasks:
        sft = sum(results[arms[0]][s]["per_task"][task]["sft"] for s in seeds) / len(seeds)
        cells = [sum(results[a][s]["per_task"][task]["rl"] for s in seeds) / len(seeds) for a in arms]
        rows.append(f"| {task} | {sft:.2f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    mean_sft = sum(results[arms[0]][s]["sft_success"] for s in seeds) / len(seeds)
    rows.append(f"| **mean** | {mean_sft:.3f} | " + " | ".join(
        f"{sum(results[a][s]['rl_success'] for s in seeds) / len(seeds):.3f}" for a in arms) + " |")
    for key, label, fmt in (("env_steps", "env steps", "{:.0f}"), ("wall_s", "RL wall time (s)", "{:.0f}")):
        rows.append(f"| {label} | | " + " | ".join(
            fmt.format(sum(results[a][s][key] for s in seeds) / len(seeds)) for a in arms) + " |")
    rows.append("| groups kept / drawn | | " + " | ".join(
        f"{sum(results[a][s]['groups_kept'] for s in seeds) / sum(results[a][s]['groups_total'] for s in seeds):.3f}"
        for a in arms) + " |")
    return f"Seeds {', '.join(seeds)} (success averaged over seeds)\n\n" + head + "\n".join(rows) + "\n"


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for i, (arm, by_seed) in enumerate(results.items()):
        for j, (seed, r) in enumerate(by_seed.items()):
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, marker="o", color=f"C{i}", alpha=0.9 if j == 0 else 0.5,
                    label=arm if j == 0 else None)
    ax.set_title(f"solid: seed {next(iter(next(iter(results.values()))))}, faded: the other seeds", fontsize=9)
    ax.set_xlabel("env steps of RL")
    ax.set_ylabel("mean greedy eval success")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
