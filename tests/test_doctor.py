"""`run_ablation.py doctor`: one test per pitfall, planted in real demo files written by the simulator.

Real scripted-expert demos are generated once per session (conftest `expert_demo_file`, 4 DART demos;
one more demo with 32x32 camera images for the blank-frame case). Each fault is planted in a copy
written with data.write_demo_file, and the doctor must name it as its top finding. The planted-fault
tests skip the simulator checks (`sim=False`: the file checks find them); the clean file is checked
with everything, Gate A and start states included. "Statistics from another task" is a bundle of
codec.json + spec.yaml (no weights: the statistics check needs no more) fitted on other demos.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ablation.data import Episode, read_demo_file, write_demo_file

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- planting

def _clone(ep: Episode) -> Episode:
    return Episode(actions=ep.actions.copy(), obs={k: v.copy() for k, v in ep.obs.items()}, states=ep.states.copy(),
                   rewards=ep.rewards.copy(), dones=ep.dones.copy(), robot_states=ep.robot_states.copy(),
                   init_state=np.array(ep.init_state, copy=True), model_file=ep.model_file,
                   extras={k: v.copy() for k, v in ep.extras.items()})


def _actions(ep: Episode, f) -> Episode:
    """Apply f to the recorded and the executed actions alike."""
    e = _clone(ep)
    e.actions = f(e.actions)
    if "executed_actions" in e.extras:
        e.extras["executed_actions"] = f(e.extras["executed_actions"])
    return e


def _flip(a):
    a = a.copy()
    a[:, 6] *= -1
    return a


def _zero_one(a):  # LeRobot-style [0, 1] with 1 = open
    a = a.copy()
    a[:, 6] = (1 - a[:, 6]) / 2
    return a


def _double_delta(a):
    a = a.copy()
    a[:, :6] = np.diff(a[:, :6], axis=0, prepend=np.zeros((1, 6)))
    return a


def _late(ep: Episode) -> Episode:
    """Obs recorded after each step (LIBERO's original script) in a file that says 'before'."""
    e = _clone(ep)
    T = len(e.actions)
    e.actions = e.actions[:T - 1]
    e.extras = {k: v[:T - 1] for k, v in e.extras.items()}
    e.obs = {k: v[1:] for k, v in e.obs.items()}
    e.states, e.robot_states = e.states[1:], e.robot_states[1:]
    e.rewards, e.dones = e.rewards[1:], e.dones[1:]
    return e


def _noops(ep: Episode, rng, share=0.10) -> Episode:
    """Insert no-op actions (arm still, gripper unchanged) so that `share` of the steps are no-ops;
    the obs at an inserted step repeat the obs the robot stands at."""
    e = _clone(ep)
    T = len(ep.actions)
    k = int(round(share * T / (1 - share)))
    pos = np.sort(rng.choice(np.arange(1, T), size=k, replace=False))
    aidx = np.insert(np.arange(T), pos, pos - 1)
    noop = np.zeros(len(aidx), bool)
    noop[pos + np.arange(len(pos))] = True

    def fix(a):
        a = a[aidx].copy()
        a[noop, :6] = 0.0
        return a

    oidx = np.insert(np.arange(T), pos, pos)
    e.actions = fix(ep.actions)
    e.extras = {n: fix(v) for n, v in ep.extras.items()}
    e.obs = {n: v[oidx] for n, v in ep.obs.items()}
    e.states, e.robot_states = ep.states[oidx], ep.robot_states[oidx]
    e.rewards, e.dones = ep.rewards[oidx], ep.dones[oidx]
    return e


def _blank(ep: Episode) -> Episode:
    e = _clone(ep)
    for k in ("agentview_rgb", "eye_in_hand_rgb"):
        if k in e.obs:
            e.obs[k][5:15] = 0
    return e


@pytest.fixture(scope="session")
def planted(expert_demo_file, tmp_path_factory) -> dict[str, Path]:
    ds = read_demo_file(expert_demo_file)
    out = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    kinds = {
        "clean": _clone,
        "flipped_gripper": lambda e: _actions(e, _flip),
        "zero_one_gripper": lambda e: _actions(e, _zero_one),
        "double_delta": lambda e: _actions(e, _double_delta),
        "obs_late": _late,
        "noops": lambda e: _noops(e, rng),
    }
    paths = {}
    for name, f in kinds.items():
        paths[name] = out / f"{name}.hdf5"
        write_demo_file(paths[name], [f(ep) for ep in ds.episodes], ds.meta)
    return paths


@pytest.fixture(scope="session")
def image_demo_file(tmp_path_factory) -> Path:
    from ablation.sim.demos import generate_demos

    out = tmp_path_factory.mktemp("image_demos") / "obj0_img32.hdf5"
    return generate_demos("libero_object", 0, n=1, out=out, images=True, image_size=32, seed=0, progress=False)


def _doctor(path, **kw):
    from ablation.doctor import run_doctor

    kw.setdefault("sim", False)
    return run_doctor(path, **kw)


def _top(report):
    top = report.top
    assert top is not None
    return top


# ----------------------------------------------------------------------------- one test per pitfall

@pytest.mark.sim
def test_flipped_gripper(planted):
    r = _doctor(planted["flipped_gripper"])
    top = _top(r)
    assert (top.id, top.severity) == ("gripper.sign", "serious"), r.text()
    assert top.numbers["agree"] == 0.0 and top.numbers["n_events"] >= 4
    assert "negate" in top.fix and r.exit_code == 1


@pytest.mark.sim
def test_zero_one_gripper(planted):
    r = _doctor(planted["zero_one_gripper"])
    top = _top(r)
    assert (top.id, top.severity) == ("gripper.range", "serious"), r.text()
    assert top.numbers["min"] == 0.0 and top.numbers["max"] == 1.0
    assert "1 - 2a" in top.fix  # here 1 = open


@pytest.mark.sim
def test_obs_one_step_late(planted):
    r = _doctor(planted["obs_late"])
    top = _top(r)
    assert (top.id, top.severity) == ("alignment.convention", "serious"), r.text()
    assert top.numbers["convention"] == "after" and top.numbers["lag"] == -1
    assert "says before" in top.title


@pytest.mark.sim
def test_ten_percent_noops(planted):
    r = _doctor(planted["noops"])
    top = _top(r)
    assert r.exit_code == 0  # no-ops warn (domain.md: above 5%)
    assert (top.id, top.severity) == ("alignment.noop", "warning"), r.text()
    assert 0.10 <= top.numbers["share"] <= 0.16  # 10% planted + the expert's own ~3%


@pytest.mark.sim
def test_double_delta(planted):
    r = _doctor(planted["double_delta"])
    top = _top(r)
    assert (top.id, top.severity) == ("actions.kind", "serious"), r.text()
    assert top.numbers["kind"] == "double_delta"


@pytest.mark.sim
def test_blank_frames(image_demo_file, tmp_path):
    ds = read_demo_file(image_demo_file, load_images=True)
    bad = tmp_path / "blank.hdf5"
    write_demo_file(bad, [_blank(ep) for ep in ds.episodes], ds.meta)
    r = _doctor(bad)
    top = _top(r)
    assert (top.id, top.severity) == ("images.blank", "serious"), r.text()
    assert top.numbers["blank"] == 10 and top.numbers["min_std"] == 0.0
    clean = _doctor(image_demo_file)
    assert not [f for f in clean.findings if f.severity == "serious"], clean.text()


@pytest.mark.sim
def test_image_orientation_against_the_simulator(image_demo_file):
    """The file's first frame against a fresh render of the same start: as rendered passes, a
    vertically flipped (upright) copy is named, serious when the spec uses images."""
    from ablation.doctor.file_checks import image_frames
    from ablation.doctor.sim_checks import check_orientation

    ds = read_demo_file(image_demo_file)
    frames = image_frames(str(image_demo_file))
    ok = check_orientation(ds, frames, "libero_object", 0, None)[0]
    assert ok.severity == "info" and ok.numbers["best"].startswith("as rendered"), ok
    upright = {k: [v[:, ::-1] for v in eps] for k, eps in frames.items()}
    bad = check_orientation(ds, upright, "libero_object", 0, True)[0]
    assert (bad.id, bad.severity, bad.numbers["best"]) == ("images.orientation", "serious", "flipped vertically"), bad


def _bundle(dir_: Path, spec_name: str, demo_file: Path) -> Path:
    """codec.json + spec.yaml only, the codec fitted on `demo_file` (as training fits it)."""
    from ablation.codec import ActionCodec
    from ablation.data import episode_view
    from ablation.representations import representation
    from ablation.spec import EXPERIMENTS_DIR, resolve_spec

    spec = resolve_spec(EXPERIMENTS_DIR / f"{spec_name}.yaml")
    ds = read_demo_file(demo_file)
    rep = representation(spec.codec.representation, spec.codec.rotation)
    views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    phys = np.concatenate([rep.from_demo(v.actions, v.ee_pos, v.ee_rot, v.next_ee_pos, v.next_ee_rot) for v in views])
    codec = ActionCodec.fit(spec.codec, phys, np.concatenate([v.state for v in views]),
                            np.concatenate([v.actions for v in views]))
    dir_.mkdir(parents=True, exist_ok=True)
    codec.save(dir_ / "codec.json")
    (dir_ / "spec.yaml").write_text(spec.to_yaml())
    return dir_


@pytest.mark.sim
def test_statistics_from_another_task(planted, synthetic_demo_file, tmp_path):
    # other demos: conftest's synthetic reach-grasp-lift (another task's ranges); the file: real demos
    other = _bundle(tmp_path / "other", "fix_minmax", synthetic_demo_file)
    r = _doctor(planted["clean"], checkpoint=other)
    top = _top(r)
    assert (top.id, top.severity) == ("stats.mismatch", "serious"), r.text()
    assert "pos.x" in top.title  # names the dimensions
    assert any(f.id == "openloop" and "no model weights" in f.title for f in r.findings)
    same = _bundle(tmp_path / "same", "fix_minmax", planted["clean"])
    r2 = _doctor(planted["clean"], checkpoint=same)
    st = next(f for f in r2.findings if f.id == "stats.mismatch")
    assert st.severity == "info", r2.text()


# ----------------------------------------------------------------------------- clean file, CLI

@pytest.mark.sim
def test_clean_file_full_doctor_no_serious(planted, tmp_path, capsys):
    from ablation.cli import main

    rc = main(["doctor", "--data", str(planted["clean"]), "--episodes", "2", "--workdir", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["exit_code"] == 0, json.dumps(out["findings"][:3], indent=1)
    assert out["counts"]["serious"] == 0
    ids = {f["id"]: f for f in out["findings"]}
    assert ids["gate_a"]["severity"] == "info" and ids["gate_a"]["numbers"]["passed"]
    assert ids["start_state"]["severity"] == "info"
    assert ids["alignment.convention"]["numbers"]["convention"] == "before"
    assert out["suite"] == "libero_object" and out["task"] == 0
    for f in out["findings"]:
        assert set(f) >= {"id", "severity", "title", "evidence", "fix", "next", "numbers"}


@pytest.mark.sim
def test_cli_text_ranks_serious_first_and_exits_1(planted, capsys):
    from ablation.cli import main

    rc = main(["doctor", "--data", str(planted["flipped_gripper"]), "--no-sim"])
    out = capsys.readouterr().out
    assert rc == 1
    blocks = [ln for ln in out.splitlines() if ln[:8].strip() in ("SERIOUS", "WARNING", "INFO")]
    sev = [ln.split()[0] for ln in blocks]
    assert sev[0] == "SERIOUS" and sev == sorted(sev, key=["SERIOUS", "WARNING", "INFO"].index)
    assert "evidence:" in out and "fix:" in out and "next:" in out and "-> exit 1" in out


@pytest.mark.sim
def test_file_from_elsewhere_obs_after_no_attrs(planted, tmp_path):
    """A LIBERO-original-style file: obs after each step, no obs_convention / suite attrs, BDDL path
    relative to LIBERO's repo. The doctor infers the task and the timing, and says so."""
    import h5py

    src = read_demo_file(planted["clean"])
    meta = src.meta
    meta.obs_convention = "after"
    meta.bddl_file_name = "chiliocosm/bddl_files/libero_object/" + Path(meta.bddl_file_name).name
    meta.attrs = {}
    p = tmp_path / "elsewhere.hdf5"
    write_demo_file(p, [_late(ep) for ep in src.episodes], meta)
    with h5py.File(p, "a") as f:
        del f["data"].attrs["obs_convention"]
        del f["data"].attrs["ablation_attrs"]
    r = _doctor(p)
    assert r.exit_code == 0, r.text()
    assert (r.suite, r.task) == ("libero_object", 0)
    conv = next(f for f in r.findings if f.id == "alignment.convention")
    assert conv.severity == "info" and "after" in conv.title and "auto" in conv.evidence


def test_roundtrip_detects_a_double_delta_codec(synthetic_demo_file):
    from ablation.codec import ActionCodec
    from ablation.doctor.spec_checks import check_roundtrip
    from ablation.spec import EXPERIMENTS_DIR, resolve_spec

    from .test_gates import DoubleDeltaCodec

    spec = resolve_spec(EXPERIMENTS_DIR / "native_delta.yaml")
    ds = read_demo_file(synthetic_demo_file)
    good = check_roundtrip(spec, ds, str(synthetic_demo_file))
    assert good[0].severity == "info" and good[0].numbers["native_max_err"]["pos"] < 1e-9
    a = np.concatenate([ep.actions for ep in ds.episodes])
    codec = ActionCodec.fit(spec.codec, a, np.zeros((len(a), 10)), a)
    bad = check_roundtrip(spec, ds, str(synthetic_demo_file), codec=DoubleDeltaCodec(codec))
    assert bad[0].id == "roundtrip" and bad[0].severity == "serious"
    # the seed's absolute orientation comes back as the pose reached: reported, not judged
    mix = check_roundtrip(resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml"), ds, str(synthetic_demo_file))
    assert mix[0].severity == "info" and mix[0].numbers["absolute_groups"] == ["rot"]


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("case", ["missing", "not_hdf5", "no_data", "bad_spec", "bad_checkpoint"])
def test_unreadable_inputs_one_line_exit_2(case, tmp_path, synthetic_demo_file, capsys):
    import h5py

    from ablation.cli import main

    data = synthetic_demo_file
    extra = []
    if case == "missing":
        data = tmp_path / "nope.hdf5"
    elif case == "not_hdf5":
        data = tmp_path / "x.hdf5"
        data.write_text("hello")
    elif case == "no_data":
        data = tmp_path / "y.hdf5"
        with h5py.File(data, "w") as f:
            f.create_group("stuff")
    elif case == "bad_spec":
        extra = ["--spec", str(tmp_path / "nope.yaml")]
    elif case == "bad_checkpoint":
        (tmp_path / "ck").mkdir()
        extra = ["--checkpoint", str(tmp_path / "ck")]
    rc = main(["doctor", "--data", str(data), "--no-sim", *extra])
    cap = capsys.readouterr()
    assert rc == 2
    lines = [ln for ln in cap.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    assert "Traceback" not in cap.err


@pytest.mark.slow
def test_openloop_of_an_untrained_checkpoint_is_flagged(synthetic_demo_file, tmp_path):
    """A 3-step checkpoint: its predictions are noise, so the spread and position steps are off."""
    from ablation.spec import EXPERIMENTS_DIR, resolve_spec
    from ablation.train import latest_bundle, train

    spec = resolve_spec(EXPERIMENTS_DIR / "fix_minmax.yaml",
                        ["model.size=tiny", "train.steps=3", "train.checkpoint_every=3", "train.eval_every=3",
                         "train.log_every=1", "train.warmup_steps=0", "train.batch_size=8"])
    train(spec, synthetic_demo_file, tmp_path / "run")
    bundle = latest_bundle(tmp_path / "run")
    r = _doctor(synthetic_demo_file, checkpoint=bundle)
    ol = [f for f in r.findings if f.id.startswith("openloop")]
    assert ol and all("std_ratio" in f.numbers for f in ol), r.text()
    assert set(ol[0].numbers["std_ratio"]) == {"pos.x", "pos.y", "pos.z", "rot.r0", "rot.r1", "rot.r2", "rot.r3",
                                               "rot.r4", "rot.r5", "grip"}
    assert any(f.id == "openloop.std_ratio" and f.severity == "warning" for f in ol), r.text()
    st = next(f for f in r.findings if f.id == "stats.mismatch")
    assert st.severity == "info" and st.numbers["same_file"]  # the same file and split: identical statistics
