"""The diffusion noise schedule (DDPM's forward process) and the DPM-Solver++ sampler that inverts it.

Both policies (ours in ablation/policy.py, the official-layout RDT in ablation/rdt/model.py) train on
DDPM noising and sample with 2nd-order multistep DPM-Solver++, configured as the official RDT was
evaluated (diffusers 0.27's defaults): midpoint solver, first-order last step, a final sigma of zero,
"linspace" timestep spacing. This module is that one configuration, written out, so that a process
which builds a policy does not import diffusers: `diffusers.utils` imports `torch._dynamo`, ~2.3 CPU-s
(measured) in every spawned rollout, plan, tuning and Ray worker. tests/test_noise_schedule.py checks it against
diffusers' schedulers bit for bit.

The arithmetic keeps diffusers' order of operations and dtypes (float32 schedule tables, 0-d float32
scalars per step, the update in float32 and cast back to the model output's dtype), because the RDT
goldens and every trained bundle's rollouts were made through it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample")
_BETA_START, _BETA_END = 1e-4, 2e-2  # diffusers' defaults for the linear schedules (RDT's configs keep them)
_MAX_BETA = 0.999                     # the cosine schedule's cap ("cap_v2")


def _betas(num_train_timesteps: int, beta_schedule: str) -> torch.Tensor:
    T = int(num_train_timesteps)
    if beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine alpha-bar, betas capped at 0.999
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), _MAX_BETA) for i in range(T)],
                            dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(_BETA_START, _BETA_END, T, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(_BETA_START ** 0.5, _BETA_END ** 0.5, T, dtype=torch.float32) ** 2
    raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; use one of {', '.join(BETA_SCHEDULES)}")


class NoiseSchedule:
    """DDPM's forward process: `alphas_cumprod` (float32, one per training timestep) and `add_noise`."""

    def __init__(self, num_train_timesteps: int, beta_schedule: str = "squaredcos_cap_v2"):
        if int(num_train_timesteps) < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.betas = _betas(self.num_train_timesteps, beta_schedule)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # noise-to-signal ratio per timestep, the sampler's table (made once, not per sample)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sqrt(a_t) x0 + sqrt(1 - a_t) noise, with a_t per batch row (t: (B,) integer timesteps)."""
        ac = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t.to(x0.device)]
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return (ac ** 0.5).reshape(shape) * x0 + ((1 - ac) ** 0.5).reshape(shape) * noise


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma = sqrt((1 - a) / a) -> (sqrt(a), sqrt(1 - a)), the signal and noise scales."""
    alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
    return alpha, sigma * alpha


def _log_snr(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma), DPM-Solver's time variable."""
    return torch.log(alpha) - torch.log(sigma)


class DPMSolverPP:
    """2nd-order multistep DPM-Solver++ (midpoint), one trajectory: build it, then call `step` once per
    entry of `timesteps`, in order. Fresh per sample, as it keeps the previous step's x0 prediction."""

    def __init__(self, schedule: NoiseSchedule, num_inference_steps: int, prediction_type: str = "sample"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not supported; use one of {PREDICTION_TYPES}")
        T, n = schedule.num_train_timesteps, int(num_inference_steps)
        if not 1 <= n <= T - 1:  # more would round two steps onto one timestep
            raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps - 1 = {T - 1}, got {n}")
        self.prediction_type = prediction_type
        # n+1 evenly spaced points on [0, T-1], rounded, from the noisiest; the last (0) is not stepped from
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64))
        self.sigmas = torch.cat([schedule.sigmas[self.timesteps], torch.zeros(1)])
        self._i = 0
        self._prev_x0: torch.Tensor | None = None

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The sample at the next timestep, from the network's output at timestep `t` for `sample`."""
        i = self._i
        if i >= len(self.timesteps) or int(t) != int(self.timesteps[i]):
            raise RuntimeError(f"step {i} got timestep {int(t)}; expected {self.timesteps.tolist()[i:]} in order")
        alpha_s0, sigma_s0 = _alpha_sigma(self.sigmas[i])
        x0 = model_output if self.prediction_type == "sample" else (sample - sigma_s0 * model_output) / alpha_s0
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[i + 1])
        lambda_s0 = _log_snr(alpha_s0, sigma_s0)
        h = _log_snr(alpha_t, sigma_t) - lambda_s0  # +inf into the final sigma of 0: exp(-h) = 0
        e = alpha_t * (torch.exp(-h) - 1.0)
        out = (sigma_t / sigma_s0) * sample.to(torch.float32) - e * x0  # first order
        # second order from the previous x0, except on the first step and the last (the final sigma is 0)
        if self._prev_x0 is not None and i < len(self.timesteps) - 1:
            r0 = (lambda_s0 - _log_snr(*_alpha_sigma(self.sigmas[i - 1]))) / h
            out = out - 0.5 * e * ((1.0 / r0) * (x0 - self._prev_x0))
        self._prev_x0, self._i = x0, i + 1
        return out.to(x0.dtype)
