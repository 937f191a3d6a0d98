"""verl's answers for the inputs in an .npz, for tests/core/test_algos_vs_verl.py.

Run with the python of the venv built by make_verl_env.sh (not pushcut's):

    DIR/bin/python tests/reference/verl_reference.py INPUTS.npz OUTPUTS.npz

Every input key is ``KIND__CASE__FIELD``; each (KIND, CASE) is one call into
``verl.trainer.ppo.core_algos`` and its results are written as
``KIND__CASE__OUTPUT``. Kinds and fields:

* ``adv``: rewards (N,), index (N,) int, epsilon () -> grpo, grpo_vectorized,
  drgrpo (grpo with norm_adv_by_std_in_grpo=False), rloo, rloo_vectorized, each (N,).
* ``pg``: log_prob, old_log_prob, advantages, mask (B, T); clip_ratio_low,
  clip_ratio_high, clip_ratio_c () -> for each aggregation mode M:
  loss__M (), grad__M (B, T) (d loss / d log_prob); pg_clipfrac, ppo_kl,
  pg_clipfrac_lower (); loss_mat (B, T) (per-element loss, 0 off the mask).
* ``agg``: loss_mat, mask (B, T), loss_scale_factor () -> one scalar per mode
  (``seq-mean-token-sum-norm`` also as ``seq-mean-token-sum-norm@scale``).
* ``kl``: log_prob, ref_log_prob -> one array per kind.
* ``ent``: logits (..., V), values, mask -> entropy (...), masked_mean ().
* ``gae``: rewards, values, mask (N, C); gamma, lam () -> advantages (whitened, as
  verl returns them), returns (N, C).
* ``vf``: vpreds, values, returns, mask (B, C); cliprange_value () -> for each
  aggregation mode M: loss__M (), grad__M (B, C) (d loss / d vpreds); vf_clipfrac ().

This file only imports numpy, torch and verl, never pushcut.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import torch
from verl.trainer.ppo import core_algos
from verl.utils import torch_functional as verl_F
from verl.workers.config import ActorConfig

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KL_KINDS = ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def advantages(f: dict) -> dict:
    rewards = torch.from_numpy(f["rewards"])[:, None]  # one "token" per episode carries the outcome
    mask = torch.ones_like(rewards)
    index = f["index"]
    eps = float(f["epsilon"])
    out = {}
    for name, kwargs in [
        ("grpo", dict(norm_adv_by_std_in_grpo=True)),
        ("drgrpo", dict(norm_adv_by_std_in_grpo=False)),
        ("grpo_vectorized", dict(norm_adv_by_std_in_grpo=True)),
        ("rloo", {}),
        ("rloo_vectorized", {}),
    ]:
        estimator = "grpo" if name == "drgrpo" else name
        fn = core_algos.get_adv_estimator_fn(estimator)
        adv, _ = fn(token_level_rewards=rewards.clone(), response_mask=mask, index=index, epsilon=eps, **kwargs)
        out[name] = _np(adv[:, 0])
    return out


def policy_loss(f: dict) -> dict:
    old = torch.from_numpy(f["old_log_prob"])
    adv = torch.from_numpy(f["advantages"])
    mask = torch.from_numpy(f["mask"])
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=float(f["clip_ratio_low"]),
        clip_ratio_high=float(f["clip_ratio_high"]),
        clip_ratio_c=float(f["clip_ratio_c"]),
    )
    fn = core_algos.get_policy_loss_fn("vanilla")
    out = {}
    for mode in AGG_MODES:
        log_prob = torch.from_numpy(f["log_prob"]).clone().requires_grad_(True)
        loss, metrics = fn(old_log_prob=old, log_prob=log_prob, advantages=adv, response_mask=mask,
                           loss_agg_mode=mode, config=config)
        loss.backward()
        out[f"loss__{mode}"] = _np(loss)
        out[f"grad__{mode}"] = _np(log_prob.grad)
    for key in ("pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"):
        out[key] = np.asarray(metrics[f"actor/{key}"], dtype=np.float64)
    # verl only returns the aggregated loss; a one-hot mask with token-sum reads out each element.
    loss_mat = torch.zeros_like(old)
    log_prob = torch.from_numpy(f["log_prob"])
    for b, t in (mask != 0).nonzero().tolist():
        one_hot = torch.zeros_like(mask)
        one_hot[b, t] = 1
        loss_mat[b, t], _ = fn(old_log_prob=old, log_prob=log_prob, advantages=adv, response_mask=one_hot,
                               loss_agg_mode="token-sum", config=config)
    out["loss_mat"] = _np(loss_mat)
    return out


def aggregation(f: dict) -> dict:
    loss_mat = torch.from_numpy(f["loss_mat"])
    mask = torch.from_numpy(f["mask"])
    out = {mode: _np(core_algos.agg_loss(loss_mat, mask, mode)) for mode in AGG_MODES}
    out["seq-mean-token-sum-norm@scale"] = _np(core_algos.agg_loss(
        loss_mat, mask, "seq-mean-token-sum-norm", loss_scale_factor=float(f["loss_scale_factor"])))
    return out


def kl(f: dict) -> dict:
    log_prob = torch.from_numpy(f["log_prob"])
    ref = torch.from_numpy(f["ref_log_prob"])
    return {kind: _np(core_algos.kl_penalty(log_prob, ref, kind)) for kind in KL_KINDS}


def entropy(f: dict) -> dict:
    return {
        "entropy": _np(verl_F.entropy_from_logits(torch.from_numpy(f["logits"]))),
        "masked_mean": _np(verl_F.masked_mean(torch.from_numpy(f["values"]), torch.from_numpy(f["mask"]))),
    }


def gae(f: dict) -> dict:
    adv, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=torch.from_numpy(f["rewards"]), values=torch.from_numpy(f["values"]),
        response_mask=torch.from_numpy(f["mask"]), gamma=float(f["gamma"]), lam=float(f["lam"]))
    return {"advantages": _np(adv), "returns": _np(returns)}


def value_loss(f: dict) -> dict:
    out = {}
    for mode in AGG_MODES:
        vpreds = torch.from_numpy(f["vpreds"]).clone().requires_grad_(True)
        loss, clipfrac = core_algos.compute_value_loss(
            vpreds=vpreds, returns=torch.from_numpy(f["returns"]), values=torch.from_numpy(f["values"]),
            response_mask=torch.from_numpy(f["mask"]), cliprange_value=float(f["cliprange_value"]),
            loss_agg_mode=mode)
        loss.backward()
        out[f"loss__{mode}"] = _np(loss)
        out[f"grad__{mode}"] = _np(vpreds.grad)
        out["vf_clipfrac"] = _np(torch.as_tensor(clipfrac))
    return out


KINDS = {"adv": advantages, "pg": policy_loss, "agg": aggregation, "kl": kl, "ent": entropy, "gae": gae,
         "vf": value_loss}


def main(in_path: str, out_path: str) -> None:
    cases: dict[tuple[str, str], dict] = defaultdict(dict)
    with np.load(in_path) as data:
        for key in data.files:
            kind, case, field = key.split("__", 2)
            cases[kind, case][field] = data[key]
    results = {}
    for (kind, case), fields in cases.items():
        for name, value in KINDS[kind](fields).items():
            results[f"{kind}__{case}__{name}"] = value
    np.savez(out_path, **results)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} INPUTS.npz OUTPUTS.npz")
    main(sys.argv[1], sys.argv[2])
