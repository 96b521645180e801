"""Checkpoint bundles: reading and writing, in one place.

A bundle is a directory, written whole or not at all (temp dir, then rename):

    model.safetensors   network weights (EMA weights when train.ema)
    codec.json          ActionCodec.save: the action/state normaliser the policy was trained with
    obs_norm.json       mean/std of the low-dim observation features, in data.obs_keys order
    spec.yaml           the resolved spec
    meta.json           spec_hash, step, model config, env metadata, demo file + sha256, versions, git commit
    train_state.pt      optimizer / LR scheduler / EMA / step / RNG, for resuming (not needed to act)

A run's bundles live under `<out_dir>/checkpoints/step_NNNNNNN/`; only the newest is kept, and
`.tmp_*` directories are bundles being written (ignored when reading).

`load_policy` loads the codec strictly: a missing codec.json, or one fitted for another codec
spec, raises `CodecError`; there is no fallback to defaults.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .codec import ActionCodec, CodecError
from .diskfull import disk_full_as_error
from .errors import UserError
from .model import DiTConfig
from .policy import DiffusionPolicy, ObsNormalizer, PolicyError
from .spec import Spec, spec_from_dict

WEIGHTS, CODEC, OBS_NORM, SPEC, META, TRAIN_STATE = (
    "model.safetensors", "codec.json", "obs_norm.json", "spec.yaml", "meta.json", "train_state.pt")
# What a policy needs to act (load_policy): the run's checkpoint artifact. train_state.pt (optimiser, EMA,
# RNG: about twice the weights) only resumes training, which happens in the run's own folder.
POLICY_FILES = (WEIGHTS, CODEC, OBS_NORM, SPEC, META)


# ----------------------------------------------------------------------------- writing

def ckpt_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def save_weights(policy: DiffusionPolicy, bundle: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """What a policy needs to act: weights (fp32), codec, observation normaliser, spec."""
    sd = state_dict if state_dict is not None else policy.net.state_dict()
    save_file({k: v.detach().float().cpu().contiguous() for k, v in sd.items()}, str(bundle / WEIGHTS))
    policy.codec.save(bundle / CODEC)
    policy.obs_norm.save(bundle / OBS_NORM)
    (bundle / SPEC).write_text(policy.spec.to_yaml())


def write_bundle(out_dir: str | Path, policy: DiffusionPolicy, meta: dict, train_state: dict,
                 weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `<out_dir>/checkpoints/step_<meta.step>` via a temp dir and a rename (a crash never
    leaves half a bundle), then remove the older bundles. `weights`: what to store as the policy's
    weights (e.g. the EMA shadow); default the network's own."""
    root = ckpt_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    step = meta["step"]
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sd = weights if weights is not None else policy.net.state_dict()
    needed = 4 * sum(v.numel() for v in sd.values()) + _tensor_bytes(train_state)  # weights are stored fp32
    with disk_full_as_error(final, needed, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        save_weights(policy, tmp, weights)
        (tmp / META).write_text(json.dumps(meta, indent=1, default=str))
        with open(tmp / TRAIN_STATE, "wb") as f:  # a Python file: a full disk surfaces as its OSError
            torch.save(train_state, f)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in root.iterdir():  # keep only the newest bundle
        if old.is_dir() and old.name.startswith("step_") and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _tensor_bytes(obj) -> int:
    """The bytes of the tensors in a nested dict/list (optimizer state, EMA): most of a train_state file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


# ----------------------------------------------------------------------------- reading

def latest_bundle(out_dir: str | Path) -> Path | None:
    """The newest complete bundle under out_dir/checkpoints (temp dirs are ignored)."""
    root = ckpt_root(out_dir)
    if not root.is_dir():
        return None
    steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
                    and (p / META).is_file()), key=lambda p: int(p.name.split("_")[1]))
    return steps[-1] if steps else None


def read_meta(bundle: str | Path) -> dict:
    return json.loads((Path(bundle) / META).read_text())


def read_train_state(bundle: str | Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(Path(bundle) / TRAIN_STATE, map_location=device, weights_only=False)


def check_resumable(bundle: Path, spec: Spec, demo_sha: str, codec: ActionCodec) -> dict:
    """The bundle's meta, after checking it continues this spec on this demo file with this codec."""
    meta = read_meta(bundle)
    out_dir = bundle.parent.parent
    # The saved spec's identity, not meta's hash: a run resumes under other resource settings (NOT_IDENTITY),
    # and a bundle of an older workdir carries the legacy hash in its meta.
    saved_spec = spec_from_dict(yaml.safe_load((bundle / SPEC).read_text()), str(bundle / SPEC))
    if saved_spec.hash() != spec.hash():
        raise UserError(f"{out_dir}: holds a run of another spec (hash {saved_spec.hash()}, this spec "
                        f"{spec.hash()}); use another --out, or resume=False to start over there")
    if meta.get("demo_sha256") != demo_sha:
        raise UserError(f"{out_dir}: was trained on another demo file ({meta.get('demo_file')}); use another --out")
    saved = ActionCodec.load(bundle / CODEC, expected=spec.codec)
    if json.dumps(saved.to_json(), sort_keys=True) != json.dumps(codec.to_json(), sort_keys=True):
        raise CodecError(f"{bundle / CODEC}: differs from the codec fitted now on the same data")
    return meta


def load_policy(bundle_dir: str | Path, device: str | torch.device = "cpu") -> DiffusionPolicy:
    """Load a checkpoint bundle. The codec comes from the bundle's codec.json and nowhere else."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise PolicyError(f"{bundle}: checkpoint directory not found")
    for name in (SPEC, META, WEIGHTS):
        if not (bundle / name).is_file():
            raise PolicyError(f"{bundle / name}: missing; not a complete checkpoint bundle")
    spec = spec_from_dict(yaml.safe_load((bundle / SPEC).read_text()), str(bundle / SPEC))
    meta = read_meta(bundle)
    if meta.get("spec_hash") not in (spec.hash(), spec.legacy_hash()):  # legacy: a bundle of an older workdir
        raise PolicyError(f"{bundle}: spec.yaml hashes to {spec.hash()} but meta.json says {meta.get('spec_hash')}; "
                          "the bundle was edited or mixed from two runs")
    codec = ActionCodec.load(bundle / CODEC, expected=spec.codec)
    obs_norm = ObsNormalizer.load(bundle / OBS_NORM)
    mc = dict(meta["model_config"])
    net = None
    if mc.get("kind") == "rdt":
        from .rdt.adapter import RDTNetConfig, build_rdt_net

        cfg = RDTNetConfig(**mc)
        net = build_rdt_net(cfg)  # buffers and weights come from model.safetensors below
    else:
        cfg = DiTConfig(**mc)
    policy = DiffusionPolicy(spec, codec, obs_norm, cfg, seed=spec.train.seed, net=net)
    state = load_file(str(bundle / WEIGHTS))
    missing, unexpected = policy.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PolicyError(f"{bundle / WEIGHTS}: weights do not fit the model "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return policy.to(device).eval()


def load_matching(module, bundle: str | Path) -> tuple[int, list[str]]:
    """Copy every tensor of `bundle`'s weights whose name and shape match `module`'s. Returns (number
    loaded, names left at their fresh initialisation)."""
    path = Path(bundle) / WEIGHTS
    if not path.is_file():
        raise UserError(f"train.init_from: {bundle} has no model.safetensors; point it at a checkpoint bundle "
                        "(…/checkpoints/step_N) or use \"@pretrain\" in a plan with a pretrain stage")
    src = load_file(str(path))
    own = module.state_dict()
    take = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    fresh = sorted(k for k in own if k not in take)
    with torch.no_grad():
        for k, v in take.items():
            own[k].copy_(v.to(own[k].dtype))
    return len(take), fresh
