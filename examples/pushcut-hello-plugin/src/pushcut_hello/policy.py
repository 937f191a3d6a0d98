"""``hello_gaussian``: a tiny Gaussian policy on the observation's ``state``.

A linear layer maps the state to the mean of every element of the action
chunk; a learned log-std (one per element) gives the spread. The sampled
elements are the T = chunk_size * action_dim action values themselves, so the
(B, T) log-probs the engine trains on are per-dimension Gaussian log-densities —
the same contract a token VLA fills with per-token log-probs.

Temperature scales the standard deviation (temperature 0 = the mean, greedy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pushcut.contracts import ActionSample, ObsBatch, Policy, Scores
from pushcut.errors import CheckpointError, ConfigError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "hello_gaussian.json"


@dataclass
class HelloGaussianConfig:
    """Options of the ``hello_gaussian`` policy (the keys under ``policy:`` besides ``type``)."""

    state_dim: int = 2
    """Length of the observation's ``state`` vector (hello_line: 2)."""
    action_dim: int = 1
    """Dimensions of one action (hello_line: 1)."""
    chunk_size: int = 4
    """Actions per chunk returned by act()."""
    init_log_std: float = -1.0
    """Initial log standard deviation of every action element."""
    action_low: float = -1.0
    """Sampled actions are clipped to [action_low, action_high] before the env sees them."""
    action_high: float = 1.0
    """Upper clip bound of the actions handed to the env."""
    checkpoint: str | None = None
    """Directory written by save() to load weights from; null = fresh weights."""

    def __post_init__(self) -> None:
        for name in ("state_dim", "action_dim", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"policy.{name} must be >= 1, got {getattr(self, name)}")
        if not self.action_low < self.action_high:
            raise ConfigError(
                f"policy.action_low must be < policy.action_high, got {self.action_low} and {self.action_high}"
            )


class HelloGaussianPolicy(Policy):
    """mean = W·state + b, one learned log-std per action element."""

    def __init__(self, config: HelloGaussianConfig) -> None:
        super().__init__()
        self.config = config
        self.chunk_size = config.chunk_size
        self.action_dim = config.action_dim
        self.num_elements = config.chunk_size * config.action_dim
        self.mean = torch.nn.Linear(config.state_dim, self.num_elements)
        self.log_std = torch.nn.Parameter(torch.full((self.num_elements,), float(config.init_log_std)))
        if config.checkpoint:
            self.load(Path(config.checkpoint))

    # ------------------------------------------------------------------ helpers

    def _states(self, obs: ObsBatch) -> torch.Tensor:
        if obs.states is None:
            raise ValueError("hello_gaussian needs observations with a 'state' vector (ObsBatch.states is None)")
        states = torch.as_tensor(np.asarray(obs.states), dtype=torch.float32, device=self.device)
        if states.ndim != 2 or states.shape[1] != self.config.state_dim:
            raise ValueError(
                f"hello_gaussian expects states of shape (B, state_dim={self.config.state_dim}), got {tuple(states.shape)}"
            )
        return states

    def _dist(self, obs: ObsBatch, temperature: float) -> torch.distributions.Normal:
        # Per element: log N(a; mu, sigma*tau) = -(a - mu)^2 / (2 sigma^2 tau^2) - log(sigma*tau) - log(2 pi)/2
        mean = self.mean(self._states(obs))  # (B, T)
        std = (self.log_std.exp() * temperature).expand_as(mean)
        return torch.distributions.Normal(mean, std)

    def _to_env(self, raw: torch.Tensor) -> np.ndarray:
        actions = raw.clamp(self.config.action_low, self.config.action_high)
        return actions.reshape(-1, self.chunk_size, self.action_dim).float().cpu().numpy()

    # ------------------------------------------------------------------ contract

    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        states = self._states(obs)
        b = len(obs)
        mask = torch.ones(b, self.num_elements, dtype=torch.bool, device=states.device)
        if temperature <= 0:
            raw = self.mean(states).detach()
            log_probs = torch.zeros(b, self.num_elements, device=states.device)
        else:
            dist = self._dist(obs, temperature)
            raw = dist.sample()
            log_probs = dist.log_prob(raw).detach()
        # The env gets clipped actions; the log-probs score the raw (unclipped) sample.
        return ActionSample(actions=self._to_env(raw), sample={"actions_raw": raw}, log_probs=log_probs, mask=mask)

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        if temperature <= 0:
            raise ValueError("hello_gaussian.log_probs needs temperature > 0 (a greedy action has no density)")
        dist = self._dist(obs, temperature)
        raw = sample["actions_raw"].to(dist.mean.device)
        return Scores(log_probs=dist.log_prob(raw), entropy=dist.entropy())

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        expert = torch.as_tensor(np.asarray(expert_actions), dtype=torch.float32, device=self.device)
        if tuple(expert.shape[1:]) != (self.chunk_size, self.action_dim):
            raise ValueError(
                f"hello_gaussian expects expert chunks (B, chunk={self.chunk_size}, action_dim={self.action_dim}), "
                f"got {tuple(expert.shape)}"
            )
        # Negative log-likelihood at temperature 1: fits the mean and the spread.
        return -self._dist(obs, 1.0).log_prob(expert.reshape(len(expert), -1)).mean()

    # ------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        keys = ("state_dim", "action_dim", "chunk_size")
        return {"policy": "hello_gaussian", **{k: asdict(self.config)[k] for k in keys}}

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / META_FILE).write_text(json.dumps(self._meta(), indent=2) + "\n")

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
        if not meta_path.is_file() or not weights_path.is_file():
            found = sorted(p.name for p in directory.iterdir())[:8] if directory.is_dir() else "nothing (no such directory)"
            raise CheckpointError(
                f"{directory} is not a hello_gaussian checkpoint: expected {META_FILE} and {WEIGHTS_FILE}, found {found}"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); re-save the policy") from None
        expected = self._meta()
        if meta != expected:
            raise CheckpointError(
                f"{directory} holds a policy with {meta}, but this policy is {expected}: "
                "set policy.state_dim / action_dim / chunk_size to match the checkpoint"
            )
        self.load_state_dict({k: v.to(self.device) for k, v in load_file(str(weights_path)).items()})

