"""pushcut.algos against verl's own ``core_algos`` on random inputs.

verl's pins clash with ours, so verl lives in its own venv and runs as a
subprocess (tests/reference/verl_reference.py) that reads inputs from an .npz
and writes its answers to another. Build the venv once with

    tests/reference/make_verl_env.sh .venv-verl
    PUSHCUT_VERL_PYTHON=.venv-verl/bin/python pytest tests/core/test_algos_vs_verl.py

Unset PUSHCUT_VERL_PYTHON skips these tests; set but broken fails them.

Known, deliberate differences, kept out of the random inputs:
* dual clip: verl always applies ``clip_ratio_c`` (default 3.0); pushcut's
  ``None`` turns it off, compared here against verl with a bound (1e9) too
  large to ever bind (|loss| <= e^20 |A|).
* an all-masked batch: verl's token-mean divides by 0; pushcut returns 0.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pushcut import algos

ENV_VAR = "PUSHCUT_VERL_PYTHON"
REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "verl_reference.py"
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KL_KINDS = ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]
NO_DUAL_CLIP_FOR_VERL = 1e9

pytestmark = pytest.mark.skipif(
    ENV_VAR not in os.environ,
    reason="verl reference venv not configured: run tests/reference/make_verl_env.sh DIR "
    "and set PUSHCUT_VERL_PYTHON=DIR/bin/python",
)


def _ragged_mask(gen: np.random.Generator, B: int, T: int, allow_empty_rows: bool) -> np.ndarray:
    lengths = gen.integers(0 if allow_empty_rows else 1, T + 1, size=B)
    lengths[0] = T
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


def _make_cases() -> dict[str, np.ndarray]:
    """All inputs, keyed ``KIND__CASE__FIELD`` (see verl_reference.py)."""
    inputs: dict[str, np.ndarray] = {}

    def add(kind: str, case: str, **fields):
        for k, v in fields.items():
            inputs[f"{kind}__{case}__{k}"] = np.asarray(v)

    # Advantages: several seeds and group sizes (incl. singletons and mixed sizes), binary
    # rewards (ties everywhere, all-0 / all-1 groups) and exactly representable non-binary ones.
    case = 0
    for seed in range(4):
        gen = np.random.default_rng(seed)
        for sizes in ([8] * 6, [2] * 5, [1, 4, 3, 8, 1, 5], [16] * 3):
            for values in ([0.0, 1.0], [0.0, 0.25, 0.5, 1.0, 2.0]):
                index = np.repeat(gen.permutation(1000)[: len(sizes)], sizes)
                rewards = gen.choice(values, size=index.size).astype(np.float32)
                rewards[index == index[0]] = values[-1]  # one flat group every time
                perm = gen.permutation(index.size)
                add("adv", f"c{case}", rewards=rewards[perm], index=index[perm].astype(np.int64),
                    epsilon=np.float64(1e-6))
                case += 1

    # Policy loss: ragged masks, per-row advantages with ties and zeros, log-ratios
    # spread over the clip region, a few far beyond the +-20 clamp.
    clip_settings = [(0.2, 0.28, None), (0.2, 0.28, 3.0), (0.1, 0.3, 2.0), (0.2, 0.2, None)]
    for seed in range(4):
        for j, (low, high, c) in enumerate(clip_settings):
            gen = np.random.default_rng(100 + 10 * seed + j)
            B, T = int(gen.integers(2, 9)), int(gen.integers(1, 17))
            mask = _ragged_mask(gen, B, T, allow_empty_rows=True)
            old = -gen.exponential(2.0, size=(B, T)).astype(np.float32)
            log_ratio = gen.normal(0.0, 0.4, size=(B, T))
            log_ratio[gen.random((B, T)) < 0.05] *= 100.0
            log_prob = (old + log_ratio).astype(np.float32)
            row_adv = gen.choice([-1.5, -0.5, 0.0, 0.5, 1.2], size=(B, 1))
            row_adv[0], log_prob[0, 0] = -0.5, old[0, 0] + 1.5  # ratio 4.5 with A < 0: dual clip binds
            adv = np.broadcast_to(row_adv, (B, T)).astype(np.float32).copy()
            add("pg", f"c{seed}_{j}", log_prob=log_prob, old_log_prob=old, advantages=adv, mask=mask,
                clip_ratio_low=np.float64(low), clip_ratio_high=np.float64(high),
                clip_ratio_c=np.float64(NO_DUAL_CLIP_FOR_VERL if c is None else c), pushcut_c=np.float64(c or 0))

    # Aggregation over ragged masks, including fully masked rows.
    for seed in range(6):
        gen = np.random.default_rng(200 + seed)
        B, T = int(gen.integers(1, 10)), int(gen.integers(1, 20))
        add("agg", f"c{seed}", loss_mat=gen.normal(size=(B, T)).astype(np.float32),
            mask=_ragged_mask(gen, B, T, allow_empty_rows=True), loss_scale_factor=np.float64(gen.integers(1, 50)))

    for seed in range(3):
        gen = np.random.default_rng(300 + seed)
        shape = (4, 7)
        log_prob = -gen.exponential(1.5, size=shape).astype(np.float32)
        ref = (log_prob + gen.normal(0, 1.0, size=shape)).astype(np.float32)
        ref[0, :3] = [40.0, -40.0, 0.0]  # exercise the k3 clamps
        add("kl", f"c{seed}", log_prob=log_prob, ref_log_prob=ref)

        logits = (gen.normal(size=(3, 5, 11)) * 3).astype(np.float32)
        add("ent", f"c{seed}", logits=logits, values=gen.normal(size=(5, 6)).astype(np.float32),
            mask=_ragged_mask(gen, 5, 6, allow_empty_rows=True))

    # GAE over chunks: ragged episodes (trailing padding), some with masked chunks inside
    # (verl skips them), binary terminal rewards and a few dense ones, gamma / lambda at
    # their ends and in between.
    for seed, (gamma, lam) in enumerate([(0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.5, 0.7), (1.0, 0.95), (0.0, 0.5)]):
        gen = np.random.default_rng(400 + seed)
        N, C = int(gen.integers(2, 9)), int(gen.integers(2, 30))
        mask = _ragged_mask(gen, N, C, allow_empty_rows=False)
        if seed % 2:
            mask[gen.random((N, C)) < 0.15] = 0.0
            mask[:, 0] = 1.0
        lengths = mask.shape[1] - np.argmax(mask[:, ::-1] > 0, axis=1)
        rewards = np.zeros((N, C), dtype=np.float32)
        rewards[np.arange(N), lengths - 1] = gen.integers(0, 2, size=N)
        if seed == 3:
            rewards += (gen.normal(size=(N, C)) * mask).astype(np.float32)
        values = gen.uniform(-0.5, 1.5, size=(N, C)).astype(np.float32)
        add("gae", f"c{seed}", rewards=rewards, values=values, mask=mask, gamma=np.float64(gamma),
            lam=np.float64(lam))

    # Value loss: predictions inside and beyond the clip range of the old values, ragged masks.
    for seed, clip in enumerate([0.2, 0.5, 0.05, 1.0]):
        gen = np.random.default_rng(500 + seed)
        B, C = int(gen.integers(2, 9)), int(gen.integers(1, 20))
        values = gen.uniform(0, 1, size=(B, C)).astype(np.float32)
        vpreds = (values + gen.normal(0, 0.4, size=(B, C))).astype(np.float32)
        returns = gen.uniform(-0.2, 1.2, size=(B, C)).astype(np.float32)
        add("vf", f"c{seed}", vpreds=vpreds, values=values, returns=returns,
            mask=_ragged_mask(gen, B, C, allow_empty_rows=False), cliprange_value=np.float64(clip))
    return inputs


@functools.lru_cache(maxsize=1)
def _run_reference() -> tuple[dict, dict] | str:
    """(inputs, verl outputs), or a message saying why the reference could not run."""
    python = os.environ[ENV_VAR]
    inputs = _make_cases()
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp, "inputs.npz"), Path(tmp, "verl.npz")
        np.savez(in_path, **inputs)
        try:
            proc = subprocess.run([python, str(REFERENCE), str(in_path), str(out_path)],
                                  capture_output=True, text=True, timeout=600)
        except OSError as e:
            return f"{ENV_VAR}={python!r} cannot be run ({e}); rebuild it with tests/reference/make_verl_env.sh DIR"
        if proc.returncode != 0:
            return (f"verl reference script failed with {ENV_VAR}={python!r} (exit {proc.returncode}); "
                    f"rebuild it with tests/reference/make_verl_env.sh DIR\n{proc.stderr[-4000:]}")
        with np.load(out_path) as data:
            outputs = {k: data[k] for k in data.files}
    return inputs, outputs


def _cases(kind: str) -> list[tuple[str, dict, dict]]:
    """[(case, input fields, verl outputs)] for one kind; fails the test if verl did not run."""
    return _cases_from(_run_reference(), kind)


def _cases_from(result: tuple[dict, dict] | str, kind: str) -> list[tuple[str, dict, dict]]:
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
    inputs, outputs = result
    grouped: dict[str, tuple[dict, dict]] = {}
    for source, target in ((inputs, 0), (outputs, 1)):
        for key, value in source.items():
            k, case, field = key.split("__", 2)
            if k == kind:
                grouped.setdefault(case, ({}, {}))[target][field] = value
    assert grouped, f"no {kind!r} cases"
    for case, (_, out) in grouped.items():
        assert out, f"verl returned nothing for {kind} case {case}"
    return [(case, fields, out) for case, (fields, out) in sorted(grouped.items())]


def _close(actual: torch.Tensor, expected: np.ndarray, what: str, rtol=1e-5, atol=1e-6) -> None:
    torch.testing.assert_close(actual.detach().double(), torch.as_tensor(np.asarray(expected), dtype=torch.float64),
                               rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def test_advantages_match_verl():
    n_singletons = 0
    for case, f, verl in _cases("adv"):
        rewards, index = torch.from_numpy(f["rewards"]), torch.from_numpy(f["index"])
        eps = float(f["epsilon"])
        for name in ("grpo", "drgrpo", "rloo"):
            ours = algos.get_advantage_estimator(name)(rewards, index, eps=eps)
            _close(ours, verl[name], f"{name} case {case}")
        # verl's vectorised variants agree with its loop versions (and so with ours), except
        # that rloo_vectorized gives a singleton group A = 0 where compute_rloo_outcome_advantage
        # (which we follow) gives A = R.
        grpo = algos.grpo_advantages(rewards, index, eps)
        _close(grpo, verl["grpo_vectorized"], f"grpo_vectorized {case}", atol=1e-5)
        stats = algos.group_stats(rewards, index)
        singleton = stats.counts[stats.inverse] == 1
        rloo = torch.where(singleton, 0.0, algos.rloo_advantages(rewards, index))
        _close(rloo, verl["rloo_vectorized"], f"rloo_vectorized {case}")
        n_singletons += int(singleton.sum())
    assert n_singletons > 0, "inputs should include groups of one"


def test_vanilla_policy_loss_matches_verl():
    n_clipped = n_dual = 0
    for case, f, verl in _cases("pg"):
        mask = torch.from_numpy(f["mask"])
        c = float(f["pushcut_c"]) or None
        kwargs = dict(clip_ratio_low=float(f["clip_ratio_low"]), clip_ratio_high=float(f["clip_ratio_high"]),
                      clip_ratio_c=c)
        for mode in AGG_MODES:
            log_prob = torch.from_numpy(f["log_prob"]).clone().requires_grad_(True)
            out = algos.get_policy_loss("vanilla")(
                log_prob, torch.from_numpy(f["old_log_prob"]), torch.from_numpy(f["advantages"]),
                mask.bool(), **kwargs)
            loss = algos.get_loss_aggregation(mode)(out.loss_mat, mask)
            loss.backward()
            _close(loss, verl[f"loss__{mode}"], f"pg {mode} loss case {case}")
            _close(log_prob.grad, verl[f"grad__{mode}"], f"pg {mode} grad case {case}")
        _close(out.loss_mat * mask, verl["loss_mat"], f"pg loss_mat case {case}")
        for key in ("pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"):
            _close(getattr(out, key), verl[key], f"pg {key} case {case}")
        n_clipped += float(out.pg_clipfrac) > 0
        n_dual += float(out.pg_clipfrac_lower) > 0
    assert n_clipped >= 8 and n_dual >= 2, "inputs should exercise clipping and dual clipping"


def test_aggregation_matches_verl():
    for case, f, verl in _cases("agg"):
        loss_mat, mask = torch.from_numpy(f["loss_mat"]), torch.from_numpy(f["mask"])
        for mode in AGG_MODES:
            _close(algos.agg_loss(loss_mat, mask, mode), verl[mode], f"agg {mode} case {case}")
            weights = algos.aggregation_weights(mask, mode)
            _close((loss_mat * weights).sum(), verl[mode], f"weights {mode} case {case}")
        scaled = algos.agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", float(f["loss_scale_factor"]))
        _close(scaled, verl["seq-mean-token-sum-norm@scale"], f"agg norm@scale case {case}")


def test_kl_penalty_matches_verl():
    for case, f, verl in _cases("kl"):
        log_prob, ref = torch.from_numpy(f["log_prob"]), torch.from_numpy(f["ref_log_prob"])
        for kind in KL_KINDS:
            _close(algos.kl_penalty(log_prob, ref, kind), verl[kind], f"kl {kind} case {case}")


def test_entropy_and_masked_mean_match_verl():
    for case, f, verl in _cases("ent"):
        _close(algos.entropy_from_logits(torch.from_numpy(f["logits"])), verl["entropy"], f"entropy case {case}")
        _close(algos.masked_mean(torch.from_numpy(f["values"]), torch.from_numpy(f["mask"])), verl["masked_mean"],
               f"masked_mean case {case}")


def test_gae_matches_verl():
    for case, f, want in _cases("gae"):
        mask = torch.from_numpy(f["mask"])
        out = algos.gae_advantages(torch.from_numpy(f["rewards"]), torch.from_numpy(f["values"]), mask,
                                   gamma=float(f["gamma"]), lam=float(f["lam"]), whiten=True)
        _close(out.advantages, want["advantages"], f"gae {case} advantages", rtol=1e-4, atol=1e-5)
        _close(out.returns, want["returns"], f"gae {case} returns")


def test_gae_with_terminal_rewards_matches_verl_on_the_binary_outcome():
    """What the trainer feeds GAE (the episode's reward at its last chunk) is verl's input here."""
    for case, f, want in _cases("gae"):
        if case == "c3":  # the dense-reward case
            continue
        mask = torch.from_numpy(f["mask"])
        outcome = torch.from_numpy(f["rewards"]).sum(dim=1)
        rewards = algos.terminal_rewards(outcome, mask)
        torch.testing.assert_close(rewards, torch.from_numpy(f["rewards"]))
        out = algos.gae_advantages(rewards, torch.from_numpy(f["values"]), mask, gamma=float(f["gamma"]),
                                   lam=float(f["lam"]))
        _close(out.returns, want["returns"], f"gae {case} returns")


def test_clipped_value_loss_matches_verl():
    for case, f, want in _cases("vf"):
        mask = torch.from_numpy(f["mask"])
        for mode in AGG_MODES:
            vpreds = torch.from_numpy(f["vpreds"]).clone().requires_grad_(True)
            out = algos.clipped_value_loss(vpreds, torch.from_numpy(f["values"]), torch.from_numpy(f["returns"]),
                                           mask, cliprange_value=float(f["cliprange_value"]))
            loss = algos.agg_loss(out.loss_mat, mask, mode)
            loss.backward()
            _close(loss, want[f"loss__{mode}"], f"vf {case} {mode} loss")
            _close(vpreds.grad, want[f"grad__{mode}"], f"vf {case} {mode} grad")
        _close(out.vf_clipfrac, want["vf_clipfrac"], f"vf {case} clipfrac")


def test_broken_reference_python_fails_loudly(monkeypatch, tmp_path):
    """A set-but-broken PUSHCUT_VERL_PYTHON is a failure, never a skip."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-such-python"))
    message = _run_reference.__wrapped__()  # uncached: leave the real run's cache alone
    assert isinstance(message, str) and "cannot be run" in message
    fake = tmp_path / "python"  # runs, but has no verl
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'verl'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv(ENV_VAR, str(fake))
    message = _run_reference.__wrapped__()
    assert isinstance(message, str) and "verl reference script failed" in message
    with pytest.raises(pytest.fail.Exception, match="verl reference script failed"):
        _cases_from(message, "adv")
