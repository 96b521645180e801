"""Profiles: how a machine runs a plan (its spec sets, parallel jobs, rollout workers and batch, measured costs).

A profile is `experiments/profiles/<name>.yaml`; `auto` picks `gpu` where CUDA is present, else `cpu`.
What a profile sets is how runs execute, plus the `set:` overrides every spec of a plan gets on it.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .host import CPU_CLASSES, CpuClass, cpu_class, usable_cpus
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
    # The CPU class those costs were measured on (ablation.host), where the profile names one; when it
    # is not this machine's class, costs_note says so (the figures may be off several-fold).
    costs_cpu_class: CpuClass | None = None
    costs_note: str = ""


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
        workers = usable_cpus()
    batch = raw.get("rollout_batch", 1)
    if not isinstance(batch, int) or batch < 1:
        raise SpecError(f"{path}: rollout_batch: {batch!r} is not a whole number >= 1; "
                        "write e.g. `rollout_batch: 4` (1: one episode at a time)")
    costs, measured_on, note = profile_costs(path, raw.get("costs"), cpu_class())
    return Profile(name, tuple(raw.get("set", [])), int(raw.get("jobs", 1)), workers, batch, costs, measured_on, note)


def profile_costs(path: Path, raw: object, here: str) -> tuple[StageCosts | None, str | None, str]:
    """A profile's `costs:` for a machine of CPU class `here` -> (costs, the class they were measured on,
    a note when that is not `here`). `costs:` is either one mapping of worker-seconds (any CPU) or one
    per CPU class (`costs: {avx512: {...}, avx2: {...}}`): a time measured on one class is not a time on
    another (ablation.host), so this machine's class is taken where the profile has it, else the first
    one listed, with the note."""
    if not raw:
        return None, None, ""
    example = "`costs: {train_s: 60, episode_s: 2.5}` or one such mapping per CPU class, `costs: {avx2: {...}}`"
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: costs: {raw!r} is not a mapping; write {example}")
    by_class = any(k in CPU_CLASSES for k in raw)
    if by_class and (bad := sorted(k for k in raw if k not in CPU_CLASSES)):
        raise SpecError(f"{path}: costs: {', '.join(map(str, bad))} not a CPU class; classes: "
                        f"{', '.join(CPU_CLASSES)}; write {example}")
    measured_on = (here if here in raw else next(iter(raw))) if by_class else None
    chosen, where = (raw[measured_on], f"costs.{measured_on}") if by_class else (raw, "costs")
    if not isinstance(chosen, dict):
        raise SpecError(f"{path}: {where}: {chosen!r} is not a mapping; write {example}")
    try:
        costs = StageCosts.from_mapping(chosen)
    except (TypeError, ValueError) as e:
        what = str(e).removeprefix("costs: ")
        raise SpecError(f"{path}: {where}: {what} (worker-seconds; write {example})") from None
    note = "" if measured_on in (None, here) else (
        f"measured on a CPU of class {measured_on}, this one is {here}: the figures may be off several-fold "
        f"(avx2 against avx512: 5.3x the training, 3x the episodes; ablation/host.py)")
    return costs, measured_on, note
