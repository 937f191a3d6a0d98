"""Checks that need RoboTwin's objects themselves, run by the RoboTwin venv's python (the tests
in test_robotwin_venv.py start it and read the JSON line it prints):

    python robotwin_venv_checks.py early_stop|same_as_robotwin ASSETS_DIR
"""

import json
import sys

import numpy as np
import sapien

from pushcut.plugins.envs.robotwin.config import RobotwinConfig
from pushcut.plugins.envs.robotwin.env import RobotwinEnv


def config(assets: str) -> RobotwinConfig:
    return RobotwinConfig(tasks=("stack_blocks_two",), assets_dir=assets, embodiment=("piper", "piper", 0.6),
                          allowed_collisions=(("link7", "link8"),), camera_width=64, camera_height=48,
                          shadows=False, num_init_states=4, num_eval_init_states=1, max_steps=100)


def early_stop(env: RobotwinEnv) -> dict:
    """Put the green block on the red one: the next chunk must stop after its first action."""
    env.reset("stack_blocks_two", 0)
    task = env._task_obj
    red = task.block1.get_pose()
    task.block2.actor.set_pose(sapien.Pose(red.p + np.array([0, 0, 0.05]), red.q))
    hold = np.tile(env._observe()["state"], (25, 1))
    result = env.step(hold, record=True)
    return {"steps": result.steps, "success": result.success, "done": result.done, "frames": len(result.frames),
            "episode_steps": result.info["episode_steps"]}


def same_as_robotwin(env: RobotwinEnv) -> dict:
    """One chunk through pushcut's executor and through RoboTwin's own gen_sparse_reward_data
    (RLinf's chunk-as-one-path take_action), from the same seed: the same physics."""
    rng = np.random.default_rng(3)
    start = env.reset("stack_blocks_two", 1)["state"]
    chunk = start + np.cumsum(rng.normal(0, 0.01, (25, 14)), axis=0)
    chunk[:, [6, 13]] = np.linspace(1.0, 0.3, 25)[:, None]
    ours = env.step(chunk)
    ours_q = env._task_obj.robot.left_entity.get_qpos().tolist()
    ours_block = env._task_obj.block1.get_pose().p.tolist()
    env.reset("stack_blocks_two", 1)
    env._task_obj.gen_sparse_reward_data(chunk)
    theirs_q = env._task_obj.robot.left_entity.get_qpos().tolist()
    theirs_block = env._task_obj.block1.get_pose().p.tolist()
    return {"steps": ours.steps, "ours_q": ours_q, "theirs_q": theirs_q, "ours_block": ours_block,
            "theirs_block": theirs_block, "state": ours.observation["state"].tolist(),
            "robotwin_state": env._observe()["state"].tolist()}


if __name__ == "__main__":
    name, assets = sys.argv[1], sys.argv[2]
    env = RobotwinEnv(config(assets))
    try:
        print("RESULT " + json.dumps({"early_stop": early_stop, "same_as_robotwin": same_as_robotwin}[name](env)))
    finally:
        env.close()
