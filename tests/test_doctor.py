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

from ablation.data import read_demo_file, write_demo_file
from ablation.doctor.plant import PITFALLS, blank_frames, clone, obs_late, plant

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- planting

# The plantings live in ablation/doctor/plant.py (shared with benchmarks/doctor_corpus.py).


@pytest.fixture(scope="session")
def planted(expert_demo_file, tmp_path_factory) -> dict[str, Path]:
    ds = read_demo_file(expert_demo_file)
    out = tmp_path_factory.mktemp("planted")
    paths = {"clean": out / "clean.hdf5"}
    write_demo_file(paths["clean"], [clone(ep) for ep in ds.episodes], ds.meta)
    for name in PITFALLS:
        if name != "blank_frames":  # needs images: test_blank_frames
            paths[name] = plant(ds, name, out / f"{name}.hdf5")
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
    write_demo_file(bad, [blank_frames(ep) for ep in ds.episodes], ds.meta)
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
    from ablation.doctor.corpus import stats_bundle

    return stats_bundle(dir_, spec_name, demo_file)


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
    write_demo_file(p, [obs_late(ep) for ep in src.episodes], meta)
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


# ----------------------------------------------------------------------------- codes, where, --checks, gating

@pytest.mark.sim
def test_codes_are_stable_and_every_finding_has_one(planted):
    from ablation.doctor.findings import CODES

    # a code never changes meaning: the published ones, pinned
    assert {k: CODES[k] for k in ("gripper.range", "gripper.sign", "alignment.convention", "alignment.noop",
                                  "actions.kind", "images.blank", "scale.share", "stats.mismatch", "gate_a")} == {
        "gripper.range": "D101", "gripper.sign": "D102", "alignment.convention": "D201", "alignment.noop": "D202",
        "actions.kind": "D301", "images.blank": "D401", "scale.share": "S201", "stats.mismatch": "C101",
        "gate_a": "R101"}
    assert len(set(CODES.values())) == len(CODES)
    for name, path in planted.items():
        r = _doctor(path, spec=ROOT / "experiments" / "native_delta.yaml")
        for f in r.findings:
            assert f.id in CODES, f"{name}: finding id {f.id} has no code"
            assert f.to_dict()["code"] == CODES[f.id]


@pytest.mark.sim
def test_findings_name_the_demos_and_steps(planted):
    from ablation.demo_evidence import noop_mask

    ds = read_demo_file(planted["noops"])
    top = _top(_doctor(planted["noops"]))
    assert top.id == "alignment.noop" and top.where
    assert {w["demo"] for w in top.where} <= set(ds.names)
    for w in top.where:
        ep = ds.episodes[ds.names.index(w["demo"])]
        assert noop_mask(ep.actions)[w["steps"]].all() and w["n"] == int(noop_mask(ep.actions).sum())
    assert sum(w["n"] for w in top.where) == top.numbers["noops"]

    flip = _top(_doctor(planted["flipped_gripper"]))
    assert flip.id == "gripper.sign" and flip.where
    grip = read_demo_file(planted["flipped_gripper"])
    for w in flip.where:  # the gripper command flips at each named step
        g = grip.episodes[grip.names.index(w["demo"])].actions[:, 6]
        assert all(np.sign(g[k]) != np.sign(g[k - 1]) for k in w["steps"])
    late = _top(_doctor(planted["obs_late"]))
    assert late.where and all(w["steps"] is None for w in late.where)  # whole demos
    assert "where: demo_" in _doctor(planted["flipped_gripper"]).text()


