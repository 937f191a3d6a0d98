"""The reverse curriculum's bookkeeping (pushcut.sampling.ReverseCurriculum): where episodes start
along the demonstrations and how the start moves back, on a toy reach env that can restore the
states its expert demonstrations recorded."""

import numpy as np
import pytest

from pushcut.errors import ConfigError
from pushcut.sampling import DemoStart, ReverseCurriculum
from pushcut.toys import ReachConfig, ReachEnv


class RestoringReach(ReachEnv):
    """ReachEnv plus the capability the curriculum needs: restore a recorded state."""

    def restore(self, task_id: str, state: np.ndarray):
        self.reset(task_id, 0)
        self.pos = float(state[0])
        return self._obs()


def record_demos(env: RestoringReach, task_id: str, n: int) -> list[list[np.ndarray]]:
    """The expert's state at every step of ``n`` demonstrations (from the first n train states)."""
    demos = []
    for init in env.tasks()[0].train_init_states[:n]:
        states = [env.reset(task_id, init)["state"]]
        while not env._success():
            states.append(env.step(env.expert_action()[None, :]).observation["state"])
        demos.append(states)
    return demos


def episode(env: RestoringReach, task_id: str, state: np.ndarray, rng: np.random.Generator, limit: int = 5) -> bool:
    """A weak policy: the expert's action 70 % of the time, a random one otherwise, for ``limit`` steps."""
    env.restore(task_id, state)
    for _ in range(limit):
        action = env.expert_action() if rng.random() < 0.7 else rng.uniform(-1, 1, 1).astype(np.float32)
        if env.step(action[None, :]).success:
            return True
    return False


def test_the_start_moves_back_along_the_demos_as_far_as_the_policy_can_follow():
    env = RestoringReach(ReachConfig(targets=(-0.5, 0.5), num_init_states=20, num_eval=4, step_size=0.1))
    demos = {t.task_id: record_demos(env, t.task_id, 4) for t in env.tasks()}
    curriculum = ReverseCurriculum({t: [len(d) for d in ds] for t, ds in demos.items()}, seed=0, threshold=0.6,
                                   step=0.1, initial=0.9, apply_below=0.3)
    rng = np.random.default_rng(0)
    # from the real initial states (each demo's step 0) the weak policy (5 steps of 0.1) rarely
    # succeeds on reach_0; the other task is declared solved: only reach_0 is enrolled
    real = np.mean([episode(env, "reach_0", d[0], rng) for d in demos["reach_0"] for _ in range(10)])
    assert real < 0.3
    curriculum.enroll({"reach_0": float(real), "reach_1": 0.9})
    assert curriculum.active("reach_0") and not curriculum.active("reach_1")
    history, rates = [curriculum.start_fraction["reach_0"]], []
    for _ in range(40):
        starts = curriculum.draw("reach_0", 16)
        assert all(isinstance(s, DemoStart) and 0 <= s.step < len(demos["reach_0"][s.demo]) for s in starts)
        outcomes = [episode(env, "reach_0", demos["reach_0"][s.demo][s.step], rng) for s in starts]
        rates.append((curriculum.start_fraction["reach_0"], np.mean(outcomes)))
        curriculum.observe("reach_0", outcomes)
        history.append(curriculum.start_fraction["reach_0"])
    assert history == sorted(history, reverse=True)  # it only ever moves back
    assert history[-1] <= 0.9 - 0.3 + 1e-9  # it moved several steps
    assert history[-1] > 0  # and stopped where 5 noisy steps no longer reach the goal
    stuck = [r for f, r in rates if f == history[-1]]
    assert np.mean(stuck) < 0.6, rates
    assert curriculum.metrics() == {"curriculum/reach_0/start_fraction": history[-1],
                                    "curriculum/reach_1/start_fraction": 0.0}
    with pytest.raises(ValueError, match="'reach_1' is not in the curriculum"):
        curriculum.draw("reach_1", 1)


def test_a_start_at_fraction_f_is_that_share_of_the_demo_and_resumes():
    curriculum = ReverseCurriculum({"a": [11, 21]}, seed=3, step=0.5, initial=0.5, threshold=0.5)
    curriculum.enroll({"a": 0.0})
    steps = {(s.demo, s.step) for s in curriculum.draw("a", 50)}
    assert steps == {(0, 5), (1, 10)}
    curriculum.observe("a", [True, False, False, False])  # 0.25 < 0.5: stays
    assert curriculum.start_fraction["a"] == 0.5
    state = curriculum.state_dict()
    nxt = curriculum.draw("a", 10)
    other = ReverseCurriculum({"a": [11, 21]}, seed=9, step=0.5, initial=0.5, threshold=0.5)
    other.load_state_dict(state)
    assert other.draw("a", 10) == nxt
    curriculum.observe("a", [True] * 4)  # running success (0.25 + 1) / 2 >= 0.5: one step back, to the start
    assert curriculum.start_fraction["a"] == 0.0 and not curriculum.active("a")
    curriculum.observe("a", [True])  # finished tasks ignore outcomes
    assert curriculum.start_fraction["a"] == 0.0


@pytest.mark.parametrize("kwargs, fragment", [
    ({"threshold": 1.0}, "curriculum threshold must be in (0, 1), got 1.0"),
    ({"threshold": 0.0}, "curriculum threshold must be in (0, 1), got 0.0"),
    ({"apply_below": 1.5}, "curriculum apply_below must be in (0, 1), got 1.5"),
    ({"step": 0.0}, "curriculum step must be in (0, 1]"),
])
def test_bad_curriculum_settings_are_one_line(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        ReverseCurriculum({"a": [5]}, seed=0, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_task_without_demo_states_is_refused():
    with pytest.raises(ConfigError, match="at least one recorded demo state per task; none for b"):
        ReverseCurriculum({"a": [5], "b": []}, seed=0)
