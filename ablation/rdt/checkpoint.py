"""Strict loading and saving of official-layout RDT checkpoints.

Accepted layouts (looked up in this order inside a checkpoint directory):

    config.json + model.safetensors                      (save_pretrained with safetensors)
    config.json + pytorch_model.bin                      (the hub files; bf16 state_dict)
    pytorch_model/mp_rank_00_model_states.pt             (DeepSpeed training checkpoint, under ["module"])
    ema/model.safetensors                                (EMA weights of a training checkpoint)

config.json is searched in the directory, then in ema/, then in the parent directory (training
checkpoints `checkpoint-N/` sit beside the run's config). The official loader uses strict=False,
so a wrong checkpoint silently keeps random weights; here every mismatch is an error.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Optional

import torch

from ..errors import UserError
from .model import RDTConfig, RDTRunner

log = logging.getLogger(__name__)

WEIGHTS_SAFETENSORS = "model.safetensors"
WEIGHTS_BIN = "pytorch_model.bin"
WEIGHTS_DEEPSPEED = "pytorch_model/mp_rank_00_model_states.pt"
WEIGHTS_EMA = "ema/model.safetensors"
CONFIG_NAME = "config.json"

WeightsChoice = Literal["auto", "model", "ema"]
Layout = Literal["bin", "safetensors", "deepspeed", "ema"]

_EXPECTED = (f"{CONFIG_NAME} plus one of {WEIGHTS_SAFETENSORS}, {WEIGHTS_BIN}, "
             f"{WEIGHTS_DEEPSPEED} or {WEIGHTS_EMA}")


class RDTCheckpointError(UserError):
    """An RDT checkpoint is missing, unreadable or does not match its config; the message names the file."""


def find_weights_file(ckpt_dir: Path, weights: WeightsChoice = "auto") -> Path:
    """The weights file in `ckpt_dir`: plain weights first, then DeepSpeed, then EMA ('auto'),
    only plain/DeepSpeed ('model'), or only EMA ('ema')."""
    candidates = {
        "auto": (WEIGHTS_SAFETENSORS, WEIGHTS_BIN, WEIGHTS_DEEPSPEED, WEIGHTS_EMA),
        "model": (WEIGHTS_SAFETENSORS, WEIGHTS_BIN, WEIGHTS_DEEPSPEED),
        "ema": (WEIGHTS_EMA,),
    }[weights]
    for name in candidates:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    raise RDTCheckpointError(f"no RDT weights in {ckpt_dir} (weights={weights!r}); expected {', '.join(candidates)}")


def find_config_file(ckpt_dir: Path) -> Path:
    for candidate in (ckpt_dir / CONFIG_NAME, ckpt_dir / "ema" / CONFIG_NAME, ckpt_dir.parent / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    raise RDTCheckpointError(f"no {CONFIG_NAME} for the RDT checkpoint in {ckpt_dir} (looked in it, ema/ and its "
                             f"parent); an RDT checkpoint directory holds {_EXPECTED}")


def read_config(path: Path) -> RDTConfig:
    try:
        raw = json.loads(path.read_text())
        return RDTConfig.from_official_config_json(raw)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise RDTCheckpointError(f"{path}: not a valid RDT config.json ({exc})") from None


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a weights file on CPU, in their stored dtype. Pickles load with weights_only=True
    unless allow_pickle (only for files you trust)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear user error
        hint = "" if allow_pickle or path.suffix == ".safetensors" else (
            "; if you trust the file, retry with allow_pickle=True (it may hold non-tensor objects)")
        raise RDTCheckpointError(f"cannot read RDT weights {path}: {type(exc).__name__}: {exc}{hint}") from None
    if path.name == Path(WEIGHTS_DEEPSPEED).name:
        if not isinstance(obj, Mapping) or "module" not in obj:
            raise RDTCheckpointError(f"{path}: a DeepSpeed model-states file must hold the weights under ['module']")
        obj = obj["module"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RDTCheckpointError(f"{path}: expected a flat state_dict of tensors, got {type(obj).__name__}")
    state = dict(obj)
    # DataParallel / accelerate-unwrapped copies sometimes keep a "module." prefix on every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shape(t: torch.Tensor | torch.Size) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                     source: Path | str, config: Optional[RDTConfig] = None, max_listed: int = 20) -> None:
    """Raise RDTCheckpointError listing missing, unexpected and mis-shaped keys, if any."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [k for k in expected if k in found and _shape(expected[k]) != _shape(found[k])]
    if not (missing or unexpected or misshaped):
        return
    arch = (f" (config: depth {config.depth}, hidden {config.hidden_size}, heads {config.num_heads})"
            if config is not None else "")
    lines = [f"RDT checkpoint {source} does not match the model{arch}: {len(missing)} missing, "
             f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped key(s)"]

    def listed(keys: list[str], fmt) -> None:
        lines.extend("  " + fmt(k) for k in keys[:max_listed])
        if len(keys) > max_listed:
            lines.append(f"  ... and {len(keys) - max_listed} more")

    listed(missing, lambda k: f"missing: {k} (expected {_shape(expected[k])})")
    listed(unexpected, lambda k: f"unexpected: {k} (found {_shape(found[k])})")
    listed(misshaped, lambda k: f"mis-shaped: {k} expected {_shape(expected[k])}, found {_shape(found[k])}")
    if misshaped and all(found[k].numel() == 0 for k in misshaped):
        lines.append("  hint: empty tensors suggest a ZeRO-3 partitioned DeepSpeed checkpoint; consolidate it "
                     "first with DeepSpeed's zero_to_fp32.py")
    raise RDTCheckpointError("\n".join(lines))


def load_rdt_checkpoint(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    weights: WeightsChoice = "auto",
    config: Optional[RDTConfig] = None,
    allow_pickle: bool = False,
) -> tuple[RDTRunner, RDTConfig]:
    """Load an official-layout RDT checkpoint strictly; returns (model in eval mode, its config).

    `path` is a checkpoint directory or a weights file inside one. Every tensor is cast to `dtype`
    (hub files are bf16; fp32 is what the golden fixture was computed in) and moved to `device`.
    """
    path = Path(path)
    if not path.exists():
        raise RDTCheckpointError(f"RDT checkpoint {path} does not exist; expected a directory with {_EXPECTED}")
    if path.is_file():
        weights_file = path
        # ema/model.safetensors and pytorch_model/mp_rank_00_model_states.pt sit one level down.
        ckpt_dir = path.parent.parent if path.parent.name in ("ema", "pytorch_model") else path.parent
    else:
        ckpt_dir = path
        weights_file = find_weights_file(ckpt_dir, weights)
    cfg = config if config is not None else read_config(find_config_file(ckpt_dir))
    state = read_state_dict(weights_file, allow_pickle=allow_pickle)

    # Build without allocating or initialising (1B params would take seconds), then adopt the
    # loaded tensors directly.
    model = RDTRunner(cfg, dtype=dtype, device="meta", init_weights=False)
    check_state_dict(model.state_dict(), state, weights_file, cfg)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    log.info("loaded RDT (%d params) from %s", sum(p.numel() for p in model.parameters()), weights_file)
    return model, cfg


def save_rdt_checkpoint(
    model: RDTRunner,
    config: RDTConfig,
    directory: str | Path,
    *,
    layout: Layout = "bin",
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write config.json and the weights in an official layout; returns the weights file path.

    layout: 'bin' (pytorch_model.bin, as on the hub), 'safetensors' (model.safetensors),
    'deepspeed' (pytorch_model/mp_rank_00_model_states.pt with ["module"]) or 'ema'
    (ema/model.safetensors). dtype casts every tensor (the hub ships bf16).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config.to_official_config_json(), indent=2, sort_keys=True) + "\n")
    state = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    target = directory / {"bin": WEIGHTS_BIN, "safetensors": WEIGHTS_SAFETENSORS,
                          "deepspeed": WEIGHTS_DEEPSPEED, "ema": WEIGHTS_EMA}[layout]
    target.parent.mkdir(parents=True, exist_ok=True)
    if layout in ("safetensors", "ema"):
        from safetensors.torch import save_file

        save_file(state, str(target))
    elif layout == "deepspeed":
        torch.save({"module": state, "global_steps": 0, "ds_version": "unknown"}, target)
    else:
        torch.save(state, target)
    return target
