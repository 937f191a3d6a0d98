from dataclasses import dataclass

import dataclasses

import pytest
import yaml

from pushcut import hookimpl
from pushcut.config import AlgoConfig, PluginChoice, RunConfig
from pushcut.configio import apply_overrides, dump_config, field_docs, load_config
from pushcut.errors import ConfigError
from pushcut.rundir import RunDir, config_changes
from pushcut.testing import registered_plugin


@dataclass
class ToyPolicyConfig:
    hidden: int = 32
    """Hidden size."""
    dropout: float = 0.0
    """Dropout."""
    name: str = "x"
    """A name."""

    def __post_init__(self):
        if self.hidden < 1:
            raise ConfigError(f"policy.hidden must be >= 1, got {self.hidden}")


@dataclass
class ToyEnvConfig:
    tasks: tuple[str, ...] = ()
    """Tasks."""
    image_size: int = 64
    """Pixels."""


class ToyPlugin:
    @hookimpl
    def pushcut_register_policies(self, registry):
        registry.add("toy", ToyPolicyConfig, lambda c: c)

    @hookimpl
    def pushcut_register_envs(self, registry):
        registry.add("toyenv", ToyEnvConfig, lambda c: c)
        registry.add("other_env", ToyEnvConfig, lambda c: c)


TOY = ["policy.type=toy", "env.type=toyenv"]


@pytest.fixture
def manager():
    with registered_plugin(ToyPlugin(), "toy") as m:
        yield m


def test_defaults_are_the_recipe(manager):
    cfg = load_config(None, TOY, manager)
    assert cfg.algo.group_size == 8 and cfg.algo.temperature == 1.6
    assert (cfg.algo.clip_ratio_low, cfg.algo.clip_ratio_high) == (0.2, 0.28)
    assert cfg.algo.kl_coef == 0.0
    assert cfg.policy == PluginChoice("toy", ToyPolicyConfig())
    assert cfg.success.type == "env_success"
    default = load_config(None, [], manager)  # the embedded default plugins
    assert (default.policy.type, default.env.type) == ("tiny", "tabletop")


def test_yaml_then_overrides(manager, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  group_size: 4\npolicy:\n  type: toy\n  hidden: 16\nenv:\n  type: toyenv\n  tasks: [a, b]\n")
    cfg = load_config(path, ["algo.clip_ratio_high=0.3", "policy.dropout=0.1", "env.image_size=32"], manager)
    assert cfg.algo.group_size == 4 and cfg.algo.clip_ratio_high == 0.3
    assert cfg.policy.options == ToyPolicyConfig(hidden=16, dropout=0.1)
    assert cfg.env.options.tasks == ("a", "b") and cfg.env.options.image_size == 32


def test_type_override_selects_plugin(manager):
    cfg = load_config(None, [*TOY, "env.type=other_env"], manager)
    assert cfg.env.type == "other_env" and isinstance(cfg.env.options, ToyEnvConfig)


def test_unknown_key_names_valid_keys_and_closest(manager):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["algo.clip_ratio_hgh=0.3"], manager)
    msg = str(info.value)
    assert "'algo.clip_ratio_hgh'" in msg and "clip_ratio_low" in msg and "did you mean 'clip_ratio_high'" in msg


def test_unknown_plugin_key_uses_plugin_config(manager):
    with pytest.raises(ConfigError, match=r"'policy.hiden'.*did you mean 'hidden'"):
        load_config(None, [*TOY, "policy.hiden=3"], manager)


def test_unknown_top_level_section(manager):
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        load_config(None, ["trian.lr=1"], manager)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algo.group_size=abc", r"algo.group_size: expected int, got 'abc' \(str\)"),
        ("algo.group_size=2.5", r"algo.group_size: expected int, got 2.5"),
        ("train.lr=[1]", r"train.lr: expected float"),
        ("rollout.pipeline=3", r"rollout.pipeline: expected true or false"),
        ("env.tasks=abc", r"env.tasks: expected a list"),
        ("policy.hidden=0", r"policy.hidden must be >= 1"),
        ("algo.group_size=1", r"group_size must be >= 2"),
        ("algo.clip_ratio_high=1.5", r"clip_ratio_high must be in \(0, 1\)"),
        ("train.lr_warmup_steps=-1", r"train.lr_warmup_steps must be >= 0, got -1"),
        ("sft.demo_noise=-0.1", r"sft.demo_noise must be a finite number >= 0 \(env action units\), got -0.1"),
        ("sft.demo_noise=.inf", r"sft.demo_noise must be a finite number >= 0 \(env action units\), got inf"),
        ("eval.temperature=-1", r"eval.temperature must be a finite number >= 0 \(0 = greedy\), got -1"),
        ("eval.temperature=.nan", r"eval.temperature must be a finite number >= 0 \(0 = greedy\), got nan"),
        ("eval.samples_per_state=0", r"eval.samples_per_state must be >= 1, got 0"),
        ("train.start_sampling=greedy", r"train.start_sampling must be one of uniform, mixed, band, got 'greedy'"),
    ],
)
def test_wrong_types_and_values(manager, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [*TOY, override], manager)


