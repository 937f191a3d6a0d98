"""pushcut.actions against hand-computed values and OpenVLA's own formulas."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pushcut.actions import (
    ActionBounds,
    ActionTokenizer,
    categorical_entropy,
    normalize_actions,
    sample_categorical,
    unnormalize_actions,
)

WIDTH = 2.0 / 255  # distance between OpenVLA's 256 edges over [-1, 1]


def openvla_encode(actions: np.ndarray, vocab_size: int = 32000) -> np.ndarray:
    """OpenVLA's ActionTokenizer.__call__ before it turns ids into strings, restated."""
    bins = np.linspace(-1, 1, 256)
    return vocab_size - np.digitize(np.clip(actions, -1.0, 1.0), bins)


def openvla_decode(token_ids: np.ndarray, vocab_size: int = 32000) -> np.ndarray:
    """OpenVLA's decode_token_ids_to_actions, restated."""
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2.0
    return centers[np.clip(vocab_size - token_ids - 1, 0, centers.shape[0] - 1)]


@pytest.fixture
def tok() -> ActionTokenizer:
    return ActionTokenizer(vocab_size=32000)  # Llama-2's base vocabulary, OpenVLA's action ids count back from it


def test_edges_and_centres(tok: ActionTokenizer) -> None:
    assert tok.bins.shape == (256,) and tok.bin_centers.shape == (255,)
    assert tok.bins[0] == -1.0 and tok.bins[-1] == 1.0
    assert tok.bin_width == pytest.approx(WIDTH)
    assert tok.bin_centers[0] == pytest.approx(-1 + WIDTH / 2)
    assert tok.bin_centers[127] == pytest.approx(0.0, abs=1e-15)
    assert tok.action_token_begin_idx == 31743


def test_hand_computed_bins(tok: ActionTokenizer) -> None:
    x = np.array([-5.0, -1.0, -1 + 0.5 * WIDTH, -1 + WIDTH, 0.0, 1 - 1e-9, 1.0, 7.0])
    expected_bins = np.array([0, 0, 0, 1, 127, 254, 255, 255])
    np.testing.assert_array_equal(tok.discretize(x), expected_bins)
    # Token id = 31999 - bin: action tokens decrease as the action grows, exactly as in OpenVLA.
    np.testing.assert_array_equal(tok.encode(x), 31999 - expected_bins)
    # ±1 are exact, ±5 clip onto them; the top bin (only exactly +1) decodes onto the last centre.
    np.testing.assert_allclose(
        tok.decode(tok.encode(x)),
        [-1 + WIDTH / 2, -1 + WIDTH / 2, -1 + WIDTH / 2, -1 + 1.5 * WIDTH, 0.0,
         1 - WIDTH / 2, 1 - WIDTH / 2, 1 - WIDTH / 2],
        atol=1e-12,
    )


def test_token_id_range(tok: ActionTokenizer) -> None:
    ids = tok.encode(np.linspace(-1.5, 1.5, 10_001))
    assert ids.min() == 31744 and ids.max() == 31999
    assert len(np.unique(ids)) == 256
    assert (tok.first_token_id, tok.last_token_id) == (31744, 31999)
    assert tok.is_action_token(np.array([31743, 31744, 31999, 32000])).tolist() == [False, True, True, False]


def test_matches_openvla_exactly(tok: ActionTokenizer) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1.2, 1.2, 20_000), tok.bins, [-1.0, 1.0]]).astype(np.float32)
    np.testing.assert_array_equal(tok.encode(x), openvla_encode(x))
    ids = np.arange(31700, 32010)  # includes non-action ids, which OpenVLA clips
    np.testing.assert_array_equal(tok.decode(ids), openvla_decode(ids))


def test_torch_equals_numpy(tok: ActionTokenizer) -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-1.1, 1.1, 5000), tok.bins]).astype(np.float32)
    bins_t = tok.discretize(torch.from_numpy(x))
    assert bins_t.dtype == torch.int64
    np.testing.assert_array_equal(bins_t.numpy(), tok.discretize(x))
    np.testing.assert_array_equal(tok.encode(torch.from_numpy(x)).numpy(), tok.encode(x))
    dec = tok.decode(tok.encode(torch.from_numpy(x)), dtype=torch.float64)
    np.testing.assert_array_equal(dec.numpy(), tok.decode(tok.encode(x)))
    assert tok.bins_to_actions(torch.tensor([3, 255])).dtype == torch.float32


