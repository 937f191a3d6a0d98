"""What each CLI subcommand does (argument parsing lives in cli.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from pushcut.config import PluginChoice
from pushcut.configio import dump_config, field_docs, load_config, read_yaml
from pushcut.errors import ConfigError, PluginError
from pushcut.pluginmanager import PluginManager
from pushcut.rundir import CHECKPOINT_POLICY, CHECKPOINT_STATE, CONFIG_FILE, RunDir


def plugins(as_json: bool = False) -> int:
    """Print every plugin, what it registered, and why any is unavailable."""
    manager = PluginManager()
    error: PluginError | None = None
    try:
        manager.load_entry_points()
    except PluginError as exc:  # still show the table; the broken plugin is in it
        error = exc
    infos = sorted(manager.infos.values(), key=lambda i: (i.distribution != "pushcut", i.name))
    if as_json:
        print(json.dumps([vars(i) for i in infos], indent=2))
    else:
        for info in infos:
            origin = "built-in" if info.distribution == "pushcut" else info.distribution
            if info.status == "loaded":
                what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items() if names)
                away = [f"{e.name} needs {e.missing()!r}, not in this Python: build it elsewhere (rollout.transport.python, "
                        "a server)" for e in manager.envs if e.plugin == info.name and e.missing()]
                print(f"{info.name:<16} {origin:<22} {what or '(registered nothing)'}"
                      + (f"  [{'; '.join(away)}]" if away else ""))
            else:
                print(f"{info.name:<16} {origin:<22} {info.status.upper()}: {info.reason}")
        if not manager.autoload:
            print("(third-party plugins not loaded: PUSHCUT_DISABLE_PLUGIN_AUTOLOAD is set)")
    if error is not None:
        print(f"pushcut: error: {error}", file=sys.stderr)
        return 2
    return 0


def _split_config_arg(config: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``pushcut config show a=1`` has no file: the first positional is an override."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, list(overrides)


def config_show(config: str | None, overrides: Sequence[str], with_docs: bool = False) -> int:
    """Print the fully resolved config (defaults < file < overrides)."""
    path, overrides = _split_config_arg(config, overrides)
    resolved = load_config(path, overrides)
    text = dump_config(resolved)
    if with_docs:
        text = _annotate(text, resolved)
    print(text, end="")
    return 0


def _annotate(text: str, resolved) -> str:
    """Append each field's one-line doc as a YAML comment."""
    docs: dict[str, dict[str, str]] = {}
    for f_name, doc in field_docs(type(resolved)).items():
        docs.setdefault("", {})[f_name] = doc
        value = getattr(resolved, f_name)
        cls = type(value.options) if isinstance(value, PluginChoice) else type(value)
        docs[f_name] = field_docs(cls)
    out, section, sub = [], "", ""
    for line in text.splitlines():
        key = line.strip().split(":")[0]
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            section = key
            doc = docs.get("", {}).get(key)
        elif indent == 2:
            sub = key
            doc = docs.get(section, {}).get(key)
            value = getattr(resolved, section, None)
            nested = getattr(value, key, None) if not isinstance(value, PluginChoice) else None
            if isinstance(nested, PluginChoice):  # a registered choice inside a section, e.g. rollout.transport
                nested = nested.options
            if dataclasses.is_dataclass(nested):  # a section inside a section, e.g. algo.critic
                docs[f"{section}.{key}"] = field_docs(type(nested))
        else:
            doc = docs.get(f"{section}.{sub}", {}).get(key)
        out.append(f"{line}  # {doc}" if doc and ":" in line else line)
    return "\n".join(out) + "\n"


