"""OpenVLA's vision towers against timm itself: the original library builds the towers from the
checkpoint's own timm ids, loads the checkpoint's tower weights and runs OpenVLA's featurizer call
(``get_intermediate_layers(n={blocks - 2})``); pushcut's transformers towers must give the same patch
features on the same pixels.

timm needs torchvision, which cannot live beside pushcut's CPU torch, so timm runs in its own venv
as a subprocess (tests/reference/timm_reference.py, built by tests/reference/make_timm_env.sh):

    tests/reference/make_timm_env.sh .venv-timm
    PUSHCUT_TIMM_PYTHON=.venv-timm/bin/python pytest tests/plugins/policies/test_openvla_timm.py

The checkpoint has the real towers' widths, head counts, MLP sizes, register tokens and 224 px
input — only 3 blocks instead of 24 / 27 — and is *stressed*: biases, norm gains and layer scales
far from their initial values, so a dropped or misplaced parameter cannot hide.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="the openvla extra is not installed (pip install -e '.[openvla]')")
pytest.importorskip("sentencepiece", reason="the openvla extra is not installed (pip install -e '.[openvla]')")
pytest.importorskip("mistral_common", reason="mistral-common (test extra) provides the test tokenizer")

from openvla_tiny import make_tiny_checkpoint  # noqa: E402

from pushcut.contracts import ObsBatch  # noqa: E402
from pushcut.plugins.policies.openvla import OpenVLAConfig, OpenVLAPolicy  # noqa: E402

ENV_VAR = "PUSHCUT_TIMM_PYTHON"
REFERENCE = Path(__file__).resolve().parents[2] / "reference" / "timm_reference.py"
FEATURE_TOL = 1e-5  # float32 on both sides, one thread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        ENV_VAR not in os.environ,
        reason="timm reference venv not configured: run tests/reference/make_timm_env.sh DIR "
        "and set PUSHCUT_TIMM_PYTHON=DIR/bin/python",
    ),
]


@pytest.fixture(scope="module")
def real_width_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("openvla_timm") / "ckpt", image_size=224,
                                dino_hidden=1024, siglip_hidden=1152, siglip_mlp=4304, vision_layers=3)


def _timm_features(checkpoint: Path, pixels: np.ndarray, tmp_path: Path) -> dict[str, np.ndarray]:
    np.save(tmp_path / "pixels.npy", pixels)
    python = os.environ[ENV_VAR]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([python, str(REFERENCE), str(checkpoint), str(tmp_path / "pixels.npy"),
                           str(tmp_path / "timm.npz")], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (
        f"timm reference failed with {ENV_VAR}={python!r} (exit {proc.returncode}); rebuild it with "
        f"tests/reference/make_timm_env.sh DIR\n{proc.stderr[-4000:]}"
    )
    with np.load(tmp_path / "timm.npz") as data:
        return {k: data[k] for k in data.files}


def test_patch_features_equal_timm(real_width_checkpoint, tmp_path):
    torch.set_num_threads(1)
    policy = OpenVLAPolicy(OpenVLAConfig(checkpoint=str(real_width_checkpoint), unnorm_key="libero_10",
                                         dtype="float32"))
    rng = np.random.default_rng(0)
    obs = ObsBatch(images=rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8),
                   instructions=["pick up the bowl"] * 2, task_ids=["t", "t"])
    pixels = policy.image_processor(obs.images).numpy()
    assert pixels.shape == (2, 6, 224, 224)
    ours = policy.vision_features(obs)
    timm = _timm_features(real_width_checkpoint, pixels, tmp_path)
    # timm's own activation for both towers is the exact erf GELU (SigLIP included)
    assert [str(a) for a in timm["act_layers"]] == ["GELU(approximate='none')"] * 2
    for name, mine in zip(("featurizer", "fused_featurizer"), ours):
        reference = torch.from_numpy(timm[name])
        assert tuple(reference.shape) == tuple(mine.shape) == (2, 256, 1024 if name == "featurizer" else 1152)
        assert reference.std() > 0.5  # the stressed weights give features far from zero
        torch.testing.assert_close(mine, reference, atol=FEATURE_TOL, rtol=0, msg=lambda m: f"{name}: {m}")
