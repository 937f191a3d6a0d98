"""pushcut.testing's Env contract on Meta-World, run by pytest *inside* the Meta-World venv (which has
no torch): tests/plugins/envs/metaworld/test_metaworld_venv.py starts it there. Not collected by
the main suite (the trainer's venv has no Meta-World)."""

import pytest

from pushcut.plugins.envs.metaworld import MetaworldConfig, make_env
from pushcut.testing import EnvContract


class TestMetaworldEnv(EnvContract):
    chunk = 8

    @pytest.fixture(scope="class")
    def shared(self):
        env = make_env(MetaworldConfig(tasks=("reach-v3", "drawer-close-v3"), image_size=32, video_size=48,
                                       max_steps=150))
        yield env
        env.close()

    @pytest.fixture
    def env(self, shared):
        return shared


def test_no_torch_here():
    import importlib.util
    import sys

    assert importlib.util.find_spec("torch") is None and "torch" not in sys.modules
