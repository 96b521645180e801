"""The trainer (no tracking inside: metrics go to an `on_metrics(step, metrics)` callback).

    configure_torch(num_threads)             process-wide torch options; call once at a process entry point
    train(spec, demo_path, out_dir)          -> TrainResult
    open_loop_eval(policy, windows, n=...)   re-exported from ablation.openloop

One step: sample a batch (with replacement, from one seeded generator that also draws the noise
and timesteps, so a run is a pure function of its seed and resumes exactly), noise the chunk,
predict, reduce the loss per group (ablation.loss), AdamW step with clipping and warmup+cosine LR.
Checkpoint bundles are read and written by ablation.bundle; open-loop figures come from
ablation.openloop; the optimiser, LR schedule, EMA and RNG a bundle saves are ablation.train_state;
batches and the loss/x0 meters are ablation.train_metrics.

Compute kernels (`train.kernels`, default "fast"; "reference" is the pre-Throughput trainer):
    fast       on CPU, the blocks' matmuls in bf16 while training (ablation.model.Kernels), fp32 for
               validation and sampling; fused AdamW, foreach EMA and gradient clipping
    reference  SDPA attention, fp32 throughout, for-loop AdamW (today's figures, side by side)
On CUDA both train as before (bf16 autocast when train.bf16).

`train.compile` (the CPU profile sets it): the training step's network call goes through
torch.compile (inductor), which fuses the elementwise work around the matmuls (norms, GELU, casts,
bias and residual adds: ~60% of an eager fast step at the small size); with fast kernels attention is
then plain matmuls, which fuse, instead of SDPA. Validation and sampling stay eager. The compiled
code is cached on disk by torch (cold: ~45 s the first time on a machine; warm: ~3 s) and in memory
for later runs of the same process. If the compiler cannot run here (no C++ compiler, say), the run
says why once and trains eagerly from the same step and RNG state; the bundle's meta records which.

Metrics passed to on_metrics every train.log_every steps (losses averaged over those steps):
    train/loss/{total,pos,rot,grip,pad}   shares of the loss; pos+rot+grip+pad == total (pad: unfilled
                                          slots, non-zero under rdt_mean only)
    train/nmse/{pos,rot,grip}             x0 error / group variance (x0 from one denoising step at a random t)
    train/phys/{pos_mm,rot_deg,grip}      that x0 decoded to physical units, last batch, valid steps
    train/lr, train/grad_norm, train/samples_per_s
    every train.eval_every steps also val/loss/*, val/nmse/*, val/phys/* (held-out demos, one-step
    x0: see `validate`) and val/openloop/* (fully sampled chunks; see ablation.openloop)
    at the last step also val/x0_by_t/{pos,rot,grip}/bin{k}: that one-step x0 nMSE per diffusion-time
    bin (bin 0: least noise; see `x0_error_by_t`)

Out dir layout: out_dir/checkpoints/step_0001000/, the newest bundle (see ablation.bundle).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .bundle import check_resumable, latest_bundle, load_matching, read_train_state, write_bundle
from .data import PreparedData
from .errors import UserError
from .loss import SHARES, DiffusionLoss
from .model import (COMPILED_TRAIN_KERNELS, FAST_EVAL_KERNELS, FAST_TRAIN_KERNELS, REFERENCE_KERNELS,
                    DiffusionTransformer)
from .openloop import open_loop_eval
from .policy import ObsNormalizer, build_policy
from .provenance import file_sha256, git_commit, versions
from .spec import Spec
from .spec_data import prepare_spec_data
from .train_metrics import LossMeter, WindowTensors, phys_metrics, x0_error_by_t
from .train_state import EMA, TrainState, cpu_bf16_matmul, pick_device, total_steps

# Re-exported: callers and tests import these from the trainer (`from ablation.train import ...`).
__all__ = ["EMA", "TrainResult", "TrainState", "TrainingDiverged", "WindowTensors", "configure_torch", "latest_bundle",
           "open_loop_eval", "train", "x0_error_by_t"]

MetricsCallback = Callable[[int, dict[str, float]], None]
VAL_BATCHES = 4        # batches of held-out windows per validation
VAL_OPEN_LOOP_N = 64   # sampled windows for the open-loop figures logged during training
KERNEL_CHOICES = ("fast", "reference")


class TrainingDiverged(UserError):
    """The loss or the gradients became NaN/inf; the message names the step and the group."""


@dataclass
class TrainResult:
    final: dict[str, float]                      # last logged train/val metrics, plus final open-loop ones
    history: list[tuple[int, dict[str, float]]]  # every on_metrics call
    checkpoint_dir: Path
    wall_time_s: float
    samples_per_s: float
    steps: int
    data_time_share: float = 0.0                 # share of step time spent gathering batches
    loop_wall_s: float = 0.0                     # wall time of the step loop (incl. logging/val/checkpoints)
    eval_time_s: float = 0.0                     # of which validation (held-out loss + open-loop sampling)
    checkpoint_time_s: float = 0.0               # of which writing bundles
    step_cpu_s: float = 0.0                      # process CPU time of the optimiser steps (all threads)
    open_loop: dict[str, float] = field(default_factory=dict)
    compiled: str = "off"                        # train.compile: off | on | "failed: <reason>" (trained eagerly)
    first_step_s: float = 0.0                    # this process's first step, compilation included
    first_step_cpu_s: float = 0.0                # its process CPU time (the C++ compiler runs in subprocesses)


def configure_torch(num_threads: int = 0) -> None:
    """Process-wide torch options, set once by a process entry point (CLI command, plan/tune worker,
    benchmark), never by library code: flush denormals (unnormalised tiny actions make denormals,
    ~5x slower on CPU), the intra-op thread count (0: torch's default) and how many shapes
    torch.compile may compile the network for."""
    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(num_threads)
    # train.compile: a plan worker trains many runs; each new input shape (another task's observation
    # width, another codec's action width) is one more compiled graph of the same forward. Past dynamo's
    # default of 8 it would quietly train the rest eagerly.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)


# ----------------------------------------------------------------------------- one step, validation

class Trainer:
    """The parts of a run that the loop calls: a step, validation, a checkpoint."""

    def __init__(self, spec: Spec, data: PreparedData, demo_path: Path, out_dir: Path, kernels: str):
        if kernels not in KERNEL_CHOICES:
            raise UserError(f"train.kernels '{kernels}' is not one of {', '.join(KERNEL_CHOICES)}")
        self.spec, self.data, self.out_dir, self.demo_path = spec, data, out_dir, demo_path
        self.device = device = pick_device(spec)
        obs_norm = ObsNormalizer.fit(data.train.obs if data.obs_fit is None else data.obs_fit, spec.data.obs_keys)
        n_cams = data.train.images.shape[2] if isinstance(data.train.images, np.ndarray) else 0
        instruction = data.demo_set.meta.problem_info.get("language_instruction")
        self.policy = build_policy(spec, data.codec, obs_norm, data.train.obs.shape[-1], n_cams, instruction).to(device)
        net = self.policy.net
        self.fast_cpu = kernels == "fast" and device.type == "cpu" and isinstance(net, DiffusionTransformer)
        self.compiled = "pending" if spec.train.compile else "off"
        if spec.train.compile and spec.train.total_steps < spec.train.compile_min_steps:
            self.compiled = (f"off: {spec.train.total_steps} steps < train.compile_min_steps "
                             f"({spec.train.compile_min_steps}), too few to pay a compile back")
        self.train_kernels = self._train_kernels()
        self.eval_kernels = FAST_EVAL_KERNELS if self.fast_cpu else REFERENCE_KERNELS
        self.kernels = kernels
        # The training step's network call; the policy's own `net` (eager) serves validation and sampling.
        # dynamic=False: the batch shape never changes, and static shapes give inductor the fastest code.
        self.train_net = torch.compile(net, dynamic=False) if self.compiled == "pending" else net
        self.loss_fn = DiffusionLoss(data.codec, spec.loss, device)
        self.state = TrainState.create(spec, net, fused_opt=(kernels == "fast" and device.type == "cpu"))
        self.demo_sha = file_sha256(demo_path)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=(device.type == "cuda" and spec.train.bf16))
        self.train_t = WindowTensors(data.train, device)
        self.val_t = WindowTensors(data.val, device) if data.val is not None else None
        self.data_time = 0.0  # seconds spent gathering batches
        self.init_info: dict = {}  # what train.init_from loaded (kept in every bundle's meta)

    def _train_kernels(self):
        if not (self.fast_cpu and cpu_bf16_matmul()):
            return REFERENCE_KERNELS
        return COMPILED_TRAIN_KERNELS if self.compiled in ("pending", "on") else FAST_TRAIN_KERNELS

    def use_kernels(self, k) -> None:
        if isinstance(self.policy.net, DiffusionTransformer):
            self.policy.net.set_kernels(k)

    def resume_or_init(self, resume: bool) -> Path | None:
        """Continue from the newest bundle in out_dir (same spec, demos, codec), else start from
        train.init_from's weights (every tensor whose name and shape match; ablation.pretrain) or
        the seeded initialisation. Returns the bundle resumed from."""
        prev = latest_bundle(self.out_dir) if resume else None
        init_from = getattr(self.spec.train, "init_from", None)
        if prev is not None:
            check_resumable(prev, self.spec, self.demo_sha, self.data.codec)
            self.state.load_state_dict(read_train_state(prev, self.device))
        elif init_from:
            n, fresh = load_matching(self.policy.net, init_from)
            self.init_info = {"init_from": str(init_from), "init_loaded": n, "init_fresh": fresh}
            if self.state.ema is not None:
                self.state.ema = EMA(self.policy.net, self.spec.train.ema_decay)
        return prev

    def step(self, meter: LossMeter) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """One optimiser step on a fresh batch -> (batch indices, training outputs, grad norm).

        The first compiled step compiles (forward, then backward); if the compiler fails, the step is
        redone eagerly from the same RNG state (nothing was applied yet), and so is the rest of the run."""
        if self.compiled != "pending":
            return self._step(meter)
        rng = self.state.gen.get_state()
        try:
            out = self._step(meter)
        except TrainingDiverged:
            raise
        except Exception as e:  # inductor's BackendCompilerFailed, a missing C++ compiler, ...
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self.compiled = f"failed: {type(e).__name__}: {first}"
            print(f"[train] {self.spec.name}: train.compile: torch.compile failed ({type(e).__name__}: {first}); "
                  "training eagerly instead (same results, slower)", flush=True)
            self.state.gen.set_state(rng)
            self.state.opt.zero_grad(set_to_none=True)
            self.train_net = self.policy.net
            self.train_kernels = self._train_kernels()
            self.use_kernels(self.train_kernels)
            return self._step(meter)
        self.compiled = "on"
        return out

    def _step(self, meter: LossMeter) -> tuple[torch.Tensor, dict, torch.Tensor]:
        st, spec = self.state, self.spec
        t0 = time.perf_counter()
        idx = torch.randint(0, len(self.train_t), (spec.train.batch_size,), generator=st.gen)
        batch = self.train_t.batch(idx)
        self.data_time += time.perf_counter() - t0
        with self.autocast:
            o = self.policy.training_outputs(batch, st.gen, net=self.train_net)
        lo = self.loss_fn(o["pred"], o["target"], o["x0_pred"], o["x0"])
        if not torch.isfinite(lo.total):
            bad = [g for g in SHARES if not torch.isfinite(lo.contrib[g])]
            raise TrainingDiverged(f"{spec.name}: step {st.step + 1}: loss is {float(lo.total.detach())}; non-finite in "
                                   f"group(s) {', '.join(bad) or '?'} (lr {st.sched.get_last_lr()[0]:.3g}); "
                                   "lower train.lr, or check the codec's scales")
        st.opt.zero_grad(set_to_none=True)
        lo.total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(st.opt.param_groups[0]["params"], spec.train.grad_clip,
                                               foreach=True if self.kernels == "fast" else None)
        if not torch.isfinite(gnorm):
            raise TrainingDiverged(f"{spec.name}: step {st.step + 1}: gradient norm is {float(gnorm)} "
                                   "(loss was finite); lower train.lr")
        st.opt.step()
        st.sched.step()
        if st.ema is not None:
            st.ema.update(self.policy.net)
        st.step += 1
        meter.add(lo)
        return idx, o, gnorm

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Training diagnostic on held-out windows, with the eval (EMA) weights:

        val/loss/*, val/nmse/*, val/phys/*  from a ONE-STEP x0 estimate (noise at a random t, one
            network call), like train/*: cheap, but not what a rollout executes;
        val/openloop/*  fully sampled chunks on VAL_OPEN_LOOP_N windows (ablation.openloop).
        The key names stay val/nmse/* (other code reads them); open-loop figures are val/openloop/*.
        """
        if self.val_t is None:
            return {}
        policy, spec = self.policy, self.spec
        self.use_kernels(self.eval_kernels)
        policy.eval()
        try:
            with self.state.eval_weights():
                vgen = torch.Generator().manual_seed(spec.train.seed + 1)
                meter = LossMeter(self.device)
                bs = min(spec.train.batch_size, len(self.val_t))
                for _ in range(VAL_BATCHES):
                    idx = torch.randint(0, len(self.val_t), (bs,), generator=vgen)
                    with self.autocast:
                        o = policy.training_outputs(self.val_t.batch(idx), vgen)
                    meter.add(self.loss_fn(o["pred"], o["target"], o["x0_pred"], o["x0"]))
                m = meter.metrics(self.loss_fn, "val")
                m.update(phys_metrics(policy, o["x0_pred"], self.data.val, idx, "val"))
                ol = open_loop_eval(policy, self.data.val, n=VAL_OPEN_LOOP_N, seed=spec.train.seed)
                m.update({f"val/openloop/{k}": v for k, v in ol.items()})
        finally:
            policy.train()
            self.use_kernels(self.train_kernels)
        return m

    @torch.no_grad()
    def x0_by_t(self) -> dict[str, float]:
        """`x0_error_by_t` on the held-out windows with the eval (EMA) weights; {} without held-out demos."""
        if self.val_t is None:
            return {}
        self.use_kernels(self.eval_kernels)
        self.policy.eval()
        try:
            with self.state.eval_weights(), self.autocast:
                return x0_error_by_t(self.policy, self.val_t, self.loss_fn, batch_size=self.spec.train.batch_size,
                                     seed=self.spec.train.seed + 2)
        finally:
            self.policy.train()
            self.use_kernels(self.train_kernels)

    def checkpoint(self) -> Path:
        st, spec, data = self.state, self.spec, self.data
        meta = {"spec_hash": spec.hash(), "spec_name": spec.name, "step": st.step, "resumed_from": st.resumed_from,
                "model_config": self.policy.cfg.to_dict(),
                "n_params": sum(p.numel() for p in self.policy.net.parameters()),
                "env": {"suite": spec.data.suite, "task": spec.data.task},
                "demo_file": str(self.demo_path.resolve()), "demo_sha256": self.demo_sha,
                "demo_attrs": data.demo_set.meta.attrs, "train_demos": data.train_ids, "val_demos": data.val_ids,
                "versions": versions(), "git_commit": git_commit(), "device": str(self.device),
                "weights": "ema" if st.ema is not None else "raw", "kernels": self.kernels,
                "compiled": self.compiled}
        meta.update(self.init_info or {"init_from": getattr(spec.train, "init_from", None)})
        return write_bundle(self.out_dir, self.policy, meta, st.state_dict(), st.ema.shadow if st.ema else None)

    def final_open_loop(self) -> dict[str, float]:
        """Open-loop figures of the final (EMA) weights on the held-out windows (training ones if none)."""
        if self.state.ema is not None:
            self.policy.net.load_state_dict(self.state.ema.shadow)
        self.use_kernels(self.eval_kernels)
        windows = self.data.val if self.data.val is not None else self.data.train
        return open_loop_eval(self.policy, windows, n=256, seed=self.spec.train.seed)


# ----------------------------------------------------------------------------- the loop

def train(spec: Spec, demo_path: str | Path, out_dir: str | Path, *, on_metrics: MetricsCallback | None = None,
          resume: bool = True, progress: bool = True, data: PreparedData | None = None,
          kernels: str | None = None) -> TrainResult:
    """Train one spec on one demo file; write bundles under out_dir/checkpoints.

    Resumes from the newest bundle in out_dir when `resume` (it must have the same spec hash and
    demo file). Raises TrainingDiverged on a non-finite loss or gradient. `kernels` overrides
    train.kernels ("fast" | "reference"; for benchmarks). Process-wide torch options (threads,
    denormals) are the caller's: see `configure_torch`.
    """
    t_start = time.perf_counter()
    out_dir, demo_path = Path(out_dir), Path(demo_path)
    data = data or prepare_spec_data(spec, demo_path)
    tr = Trainer(spec, data, demo_path, out_dir, kernels or getattr(spec.train, "kernels", "fast"))
    st, tcfg, total = tr.state, spec.train, total_steps(spec)
    ckpt_dir = tr.resume_or_init(resume)
    tr.use_kernels(tr.train_kernels)
    start_step, last = st.step, (st.history[-1][1] if st.history else {})
    meter = LossMeter(tr.device)
    step_time = step_cpu = eval_time = ckpt_time = first_step = first_cpu = 0.0
    bar = tqdm(total=total, initial=st.step, disable=not progress, desc=spec.name, dynamic_ncols=True)
    tr.policy.train()
    t_loop = time.perf_counter()
    while st.step < total:
        t0, c0 = time.perf_counter(), time.process_time()
        idx, o, gnorm = tr.step(meter)
        if st.step == start_step + 1:
            first_step, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        step_time += time.perf_counter() - t0
        step_cpu += time.process_time() - c0
        bar.update(1)
        at_end = st.step == total
        if st.step % tcfg.log_every == 0 or at_end:
            m = meter.metrics(tr.loss_fn, "train")
            m.update(phys_metrics(tr.policy, o["x0_pred"], data.train, idx, "train"))
            m["train/lr"] = st.sched.get_last_lr()[0]
            m["train/grad_norm"] = float(gnorm)
            m["train/samples_per_s"] = (st.step - start_step) * tcfg.batch_size / max(step_time, 1e-9)
            if st.step % tcfg.eval_every == 0 or at_end:
                tv = time.perf_counter()
                m.update(tr.validate())
                if at_end:
                    m.update(tr.x0_by_t())
                eval_time += time.perf_counter() - tv
            meter = LossMeter(tr.device)
            st.history.append((st.step, m))
            last = m
            bar.set_postfix(loss=f"{m['train/loss/total']:.3g}", nmse_pos=f"{m['train/nmse/pos']:.3g}")
            if on_metrics is not None:
                on_metrics(st.step, m)
        if st.step % tcfg.checkpoint_every == 0 or at_end:
            tc = time.perf_counter()
            ckpt_dir = tr.checkpoint()
            ckpt_time += time.perf_counter() - tc
    bar.close()
    loop_wall = time.perf_counter() - t_loop
    ckpt_dir = ckpt_dir or latest_bundle(out_dir)  # resumed a finished run: its bundle
    ol = tr.final_open_loop()
    trained = st.step - start_step
    final = dict(last)
    final.update({f"openloop/{k}": v for k, v in ol.items()})
    return TrainResult(final=final, history=st.history, checkpoint_dir=Path(ckpt_dir),
                       wall_time_s=time.perf_counter() - t_start,
                       samples_per_s=trained * tcfg.batch_size / max(step_time, 1e-9), steps=st.step,
                       data_time_share=tr.data_time / max(step_time, 1e-9), loop_wall_s=loop_wall,
                       eval_time_s=eval_time, checkpoint_time_s=ckpt_time, step_cpu_s=step_cpu, open_loop=ol,
                       compiled=tr.compiled, first_step_s=first_step, first_step_cpu_s=first_cpu)