def _config_or_run_dir(target: str, overrides: Sequence[str]):
    """A YAML file, or a run directory (its saved config.yaml: resume / reproduce)."""
    path = Path(target)
    if path.is_dir():
        return RunDir(path).load_config(overrides)
    if path.name == CONFIG_FILE and path.is_file() and (read_yaml(path) or {}).get("run_dir") == ".":
        return RunDir(path.parent).load_config(overrides)  # a run's own config.yaml: the run it belongs to
    return load_config(path, overrides)


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _plan_for(cfg, gpu_gib: float | None, world: int | None, strategy: str | None, offload: bool | None):
    from pushcut.plan import plan, policy_shape

    strategy = strategy or cfg.train.strategy
    offload = cfg.train.offload if offload is None else offload

    if gpu_gib is None:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("no GPU is visible here: pass --gpu-memory GiB to plan for one (e.g. 80)")
        gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    world = world or (cfg.train.learners if cfg.train.backend == "ray" else 1)
    shape = policy_shape(cfg)
    options = cfg.policy.options
    num_images = getattr(options, "num_images", 1) or 1
    seq = 256 * num_images + 100 if cfg.policy.type == "openvla" else 64
    dtype = getattr(options, "dtype", "float32")
    p = plan(shape, world=world, strategy=strategy, dtype_bytes=2 if dtype in ("bfloat16", "float16") else 4,
             lora_rank=getattr(options, "lora_rank", 0) or 0, offload=offload,
             micro_batch=min(cfg.train.micro_batch_size, 8) if cfg.policy.type == "openvla" else 8, seq_len=seq,
             checkpointing=bool(getattr(options, "gradient_checkpointing", True)),
             rollout_batch=cfg.rollout.num_workers * cfg.rollout.envs_per_worker, gpu_gib=gpu_gib,
             rollout_on_ranks=cfg.rollout.inference == "learners")
    return p, shape, world, strategy, offload


def plan(config: str, overrides: Sequence[str], gpu_gib: float | None, world: int | None, strategy: str | None,
         offload: bool | None) -> int:
    """``pushcut plan``: print the per-GPU memory a run needs; exit 2 with the fix when it does not fit."""
    from pushcut.plan import advice, format_plan

    cfg = _config_or_run_dir(config, overrides)
    p, shape, world, strategy, offload = _plan_for(cfg, gpu_gib, world, strategy, offload)
    print(format_plan(p, shape, world, strategy))
    if not p.fits:
        print(f"pushcut: error: {advice(p, world, strategy, getattr(cfg.policy.options, 'lora_rank', 0), offload)}",
              file=sys.stderr)
        return 2
    return 0


def train(config: str, overrides: Sequence[str]) -> int:
    """RL from a config file, or resume a run directory. On a GPU, a run the memory planner says
    cannot fit is refused before it starts, with what to change."""
    from pushcut.trainer import Trainer

    _setup_logging()
    resolved = _config_or_run_dir(config, overrides)
    if resolved.train.device.startswith("cuda"):
        from pushcut.plan import advice

        p, _, world, strategy, offload = _plan_for(resolved, None, None, None, None)
        if not p.fits:
            lora_rank = getattr(resolved.policy.options, "lora_rank", 0)
            raise ConfigError(f"this run cannot fit: {advice(p, world, strategy, lora_rank, offload)} "
                              f"(pushcut plan shows the breakdown)")
    summary = Trainer(resolved).run()
    print(json.dumps(summary, indent=2))
    return 0


def _eval_target(target: str) -> tuple[Path, Path | None]:
    """``(run_dir, policy weights)`` of what `pushcut eval` was pointed at: a run directory (its
    newest checkpoint; None when it has none), a checkpoint directory, or a saved policy
    directory inside a run directory, such as the SFT policy ``runs/x/sft/policy``."""
    path = Path(target).resolve()
    if not path.is_dir():
        raise ConfigError(f"{target!r} is not a directory: pass a run directory, a checkpoint directory "
                          "or a policy directory inside a run directory")
    if RunDir(path).config.is_file():
        from pushcut.checkpoint import resume_candidates

        ckpt = next(resume_candidates(path), None)  # the newest that verifies
        return path, (ckpt / CHECKPOINT_POLICY if ckpt is not None else None)
    run_dir = next((p for p in path.parents[:3] if RunDir(p).config.is_file()), None)
    if run_dir is not None and (path / CHECKPOINT_STATE).is_file():
        return run_dir, path / CHECKPOINT_POLICY
    if run_dir is not None and any(path.iterdir()):
        return run_dir, path
    raise ConfigError(
        f"{target!r} is neither a run directory (with config.yaml), a checkpoint (runs/X/checkpoints/step_N) "
        "nor a policy directory inside a run directory (runs/X/sft/policy)"
    )


