"""Demo files in the robomimic/LIBERO layout and behaviour cloning on them."""

import h5py
import numpy as np
import pytest

from pushcut.cli import main
from pushcut.configio import load_config
from pushcut.demos import DemoKeys, chunk_targets, read_demos, record_demos, write_demos
from pushcut.errors import ConfigError, DataError
from pushcut.sft import train_sft
from pushcut.testing import registered_plugin
from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv, ToyPlugin


@pytest.fixture
def manager():
    with registered_plugin(ToyPlugin(), "toys") as m:
        yield m


def test_record_write_read_round_trip(tmp_path):
    env = ReachEnv(ReachConfig())
    demos, attempts = record_demos(env, per_task=2)
    assert len(demos) == 4 and attempts == {"reach_0": 2, "reach_1": 2}
    path = write_demos(tmp_path / "d.hdf5", demos, "reach")
    with h5py.File(path) as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1", "demo_2", "demo_3"]
        g = f["data/demo_0"]
        assert g["actions"].shape == (len(demos[0]), 1) and g["obs/image"].shape[1:] == (8, 8, 3)
        assert g.attrs["instruction"] == demos[0].instruction and f["data"].attrs["total"] == sum(map(len, demos))
    back = read_demos(path)
    for a, b in zip(demos, back):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.states, b.states)
        assert (a.task_id, a.instruction, a.init_state) == (b.task_id, b.instruction, b.init_state)


def test_dart_noise_moves_the_path_but_keeps_the_experts_labels():
    cfg = ReachConfig(max_steps=12)
    env = ReachEnv(cfg)
    clean, _ = record_demos(env, per_task=3)
    noisy, _ = record_demos(env, per_task=3, noise=0.5)
    again, _ = record_demos(env, per_task=3, noise=0.5)
    for demos, executes_labels in ((clean, True), (noisy, False)):
        for d in demos:
            pos, target = d.states[:, 0], d.states[:, 1]
            # every label is the expert's action for the state it was recorded in
            np.testing.assert_allclose(d.actions[:, 0], np.clip((target - pos) / cfg.step_size, -1, 1), atol=1e-6)
        moved = np.concatenate([np.diff(d.states[:, 0]) / cfg.step_size for d in demos])
        labels = np.concatenate([d.actions[:-1, 0] for d in demos])
        assert np.allclose(moved, labels, atol=1e-5) == executes_labels
    assert sum(len(d) for d in noisy) > sum(len(d) for d in clean)  # noise costs steps to recover from
    for a, b in zip(noisy, again):  # seeded by task and init state
        np.testing.assert_array_equal(a.states, b.states)


def test_demos_cli_rejects_negative_noise(manager, tmp_path, capsys):
    assert main(["demos", "reach", "--noise", "-1", "--out", str(tmp_path / "d.hdf5")]) != 0
    assert "--noise must be a finite number >= 0 (env action units), got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "d.hdf5").exists()


def test_reads_libero_style_keys_and_problem_info(tmp_path):
    path = tmp_path / "libero.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = '{"language_instruction": "put the bowl on the plate"}'
        g = data.create_group("demo_0")
        g.create_dataset("actions", data=np.zeros((5, 7), np.float32))
        img = np.zeros((5, 4, 4, 3), np.uint8)
        img[:, 0, 0] = 255  # top-left pixel: lands bottom-right after the 180° flip
        g.create_dataset("obs/agentview_rgb", data=img)
        g.create_dataset("obs/ee_states", data=np.ones((5, 6), np.float32))
        g.create_dataset("obs/gripper_states", data=np.ones((5, 2), np.float32))
    keys = DemoKeys(image="agentview_rgb", state=("ee_states", "gripper_states"), flip_images=True)
    (demo,) = read_demos(path, keys)
    assert demo.instruction == "put the bowl on the plate" and demo.states.shape == (5, 8)
    assert demo.images[0, 3, 3, 0] == 255 and demo.images[0, 0, 0, 0] == 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda f: f.create_group("stuff"), r"expected a top-level 'data' group .*found \['stuff'\]"),
        (lambda f: f.create_group("data/other"), r"no data/demo_N groups"),
        (lambda f: f.create_dataset("data/demo_0/obs/image", data=np.zeros((2, 4, 4, 3), np.uint8)),
         r"expected 'actions' and 'obs', found \['obs'\]"),
        (lambda f: (f.create_dataset("data/demo_0/actions", data=np.zeros((2, 1))),
                    f.create_dataset("data/demo_0/obs/rgb", data=np.zeros((2, 4, 4, 3), np.uint8))),
         r"obs lacks \['image', 'state'\]; found obs keys \['rgb'\]"),
    ],
)
def test_wrong_layout_names_expected_and_found(tmp_path, build, message):
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        build(f)
    with pytest.raises(DataError, match=message):
        read_demos(path)


