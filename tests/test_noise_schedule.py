"""ablation/noise_schedule.py against diffusers' DDPMScheduler and DPMSolverMultistepScheduler, configured
as the policies configured them before (diffusers 0.27's defaults, which the official RDT checkpoints
were evaluated with): bit for bit, on every schedule, prediction type and dtype the policies use.
diffusers is a test dependency only, the reference here; no policy imports it."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from ablation.noise_schedule import BETA_SCHEDULES, DPMSolverPP, NoiseSchedule
from ablation.spec import SpecError, resolve_spec, spec_path


def reference_sampler(T: int, schedule: str, prediction_type: str, n: int) -> DPMSolverMultistepScheduler:
    s = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule=schedule, prediction_type=prediction_type,
                                    solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                    lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
                                    use_karras_sigmas=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # diffusers' own numpy-2 warning
        s.set_timesteps(n)
    return s


def fake_network(x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A deterministic stand-in for the denoiser: depends on x and t nonlinearly, so that a wrong sigma,
    order or history shows in the trajectory."""
    return (torch.tanh(0.7 * x + 0.001 * t.float()) * 0.9 + 0.05 * torch.sin(3 * x)).to(dtype)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("T", [1000, 100])
def test_noise_schedule_and_add_noise_match_ddpm(schedule, T):
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule)
    ours = NoiseSchedule(T, schedule)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    g = torch.Generator().manual_seed(T)
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(6, 16, 10, generator=g).to(dtype)
        noise = torch.randn(6, 16, 10, generator=g).to(dtype)
        t = torch.randint(0, T, (6,), generator=g)
        assert torch.equal(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)), dtype


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("T,n", [(1000, 5), (1000, 1), (1000, 2), (1000, 3), (1000, 25), (100, 10), (10, 9)])
def test_dpm_solver_trajectories_match_diffusers_bit_for_bit(prediction_type, schedule, T, n):
    for dtype in (torch.float32, torch.bfloat16):  # RDT samples in its parameters' dtype
        ref = reference_sampler(T, schedule, prediction_type, n)
        ours = DPMSolverPP(NoiseSchedule(T, schedule), n, prediction_type)
        assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
        x_ref = x_ours = torch.randn(3, 8, 7, generator=torch.Generator().manual_seed(n)).to(dtype)
        for t in ours.timesteps:
            x_ref = ref.step(fake_network(x_ref, t, dtype), t, x_ref).prev_sample
            x_ours = ours.step(fake_network(x_ours, t, dtype), t, x_ours)
            assert x_ours.dtype == x_ref.dtype and torch.equal(x_ours, x_ref), (int(t), dtype)
        assert torch.isfinite(x_ours.float()).all()


def test_steps_out_of_order_and_unsupported_settings_are_clear_errors():
    sched = NoiseSchedule(1000)
    sampler = DPMSolverPP(sched, 5)
    x = torch.zeros(1, 4, 2)
    with pytest.raises(RuntimeError, match=r"got timestep 0; expected \[999, 799"):
        sampler.step(x, 0, x)
    for t in sampler.timesteps:
        sampler.step(x, t, x)
    with pytest.raises(RuntimeError, match="expected"):  # a finished trajectory takes no more steps
        sampler.step(x, 0, x)
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid' is not supported"):
        NoiseSchedule(1000, "sigmoid")
    with pytest.raises(ValueError, match="prediction_type 'v_prediction' is not supported"):
        DPMSolverPP(sched, 5, "v_prediction")
    with pytest.raises(ValueError, match="num_inference_steps must be between 1 and"):
        DPMSolverPP(NoiseSchedule(10), 10)


def test_a_spec_with_as_many_sampling_steps_as_training_timesteps_is_refused():
    msg = r"model.num_inference_steps \(10\) must be below model.num_train_timesteps \(10\)"
    with pytest.raises(SpecError, match=msg):
        resolve_spec(spec_path("fix_minmax"), ["model.num_train_timesteps=10", "model.num_inference_steps=10"])


def test_building_and_sampling_a_policy_imports_no_diffusers():
    """The point of the module: a rollout or plan worker that builds a policy and samples from it pays
    no diffusers import (and with it no torch._dynamo, ~2.3 CPU-s per spawned process, measured)."""
    code = ("import sys, torch\n"
            "import ablation.policy, ablation.bundle_policy, ablation.rdt.model, ablation.train, ablation.plan\n"
            "from ablation.noise_schedule import DPMSolverPP, NoiseSchedule\n"
            "s = DPMSolverPP(NoiseSchedule(1000), 5); x = torch.zeros(1, 2)\n"
            "for t in s.timesteps: x = s.step(x, t, x)\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('diffusers', 'torch._dynamo')))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
