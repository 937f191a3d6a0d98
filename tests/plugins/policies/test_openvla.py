"""The OpenVLA / OpenVLA-OFT policy on tiny random-weight checkpoints in the original layout:
checkpoint round trips, decoding against an independent reference, log-prob consistency,
LoRA, the contract suite, the predict command and bad-input messages. No downloads."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="the openvla extra is not installed (pip install -e '.[openvla]')")
pytest.importorskip("sentencepiece", reason="the openvla extra is not installed (pip install -e '.[openvla]')")
pytest.importorskip("mistral_common", reason="mistral-common (test extra) provides the test tokenizer")

import safetensors.torch  # noqa: E402
from openvla_tiny import ALOHA_KEY, LIBERO_KEY, Reference, make_tiny_checkpoint  # noqa: E402

from pushcut.actions import ActionTokenizer  # noqa: E402
from pushcut.cli import main  # noqa: E402
from pushcut.contracts import ObsBatch  # noqa: E402
from pushcut.errors import CheckpointError, ConfigError  # noqa: E402
from pushcut.plugins.policies.openvla import OpenVLAConfig, OpenVLAPolicy  # noqa: E402
from pushcut.plugins.policies.openvla.processing import PromptTokenizer, build_prompt, center_crop  # noqa: E402
from pushcut.testing import PolicyContract  # noqa: E402

INSTRUCTIONS = ["Pick up the black bowl", "open the top drawer and put the bowl inside it", "stack"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("openvla") / "ckpt")


@pytest.fixture(scope="module")
def reference(ckpt) -> Reference:
    return Reference(ckpt)


def make_obs(b: int = 3, seed: int = 0, size: int = 28, states: int = 0, wrist: bool = False) -> ObsBatch:
    rng = np.random.default_rng(seed)
    return ObsBatch(
        images=rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
        instructions=[INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(b)],
        task_ids=[f"t{i}" for i in range(b)],
        wrist_images=rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) if wrist else None,
        states=rng.normal(size=(b, states)).astype(np.float32) if states else None,
    )


def policy_for(ckpt: Path, **options) -> OpenVLAPolicy:
    options.setdefault("unnorm_key", "libero_10")
    options.setdefault("chunk_size", 2)
    return OpenVLAPolicy(OpenVLAConfig(checkpoint=str(ckpt), **options))


def file_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ checkpoint layout


@pytest.mark.parametrize("variant", [
    {}, {"shards": 3}, {"dtype": torch.bfloat16}, {"proprio_dim": 8}, {"proprio_dim": 8, "proprio_file": True},
], ids=["single", "sharded", "bf16", "proprio-in-model", "proprio-file"])
def test_checkpoint_round_trips_bit_for_bit(tmp_path, variant):
    src = make_tiny_checkpoint(tmp_path / "src", **variant)
    policy = policy_for(src, dtype="float32")  # computing in float32 from a bf16 checkpoint must not change it
    policy.save(tmp_path / "out")
    assert file_digests(tmp_path / "out") == file_digests(src)


def test_round_trip_after_loading_keeps_every_tensor(tmp_path, ckpt):
    policy = policy_for(ckpt)
    policy.save(tmp_path / "a")
    fresh = policy_for(ckpt)
    fresh.load(tmp_path / "a")
    fresh.save(tmp_path / "b")
    a = safetensors.torch.load_file(str(tmp_path / "a" / "model.safetensors"))
    b = safetensors.torch.load_file(str(ckpt / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("vision_backbone.fused_featurizer.attn_pool.") for k in a)  # carried, never used
    assert file_digests(tmp_path / "b") == file_digests(ckpt)


def test_trained_cls_position_slot_is_folded_into_the_cls_token(tmp_path, ckpt):
    policy = policy_for(ckpt)
    obs = make_obs()
    pos = policy.model.vision_backbone[0].model.embeddings.position_embeddings
    with torch.no_grad():
        pos[:, 0] += 0.3  # what a training step could do to the synthesised slot
    before = policy.act(obs, 0.0).sample["tokens"]
    policy.save(tmp_path / "trained")
    reloaded = policy_for(tmp_path / "trained")
    assert torch.equal(reloaded.act(obs, 0.0).sample["tokens"], before)


def test_unknown_layout_names_unexpected_and_missing_keys(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "c")
    tensors = safetensors.torch.load_file(str(src / "model.safetensors"))
    tensors["vision_backbone.featurizer.blocks.0.attn.q_norm.weight"] = torch.ones(32)
    tensors["mystery_head.weight"] = torch.ones(2)
    del tensors["projector.fc3.bias"]
    safetensors.torch.save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        policy_for(src)
    msg = str(info.value)
    assert "unexpected keys" in msg and "mystery_head.weight" in msg
    assert "missing keys" in msg and "projector.fc3.bias" in msg
    del tensors["mystery_head.weight"]
    tensors["projector.fc3.bias"] = torch.zeros(64)
    safetensors.torch.save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys \[blocks\.0\.attn\.q_norm\.weight\]"):
        policy_for(src)


def test_directory_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        policy_for(tmp_path / "empty")


# ------------------------------------------------------------------ tokens, prompt, bins


def test_prompt_ends_in_29871_for_any_vocabulary(ckpt):
    tok = PromptTokenizer(ckpt)
    assert build_prompt("Open the Drawer") == "In: What action should the robot take to open the drawer?\nOut:"
    # The test tokenizer is Mistral's, whose "▁" is 28705: the original appends the literal 29871 anyway.
    assert tok.sp.piece_to_id("\u2581") == 28705
    ids = tok.prompt_ids("open the drawer")
    assert ids[0] == tok.bos_id and ids[-1] == 29871
    assert ids[1:-1] == tok.sp.encode(build_prompt("open the drawer"))
    ids.append(0)  # prompts are memoised: a caller changing its list must not change the next answer
    assert tok.prompt_ids("open the drawer") == ids[:-1]


def test_action_tokens_decode_like_openvla(ckpt):
    policy = policy_for(ckpt)
    tok = policy.action_tokenizer
    assert (tok.first_token_id, tok.last_token_id) == (31744, 31999)
    ids = np.arange(31744, 32000)
    # OpenVLA: discretized = vocab - id; clip(discretized - 1, 0, 254); bin_centers[...]
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2
    expected = centers[np.clip(32000 - ids - 1, 0, 254)]
    np.testing.assert_array_equal(tok.decode(ids), expected)
    assert isinstance(tok, ActionTokenizer) and tok.vocab_size == 32064 - 64


def test_unnormalisation_uses_q99_or_minmax_and_the_mask(ckpt):
    stats = json.loads((ckpt / "config.json").read_text())["norm_stats"]
    tokens = torch.full((1, 14), 31744)  # top bin in every element
    lib = policy_for(ckpt)
    a = lib.tokens_to_actions(tokens)[0, 0]
    top = ((np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2)[-1]
    q = stats[LIBERO_KEY]["action"]
    lo, hi = np.array(q["q01"]), np.array(q["q99"])
    np.testing.assert_allclose(a[:6], (0.5 * (top + 1) * (hi - lo + 1e-8) + lo)[:6], rtol=1e-6)
    assert a[6] == np.float32(top)  # the gripper's mask is False: passed through
    alo = policy_for(ckpt, unnorm_key=ALOHA_KEY, normalization="minmax")
    m = stats[ALOHA_KEY]["action"]
    np.testing.assert_allclose(alo.tokens_to_actions(tokens)[0, 0],
                               0.5 * (top + 1) * (np.array(m["max"]) - np.array(m["min"]) + 1e-8) + np.array(m["min"]),
                               rtol=1e-6)


# ------------------------------------------------------------------ decoding against the reference


LOGIT_TOL = 5e-5  # float32 batched, padded policy vs the float64 unpadded reference loop


def test_vision_features_match_the_reference(ckpt, reference):
    policy = policy_for(ckpt)
    obs = make_obs(2)
    features = policy.vision_features(obs)
    assert [tuple(f.shape) for f in features] == [(2, 4, 32), (2, 4, 48)]
    for r in range(len(obs)):
        for mine, ref in zip(features, reference.features(obs.images[r])):
            torch.testing.assert_close(mine[r].double(), ref, atol=LOGIT_TOL, rtol=0)


def test_parallel_decoding_matches_reference_loop(ckpt, reference):
    policy = policy_for(ckpt, chunk_size=2)
    obs = make_obs(3)
    greedy = policy.act(obs, 0.0)
    logits = policy.action_logits(obs)
    assert logits.shape == (3, 14, 256) and logits.dtype == torch.float32
    torch.manual_seed(0)
    sampled = policy.act(obs, 1.6)
    for r in range(len(obs)):  # rows of different prompt lengths: padding must not matter
        ref = reference.parallel(obs.images[r], obs.instructions[r], 14)
        torch.testing.assert_close(logits[r].double(), ref, atol=LOGIT_TOL, rtol=0)
        ids = (ref.argmax(-1) + 31744).tolist()
        assert greedy.sample["tokens"][r].tolist() == ids
        np.testing.assert_array_equal(greedy.actions[r], reference.actions(ids, LIBERO_KEY, 2).astype(np.float32))
        given = sampled.sample["tokens"][r].tolist()
        torch.testing.assert_close(sampled.log_probs[r].double(), reference.log_probs(ref, given, 1.6),
                                   atol=LOGIT_TOL, rtol=0)


def test_autoregressive_decoding_matches_reference_loop(ckpt, reference):
    policy = policy_for(ckpt, mode="autoregressive", chunk_size=1)
    obs = make_obs(3)
    greedy = policy.act(obs, 0.0)
    tokens = greedy.sample["tokens"]
    cached = policy.action_logits(obs)  # step by step with the KV cache
    forced = policy.action_logits(obs, tokens)  # one teacher-forced causal pass
    torch.manual_seed(0)
    sampled = policy.act(obs, 1.6)
    for r in range(len(obs)):
        ids, ref = reference.autoregressive(obs.images[r], obs.instructions[r], 7)
        assert tokens[r].tolist() == ids
        torch.testing.assert_close(cached[r].double(), ref, atol=LOGIT_TOL, rtol=0)
        torch.testing.assert_close(forced[r].double(), ref, atol=LOGIT_TOL, rtol=0)
        np.testing.assert_array_equal(greedy.actions[r],
                                      reference.actions(ids, LIBERO_KEY, 1, oft=False).astype(np.float32))
        given = sampled.sample["tokens"][r].tolist()
        _, ref_given = reference.autoregressive(obs.images[r], obs.instructions[r], 7, given=given)
        torch.testing.assert_close(sampled.log_probs[r].double(), reference.log_probs(ref_given, given, 1.6),
                                   atol=LOGIT_TOL, rtol=0)


def test_activation_override_is_honoured_and_visible(tmp_path, reference, ckpt):
    """config.json's timm_override_act_layers picks the towers' GELU; the tanh approximation (what
    transformers' SigLIP defaults to) moves the logits far past the tolerance, so the comparisons
    above would catch it."""
    tanh = tmp_path / "tanh"
    shutil.copytree(ckpt, tanh)
    config = json.loads((tanh / "config.json").read_text())
    config["timm_override_act_layers"] = [None, "gelu_tanh"]
    (tanh / "config.json").write_text(json.dumps(config))
    policy = policy_for(tanh, chunk_size=1)
    obs = make_obs(1)
    dino, siglip = policy.vision_features(obs)
    ref_dino, ref_siglip = reference.features(obs.images[0])
    torch.testing.assert_close(dino[0].double(), ref_dino, atol=LOGIT_TOL, rtol=0)  # no override: unchanged
    assert (siglip[0].double() - ref_siglip).abs().max() > 10 * LOGIT_TOL
    logits = policy.action_logits(obs)[0].double()
    assert (logits - reference.parallel(obs.images[0], obs.instructions[0], 7)).abs().max() > 2 * LOGIT_TOL
    config["timm_override_act_layers"] = ["relu6", None]
    (tanh / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="timm_override_act_layers entry 'relu6'"):
        policy_for(tanh)


@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
@pytest.mark.parametrize("restrict", [True, False])
def test_sampled_log_probs_equal_recomputed(ckpt, mode, restrict):
    policy = policy_for(ckpt, mode=mode, chunk_size=2 if mode == "parallel" else 1,
                        restrict_to_action_tokens=restrict)
    obs = make_obs(4)
    torch.manual_seed(0)
    sample = policy.act(obs, 1.6)
    tokens = sample.sample["tokens"]
    if restrict:
        assert bool(((tokens >= 31744) & (tokens <= 31999)).all())
    scores = policy.log_probs(obs, sample.sample, 1.6)
    torch.testing.assert_close(scores.log_probs, sample.log_probs, atol=1e-5, rtol=0)
    assert scores.entropy.shape == tokens.shape and bool((scores.entropy > 0).all())


def test_temperature_sampling_follows_the_softmax(ckpt):
    policy = policy_for(ckpt, chunk_size=1)
    logits = policy.action_logits(make_obs(1))[0, 0].detach()
    torch.manual_seed(1)
    draws, log_probs = policy._draw(logits.expand(20000, -1), 2.0)
    probs = torch.softmax(logits / 2.0, dim=-1)
    empirical = torch.bincount(draws, minlength=256).float() / len(draws)
    assert (empirical - probs).abs().sum() < 0.15  # expected ~0.09 for 20000 draws over 256 bins
    torch.testing.assert_close(log_probs, probs.log()[draws])
    assert torch.equal(policy._draw(logits[None], 0.0)[0], logits.argmax()[None])


def test_proprio_and_two_images(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "oft", proprio_dim=14, action_dim=14, proprio_file=True)
    policy = policy_for(src, unnorm_key=ALOHA_KEY, normalization="minmax", num_images=2, chunk_size=3)
    obs = make_obs(2, states=14, wrist=True)
    sample = policy.act(obs, 1.0)
    assert sample.actions.shape == (2, 3, 14)
    torch.testing.assert_close(policy.log_probs(obs, sample.sample, 1.0).log_probs, sample.log_probs, atol=1e-5,
                               rtol=0)
    # the proprio token and the wrist image both change the prediction
    other = make_obs(2, states=14, wrist=True)
    other.states = other.states + 1.0
    assert not torch.equal(policy.action_logits(obs), policy.action_logits(other))
    with pytest.raises(ConfigError, match=r"reports 5-dimensional states .* takes 14"):
        policy.act(make_obs(2, states=5, wrist=True), 0.0)


# ------------------------------------------------------------------ training options


def test_lora_gradients_reach_only_lora_weights(ckpt, tmp_path):
    policy = policy_for(ckpt, lora_rank=4)
    obs = make_obs(2)
    sample = policy.act(obs, 1.6)
    names = {id(p): n for n, p in policy.named_parameters()}
    trainable = list(policy.trainable_parameters())
    assert trainable and all("lora_" in names[id(p)] for p in trainable)
    policy.log_probs(obs, sample.sample, 1.6).log_probs.sum().backward()
    with_grad = [n for n, p in policy.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any(p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    # a training step moves the adapters; save/load keeps base weights bit-exact plus the adapters
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.05)
    policy.save(tmp_path / "lora")
    base = safetensors.torch.load_file(str(tmp_path / "lora" / "model.safetensors"))
    orig = safetensors.torch.load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(base[k], orig[k]) for k in orig)
    fresh = policy_for(tmp_path / "lora", lora_rank=4)
    torch.testing.assert_close(fresh.action_logits(obs), policy.action_logits(obs))
    with pytest.raises(CheckpointError, match="lora_rank"):
        policy_for(tmp_path / "lora")


def test_lora_merged_save_is_a_plain_checkpoint(ckpt, tmp_path):
    policy = policy_for(ckpt, lora_rank=4, save_merged=True)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy.save(tmp_path / "merged")
    assert not (tmp_path / "merged" / "pushcut_lora.safetensors").exists()
    plain = policy_for(tmp_path / "merged")
    obs = make_obs(2)
    torch.testing.assert_close(plain.action_logits(obs),
                               policy.action_logits(obs), atol=1e-4, rtol=1e-4)


def test_frozen_vision_and_gradient_checkpointing(ckpt):
    plain = policy_for(ckpt)
    light = policy_for(ckpt, freeze_vision=True, gradient_checkpointing=True)
    vision = {id(p) for p in light.model.vision_backbone.parameters()}
    assert not any(id(p) in vision for p in light.trainable_parameters())
    obs = make_obs(2)
    sample = plain.act(obs, 1.6)
    losses = []
    for policy in (plain, light):
        policy.train()
        loss = policy.log_probs(obs, sample.sample, 1.6).log_probs.sum()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    g_plain = plain.model.language_model.lm_head.weight.grad
    g_light = light.model.language_model.lm_head.weight.grad
    torch.testing.assert_close(g_plain, g_light, atol=1e-5, rtol=1e-4)


def test_sft_loss_prefers_the_expert(ckpt):
    policy = policy_for(ckpt)
    obs = make_obs(2)
    expert = policy.act(obs, 0.0).actions
    random_chunks = np.random.default_rng(0).uniform(-0.5, 0.5, expert.shape).astype(np.float32)
    assert policy.sft_loss(obs, expert) < policy.sft_loss(obs, random_chunks)
    with pytest.raises(ValueError, match=r"\(3, 7\).*chunk=2, action_dim=7"):
        policy.sft_loss(obs, np.zeros((2, 3, 7), np.float32))


def test_center_crop():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 28, 28, 3), dtype=np.uint8))
    assert torch.equal(center_crop(img, area=1.0), img)
    cropped = center_crop(img)
    assert cropped.shape == img.shape and cropped.dtype == torch.uint8 and not torch.equal(cropped, img)


# ------------------------------------------------------------------ bad input


def test_missing_norm_stats_key_lists_the_available_ones(ckpt):
    with pytest.raises(ConfigError) as info:
        policy_for(ckpt, unnorm_key="bridge_orig")
    assert "bridge_orig" in str(info.value) and LIBERO_KEY in str(info.value) and ALOHA_KEY in str(info.value)
    with pytest.raises(ConfigError, match="choose one with policy.unnorm_key"):
        OpenVLAPolicy(OpenVLAConfig(checkpoint=str(ckpt)))


def test_action_dim_and_chunk_mismatches_give_both_numbers(ckpt):
    with pytest.raises(ConfigError, match=r"action_dim=14 .* 7-dimensional"):
        policy_for(ckpt, action_dim=14)
    with pytest.raises(ConfigError, match=r"chunk_size=8 .* 1 action per step"):
        OpenVLAConfig(checkpoint=str(ckpt), mode="autoregressive", chunk_size=8)
    with pytest.raises(ConfigError, match="policy.checkpoint is required"):
        OpenVLAPolicy(OpenVLAConfig())


# ------------------------------------------------------------------ registry, CLI


def test_registered_and_built_through_the_registry(ckpt):
    from pushcut.pluginmanager import get_plugin_manager

    entry = get_plugin_manager().policies.get("openvla")
    policy = entry.build(entry.config_class(checkpoint=str(ckpt), unnorm_key="libero_10"))
    assert (policy.chunk_size, policy.action_dim, policy.num_action_tokens) == (8, 7, 56)


def test_plugin_is_unavailable_without_its_extra(monkeypatch):
    from pushcut.pluginmanager import PluginManager

    for name in [m for m in sys.modules if m.startswith("pushcut.plugins.policies.openvla")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "peft", None)
    manager = PluginManager(autoload=False)
    manager.load_entry_points()
    info = manager.infos["openvla"]
    assert info.status == "unavailable" and "peft" in info.reason and "[openvla]" in info.reason


def test_predict_prints_the_reference_ids_and_chunk(ckpt, reference, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "frame.png"
    obs = make_obs(1)
    Image.fromarray(obs.images[0]).save(image)
    args = ["predict", "--checkpoint", str(ckpt), "--image", str(image), "--instruction", INSTRUCTIONS[0]]
    assert main([*args, "policy.unnorm_key=libero_10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array(out["actions"]).shape == (8, 7) and out["unnorm_key"] == LIBERO_KEY
    ids = (reference.parallel(obs.images[0], INSTRUCTIONS[0], 56).argmax(-1) + 31744).tolist()
    assert out["tokens"] == ids
    np.testing.assert_array_equal(np.array(out["actions"], dtype=np.float32),
                                  reference.actions(ids, LIBERO_KEY, 8).astype(np.float32))
    assert main([*args, "policy.unnorm_key=libero_10", "policy.mode=autoregressive"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == reference.autoregressive(obs.images[0], INSTRUCTIONS[0], 7)[0]
    assert np.array(out["actions"]).shape == (1, 7)
    assert main([*args, "policy.unnorm_key=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pushcut: error: ") and LIBERO_KEY in err[0]
    assert main([*args[:-4], "--image", str(tmp_path / "missing.png"), "--instruction", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_unknown_timm_id_needs_vision_heads(tmp_path, ckpt, capsys):
    from PIL import Image

    src = make_tiny_checkpoint(tmp_path / "custom", timm_ids=("my_dino_vit", "my_siglip_vit"))
    with pytest.raises(CheckpointError) as info:
        policy_for(src)
    msg = str(info.value)
    assert "unknown timm model id 'my_dino_vit'" in msg and "policy.vision_heads=" in msg
    # With the head count given, the same weights compute exactly what the known ids compute...
    known, custom = policy_for(ckpt), policy_for(src, vision_heads=[16, 16])
    obs = make_obs(2)
    assert torch.equal(known.action_logits(obs), custom.action_logits(obs))
    # ...and a wrong count computes something else without any shape error: why it is never guessed.
    assert not torch.allclose(policy_for(src, vision_heads=[8, 8]).action_logits(obs), known.action_logits(obs))
    with pytest.raises(ConfigError, match=r"vision_heads has 1 entries .* 2 vision tower"):
        policy_for(src, vision_heads=[16])
    with pytest.raises(CheckpointError, match=r"width 32 is not divisible by 5 attention heads"):
        policy_for(src, vision_heads=[5, 16])
    with pytest.raises(CheckpointError, match=r"has 16 attention heads but policy.vision_heads gives 8"):
        policy_for(ckpt, vision_heads=[8, 16])
    with pytest.raises(ConfigError, match="list of positive integers"):
        OpenVLAConfig(checkpoint=str(ckpt), vision_heads=[0])
    image = tmp_path / "frame.png"
    Image.fromarray(obs.images[0]).save(image)
    args = ["predict", "--checkpoint", str(src), "--image", str(image), "--instruction", "x",
            "policy.unnorm_key=libero_10"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "policy.vision_heads" in err[0]
    assert main([*args, "policy.vision_heads=[16,16]"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == policy_for(ckpt, chunk_size=8).act(ObsBatch(
        images=obs.images[:1], instructions=["x"], task_ids=["x"]), 0.0).sample["tokens"][0].tolist()


def test_vocabulary_and_tower_mismatches_are_one_line(tmp_path, ckpt):
    no_actions = tmp_path / "no_actions"
    shutil.copytree(ckpt, no_actions)
    _edit_config(no_actions, pad_to_multiple_of=32064 - 200)  # a base vocabulary of 200 < 256 bins
    with pytest.raises(CheckpointError, match=r"no action-id range: 256 action bins .* base vocabulary of 200"):
        policy_for(no_actions)
    wrong_size = tmp_path / "wrong_size"
    shutil.copytree(ckpt, wrong_size)
    _edit_config(wrong_size, image_sizes=[56, 56])
    with pytest.raises(CheckpointError, match=r"pos_embed has 4 positions, expected 16 patches"):
        policy_for(wrong_size)
    small_vocab = make_tiny_checkpoint(tmp_path / "small_vocab")
    tensors = safetensors.torch.load_file(str(small_vocab / "model.safetensors"))
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        tensors[key] = tensors[key][:20064].contiguous()
    safetensors.torch.save_file(tensors, str(small_vocab / "model.safetensors"))
    _edit_config(small_vocab, pad_to_multiple_of=64)
    with pytest.raises(CheckpointError, match=r"appends token id 29871 .* only 20064 embedding rows"):
        policy_for(small_vocab)


# ------------------------------------------------------------------ the contract suite


class TestOpenVLAParallelContract(PolicyContract):
    options = {"unnorm_key": "libero_10", "chunk_size": 2}

    @pytest.fixture
    def make_policy(self, ckpt):
        return lambda: OpenVLAPolicy(OpenVLAConfig(checkpoint=str(ckpt), **self.options))

    @pytest.fixture
    def policy(self, make_policy):
        return make_policy()

    @pytest.fixture
    def obs_batch(self):
        return make_obs(3)


class TestOpenVLAAutoregressiveLoRAContract(TestOpenVLAParallelContract):
    options = {"unnorm_key": "libero_10", "mode": "autoregressive", "lora_rank": 2}
