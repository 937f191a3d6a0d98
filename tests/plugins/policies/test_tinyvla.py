"""The TinyVLA policy: the contract suites (diffusion head, with and without task adapters), the
stated per-step Gaussian, adapter routing and isolation under SFT and RL, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="the tinyvla policy needs the [tinyvla] extra (peft)")

from pushcut.configio import load_config  # noqa: E402
from pushcut.contracts import ObsBatch  # noqa: E402
from pushcut.demos import Demo  # noqa: E402
from pushcut.errors import CheckpointError, ConfigError  # noqa: E402
from pushcut.plugins.policies import tinyvla as tinyvla_plugin  # noqa: E402
from pushcut.plugins.policies.tinyvla import AdaptersConfig, TinyVLAConfig, TinyVLAPolicy  # noqa: E402
from pushcut.plugins.policies.tinyvla.modeling import build_llm, build_vision  # noqa: E402
from pushcut.registry import Registry  # noqa: E402
from pushcut.sft import train_sft  # noqa: E402
from pushcut.testing import PolicyContract, registered_plugin  # noqa: E402
from pushcut.toys import ToyPlugin  # noqa: E402
from pushcut.trainer import Trainer  # noqa: E402

TASKS = ("pick", "push")
INSTRUCTIONS = {"pick": "pick up the red cube", "push": "push the blue block", "other": "open the drawer"}


def small_config(**overrides) -> TinyVLAConfig:
    base = dict(image_size=16, patch_size=8, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                vision_intermediate_size=64, hidden_size=32, layers=2, heads=2, intermediate_size=64,
                max_instruction_tokens=24, chunk_size=4, action_dim=3, head_width=32, head_blocks=2,
                unet_dims=(16, 32), unet_groups=4, timestep_dim=16, train_timesteps=20, inference_steps=4,
                action_low=(-0.5, 0.0, -1.0), action_high=(0.5, 2.0, 1.0))
    base.update(overrides)
    return TinyVLAConfig(**base)


def adapter_config(**overrides) -> TinyVLAConfig:
    adapters = AdaptersConfig(**{"tasks": TASKS, "active": "push", "rank": 4, **overrides.pop("adapters", {})})
    return small_config(adapters=adapters, **overrides)


def make_obs(config: TinyVLAConfig, task_ids=("pick", "push", "other", "push"), seed: int = 0) -> ObsBatch:
    rng = np.random.default_rng(seed)
    b = len(task_ids)
    return ObsBatch(
        images=rng.integers(0, 256, (b, config.image_size, config.image_size, 3), dtype=np.uint8),
        instructions=[INSTRUCTIONS[t] for t in task_ids], task_ids=list(task_ids),
        states=rng.normal(size=(b, config.state_dim)).astype(np.float32) if config.use_state else None,
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturb_adapters(policy: TinyVLAPolicy, scale: float = 0.3) -> None:
    """LoRA B starts at zero (an adapter starts as the base model): give every adapter its own update."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


# ------------------------------------------------------------------ the contract suites


class TestTinyVLAContract(PolicyContract):
    """Conditional-MLP head (the CPU default), with the proprio state."""

    log_densities = True

    def config(self) -> TinyVLAConfig:
        return small_config(use_state=True, state_dim=5)

    @pytest.fixture
    def make_policy(self):
        return lambda: TinyVLAPolicy(self.config())

    @pytest.fixture
    def policy(self, make_policy):
        return make_policy()

    @pytest.fixture
    def obs_batch(self):
        return make_obs(self.config())


class TestTinyVLAUnetContract(TestTinyVLAContract):
    """Diffusion Policy's 1-D U-Net head, SigLIP tower, the last 2 of 4 steps scored."""

    def config(self) -> TinyVLAConfig:
        return small_config(head="unet", vision_tower="siglip", rl_steps=2)


