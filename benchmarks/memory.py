"""Resident memory of env instances: one process builds N envs (each reset once) and reads its RSS.

    python benchmarks/memory.py tabletop --envs 6
    python benchmarks/memory.py libero --envs 3 --size 256           # assets from $PUSHCUT_LIBERO_ASSETS or ../shared
    python benchmarks/memory.py libero --envs 3 --size 128 --no-wrist

Prints the process's RSS after its imports and after each env, the first env's and each further
env's share, and (LIBERO) what 8 hard resets of the first env add. Run each env kind in its own
process (as the pool's workers do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0]; benchmarks/libero.py would shadow the libero package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024 / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("env", choices=["tabletop", "libero"])
    ap.add_argument("--envs", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="libero: camera size (px)")
    ap.add_argument("--no-wrist", action="store_true", help="libero: the third-person camera only")
    ap.add_argument("--assets", default="", help="libero: assets folder")
    args = ap.parse_args()
    start = rss_gb()
    if args.env == "libero":
        from pushcut.plugins.envs.libero import LiberoConfig, LiberoEnv
        from pushcut.plugins.envs.libero.runtime import import_libero, resolve_assets, suite_tasks

        assets = args.assets or os.environ.get("PUSHCUT_LIBERO_ASSETS") or str(
            Path(__file__).resolve().parents[1].parent / "shared" / "libero-assets" / "assets")
        task = suite_tasks("libero_spatial")[0].name
        import_libero("auto", resolve_assets(assets))
        import libero.libero.envs  # noqa: F401
        import torch  # noqa: F401  (the env reads its initial states with it)

        config = LiberoConfig(assets_dir=assets, tasks=(task,), render_size=args.size,
                              image_size=min(args.size, 224), wrist_camera=not args.no_wrist)

        def make():
            return LiberoEnv(config)
    else:
        from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv

        task = "press_button"

        def make():
            return TabletopEnv(TabletopConfig())
    imports = rss_gb()
    envs, after = [], []
    for i in range(args.envs):
        env = make()
        env.reset(task, i)
        envs.append(env)
        after.append(rss_gb())
    out = {"env": args.env, "start_gb": round(start, 3), "after_imports_gb": round(imports, 3),
           "after_each_env_gb": [round(x, 3) for x in after], "first_env_gb": round(after[0] - imports, 3),
           "per_further_env_gb": round((after[-1] - after[0]) / max(1, len(after) - 1), 3)}
    if args.env == "libero":
        for k in range(8):
            envs[0].reset(task, k)
        out["eight_hard_resets_gb"] = round(rss_gb() - after[-1], 3)
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))
    for env in envs:
        env.close()


if __name__ == "__main__":
    main()
