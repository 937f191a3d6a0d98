"""pushcut's original TinyVLA variant against an independent reference on the original's own libraries.

tests/reference/tinyvla_reference.py runs in its own venv (tests/reference/make_tinyvla_env.sh: CPU torch
2.13.0, transformers 4.37.2, peft 0.4.0, diffusers 0.11.1 — the versions TinyVLA pins; no torchvision):

* ``make`` builds a tiny random-weight LLaVA-Pythia VLM (CLIP tower of 3 layers, GPTNeoX of 2, a
  byte-level BPE tokenizer with Pythia's special tokens) and saves it as the original does: the base with
  ``save_pretrained`` (config.json of type llava_pythia, model.safetensors, tokenizer, CLIP
  preprocessor_config.json), then two per-task runs as train_tinyvla.py saves them after LoRA training
  (config.json with the action-head settings, dataset_stats.pkl, checkpoint-100/ with adapter_config.json,
  the adapter — one run as adapter_model.safetensors, one as adapter_model.bin — non_lora_trainables.bin of
  every non-LoRA parameter under peft's names, tokenizer and preprocessor files); heads, projectors and
  LoRA matrices of the two tasks differ;
* ``run`` loads each run as builder.load_pretrained_model does (base, non_lora_trainables, PeftModel,
  merge_and_unload) and runs eval_real_franka.py's path on fixed inputs: ÷255, 95 % centre crop and resize,
  expand2square + CLIPImageProcessor for both views, the ``pythia`` conversation prompt through
  tokenizer_image_token, the qpos normalisation, forward(eval=True) → forward_diffusion_head with
  diffusers' DDIMScheduler (10 steps), x_N from ``torch.randn`` after ``torch.manual_seed(seed)``.
  It records the conditioning vector (output of ``embed_out.combine``), the first noise prediction, the
  whole DDIM chain and the un-normalised action chunk.

The limitation: the original repository is not a package and GitHub is not reachable where the tests run,
so the reference re-states the original's modules (LlavaPythiaConfig, CLIPVisionTower, the projector
builder, LlavaPythiaForCausalLM's input splicing and inference loop, ConditionalUnet1D, the loader and the
eval's processing) following the original's structure on the original's pinned libraries, written apart
from pushcut and never importing it. The deviations from the published code, each the minimum to run it:

1. float32 on CPU: ``.cuda()`` dropped, the loader's ``torch_dtype=float16`` not used (the tolerances are
   for float32);
2. the bfloat16 sinusoidal step embedding is cast to the next Linear's dtype (as published, a float32 or
   float16 Linear refuses bfloat16 input);
3. torchvision's ``transforms.Resize(size, antialias=True)`` on a float tensor is stated as the call it
   makes, ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` (no torchvision here);
4. ``post_process`` for droid_diffusion is undefined in eval_real_franka.py; the reference uses the inverse
   of the training's min/max normalisation, ``((a + 1) / 2) · (max − min) + min``;
5. the test model's U-Net widths (step embedding 16, down_dims [16, 32], kernel 3) go through
   ConditionalUnet1D's own constructor arguments; the original passes none (256, [256, 512, 1024], 5).
   pushcut reads the widths from the head's tensors, so both are covered by the same code;
6. a one-line assertion that the head and projector were loaded (the original's strict=False load would
   keep random ones silently).

Run:

    tests/reference/make_tinyvla_env.sh .venv-tinyvla-ref
    PUSHCUT_TINYVLA_REF_PYTHON=.venv-tinyvla-ref/bin/python pytest tests/plugins/policies/test_tinyvla_reference.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="the tinyvla policy needs the [tinyvla] extra (peft)")

from pushcut.contracts import ObsBatch  # noqa: E402
from pushcut.plugins.policies.tinyvla import TinyVLAConfig, build_tinyvla  # noqa: E402

ENV_VAR = "PUSHCUT_TINYVLA_REF_PYTHON"
REFERENCE = Path(__file__).resolve().parents[2] / "reference" / "tinyvla_reference.py"
TOL_COND = 1e-5  # conditioning vector and first noise prediction (float32, CPU, one thread)
TOL_CHAIN = 5e-5  # the whole DDIM chain and the action chunk
SEED = 7
INSTRUCTIONS = {"bowl": ["put the bowl on the plate", "pick up the black bowl"], "drawer": ["open the top drawer"]}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ENV_VAR not in os.environ,
                       reason="TinyVLA reference venv not configured: run tests/reference/make_tinyvla_env.sh DIR "
                              "and set PUSHCUT_TINYVLA_REF_PYTHON=DIR/bin/python"),
]


def _reference(*args: str) -> str:
    python = os.environ[ENV_VAR]
    proc = subprocess.run([python, str(REFERENCE), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (f"TinyVLA reference failed with {ENV_VAR}={python!r} (exit {proc.returncode}); "
                                  f"rebuild it with tests/reference/make_tinyvla_env.sh DIR\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def original_model(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tinyvla_original")
    return json.loads(_reference("make", str(out)).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _obs(frame: tuple[int, int] = (30, 40)) -> ObsBatch:
    rng = np.random.default_rng(3)
    rows = [("bowl", INSTRUCTIONS["bowl"][0]), ("drawer", INSTRUCTIONS["drawer"][0]), ("bowl", INSTRUCTIONS["bowl"][1])]
    b = len(rows)
    # Camera frames of another size and aspect than the tower's 28 px: crop, resize, pad and CLIP resize all act.
    return ObsBatch(images=rng.integers(0, 256, (b, *frame, 3), dtype=np.uint8),
                    wrist_images=rng.integers(0, 256, (b, *frame, 3), dtype=np.uint8),
                    instructions=[r[1] for r in rows], task_ids=[r[0] for r in rows],
                    states=rng.normal(size=(b, 5)).astype(np.float32))


def _run_reference(obs: ObsBatch, checkpoints: dict[str, str], model_base: str, tmp_path: Path) -> dict:
    spec = {"model_base": model_base, "seed": SEED,
            "rows": [{"checkpoint": checkpoints[t], "instruction": i} for t, i in zip(obs.task_ids, obs.instructions)]}
    np.savez(tmp_path / "inputs.npz", images=obs.images, wrist_images=obs.wrist_images, states=obs.states,
             spec=np.array(json.dumps(spec)))
    _reference("run", str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz"))
    with np.load(tmp_path / "out.npz") as data:
        out = {k: data[k] for k in data.files}
    ids, rows, i = out.pop("input_ids"), [], 0
    while i < len(ids):
        rows.append(ids[i + 1:i + 1 + ids[i]].tolist())
        i += 1 + ids[i]
    out["input_ids"] = rows
    return out


def _checkpoints(model: dict) -> dict[str, str]:
    return {task: str(sorted(Path(run).glob("checkpoint-*"))[-1]) for task, run in model["runs"].items()}


def _ours(policy, obs: ObsBatch) -> dict:
    pixels = policy.pixel_values(obs)
    t0 = policy.schedule.timesteps[:1]

    def first(task, cond, rows):
        x = policy.greedy_noise.expand(len(rows), -1, -1)
        return cond, policy.heads[task](x, t0.expand(len(rows)), cond)

    with torch.no_grad():
        cond, eps0 = policy._per_group(obs, first)
    sample = policy.act(obs, 0.0)
    return {"pixels": pixels[0].numpy(), "pixels_r": pixels[1].numpy(), "cond": cond.numpy(), "noise_pred0": eps0.numpy(),
            "chain": sample.sample["chain"].numpy(), "actions": sample.actions}


def _max_diffs(ours: dict, ref: dict) -> dict[str, float]:
    return {k: float(np.abs(ours[k] - ref[k]).max()) for k in ("pixels", "pixels_r", "cond", "noise_pred0", "chain",
                                                                 "actions")}


@pytest.mark.parametrize("frame", [(30, 40), (41, 29)], ids=["landscape", "portrait-odd"])
def test_loaded_runs_match_the_original_inference(original_model, one_thread, tmp_path, frame):
    runs = original_model["runs"]
    policy = build_tinyvla(TinyVLAConfig(runs=(runs["bowl"], runs["drawer"]), adapters={"tasks": ("bowl", "drawer")},
                                         seed=SEED))
    assert type(policy).__name__ == "OriginalTinyVLAPolicy"
    c = policy.config
    assert (c.hidden_size, c.layers, c.vision_layers, c.chunk_size, c.action_dim, c.state_dim) == (32, 2, 3, 8, 7, 5)
    assert (c.adapters.rank, c.adapters.alpha, c.unet_dims, c.timestep_dim) == (8, 32.0, (16, 32), 16)
    obs = _obs(frame)
    ref = _run_reference(obs, _checkpoints(original_model), original_model["base"], tmp_path)
    for row, (task, instruction) in enumerate(zip(obs.task_ids, obs.instructions)):
        before, after = policy.tokenizer.encode(instruction)
        assert ref["input_ids"][row] == [*before, -200, *after]
    ours = _ours(policy, obs)
    diffs = _max_diffs(ours, ref)
    print(f"\nmax |pushcut - reference| (loaded runs, {frame[0]}x{frame[1]} frames):", json.dumps(diffs))
    # the two tasks really differ (their adapters, projectors and heads are routed)
    assert np.abs(ref["cond"][0] - ref["cond"][1]).max() > 1e-2
    assert np.isfinite(ref["chain"]).all() and ref["chain"].std() > 0.1 and np.abs(ref["chain"][:, -1]).max() <= 1.0
    assert 1e-2 < np.abs(ref["noise_pred0"]).max() < 1e2  # a sane head (no uninitialised weights)
    assert diffs["pixels"] <= 1e-6 and diffs["pixels_r"] <= 1e-6
    assert diffs["cond"] <= TOL_COND and diffs["noise_pred0"] <= TOL_COND
    assert diffs["chain"] <= TOL_CHAIN and diffs["actions"] <= TOL_CHAIN


def test_export_loads_in_the_reference_with_equal_actions(original_model, one_thread, tmp_path):
    """After (a stand-in for) RL on one task, the export is a directory the original loader reads and runs
    to pushcut's actions; the untouched task's files give its old actions."""
    runs = original_model["runs"]
    policy = build_tinyvla(TinyVLAConfig(runs=(runs["bowl"], runs["drawer"]), adapters={"tasks": ("bowl", "drawer"),
                                                                                          "active": "drawer"}, seed=SEED))
    obs = _obs()
    before = policy.act(obs, 0.0).actions
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in policy.trainable_parameters():  # drawer's LoRA, projector and head only
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    after = policy.act(obs, 0.0).actions
    drawer = [i for i, t in enumerate(obs.task_ids) if t == "drawer"]
    bowl = [i for i, t in enumerate(obs.task_ids) if t == "bowl"]
    assert np.abs(after[drawer] - before[drawer]).max() > 1e-3
    np.testing.assert_array_equal(after[bowl], before[bowl])
    exported = policy.export(tmp_path / "export")
    ref = _run_reference(obs, {t: str(p) for t, p in exported.items()}, str(tmp_path / "export" / "base"), tmp_path)
    diff = float(np.abs(ref["actions"] - after).max())
    print(f"\nmax |pushcut - reference| (export, actions): {diff:.3g}")
    assert diff <= TOL_CHAIN


def test_the_default_head_has_the_originals_names_and_shapes(original_model):
    """The U-Net real runs carry (the original's constructor defaults: step embedding 256, down_dims
    [256, 512, 1024], kernel 5): pushcut's head has the same tensor names and shapes, and reads those
    widths back from them."""
    from pushcut.plugins.policies.tinyvla.original_model import UnetHead, unet_shapes

    theirs = json.loads(Path(original_model["default_unet_shapes"]).read_text())
    with torch.device("meta"):
        ours = UnetHead(action_dim=7, hidden_size=1024, state_dim=5)
    assert {k: list(v.shape) for k, v in ours.state_dict().items()} == theirs
    assert unet_shapes(ours.state_dict(), "head") == dict(step_embed_dim=256, down_dims=(256, 512, 1024), kernel_size=5)