class TestTinyVLAAdaptersContract(TestTinyVLAContract):
    """Per-task LoRA adapters and heads; the batch mixes tasks (and one without an adapter)."""

    def config(self) -> TinyVLAConfig:
        return adapter_config()

    @pytest.fixture
    def make_policy(self):
        def make():
            policy = TinyVLAPolicy(self.config())
            perturb_adapters(policy)
            return policy
        return make


class TestTinyVLASharedHeadContract(TestTinyVLAContract):
    """Adapters with one shared head, trained with the base."""

    def config(self) -> TinyVLAConfig:
        return adapter_config(adapters={"per_task_head": False, "train_base": True, "targets": ("dense_h_to_4h",)})


# ------------------------------------------------------------------ the stated Gaussian


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_steps_follow_the_stated_gaussian(temperature: float) -> None:
    """Standardise every sampled element with the stated std s = T·max(σ_DDIM, min_std) and the
    log-density act returned: the z's must be N(0, 1) (χ²₁ frequencies), for every step."""
    config = small_config(eta=0.5, min_std=0.1)
    policy = TinyVLAPolicy(config)
    torch.manual_seed(0)
    obs = make_obs(config, ("pick",) * 256)
    with torch.no_grad():
        sample = policy.act(obs, temperature)
    stds = policy.step_std(temperature)
    assert torch.allclose(stds, temperature * policy.schedule.ddim_sigma.clamp(min=0.1))
    k, per_step = config.scored_steps, config.chunk_size * config.action_dim
    lp = sample.log_probs.view(len(obs), k, per_step)
    z2 = -2 * (lp + stds.log().view(1, k, 1) + 0.5 * math.log(2 * math.pi))
    for step in range(k):
        z = z2[:, step].sqrt().flatten()
        for bound, expected in ((0.5, 0.3829), (1.0, 0.6827), (2.0, 0.9545)):
            share = float((z < bound).float().mean())
            assert abs(share - expected) < 0.03, (step, bound, share, expected)
    # And the chain itself: x_{k+1} − μ_k, with μ_k recomputed independently of act's code path.
    chain = sample.sample["chain"]
    with torch.no_grad():
        cond = policy._cond(obs, list(range(len(obs))), policy._image_tokens(obs))
        kk = torch.zeros(len(obs), dtype=torch.long)
        sched = policy.schedule
        eps = policy.head(chain[:, 0], sched.timesteps[kk], cond)
        a_t, a_p, s = float(sched.alpha_t[0]), float(sched.alpha_prev[0]), float(stds[0])
        x0 = ((chain[:, 0] - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
        mean = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - s * s, 0.0)) * eps
    z = ((chain[:, 1] - mean) / s).flatten()
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_greedy_is_deterministic_ddim_and_batch_independent() -> None:
    config = adapter_config()
    policy = TinyVLAPolicy(config)
    perturb_adapters(policy)
    obs = make_obs(config)
    with torch.no_grad():
        full = policy.act(obs, 0.0)
        assert not full.log_probs.any()
        for i in range(len(obs)):
            alone = policy.act(obs.select([i]), 0.0).actions
            np.testing.assert_allclose(alone[0], full.actions[i], atol=1e-5)
    # Greedy = DDIM with η = 0 from one fixed x_N: no step adds noise.
    assert not policy.step_std(0.0).any()
    assert torch.all(full.sample["chain"][:, 0] == policy.greedy_noise)


def test_log_probs_recompute_equals_sampled_under_micro_batches() -> None:
    """The trainer scores rows in other batches than they were sampled in (and in train mode)."""
    config = adapter_config(head="unet", rl_steps=3)
    policy = TinyVLAPolicy(config)
    perturb_adapters(policy)
    obs = make_obs(config, ("push", "pick", "other", "pick", "push", "push"))
    with torch.no_grad():
        sample = policy.act(obs, 1.6)
    policy.train()
    for rows in ([0, 1], [2, 3, 4, 5], [5]):
        sub = sample.select(rows)
        scores = policy.log_probs(obs.select(rows), sub.sample, 1.6)
        assert scores.log_probs.requires_grad
        torch.testing.assert_close(scores.log_probs.detach(), sub.log_probs, atol=1e-4, rtol=0)
    assert sample.log_probs.shape == (6, 3 * config.chunk_size * config.action_dim)


