"""Training throughput: today's kernels ("reference") vs the fast ones, and the harness vs a bare loop.

    .venv/bin/python benchmarks/train_throughput.py [--spec fix_minmax] [--size small] [--steps 300]
        [--threads 1,2] [--batch 64] [--repeats 2] [--demos FILE] [--compile]

One run prints, side by side (reference and fast runs interleaved, so load on a shared machine hits both):
  * samples/s of the harness's training loop, reference vs fast, at each thread count (best of
    --repeats; the wall time of the step loop with its logging, the end-of-run validation and
    checkpoint left out), also per CPU-second of the steps (process CPU time: less sensitive to
    other processes on a shared machine), their ratio (target >= 2), and the harness / bare-loop ratio of each
    (bare loop: the same model, kernels, data and batch with nothing but the essentials);
  * the open-loop error after the same number of samples (--steps x --batch), from chunks fully
    sampled with DPM-Solver on the held-out windows: position error in mm and open-loop pos nMSE,
    mean over the runs at the first thread count (seed r for repeat r, the same seeds for both).
`train.kernels` (ablation.train) selects the kernels; `--kernels-only fast` skips the other side.
On CUDA it also measures bf16 training throughput of the rdt-170m-shaped model as a share of the
GPU's dense bf16 peak.
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
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation.data import prepare_data  # noqa: E402
from ablation.model import FAST_TRAIN_KERNELS, REFERENCE_KERNELS, count_params  # noqa: E402
from ablation.policy import ObsNormalizer, build_policy  # noqa: E402
from ablation.spec import resolve_spec, spec_path  # noqa: E402
from ablation.train import WindowTensors, configure_torch, train  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), by device-name substring.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
SIDES = ("reference", "fast")


def synthetic_demos(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import synthetic_episode, synthetic_meta  # the tests' LIBERO-format generator

    from ablation.data import write_demo_file

    rng = np.random.default_rng(0)
    write_demo_file(path, [synthetic_episode(rng, T=int(rng.integers(120, 160))) for _ in range(20)], synthetic_meta())
    return path


def bare_loop(spec, data, steps: int, device: torch.device, kernels: str) -> float:
    """The same model/data/batch/kernels with nothing but the essentials. Returns samples/s."""
    torch.manual_seed(spec.train.seed)
    policy = build_policy(spec, data.codec, ObsNormalizer.fit(data.train.obs, spec.data.obs_keys),
                          data.train.obs.shape[-1]).to(device)
    net, sched = policy.net, policy.train_scheduler
    fast = kernels == "fast" and device.type == "cpu"
    net.set_kernels(FAST_TRAIN_KERNELS if fast else REFERENCE_KERNELS)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay,
                            **({"fused": True} if fast else {}))
    wt = WindowTensors(data.train, device)
    mean, std = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (policy.obs_norm.mean, policy.obs_norm.std))
    amask, smask = policy.action_mask, policy.state_mask
    B = spec.train.batch_size
    freq = torch.full((B,), spec.model.ctrl_freq_hz, device=device)
    g = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and spec.train.bf16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(wt), (B,), generator=g).to(device)
        x0, obs, state = wt.actions[idx], wt.obs[idx], wt.state[idx]
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, spec.model.num_train_timesteps, (B,), generator=g).to(device)
        with autocast:
            pred = net(sched.add_noise(x0, noise, t), amask, t, freq, state, smask, (obs - mean) / std)
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


def harness_run(spec, demos: Path, data, out: Path, kernels: str):
    res = train(spec, demos, out, resume=False, progress=False, data=data, kernels=kernels)
    # The step loop with its logging, without the end-of-run validation and checkpoint (they do not
    # scale with the number of steps; printed apart).
    train_wall = res.loop_wall_s - res.eval_time_s - res.checkpoint_time_s
    n = res.steps * spec.train.batch_size
    return res, n / train_wall, n / max(res.step_cpu_s, 1e-9)


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
    ap.add_argument("--compile", action="store_true", help="also set train.compile=true (both sides)")
    ap.add_argument("--kernels-only", choices=SIDES, help="measure one side only")
    args = ap.parse_args()
    configure_torch()
    sides = (args.kernels_only,) if args.kernels_only else SIDES
    tmp = Path(tempfile.mkdtemp(prefix="throughput_"))
    demos = args.demos or synthetic_demos(tmp / "synthetic.hdf5")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = [int(t) for t in args.threads.split(",")]
    base_sets = [f"model.size={args.size}", f"train.steps={args.steps}", f"train.batch_size={args.batch}",
                 f"train.log_every={max(1, args.steps // 6)}", "train.eval_every=1000000",
                 "train.checkpoint_every=1000000", *(["train.compile=true"] if args.compile else [])]
    spec0 = resolve_spec(spec_path(args.spec), base_sets)
    data = prepare_data(spec0.data, spec0.codec, demos)
    print(f"device {device}, spec {spec0.name}, size {args.size}, batch {args.batch}, steps {args.steps} "
          f"({args.steps * args.batch} samples per run), repeats {args.repeats}, demos {demos}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    rows, quality = {}, {s: [] for s in sides}
    for th in threads:
        configure_torch(th)
        harness = {s: [] for s in sides}
        per_cpu = {s: [] for s in sides}
        bare = {s: [] for s in sides}
        for r in range(args.repeats):
            spec = resolve_spec(spec_path(args.spec), [*base_sets, f"train.seed={r}", f"train.num_threads={th}"])
            for s in (sides if r % 2 == 0 else sides[::-1]):
                res, sps, spc = harness_run(spec, demos, data, tmp / f"t{th}_{s}_{r}", s)
                harness[s].append(sps)
                per_cpu[s].append(spc)
                if th == threads[0]:
                    quality[s].append(res.open_loop)
                bare[s].append(bare_loop(spec, data, args.bare_steps, device, s))
                print(f"  threads {th} repeat {r} {s:9s}: harness {sps:7.1f} samples/s ({spc:6.1f} per CPU-s), "
                      f"bare {bare[s][-1]:7.1f}, "
                      f"open-loop pos {res.open_loop['pos_mm']:.2f} mm, nMSE pos {res.open_loop['nmse/pos']:.4f}",
                      flush=True)
        rows[th] = ({s: max(v) for s, v in harness.items()}, {s: max(v) for s, v in bare.items()},
                    {s: max(v) for s, v in per_cpu.items()})
    print()
    print(f"{'threads':>7}  {'side':9s}  {'harness/s':>10}  {'per CPU-s':>9}  {'bare/s':>8}  {'harness/bare':>12}")
    for th, (h, b, c) in rows.items():
        for s in sides:
            print(f"{th:>7}  {s:9s}  {h[s]:10.1f}  {c[s]:9.1f}  {b[s]:8.1f}  {h[s] / b[s]:12.3f}")
        if len(sides) == 2:
            print(f"{th:>7}  fast / reference: {h['fast'] / h['reference']:.2f}x samples/s (wall), "
                  f"{c['fast'] / c['reference']:.2f}x samples per CPU-second  (target >= 2)")
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
