"""The machine a process runs on, as the harness's time figures depend on it: usable CPUs, the CPU's
model and its vector class.

Worker-seconds are not portable between CPUs. The CPU profile trains with bf16 block matmuls only
where oneDNN has them natively (AVX-512 or newer, `train_state.cpu_bf16_matmul`); on an AVX2-only CPU
bf16 is emulated (a 1024x256x1024 matmul 44x slower than fp32 on an AMD EPYC with AVX2, 2026-12-03),
so training runs fp32 there, and the compiled step gains ~1.1x instead of ~2.2x. `--plan all`'s runs took
5.3x the worker-seconds of training and 3x those of an episode on such a CPU (docs/measurements.md,
stop 41). So every run records the CPU it ran on (`host_tags`), and a profile's measured costs name the
CPU class they hold for (`profiles.load_profile`). Reads /proc/cpuinfo, imports nothing heavy: --dry-run asks it too.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Literal

CPUINFO = Path("/proc/cpuinfo")
CpuClass = Literal["avx512", "avx2", "other"]
CPU_CLASSES: tuple[CpuClass, ...] = ("avx512", "avx2", "other")
# The AVX-512 subsets oneDNN's bf16 path needs (torch's mkldnn_bf16 check asks for the same three).
AVX512_CORE = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


def usable_cpus() -> int:
    """The CPUs this process may use: a container's or taskset's limit, not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _cpuinfo(path: Path = CPUINFO) -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the first CPU in `path`; where the file or the model line is missing,
    the model is platform.processor() (maybe ""), and the flags are empty without the file."""
    model, flags = "", frozenset()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return platform.processor() or "", flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = " ".join(value.split())
        elif key in ("flags", "Features") and not flags:  # x86 / ARM spellings
            flags = frozenset(value.split())
        if model and flags:
            break
    return model or platform.processor() or "", flags


def cpu_model(path: Path = CPUINFO) -> str:
    return _cpuinfo(path)[0] or "unknown CPU"


def cpu_class(path: Path = CPUINFO) -> CpuClass:
    """`avx512` (the AVX-512 core subsets: oneDNN multiplies bf16 there), `avx2`, or `other` (ARM, older x86)."""
    flags = _cpuinfo(path)[1]
    if AVX512_CORE <= flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


def host_tags() -> dict[str, str]:
    """What every run records of its machine, so a time figure can be read against its CPU."""
    return {"ablation.cpu": cpu_model(), "ablation.cpu_class": cpu_class(), "ablation.cpus": str(usable_cpus())}


__all__ = ["CPU_CLASSES", "CpuClass", "cpu_class", "cpu_model", "host_tags", "usable_cpus"]
