"""The trainer (no tracking inside: metrics go to an `on_metrics(step, metrics)` callback).

    train(spec, demo_path, out_dir)          -> TrainResult
    open_loop_eval(policy, windows, n=...)   -> flat dict of open-loop figures

One step: sample a batch (with replacement, from one seeded generator that also draws the noise
and timesteps, so a run is a pure function of its seed and resumes exactly), noise the chunk,
predict, reduce the loss per group (ablation.loss), AdamW step with clipping and warmup+cosine LR.

Metrics passed to on_metrics every train.log_every steps (losses averaged over those steps):
    train/loss/{total,pos,rot,grip,pad}   shares of the loss; pos+rot+grip+pad == total (pad: unfilled
                                          slots, non-zero under rdt_mean only)
    train/nmse/{pos,rot,grip}             x0 error / group variance (x0 from one denoising step at a random t)
    train/phys/{pos_mm,rot_deg,grip}      that x0 decoded to physical units, last batch, valid steps
    train/lr, train/grad_norm, train/samples_per_s
    every train.eval_every steps also val/loss/*, val/nmse/*, val/phys/* (held-out demos) and
    val/openloop/* (sampled chunks; see open_loop_eval)

Out dir layout:
    out_dir/checkpoints/step_0001000/   the newest bundle (see ablation.policy); older ones are removed
    out_dir/checkpoints/.tmp_*          a bundle being written; renamed when complete
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .codec import ActionCodec, CodecError
from .data import PreparedData, Windows, prepare_data
from .errors import UserError
from .loss import SHARES, DiffusionLoss, physical_errors
from .policy import DiffusionPolicy, ObsNormalizer, build_policy
from .provenance import file_sha256, git_commit, versions
from .rotation import rot6d_to_matrix
from .spec import GROUPS, Spec

MetricsCallback = Callable[[int, dict[str, float]], None]
VAL_BATCHES = 4        # batches of held-out windows per validation
VAL_OPEN_LOOP_N = 64   # sampled windows for the open-loop figures logged during training


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
    open_loop: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- batches

class WindowTensors:
    """Training windows as tensors on the training device; gathers batches by index."""

    def __init__(self, w: Windows, device: torch.device):
        self.windows = w
        self.obs = torch.as_tensor(w.obs, device=device)
        self.state = torch.as_tensor(w.state, device=device)
        self.actions = torch.as_tensor(w.actions, device=device)
        self.valid = torch.as_tensor(w.action_valid, device=device)
        self.images = torch.as_tensor(w.images, device=device) if w.images is not None else None

    def __len__(self) -> int:
        return self.obs.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.obs.device)
        b = {"obs": self.obs[idx], "state": self.state[idx], "actions": self.actions[idx], "valid": self.valid[idx]}
        if self.images is not None:
            b["images"] = self.images[idx]
        return b


# ----------------------------------------------------------------------------- helpers

class EMA:
    """Exponential moving average of parameters (decay warms up as (1+k)/(10+k))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, d: dict) -> None:
        self.decay, self.updates = d["decay"], d["updates"]
        self.shadow = {k: v.clone() for k, v in d["shadow"].items()}


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to the spec lr, then cosine decay to 0 at `total` steps."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def pick_device(spec: Spec) -> torch.device:
    want = spec.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda, but no CUDA device is available; use auto or cpu")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


# ----------------------------------------------------------------------------- metrics

def batch_metrics(policy: DiffusionPolicy, loss_fn: DiffusionLoss, out, x0_pred: torch.Tensor,
                  phys_true: np.ndarray, valid: np.ndarray, prefix: str,
                  loss_sums: dict[str, float], mse_sums: dict[str, float], n: int) -> dict[str, float]:
    """Namespaced metrics from summed per-group losses over n steps, plus physical errors of one batch."""
    m = {f"{prefix}/loss/total": loss_sums["total"] / n}
    for g in (*GROUPS, "pad"):
        m[f"{prefix}/loss/{g}"] = loss_sums[g] / n
    nmse = loss_fn.nmse({g: mse_sums[g] / n for g in GROUPS})
    for g in GROUPS:
        m[f"{prefix}/nmse/{g}"] = nmse[g]
    pred_phys = policy.codec.decode(x0_pred.detach().float().cpu().numpy())
    for k, v in physical_errors(policy.codec, pred_phys, phys_true, valid).items():
        m[f"{prefix}/phys/{k}"] = v
    return m


