"""The CLI: help, plugins, config show, and one-line exit-2 errors for bad input."""

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from pushcut import hookimpl
from pushcut.cli import main
from pushcut.errors import ConfigError
from pushcut.testing import registered_plugin


@dataclass
class Cfg:
    size: int = 3
    """Size."""


class Toy:
    @hookimpl
    def pushcut_register_policies(self, registry):
        registry.add("toy", Cfg, lambda c: c)

    @hookimpl
    def pushcut_register_envs(self, registry):
        registry.add("toyenv", Cfg, lambda c: c)


@pytest.fixture
def toy():
    with registered_plugin(Toy(), "toy") as manager:
        yield manager


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("pushcut: error: ") and "Traceback" not in err
    return lines[0]


def test_help_tells_a_newcomer_what_to_do(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for word in ("quickstart", "plugins", "config show", "train", "sft", "eval", "algo.clip_ratio_high=0.28"):
        assert word in out


def test_plugins_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "env_success" in out and "built-in" in out


def test_config_show_resolves(toy, capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  group_size: 4\n")
    assert main(["config", "show", str(path), "policy.type=toy", "env.type=toyenv", "policy.size=5"]) == 0
    out = capsys.readouterr().out
    assert "group_size: 4" in out and "size: 5" in out and "clip_ratio_high: 0.28" in out


def test_config_show_with_docs(toy, capsys):
    assert main(["config", "show", "--doc", "policy.type=toy", "env.type=toyenv"]) == 0
    out = capsys.readouterr().out
    assert "clip_ratio_high: 0.28  # ε_high" in out and "size: 3  # Size." in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["config", "show", "env.type=nosuch"], "unknown env 'nosuch'"),
        (["config", "show", "algo.group_size=x"], "algo.group_size: expected int"),
        (["config", "show", "algo.nope=1"], "unknown config key 'algo.nope'"),
        (["train", "missing.yaml"], "does not exist"),
    ],
)
def test_bad_input_exit_2_one_line(toy, capsys, argv, fragment):
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_malformed_yaml_exit_2(toy, capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lr: 1\n")
    assert main(["config", "show", str(path)]) == 2
    assert "malformed YAML" in one_line_error(capsys)


def test_plugin_raising_at_import_exit_2(fake_dist, monkeypatch, capsys):
    fake_dist("acme-boom", {"boom": "acme_cli_boom"}, {"acme_cli_boom": "raise ImportError('no, it is broken')\n"})
    monkeypatch.delenv("PUSHCUT_DISABLE_PLUGIN_AUTOLOAD")
    assert main(["config", "show"]) == 2
    line = one_line_error(capsys)
    assert "'boom'" in line and "failed to import" in line
    # `pushcut plugins` still shows the table, marks it broken, and exits 2
    assert main(["plugins"]) == 2
    captured = capsys.readouterr()
    assert "BROKEN" in captured.out and "failed to import" in captured.err


def test_two_plugins_one_name_exit_2(fake_dist, monkeypatch, capsys):
    src = (
        "from dataclasses import dataclass\nfrom pushcut import hookimpl\n@dataclass\nclass C: pass\n"
        "@hookimpl\ndef pushcut_register_envs(registry):\n    registry.add('dup', C, C)\n"
    )
    fake_dist("acme-d1", {"d1": "acme_cli_d1"}, {"acme_cli_d1": src})
    fake_dist("acme-d2", {"d2": "acme_cli_d2"}, {"acme_cli_d2": src})
    monkeypatch.delenv("PUSHCUT_DISABLE_PLUGIN_AUTOLOAD")
    assert main(["plugins"]) == 2
    assert "registered by two plugins" in capsys.readouterr().err


def test_console_script_runs():
    """The installed `pushcut` entry point, in a real subprocess."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "pushcut.cli", "config", "show", "algo.group_size=1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "group_size" in proc.stderr


class HelloCommand:
    @hookimpl
    def pushcut_register_commands(self, subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(run=self.run)

    @staticmethod
    def run(args):
        if args.name == "nobody":
            raise ConfigError("nobody to greet: pass --name NAME")
        print(f"hello {args.name}")
        return 0


def test_a_plugin_adds_a_subcommand_and_its_errors_are_one_line(capsys):
    with registered_plugin(HelloCommand(), "hello-cmd"):
        assert main(["hello", "--name", "robot"]) == 0
        assert capsys.readouterr().out.strip() == "hello robot"
        assert main(["hello", "--name", "nobody"]) == 2
        assert capsys.readouterr().err.strip() == "pushcut: error: nobody to greet: pass --name NAME"


class ClashingCommand:
    @hookimpl
    def pushcut_register_commands(self, subparsers):
        subparsers.add_parser("train")


def test_a_plugin_command_cannot_replace_a_builtin_one(capsys):
    with registered_plugin(ClashingCommand(), "clash"):
        assert main(["plugins"]) == 0  # the CLI still works
        assert "plugin 'clash' raised in pushcut_register_commands" in capsys.readouterr().err


def test_the_robot_server_is_a_plugin_command(capsys):
    with pytest.raises(SystemExit):
        main(["robot", "serve", "--help"])
    assert "--token-file" in capsys.readouterr().out