def test_nan_in_the_chain_surfaces_as_non_finite() -> None:
    """NaN weights (a diverged head) give NaN actions and log-probs, which the collector drops and counts."""
    config = small_config()
    policy = TinyVLAPolicy(config)
    with torch.no_grad():
        policy.head.outp.bias.fill_(float("nan"))
        sample = policy.act(make_obs(config), 1.0)
    assert not np.isfinite(sample.actions).any()
    assert not torch.isfinite(sample.log_probs).any()


def test_nan_episodes_are_dropped_by_the_collector(tmp_path: Path) -> None:
    from pushcut.build import build_collector, build_pool

    with registered_plugin(ToyPlugin(), "toys") as manager:
        added = "tinyvla" not in manager.policies
        if added:
            manager.register(tinyvla_plugin, name="tinyvla-test")
        try:
            cfg = load_config(None, ["env.type=reach", "policy.type=tinyvla", "policy.image_size=8",
                                     "policy.patch_size=4", "policy.chunk_size=2", "policy.action_dim=1",
                                     "policy.inference_steps=2", "rollout.transport=inline",
                                     "rollout.num_workers=1", "rollout.envs_per_worker=4"], manager)
            policy = TinyVLAPolicy(cfg.policy.options)
            with torch.no_grad():
                policy.head.outp.bias.fill_(float("nan"))
            pool = build_pool(cfg)
            try:
                from pushcut.rollout import StartState

                collector = build_collector(cfg, pool, policy)
                episodes, stats = collector.collect([StartState("reach_0", 0)], group_size=4, temperature=1.0)
            finally:
                pool.close()
        finally:
            if added:
                manager.unregister("tinyvla-test")
    assert episodes and all(not ep.ok and "NaN" in ep.failure for ep in episodes)


# ------------------------------------------------------------------ adapters


def test_rows_route_to_their_task_adapter() -> None:
    config = adapter_config()
    policy = TinyVLAPolicy(config)
    perturb_adapters(policy)
    obs = make_obs(config, ("pick", "push", "other"))
    with torch.no_grad():
        mixed = policy.act(obs, 0.0).actions
        policy.set_task("pick")
        as_pick = policy.act(obs.select([2]), 0.0).actions  # "other" is served by the active adapter
    assert policy.active == "pick"
    np.testing.assert_allclose(mixed[0], policy.act(obs.select([0]), 0.0).actions[0], atol=1e-5)
    assert not np.allclose(mixed[1], mixed[0])
    assert not np.allclose(mixed[2], as_pick[0])  # it was served by "push" when push was active


def _demos(config: TinyVLAConfig, task: str, n: int = 2, length: int = 6) -> list[Demo]:
    rng = np.random.default_rng(3)
    return [Demo(task, INSTRUCTIONS[task],
                 rng.integers(0, 256, (length, config.image_size, config.image_size, 3), dtype=np.uint8),
                 rng.uniform(-0.4, 0.4, (length, config.action_dim)).astype(np.float32)) for _ in range(n)]


def _snapshot(policy: TinyVLAPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy._canonical_state().items()}


def _changed(before: dict[str, torch.Tensor], policy: TinyVLAPolicy) -> set[str]:
    after = policy._canonical_state()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _owned_by(key: str, task: str) -> bool:
    return key.startswith((f"adapters.{task}.", f"heads.{task}."))


