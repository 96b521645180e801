"""The GPU profile's network on its device: training throughput, GPU memory, batched sampling latency.

    python benchmarks/gpu_profile.py [--steps 300] [--arm 0] [--batches 1,4,16,64]
    python benchmarks/gpu_profile.py --device cpu --size tiny --steps 20 --batches 1,4   # a smoke run

What `--profile gpu` trains and samples, without the simulator (the rollouts' env steps are the CPU's
work, measured by benchmarks/env_step.py and rollout_throughput.py):
  * the plan's first arm x seed under the GPU profile (`--arm` picks another): agentview and wrist
    images at 128x128 through the policy's CNN, the RDT-170M-shaped network, bf16 autocast, batch 64;
  * trained by the harness's own `train()` for --steps on synthetic demos in LIBERO's format (smooth
    reach-grasp-lift trajectories with random-pixel images: the throughput does not depend on what the
    pixels show), printing samples/s over the steps after the first (the first step, with cuDNN's
    autotuning, printed apart), the peak GPU memory, and the loss at the start and the end;
  * then the trained bundle loaded as the rollouts load it, and one batched sampling call (the full
    DPM-Solver chain, images included) timed per batch size: --batches are episodes per call, so 4 is
    the profile's rollout_batch and 64 is 16 workers x 4 sharing the GPU;
  * the bare rdt-170m-shaped transformer's bf16 training FLOP rate as a share of the GPU's dense
    peak (benchmarks/train_throughput.py's measure).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation.arms import resolve_plan  # noqa: E402
from ablation.bundle import load_policy  # noqa: E402
from ablation.data import write_demo_file  # noqa: E402
from ablation.profiles import load_profile  # noqa: E402
from ablation.spec import load_plan, with_overrides  # noqa: E402
from ablation.train import configure_torch  # noqa: E402
from train_throughput import cuda_rdt170m_share, harness_run  # noqa: E402  (this script's folder)

IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")


def image_demos(path: Path, size: int, n: int = 8) -> Path:
    """Synthetic demos in LIBERO's format with both cameras at `size` px."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import synthetic_episode, synthetic_meta

    rng = np.random.default_rng(0)
    eps = []
    for _ in range(n):
        ep = synthetic_episode(rng, T=int(rng.integers(60, 90)))
        T = len(ep.actions)
        for k in IMAGE_KEYS:
            ep.obs[k] = rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8)
        eps.append(ep)
    write_demo_file(path, eps, synthetic_meta())
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_sampling(policy, device: torch.device, batch: int, size: int, calls: int) -> float:
    """Median seconds of one `act_batch` call serving `batch` episodes (after 2 warm-up calls)."""
    rng = np.random.default_rng(batch)
    hist = [{"ee_pos": np.array([-0.1, 0.0, 1.0]), "ee_ori": np.array([np.pi, 0.0, 0.0]),
             "gripper_states": np.array([0.04, -0.04]), "gripper_history": np.array([-1.0, -1.0]),
             **{k: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for k in IMAGE_KEYS}}]
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    times = []
    for i in range(calls + 2):
        sync(device)
        t0 = time.perf_counter()
        policy.act_batch([hist] * batch, gens)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps (the first one is timed apart)")
    ap.add_argument("--arm", type=int, default=0, help="which of the plan's arm x seed entries (0: the first)")
    ap.add_argument("--batches", default="1,4,16,64", help="episodes per sampling call, comma-separated")
    ap.add_argument("--calls", type=int, default=5, help="timed sampling calls per batch size (median kept)")
    ap.add_argument("--device", default=None, help="cuda (default where present) or cpu")
    ap.add_argument("--size", default=None, help="model.size override (default: the profile's rdt-170m)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a spec override on top of the profile's, e.g. train.compile=true (repeatable)")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    configure_torch()
    entries = list(resolve_plan(load_plan("all"), load_profile("gpu")).entries())
    arm, seed = entries[args.arm]
    sets = [f"train.device={device.type}", f"train.steps={args.steps}", f"train.log_every={max(1, args.steps // 5)}",
            "train.eval_every=1000000", "train.checkpoint_every=1000000"]
    if device.type != "cuda":
        sets.append("train.bf16=false")
    if args.size:
        sets.append(f"model.size={args.size}")
    sets += args.set
    spec = with_overrides(arm.spec_for(seed), sets)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    demos = image_demos(tmp / "synthetic_images.hdf5", spec.data.image_size)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}); spec {spec.name} seed {seed}: model {spec.model.size}, "
          f"images {spec.data.image_size}px x {len(IMAGE_KEYS)} cameras, bf16 {spec.train.bf16}, "
          f"batch {spec.train.batch_size}, {args.steps} steps, train.compile {spec.train.compile}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res, sps, _ = harness_run(spec, demos, None, tmp / "run", None)  # the spec's own kernels and data
    losses = [(step, m["train/loss/total"]) for step, m in res.history if "train/loss/total" in m]
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"training: {sps:.0f} samples/s ({1000 * spec.train.batch_size / sps:.1f} ms per step) over steps 2-{res.steps}, "
          f"first step {res.first_step_s:.2f} s (compiled: {res.compiled}){mem}; data gathering {100 * res.data_time_share:.0f}% of step time; "
          f"loss {losses[0][1]:.5f} at step {losses[0][0]} -> {losses[-1][1]:.5f} at step {losses[-1][0]}", flush=True)
    steps_needed = arm.spec_for(seed).train.steps
    print(f"  the profile's {steps_needed} steps would take ~{steps_needed * spec.train.batch_size / sps / 60:.1f} min "
          f"of training per run at this rate", flush=True)
    bundle = res.checkpoint_dir
    policy = load_policy(bundle, device=device)
    print(f"sampling ({spec.model.num_inference_steps} "
          f"solver steps per chunk, {spec.data.action_chunk} actions per chunk), median of {args.calls} calls:")
    for b in (int(x) for x in args.batches.split(",")):
        s = time_sampling(policy, device, b, spec.data.image_size, args.calls)
        print(f"  {b:3d} episodes per call: {1000 * s:8.1f} ms per call, {1000 * s / b:7.2f} ms per episode's chunk",
              flush=True)
    if device.type == "cuda":
        print(cuda_rdt170m_share(), flush=True)


if __name__ == "__main__":
    main()
