"""The machine's CPU as the harness's time figures need it (ablation.host), and a profile's measured costs
chosen by CPU class (profiles.profile_costs). The cpuinfo files are written here in the kernel's own
format (x86 `flags`, ARM `Features`); the last test reads this machine's /proc/cpuinfo against torch's
own answer to "does oneDNN multiply bf16 natively here"."""
from __future__ import annotations

import platform
import textwrap
from pathlib import Path

import pytest

from ablation import host
from ablation.plan_eta import StageCosts
from ablation.profiles import load_profile, profile_costs
from ablation.spec import SpecError

X86 = """\
processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC   9R45
flags		: fpu vme sse sse2 avx avx2 fma {extra}
bugs		: sysret_ss_attrs

processor	: 1
model name	: AMD EPYC   9R45
flags		: fpu vme sse sse2 avx avx2 fma {extra}
"""
ARM = """\
processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16
CPU implementer	: 0x41
"""


def cpuinfo(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(textwrap.dedent(text))
    host._cpuinfo.cache_clear()
    return p


@pytest.mark.parametrize("extra, want", [
    ("avx512f avx512dq avx512bw avx512vl avx512_bf16", "avx512"),
    ("avx512f avx512dq avx512vl", "avx2"),   # no avx512bw: oneDNN's bf16 path is not there
    ("", "avx2"),
])
def test_cpu_class_from_x86_flags(tmp_path, extra, want):
    p = cpuinfo(tmp_path, X86.format(extra=extra))
    assert host.cpu_class(p) == want
    assert host.cpu_model(p) == "AMD EPYC 9R45"  # whitespace runs folded


def test_cpu_class_of_arm_and_of_no_cpuinfo(tmp_path):
    assert host.cpu_class(cpuinfo(tmp_path, ARM)) == "other"
    missing = tmp_path / "no-such-cpuinfo"
    assert host.cpu_class(missing) == "other"
    assert host.cpu_model(missing) == (platform.processor() or "unknown CPU")


def test_costs_by_cpu_class_take_this_machines_class_else_the_first_with_a_note(tmp_path):
    f = tmp_path / "p.yaml"
    raw = {"avx512": {"train_s": 81, "episode_s": 1.6}, "avx2": {"train_s": 160, "episode_s": 3.0}}
    assert profile_costs(f, raw, "avx2") == (StageCosts(train_s=160, episode_s=3.0), "avx2", "")
    costs, on, note = profile_costs(f, raw, "other")
    assert (costs, on) == (StageCosts(train_s=81, episode_s=1.6), "avx512")
    assert "measured on a CPU of class avx512, this one is other" in note
    # one flat mapping: any CPU, no class, no note
    assert profile_costs(f, {"train_s": 60}, "avx2") == (StageCosts(train_s=60), None, "")
    assert profile_costs(f, None, "avx2") == (None, None, "")


@pytest.mark.parametrize("raw, match", [
    ({"avx512": {"train_s": 1}, "zen5": {"train_s": 1}},
     r"p\.yaml: costs: zen5 not a CPU class; classes: avx512, avx2"),
    ({"avx2": {"train_sec": 1}}, r"p\.yaml: costs\.avx2: train_sec not known"),
    ({"avx2": 5}, r"p\.yaml: costs\.avx2: 5 is not a mapping"),
    ([1, 2], r"p\.yaml: costs: \[1, 2\] is not a mapping"),
])
def test_bad_costs_name_the_file_and_the_field(tmp_path, raw, match):
    with pytest.raises(SpecError, match=match):
        profile_costs(tmp_path / "p.yaml", raw, "avx2")


def test_the_cpu_profile_has_costs_for_this_machines_class():
    host._cpuinfo.cache_clear()
    p = load_profile("cpu")
    assert p.costs is not None and p.costs.train_s > 0
    if host.cpu_class() in ("avx512", "avx2"):
        assert (p.costs_cpu_class, p.costs_note) == (host.cpu_class(), "")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the class is defined by x86 flags")
def test_class_agrees_with_torch_on_native_bf16_here():
    """avx512 exactly where torch's oneDNN multiplies bf16 natively (the training kernels' choice)."""
    from ablation.train_state import cpu_bf16_matmul

    host._cpuinfo.cache_clear()
    assert (host.cpu_class() == "avx512") == cpu_bf16_matmul(), (host.cpu_model(), host.cpu_class())