def test_sft_trains_only_the_active_adapter_and_head(tmp_path: Path) -> None:
    config = adapter_config()
    policy = TinyVLAPolicy(config)
    perturb_adapters(policy)
    before = _snapshot(policy)
    cfg = load_config(None, ["policy.type=tiny", "sft.steps=5", "sft.batch_size=8", "sft.lr=0.01"])
    train_sft(policy, _demos(config, "push") + _demos(config, "pick"), cfg)
    changed = _changed(before, policy)
    assert changed and all(_owned_by(k, "push") for k in changed), sorted(k for k in changed if not _owned_by(k, "push"))
    assert any(k.startswith("adapters.push.") for k in changed) and any(k.startswith("heads.push.") for k in changed)


def test_rl_trains_only_the_active_adapter_and_head(tmp_path: Path) -> None:
    """The real trainer on the toy reach env: reach_1's adapter trains; reach_0's episodes are routed
    to its own frozen adapter; every other weight stays bit-identical."""
    with registered_plugin(ToyPlugin(), "toys") as manager:
        added = "tinyvla" not in manager.policies
        if added:
            manager.register(tinyvla_plugin, name="tinyvla-test")
        try:
            overrides = [
                "env.type=reach", "policy.type=tinyvla", "policy.image_size=8", "policy.patch_size=4",
                "policy.hidden_size=32", "policy.intermediate_size=64", "policy.vision_hidden_size=32",
                "policy.head_width=32", "policy.chunk_size=2", "policy.action_dim=1", "policy.inference_steps=3",
                "policy.use_state=true", "policy.state_dim=2", "policy.adapters.tasks=[reach_0,reach_1]",
                "policy.adapters.active=reach_1", "policy.adapters.rank=4", "algo.temperature=1.0",
                "train.iterations=2", "train.batch_size=2", "train.lr=0.01", "train.eval_every=0",
                "train.eval_at_start=false", "eval.max_init_states=1", "eval.videos_per_task=0",
                "rollout.transport=inline", "rollout.num_workers=1", "rollout.envs_per_worker=8",
                "train.max_sample_rounds=4", f"run_dir={tmp_path / 'rl'}",
            ]
            init = tmp_path / "init"
            cfg = load_config(None, overrides, manager)
            policy = TinyVLAPolicy(cfg.policy.options)
            perturb_adapters(policy, 0.1)
            policy.save(init)
            cfg = load_config(None, [*overrides, f"train.init_from={init}"], manager)
            Trainer(cfg, manager).run()
        finally:
            if added:
                manager.unregister("tinyvla-test")
    before = TinyVLAPolicy(cfg.policy.options)
    before.load(init)
    after = TinyVLAPolicy(cfg.policy.options)
    ckpts = sorted((tmp_path / "rl" / "checkpoints").glob("*"))
    after.load(ckpts[-1] / "policy")
    changed = _changed(_snapshot(before), after)
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    if not any(m.get("actor/optimizer_steps", 0) > 0 for m in metrics):
        pytest.skip("no group had mixed outcomes in 2 iterations: nothing was trained")
    assert changed and all(_owned_by(k, "reach_1") for k in changed), sorted(changed)


