"""The module the ``pushcut`` entry point names: registration hooks only.

pushcut imports this module when it loads plugins and calls every function
decorated with ``@hookimpl`` whose name matches a hook spec. Keep it light:
registering only stores the config class and the factory; nothing is built
until a run asks for ``env.type=hello_line`` or ``policy.type=hello_gaussian``.
"""

from __future__ import annotations

from pushcut import hookimpl
from pushcut_hello.env import HelloLineConfig, HelloLineEnv
from pushcut_hello.policy import HelloGaussianConfig, HelloGaussianPolicy


@hookimpl
def pushcut_register_envs(registry) -> None:
    registry.add("hello_line", HelloLineConfig, HelloLineEnv)


@hookimpl
def pushcut_register_policies(registry) -> None:
    registry.add("hello_gaussian", HelloGaussianConfig, HelloGaussianPolicy)
