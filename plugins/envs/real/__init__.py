"""``real``: the real-robot bridge. The robot PC runs ``pushcut robot serve ROBOT_CONFIG``;
the trainer reaches it with ``env.type=real rollout.transport=socket
rollout.transport.addresses=[ROBOT:PORT] rollout.envs_per_worker=1``.

Between the trainer and the robot sits the robot-side safety layer
(:mod:`.safety`): per-dimension action limits, NaN/inf refusal, maximum change
per step, an end-effector workspace box and joint limits (clip or refuse), a
command-rate watchdog, an e-stop that latches until a person resets it, an
episode step cap, and homing (optionally confirmed by the operator) between
episodes. Robots are :class:`~.driver.RobotDriver` plugins registered through
``pushcut_register_robot_drivers``, a hook this plugin adds (:mod:`.hookspecs`);
built in: ``sim`` and ``replay`` (:mod:`.drivers`). See docs/real-robot.md.
"""

from __future__ import annotations

from pushcut import hookimpl
from pushcut.plugins.envs.real.config import RealEnvConfig, SafetyConfig
from pushcut.plugins.envs.real.driver import RobotDriver, RobotObservation, RobotSpec, RobotState
from pushcut.plugins.envs.real.drivers import ReplayDriver, ReplayDriverConfig, SimDriver, SimDriverConfig
from pushcut.plugins.envs.real.env import RobotEnv

__all__ = ["RealEnvConfig", "ReplayDriver", "ReplayDriverConfig", "RobotDriver", "RobotEnv", "RobotObservation",
           "RobotSpec", "RobotState", "SafetyConfig", "SimDriver", "SimDriverConfig"]


@hookimpl
def pushcut_addhooks(pluginmanager) -> None:
    from pushcut.plugins.envs.real import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def pushcut_register_envs(registry) -> None:
    registry.add("real", RealEnvConfig, RobotEnv)


@hookimpl
def pushcut_register_commands(subparsers) -> None:
    p = subparsers.add_parser("robot", help="serve a robot, behind its safety layer, to a trainer (docs/real-robot.md)")
    rsub = p.add_subparsers(dest="robot_command", metavar="SUBCOMMAND", required=True)
    serve = rsub.add_parser("serve", help="serve the robot a config's env: section (type: real) names over TCP")
    serve.add_argument("config", help="YAML file with an env: section of type real (driver: {type: ...}, safety, ...)")
    serve.add_argument("overrides", nargs="*", help="env.key=value overrides")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need a token)")
    serve.add_argument("--port", type=int, default=7171, help="TCP port (default 7171; 0 = any free port)")
    serve.add_argument("--token-file", default="", help="file holding the token (default: $PUSHCUT_ENV_TOKEN)")
    serve.add_argument("--tls-cert", default="", help="PEM certificate: serve over TLS")
    serve.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    serve.add_argument("--plugin", action="append", default=[], metavar="MODULE[:ATTR]",
                       help="load only this plugin (repeatable), e.g. the one registering a robot driver")
    serve.set_defaults(run=_robot_serve)


def _robot_serve(args) -> int:
    from pushcut.serving import ServeOptions
    from pushcut.plugins.envs.real.server import serve

    options = ServeOptions(host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return serve(args.config, args.overrides, options, plugins=args.plugin, token_file=args.token_file)


@hookimpl
def pushcut_register_robot_drivers(registry) -> None:
    registry.add("sim", SimDriverConfig, SimDriver)
    registry.add("replay", ReplayDriverConfig, ReplayDriver)
