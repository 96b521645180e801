"""`DiffusionPolicy`: network + codec + observation normaliser + diffusion schedulers.

The checkpoint bundle (its layout, reading and writing, `load_policy`) is ablation/bundle.py, which
builds on this module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import rotation as R
from .codec import ActionCodec, CodecError, phys_state
from .obs_features import IMAGE_KEYS, obs_features
from .errors import UserError
from .model import SIZES, DiffusionTransformer, DiTConfig
from .noise_schedule import DPMSolverPP, NoiseSchedule
from .spec import Spec, codec_guarantees_unit_range

OBS_NORM_MIN_STD = 1e-6  # constant features (e.g. a static object's quaternion) are only centred


class PolicyError(UserError):
    """A policy could not be built or loaded; the message names the file and the fix."""


@dataclass(frozen=True)
class ObsNormalizer:
    """Per-feature mean/std of low-dim observation features, fitted on the training windows."""

    keys: tuple[str, ...]
    mean: np.ndarray  # (F,)
    std: np.ndarray   # (F,)

    @classmethod
    def fit(cls, obs: np.ndarray, keys) -> "ObsNormalizer":
        flat = np.asarray(obs, dtype=np.float64).reshape(-1, obs.shape[-1])   # (N*To, F)
        std = flat.std(0)
        return cls(tuple(keys), flat.mean(0), np.where(std < OBS_NORM_MIN_STD, 1.0, std))

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=obs.device)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=obs.device)
        return (obs.float() - mean) / std

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"keys": list(self.keys), "mean": self.mean.tolist(), "std": self.std.tolist()}))

    @classmethod
    def load(cls, path: Path) -> "ObsNormalizer":
        if not path.is_file():
            raise PolicyError(f"{path}: observation normaliser is missing; the bundle is incomplete")
        d = json.loads(path.read_text())
        mean, std = np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64)
        if mean.shape != std.shape or np.any(std <= 0):
            raise PolicyError(f"{path}: mean/std shapes differ or std <= 0")
        return cls(tuple(d["keys"]), mean, std)


def make_noise_schedule(spec: Spec) -> NoiseSchedule:
    return NoiseSchedule(spec.model.num_train_timesteps, "squaredcos_cap_v2")


def make_sampler(spec: Spec, schedule: NoiseSchedule) -> DPMSolverPP:
    # The solver is always fed x0 (converted from epsilon and clipped here when asked), which is what
    # dpmsolver++ works with internally; DPM-Solver itself has no clip_sample option.
    return DPMSolverPP(schedule, spec.model.num_inference_steps, prediction_type="sample")


def check_clip_sample(spec: Spec, codec: ActionCodec) -> None:
    if spec.model.clip_sample and not (codec_guarantees_unit_range(spec.codec) and codec.bounded):
        raise PolicyError(
            f"model.clip_sample: true clips predictions to [-1, 1], but codec (representation="
            f"{codec.spec.representation}, normalizer={codec.spec.normalizer}) does not keep actions in [-1, 1]; "
            "use codec.normalizer: minmax or set model.clip_sample: false")


class DiffusionPolicy(nn.Module):
    """Network + codec + observation normaliser + sampler; `act(history) -> (H, W)` in MODEL space.
    Rollouts run it behind the RolloutPolicy contract: ablation/bundle_policy.py (BundlePolicy)."""

    def __init__(self, spec: Spec, codec: ActionCodec, obs_norm: ObsNormalizer, cfg, seed: int = 0,
                 net: nn.Module | None = None):
        super().__init__()
        if codec.spec != spec.codec:
            raise CodecError("the codec was fitted for a different codec spec than the policy's spec")
        check_clip_sample(spec, codec)
        if tuple(obs_norm.keys) != tuple(spec.data.obs_keys):
            raise PolicyError(f"obs normaliser keys {obs_norm.keys} differ from data.obs_keys {spec.data.obs_keys}")
        self.spec, self.codec, self.obs_norm, self.cfg = spec, codec, obs_norm, cfg
        # Frames a rollout keeps per episode: the low-dim history, or RDT's image history if longer.
        self.obs_history = max(spec.data.obs_history, _image_history(spec, cfg))
        self.horizon = spec.data.action_chunk
        # model.kind rdt: the official-layout RDT behind the same call signature (ablation/rdt/adapter.py)
        self.net = net if net is not None else DiffusionTransformer(cfg)
        self.noise_schedule = make_noise_schedule(spec)
        self.register_buffer("action_mask", torch.as_tensor(codec.action_mask, dtype=torch.float32), persistent=False)
        self.register_buffer("state_mask", torch.as_tensor(codec.state_mask, dtype=torch.float32), persistent=False)
        self.register_buffer("alphas_cumprod", self.noise_schedule.alphas_cumprod.clone().float(), persistent=False)
        # (W,) std of the diffusion noise per slot (model.noise_scale per group; padding 1). Scaling the noise
        # by s is diffusion on x/s: training noises with s*eps, the epsilon target stays the unit eps, and
        # sampling starts from s*eps. DPM-Solver++ (x0 form) steps are linear in x and x0, so they need no
        # other change. All ones (the default) multiplies by 1.0: bit-identical to unscaled noise.
        self.register_buffer("noise_scale", slot_noise_scale(spec, codec), persistent=False)
        # Noise of `act` calls made without a generator. The rollout runner passes each episode its own
        # generator (seeded from run seed and init state) instead, so outcomes do not depend on call order.
        self._act_gen = torch.Generator().manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return self.action_mask.device

    # ------------------------------------------------------------------ network call
    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, batch: dict, net: nn.Module | None = None) -> torch.Tensor:
        """One network evaluation: noisy (B,H,W), t (B,) -> model output (x0 or epsilon), (B,H,W).
        `net`: a callable standing for `self.net` with the same weights (the trainer's compiled copy)."""
        B = noisy.shape[0]
        freq = torch.full((B,), float(self.spec.model.ctrl_freq_hz), device=noisy.device)
        net = self.net if net is None else net
        return net(noisy, self.action_mask, t, freq, batch["state"], self.state_mask, self.obs_norm(batch["obs"]),
                   batch.get("images"))

    def x0_from_output(self, out: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.spec.model.prediction_type == "sample":
            return out
        ab = self.alphas_cumprod.to(noisy.device)[t].view(-1, 1, 1)
        return (noisy - (1 - ab).sqrt() * self.noise_scale.to(noisy.device) * out) / ab.sqrt()

    def training_outputs(self, batch: dict, generator: torch.Generator | None = None,
                         net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Noise a batch's actions at random timesteps; returns pred, target, x0_pred, x0 (all (B,H,W)).
        `net` as in `denoise`."""
        x0 = batch["actions"]
        B = x0.shape[0]
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(x0.shape, generator=generator, device=gen_dev).to(x0.device)
        t = torch.randint(0, self.spec.model.num_train_timesteps, (B,), generator=generator, device=gen_dev).to(x0.device)
        return self.outputs_at(batch, noise, t, net)

    def outputs_at(self, batch: dict, noise: torch.Tensor, t: torch.Tensor,
                   net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """`training_outputs` for given unit noise (B,H,W) and timesteps t (B,); also returns `noisy` and `t`."""
        x0 = batch["actions"]
        noisy = self.noise_schedule.add_noise(x0, noise * self.noise_scale, t)
        pred = self.denoise(noisy, t, batch, net)
        target = x0 if self.spec.model.prediction_type == "sample" else noise
        x0_pred = self.x0_from_output(pred.float(), noisy, t)
        return {"pred": pred, "target": target, "x0_pred": x0_pred, "x0": x0, "noisy": noisy, "t": t}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, batch: dict, generator: torch.Generator | list[torch.Generator] | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """DPM-Solver++ sampling -> (B,H,W) model space, from fixed unit `noise` (B,H,W), or noise drawn from
        `generator`: one for the whole batch, or a list of B, one per row (row i's noise then does not
        depend on the other rows). Either is scaled per slot by model.noise_scale before the first step."""
        B = batch["state"].shape[0]
        shape = (B, self.horizon, self.codec.width)
        if noise is None and isinstance(generator, (list, tuple)):
            if len(generator) != B:
                raise ValueError(f"{len(generator)} generators for a batch of {B}")
            noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device).to(self.device)
                               for g in generator])
        elif noise is None:
            noise = torch.randn(shape, generator=generator,
                                device=generator.device if generator is not None else torch.device("cpu"))
        x = noise.to(self.device, torch.float32) * self.noise_scale
        sched = make_sampler(self.spec, self.noise_schedule)
        for t in sched.timesteps:
            tt = torch.full((B,), int(t), device=self.device, dtype=torch.long)
            x0 = self.x0_from_output(self.denoise(x, tt, batch).float(), x, tt)
            if self.spec.model.clip_sample:
                x0 = x0.clamp(-1.0, 1.0)
            x = sched.step(x0, t, x)
        return x * self.action_mask  # as RDT: unfilled slots read 0

    def batch_from_history(self, obs_history: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """The last `obs_history` observation dicts (LIBERO names) -> a batch of one."""
        if not obs_history:
            raise ValueError("act() needs at least one observation")
        To = self.spec.data.obs_history
        hist = list(obs_history)[-To:]
        hist = [hist[0]] * (To - len(hist)) + hist  # repeat the first frame, as in training
        keys = self.spec.data.obs_keys
        feats = np.stack([obs_features(o, keys) for o in hist])                 # (To, F)
        last = hist[-1]
        rot = R.axis_angle_to_matrix(np.asarray(last["ee_ori"], dtype=np.float64))
        state = self.codec.encode_state(phys_state(last["ee_pos"], rot, last["gripper_states"]))  # (Ws,)
        batch = {"obs": torch.as_tensor(feats[None], dtype=torch.float32, device=self.device),
                 "state": torch.as_tensor(state[None], dtype=torch.float32, device=self.device)}
        if self.cfg.n_cams:
            imgs = np.stack([np.stack([o[k] for k in IMAGE_KEYS if k in o]) for o in hist])  # (To, nc, h, w, 3)
            batch["images"] = torch.as_tensor(imgs[None], device=self.device)
        return batch

    @torch.no_grad()
    def act(self, obs_history: list[dict[str, np.ndarray]], generator: torch.Generator | None = None) -> np.ndarray:
        """Observation history (oldest first) -> action chunk (H, W) in MODEL space (decode with `codec`).
        Noise comes from `generator`, else from the policy's own generator (seeded once per policy)."""
        return self.act_batch([obs_history], [generator if generator is not None else self._act_gen])[0]

    @torch.no_grad()
    def act_batch(self, obs_histories: list[list[dict[str, np.ndarray]]],
                  generators: list[torch.Generator]) -> list[np.ndarray]:
        """One sampling call for several episodes: history i -> chunk i (H, W), model space, its noise
        drawn from generators[i] alone (the rollout runner's per-episode generator)."""
        if len(obs_histories) != len(generators):
            raise ValueError(f"{len(obs_histories)} observation histories but {len(generators)} generators")
        rows = [self.batch_from_history(h) for h in obs_histories]
        batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        if getattr(self.cfg, "images", False):  # RDT: SigLIP tokens of all windows' frames, one encoder call
            from .rdt.features import live_image_tokens

            batch["images"] = live_image_tokens(self, obs_histories)
        was_training = self.training
        self.eval()
        try:
            chunks = self.sample(batch, generator=list(generators))
        finally:
            self.train(was_training)
        return list(chunks.cpu().numpy().astype(np.float64))


def slot_noise_scale(spec: Spec, codec: ActionCodec) -> torch.Tensor:
    """(W,) diffusion noise std per slot: model.noise_scale of the slot's group, 1 on padding slots."""
    s = torch.ones(codec.width, dtype=torch.float32)
    for g, v in spec.model.noise_scale.as_dict().items():
        s[torch.as_tensor(codec.group_slots[g])] = v
    return s


def build_policy(spec: Spec, codec: ActionCodec, obs_norm: ObsNormalizer, obs_dim: int, n_cams: int = 0,
                 instruction: str | None = None) -> DiffusionPolicy:
    """A freshly initialised policy (seeded by spec.train.seed) for this spec, codec and obs layout.

    model.kind rdt: official-layout RDT weights (loaded strictly from model.pretrained when given),
    with the task's language embedding (model.lang_embeddings) looked up by `instruction`.
    """
    if spec.model.kind == "rdt":
        from .rdt.adapter import RDTNetConfig, build_rdt_net

        torch.manual_seed(spec.train.seed)
        vision_sha = ""
        if spec.data.images:  # tokens come from SigLIP (ablation/rdt/features.py); record which weights
            from .rdt.features import siglip_weights_sha256

            vision_sha = siglip_weights_sha256(spec.model.vision_model)
        cfg = RDTNetConfig(spec.model.size, obs_dim, images=spec.data.images, vision_sha256=vision_sha)
        net = build_rdt_net(cfg, spec.model.lang_embeddings, instruction, spec.model.image_features)
        cfg = RDTNetConfig(spec.model.size, obs_dim, n_lang_tokens=int(net.lang_tokens.shape[0]),
                           images=spec.data.images, vision_sha256=vision_sha)
        if spec.model.pretrained:
            net.load_pretrained(spec.model.pretrained)
        if spec.model.freeze:
            net.runner.freeze(list(spec.model.freeze))
        net.runner.set_gradient_checkpointing(spec.model.gradient_checkpointing)
        return DiffusionPolicy(spec, codec, obs_norm, cfg, seed=spec.train.seed, net=net)
    if spec.model.size not in SIZES:
        raise PolicyError(f"model.size '{spec.model.size}' is not a DiT size; use one of {', '.join(SIZES)}")
    cfg = DiTConfig.for_size(
        spec.model.size,
        horizon=spec.data.action_chunk, action_width=codec.width, state_width=len(codec.state_mask),
        obs_dim=obs_dim, obs_history=spec.data.obs_history, n_cams=n_cams, image_size=spec.data.image_size)
    torch.manual_seed(spec.train.seed)
    return DiffusionPolicy(spec, codec, obs_norm, cfg, seed=spec.train.seed)


def _image_history(spec: Spec, cfg) -> int:
    """RDT with images: frames of image history its checkpoint config fixes (2); else 0."""
    if not getattr(cfg, "images", False):
        return 0
    from .rdt.adapter import rdt_config_for
    from .rdt.features import image_geometry

    return image_geometry(rdt_config_for(spec.model.size, None))[0]