def test_add_task_freezes_older_adapters_and_copies_the_head() -> None:
    config = adapter_config(adapters={"tasks": ("pick",), "active": "pick"})
    policy = TinyVLAPolicy(config)
    policy.add_task("push")
    assert policy.active == "push" and policy.tasks == ["pick", "push"]
    trainable = {k for k, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("push" in k for k in trainable)
    for (ka, a), (kb, b) in zip(policy.heads["pick"].state_dict().items(), policy.heads["push"].state_dict().items()):
        assert torch.equal(a, b)
    policy.set_task("pick")
    assert all("pick" in k for k, p in policy.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------ checkpoints and bad input


def test_save_load_round_trip_with_a_new_task(tmp_path: Path) -> None:
    """A checkpoint with adapter pick loads into a policy with pick + push: pick and the base load,
    push keeps a fresh (zero-update) LoRA and starts from pick's head."""
    one = TinyVLAPolicy(adapter_config(adapters={"tasks": ("pick",), "active": "pick"}))
    perturb_adapters(one)
    one.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "pushcut_policy.json").read_text())
    assert meta["type"] == "tinyvla" and meta["adapters"] == {"pick": {"rank": 4, "alpha": 16.0,
                                                                        "targets": ["dense", "query_key_value"]}}
    two = TinyVLAPolicy(adapter_config())
    two.load(tmp_path / "a")
    state_one, state_two = one._canonical_state(), two._canonical_state()
    for key, value in state_one.items():
        if not key.startswith("_head_template."):
            assert torch.equal(value, state_two[key]), key
    for key, value in state_two.items():
        if key.startswith("heads.push."):
            assert torch.equal(value, state_one["heads.pick." + key[len("heads.push."):]])
        if key.startswith("adapters.push.") and "lora_B" in key:
            assert not value.any()
    obs = make_obs(one.config, ("pick", "pick"))
    with torch.no_grad():
        np.testing.assert_array_equal(one.act(obs, 0.0).actions, two.act(obs, 0.0).actions)


def test_plain_checkpoint_loads_into_adapters(tmp_path: Path) -> None:
    plain = TinyVLAPolicy(small_config())
    plain.save(tmp_path / "plain")
    policy = TinyVLAPolicy(adapter_config())
    policy.load(tmp_path / "plain")
    obs = make_obs(plain.config)
    with torch.no_grad():  # zero-initialised LoRA and heads copied from the shared head: the same policy
        np.testing.assert_allclose(plain.act(obs, 0.0).actions, policy.act(obs, 0.0).actions, atol=1e-6)


def test_unknown_adapter_name_is_one_line() -> None:
    policy = TinyVLAPolicy(adapter_config())
    with pytest.raises(ConfigError) as info:
        policy.set_task("stack")
    message = str(info.value)
    assert "'stack'" in message and "pick" in message and "push" in message and "\n" not in message
    with pytest.raises(ConfigError, match="exists already"):
        policy.add_task("pick")
    with pytest.raises(ConfigError, match="not one of policy.adapters.tasks"):
        AdaptersConfig(tasks=("pick",), active="push")


@pytest.mark.parametrize("change, word", [({"rank": 8}, "rank=4"), ({"targets": ("dense",)}, "targets")])
def test_adapter_settings_mismatch_is_one_line(tmp_path: Path, change: dict, word: str) -> None:
    TinyVLAPolicy(adapter_config()).save(tmp_path / "ckpt")
    policy = TinyVLAPolicy(adapter_config(adapters=change))
    with pytest.raises(CheckpointError) as info:
        policy.load(tmp_path / "ckpt")
    assert word in str(info.value) and "policy.adapters" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_with_adapters_the_config_lacks(tmp_path: Path) -> None:
    TinyVLAPolicy(adapter_config()).save(tmp_path / "ckpt")
    policy = TinyVLAPolicy(adapter_config(adapters={"tasks": ("pick",), "active": "pick"}))
    with pytest.raises(CheckpointError, match=r"task adapters \['push'\]"):
        policy.load(tmp_path / "ckpt")


