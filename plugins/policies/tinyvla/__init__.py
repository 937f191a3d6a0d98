"""The ``tinyvla`` policy: TinyVLA (a GPTNeoX VLM + a diffusion head) with incremental task adapters.

Two variants behind one name:

* native (the default): built from transformers parts with random init; a DDIM diffusion head scored
  step by step for GRPO; one peft LoRA adapter (and head) per task — the CPU demonstration;
* original: TinyVLA exactly as the original code (liyaxuanliyaxuan/TinyVLA) builds and runs it, loaded
  from the original's own run directories (``policy.checkpoint`` or ``policy.runs``), one adapter
  (LoRA + projector + head) per task, saved back in the original's layout. It is chosen by itself when
  the checkpoint is such a run.

Needs the ``tinyvla`` extra (peft); without it the plugin is listed as unavailable.
"""

from __future__ import annotations

import peft  # noqa: F401  (a missing optional dependency must show up at import: the plugin is then "unavailable")

from typing import Any

from pushcut import hookimpl
from pushcut.contracts import Policy
from pushcut.plugins.policies.tinyvla.config import AdaptersConfig, TinyVLAConfig
from pushcut.plugins.policies.tinyvla.original_io import is_original
from pushcut.plugins.policies.tinyvla.policy import TinyVLAPolicy

__all__ = ["AdaptersConfig", "TinyVLAConfig", "TinyVLAPolicy", "build_tinyvla"]


def build_tinyvla(config: TinyVLAConfig) -> Policy:
    """The registered factory: the original variant for runs of the original code, else the native one."""
    if config.runs or is_original(config.checkpoint):
        from pushcut.plugins.policies.tinyvla.original_policy import OriginalTinyVLAPolicy

        return OriginalTinyVLAPolicy(config)
    return TinyVLAPolicy(config)


@hookimpl
def pushcut_register_policies(registry) -> None:
    registry.add("tinyvla", TinyVLAConfig, build_tinyvla)


@hookimpl
def pushcut_register_commands(subparsers) -> None:
    p = subparsers.add_parser("tinyvla", help="TinyVLA tools: write a policy back in the original code's format "
                                             "(docs/tinyvla.md)")
    tsub = p.add_subparsers(dest="tinyvla_command", metavar="SUBCOMMAND", required=True)
    export = tsub.add_parser(
        "export", help="write a policy loaded from original TinyVLA runs (e.g. a checkpoint's policy/ after RL) as "
                       "base/ + one original run per task, which the original eval code loads")
    export.add_argument("checkpoint", help="a policy directory pushcut saved, or an original run / checkpoint-N")
    export.add_argument("--out", required=True, help="directory to write (base/, <task>/checkpoint-N/)")
    export.add_argument("--tasks", nargs="*", default=None, help="only these tasks (default: all)")
    export.add_argument("overrides", nargs="*", metavar="policy.KEY=VALUE",
                        help="policy options, e.g. policy.model_base=DIR")
    export.set_defaults(run=_export)


def _export(args: Any) -> int:
    import json
    from pathlib import Path

    from pushcut.configio import apply_overrides, build_dataclass
    from pushcut.errors import ConfigError
    from pushcut.plugins.policies.tinyvla.original_policy import OriginalTinyVLAPolicy

    bad = [o for o in args.overrides if not o.startswith("policy.")]
    if bad:
        raise ConfigError(f"`pushcut tinyvla export` takes policy.key=value overrides only, got {bad}")
    options = apply_overrides({}, args.overrides).get("policy", {})
    options["checkpoint"] = args.checkpoint
    policy = build_tinyvla(build_dataclass(TinyVLAConfig, options, "policy"))
    if not isinstance(policy, OriginalTinyVLAPolicy):
        raise ConfigError(f"{args.checkpoint} is a native tinyvla policy; only policies loaded from runs of the original "
                          "TinyVLA code export to its format")
    written = policy.export(Path(args.out), args.tasks)
    print(json.dumps({"model_base": str(Path(args.out) / "base"),
                      "model_path": {task: str(path) for task, path in written.items()}}))
    return 0