def test_int_accepted_for_float(manager):
    assert load_config(None, [*TOY, "train.lr=1"], manager).train.lr == 1.0


def test_nonexistent_plugin_name(manager):
    from pushcut.errors import PluginError

    with pytest.raises(PluginError, match=r"unknown env 'tabeltop'; registered: ([a-z_]+, )*tabletop, toyenv; did you mean 'tabletop'") as info:
        load_config(None, ["env.type=tabeltop"], manager)
    names = str(info.value).split("registered: ")[1].split(";")[0].split(", ")
    assert names == sorted(names) and "other_env" in names  # every registered env, in order


def test_malformed_yaml(manager, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  group_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad.yaml.* at line \d+"):
        load_config(path, [], manager)


def test_missing_file(manager):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope/none.yaml", [], manager)


def test_top_level_not_mapping(manager, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(path, [], manager)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["algo.group_size"])


def test_saved_config_reproduces_run(manager, tmp_path):
    cfg = load_config(None, [*TOY, "algo.group_size=4", "policy.hidden=7", "env.tasks=[x]", "algo.clip_ratio_c=3"], manager)
    RunDir(tmp_path / "run").save_config(cfg)
    again = RunDir(tmp_path / "run").load_config([], manager)
    assert again.run_dir == str(tmp_path / "run")  # the directory it was loaded from, not a recorded name
    assert dataclasses.replace(again, run_dir=cfg.run_dir) == cfg
    data = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert data["run_dir"] == "."
    assert data["policy"] == {"type": "toy", "hidden": 7, "dropout": 0.0, "name": "x"}


def test_every_field_is_documented():
    from pushcut import config as config_module

    for cls in (config_module.AlgoConfig, config_module.CriticConfig, config_module.RolloutConfig, config_module.TrainConfig,
                config_module.EvalConfig, config_module.SFTConfig, RunConfig):
        import dataclasses

        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f"{cls.__name__} fields without a one-line doc: {missing}"
    assert field_docs(AlgoConfig)["clip_ratio_high"].startswith("ε_high")


def test_field_docs_are_whole_sentences():
    """``config show --doc`` prints a field's first docstring line alone, so it must not stop mid-sentence."""
    import dataclasses

    from pushcut import config as config_module
    from pushcut.plugins.envs.tabletop.config import TabletopConfig
    from pushcut.plugins.policies.openvla.config import OpenVLAConfig
    from pushcut.plugins.policies.tiny.config import TinyTokenVLAConfig

    cut = []
    for cls in (config_module.AlgoConfig, config_module.RolloutConfig, config_module.TrainConfig,
                config_module.EvalConfig, config_module.SFTConfig, RunConfig, TabletopConfig, TinyTokenVLAConfig, OpenVLAConfig):
        docs = field_docs(cls)
        cut += [f"{cls.__name__}.{f.name}: {docs[f.name]!r}" for f in dataclasses.fields(cls)
                if f.name in docs and not docs[f.name].rstrip().endswith((".", ")"))]
    assert not cut, "first docstring lines that stop mid-sentence:\n" + "\n".join(cut)


def test_shipped_configs_resolve():
    """Every YAML in configs/ whose plugins are available resolves and validates."""
    from pathlib import Path

    from pushcut.configio import read_yaml
    from pushcut.pluginmanager import get_plugin_manager

    manager = get_plugin_manager()
    root = Path(__file__).resolve().parents[2] / "configs"
    checked = 0
    for path in sorted(root.glob("*.yaml")):
        data = read_yaml(path)
        types = [(data.get(s) or {}).get("type") for s in ("policy", "env")]
        if all(t is None or t in reg for t, reg in zip(types, (manager.policies, manager.envs))):
            load_config(path, [], manager)
            checked += 1
    assert checked >= 1


def test_exponent_floats_and_algorithm_names(manager):
    assert load_config(None, [*TOY, "train.lr=5e-6"], manager).train.lr == 5e-6
    with pytest.raises(ConfigError, match=r"algo.advantage='gpro' is not one of drgrpo, gae, grpo, rloo; did you mean 'grpo'"):
        load_config(None, [*TOY, "algo.advantage=gpro"], manager)
    with pytest.raises(ConfigError, match=r"rollout.pipeline needs rollout.num_workers >= 2"):
        load_config(None, [*TOY, "rollout.pipeline=true", "rollout.num_workers=1"], manager)


def test_config_changes_lists_what_a_continued_run_may_not_change(manager):
    base = load_config(None, [*TOY, "policy.hidden=7"], manager)
    longer = load_config(None, [*TOY, "policy.hidden=7", "train.iterations=500", "eval.max_init_states=3",
                                "rollout.num_workers=4", "sft.steps=9", "run_dir=elsewhere"], manager)
    assert config_changes(base, longer) == {}
    other = load_config(None, [*TOY, "policy.hidden=8", "algo.temperature=1.0", "env.tasks=[a]"], manager)
    assert config_changes(base, other) == {"policy.hidden": (7, 8), "algo.temperature": (1.6, 1.0),
                                           "env.tasks": ([], ["a"])}
    assert config_changes(base, other, allowed=("policy", "algo.temperature", "env.tasks")) == {}
    assert config_changes(base, load_config(None, [*TOY, "env.type=other_env", "policy.hidden=7"], manager)) == {
        "env.type": ("toyenv", "other_env")}


def test_check_continues_names_each_change_and_passes_a_fresh_directory(manager, tmp_path):
    RunDir(tmp_path / "new").check_continues(load_config(None, TOY, manager), manager=manager)  # nothing saved: no check
    RunDir(tmp_path).save_config(load_config(None, [*TOY, f"run_dir={tmp_path}"], manager))
    RunDir(tmp_path).check_continues(load_config(None, [*TOY, "train.iterations=7"], manager), manager=manager)
    with pytest.raises(ConfigError, match=r"policy.dropout: 0.0 there, 0.5 now; algo.group_size: 8 there, 4 now\. "
                                          r"Pick a fresh run_dir"):
        RunDir(tmp_path).check_continues(load_config(None, [*TOY, "algo.group_size=4", "policy.dropout=0.5"], manager),
                                         manager=manager)


def test_run_paths_are_relative_inside_the_run_and_absolute_outside(manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outside").mkdir()
    cfg = load_config(None, [*TOY, "run_dir=runs/a", "train.init_from=runs/a/sft/policy",
                             "sft.demos=[runs/a/demos.hdf5,outside/more.hdf5]"], manager)
    RunDir(cfg.run_dir).save_config(cfg)
    data = yaml.safe_load((tmp_path / "runs/a/config.yaml").read_text())
    assert data["run_dir"] == "."
    assert data["train"]["init_from"] == "sft/policy"
    assert data["sft"]["demos"] == ["demos.hdf5", str(tmp_path / "outside/more.hdf5")]
    # moved, and loaded from another working directory: inside paths follow the run, outside ones stay
    (tmp_path / "runs/a").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "outside")
    moved = RunDir(tmp_path / "moved").load_config([], manager)
    assert moved.run_dir == str(tmp_path / "moved")
    assert moved.train.init_from == str(tmp_path / "moved/sft/policy")
    assert moved.sft.demos == (str(tmp_path / "moved/demos.hdf5"), str(tmp_path / "outside/more.hdf5"))
    # a path given on the command line is relative to the working directory, as always
    assert RunDir(tmp_path / "moved").load_config(["train.init_from=p"], manager).train.init_from == "p"
    assert RunDir(tmp_path / "moved").load_config([f"run_dir={tmp_path / 'moved'}"], manager).run_dir == str(
        tmp_path / "moved")
    with pytest.raises(ConfigError, match=r"run_dir=elsewhere differs from the run directory given .*cp -r"):
        RunDir(tmp_path / "moved").load_config(["run_dir=elsewhere"], manager)
    with pytest.raises(ConfigError, match="without config.yaml"):
        RunDir(tmp_path / "outside").load_config([], manager)


def test_policy_device_has_moved_to_train_device(manager):
    with pytest.raises(ConfigError, match=r"'policy.device' has moved: set train.device"):
        load_config(None, ["policy.device=cpu"], manager)