def _chunk_poses(codec: ActionCodec, w: Windows, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EEF pose before each chunk step, (n,H,3), (n,H,3,3), as if the arm followed the demo.

    Step 0 uses the window's pose; step h>0 the demo's target of step h-1, which for absolute
    representations is the pose reached after it. Delta representations do not read the pose.
    """
    H = w.phys_actions.shape[1]
    pos = np.repeat(w.ee_pos[idx][:, None], H, axis=1)
    rot = np.repeat(w.ee_rot[idx][:, None], H, axis=1)
    gi = codec.rep.group_index
    phys = w.phys_actions[idx]
    if codec.spec.representation == "abs_pose":
        pos[:, 1:] = phys[:, :-1][..., gi["pos"]]
    if codec.spec.representation in ("abs_pose", "seed_mix"):
        rot[:, 1:] = rot6d_to_matrix(phys[:, :-1][..., gi["rot"]])
    return pos, rot


@torch.no_grad()
def open_loop_eval(policy: DiffusionPolicy, windows: Windows, n: int = 256, seed: int = 0,
                   batch_size: int = 256) -> dict[str, float]:
    """Sample chunks for up to n evenly spaced windows and compare them with the demo.

    Returns: pos_mm / rot_deg / grip (mean physical errors of the sampled chunks over valid steps),
    nmse/{g} (model-space group MSE / group variance), clip_fraction and max_excess (decoded env
    actions outside [-1, 1] before clipping, arm dims, all chunk steps) with demo_clip_fraction for
    reference, pos_step_max_m and pos_step_ratio (largest commanded position step / largest in the
    training data: far above 1 is the seed's failure), std_ratio/{g} (std of predicted / demo
    physical actions, mean over the group's dims; NaN when the demo group is constant, flagged by
    const/{g} = 1), n_windows.
    """
    was_training = policy.training
    policy.eval()
    codec, dev = policy.codec, policy.device
    N = len(windows)
    idx = np.unique(np.linspace(0, N - 1, min(n, N)).round().astype(int))
    wt = WindowTensors(windows, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    preds = []
    for s in range(0, len(idx), batch_size):
        b = {k: v.to(dev) for k, v in wt.batch(torch.as_tensor(idx[s:s + batch_size])).items()}
        preds.append(policy.sample(b, generator=gen).float().cpu().numpy())
    pred = np.concatenate(preds).astype(np.float64)                        # (n, H, W)
    true_model = windows.actions[idx].astype(np.float64)
    pred_phys, true_phys = codec.decode(pred), windows.phys_actions[idx]    # (n, H, D)
    valid = windows.action_valid[idx]
    out: dict[str, float] = dict(physical_errors(codec, pred_phys, true_phys, valid))
    var = codec.group_variance_model()
    for g, slots in codec.group_slots.items():
        out[f"nmse/{g}"] = float(np.mean((pred[..., slots] - true_model[..., slots]) ** 2) / max(var[g], 1e-12))
    pos, rot = _chunk_poses(codec, windows, idx)
    H = pred.shape[1]
    env = codec.to_env(pred.reshape(-1, pred.shape[-1]), pos.reshape(-1, 3), rot.reshape(-1, 3, 3))
    demo_env = codec.rep.to_env(true_phys.reshape(-1, true_phys.shape[-1]), pos.reshape(-1, 3), rot.reshape(-1, 3, 3))
    out["clip_fraction"] = env.clip_fraction
    out["max_excess"] = env.max_excess
    out["demo_clip_fraction"] = demo_env.clip_fraction
    step_max = float(np.abs(env.pos_step_m).max())
    out["pos_step_max_m"] = step_max
    out["pos_step_ratio"] = step_max / max(float(codec.stats.get("pos_step_m", {}).get("absmax", 0.0)), 1e-9)
    for g, gi in codec.rep.group_index.items():
        sp = pred_phys.reshape(-1, pred_phys.shape[-1])[:, gi].std(0)
        sd = true_phys.reshape(-1, true_phys.shape[-1])[:, gi].std(0)
        ok = sd > 1e-9
        out[f"std_ratio/{g}"] = float(np.mean(sp[ok] / sd[ok])) if ok.any() else float("nan")
        out[f"const/{g}"] = 0.0 if ok.any() else 1.0
    out["n_windows"] = float(len(idx))
    out["horizon"] = float(H)
    policy.train(was_training)
    return out


# ----------------------------------------------------------------------------- checkpoints

def _ckpt_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_bundle(out_dir: Path) -> Path | None:
    """The newest complete bundle under out_dir/checkpoints (temp dirs are ignored)."""
    root = _ckpt_root(out_dir)
    if not root.is_dir():
        return None
    steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
                    and (p / "meta.json").is_file()), key=lambda p: int(p.name.split("_")[1]))
    return steps[-1] if steps else None


def save_bundle(out_dir: Path, policy: DiffusionPolicy, meta: dict, train_state: dict, ema: EMA | None) -> Path:
    """Write the bundle to a temp dir, then rename: a crash never leaves a half bundle."""
    root = _ckpt_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    step = meta["step"]
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v for k, v in ema.shadow.items()} if ema is not None else None
    policy.save_weights(tmp, weights)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    torch.save(train_state, tmp / "train_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in root.iterdir():  # keep only the newest bundle
        if old.is_dir() and old.name.startswith("step_") and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- the trainer

def train(spec: Spec, demo_path: str | Path, out_dir: str | Path, *, on_metrics: MetricsCallback | None = None,
          resume: bool = True, progress: bool = True, data: PreparedData | None = None) -> TrainResult:
    """Train one spec on one demo file; write bundles under out_dir/checkpoints.

    Resumes from the newest bundle in out_dir when `resume` (it must have the same spec hash and
    demo file). Raises TrainingDiverged on a non-finite loss or gradient.
    """
    torch.set_flush_denormal(True)  # unnormalised tiny actions make denormals: ~5x slower on CPU
    if spec.train.num_threads:
        torch.set_num_threads(spec.train.num_threads)
    device = pick_device(spec)
    out_dir, demo_path = Path(out_dir), Path(demo_path)
    t_start = time.perf_counter()

    data = data or prepare_data(spec.data, spec.codec, demo_path)
    codec = data.codec
    obs_norm = ObsNormalizer.fit(data.train.obs, spec.data.obs_keys)
    n_cams = data.train.images.shape[2] if data.train.images is not None else 0
    instruction = data.demo_set.meta.problem_info.get("language_instruction")
    policy = build_policy(spec, codec, obs_norm, data.train.obs.shape[-1], n_cams, instruction).to(device)
    net = policy.net
    loss_fn = DiffusionLoss(codec, spec.loss, device)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec.train.warmup_steps, spec.train.steps))
    ema = EMA(net, spec.train.ema_decay) if spec.train.ema else None
    gen = torch.Generator().manual_seed(spec.train.seed)
    demo_sha = file_sha256(demo_path)
    history: list[tuple[int, dict[str, float]]] = []
    step = 0
    resumed_from: int | None = None

    prev = latest_bundle(out_dir) if resume else None
    if prev is not None:
        meta = json.loads((prev / "meta.json").read_text())
        if meta.get("spec_hash") != spec.hash():
            raise UserError(f"{out_dir}: holds a run of another spec (hash {meta.get('spec_hash')}, this spec "
                            f"{spec.hash()}); use another --out, or resume=False to start over there")
        if meta.get("demo_sha256") != demo_sha:
            raise UserError(f"{out_dir}: was trained on another demo file ({meta.get('demo_file')}); "
                            "use another --out")
        saved = ActionCodec.load(prev / "codec.json", expected=spec.codec)
        if json.dumps(saved.to_json(), sort_keys=True) != json.dumps(codec.to_json(), sort_keys=True):
            raise CodecError(f"{prev / 'codec.json'}: differs from the codec fitted now on the same data")
        st = torch.load(prev / "train_state.pt", map_location=device, weights_only=False)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["lr_scheduler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        gen.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step, history = st["step"], [(s, m) for s, m in st.get("history", [])]
        resumed_from = step

    if spec.train.compile:
        net.compile()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=(device.type == "cuda" and spec.train.bf16))
    train_t = WindowTensors(data.train, device)
    val_t = WindowTensors(data.val, device) if data.val is not None else None

    def meta_now(at: int) -> dict:
        return {"spec_hash": spec.hash(), "spec_name": spec.name, "step": at, "resumed_from": resumed_from,
                "model_config": policy.cfg.to_dict(),
                "n_params": sum(p.numel() for p in net.parameters()),
                "env": {"suite": spec.data.suite, "task": spec.data.task},
                "demo_file": str(demo_path.resolve()), "demo_sha256": demo_sha,
                "demo_attrs": data.demo_set.meta.attrs, "train_demos": data.train_ids, "val_demos": data.val_ids,
                "versions": versions(), "git_commit": git_commit(), "device": str(device),
                "weights": "ema" if ema is not None else "raw"}

    def checkpoint(at: int) -> Path:
        state = {"step": at, "model": net.state_dict(), "optimizer": opt.state_dict(),
                 "lr_scheduler": sched.state_dict(), "ema": ema.state_dict() if ema else None,
                 "rng": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history}
        return save_bundle(out_dir, policy, meta_now(at), state, ema)

    def with_eval_weights(fn):
        """Run fn with the EMA weights swapped in (when EMA is on)."""
        if ema is None:
            return fn()
        raw = {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(ema.shadow)
        try:
            return fn()
        finally:
            net.load_state_dict(raw)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        if val_t is None:
            return {}
        policy.eval()
        vgen = torch.Generator().manual_seed(spec.train.seed + 1)
        sums = {k: 0.0 for k in ("total", *GROUPS, "pad")}
        mse = {g: 0.0 for g in GROUPS}
        bs = min(spec.train.batch_size, len(val_t))
        for _ in range(VAL_BATCHES):
            idx = torch.randint(0, len(val_t), (bs,), generator=vgen)
            b = val_t.batch(idx)
            with autocast:
                o = policy.training_outputs(b, vgen)
            lo = loss_fn(o["pred"], o["target"], o["x0_pred"], o["x0"])
            sums["total"] += float(lo.total)
            for g in (*GROUPS, "pad"):
                sums[g] += float(lo.contrib[g])
            for g in GROUPS:
                mse[g] += float(lo.mse[g])
        ni = idx.cpu().numpy()
        m = batch_metrics(policy, loss_fn, lo, o["x0_pred"], data.val.phys_actions[ni],
                          data.val.action_valid[ni], "val", sums, mse, VAL_BATCHES)
        ol = open_loop_eval(policy, data.val, n=VAL_OPEN_LOOP_N, seed=spec.train.seed)
        m.update({f"val/openloop/{k}": v for k, v in ol.items()})
        policy.train()
        return m

    # Running sums on the device (no sync per step): total | pos rot grip pad shares | pos rot grip mse
    acc = torch.zeros(8, device=device)
    n_acc, data_time, step_time, start_step = 0, 0.0, 0.0, step
    eval_time, ckpt_time = 0.0, 0.0
    last: dict[str, float] = history[-1][1] if history else {}
    bar = tqdm(total=spec.train.steps, initial=step, disable=not progress, desc=spec.name, dynamic_ncols=True)
    policy.train()
    ckpt_dir = prev
    t_loop = time.perf_counter()
    while step < spec.train.steps:
        t0 = time.perf_counter()
        idx = torch.randint(0, len(train_t), (spec.train.batch_size,), generator=gen)
        batch = train_t.batch(idx)
        t1 = time.perf_counter()
        with autocast:
            o = policy.training_outputs(batch, gen)
        lo = loss_fn(o["pred"], o["target"], o["x0_pred"], o["x0"])
        if not torch.isfinite(lo.total):
            bad = [g for g in (*GROUPS, "pad") if not torch.isfinite(lo.contrib[g])]
            raise TrainingDiverged(f"{spec.name}: step {step + 1}: loss is {float(lo.total.detach())}; non-finite in "
                                   f"group(s) {', '.join(bad) or '?'} (lr {sched.get_last_lr()[0]:.3g}); "
                                   "lower train.lr, or check the codec's scales")
        opt.zero_grad(set_to_none=True)
        lo.total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), spec.train.grad_clip)
        if not torch.isfinite(gnorm):
            raise TrainingDiverged(f"{spec.name}: step {step + 1}: gradient norm is {float(gnorm)} "
                                   "(loss was finite); lower train.lr")
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(net)
        step += 1
        with torch.no_grad():
            acc += torch.cat([lo.total.detach()[None], lo.contrib_vec.detach(), lo.mse_vec.detach()])
        n_acc += 1
        t2 = time.perf_counter()
        data_time += t1 - t0
        step_time += t2 - t0
        bar.update(1)

        if step % spec.train.log_every == 0 or step == spec.train.steps:
            ni = idx.cpu().numpy()
            a = acc.tolist()
            sums = dict(zip(("total", *SHARES), a[:5]))
            mse_sums = dict(zip(GROUPS, a[5:]))
            m = batch_metrics(policy, loss_fn, lo, o["x0_pred"], data.train.phys_actions[ni],
                              data.train.action_valid[ni], "train", sums, mse_sums, n_acc)
            m["train/lr"] = sched.get_last_lr()[0]
            m["train/grad_norm"] = float(gnorm)
            m["train/samples_per_s"] = (step - start_step) * spec.train.batch_size / max(step_time, 1e-9)
            if step % spec.train.eval_every == 0 or step == spec.train.steps:
                tv = time.perf_counter()
                m.update(with_eval_weights(validate))
                eval_time += time.perf_counter() - tv
            acc.zero_()
            n_acc = 0
            history.append((step, m))
            last = m
            bar.set_postfix(loss=f"{m['train/loss/total']:.3g}", nmse_pos=f"{m['train/nmse/pos']:.3g}")
            if on_metrics is not None:
                on_metrics(step, m)
        if step % spec.train.checkpoint_every == 0 or step == spec.train.steps:
            tc = time.perf_counter()
            ckpt_dir = checkpoint(step)
            ckpt_time += time.perf_counter() - tc
    bar.close()
    loop_wall = time.perf_counter() - t_loop
    if ckpt_dir is None:  # resumed a finished run
        ckpt_dir = latest_bundle(out_dir)
    eval_windows = data.val if data.val is not None else data.train
    if ema is not None:
        net.load_state_dict(ema.shadow)
    ol = open_loop_eval(policy, eval_windows, n=256, seed=spec.train.seed)
    wall = time.perf_counter() - t_start
    trained = step - start_step
    final = dict(last)
    final.update({f"openloop/{k}": v for k, v in ol.items()})
    return TrainResult(final=final, history=history, checkpoint_dir=Path(ckpt_dir), wall_time_s=wall,
                       samples_per_s=trained * spec.train.batch_size / max(step_time, 1e-9), steps=step,
                       data_time_share=data_time / max(step_time, 1e-9), loop_wall_s=loop_wall, eval_time_s=eval_time,
                       checkpoint_time_s=ckpt_time, open_loop=ol)
