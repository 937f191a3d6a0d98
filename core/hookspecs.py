"""Every hook a pushcut plugin can implement. These docstrings are the plugin
author's reference (docs/plugins.md mirrors them, one section per hook).

A plugin is a module (or object) with functions decorated by
``pushcut.hookimpl`` whose names match the specs below, exposed through the
``pushcut`` entry-point group::

    [project.entry-points.pushcut]
    my_env = "my_package.plugin"

Registration hooks are called once when the plugin manager loads; event hooks
are called by the engine while a run goes on. Event hooks receive plain data
(dicts of floats, paths) and must not modify it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pushcut.contracts import Env, Policy, SuccessDetector
    from pushcut.envpool.transport import Transport
    from pushcut.pluginmanager import PluginManager
    from pushcut.registry import Registry

hookspec = pluggy.HookspecMarker("pushcut")
hookimpl = pluggy.HookimplMarker("pushcut")


# ----------------------------------------------------------------- registration


@hookspec(historic=True)
def pushcut_addhooks(pluginmanager: PluginManager) -> None:
    """Add hook specs of your own: ``pluginmanager.add_hookspecs(module)``.

    Called once for each plugin as it is registered (pytest's ``pytest_addhooks``).
    A plugin that other plugins extend declares its hooks here, in a module of its
    own, and calls them through the manager; the real-robot plugin adds
    ``pushcut_register_robot_drivers`` this way, and its registry appears in
    ``pushcut plugins`` beside the core's. The hooks a plugin adds must be
    ``pushcut_register_<kind>s(registry)`` hooks named in
    :data:`pushcut.pluginmanager.REGISTRIES`, or hooks the plugin calls itself.
    """


@hookspec
def pushcut_register_policies(registry: Registry[Policy]) -> None:
    """Register policies: ``registry.add(name, ConfigClass, factory)``.

    ``ConfigClass`` is a dataclass whose fields are the policy's options (the
    keys under ``policy:`` in a run config, besides ``type``); ``factory`` takes
    an instance of it and returns a :class:`pushcut.contracts.Policy`. Import
    heavy dependencies at module top: if one is missing, pushcut lists your
    plugin as unavailable with the install command instead of failing.
    """


@hookspec
def pushcut_register_envs(registry: Registry[Env]) -> None:
    """Register envs: ``registry.add(name, ConfigClass, factory)``.

    ``factory(config)`` returns a :class:`pushcut.contracts.Env`. It is called
    inside env workers, once per env instance; a worker gets the env's registered
    name and its config as plain data and looks the factory up in its own
    registry, so nothing is pickled and the config must round-trip through
    plain data.

    Unlike a policy plugin, an env plugin's entry-point module imports only its
    config and imports the simulator inside ``factory``: the trainer registers and
    validates every env, also those that run in another venv or on another
    machine. Report a missing simulator without importing it (raise
    ``ModuleNotFoundError`` when ``importlib.util.find_spec`` finds nothing), so the
    plugin is listed as unavailable with its install command.
    """


@hookspec
def pushcut_register_success_detectors(registry: Registry[SuccessDetector]) -> None:
    """Register success detectors: ``registry.add(name, ConfigClass, factory)``.

    ``factory(config)`` returns a :class:`pushcut.contracts.SuccessDetector`,
    which turns a finished episode into the binary reward. The default,
    ``env_success``, trusts the env's own success flag.
    """


@hookspec
def pushcut_register_transports(registry: Registry[Transport]) -> None:
    """Register env-pool transports: ``registry.add(name, ConfigClass, factory)``.

    A transport is how the pool reaches the workers that hold the envs
    (:class:`pushcut.envpool.Transport`). ``ConfigClass`` is a dataclass (a
    :class:`pushcut.configio.TransportConfig`) whose fields are the keys under
    ``rollout.transport:`` besides ``type``; ``factory(config, rollout)`` returns
    the transport, ``rollout`` being the run's ``rollout`` section (its
    ``startup_timeout_s`` for transports that start workers). Built in, through
    this same hook: ``inline``, ``process``, ``socket`` and ``ray``.
    """


@hookspec
def pushcut_register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``pushcut`` command line.

    ``subparsers`` is the top-level ``argparse`` subparsers object: add a parser
    (``p = subparsers.add_parser("robot", help=...)``), its arguments, and
    ``p.set_defaults(run=function)``; ``pushcut <name> ...`` then calls
    ``function(args)`` and exits with the int it returns. A
    :class:`pushcut.errors.PushcutError` it raises is printed as one line (exit 2).
    Import heavy modules inside ``function``, not here: every ``pushcut``
    invocation builds the parser. Built-in commands cannot be replaced.
    """


# ----------------------------------------------------------------- events


@hookspec
def pushcut_run_start(run_dir: Path, config: dict[str, Any], command: str) -> None:
    """A run begins. ``config`` is the fully resolved config (as saved in
    ``run_dir/config.yaml``); ``command`` is ``train``, ``sft`` or ``eval``."""


@hookspec
def pushcut_after_rollout(run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Rollouts for iteration ``step`` are collected. ``metrics`` holds the
    ``rollout/*`` and ``time/rollout_s`` values of this iteration."""


@hookspec
def pushcut_after_update(run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """The policy was updated at iteration ``step`` (RL or SFT). ``metrics``
    holds every value of this iteration, as appended to ``metrics.jsonl``."""


@hookspec
def pushcut_after_eval(run_dir: Path, step: int, metrics: dict[str, float], videos: list[Path]) -> None:
    """A greedy evaluation finished. ``metrics`` holds ``eval/success_rate`` and
    ``eval/success/<task_id>`` per task; ``videos`` lists MP4 files written."""


@hookspec
def pushcut_run_end(run_dir: Path, summary: dict[str, Any]) -> None:
    """A run ended (also after an error or interruption: then ``summary``
    has ``"status": "failed"`` or ``"interrupted"``)."""
