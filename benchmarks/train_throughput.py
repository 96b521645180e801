"""Training throughput: today's trainer ("reference") vs the new one, and the harness vs a bare loop.

    .venv/bin/python benchmarks/train_throughput.py [--spec fix_minmax] [--size small] [--steps 300]
        [--threads 1,2] [--batch 64] [--repeats 2] [--demos FILE] [--sides reference,fast,compiled]

The sides (interleaved, so load on a shared machine hits all of them):
    reference  the pre-Throughput trainer: fp32, SDPA, for-loop AdamW (train.kernels=reference)
    fast       bf16 block matmuls, fused AdamW, foreach clipping, eager (train.kernels=fast)
    compiled   fast + train.compile=true: what the CPU profile trains with (the new trainer)
On a CPU where oneDNN has no native bf16 (AVX2 only: ablation/host.py) fast and compiled keep fp32 blocks,
as the trainer does, and the bare loop with them: measured there (AMD EPYC, AVX2, 2026-12-03, --steps 200
--repeats 2 --sides reference,compiled) compiled / reference was 1.09x, against ~2.2x with native bf16.
One run prints:
  * samples/s of the harness's training loop per side and thread count (best of --repeats; the
    step loop with its logging, end-of-run validation and checkpoint left out; the first step, which
    compiles, left out too and printed apart as the one-time cost), also per CPU-second (process CPU
    time: less sensitive to other processes), the new / reference ratios (target >= 2), and
    harness / bare loop per side (the same model, kernels, data and batch with nothing else);
  * the compile cost: the first compiled step with torch's on-disk cache empty (a fresh machine: the
    benchmark points TORCHINDUCTOR_CACHE_DIR at an empty folder), and then warm (later runs in the
    same process reuse the compiled code), with the steps it takes to pay the cold compile back;
  * the open-loop error after the same number of samples (--steps x --batch), from chunks fully
    sampled with DPM-Solver on the held-out windows: position error in mm and open-loop pos nMSE,
    mean over the runs at the first thread count (seed r for repeat r, the same seeds for every side).
On CUDA it also measures bf16 training throughput of the rdt-170m-shaped model as a share of the
GPU's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation.data import prepare_data  # noqa: E402
from ablation.model import COMPILED_TRAIN_KERNELS, FAST_TRAIN_KERNELS, REFERENCE_KERNELS, count_params  # noqa: E402
from ablation.policy import ObsNormalizer, build_policy  # noqa: E402
from ablation.spec import resolve_spec, spec_path  # noqa: E402
from ablation.train import WindowTensors, configure_torch, train  # noqa: E402
from ablation.train_state import cpu_bf16_matmul  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), by device-name substring.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
# side -> (train.kernels, train.compile)
SIDES = {"reference": ("reference", False), "fast": ("fast", False), "compiled": ("fast", True)}
NEW = ("fast", "compiled")


def synthetic_demos(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import synthetic_episode, synthetic_meta  # the tests' LIBERO-format generator

    from ablation.data import write_demo_file

    rng = np.random.default_rng(0)
    write_demo_file(path, [synthetic_episode(rng, T=int(rng.integers(120, 160))) for _ in range(20)], synthetic_meta())
    return path


def bare_loop(spec, data, steps: int, device: torch.device, kernels: str, compiled: bool) -> float:
    """The same model/data/batch/kernels with nothing but the essentials. Returns samples/s (after a
    warm-up step, which compiles when `compiled`)."""
    torch.manual_seed(spec.train.seed)
    policy = build_policy(spec, data.codec, ObsNormalizer.fit(data.train.obs, spec.data.obs_keys),
                          data.train.obs.shape[-1]).to(device)
    net, sched = policy.net, policy.noise_schedule
    fast = kernels == "fast" and device.type == "cpu"
    # The kernels the harness's Trainer picks: bf16 blocks only where oneDNN multiplies bf16 natively
    # (elsewhere bf16 is emulated: 44x slower than fp32 for a 1024x256x1024 matmul on an AVX2-only EPYC).
    bf16 = fast and cpu_bf16_matmul()
    net.set_kernels((COMPILED_TRAIN_KERNELS if compiled else FAST_TRAIN_KERNELS) if bf16 else REFERENCE_KERNELS)
    call = torch.compile(net, dynamic=False) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay,
                            **({"fused": True} if fast else {}))
    wt = WindowTensors(data.train, device)
    mean, std = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (policy.obs_norm.mean, policy.obs_norm.std))
    amask, smask = policy.action_mask, policy.state_mask
    B = spec.train.batch_size
    freq = torch.full((B,), spec.model.ctrl_freq_hz, device=device)
    g = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and spec.train.bf16)
    t0 = time.perf_counter()
    for i in range(steps + 1):
        if i == 1:  # the first step compiles (when asked) and warms the allocator: not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(0, len(wt), (B,), generator=g).to(device)
        x0, obs, state = wt.actions[idx], wt.obs[idx], wt.state[idx]
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, spec.model.num_train_timesteps, (B,), generator=g).to(device)
        with autocast:
            pred = call(sched.add_noise(x0, noise, t), amask, t, freq, state, smask, (obs - mean) / std)
        loss = F.mse_loss(pred.float(), x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), spec.train.grad_clip, foreach=True if fast else None)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * B / (time.perf_counter() - t0)


def cuda_rdt170m_share(steps: int = 20, batch: int = 32) -> str:
    from ablation.model import DiffusionTransformer, DiTConfig

    cfg = DiTConfig.for_size("rdt-170m", horizon=64, action_width=128, state_width=128, obs_dim=64, obs_history=2)
    net = DiffusionTransformer(cfg).cuda()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    dev = "cuda"
    x = torch.randn(batch, 64, 128, device=dev)
    args = (torch.ones(128, device=dev), torch.randint(0, 1000, (batch,), device=dev), torch.full((batch,), 20.0, device=dev),
            torch.randn(batch, 128, device=dev), torch.ones(128, device=dev), torch.randn(batch, 2, 64, device=dev))
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.mse_loss(net(x, *args).float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    tokens = batch * (3 + 64)
    flops = 6 * count_params(net) * tokens  # matmul FLOPs, attention scores ignored (short sequences)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    tf = flops / dt / 1e12
    share = f"{100 * tf / peak:.1f}% of {peak:.0f} TFLOP/s peak" if peak else "peak unknown for this device"
    return f"rdt-170m-shaped bf16 ({count_params(net) / 1e6:.0f}M params, batch {batch}): {batch / dt:.0f} samples/s, {tf:.1f} TFLOP/s = {share} ({name})"


def harness_run(spec, demos: Path, data, out: Path, kernels: str | None):
    """-> (result, samples/s, samples per CPU-second), both over the steps after the first. `data` None:
    prepared from `demos`; `kernels` None: the spec's own."""
    res = train(spec, demos, out, resume=False, progress=False, data=data, kernels=kernels)
    # The step loop with its logging, without the end-of-run validation and checkpoint (they do not
    # scale with the number of steps) and without the first step (it compiles: a one-time cost,
    # printed apart).
    train_wall = res.loop_wall_s - res.eval_time_s - res.checkpoint_time_s - res.first_step_s
    n = (res.steps - 1) * spec.train.batch_size
    return res, n / train_wall, n / max(res.step_cpu_s - res.first_step_cpu_s, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="fix_minmax")
    ap.add_argument("--size", default="small")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (the open-loop comparison too)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--demos", type=Path)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best samples/s of each is kept")
    ap.add_argument("--bare-steps", type=int, default=60, help="steps of each bare-loop measurement")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep torch's on-disk compile cache (default: an empty one, as on a fresh machine)")
    args = ap.parse_args()
    sides = tuple(args.sides.split(","))
    if bad := [s for s in sides if s not in SIDES]:
        ap.error(f"--sides: unknown {', '.join(bad)}; use {', '.join(SIDES)}")
    tmp = Path(tempfile.mkdtemp(prefix="throughput_"))
    if not args.warm_cache:  # read by inductor when it first compiles, so set before anything compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor_cache")
    configure_torch()
    demos = args.demos or synthetic_demos(tmp / "synthetic.hdf5")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = [int(t) for t in args.threads.split(",")]
    base_sets = [f"model.size={args.size}", f"train.steps={args.steps}", f"train.batch_size={args.batch}",
                 f"train.log_every={max(1, args.steps // 6)}", "train.eval_every=1000000",
                 "train.checkpoint_every=1000000"]
    spec0 = resolve_spec(spec_path(args.spec), base_sets)
    data = prepare_data(spec0.data, spec0.codec, demos)
    print(f"device {device}, spec {spec0.name}, size {args.size}, batch {args.batch}, steps {args.steps} "
          f"({args.steps * args.batch} samples per run), repeats {args.repeats}, demos {demos}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16 matmul {cpu_bf16_matmul()}",
          flush=True)
    rows, quality, first_steps = {}, {s: [] for s in sides}, {s: [] for s in sides}
    for th in threads:
        configure_torch(th)
        harness = {s: [] for s in sides}
        per_cpu = {s: [] for s in sides}
        bare = {s: [] for s in sides}
        for r in range(args.repeats):
            for s in (sides if r % 2 == 0 else sides[::-1]):
                kernels, compiled = SIDES[s]
                spec = resolve_spec(spec_path(args.spec), [*base_sets, f"train.seed={r}", f"train.num_threads={th}",
                                                           f"train.compile={str(compiled).lower()}", "train.compile_min_steps=0"])
                res, sps, spc = harness_run(spec, demos, data, tmp / f"t{th}_{s}_{r}", kernels)
                if compiled and res.compiled != "on":
                    print(f"  {s}: torch.compile did not run ({res.compiled}); this side trained eagerly")
                harness[s].append(sps)
                per_cpu[s].append(spc)
                first_steps[s].append(res.first_step_s)
                if th == threads[0]:
                    quality[s].append(res.open_loop)
                bare[s].append(bare_loop(spec, data, args.bare_steps, device, kernels, compiled))
                print(f"  threads {th} repeat {r} {s:9s}: harness {sps:7.1f} samples/s ({spc:6.1f} per CPU-s), "
                      f"bare {bare[s][-1]:7.1f}, first step {res.first_step_s:5.2f} s, "
                      f"open-loop pos {res.open_loop['pos_mm']:.2f} mm, nMSE pos {res.open_loop['nmse/pos']:.4f}",
                      flush=True)
        rows[th] = ({s: max(v) for s, v in harness.items()}, {s: max(v) for s, v in bare.items()},
                    {s: max(v) for s, v in per_cpu.items()})
    print()
    print(f"{'threads':>7}  {'side':9s}  {'harness/s':>10}  {'per CPU-s':>9}  {'bare/s':>8}  {'harness/bare':>12}")
    for th, (h, b, c) in rows.items():
        for s in sides:
            print(f"{th:>7}  {s:9s}  {h[s]:10.1f}  {c[s]:9.1f}  {b[s]:8.1f}  {h[s] / b[s]:12.3f}")
        for s in NEW:
            if s in sides and "reference" in sides:
                print(f"{th:>7}  {s} / reference: {h[s] / h['reference']:.2f}x samples/s (wall), "
                      f"{c[s] / c['reference']:.2f}x samples per CPU-second" + ("  (target >= 2)" if s == "compiled" else ""))
    if "compiled" in sides:
        fs = first_steps["compiled"]
        cold, warm = fs[0], (statistics.median(fs[1:]) if len(fs) > 1 else float("nan"))
        per_step = {s: args.batch / rows[threads[0]][0][s] for s in sides}  # seconds per step at the first thread count
        base = "fast" if "fast" in sides else ("reference" if "reference" in sides else None)
        line = (f"compile (one-time): first compiled step {cold:.1f} s with an empty on-disk cache"
                if not args.warm_cache else f"compile: first compiled step {cold:.1f} s (warm on-disk cache)")
        line += f", {warm:.2f} s for later runs in this process"
        if base:
            saved = per_step[base] - per_step["compiled"]
            line += (f"; it saves {1000 * saved:.1f} ms per step against {base}, so it pays for itself after "
                     f"{cold / saved:.0f} steps (cold)" if saved > 0 else f"; no faster than {base} per step")
        print(line)
    print()
    print(f"open-loop after {args.steps * args.batch} samples ({args.steps} steps), held-out windows, chunks fully "
          f"sampled (DPM-Solver), mean over {args.repeats} seed(s) at {threads[0]} thread(s):")
    for s in sides:
        q = quality[s]
        pos = [x["pos_mm"] for x in q]
        nm = [x["nmse/pos"] for x in q]
        print(f"  {s:9s}: pos error {statistics.mean(pos):7.2f} mm (runs {', '.join(f'{v:.2f}' for v in pos)}), "
              f"open-loop pos nMSE {statistics.mean(nm):.4f} (runs {', '.join(f'{v:.4f}' for v in nm)}), "
              f"r2 vs delta {statistics.mean(x['r2/pos_vs_delta'] for x in q):.3f}, "
              f"vs abs pose {statistics.mean(x['r2/pos_vs_abs_pose'] for x in q):.3f}")
    if device.type == "cuda":
        print(cuda_rdt170m_share())


if __name__ == "__main__":
    main()
