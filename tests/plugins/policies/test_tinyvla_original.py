"""The tinyvla policy's original variant on tiny runs in the original code's layout (written by
tinyvla_original_tiny.py): detection, shapes from the checkpoint, routing by task, GRPO on one task
leaving every other task bit-identical, save / load / export, fresh tasks, the CLI, and bad input.
Exactness against the original's own libraries is test_tinyvla_reference.py."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="the tinyvla policy needs the [tinyvla] extra (peft)")

from tinyvla_original_tiny import make_original_model  # noqa: E402

from pushcut.algos import agg_loss, grpo_advantages, vanilla_policy_loss  # noqa: E402
from pushcut.contracts import ObsBatch  # noqa: E402
from pushcut.errors import CheckpointError, ConfigError  # noqa: E402
from pushcut.plugins.policies.tinyvla import TinyVLAConfig, TinyVLAPolicy, build_tinyvla  # noqa: E402
from pushcut.plugins.policies.tinyvla.original_policy import OriginalTinyVLAPolicy, _owner  # noqa: E402
from pushcut.testing import PolicyContract  # noqa: E402

INSTRUCTIONS = {"pick": "pick up the red cube", "push": "push the blue block", "other": "open the drawer"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("original")
    make_original_model(directory)
    return directory


def load(model_dir: Path, **options) -> OriginalTinyVLAPolicy:
    options.setdefault("runs", (str(model_dir / "pick"), str(model_dir / "push")))
    policy = build_tinyvla(TinyVLAConfig(**options))
    assert isinstance(policy, OriginalTinyVLAPolicy)
    return policy


def make_obs(task_ids=("pick", "push", "other", "push"), seed: int = 0) -> ObsBatch:
    rng = np.random.default_rng(seed)
    b = len(task_ids)
    return ObsBatch(images=rng.integers(0, 256, (b, 20, 24, 3), dtype=np.uint8),
                    wrist_images=rng.integers(0, 256, (b, 20, 24, 3), dtype=np.uint8),
                    instructions=[INSTRUCTIONS[t] for t in task_ids], task_ids=list(task_ids),
                    states=rng.normal(size=(b, 2)).astype(np.float32))


def snapshot(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


class TestOriginalContract(PolicyContract):
    """The contract suite over the original variant (two tasks, the active one trains)."""

    log_densities = True

    @pytest.fixture
    def make_policy(self, model_dir):
        return lambda: load(model_dir)

    @pytest.fixture
    def policy(self, make_policy):
        return make_policy()

    @pytest.fixture
    def obs_batch(self):
        return make_obs()


def test_a_run_directory_or_checkpoint_selects_the_original_variant(model_dir):
    for path in (model_dir / "pick", model_dir / "pick" / "checkpoint-10"):
        policy = build_tinyvla(TinyVLAConfig(checkpoint=str(path)))
        assert isinstance(policy, OriginalTinyVLAPolicy) and policy.tasks == ["pick"]
    c = policy.config
    # every shape from the checkpoint's configs and tensors, none from the (native) defaults
    assert (c.hidden_size, c.layers, c.vision_hidden_size, c.image_size, c.patch_size) == (32, 2, 32, 28, 14)
    assert (c.chunk_size, c.action_dim, c.state_dim, c.use_state, c.head) == (4, 3, 2, True, "unet")
    assert (c.unet_dims, c.unet_kernel, c.timestep_dim, c.inference_steps, c.train_timesteps) == ((16, 32), 3, 16, 10, 100)
    assert (c.adapters.rank, c.adapters.alpha) == (4, 16.0)
    assert not isinstance(build_tinyvla(TinyVLAConfig()), OriginalTinyVLAPolicy)


def test_user_shape_fields_must_agree_with_the_checkpoint(model_dir):
    load(model_dir, hidden_size=32, chunk_size=4)  # agreeing values are fine
    with pytest.raises(ConfigError) as err:
        load(model_dir, chunk_size=8)
    assert "policy.chunk_size=8 disagrees" in str(err.value) and "chunk_size=4" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="adapters rank=16"):
        load(model_dir, adapters={"rank": 16})
    with pytest.raises(ConfigError, match="targets come from"):
        load(model_dir, adapters={"targets": ("dense",)})


def test_rows_route_to_their_task_and_use_its_stats(model_dir):
    policy = load(model_dir)
    mixed = make_obs(("pick", "push", "other"))
    actions = policy.act(mixed, 0.0).actions
    for row, task in enumerate(mixed.task_ids):
        alone = ObsBatch(images=mixed.images[row:row + 1], wrist_images=mixed.wrist_images[row:row + 1],
                         instructions=[mixed.instructions[row]], task_ids=[task], states=mixed.states[row:row + 1])
        np.testing.assert_allclose(policy.act(alone, 0.0).actions, actions[row:row + 1], atol=1e-5, rtol=0)
    # an unknown task is served by the active task (push); the same observation under pick differs
    as_pick = ObsBatch(images=mixed.images[2:], wrist_images=mixed.wrist_images[2:], instructions=mixed.instructions[2:],
                       task_ids=["pick"], states=mixed.states[2:])
    assert np.abs(policy.act(as_pick, 0.0).actions - actions[2:]).max() > 1e-3
    # actions lie in each task's [action_min, action_max]
    for row, task in enumerate(("pick", "push", "push")):
        stats = policy.tasks_state[task].stats
        assert (actions[row] >= stats["action_min"] - 1e-5).all() and (actions[row] <= stats["action_max"] + 1e-5).all()


def test_greedy_x_n_is_the_originals_seeded_draw(model_dir):
    policy = load(model_dir, seed=123)
    torch.manual_seed(123)
    expected = torch.randn((1, 4, 3))
    sample = policy.act(make_obs(("pick", "push")), 0.0)
    torch.testing.assert_close(sample.sample["chain"][:, 0], expected.expand(2, -1, -1), atol=0, rtol=0)


def test_grpo_on_one_task_leaves_every_other_task_bit_identical(model_dir, tmp_path):
    """A GRPO update (pushcut.algos: group advantages, clipped loss) on episodes of both tasks: only push's
    LoRA, projector and head move; pick's files written after it equal the originals."""
    policy = load(model_dir, adapters={"tasks": ("pick", "push"), "active": "push"}, seed=1)
    before = snapshot(policy)
    trainable = policy.trainable_parameters()
    assert trainable and all(_owner(k) == "push" for k, p in policy.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.01)
    obs = make_obs(("push",) * 4 + ("pick",) * 4, seed=3)
    for _ in range(2):
        sample = policy.act(obs, 1.0)
        rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
        groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        advantages = grpo_advantages(rewards, groups)[:, None].expand_as(sample.log_probs)
        scores = policy.log_probs(obs, sample.sample, 1.0)
        out = vanilla_policy_loss(scores.log_probs, sample.log_probs, advantages, sample.mask)
        loss = agg_loss(out.loss_mat, sample.mask, "token-mean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in policy.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(_owner(k) == "push" for k in changed), sorted(k for k in changed if _owner(k) != "push")
    assert any(k.startswith("heads.push.") for k in changed) and any(k.startswith("projectors.push.") for k in changed)
    assert any(".lora_B.push." in k for k in changed)
    written = policy.export(tmp_path / "export")
    assert written["pick"] == tmp_path / "export" / "llava_pythia_lora_pick" / "checkpoint-10"
    original = torch.load(model_dir / "pick" / "checkpoint-10" / "non_lora_trainables.bin", weights_only=True)
    exported = torch.load(written["pick"] / "non_lora_trainables.bin", weights_only=True)
    for key in original:
        assert torch.equal(original[key], exported[key.replace(".base_layer.", ".")]), key


def test_save_load_round_trip_and_the_original_layout(model_dir, tmp_path):
    policy = load(model_dir, seed=2)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05)
    obs = make_obs()
    expected = policy.act(obs, 0.0).actions
    policy.save(tmp_path / "saved")
    for task in ("pick", "push"):
        run = tmp_path / "saved" / f"llava_pythia_lora_{task}"  # a name the original's loader accepts
        assert {p.name for p in (run / "checkpoint-10").iterdir()} >= {
            "adapter_config.json", "adapter_model.bin", "non_lora_trainables.bin", "preprocessor_config.json",
            "tokenizer.json"}
        assert (run / "config.json").is_file() and (run / "dataset_stats.pkl").is_file()
        lora = torch.load(run / "checkpoint-10" / "adapter_model.bin", weights_only=True)
        assert all(k.startswith("base_model.model.gpt_neox.") and k.endswith(("lora_A.weight", "lora_B.weight"))
                   for k in lora)
    again = build_tinyvla(TinyVLAConfig(checkpoint=str(tmp_path / "saved"), seed=2))
    assert again.tasks == ["pick", "push"]
    np.testing.assert_array_equal(again.act(obs, 0.0).actions, expected)
    fresh = load(model_dir, seed=2)
    fresh.load(tmp_path / "saved")  # in place, as train.init_from and resume do
    np.testing.assert_array_equal(fresh.act(obs, 0.0).actions, expected)


