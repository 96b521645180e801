"""The LIBERO HDF5 demo format: read (validated, into `episodes.Episode`) and write; its attributes.

Also reads files written elsewhere (LIBERO's own `create_dataset.py`, OpenVLA's no-op-free
regenerations). File layout (LIBERO `scripts/create_dataset.py`):

    data/                      attrs: env_name, problem_info (JSON), bddl_file_name, bddl_file_content,
                                      env_args (JSON), num_demos, total, macros_image_convention,
                                      [obs_convention, ablation_attrs (JSON): ours]
    data/demo_i/actions        (T, 7) native actions in [-1, 1]
    data/demo_i/states         (T, S) flattened sim states
    data/demo_i/robot_states   (T, 9) gripper qpos | eef pos | eef quat
    data/demo_i/rewards, dones (T,)
    data/demo_i/obs/<key>      (T, ...) ee_pos, ee_ori, ee_states, gripper_states, joint_states, [object_state],
                               [agentview_rgb, eye_in_hand_rgb]
                               attrs: num_samples, init_state, model_file

Observation timing. `obs_convention` says when obs[k] was taken relative to actions[k]:

    "before" (ours, OpenVLA no-op-free):  obs[k] --actions[k]--> obs[k+1]
    "after"  (original LIBERO script):    obs[k-1] --actions[k]--> obs[k]

A file without the attribute is judged from its data (`demo_evidence.alignment_evidence`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from .demo_evidence import alignment_evidence
from .diskfull import disk_full_as_error, ensure_space
from .episodes import (REQUIRED_OBS, DemoFileError, DemoMeta, DemoSet, Episode, check_actions, check_convention,
                       check_steps, resolve_convention)
from .libero_tasks import infer_suite_task_from
from .obs_features import IMAGE_KEYS

DETECT_DEMOS = 20  # demos the obs timing is judged from, for a file that does not state it
_STEP_KEYS = ("actions", "states", "robot_states", "rewards", "dones", "obs")


# ----------------------------------------------------------------------------- writing

def write_demo_file(path: str | Path, episodes: list[Episode], meta: DemoMeta) -> None:
    """Write demos in LIBERO's layout. Written to a temp name and renamed: never half a file."""
    path = Path(path)
    if not episodes:
        raise DemoFileError(f"{path}: refusing to write a demo file with no episodes")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    arrays = [np.asarray(a) for ep in episodes
              for a in (ep.actions, ep.states, ep.robot_states, *ep.obs.values(), *ep.extras.values())]
    needed = sum(a.nbytes for a in arrays)  # about the raw bytes (floats as float64; images gzipped, so smaller)
    # images are stored gzipped, so only the other arrays are a floor on the space the file needs
    ensure_space(path, sum(a.nbytes for a in arrays if a.ndim <= 2))
    with disk_full_as_error(path, needed, cleanup=lambda: tmp.unlink(missing_ok=True)):
        with h5py.File(tmp, "w") as f:
            g = f.create_group("data")
            g.attrs["env_name"] = meta.env_name
            g.attrs["problem_info"] = json.dumps(meta.problem_info)
            g.attrs["bddl_file_name"] = meta.bddl_file_name
            g.attrs["bddl_file_content"] = meta.bddl_file_content
            g.attrs["env_args"] = json.dumps(meta.env_args)
            g.attrs["macros_image_convention"] = "opengl"
            g.attrs["obs_convention"] = meta.obs_convention
            g.attrs["ablation_attrs"] = json.dumps(meta.attrs, sort_keys=True, default=str)
            g.attrs["num_demos"] = len(episodes)
            g.attrs["total"] = int(sum(len(e) for e in episodes))
            for i, ep in enumerate(episodes):
                _write_episode(g.create_group(f"demo_{i}"), ep)
    tmp.replace(path)


def _write_episode(d, ep: Episode) -> None:
    d.create_dataset("actions", data=np.asarray(ep.actions, dtype=np.float64))
    d.create_dataset("states", data=np.asarray(ep.states, dtype=np.float64))
    d.create_dataset("robot_states", data=np.asarray(ep.robot_states, dtype=np.float64))
    d.create_dataset("rewards", data=np.asarray(ep.rewards, dtype=np.uint8))
    d.create_dataset("dones", data=np.asarray(ep.dones, dtype=np.uint8))
    for k, v in ep.extras.items():
        d.create_dataset(k, data=np.asarray(v))
    o = d.create_group("obs")
    for k, v in ep.obs.items():
        if k in IMAGE_KEYS:
            o.create_dataset(k, data=np.asarray(v, dtype=np.uint8), compression="gzip",
                             compression_opts=4, chunks=(1,) + tuple(np.shape(v)[1:]))
        else:
            o.create_dataset(k, data=np.asarray(v, dtype=np.float64))
    d.attrs["num_samples"] = len(ep)
    d.attrs["init_state"] = np.asarray(ep.init_state, dtype=np.float64)
    d.attrs["model_file"] = ep.model_file


# ----------------------------------------------------------------------------- attributes

