"""The tiny VLA policy: contract behaviour, attention structure, training and checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pushcut.contracts import ObsBatch
from pushcut.errors import CheckpointError, ConfigError
from pushcut.plugins.policies.tiny import TinyTokenVLA, TinyTokenVLAConfig, pushcut_register_policies
from pushcut.plugins.policies.tiny.text import ByteTokenizer
from pushcut.registry import Registry

INSTRUCTIONS = ["push the red cube", "lift the green block", "open", "push the red cube to the far blue target"]


def small_config(**overrides) -> TinyTokenVLAConfig:
    base = dict(
        image_size=32, patch_size=16, vision_hidden_size=32, vision_layers=1, vision_heads=2,
        vision_intermediate_size=64, hidden_size=32, layers=2, heads=2, intermediate_size=64,
        max_instruction_tokens=32, chunk_size=2, action_dim=3,
        action_low=(-0.5, 0.0, -1.0), action_high=(0.5, 2.0, 1.0),
    )
    base.update(overrides)
    return TinyTokenVLAConfig(**base)


def make_obs(config: TinyTokenVLAConfig, b: int = 4, seed: int = 0) -> ObsBatch:
    rng = np.random.default_rng(seed)
    shape = (b, config.image_size, config.image_size, 3)
    return ObsBatch(
        images=rng.integers(0, 256, shape, dtype=np.uint8),
        instructions=[INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(b)],
        task_ids=[f"task{i}" for i in range(b)],
        wrist_images=rng.integers(0, 256, shape, dtype=np.uint8) if config.use_wrist_image else None,
        states=rng.normal(size=(b, config.state_dim)).astype(np.float32) if config.use_state else None,
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small gain nothing from intra-op threads, and on a shared CI box
    threads fighting for cores make every op ~10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def config() -> TinyTokenVLAConfig:
    return small_config()


@pytest.fixture
def policy(config: TinyTokenVLAConfig) -> TinyTokenVLA:
    return TinyTokenVLA(config)


# ------------------------------------------------------------------ act / log_probs


@pytest.mark.parametrize(
    "extra", [{}, {"use_state": True, "state_dim": 5, "use_wrist_image": True}, {"text_patch_size": 1}]
)
def test_act_shapes_and_ranges(extra: dict) -> None:
    config = small_config(**extra)
    policy = TinyTokenVLA(config)
    obs = make_obs(config, b=5)
    out = policy.act(obs, temperature=1.0)
    t = config.chunk_size * config.action_dim
    assert out.actions.shape == (5, config.chunk_size, config.action_dim) and out.actions.dtype == np.float32
    assert out.sample["bins"].shape == (5, t) and out.sample["bins"].dtype == torch.int64
    assert out.log_probs.shape == (5, t) and out.mask.shape == (5, t) and bool(out.mask.all())
    assert not out.log_probs.requires_grad
    assert (out.log_probs <= 0).all()
    low, high = np.array(config.action_low), np.array(config.action_high)
    assert (out.actions >= low).all() and (out.actions <= high).all()


def test_sampled_log_probs_equal_recomputed(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    obs = make_obs(config, b=6)
    for temperature in (0.7, 1.6):
        out = policy.act(obs, temperature)
        scores = policy.log_probs(obs, out.sample, temperature)
        assert scores.log_probs.requires_grad
        torch.testing.assert_close(scores.log_probs.detach(), out.log_probs, atol=1e-5, rtol=0)
        # A minibatch with other companions (other padding) scores each row the same.
        idx = [4, 2]
        sub = policy.log_probs(obs.select(idx), {"bins": out.sample["bins"][idx]}, temperature)
        torch.testing.assert_close(sub.log_probs.detach(), out.log_probs[idx], atol=1e-5, rtol=0)


def test_greedy_is_deterministic_argmax(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    obs = make_obs(config)
    a, b = policy.act(obs, 0.0), policy.act(obs, 0.0)
    np.testing.assert_array_equal(a.actions, b.actions)
    with torch.no_grad():
        logits, _ = policy(obs)
    torch.testing.assert_close(a.sample["bins"], logits.argmax(-1))
    assert (a.log_probs == 0).all()
    expected = policy.action_tokenizer.bins_to_actions(a.sample["bins"], dtype=torch.float64).numpy()
    low, high = np.array(config.action_low), np.array(config.action_high)
    np.testing.assert_allclose(a.actions.reshape(len(obs), -1, config.action_dim),
                               (0.5 * (expected.reshape(len(obs), -1, config.action_dim) + 1) * (high - low) + low),
                               atol=1e-6)


def test_temperature_raises_entropy(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    obs = make_obs(config)
    bins = policy.act(obs, 1.0).sample
    cold = policy.log_probs(obs, bins, 0.3).entropy
    warm = policy.log_probs(obs, bins, 3.0).entropy
    assert cold.shape == warm.shape == bins["bins"].shape
    assert (warm > cold).all()
    assert warm.max() <= np.log(config.n_bins) + 1e-4


def test_bad_temperature_and_sample(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    obs = make_obs(config)
    with pytest.raises(ValueError, match="temperature"):
        policy.act(obs, -1.0)
    with pytest.raises(ValueError, match="temperature > 0"):
        policy.log_probs(obs, policy.act(obs, 1.0).sample, 0.0)
    with pytest.raises(ValueError, match="bins"):
        policy.log_probs(obs, {"tokens": torch.zeros(4, 6, dtype=torch.long)}, 1.0)


# ------------------------------------------------------------------ attention structure


def test_action_block_is_bidirectional_and_prefix_ignores_it(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    obs = make_obs(config)
    t = config.chunk_size * config.action_dim
    with torch.no_grad():
        logits0, hidden0 = policy(obs)
        policy.action_queries[t - 1] += 1.0  # change the LAST placeholder only
        logits1, hidden1 = policy(obs)
    # Earlier action elements see the later placeholder...
    assert (logits1[:, 0] - logits0[:, 0]).abs().max() > 1e-4
    # ...while no prefix output depends on the action block.
    torch.testing.assert_close(hidden1[:, :-t], hidden0[:, :-t], atol=0, rtol=0)


def test_prefix_is_causal(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    obs = make_obs(config, b=1)
    other = dataclasses.replace(obs, instructions=[obs.instructions[0][:-1] + "X"])  # same length, last byte differs
    with torch.no_grad():
        _, h0 = policy(obs)
        _, h1 = policy(other)
    patches = config.num_patches
    torch.testing.assert_close(h0[:, :patches], h1[:, :patches], atol=0, rtol=0)
    assert (h0[:, -1] - h1[:, -1]).abs().max() > 1e-5


def test_attention_mask_layout() -> None:
    valid = torch.tensor([[True, False, True]])
    mask = TinyTokenVLA.attention_mask(valid, num_action_tokens=2)[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],  # pad query: attends to valid earlier keys only
        [1, 0, 1, 0, 0],
        [1, 0, 1, 1, 1],  # action queries: all valid prefix keys and the whole action block
        [1, 0, 1, 1, 1],
    ], dtype=torch.bool)
    torch.testing.assert_close(mask, expected)


# ------------------------------------------------------------------ training


def test_sft_overfits_a_handful_of_examples(config: TinyTokenVLAConfig) -> None:
    torch.manual_seed(0)
    policy = TinyTokenVLA(config)
    obs = make_obs(config, b=4)
    rng = np.random.default_rng(3)
    low, high = np.array(config.action_low), np.array(config.action_high)
    expert = rng.uniform(low, high, (4, config.chunk_size, config.action_dim)).astype(np.float32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = policy.sft_loss(obs, expert)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    greedy = policy.act(obs, 0.0)
    torch.testing.assert_close(greedy.sample["bins"], policy.expert_bins(expert))
    half_bin = (high - low) / (config.n_bins - 1) / 2
    assert (np.abs(greedy.actions - expert) <= half_bin + 1e-6).all()


def test_gradients_reach_every_part() -> None:
    config = small_config(use_state=True, state_dim=3, use_wrist_image=True)
    policy = TinyTokenVLA(config)
    obs = make_obs(config)
    out = policy.act(obs, 1.0)
    loss = -policy.log_probs(obs, out.sample, 1.0).log_probs.mean()
    loss.backward()
    for name in ("vision.embeddings.patch_embedding.weight", "vision.encoder.layers.0.self_attn.q_proj.weight",
                 "projector.0.weight", "decoder.layers.0.self_attn.q_proj.weight",
                 "decoder.layers.1.mlp.up_proj.weight", "decoder.embed_tokens.weight", "text_patcher.weight",
                 "state_projector.weight", "wrist_view_embedding", "action_queries", "action_head.weight"):
        grad = policy.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bin_smoothing_lets_an_update_to_one_bin_lift_its_neighbours() -> None:
    """Cloning one action raises the bins next to its label with the blur, and only the label without it."""
    obs = make_obs(small_config(), b=4)
    label = 100
    expert = np.zeros((4, 2, 3), dtype=np.float32)
    changes = {}
    for blur in (0.0, 4.0):
        config = small_config(action_low=(-1.0,) * 3, action_high=(1.0,) * 3, bin_smoothing=blur)
        policy = TinyTokenVLA(config)
        expert[:] = policy.action_tokenizer.bin_centers[label]
        assert (policy.expert_bins(expert) == label).all()
        with torch.no_grad():
            before = torch.log_softmax(policy(obs)[0], dim=-1)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
        for _ in range(3):
            optimizer.zero_grad()
            policy.sft_loss(obs, expert).backward()
            optimizer.step()
        with torch.no_grad():
            after = torch.log_softmax(policy(obs)[0], dim=-1)
        changes[blur] = (after - before).mean(dim=(0, 1))
    plain, blurred = changes[0.0], changes[4.0]
    assert plain[label] > 0 and blurred[label] > 0
    # Without the blur a neighbour two bins away falls like any far bin; with it, it rises.
    assert plain[label + 2] < 0 and abs(plain[label + 2] - plain[label + 60]) < 0.1 * plain[label]
    assert blurred[label + 2] > 0.5 * blurred[label] and blurred[label + 60] < 0.2 * blurred[label]


def test_bin_smoothing_keeps_sampling_and_scoring_consistent() -> None:
    config = small_config(bin_smoothing=2.5)
    policy = TinyTokenVLA(config)
    obs = make_obs(config)
    out = policy.act(obs, 1.6)
    scores = policy.log_probs(obs, out.sample, 1.6)
    torch.testing.assert_close(scores.log_probs, out.log_probs)
    logits = policy(obs)[0]
    torch.testing.assert_close(policy.act(obs, 0.0).sample["bins"], logits.argmax(dim=-1))
    # Neighbouring logits differ by far less than under independent bins.
    plain = TinyTokenVLA(dataclasses.replace(config, bin_smoothing=0.0))(obs)[0]
    assert logits.diff(dim=-1).abs().mean() < 0.2 * plain.diff(dim=-1).abs().mean()


def test_sft_loss_validates_shape(policy: TinyTokenVLA, config: TinyTokenVLAConfig) -> None:
    with pytest.raises(ValueError, match="expert_actions"):
        policy.sft_loss(make_obs(config), np.zeros((4, config.chunk_size + 1, config.action_dim)))


# ------------------------------------------------------------------ inputs and config


def test_observation_mismatches_raise_config_error(config: TinyTokenVLAConfig) -> None:
    policy = TinyTokenVLA(config)
    bad = make_obs(small_config(image_size=48))
    with pytest.raises(ConfigError, match="image_size"):
        policy.act(bad, 1.0)
    stateful = TinyTokenVLA(small_config(use_state=True, state_dim=4))
    with pytest.raises(ConfigError, match="no state"):
        stateful.act(make_obs(config), 1.0)
    with pytest.raises(ConfigError, match="state_dim=3"):
        stateful.act(make_obs(small_config(use_state=True, state_dim=3)), 1.0)
    with pytest.raises(ConfigError, match="wrist"):
        TinyTokenVLA(small_config(use_wrist_image=True)).act(make_obs(config), 1.0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"patch_size": 12}, "multiple of policy.patch_size"),
        ({"heads": 3}, "divisible"),
        ({"action_low": (0.0, 0.0)}, "action_low has 2 entries"),
        ({"action_low": (1.0, 0.0, -1.0)}, "dims \\[0\\]"),
        ({"use_state": True}, "state_dim"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"bin_smoothing": -1.0}, "bin_smoothing must be 0"),
        ({"bin_smoothing": 100.0}, "up to n_bins/4=64"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        small_config(**overrides)


def test_config_defaults_and_json_round_trip() -> None:
    config = TinyTokenVLAConfig()
    assert config.action_low == (-1.0,) * 4 and config.action_high == (1.0,) * 4
    again = TinyTokenVLAConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
    assert again == config


def test_init_is_seeded_and_leaves_global_rng_alone(config: TinyTokenVLAConfig) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = TinyTokenVLA(config)
    assert torch.equal(torch.rand(3), expected)
    b = TinyTokenVLA(config)
    c = TinyTokenVLA(dataclasses.replace(config, seed=1))
    assert torch.equal(a.action_head.weight, b.action_head.weight)
    assert not torch.equal(a.action_head.weight, c.action_head.weight)


def test_byte_tokenizer() -> None:
    tok = ByteTokenizer(max_length=6)
    assert tok.encode("ab") == [1, ord("a") + 3, ord("b") + 3, 2]
    assert tok.encode("abcdefgh") == [1, *(ord(ch) + 3 for ch in "abcd"), 2]
    assert tok.decode(tok.encode("abcd")) == "abcd"
    ids, valid = tok.batch(["ab", "abcd"], multiple_of=4)
    assert ids.shape == (2, 8)
    assert valid.tolist() == [[False] * 4 + [True] * 4, [False] * 2 + [True] * 6]


def test_registration() -> None:
    registry = Registry("policy")
    pushcut_register_policies(registry)
    entry = registry.get("tiny")
    assert entry.config_class is TinyTokenVLAConfig
    assert isinstance(entry.build(small_config()), TinyTokenVLA)


# ------------------------------------------------------------------ checkpoints


def test_save_load_round_trip(tmp_path: Path, config: TinyTokenVLAConfig) -> None:
    policy = TinyTokenVLA(config)
    obs = make_obs(config)
    policy.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "pushcut_policy.json").read_text())
    assert meta["type"] == "tiny" and meta["config"]["hidden_size"] == config.hidden_size

    other = TinyTokenVLA(dataclasses.replace(config, seed=7))
    with torch.no_grad():
        assert not torch.equal(other(obs)[0], policy(obs)[0])
        other.load(tmp_path / "ckpt")
        torch.testing.assert_close(other(obs)[0], policy(obs)[0], atol=0, rtol=0)
    np.testing.assert_array_equal(other.act(obs, 0.0).actions, policy.act(obs, 0.0).actions)

    from_config = TinyTokenVLA(dataclasses.replace(config, seed=9, checkpoint=str(tmp_path / "ckpt")))
    with torch.no_grad():
        torch.testing.assert_close(from_config(obs)[0], policy(obs)[0], atol=0, rtol=0)


def test_load_into_other_config_names_the_mismatch(tmp_path: Path, config: TinyTokenVLAConfig) -> None:
    TinyTokenVLA(config).save(tmp_path)
    with pytest.raises(CheckpointError) as err:
        TinyTokenVLA(small_config(hidden_size=48, intermediate_size=96)).load(tmp_path)
    message = str(err.value)
    assert "shape mismatches" in message and "action_head.weight: checkpoint (256, 32) vs policy (256, 48)" in message
    assert "hidden_size=32" in message
    with pytest.raises(CheckpointError, match="missing keys .*state_projector.weight"):
        TinyTokenVLA(small_config(use_state=True, state_dim=2)).load(tmp_path)
    with pytest.raises(CheckpointError, match="unexpected keys .*decoder.layers.1"):
        TinyTokenVLA(small_config(layers=1)).load(tmp_path)


def test_load_refuses_another_bin_smoothing(tmp_path: Path, config: TinyTokenVLAConfig) -> None:
    blurred = dataclasses.replace(config, bin_smoothing=3.0)
    TinyTokenVLA(blurred).save(tmp_path)
    with pytest.raises(CheckpointError, match=r"bin_smoothing=3.0, this policy has 0.0; set policy.bin_smoothing=3.0"):
        TinyTokenVLA(config).load(tmp_path)
    obs = make_obs(config)
    with torch.no_grad():
        torch.testing.assert_close(TinyTokenVLA(dataclasses.replace(blurred, checkpoint=str(tmp_path)))(obs)[0],
                                   TinyTokenVLA(blurred)(obs)[0], atol=0, rtol=0)


def test_load_rejects_other_checkpoints(tmp_path: Path, policy: TinyTokenVLA) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        policy.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="found an empty directory"):
        policy.load(tmp_path)
    policy.save(tmp_path)
    (tmp_path / "pushcut_policy.json").write_text(json.dumps({"type": "openvla_oft", "config": {}}))
    with pytest.raises(CheckpointError, match="'openvla_oft' policy checkpoint, expected 'tiny'"):
        policy.load(tmp_path)