def test_bfloat16_runs_load_as_saved(model_dir, tmp_path):
    """The original trains in bfloat16, so non_lora_trainables.bin and the adapter hold bfloat16 tensors:
    they load exactly (as float32 copies of the bfloat16 values)."""
    target = _copy(model_dir, tmp_path)
    for task in ("pick", "push"):
        path = target / task / "checkpoint-10" / "non_lora_trainables.bin"
        torch.save({k: v.to(torch.bfloat16) for k, v in torch.load(path, weights_only=True).items()}, path)
    policy = load(target)
    saved = torch.load(target / "push" / "checkpoint-10" / "non_lora_trainables.bin", weights_only=True)
    for key, value in policy.heads["push"].state_dict().items():
        assert torch.equal(value, saved[f"base_model.model.embed_out.{key}"].float()), key
    assert np.isfinite(policy.act(make_obs(), 0.0).actions).all()


def test_a_fresh_task_starts_from_the_base_with_a_copied_head(model_dir):
    policy = load(model_dir, adapters={"tasks": ("pick", "push", "stack")})
    assert policy.tasks == ["pick", "push", "stack"] and policy.active == "stack"
    lora_b = [p for k, p in policy.named_parameters() if ".lora_B.stack." in k]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    for key, value in policy.heads["pick"].state_dict().items():
        assert torch.equal(value, policy.heads["stack"].state_dict()[key])
    assert {_owner(k) for k, p in policy.named_parameters() if p.requires_grad} == {"stack"}


