"""The command line as a user meets it: every subcommand's help, the shared flags spelled and meaning the
same on every command, `--json` results that parse (logs on stderr), and the errors of common slips.

Cheap invocations only: help, dry runs, a 2-step training on the synthetic demo file of conftest.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablation.cli import _subcommands, build_parser, main, route_plan_shortcut
from ablation.commands import common

REPO = Path(__file__).resolve().parents[1]
COMMANDS = _subcommands(build_parser())

# Which shared flags each command takes (a command a flag does not apply to must not have it either).
SHARED_FLAGS = {
    #          --json --workdir --spec --demos --profile
    "audit":  (1,     1,        1,     1,      0),
    "demos":  (1,     0,        0,     1,      0),
    "replay": (1,     0,        1,     1,      0),
    "train":  (1,     1,        1,     1,      1),
    "eval":   (1,     1,        1,     1,      1),
    "plan":   (1,     1,        0,     0,      1),
    "tune":   (1,     1,        1,     0,      1),
    "report": (1,     1,        0,     0,      0),
    "doctor": (1,     1,        1,     1,      0),
}
FLAGS = ("--json", "--workdir", "--spec", "--demos", "--profile")
# What each flag is, wherever it appears: its help starts the same, it parses the same way.
MEANING = {
    "--json": dict(help=common.JSON_HELP, nargs=0, type=None),
    "--workdir": dict(help=common.WORKDIR_HELP, type=Path),
    "--spec": dict(help=common.SPEC_HELP, type=None, metavar="SPEC"),  # a name or a path: common.resolve_refs
    "--demos": dict(help=common.DEMOS_HELP, type=Path),
    "--profile": dict(help=common.PROFILE_HELP, choices=common.PROFILES),
}
TINY_TRAIN = ["--set", "model.size=tiny", "--set", "train.batch_size=8", "--set", "train.warmup_steps=1",
              "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=1000",
              "--set", "data.action_chunk=4", "--steps", "2"]


def cli(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_ablation.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


def test_the_table_names_every_command():
    assert set(SHARED_FLAGS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_and_every_option_says_what_it_does(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: run_ablation.py {name}") and "--json" in out
    for a in COMMANDS[name]._actions:
        assert a.help, f"{name}: {a.option_strings or a.dest} has no help"


@pytest.mark.parametrize("name", sorted(SHARED_FLAGS))
def test_shared_flags_exist_and_mean_the_same_everywhere(name):
    opts = _options(COMMANDS[name])
    for flag, wanted in zip(FLAGS, SHARED_FLAGS[name]):
        assert (flag in opts) == bool(wanted), f"{name} {'lacks' if wanted else 'has'} {flag}"
        if not wanted:
            continue
        a, m = opts[flag], MEANING[flag]
        assert a.help.startswith(m["help"]), (name, flag, a.help)
        assert a.dest == flag[2:], (name, flag, a.dest)
        for key in ("type", "choices", "nargs", "metavar"):
            if key in m:
                assert getattr(a, key) == m[key], (name, flag, key, getattr(a, key))


def test_old_demo_spellings_still_work_hidden():
    for name, old in (("audit", "--data"), ("doctor", "--data"), ("demos", "--out")):
        a = _options(COMMANDS[name])[old]
        assert a.dest == "demos" and a.help == argparse.SUPPRESS, (name, old)
    args = build_parser().parse_args(["audit", "--spec", "fix_minmax", "--data", "x.hdf5"])
    assert args.demos == Path("x.hdf5")


def _parsed(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    common.resolve_refs(args)
    return args


def test_spec_takes_a_name_or_a_path_everywhere():
    from ablation.spec import EXPERIMENTS_DIR

    for name in ("audit", "train", "tune", "doctor", "replay"):
        argv = [name, "--spec", "fix_minmax"] + (["--demos", "x.hdf5"] if name in ("audit", "doctor") else [])
        by_name = _parsed(argv).spec
        assert Path(by_name).resolve() == (EXPERIMENTS_DIR / "fix_minmax.yaml").resolve(), name
        by_path = _parsed([*argv[:2], str(EXPERIMENTS_DIR / "fix_minmax.yaml"), *argv[3:]]).spec
        assert Path(by_path).resolve() == Path(by_name).resolve()
    # tune's default spec does not depend on the current directory
    assert Path(_parsed(["tune"]).spec).is_file()


def test_the_plan_shortcut_works_anywhere():
    commands = set(COMMANDS)
    assert route_plan_shortcut(["--plan", "smoke"], commands) == ["plan", "--plan", "smoke"]
    assert route_plan_shortcut(["--profile", "cpu", "--plan", "smoke"], commands)[0] == "plan"
    assert route_plan_shortcut(["-q", "--plan=smoke"], commands)[0] == "plan"
    assert route_plan_shortcut(["report", "--plan", "smoke"], commands) == ["report", "--plan", "smoke"]
    assert build_parser().parse_args(["plan", "smoke"]).name == "smoke"


def test_plan_dry_run_json_lists_the_runs_creates_nothing_and_logs_on_stderr(tmp_path):
    wd = tmp_path / "wd"
    out = cli("--profile", "cpu", "--plan", "smoke", "--dry-run", "--json", "--workdir", str(wd))
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)  # nothing but the result on stdout
    assert [(r["arm"], r["seed"], r["state"]) for r in rec["planned"]] == [
        ("baseline_rdt", 0, "to run"), ("fix_minmax", 0, "to run")]
    assert all(len(r["spec_hash"]) == 16 for r in rec["planned"])
    assert "[plan] smoke: 2 arm(s)" in out.stderr and "baseline_rdt" in out.stderr
    assert not wd.exists()  # no workdir, no MLflow database
    # the same without --json: the listing on stdout, the log lines on stderr; -q keeps only warnings
    text = cli("plan", "smoke", "--profile", "cpu", "--dry-run", "--workdir", str(wd), "-q")
    assert text.returncode == 0 and "[plan]" not in text.stdout + text.stderr
    assert "fix_minmax" in text.stdout and "to run" in text.stdout


def test_rotation_plan_dry_run_json_names_its_task(tmp_path):
    wd = tmp_path / "wd"
    out = cli("plan", "rotation", "--profile", "cpu", "--dry-run", "--json", "--workdir", str(wd))
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert {(r["suite"], r["task"]) for r in rec["planned"]} == {("libero_object", 0)}
    assert {r["arm"] for r in rec["planned"]} == {"baseline_rdt", "fix_pos_cm", "fix_rot_small",
                                                  "fix_pos_cm_rot_small", "fix_minmax"}
    assert len(rec["planned"]) == 20 and rec["timing"]["estimated_wall_s"]
    assert "[plan] task: libero_object task 0" in out.stderr  # the text listing says where it runs
    assert not wd.exists()


def test_common_slips_get_one_clear_line(tmp_path):
    seeds = cli("plan", "smoke", "--dry-run", "--seeds", "0,a", "--workdir", str(tmp_path / "wd"))
    assert seeds.returncode == 2 and "--seeds: '0,a': give whole numbers separated by commas" in seeds.stderr
    typo = cli("plan", "smoke", "--profile", "cpu", "--dry-run", "--set", "train.stpes=5",
               "--workdir", str(tmp_path / "wd"))
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    line = next(ln for ln in typo.stderr.splitlines() if ln.startswith("error:"))
    assert line.startswith("error: --set train.stpes=5: train.stpes: unknown key; did you mean train.steps?"), line
    spec = cli("audit", "--spec", "no_such_spec", "--demos", "x.hdf5")
    assert spec.returncode == 2 and spec.stderr.startswith("error: spec 'no_such_spec' not found; known specs:")
    replay = cli("replay")
    assert replay.returncode == 2 and "--demos FILE" in replay.stderr
    doctor = cli("doctor")
    assert doctor.returncode == 2 and "required: --demos" in doctor.stderr
    assert cli("--version").stdout.startswith("run_ablation.py ")


def test_eval_of_a_missing_checkpoint_fails_before_the_heavy_imports(tmp_path):
    code = ("import sys; from ablation.cli import main; rc = main(['eval', '--checkpoint', sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothere")], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr
    assert "nothere: directory not found" in out.stderr


def test_train_and_eval_json_parse(synthetic_demo_file, tmp_path):
    """train --json (2 steps of the tiny model) and eval --json --open-loop-only on what it wrote."""
    out = tmp_path / "run"
    train = cli("train", "--spec", "fix_minmax", "--demos", str(synthetic_demo_file), "--out", str(out),
                "--json", *TINY_TRAIN)
    assert train.returncode == 0, train.stderr[-2000:]
    rec = json.loads(train.stdout)
    assert rec["steps"] == 2 and Path(rec["checkpoint"]).is_dir() and rec["spec"] == "fix_minmax"
    ev = cli("eval", "--checkpoint", rec["checkpoint"], "--open-loop-only", "--n", "8", "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    got = json.loads(ev.stdout)
    assert got["spec_hash"] == rec["spec_hash"] and "pos_mm" in " ".join(got["open_loop"])


def test_audit_and_doctor_json_parse(synthetic_demo_file):
    audit = cli("audit", "--spec", "fix_minmax", "--demos", str(synthetic_demo_file), "--json")
    assert audit.returncode == 0, audit.stderr[-2000:]
    assert json.loads(audit.stdout)["spec"] == "fix_minmax"
    doctor = cli("doctor", "--demos", str(synthetic_demo_file), "--no-sim", "--json")
    assert doctor.returncode in (0, 1), doctor.stderr[-2000:]  # 1: it found something serious in the fake data
    assert json.loads(doctor.stdout)


def test_report_json_error_leaves_stdout_empty(tmp_path):
    rep = cli("report", "--workdir", str(tmp_path), "--json")
    assert rep.returncode == 2 and rep.stdout == "" and "no MLflow store" in rep.stderr


@pytest.mark.sim
def test_demos_json_parses(expert_demo_file):
    """`demos --json` on the file conftest made with the same inputs: reused, described in JSON."""
    out = cli("demos", "--suite", "libero_object", "--task", "0", "--n", "4", "--seed", "0",
              "--demos", str(expert_demo_file), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout)
    assert rec["demos"] == str(expert_demo_file) and rec["n_demos"] == 4 and rec["suite"] == "libero_object"
