"""What a training step changes and a bundle saves for resuming: optimiser, LR schedule, EMA, RNG.

Also the device the spec trains on, and whether this CPU multiplies bf16 natively.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import UserError
from .spec import Spec


class EMA:
    """Exponential moving average of parameters (decay warms up as (1+k)/(10+k))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self._bind(model)

    def _bind(self, model: torch.nn.Module) -> None:
        sd = model.state_dict()  # tensors that share storage with the model's (updated in place)
        self._float = [(self.shadow[k], v) for k, v in sd.items() if v.dtype.is_floating_point]
        self._other = [(self.shadow[k], v) for k, v in sd.items() if not v.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._float:
            src = [v if v.dtype == torch.float32 else v.float() for _, v in self._float]
            torch._foreach_lerp_([s for s, _ in self._float], src, 1.0 - d)
        for s, v in self._other:
            s.copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, d: dict, model: torch.nn.Module) -> None:
        self.decay, self.updates = d["decay"], d["updates"]
        self.shadow = {k: v.clone() for k, v in d["shadow"].items()}
        self._bind(model)


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


def cpu_bf16_matmul() -> bool:
    """Whether oneDNN multiplies bf16 natively here (AVX512-BF16 / AMX); elsewhere bf16 would be emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def total_steps(spec: Spec) -> int:
    return int(getattr(spec.train, "total_steps", spec.train.steps))


@dataclass
class TrainState:
    """What a step changes and a bundle saves for resuming: optimiser, schedule, EMA, RNG, history."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    gen: torch.Generator
    step: int = 0
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    resumed_from: int | None = None

    @classmethod
    def create(cls, spec: Spec, net: torch.nn.Module, fused_opt: bool) -> "TrainState":
        opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay,
                                **({"fused": True} if fused_opt else {}))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec.train.warmup_steps, total_steps(spec)))
        ema = EMA(net, spec.train.ema_decay) if spec.train.ema else None
        return cls(net, opt, sched, ema, torch.Generator().manual_seed(spec.train.seed))

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "lr_scheduler": self.sched.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "history": self.history}

    def load_state_dict(self, st: dict) -> None:
        fused = [g.get("fused") for g in self.opt.param_groups]
        self.net.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        for g, f in zip(self.opt.param_groups, fused):  # keep this run's optimiser kernel
            g["fused"] = f
        self.sched.load_state_dict(st["lr_scheduler"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.load_state_dict(st["ema"], self.net)
        self.gen.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        self.step, self.history = st["step"], [(s, m) for s, m in st.get("history", [])]
        self.resumed_from = self.step

    @contextlib.contextmanager
    def eval_weights(self):
        """The EMA weights swapped in (when EMA is on), the raw ones restored after."""
        if self.ema is None:
            yield
            return
        raw = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(self.ema.shadow)
        try:
            yield
        finally:
            self.net.load_state_dict(raw)
