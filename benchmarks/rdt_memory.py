"""Throughput and peak memory of RDT fine-tuning steps, plus an analytic estimate for rdt-1b.

    python benchmarks/rdt_memory.py                         # rdt-170m on CUDA, else tiny on CPU
    python benchmarks/rdt_memory.py --size rdt-1b --batch-size 32

Defaults are the harness's GPU fine-tuning set-up: fp32 master weights with bf16 autocast (the
trainer's train.bf16) and gradient checkpointing (model.gradient_checkpointing). Inputs are random
tensors with the real shapes (T5 4096-d language tokens, 4374 SigLIP tokens): the frozen encoders
are not in the training graph (the harness precomputes SigLIP features and the T5 embedding).

Only a CUDA run prints a MEASURED GPU figure; every other GPU figure is printed as an ESTIMATE.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablation.rdt.model import RDT_PRESETS, RDTConfig, RDTRunner  # noqa: E402

GiB = 1024 ** 3


def activation_elements_per_sample(cfg: RDTConfig, lang_len: int, checkpointing: bool) -> float:
    """Rough count of activation elements autograd keeps per sample.

    Per block, on the N = T+3 main tokens: ~20 N*D (norm inputs, qkv, q/k norms, attention
    outputs, projections, FFN hidden and GELU). The cross-attention of a block keeps ~4 M*D for its
    M condition tokens (kv output, normed k, v, attention output). Adaptors keep ~4 M*D per
    modality. With checkpointing only each block's input survives, plus one block recomputed
    during backward. Checked against autograd's saved tensors for rdt-170m on CPU (within ~5%
    once the CPU-only attention weights are left out): CUDA's fused attention keeps no (H, N, M)
    attention matrix, CPU's math path does (~19 MiB per image block per sample for rdt-170m).
    """
    D, N, I, L = cfg.hidden_size, cfg.pred_horizon + 3, cfg.img_cond_len, lang_len
    # Each 2-layer adaptor keeps its input, the fc1 output and the GELU output.
    adaptors = 2 * I * D + 2 * L * D + 4 * N * D + I * cfg.img_token_dim + L * cfg.lang_token_dim
    conds = 2 * (I + L) * D  # adapted + position-embedded conditions, shared by all blocks
    n_img, n_lang = cfg.depth // 2, cfg.depth - cfg.depth // 2
    full_blocks = cfg.depth * 20 * N * D + n_img * 4 * I * D + n_lang * 4 * L * D
    if checkpointing:
        blocks = cfg.depth * N * D + 20 * N * D + 4 * I * D
    else:
        blocks = full_blocks
    return adaptors + conds + blocks + 4 * N * D  # + final layer


def estimate(cfg: RDTConfig, batch: int, lang_len: int, name: str = "") -> list[str]:
    n = sum(p.numel() for p in _meta_model(cfg).parameters())
    rows = [f"ESTIMATE (analytic, not measured) {name}: {n:,} params, batch {batch}, {lang_len} lang tokens, "
            f"{cfg.img_cond_len} image tokens"]
    states = {
        "pure bf16 (bf16 params+grads, bf16 AdamW m,v)": 2 + 2 + 4,
        "mixed bf16 (fp32 params+grads, fp32 AdamW m,v; autocast)": 4 + 4 + 8,
        "DeepSpeed-style (bf16 params+grads, fp32 master+m+v)": 2 + 2 + 12,
    }
    for name, bytes_per_param in states.items():
        rows.append(f"  {name}: {n * bytes_per_param / GiB:7.2f} GiB weights+grads+optimizer")
    for ckpt in (False, True):
        act = activation_elements_per_sample(cfg, lang_len, ckpt) * batch * 2 / GiB  # bf16 activations
        rows.append(f"  activations (bf16, {'with' if ckpt else 'without'} gradient checkpointing): ~{act:7.2f} GiB")
    harness = n * (4 + 4 + 8) / GiB + activation_elements_per_sample(cfg, lang_len, True) * batch * 2 / GiB
    feats = batch * cfg.img_cond_len * cfg.img_token_dim * 4 / GiB  # one batch of cached SigLIP tokens, fp32
    rows.append(f"  harness set-up (mixed bf16 + gradient checkpointing, SigLIP/T5 precomputed): ~{harness + feats:7.2f} "
                f"GiB estimated peak, before allocator overhead")
    return rows


def _meta_model(cfg: RDTConfig) -> RDTRunner:
    with torch.device("meta"):
        return RDTRunner(cfg)


def random_batch(cfg: RDTConfig, batch: int, lang_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    mask = torch.zeros(batch, 1, cfg.action_dim, device=device)
    mask[..., 30:39] = 1.0
    mask[..., 10] = 1.0
    return {
        "lang_tokens": torch.randn(batch, lang_len, cfg.lang_token_dim, device=device),
        "lang_attn_mask": torch.ones(batch, lang_len, dtype=torch.bool, device=device),
        "img_tokens": torch.randn(batch, cfg.img_cond_len, cfg.img_token_dim, device=device),
        "state_tokens": torch.randn(batch, 1, cfg.state_token_dim, device=device) * mask,
        "action_gt": torch.randn(batch, cfg.pred_horizon, cfg.action_dim, device=device) * mask,
        "action_mask": mask,
        "ctrl_freqs": torch.full((batch,), 20.0, device=device),
    }


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(RDT_PRESETS), default="rdt-170m" if cuda else "rdt-tiny-fixture")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=32 if cuda else 2)
    parser.add_argument("--lang-len", type=int, default=32, help="T5 tokens per instruction")
    parser.add_argument("--precision", choices=["bf16", "bf16-mixed", "fp32"], default="bf16-mixed",
                        help="bf16-mixed (the harness's trainer): fp32 params + bf16 autocast; bf16: all params bf16")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--estimate-size", default="rdt-1b", choices=sorted(RDT_PRESETS))
    args = parser.parse_args()

    device = torch.device(args.device)
    cfg = RDTConfig.preset(args.size)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = RDTRunner(cfg, dtype=dtype, device=device).train()
    model.set_gradient_checkpointing(args.grad_checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed" else nullcontext())
    run_lang_len = min(args.lang_len, cfg.max_lang_cond_len)  # the tiny model takes at most 8
    batch = random_batch(cfg, args.batch_size, run_lang_len, device)

    def step() -> float:
        with autocast:
            loss = model.compute_loss(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # .item() also synchronises, so timings are honest

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - t0

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.size}: {n_params:,} params, precision {args.precision}, "
          f"grad checkpointing {'on' if args.grad_checkpointing else 'off'}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"batch {args.batch_size}, {args.steps} steps in {elapsed:.2f} s: "
          f"{args.steps * args.batch_size / elapsed:.1f} samples/s, last loss {loss:.4f}")
    if device.type == "cuda":
        print(f"MEASURED peak CUDA memory allocated: {torch.cuda.max_memory_allocated(device) / GiB:.2f} GiB "
              f"(reserved {torch.cuda.max_memory_reserved(device) / GiB:.2f} GiB) on {torch.cuda.get_device_name(device)}")
    else:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        print(f"no GPU: nothing on a GPU was measured. CPU run: peak process RSS {rss_kib / 1024 ** 2:.2f} GiB "
              f"(whole process); threads {torch.get_num_threads()}, pid {os.getpid()}")
    for line in estimate(cfg, args.batch_size, run_lang_len, args.size):
        print(line)
    if args.estimate_size != args.size:
        for line in estimate(RDTConfig.preset(args.estimate_size), args.batch_size, args.lang_len, args.estimate_size):
            print(line)


if __name__ == "__main__":
    main()
