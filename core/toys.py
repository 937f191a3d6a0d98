"""A tiny env and policy for exercising the engine itself (tests, benchmarks).

``ReachEnv`` is a 1-D closed-loop reaching task: a point starts at a position
set by the initial state and must end within ``tolerance`` of the task's
target; each action moves it by ``step_size × a``. ``BinPolicy`` is a small MLP
over the proprio state with OpenVLA-style discrete action bins, so it has the
same (B, T) log-prob structure as a token VLA. Neither is registered as a
plugin by default; tests register them in-process. (The tests' own
``faulty_reach`` module adds a reach env that crashes or hangs on demand.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pushcut.contracts import (
    ActionSample,
    ActionSpec,
    Env,
    ObsBatch,
    Observation,
    Policy,
    Scores,
    StepResult,
    TaskSpec,
    split_init_states,
)
from pushcut.errors import CheckpointError, EnvError
from pushcut.hookspecs import hookimpl


@dataclass
class ReachConfig:
    """Options of the toy reaching env."""

    targets: tuple[float, ...] = (-0.5, 0.5)
    """One task per target position."""
    num_init_states: int = 40
    """Stored initial states per task."""
    num_eval: int = 10
    """Held out for evaluation."""
    max_steps: int = 6
    """Env steps per episode."""
    step_size: float = 0.25
    """Displacement per unit action."""
    tolerance: float = 0.13
    """Success radius around the target."""
    step_delay_s: float = 0.0
    """Artificial cost per env step (benchmarks)."""
    image_size: int = 8
    """Side of the (tiny) rendered image."""


class ReachEnv(Env):
    """1-D reaching: state = (position, target); success when |position − target| < tolerance."""

    def __init__(self, config: ReachConfig) -> None:
        self.config = config
        train, evals = split_init_states(config.num_init_states, config.num_eval)
        self._tasks = [
            TaskSpec(f"reach_{i}", f"move the dot to {t:+.2f}", config.num_init_states, train, evals, config.max_steps)
            for i, t in enumerate(config.targets)
        ]
        self.pos = 0.0
        self.target = 0.0
        self.init_state = 0

    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    @property
    def action_spec(self) -> ActionSpec:
        return ActionSpec(1, (-1.0,), (1.0,))

    def reset(self, task_id: str, init_state: int) -> Observation:
        index = {t.task_id: i for i, t in enumerate(self._tasks)}
        if task_id not in index:
            raise EnvError(f"unknown task {task_id!r}; valid: {sorted(index)}")
        rng = np.random.default_rng([index[task_id], init_state])
        self.target = self.config.targets[index[task_id]]
        self.pos = float(rng.uniform(-1.0, 1.0))
        self.init_state = init_state
        return self._obs()

    def _obs(self) -> Observation:
        return {"image": self.render(), "state": np.array([self.pos, self.target], dtype=np.float32)}

    def _success(self) -> bool:
        return abs(self.pos - self.target) < self.config.tolerance

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != 1:
            raise EnvError(f"ReachEnv expects actions of shape (chunk, 1) (action_dim=1), got {actions.shape}")
        frames, steps = [], 0
        for a in actions:
            self.pos = float(np.clip(self.pos + self.config.step_size * float(np.clip(a[0], -1, 1)), -1.5, 1.5))
            steps += 1
            if self.config.step_delay_s:
                time.sleep(self.config.step_delay_s)
            if record:
                frames.append(self.render())
            if self._success():
                break
        ok = self._success()
        return StepResult(self._obs(), steps, ok, ok, {"success": ok, "pos": self.pos}, frames)

    def expert_action(self) -> np.ndarray:
        """Move straight at the target (as far as one step allows)."""
        return np.array([np.clip((self.target - self.pos) / self.config.step_size, -1, 1)], np.float32)

    def render(self) -> np.ndarray:
        n = self.config.image_size
        img = np.zeros((n, n, 3), np.uint8)
        col = int(np.clip((self.pos + 1.5) / 3.0 * (n - 1), 0, n - 1))
        tcol = int(np.clip((self.target + 1.5) / 3.0 * (n - 1), 0, n - 1))
        img[:, tcol, 1] = 255
        img[:, col, 0] = 255
        return img


@dataclass
class BinPolicyConfig:
    """Options of the toy discrete-bin policy."""

    state_dim: int = 2
    """Proprio-state size the MLP reads."""
    action_dim: int = 1
    """Action dimensions."""
    chunk_size: int = 1
    """Actions per chunk."""
    n_bins: int = 9
    """Uniform bins over [-1, 1] per action element."""
    hidden: int = 32
    """MLP width."""
    seed: int = 0
    """Weight-init seed."""
    cost_s: float = 0.0
    """Artificial inference time per observation in act() (benchmarks)."""
    zero_cost: bool = False
    """Skip the network in act(): uniform random bins (benchmarks of framework overhead)."""


class BinPolicy(Policy):
    """MLP on ``ObsBatch.states`` → logits over ``n_bins`` for each of chunk × action_dim elements."""

    def __init__(self, config: BinPolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.chunk_size, self.action_dim = config.chunk_size, config.action_dim
        self.T = config.chunk_size * config.action_dim
        g = torch.Generator().manual_seed(config.seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config.state_dim, config.hidden), torch.nn.Tanh(),
            torch.nn.Linear(config.hidden, self.T * config.n_bins),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.register_buffer("centers", torch.linspace(-1, 1, config.n_bins))

    def _logits(self, obs: ObsBatch) -> torch.Tensor:
        states = torch.as_tensor(obs.states, dtype=torch.float32)
        return self.net(states).view(len(obs), self.T, self.config.n_bins)

    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        b = len(obs)
        if self.config.cost_s:
            time.sleep(self.config.cost_s * b)
        if self.config.zero_cost:
            bins = torch.randint(0, self.config.n_bins, (b, self.T))
            lp = torch.full((b, self.T), -float(np.log(self.config.n_bins)))
        else:
            logits = self._logits(obs)
            if temperature == 0:
                bins = logits.argmax(-1)
                lp = torch.zeros(b, self.T)
            else:
                logp = torch.log_softmax(logits / temperature, -1)
                bins = torch.multinomial(logp.exp().view(-1, self.config.n_bins), 1).view(b, self.T)
                lp = logp.gather(-1, bins[..., None])[..., 0]
        actions = self.centers[bins].view(b, self.chunk_size, self.action_dim).numpy().astype(np.float32)
        return ActionSample(actions, {"bins": bins}, lp.detach(), torch.ones(b, self.T, dtype=torch.bool))

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        logp = torch.log_softmax(self._logits(obs) / temperature, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        return Scores(logp.gather(-1, sample["bins"][..., None])[..., 0], entropy)

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        target = torch.as_tensor(np.asarray(expert_actions), dtype=torch.float32).reshape(len(obs), self.T)
        bins = (target[..., None] - self.centers).abs().argmin(-1)
        return torch.nn.functional.cross_entropy(self._logits(obs).reshape(-1, self.config.n_bins), bins.reshape(-1))

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"type": "bin", "config": asdict(self.config), "state": self.state_dict()}, directory / "bin_policy.pt")

    def load(self, directory: Path) -> None:
        path = Path(directory) / "bin_policy.pt"
        if not path.is_file():
            raise CheckpointError(f"no bin_policy.pt in {directory}: expected a BinPolicy checkpoint")
        data = torch.load(path, weights_only=True)
        self.load_state_dict(data["state"])


@dataclass
class GaussianPolicyConfig:
    """Options of the toy Gaussian policy."""

    state_dim: int = 2
    """Proprio-state size the MLP reads."""
    action_dim: int = 1
    """Action dimensions."""
    chunk_size: int = 1
    """Actions per chunk."""
    std: float = 0.05
    """Standard deviation at temperature 1 (temperature scales it); small, so log-densities are positive."""
    hidden: int = 32
    """MLP width."""
    seed: int = 0
    """Weight-init seed."""


class GaussianPolicy(Policy):
    """MLP on ``ObsBatch.states`` → the mean of an independent Gaussian per action element, with
    std ``config.std × temperature``: a continuous head whose (B, T) log-probs are log-*densities*
    (positive when the std is small), the case a diffusion or flow head is in."""

    def __init__(self, config: GaussianPolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.chunk_size, self.action_dim = config.chunk_size, config.action_dim
        self.T = config.chunk_size * config.action_dim
        g = torch.Generator().manual_seed(config.seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config.state_dim, config.hidden), torch.nn.Tanh(), torch.nn.Linear(config.hidden, self.T),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def _mean(self, obs: ObsBatch) -> torch.Tensor:
        return torch.tanh(self.net(torch.as_tensor(obs.states, dtype=torch.float32)))

    def _log_density(self, mean: torch.Tensor, actions: torch.Tensor, temperature: float) -> torch.Tensor:
        std = self.config.std * temperature
        return -0.5 * ((actions - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)

    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        b = len(obs)
        mean = self._mean(obs)
        if temperature == 0:
            actions, lp = mean, torch.zeros(b, self.T)
        else:
            actions = mean + self.config.std * temperature * torch.randn(mean.shape)
            lp = self._log_density(mean, actions, temperature)
        chunk = actions.detach().view(b, self.chunk_size, self.action_dim).numpy().astype(np.float32)
        return ActionSample(chunk, {"actions": actions.detach()}, lp.detach(), torch.ones(b, self.T, dtype=torch.bool))

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        lp = self._log_density(self._mean(obs), sample["actions"], temperature)
        entropy = torch.full_like(lp, 0.5 * math.log(2 * math.pi * math.e) + math.log(self.config.std * temperature))
        return Scores(lp, entropy)

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        target = torch.as_tensor(np.asarray(expert_actions), dtype=torch.float32).reshape(len(obs), self.T)
        return torch.nn.functional.mse_loss(self._mean(obs), target)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"type": "gaussian", "config": asdict(self.config), "state": self.state_dict()},
                   directory / "gaussian_policy.pt")

    def load(self, directory: Path) -> None:
        path = Path(directory) / "gaussian_policy.pt"
        if not path.is_file():
            raise CheckpointError(f"no gaussian_policy.pt in {directory}: expected a GaussianPolicy checkpoint")
        self.load_state_dict(torch.load(path, weights_only=True)["state"])


class ToyPlugin:
    """Registers ``reach`` (ReachEnv), ``bins`` (BinPolicy) and ``gaussian`` (GaussianPolicy), for in-process use:
    ``with pushcut.testing.registered_plugin(ToyPlugin(), "toys"): ...``."""

    @hookimpl
    def pushcut_register_envs(self, registry) -> None:
        registry.add("reach", ReachConfig, ReachEnv)

    @hookimpl
    def pushcut_register_policies(self, registry) -> None:
        registry.add("bins", BinPolicyConfig, BinPolicy)
        registry.add("gaussian", GaussianPolicyConfig, GaussianPolicy)