def evaluate(target: str, overrides: Sequence[str]) -> int:
    """Evaluation of a run directory (its newest checkpoint), a checkpoint directory or a policy
    directory inside a run directory: greedy, or sampled with ``eval.temperature`` and
    ``eval.samples_per_state``, on the held-out states or (``eval.split=train``) the train states."""
    from pushcut.build import build_collector, build_policy, build_pool
    from pushcut.evaluate import evaluate as run_eval
    from pushcut.evaluate import write_report
    from pushcut.events import Progress

    _setup_logging()
    run_dir, weights = _eval_target(target)
    paths = RunDir(run_dir)
    cfg = RunDir(run_dir).load_config(overrides)
    if weights is None:
        from pushcut.errors import CheckpointError

        hint = f"; evaluate its SFT policy with: pushcut eval {paths.sft_policy}" if (
            paths.sft_policy.is_dir()) else ""
        raise CheckpointError(f"run directory {str(run_dir)!r} has no checkpoint yet{hint}")
    policy = build_policy(cfg, weights).eval()
    pool = build_pool(cfg)
    collector = None
    try:
        collector = build_collector(cfg, pool, policy)
        progress = Progress(1, "eval")
        report, videos = run_eval(collector, cfg.eval, seed=cfg.seed, video_dir=paths.videos,
                                  progress=lambda done, total: progress.status(f"{done}/{total} episodes"))
        progress.close()
    finally:
        pool.close()
        if collector is not None:
            collector.detector.close()
    report["checkpoint"] = str(weights)
    report["videos"] = [str(v) for v in videos]
    write_report(report, paths.eval_json)
    _print_eval(report)
    print(f"wrote {paths.eval_json} and {len(videos)} video(s) in {paths.videos}")
    return 0


def _print_eval(report: dict) -> None:
    if report.get("split") == "train":
        print("on the train split: the initial states RL trains on and demos come from, not held out")
    if report.get("temperature"):
        print(f"sampled at temperature {report['temperature']:g}, "
              f"{report['samples_per_state']} episode(s) per start state")
    from pushcut.evaluate import format_stages

    staged = any("failures_by_stage" in row for row in report["per_task"].values())
    print(f"{'task':<32} {'success':>8} {'episodes':>9}" + ("   failures by furthest stage" if staged else ""))
    for task, row in report["per_task"].items():
        stages = format_stages(row["failures_by_stage"]) if "failures_by_stage" in row else ""
        mark = f"  ({row['failed']} lost)" if row.get("failed") else ""
        print(f"{task:<32} {row['success_rate']:>8.2f} {row['episodes']:>9d}{mark}   {stages}".rstrip())
    print(f"{'mean':<32} {report['success_rate']:>8.2f} {report['episodes']:>9d}")
    lost = report.get("failed", 0)
    if lost:  # never only as fewer episodes in the table
        reasons: dict[str, int] = {}
        for row in report["per_task"].values():
            for reason, n in row.get("lost", {}).items():
                reasons[reason] = reasons.get(reason, 0) + n
        worst = max(reasons, key=reasons.get) if reasons else "unknown"
        print(f"WARNING: {lost} episode(s) were lost and are not in the success rates (tasks marked 'lost'); "
              f"most often: {worst} ({reasons.get(worst, 0)}x). See eval.json per_task.*.lost; an env worker "
              "killed for memory shows here: lower rollout.envs_per_worker", file=sys.stderr)


def sft(config: str, overrides: Sequence[str]) -> int:
    """Behaviour cloning on demo files; prints where the policy was saved."""
    from pushcut.sft import run_sft

    _setup_logging()
    out = run_sft(_config_or_run_dir(config, overrides))
    print(f"SFT policy saved to {out}\nstart RL from it with: pushcut train {config} train.init_from={out}")
    return 0


