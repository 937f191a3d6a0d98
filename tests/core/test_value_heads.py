"""The ValueHead capability (PPO's critic) of the built-in policies: shapes, gradients,
checkpoints, and checkpoints saved before the head existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from pushcut.contracts import ObsBatch, has_value_head
from pushcut.plugins.policies.tiny import TinyTokenVLA, TinyTokenVLAConfig
from pushcut.toys import BinPolicy, BinPolicyConfig


def small_config(**overrides) -> TinyTokenVLAConfig:
    base = dict(image_size=32, patch_size=16, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                vision_intermediate_size=64, hidden_size=32, layers=2, heads=2, intermediate_size=64,
                max_instruction_tokens=32, chunk_size=2, action_dim=3, use_state=True, state_dim=3)
    base.update(overrides)
    return TinyTokenVLAConfig(**base)


def make_obs(config: TinyTokenVLAConfig, b: int = 5, seed: int = 0) -> ObsBatch:
    rng = np.random.default_rng(seed)
    return ObsBatch(images=rng.integers(0, 256, (b, config.image_size, config.image_size, 3), dtype=np.uint8),
                    instructions=["push the red cube", "open"] * (b // 2) + ["lift"] * (b % 2),
                    task_ids=[f"t{i}" for i in range(b)],
                    states=rng.normal(size=(b, config.state_dim)).astype(np.float32))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_policy_has_a_value_head_and_the_toy_bins_do_not():
    assert has_value_head(TinyTokenVLA(small_config()))
    assert not has_value_head(BinPolicy(BinPolicyConfig()))


def test_tiny_values_are_per_observation_and_equal_those_from_log_probs():
    config = small_config()
    policy = TinyTokenVLA(config).eval()
    obs = make_obs(config)
    values = policy.values(obs)
    assert values.shape == (5,) and values.dtype == torch.float32 and torch.isfinite(values).all()
    assert len(set(values.tolist())) == 5  # a function of the observation, not a constant
    sample = policy.act(obs, 1.0).sample
    torch.testing.assert_close(policy.log_probs(obs, sample, 1.0).values, values)
    # each row's value depends on its own observation only (padding of the batch does not leak in)
    torch.testing.assert_close(policy.values(obs.select([3])), values[3:4], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_value_loss_gradients_reach_the_backbone_only_when_not_detached(detach):
    config = small_config(value_detach=detach)
    policy = TinyTokenVLA(config)
    policy.values(make_obs(config)).square().sum().backward()
    head = {id(p) for p in policy.value_parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.value_parameters())
    backbone = [p for p in policy.parameters() if id(p) not in head and p.grad is not None and p.grad.abs().sum() > 0]
    assert (len(backbone) == 0) == detach
    assert head <= {id(p) for p in policy.trainable_parameters()}


def test_value_head_round_trips_and_old_checkpoints_still_load(tmp_path: Path):
    config = small_config()
    policy = TinyTokenVLA(config)
    with torch.no_grad():
        for p in policy.value_parameters():
            p.add_(0.5)
    policy.save(tmp_path / "new")
    again = TinyTokenVLA(config)
    again.load(tmp_path / "new")
    obs = make_obs(config)
    torch.testing.assert_close(again.values(obs), policy.values(obs))
    # a checkpoint written before policies had a value head: everything else loads, the head keeps its init
    old = tmp_path / "old"
    old.mkdir()
    tensors = safetensors.torch.load_file(str(tmp_path / "new" / "model.safetensors"))
    safetensors.torch.save_file({k: v for k, v in tensors.items() if not k.startswith("value_head.")},
                                str(old / "model.safetensors"))
    (old / "pushcut_policy.json").write_text((tmp_path / "new" / "pushcut_policy.json").read_text())
    fresh = TinyTokenVLA(config)
    loaded = TinyTokenVLA(config)
    loaded.load(old)
    torch.testing.assert_close(loaded.values(obs), fresh.values(obs))
    sample = policy.act(obs, 0.0).sample
    assert torch.equal(loaded.act(obs, 0.0).sample["bins"], sample["bins"])
    assert json.loads((old / "pushcut_policy.json").read_text())["type"] == "tiny"