def _s(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _s(v.item())
    return str(v)


def _attr_json(g, key: str, where: str, strict: bool = True) -> dict:
    raw = _s(g.attrs.get(key))
    if not raw:
        return {}
    try:
        d = json.loads(raw)
    except json.JSONDecodeError:
        if not strict:
            return {}
        raise DemoFileError(f"{where}: attribute '{key}' is not valid JSON") from None
    return d if isinstance(d, dict) else {}


def _open(path: Path):
    if not path.is_file():
        raise DemoFileError(f"{path}: demo file not found (generate one with `run_ablation.py demos`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DemoFileError(f"{path}: not a readable HDF5 file ({e})") from None
    if "data" not in f:
        f.close()
        raise DemoFileError(f"{path}: no 'data' group; is this a LIBERO demo file?")
    return f


def demo_names(g) -> list[str]:
    names = [k for k in g.keys() if k.startswith("demo_")]
    return sorted(names, key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else 1 << 30)


def file_attrs(path: str | Path) -> dict:
    """The `data` group's attributes (strings decoded, JSON attrs parsed leniently) and the demo names."""
    with _open(Path(path)) as f:
        g = f["data"]
        out = {k: _s(v) if not isinstance(v, (np.integer, int, float, np.floating)) else v for k, v in g.attrs.items()}
        for k in ("problem_info", "env_args", "ablation_attrs"):
            out[k] = _attr_json(g, k, str(path), strict=False)
        out["demos"] = demo_names(g)
    return out


def infer_suite_task(path: str | Path) -> tuple[str, int]:
    """(suite, task index) of a LIBERO file, from its attributes (libero_tasks.infer_suite_task_from)."""
    return infer_suite_task_from(str(path), file_attrs(path))


# ----------------------------------------------------------------------------- reading

def read_libero_file(path: str | Path, obs_convention: str | None = None, load_images: bool = False,
                     required_obs: Iterable[str] = REQUIRED_OBS, max_demos: int | None = None) -> DemoSet:
    """Read and validate a LIBERO-format file. `obs_convention` None/"auto" takes the file's own
    attribute, or detects it from the data; an explicit value that contradicts the file is an error."""
    path = Path(path)
    check_convention(str(path), obs_convention, "data.obs_convention")
    with _open(path) as f:
        g = f["data"]
        names = demo_names(g)
        if not names:
            raise DemoFileError(f"{path}: empty file: 'data' holds no demo_* groups")
        stated = _s(g.attrs.get("obs_convention")) or None
        meta = DemoMeta(
            env_name=_s(g.attrs.get("env_name")), problem_info=_attr_json(g, "problem_info", str(path)),
            bddl_file_name=_s(g.attrs.get("bddl_file_name")), bddl_file_content=_s(g.attrs.get("bddl_file_content")),
            env_args=_attr_json(g, "env_args", str(path)), attrs=_attr_json(g, "ablation_attrs", str(path)))
        # without a stated timing, the first DETECT_DEMOS demos are read to judge it from the data
        n_read = len(names) if max_demos is None else max(max_demos, 0 if stated else DETECT_DEMOS)
        episodes = [_read_episode(path, g[n], n, load_images, tuple(required_obs)) for n in names[:n_read]]
    meta.obs_convention = resolve_convention(
        str(path), obs_convention, stated, lambda: alignment_evidence(episodes[:DETECT_DEMOS]).convention)
    return DemoSet(path, meta, episodes[:max_demos], names[:max_demos])


def _read_episode(path: Path, d, name: str, load_images: bool, required_obs: tuple[str, ...]) -> Episode:
    where = f"{path}: {name}"

    def ds(key: str, group=d) -> np.ndarray:
        if key not in group:
            raise DemoFileError(f"{where}: missing dataset '{key}'")
        return np.asarray(group[key][()])

    actions = ds("actions").astype(np.float64)
    check_actions(where, actions)
    T = actions.shape[0]
    if "obs" not in d:
        raise DemoFileError(f"{where}: missing group 'obs'")
    obs = {key: ds(key, d["obs"]) for key in d["obs"].keys() if load_images or key not in IMAGE_KEYS}
    for key in required_obs:
        if key not in obs:
            raise DemoFileError(f"{where}: missing obs key 'obs/{key}' (have: {', '.join(sorted(obs)) or 'none'})")
    arrays = {"actions": actions, **{f"obs/{k}": v for k, v in obs.items()}}
    arrays.update({k: ds(k) for k in ("states", "robot_states", "rewards", "dones") if k in d})
    check_steps(where, arrays, T)
    extras = {k: ds(k) for k in d.keys() if k not in _STEP_KEYS and isinstance(d[k], h5py.Dataset)}
    init_state = d.attrs.get("init_state")
    states = arrays.get("states", np.zeros((T, 0)))
    return Episode(
        actions=actions, obs=obs, states=states,
        rewards=arrays.get("rewards", np.zeros(T)), dones=arrays.get("dones", np.zeros(T)),
        robot_states=arrays.get("robot_states", np.zeros((T, 0))),
        init_state=np.asarray(init_state if init_state is not None else (states[0] if len(states) else [])),
        model_file=_s(d.attrs.get("model_file")), extras=extras, name=name)


def image_frames(path: str | Path, max_demos: int | None = None) -> dict[str, list[np.ndarray]]:
    """Per camera, the stored frames of each demo (uint8, as stored: OpenGL's upside-down convention)."""
    out: dict[str, list[np.ndarray]] = {}
    with _open(Path(path)) as f:
        g = f["data"]
        for name in demo_names(g)[:max_demos]:
            obs = g[name]["obs"] if "obs" in g[name] else {}
            for k in IMAGE_KEYS:
                if k in obs:
                    out.setdefault(k, []).append(np.asarray(obs[k][()]))
    return out
