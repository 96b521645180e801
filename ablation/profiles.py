"""Profiles: how a machine runs a plan (its spec sets, parallel jobs, rollout workers and batch, measured costs).

A profile is `experiments/profiles/<name>.yaml`; `auto` picks `gpu` where CUDA is present, else `cpu`.
What a profile sets is how runs execute, plus the `set:` overrides every spec of a plan gets on it.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import yaml

from .plan_eta import StageCosts
from .spec import EXPERIMENTS_DIR, SpecError

log = logging.getLogger(__name__)
PROFILES_DIR = EXPERIMENTS_DIR / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    sets: tuple[str, ...]
    jobs: int
    rollout_workers: int | None
    # Episodes each rollout process steps in lockstep, one policy call for all of them: an execution
    # detail like the worker count (each episode keeps its own noise; the actions agree with one at a
    # time to float rounding), so the profile's, not the spec's.
    rollout_batch: int = 1
    # Measured worker-seconds per demo, Gate A codec, training run and episode: --dry-run's estimate.
    costs: StageCosts | None = None


# Device nodes a GPU that torch.cuda can use shows up as: NVIDIA's, WSL2's GPU paravirtualisation and
# ROCm's (torch.cuda on AMD). Where none exists torch.cuda.is_available() is False.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def detect_device() -> str:
    """`cuda` where torch sees a GPU, else `cpu` (also when torch is missing). On a machine with no GPU
    device node the answer is `cpu` without importing torch: the plan driver and the tuner tag runs with
    the device before anything else needs torch (~2 CPU-s of imports each on a busy core)."""
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in GPU_DEVICE_NODES):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def load_profile(name: str) -> Profile:
    """`auto` picks gpu when CUDA is present, else cpu, and says so."""
    if name == "auto":
        name = "gpu" if detect_device() == "cuda" else "cpu"
        log.info(f"[plan] profile auto -> {name} (device: {detect_device()})")
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise SpecError(f"profile '{name}' not found; known: auto, {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    workers = raw.get("rollout_workers")
    if workers == "auto":  # the CPUs this process may use (a container's limit, not the host's count)
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    batch = raw.get("rollout_batch", 1)
    if not isinstance(batch, int) or batch < 1:
        raise SpecError(f"{path}: rollout_batch: {batch!r} is not a whole number >= 1; "
                        "write e.g. `rollout_batch: 4` (1: one episode at a time)")
    try:
        costs = StageCosts.from_mapping(raw.get("costs"))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{path}: {e} (worker-seconds, e.g. `costs: {{train_s: 60, episode_s: 2.5}}`)") from None
    return Profile(name, tuple(raw.get("set", [])), int(raw.get("jobs", 1)), workers, batch, costs)