def test_other_architecture_checkpoint_is_one_line(tmp_path: Path) -> None:
    from pushcut.plugins.policies.tiny import TinyTokenVLA, TinyTokenVLAConfig

    TinyTokenVLA(TinyTokenVLAConfig(image_size=16, patch_size=8, hidden_size=16, heads=2, layers=1,
                                    vision_hidden_size=16, intermediate_size=32, vision_intermediate_size=32,
                                    vision_layers=1)).save(tmp_path / "tiny")
    with pytest.raises(CheckpointError) as info:
        TinyVLAPolicy(small_config()).load(tmp_path / "tiny")
    assert "'tiny'" in str(info.value) and "policy.type" in str(info.value) and "\n" not in str(info.value)
    TinyVLAPolicy(small_config(hidden_size=48, heads=2)).save(tmp_path / "wide")
    with pytest.raises(CheckpointError, match=r"hidden_size=48 \(policy has 32\)"):
        TinyVLAPolicy(small_config()).load(tmp_path / "wide")


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="divisible by 2"):
        small_config(head="unet", chunk_size=3, unet_dims=(16, 32))
    with pytest.raises(ConfigError, match="min_std"):
        small_config(min_std=0.0)
    with pytest.raises(ConfigError, match="rl_steps"):
        small_config(rl_steps=9)
    with pytest.raises(ConfigError, match="policy.size"):
        TinyVLAConfig(size="7b")
    with pytest.raises(ConfigError, match="fixes the model shapes"):
        TinyVLAConfig(size="0.7b", hidden_size=100)
    with pytest.raises(ConfigError, match="targets"):
        AdaptersConfig(tasks=("pick",), targets=("q_proj",))


@pytest.mark.parametrize("size, llm_millions, vision_millions", [("0.4b", (80, 130), (290, 320)),
                                                                 ("0.7b", (290, 330), (290, 320)),
                                                                 ("1.3b", (790, 830), (290, 320))])
def test_named_sizes_have_pythia_and_clip_l_shapes(size: str, llm_millions, vision_millions) -> None:
    """Built on the meta device (no memory): the LLM has the Pythia shapes (without Pythia's 50k-token
    embedding: the vocabulary here is bytes) and the tower is CLIP ViT-L/14."""
    config = TinyVLAConfig(size=size)
    with torch.device("meta"):
        llm, vision = build_llm(config), build_vision(config)
    llm_m = sum(p.numel() for p in llm.parameters()) / 1e6
    vision_m = sum(p.numel() for p in vision.parameters()) / 1e6
    assert llm_millions[0] <= llm_m <= llm_millions[1], llm_m
    assert vision_millions[0] <= vision_m <= vision_millions[1], vision_m


def test_registered_and_config_round_trips() -> None:
    registry = Registry("policy")
    tinyvla_plugin.pushcut_register_policies(registry)
    entry = registry.get("tinyvla")
    assert entry.config_class is TinyVLAConfig
    from pushcut.configio import build_dataclass, to_dict

    config = adapter_config()
    assert build_dataclass(TinyVLAConfig, to_dict(config), "policy") == config
    assert dataclasses.asdict(config)["adapters"]["tasks"] == TASKS


def test_an_update_on_rows_of_frozen_adapters_only_runs_and_changes_nothing() -> None:
    """Rows whose task adapter is frozen have no gradient path: the engine skips their backward (no
    zero-tie to the trainable weights in the policy) and the update leaves every weight as it was."""
    from pushcut.batch import Episode, EpisodeBatch
    from pushcut.learner import update_policy

    config = adapter_config(head="unet", rl_steps=3)  # active adapter: push; the rows below are pick's
    policy = TinyVLAPolicy(config)
    perturb_adapters(policy)
    obs = make_obs(config, ("pick",) * 4)
    with torch.no_grad():
        sample = policy.act(obs, 1.6)
    episodes = []
    for k in range(4):
        ep = Episode("pick", INSTRUCTIONS["pick"], k, 0)
        seen = {"image": obs.images[k]} if obs.states is None else {"image": obs.images[k], "state": obs.states[k]}
        ep.add_step(seen, {key: v[k] for key, v in sample.sample.items()}, sample.log_probs[k], sample.mask[k])
        ep._finalize()
        episodes.append(ep)
    batch = EpisodeBatch(episodes, 4).with_advantages(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    cfg = load_config(None, ["policy.type=tinyvla", "train.minibatch_size=4", "train.micro_batch_size=2"])
    metrics = update_policy(policy, optimizer, batch, cfg, torch.Generator().manual_seed(0))
    assert metrics["actor/skipped_updates"] == 0 and metrics["actor/optimizer_steps"] == 1
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k