@pytest.mark.sim
def test_checks_choose_the_checks(planted, capsys):
    from ablation.cli import main

    r = _doctor(planted["flipped_gripper"], checks=["gripper"])
    assert {f.id.split(".")[0] for f in r.findings} <= {"gripper", "suite_task"}, r.text()
    assert r.top.id == "gripper.sign"
    # by code: D202 (no-ops) alone does not see the flipped gripper
    r2 = _doctor(planted["flipped_gripper"], checks=["D202"])
    assert [f.id for f in r2.findings if f.id != "suite_task"] == ["alignment.noop"] and r2.exit_code == 0
    rc = main(["doctor", "--data", str(planted["clean"]), "--checks", "gripper,nonsense", "--no-sim"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown check 'nonsense'" in err and "gripper" in err


@pytest.mark.sim
def test_fail_on_gates_the_exit_code(planted, capsys):
    from ablation.cli import main

    assert main(["doctor", "--data", str(planted["noops"]), "--no-sim"]) == 0
    assert main(["doctor", "--data", str(planted["noops"]), "--no-sim", "--fail-on", "warning"]) == 1
    assert main(["doctor", "--data", str(planted["flipped_gripper"]), "--no-sim", "--fail-on", "never"]) == 0
    capsys.readouterr()


@pytest.mark.sim
def test_data_and_spec_are_judged_apart(planted):
    """Without a spec only the file is judged; with one the spec's scale audit and round trip run too."""
    alone = _doctor(planted["clean"])
    ids = {f.id for f in alone.findings}
    assert not any(i.startswith(("scale", "roundtrip", "spec.")) for i in ids), alone.text()
    assert "spec" in ids and alone.spec.startswith("none")
    withspec = _doctor(planted["clean"], spec=ROOT / "experiments" / "native_delta.yaml")
    ids2 = {f.id for f in withspec.findings}
    assert any(i.startswith("scale") for i in ids2) and "roundtrip" in ids2
    assert withspec.counts["serious"] == 0, withspec.text()


@pytest.mark.sim
def test_a_still_rotation_is_info_not_serious(planted):
    """The expert does not turn on libero_object (rotation spread < the hypotheses' 5 deg): a loss that
    ignores rotation loses nothing there, so the seed's own spec gets info about rot, not SERIOUS."""
    from ablation.hypothesis import ROT_SPREAD_MIN_DEG

    r = _doctor(planted["clean"], spec=ROOT / "experiments" / "native_delta.yaml")
    scale = [f for f in r.findings if f.id.startswith("scale")]
    assert scale and all(f.severity != "serious" for f in scale), r.text()
    assert scale[0].numbers["rot_spread_deg"] < ROT_SPREAD_MIN_DEG
    assert "rot" in scale[0].numbers["still"]


# ----------------------------------------------------------------------------- --fix

def _sha(p):
    from ablation.provenance import file_sha256

    return file_sha256(p)


@pytest.mark.sim
@pytest.mark.parametrize("kind", ["flipped_gripper", "zero_one_gripper", "obs_late", "noops"])
def test_fix_writes_a_corrected_copy(kind, planted, tmp_path, capsys):
    from ablation.cli import main

    src = planted[kind]
    before = _sha(src)
    out = tmp_path / f"{kind}_fixed.hdf5"
    rc = main(["doctor", "--data", str(src), "--no-sim", "--fix", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert _sha(src) == before  # the input is never touched
    assert rc == 0 and res["after"]["counts"]["serious"] == 0, json.dumps(res["after"]["findings"][:2], indent=1)
    assert res["after"]["counts"]["warning"] == 0, json.dumps(res["after"]["findings"][:3], indent=1)
    assert res["fix"]["applied"] and res["before"]["findings"][0]["code"] in res["fix"]["applied"][0]
    fixed, clean = read_demo_file(out), read_demo_file(planted["clean"])
    if kind in ("flipped_gripper", "zero_one_gripper"):  # back to the clean file's commands exactly
        for a, b in zip(fixed.episodes, clean.episodes):
            np.testing.assert_array_equal(a.actions, b.actions)
    elif kind == "obs_late":
        assert fixed.meta.obs_convention == "after"
    else:  # the planted no-ops are dropped; the expert's own (fingers closing) stay
        for a, b in zip(fixed.episodes, clean.episodes):
            np.testing.assert_array_equal(a.actions, b.actions)
            np.testing.assert_array_equal(a.obs["ee_pos"], b.obs["ee_pos"])


@pytest.mark.sim
def test_fix_refuses_to_write_over_its_input(planted, tmp_path, capsys):
    import shutil

    from ablation.cli import main

    p = tmp_path / "f.hdf5"
    shutil.copy(planted["flipped_gripper"], p)
    before = _sha(p)
    assert main(["doctor", "--data", str(p), "--no-sim", "--fix", str(p)]) == 2
    assert "never changes its input" in capsys.readouterr().err and _sha(p) == before


@pytest.mark.sim
def test_fixed_copy_replays_in_the_simulator(planted, tmp_path, capsys):
    """The flipped file fails Gate A; its fixed copy passes it (the doctor re-runs with the simulator)."""
    from ablation.cli import main

    out = tmp_path / "fixed.hdf5"
    rc = main(["doctor", "--data", str(planted["flipped_gripper"]), "--episodes", "3", "--workdir", str(tmp_path),
               "--checks", "gripper,gate_a", "--fix", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    gate = {f["id"]: f for f in res["after"]["findings"]}["gate_a"]
    assert rc == 0 and gate["severity"] == "info" and gate["numbers"]["passed"], json.dumps(gate, indent=1)
    before_gate = {f["id"]: f for f in res["before"]["findings"]}["gate_a"]
    assert before_gate["severity"] == "serious" and before_gate["where"]


# ----------------------------------------------------------------------------- the corpus, small

@pytest.fixture(scope="session")
def object_task2_file(tmp_path_factory) -> Path:
    """The issue's clean file: the expert on libero_object task 2 (its rotation barely varies)."""
    from ablation.sim.demos import generate_demos

    out = tmp_path_factory.mktemp("obj2") / "libero_object_task2.hdf5"
    return generate_demos("libero_object", 2, n=3, out=out, seed=0, progress=False)


@pytest.mark.sim
@pytest.mark.slow
def test_corpus_small_confusion_table(expert_demo_file, object_task2_file, image_demo_file, tmp_path):
    """benchmarks/doctor_corpus.py on two tasks: 0 serious findings on every clean file (alone with the
    simulator checks, and with the seed's spec), every planted pitfall ranked first."""
    from ablation.doctor.corpus import CLEAN, CLEAN_SPEC, EXPECTED, check_clean, check_planted, confusion_table
    from ablation.spec import EXPERIMENTS_DIR

    files = {("libero_object", 0): expert_demo_file, ("libero_object", 2): object_task2_file}
    rows = []
    for i, ((suite, task), path) in enumerate(files.items()):
        rows.append(check_clean(path, suite, task, sim=(task == 2), workdir=tmp_path, episodes=2))
        rows.append(check_clean(path, suite, task, sim=False, workdir=tmp_path,
                                spec=EXPERIMENTS_DIR / "native_delta.yaml"))
        other = list(files.values())[1 - i]
        rows += check_planted(path, suite, task, tmp_path / f"{suite}_{task}", other_clean=other)
    rows += check_planted(image_demo_file, "libero_object", 0, tmp_path / "img", kinds=["blank_frames"])
    table = confusion_table(rows)
    print(table)
    assert all(r.ok for r in rows), table
    assert {r.kind for r in rows} == {CLEAN, CLEAN_SPEC, *EXPECTED}, table
    assert "all met: True" in table and "MISSED" not in table