def test_round_trip_within_half_a_bin(tok: ActionTokenizer) -> None:
    x = np.linspace(-1, 1, 100_001)
    err = np.abs(tok.bins_to_actions(tok.discretize(x)) - x)
    assert err.max() <= tok.bin_width / 2 + 1e-12


def test_shapes_preserved_and_nan_rejected(tok: ActionTokenizer) -> None:
    x = np.zeros((2, 8, 7))
    assert tok.discretize(x).shape == (2, 8, 7)
    assert tok.decode(tok.encode(torch.zeros(3, 5))).shape == (3, 5)
    with pytest.raises(ValueError, match="NaN"):
        tok.discretize(np.array([0.0, np.nan]))


def test_other_bin_counts() -> None:
    tok = ActionTokenizer(vocab_size=100, n_bins=3)  # edges -1, 0, 1
    np.testing.assert_array_equal(tok.discretize(np.array([-1.0, -0.1, 0.0, 0.9, 1.0])), [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(tok.bins_to_token_ids(np.array([0, 2])), [99, 97])
    with pytest.raises(ValueError):
        ActionTokenizer(vocab_size=10, n_bins=256)


def test_unnormalize_hand_computed_and_mask() -> None:
    low, high = [0.0, -2.0, 10.0], [1.0, 2.0, 20.0]
    x = np.array([[-1.0, 0.0, 1.0], [1.0, 0.5, -0.5]])
    out = unnormalize_actions(x, low, high, mask=[True, True, False])
    np.testing.assert_allclose(out, [[0.0, 0.0, 1.0], [1.0, 1.0, -0.5]])  # last dim passes through
    out_t = unnormalize_actions(torch.tensor(x, dtype=torch.float32), low, high, mask=[True, True, False])
    assert out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-6)


def test_normalize_clips_masks_and_zeros_unused_dims() -> None:
    low, high = np.array([0.0, -2.0, 5.0, 0.0]), np.array([1.0, 2.0, 5.0, 1.0])
    x = np.array([[0.5, 4.0, 5.0, 3.0], [-1.0, -2.0, 7.0, -3.0]])
    out = normalize_actions(x, low, high, mask=[True, True, True, False])
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.0, 3.0], [-1.0, -1.0, 0.0, -3.0]], atol=1e-7)
    out_t = normalize_actions(torch.tensor(x), low, high, mask=[True, True, True, False])
    np.testing.assert_allclose(out_t.numpy(), out)


def test_normalize_unnormalize_round_trip() -> None:
    rng = np.random.default_rng(2)
    low, high = rng.uniform(-3, -1, 7), rng.uniform(1, 3, 7)
    x = rng.uniform(low, high, (100, 7))
    np.testing.assert_allclose(unnormalize_actions(normalize_actions(x, low, high), low, high), x, atol=1e-6)


def test_bounds_from_openvla_stats() -> None:
    stats = {"q01": [-0.5, -1.0], "q99": [0.5, 1.0], "min": [-2.0, -1.0], "max": [2.0, 1.0], "mask": [True, False]}
    q99 = ActionBounds.from_stats(stats)
    assert q99.low == (-0.5, -1.0) and q99.mask == (True, False)
    np.testing.assert_allclose(q99.unnormalize(np.array([1.0, 0.3])), [0.5, 0.3])
    minmax = ActionBounds.from_stats(stats, kind="minmax")
    np.testing.assert_allclose(minmax.unnormalize(np.array([1.0, 0.3])), [2.0, 0.3])
    assert ActionBounds.from_stats({"q01": [0.0], "q99": [1.0]}).mask == (True,)
    with pytest.raises(ValueError, match="min"):
        ActionBounds.from_stats({"q01": [0.0], "q99": [1.0]}, kind="minmax")


def test_bounds_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        unnormalize_actions(np.zeros((2, 3)), [0.0, 0.0], [1.0, 1.0])


def test_sampler_frequencies() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    draws = sample_categorical(probs.expand(200_000, 4))
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq, probs.double(), atol=5e-3, rtol=0)
    assert freq[1] == 0


def test_entropy_of_uniform_and_certain_categoricals() -> None:
    logp = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]]), dim=-1)
    torch.testing.assert_close(categorical_entropy(logp), torch.tensor([math.log(4), 0.0]))


def test_numpy_normalisation_imports_no_torch() -> None:
    """An env worker in a venv without torch uses the same normalisation (RoboTwin's min/max)."""
    code = ("import sys; import numpy as np; from pushcut.actions import ActionBounds; "
            "b = ActionBounds((0.0,), (2.0,), (True,)); assert b.unnormalize(np.array([0.0]))[0] == 1.0; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
