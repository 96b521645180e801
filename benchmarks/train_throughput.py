"""Training throughput: the harness's loop vs a bare PyTorch loop on the same model, data and batch.

    .venv/bin/python benchmarks/train_throughput.py [--spec fix_minmax] [--size small] [--steps 200]
                                                    [--batch 64] [--demos FILE] [--threads N]

Prints samples/s of both, their ratio (target >= 0.95), and the share of the harness's step time
spent gathering batches. The harness figure is wall time of its whole step loop (logging included,
the one end-of-run validation and checkpoint left out and printed apart). On CUDA it also measures bf16 training throughput
of the rdt-170m-shaped model as a share of the GPU's dense bf16 peak.
"""
from __future__ import annotations

import argparse
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
from ablation.model import count_params  # noqa: E402
from ablation.policy import ObsNormalizer, build_policy  # noqa: E402
from ablation.spec import resolve_spec, spec_path  # noqa: E402
from ablation.train import WindowTensors, train  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), by device-name substring.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def synthetic_demos(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import synthetic_episode, synthetic_meta  # the tests' LIBERO-format generator

    from ablation.data import write_demo_file

    rng = np.random.default_rng(0)
    write_demo_file(path, [synthetic_episode(rng, T=int(rng.integers(120, 160))) for _ in range(20)], synthetic_meta())
    return path


def bare_loop(spec, data, steps: int, device: torch.device) -> float:
    """The same model/data/batch with nothing but the essentials. Returns samples/s."""
    torch.manual_seed(spec.train.seed)
    policy = build_policy(spec, data.codec, ObsNormalizer.fit(data.train.obs, spec.data.obs_keys),
                          data.train.obs.shape[-1]).to(device)
    net, sched = policy.net, policy.train_scheduler
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
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
        torch.nn.utils.clip_grad_norm_(net.parameters(), spec.train.grad_clip)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="fix_minmax")
    ap.add_argument("--size", default="small")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--demos", type=Path)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="throughput_"))
    demos = args.demos or synthetic_demos(tmp / "synthetic.hdf5")
    spec = resolve_spec(spec_path(args.spec), [f"model.size={args.size}", f"train.steps={args.steps}",
                                               f"train.batch_size={args.batch}", "train.eval_every=1000000",
                                               "train.checkpoint_every=1000000", f"train.num_threads={args.threads}"])
    data = prepare_data(spec.data, spec.codec, demos)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    harness, bare, share = [], [], []
    for r in range(args.repeats):
        res = train(spec, demos, tmp / f"run{r}", resume=False, progress=False, data=data)
        # Training throughput: the step loop with its logging, without the end-of-run validation and
        # checkpoint (reported separately below; they do not scale with the number of steps).
        train_wall = res.loop_wall_s - res.eval_time_s - res.checkpoint_time_s
        harness.append(res.steps * spec.train.batch_size / train_wall)
        extra = (res.eval_time_s, res.checkpoint_time_s)
        share.append(res.data_time_share)
        bare.append(bare_loop(spec, data, args.steps, device))
    h, b = max(harness), max(bare)
    print(f"device {device}, threads {torch.get_num_threads()}, spec {spec.name}, size {args.size}, batch {args.batch}, "
          f"steps {args.steps}, demos {demos}")
    print(f"harness loop : {h:8.1f} samples/s  (runs: {', '.join(f'{x:.1f}' for x in harness)})")
    print(f"bare loop    : {b:8.1f} samples/s  (runs: {', '.join(f'{x:.1f}' for x in bare)})")
    print(f"ratio        : {h / b:8.3f}  (target >= 0.95)")
    print(f"data loading : {100 * min(share):8.2f} % of the harness's step time")
    print(f"not counted  : end-of-run validation {extra[0]:.2f} s, checkpoint write {extra[1]:.2f} s")
    if device.type == "cuda":
        print(cuda_rdt170m_share())


if __name__ == "__main__":
    main()