def test_not_hdf5_and_missing_file(tmp_path):
    (tmp_path / "x.hdf5").write_text("hello")
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_demos(tmp_path / "x.hdf5")
    with pytest.raises(DataError, match="does not exist"):
        read_demos(tmp_path / "none.hdf5")


def test_chunk_targets_pad_with_last_action():
    actions = np.arange(4, dtype=np.float32)[:, None]
    out = chunk_targets(actions, 3)
    assert out.shape == (4, 3, 1)
    assert out[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]]


def test_sft_clones_the_expert(manager, tmp_path):
    env = ReachEnv(ReachConfig())
    demos, _ = record_demos(env, per_task=8)
    cfg = load_config(None, ["env.type=reach", "policy.type=bins", "sft.steps=300", "sft.lr=0.01"], manager)
    policy = BinPolicy(BinPolicyConfig())
    losses = train_sft(policy, demos, cfg)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    # greedy actions now match the expert's on the demo states
    from pushcut.sft import DemoDataset
    import torch

    data = DemoDataset(demos, 1)
    obs, targets = data.batch(np.arange(len(data)))
    with torch.no_grad():
        acts = policy.act(obs, 0.0).actions
    assert np.mean(np.abs(acts - targets) <= 0.125 + 1e-6) > 0.9


def test_sft_lr_schedule_warms_up_then_decays_or_holds():
    from pushcut.sft import lr_factor

    cosine = [lr_factor(100, "cosine", i) for i in range(100)]
    assert cosine[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:]))
    assert cosine[-1] == pytest.approx(0.0, abs=1e-12) and cosine[52] == pytest.approx(0.5, abs=0.02)
    assert [lr_factor(100, "constant", i) for i in (4, 50, 99)] == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="lr_schedule must be one of cosine, constant"):
        load_config(None, ["sft.lr_schedule=linear"])


def test_cli_demos_then_sft(manager, tmp_path, capsys):
    out = tmp_path / "demos.hdf5"
    assert main(["demos", "reach", "--per-task", "2", "--out", str(out), "env.max_steps=8"]) == 0
    assert out.is_file()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"env: {{type: reach}}\npolicy: {{type: bins}}\nsft: {{demos: [{out}], steps: 20}}\n"
                   f"run_dir: {tmp_path / 'run'}\n")
    assert main(["sft", str(cfg)]) == 0
    assert (tmp_path / "run" / "sft" / "policy" / "bin_policy.pt").is_file()
    assert main(["sft", str(cfg), "sft.demos=[]"]) == 2
    assert "sft.demos is empty" in capsys.readouterr().err


def test_demo_action_dim_mismatch(manager, tmp_path):
    demos, _ = record_demos(ReachEnv(ReachConfig()), per_task=1)
    cfg = load_config(None, ["env.type=reach", "policy.type=bins", "sft.steps=1"], manager)
    with pytest.raises(DataError, match=r"demos have action_dim=1 but the policy expects action_dim=2"):
        train_sft(BinPolicy(BinPolicyConfig(action_dim=2)), demos, cfg)


def test_random_shift_moves_each_image_by_its_own_offset_and_repeats_the_edges():
    from pushcut.sft import random_shift

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, 12, 12, 3), dtype=np.uint8)
    shifted = random_shift(images, 2, rng)
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    offsets = []
    for i in range(len(images)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[i, dy:dy + 12, dx:dx + 12], shifted[i])]
        assert len(found) == 1, f"image {i} is not a window of its edge-padded original"
        offsets.append(found[0])
    # Every offset in [-2, 2]² is drawn, and images of one batch get different ones.
    assert len(set(offsets)) == 25


def test_sft_image_shift_augments_only_when_asked():
    from pushcut.sft import DemoDataset

    demos, _ = record_demos(ReachEnv(ReachConfig()), per_task=2)
    data = DemoDataset(demos, 1)
    idx = np.arange(len(data))
    plain, _ = data.batch(idx, 0, np.random.default_rng(0))
    shifted, targets = data.batch(idx, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(plain.images, data.images)
    assert not np.array_equal(shifted.images, data.images)
    np.testing.assert_array_equal(targets, data.targets)  # labels are never augmented
    with pytest.raises(ConfigError, match="sft.image_shift must be >= 0 pixels, got -1"):
        load_config(None, ["sft.image_shift=-1"])