def demos(env: str, per_task: int, out: str | None, overrides: Sequence[str], noise: float = 0.0) -> int:
    """Record scripted-expert demos of a registered env into an HDF5 file (``noise``: DART, see
    :func:`pushcut.demos.record_expert_demo`). With ``rollout.*`` overrides (``rollout.transport.python=`` a
    simulator's venv, ``rollout.transport=socket rollout.transport.addresses=[...]``) the env runs where they
    say and the expert's actions come through the env transport; otherwise it is built here."""
    from pushcut.demos import record_demo_file

    if per_task < 1:
        raise ConfigError(f"--per-task must be >= 1, got {per_task}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"--noise must be a finite number >= 0 (env action units), got {noise}")
    bad = [o for o in overrides if not o.startswith(("env.", "rollout."))]
    if bad:
        raise ConfigError(f"`pushcut demos` takes env.key=value and rollout.key=value overrides only, got {bad}")
    from pushcut.configio import apply_overrides

    data = apply_overrides({}, overrides)
    out = out or f"demos/{env}.hdf5"
    if "rollout" in data:
        return _demos_through_transport(env, per_task, out, data, noise)
    from pushcut.configio import build_dataclass
    from pushcut.pluginmanager import get_plugin_manager

    entry = get_plugin_manager().envs.get(env)
    options = build_dataclass(entry.config_class, data.get("env", {}), "env")
    with entry.build(options) as instance:
        path, recorded = record_demo_file(instance, env, per_task, out, noise=noise)
    print(f"wrote {len(recorded)} demos ({sum(len(d) for d in recorded)} steps) to {path}")
    return 0


def _demos_through_transport(env: str, per_task: int, out: str, data: dict, noise: float) -> int:
    from pushcut.build import build_pool
    from pushcut.configio import resolve
    from pushcut.demos import record_demo_file
    from pushcut.envpool.slot import SlotEnv

    rollout = {**data["rollout"], "envs_per_worker": 1, "num_workers": 1}  # socket: one worker per address anyway
    config = resolve({"env": {"type": env, **data.get("env", {})}, "rollout": rollout})
    with build_pool(config) as pool:
        path, recorded = record_demo_file(SlotEnv(pool), env, per_task, out, noise=noise)
    print(f"wrote {len(recorded)} demos ({sum(len(d) for d in recorded)} steps) to {path} (env through the "
          f"{config.rollout.transport.type} transport)")
    return 0


def _read_image(path: str, what: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ConfigError(f"{what} {path!r} does not exist")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{what} {path!r} is not a readable image: {exc}") from None


def predict(policy_type: str, checkpoint: str, image: str, instruction: str, wrist_image: str | None,
            state: str | None, overrides: Sequence[str]) -> int:
    """Build a policy from a checkpoint (its options as ``policy.key=value``) and print its greedy action
    chunk for one observation as JSON, with what the policy resolved (:meth:`Policy.describe`)."""
    import numpy as np
    import torch

    from pushcut.configio import apply_overrides, build_dataclass
    from pushcut.contracts import ObsBatch
    from pushcut.pluginmanager import get_plugin_manager

    bad = [o for o in overrides if not o.startswith("policy.")]
    if bad:
        raise ConfigError(f"`pushcut predict` takes policy.key=value overrides only, got {bad}")
    options = apply_overrides({}, overrides).get("policy", {})
    options["checkpoint"] = checkpoint
    states = None
    if state is not None:
        try:
            states = np.array([[float(v) for v in state.split(",")]], dtype=np.float32)
        except ValueError:
            raise ConfigError(f"--state must be comma-separated numbers, got {state!r}") from None
    obs = ObsBatch(
        images=_read_image(image, "--image")[None],
        instructions=[instruction],
        task_ids=["predict"],
        wrist_images=None if wrist_image is None else _read_image(wrist_image, "--wrist-image")[None],
        states=states,
    )
    entry = get_plugin_manager().policies.get(policy_type)
    policy = entry.build(build_dataclass(entry.config_class, options, "policy")).eval()
    with torch.no_grad():
        sample = policy.act(obs, 0.0)
    result = {"actions": sample.actions[0].tolist(), "chunk_size": int(sample.actions.shape[1]),
              "action_dim": int(sample.actions.shape[2])}
    tokens = sample.sample.get("tokens")
    if isinstance(tokens, torch.Tensor):  # token policies: the ids, to compare against the original code
        result["tokens"] = tokens[0].tolist()
    result.update(policy.describe())
    print(json.dumps(result))
    return 0


def quickstart(overrides: Sequence[str]) -> int:
    """Demos → SFT → eval → GRPO → eval on the embedded default."""
    from pushcut.quickstart import run_quickstart

    _setup_logging()
    run_quickstart(list(overrides))
    return 0


def env_serve(args) -> int:
    """``pushcut env serve``: serve the env a config names until interrupted (see :mod:`pushcut.envpool.server`)."""
    from pushcut.envpool.server import ServeOptions, serve

    options = ServeOptions(host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                           max_frame_mb=args.max_frame_mb, hello_timeout_s=args.hello_timeout)
    return serve(args.config, args.overrides, options, envs=args.envs, plugins=args.plugin, token_file=args.token_file)