def test_sft_loss_trains_the_active_task(model_dir):
    policy = load(model_dir)
    obs = make_obs(("push", "push"))
    loss = policy.sft_loss(obs, np.zeros((2, 4, 3), dtype=np.float32))
    loss.backward()
    grads = {k for k, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(_owner(k) == "push" for k in grads)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pushcut.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_predict_and_export(model_dir, tmp_path):
    from PIL import Image

    image, wrist = tmp_path / "image.png", tmp_path / "wrist.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(wrist)
    proc = _cli("predict", "--policy", "tinyvla", "--checkpoint", str(model_dir / "push"), "--image", str(image),
                "--wrist-image", str(wrist), "--instruction", "push the blue block", "--state", "0.1,-0.2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["chunk_size"], result["action_dim"]) == (4, 3)
    proc = _cli("tinyvla", "export", str(model_dir / "push"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(written["model_path"]["push"], "adapter_model.bin").is_file()
    proc = _cli("tinyvla", "export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out2"))
    assert proc.returncode == 2


# ------------------------------------------------------------------ bad input: one line each


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    for task in ("pick", "push"):  # point the runs at the copy's base
        path = target / task / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "_name_or_path": str(target / "base")}))
    return target


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _one_line_error(model_dir: Path, exc_type, *words: str, **options) -> None:
    with pytest.raises(exc_type) as err:
        load(model_dir, **options)
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def test_missing_base(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    shutil.rmtree(target / "base")
    _one_line_error(target, CheckpointError, "base LLaVA-Pythia model", "policy.model_base")


def test_base_found_by_policy_model_base(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    (target / "base").rename(target / "vlm")
    load(target, model_base=str(target / "vlm"))


def test_other_head_type(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    _edit_json(target / "push" / "config.json", action_head_type="act")
    _one_line_error(target, CheckpointError, "action_head_type 'act'", "droid_diffusion")


def test_lora_ranks_differ_between_runs(model_dir, tmp_path):
    other = tmp_path / "other"
    make_original_model(other, tasks=("push",), lora_r=8)
    _one_line_error(model_dir, CheckpointError, "differ in r", runs=(str(model_dir / "pick"), str(other / "push")))


def test_runs_of_other_action_spaces(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    _edit_json(target / "push" / "config.json", chunk_size=8, transformers_version="4.38.0")
    _one_line_error(target, CheckpointError, "differ in chunk_size (4 vs 8)")


def test_lora_targets_differ_from_the_weights(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    path = target / "push" / "checkpoint-10" / "adapter_config.json"
    targets = json.loads(path.read_text())["target_modules"]
    _edit_json(path, target_modules=targets[1:])
    _one_line_error(target, CheckpointError, "target_modules", targets[0])


def test_lora_rank_differs_from_the_weights(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    _edit_json(target / "pick" / "checkpoint-10" / "adapter_config.json", r=6)
    _one_line_error(target, CheckpointError, "rank 4", "r=6")


def test_a_run_that_changed_the_shared_base(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    path = target / "push" / "checkpoint-10" / "non_lora_trainables.bin"
    tensors = torch.load(path, weights_only=True)
    key = "base_model.model.gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    tensors[key] = tensors[key] + 0.01
    torch.save(tensors, path)
    _one_line_error(target, CheckpointError, "changed the base weight", "gpt_neox.layers.1.mlp.dense_h_to_4h.weight")


def test_missing_dataset_stats(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    (target / "push" / "dataset_stats.pkl").unlink()
    _one_line_error(target, CheckpointError, "dataset_stats.pkl")


def test_stats_of_the_wrong_size(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    path = target / "push" / "dataset_stats.pkl"
    stats = pickle.loads(path.read_bytes())
    stats["action_min"] = stats["action_min"][:2]
    path.write_bytes(pickle.dumps(stats))
    _one_line_error(target, CheckpointError, "action_min has 2 values")


def test_tokenizer_larger_than_the_embedding(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    for task in ("pick", "push"):
        _edit_json(target / task / "config.json", vocab_size=100)
    _one_line_error(target, CheckpointError, "tokenizer", "100 rows")


def test_bad_input_exits_2_with_one_line(model_dir, tmp_path):
    target = _copy(model_dir, tmp_path)
    (target / "push" / "dataset_stats.pkl").unlink()
    proc = _cli("tinyvla", "export", str(target / "push"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dataset_stats.pkl" in lines[0], proc.stderr


def test_native_checkpoints_still_load_natively(tmp_path):
    native = TinyVLAPolicy(TinyVLAConfig())
    native.save(tmp_path / "native")
    assert isinstance(build_tinyvla(TinyVLAConfig(checkpoint=str(tmp_path / "native"))), TinyVLAPolicy)


@pytest.mark.slow
def test_grpo_with_the_trainer_on_the_tabletop(tmp_path):
    """The real trainer: two original runs (tabletop tasks) loaded through policy.runs, GRPO on
    press_button with the embedded tabletop's two cameras; close_drawer's parameters stay bit-identical
    and the checkpoint is the original layout."""
    pytest.importorskip("mujoco", reason="the tabletop env needs mujoco")
    from pushcut.configio import load_config
    from pushcut.trainer import Trainer

    shapes = {**__import__("tinyvla_original_tiny").SHAPES, "action_dim": 4, "state_dim": 4}
    runs = make_original_model(tmp_path / "model", tasks=("close_drawer", "press_button"), s=shapes)
    overrides = [
        "env.type=tabletop", "env.tasks=[close_drawer,press_button]", "env.image_size=32", "env.wrist_camera=true",
        "env.max_steps=8", "policy.type=tinyvla", f"policy.runs=[{runs['close_drawer']},{runs['press_button']}]",
        "policy.adapters.tasks=[close_drawer,press_button]", "policy.adapters.active=press_button",
        "algo.temperature=1.0", "train.iterations=1", "train.batch_size=2", "train.lr=0.01", "train.eval_every=0",
        "train.eval_at_start=false", "eval.max_init_states=1", "eval.videos_per_task=0", "rollout.transport=inline",
        "rollout.num_workers=1", "rollout.envs_per_worker=8", "train.max_sample_rounds=2",
        f"run_dir={tmp_path / 'rl'}"]
    cfg = load_config(None, overrides)
    Trainer(cfg).run()
    before = load(tmp_path, runs=(str(runs["close_drawer"]), str(runs["press_button"])),
                  adapters={"tasks": ("close_drawer", "press_button")})
    saved = sorted((tmp_path / "rl" / "checkpoints").glob("step_*"))[-1] / "policy"
    assert (saved / "llava_pythia_lora_close_drawer" / "checkpoint-10" / "non_lora_trainables.bin").is_file()
    after = build_tinyvla(TinyVLAConfig(checkpoint=str(saved)))
    theirs = dict(after.named_parameters())
    changed = {k for k, v in before.named_parameters() if not torch.equal(v, theirs[k])}
    assert all(_owner(k) == "press_button" for k in changed), sorted(changed)
    proc = _cli("eval", str(tmp_path / "rl"))  # greedy eval of the run, from its directory alone
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "rl" / "eval.json").is_file()
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    if not any(m.get("actor/optimizer_steps", 0) > 0 for m in metrics):
        pytest.skip("no group had mixed outcomes in 1 iteration: nothing was trained")
    assert changed
