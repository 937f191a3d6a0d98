"""The OpenVLA policy's value head (PPO's critic): shapes, the same values from ``values`` and
``log_probs`` in both decoding modes, detached from the VLA, saved only once trained."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="the openvla extra is not installed (pip install -e '.[openvla]')")
pytest.importorskip("sentencepiece", reason="the openvla extra is not installed (pip install -e '.[openvla]')")
pytest.importorskip("mistral_common", reason="mistral-common (test extra) provides the test tokenizer")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "policies"))
from openvla_tiny import make_tiny_checkpoint  # noqa: E402

from pushcut.contracts import ObsBatch, has_value_head  # noqa: E402
from pushcut.plugins.policies.openvla import OpenVLAConfig, OpenVLAPolicy  # noqa: E402
from pushcut.plugins.policies.openvla.policy import VALUE_HEAD_FILE  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("openvla") / "ckpt")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def obs(b: int = 3) -> ObsBatch:
    rng = np.random.default_rng(0)
    return ObsBatch(images=rng.integers(0, 256, (b, 28, 28, 3), dtype=np.uint8),
                    instructions=["put the bowl on the plate", "open the drawer", "pick up the mug"][:b],
                    task_ids=[f"t{i}" for i in range(b)])


def policy_for(ckpt: Path, **options) -> OpenVLAPolicy:
    options.setdefault("unnorm_key", "libero_10")
    return OpenVLAPolicy(OpenVLAConfig(checkpoint=str(ckpt), **options))


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("options", [{"chunk_size": 2}, {"mode": "autoregressive"}], ids=["parallel", "autoregressive"])
def test_openvla_values_match_log_probs_and_train_the_head_alone(ckpt, options):
    policy = policy_for(ckpt, **options)
    assert has_value_head(policy)
    # frozen and outside the trainable parameters until a run with a critic turns it on
    head = {id(p) for p in policy.value_parameters()}
    assert not head & {id(p) for p in policy.trainable_parameters()}
    for p in policy.value_parameters():
        p.requires_grad_(True)
    o = obs()
    values = policy.values(o)
    assert values.shape == (3,) and values.dtype == torch.float32 and len(set(values.tolist())) == 3
    with torch.no_grad():
        sample = policy.act(o, 1.0).sample
    scores = policy.log_probs(o, sample, 1.0)
    torch.testing.assert_close(scores.values, values, rtol=1e-4, atol=1e-5)
    values.square().sum().backward()
    assert all(p.grad is not None for p in policy.value_parameters())
    assert all(p.grad is None for p in policy.parameters() if id(p) not in head)


def test_openvla_value_head_is_saved_only_once_trained(ckpt, tmp_path):
    policy = policy_for(ckpt, chunk_size=2)
    policy.save(tmp_path / "untouched")
    assert not (tmp_path / "untouched" / VALUE_HEAD_FILE).exists()
    assert digests(tmp_path / "untouched") == digests(ckpt)  # the original checkpoint, file for file
    with torch.no_grad():
        for p in policy.value_parameters():
            p.add_(0.25)
    policy.save(tmp_path / "trained")
    assert (tmp_path / "trained" / VALUE_HEAD_FILE).is_file()
    o = obs()
    torch.testing.assert_close(policy_for(tmp_path / "trained", chunk_size=2).values(o), policy.values(o))
    # loading a checkpoint without a head file resets the head to its seeded initialisation
    policy.load(tmp_path / "untouched")
    torch.testing.assert_close(policy.values(o), policy_for(ckpt, chunk_size=2).values(o))
