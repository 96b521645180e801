"""A checkpoint bundle's trained policy as a RolloutPolicy: what eval, plan, tune and the rollout
benchmarks run in the simulator.

    window (obs dicts) -> features + proprio state (DiffusionPolicy.batch_from_history; RDT: SigLIP tokens)
                       -> normalised by the bundle's ObsNormalizer inside the network call
                       -> DPM-Solver++ sample, model space (H, W), each episode's noise from its own generator
                       -> ActionChunk: decoded by the bundle's codec at the pose each row is executed at
"""
from __future__ import annotations

from pathlib import Path

import torch

from .bundle import load_policy
from .policy import DiffusionPolicy
from .rollout_policy import ActionChunk, RolloutPolicy, Window


class BundlePolicy(RolloutPolicy):
    """A DiffusionPolicy behind the rollout contract. Batched: one sampling call for many episodes."""

    batched = True

    def __init__(self, model: DiffusionPolicy):
        self.model = model
        self.spec = model.spec
        self.codec = model.codec
        self.obs_history = model.obs_history  # the low-dim history, or RDT's image history if longer

    def act(self, window: Window, generator: torch.Generator | None = None) -> ActionChunk:
        """Noise from `generator`, else from the model's own generator (seeded once per policy)."""
        return ActionChunk(self.model.act(window, generator), self.codec)

    def act_batch(self, windows: list[Window], generators: list[torch.Generator]) -> list[ActionChunk]:
        return [ActionChunk(rows, self.codec) for rows in self.model.act_batch(windows, generators)]


def load_rollout_policy(bundle_dir: str | Path, device: str | torch.device = "cpu") -> BundlePolicy:
    """The bundle's policy, ready to roll out (picklable as a factory: functools.partial(load_rollout_policy, path))."""
    return BundlePolicy(load_policy(bundle_dir, device=device))
