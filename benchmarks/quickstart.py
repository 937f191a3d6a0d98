"""The quickstart as a benchmark: wall time, peak memory (the whole process tree:
learner + env workers, sampled every 0.5 s), and success after SFT vs after
SFT+RL, for one or more seeds.

    python benchmarks/quickstart.py --seeds 0 1 [extra overrides...]

Targets (issue: embedded default): under 15 min and 4 GB on 2 CPU cores; mean
eval success rising by >= 25 points from SFT to SFT+RL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, stack = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def seed_dir(root: Path, seed: int) -> Path:
    return root / f"seed{seed}"


def run(seed: int, extra: list[str], root: Path) -> dict:
    run_dir = seed_dir(root, seed)
    cmd = [sys.executable, "-m", "pushcut.cli", "quickstart", f"run_dir={run_dir}", f"seed={seed}",
           f"policy.seed={seed}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    lines = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.5)
    reader.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print("".join(lines[-40:]))
        raise SystemExit(f"quickstart failed for seed {seed} (exit {proc.returncode})")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "wall_s": round(wall, 1), "peak_rss_gb": round(peak / 2**30, 2),
            "sft_success": summary["sft_success"], "rl_success": summary["rl_success"],
            "improvement_points": round(100 * summary["improvement"], 1),
            "per_task": summary["per_task"], "episodes_per_task": summary["episodes_per_task"],
            "timings": summary["timings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--root", default="runs/bench-quickstart")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    root = Path(args.root)
    taken = [str(d) for d in (seed_dir(root, s) for s in args.seeds) if d.exists()]
    if taken:  # a quickstart in an existing run directory resumes it, and there is nothing left to time
        ap.error(f"{', '.join(taken)} already exist: the benchmark times fresh runs; delete them or pass --root NEW")
    results = [run(s, args.overrides, root) for s in args.seeds]
    for r in results:
        print(f"seed {r['seed']}: {r['wall_s']:.0f} s, peak {r['peak_rss_gb']:.2f} GB, "
              f"success {r['sft_success']:.3f} -> {r['rl_success']:.3f} ({r['improvement_points']:+.1f} points)")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
