"""The ``pushcut`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pushcut.errors import PushcutError

DESCRIPTION = """\
pushcut improves a robot Vision-Language-Action policy by practising in simulation
with nothing but a success/failure signal (the SimpleVLA-RL recipe: GRPO with
binary rewards, dynamic sampling, clip-higher, no KL).

Start here:
  pushcut quickstart                   demos -> SFT -> eval -> RL -> eval on the built-in
                                       MuJoCo tabletop, on a laptop CPU
  pushcut plugins                      which policies / envs / success detectors exist
  pushcut config show configs/X.yaml   the fully resolved config a run would use
  pushcut predict --checkpoint DIR --image FILE --instruction TEXT
                                       check a checkpoint: its greedy action chunk as JSON

Usual workflow:
  pushcut demos tabletop --per-task 1 --out demos/tabletop.hdf5
  pushcut sft   configs/tabletop_tiny.yaml sft.demos=[demos/tabletop.hdf5] run_dir=runs/sft
  pushcut train configs/tabletop_tiny.yaml train.init_from=runs/sft/sft/policy
  pushcut eval  runs/tabletop_tiny

Any config field can be overridden as section.key=value, e.g. algo.clip_ratio_high=0.28
or env.type=libero.
"""


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.iterations=5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushcut", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list plugins, what they registered, and unavailable ones with the fix")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = csub.add_parser("show", help="print the fully resolved config")
    _add_config_args(show, required=False)
    show.add_argument("--doc", action="store_true", help="annotate every field with its documentation")

    p = sub.add_parser("train", help="RL (GRPO) training from a config")
    _add_config_args(p)
    p = sub.add_parser("plan", help="GPU memory a run needs per GPU (weights, gradients, optimizer, activations, rollout)")
    _add_config_args(p)
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GiB",
                   help="plan for GPUs of this size (default: the visible GPU's)")
    p.add_argument("--world", type=int, default=None, help="GPUs the learners use (default: train.learners)")
    p.add_argument("--strategy", choices=("replicate", "fsdp2"), default=None,
                   help="replicate: every rank holds the whole model; fsdp2: sharded (default: train.strategy)")
    p.add_argument("--offload", action="store_true", default=None,
                   help="optimizer states in CPU memory (default: train.offload)")
    p = sub.add_parser("sft", help="cold-start behaviour cloning on demonstrations")
    _add_config_args(p)
    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint on held-out states (greedy; eval.temperature=T samples)")
    p.add_argument("target", help="run directory or checkpoint directory")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p = sub.add_parser("demos", help="record scripted-expert demonstrations as HDF5")
    p.add_argument("env", help="env plugin name, e.g. tabletop")
    p.add_argument("--per-task", type=int, default=1, help="demonstrations per task")
    p.add_argument("--noise", type=float, default=0.0,
                   help="DART: std of Gaussian noise on the executed expert actions (env units); labels stay clean")
    p.add_argument("--out", default=None, help="output HDF5 file (default demos/<env>.hdf5)")
    p.add_argument("overrides", nargs="*", help="env.key=value overrides")
    p = sub.add_parser("predict", help="a checkpoint's greedy action chunk for one image and instruction, as JSON")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. an OpenVLA-OFT model)")
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, …) the robot camera would give")
    p.add_argument("--instruction", required=True, help="the task, e.g. 'put the bowl on the plate'")
    p.add_argument("--wrist-image", default=None, help="wrist camera image, for policy.num_images=2")
    p.add_argument("--state", default=None, help="proprio state as comma-separated numbers")
    p.add_argument("--policy", default="openvla", help="registered policy type (default openvla)")
    p.add_argument("overrides", nargs="*", help="policy.key=value options of the policy, e.g. policy.unnorm_key=libero_10")
    p = sub.add_parser("env", help="serve an env to trainers elsewhere (its own venv, another machine)")
    esub = p.add_subparsers(dest="env_command", metavar="SUBCOMMAND")
    serve = esub.add_parser("serve", help="serve the env a config names over TCP (see docs/remote-envs.md)")
    serve.add_argument("config", help="YAML file with an env: section (a run config works)")
    serve.add_argument("overrides", nargs="*", help="env.key=value overrides")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need a token)")
    serve.add_argument("--port", type=int, default=7171, help="TCP port (default 7171; 0 = any free port)")
    serve.add_argument("--envs", type=int, default=4, help="env instances to hold (default 4)")
    serve.add_argument("--token-file", default="", help="file holding the token (default: $PUSHCUT_ENV_TOKEN)")
    serve.add_argument("--tls-cert", default="", help="PEM certificate: serve over TLS")
    serve.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    serve.add_argument("--max-frame-mb", type=float, default=64.0, help="largest accepted message in MiB (default 64)")
    serve.add_argument("--hello-timeout", type=float, default=10.0,
                       help="seconds a connection may take to say hello (default 10)")
    serve.add_argument("--plugin", action="append", default=[], metavar="MODULE[:ATTR]",
                       help="load only this plugin (repeatable) instead of every installed one")
    p = sub.add_parser("quickstart", help="the whole idea on the embedded default: demos, SFT, RL, before/after table")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands plugins add (``pushcut_register_commands``), e.g. ``pushcut robot serve``. A
    plugin that fails to load costs only its commands here; ``pushcut plugins`` says why."""
    from pushcut.errors import PluginError
    from pushcut.pluginmanager import get_plugin_manager

    try:
        manager = get_plugin_manager()
    except PluginError:
        return  # the command that needs the plugins reports it (one line, exit 2)
    try:
        manager.register_commands(sub)
    except PluginError as exc:
        print(f"pushcut: warning: plugin commands are missing: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow options (`pushcut demos tabletop --per-task 2 env.image_size=96`)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        from pushcut import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(parser, args)
    except PushcutError as exc:
        print(f"pushcut: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pushcut: interrupted", file=sys.stderr)
        return 130


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pushcut import commands

    if getattr(args, "run", None) is not None:  # a plugin's command
        return int(args.run(args))
    if args.command == "plugins":
        return commands.plugins(as_json=args.json)
    if args.command == "config":
        if args.config_command != "show":
            parser.parse_args(["config", "--help"])
        return commands.config_show(args.config, args.overrides, with_docs=args.doc)
    if args.command == "train":
        return commands.train(args.config, args.overrides)
    if args.command == "plan":
        return commands.plan(args.config, args.overrides, args.gpu_memory, args.world, args.strategy, args.offload)
    if args.command == "sft":
        return commands.sft(args.config, args.overrides)
    if args.command == "eval":
        return commands.evaluate(args.target, args.overrides)
    if args.command == "demos":
        return commands.demos(args.env, args.per_task, args.out, args.overrides, noise=args.noise)
    if args.command == "predict":
        return commands.predict(args.policy, args.checkpoint, args.image, args.instruction, args.wrist_image,
                                args.state, args.overrides)
    if args.command == "env":
        if args.env_command != "serve":
            parser.parse_args(["env", "--help"])
        return commands.env_serve(args)
    if args.command == "quickstart":
        return commands.quickstart(args.overrides)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
