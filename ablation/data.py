"""LIBERO-format HDF5 demos: read, validate, write; and training windows.

File layout (LIBERO `scripts/create_dataset.py`):
    data/                      attrs: env_name, problem_info (JSON), bddl_file_name, bddl_file_content,
                                      env_args (JSON), num_demos, total, macros_image_convention
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

Training always uses the obs *before* an action; for "after" files obs_before[k] = obs[k-1]
(and obs[0] for k = 0, the one frame that is not stored).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from . import rotation as R
from .codec import ActionCodec, phys_state
from .diskfull import disk_full_as_error, ensure_space
from .representations import CONTROLLER_POS_SCALE_M, CONTROLLER_ROT_SCALE_RAD, Representation, representation
from .errors import UserError
from .spec import DataSpec

ACTION_DIM = 7
LOWDIM_KEYS = ("ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states", "object_state")
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
# Keys every file needs: the codec builds the proprio state and absolute targets from them.
REQUIRED_OBS = ("ee_pos", "ee_ori", "gripper_states")
GRIPPER_HISTORY_CAP = 30  # steps; "since last flip" saturates here (also for "never flipped")


class DemoFileError(UserError):
    """A demo file is unreadable or inconsistent; the message names file, demo and key."""


@dataclass
class Episode:
    actions: np.ndarray
    obs: dict[str, np.ndarray]
    states: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    robot_states: np.ndarray
    init_state: np.ndarray
    model_file: str = ""
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-demo datasets

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class DemoMeta:
    env_name: str
    problem_info: dict
    bddl_file_name: str
    bddl_file_content: str
    env_args: dict
    obs_convention: str = "before"
    attrs: dict = field(default_factory=dict)  # provenance: suite, task, expert, noise, versions


@dataclass
class DemoSet:
    path: Path
    meta: DemoMeta
    episodes: list[Episode]
    names: list[str]


# ----------------------------------------------------------------------------- env <-> LIBERO names

def env_obs_to_libero(raw: dict) -> dict[str, np.ndarray]:
    """robosuite observation dict -> LIBERO HDF5 obs names (low-dim, plus images when present)."""
    pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
    ori = R.quat_to_axis_angle(np.asarray(raw["robot0_eef_quat"], dtype=np.float64))
    out = {
        "ee_pos": pos,
        "ee_ori": ori,
        "ee_states": np.concatenate([pos, ori]),
        "gripper_states": np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
        "joint_states": np.asarray(raw["robot0_joint_pos"], dtype=np.float64),
    }
    if "object-state" in raw:
        out["object_state"] = np.asarray(raw["object-state"], dtype=np.float64)
    if "agentview_image" in raw:
        out["agentview_rgb"] = np.asarray(raw["agentview_image"], dtype=np.uint8)
    if "robot0_eye_in_hand_image" in raw:
        out["eye_in_hand_rgb"] = np.asarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8)
    return out


def gripper_history_features(prev_grip_cmds: Iterable[float]) -> np.ndarray:
    """(2,) = [last gripper command (-1 open/+1 close), steps since it last flipped / cap].

    A memoryless policy cannot tell the motionless steps of a grasp apart; this counter can.
    Before any flip the counter reads saturated (1.0), so wait steps do not shift it.
    """
    prev = np.asarray(list(prev_grip_cmds), dtype=np.float64).ravel()
    if prev.size == 0:
        return np.array([-1.0, 1.0])
    signs = np.where(prev > 0, 1.0, -1.0)
    flips = np.nonzero(signs[1:] != signs[:-1])[0]
    since = GRIPPER_HISTORY_CAP if flips.size == 0 else len(prev) - (flips[-1] + 1)
    return np.array([signs[-1], min(since, GRIPPER_HISTORY_CAP) / GRIPPER_HISTORY_CAP])


# Features computed from stored obs rather than read from the file. `ee_rot6d` is the policy's
# orientation input: `ee_ori` (axis-angle with the quaternion forced to w >= 0) jumps from about
# (+3.1, +0.5, 0) to (-3.1, -0.5, 0) under a 0.01 rad tilt at the top-down gripper pose, where LIBERO
# arms spend their time; the first two columns of the rotation matrix are continuous everywhere.
# `ee_ori` stays what LIBERO files store.
DERIVED_OBS = {"ee_rot6d": lambda obs: R.matrix_to_rot6d(R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64)))}


def obs_value(obs: dict[str, np.ndarray], key: str) -> np.ndarray:
    """A stored or derived observation (derived keys are computed from the stored ones)."""
    if key in obs:
        return np.asarray(obs[key])
    if key in DERIVED_OBS:
        return DERIVED_OBS[key](obs)
    raise KeyError(key)


def obs_feature_dim(key: str, ep_obs: dict[str, np.ndarray] | None = None) -> int:
    fixed = {"ee_pos": 3, "ee_ori": 3, "ee_rot6d": 6, "ee_states": 6, "gripper_states": 2, "joint_states": 7,
             "gripper_history": 2}
    if key in fixed:
        return fixed[key]
    if ep_obs is not None and key in ep_obs:
        return int(np.prod(ep_obs[key].shape[1:]))
    raise KeyError(key)


def obs_features(obs: dict[str, np.ndarray], keys: Iterable[str]) -> np.ndarray:
    """One step's low-dim observation dict -> flat float vector in `keys` order."""
    return np.concatenate([np.asarray(obs_value(obs, k), dtype=np.float64).ravel() for k in keys])


# ----------------------------------------------------------------------------- writing

def write_demo_file(path: str | Path, episodes: list[Episode], meta: DemoMeta) -> None:
    """Write demos in LIBERO's layout. Written to a temp name and renamed: never half a file."""
    path = Path(path)
    if not episodes:
        raise DemoFileError(f"{path}: refusing to write a demo file with no episodes")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    # about the raw array bytes (floats are stored as float64; images gzipped, so smaller)
    needed = sum(np.asarray(a).nbytes for ep in episodes
                 for a in (ep.actions, ep.states, ep.robot_states, *ep.obs.values(), *ep.extras.values()))
    # images are stored gzipped, so only the other arrays are a floor on the space the file needs
    ensure_space(path, sum(np.asarray(a).nbytes for ep in episodes
                           for a in (ep.actions, ep.states, ep.robot_states, *ep.obs.values(), *ep.extras.values())
                           if np.asarray(a).ndim <= 2))
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
                d = g.create_group(f"demo_{i}")
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
    tmp.replace(path)


# ----------------------------------------------------------------------------- reading

def _attr_json(g, key: str, where: str) -> dict:
    raw = g.attrs.get(key)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise DemoFileError(f"{where}: attribute '{key}' is not valid JSON") from None


def _attr_str(g, key: str) -> str:
    raw = g.attrs.get(key, "")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _resolve_convention(path: Path, g, asked: str | None) -> str:
    """The file's obs convention: its own attribute when it has one (a spec that contradicts it is an
    error), else what the data show (actions vs the following EEF motion), else the spec must say."""
    if asked not in (None, "auto", "before", "after"):
        raise DemoFileError(f"{path}: data.obs_convention '{asked}' is not one of auto, before, after")
    stated = _attr_str(g, "obs_convention") or None
    if stated is not None and stated not in ("before", "after"):
        raise DemoFileError(f"{path}: attribute data.obs_convention '{stated}' is not one of before, after")
    if asked in (None, "auto"):
        if stated:
            return stated
        detected = _detect_convention(path)
        if detected is None:
            raise DemoFileError(
                f"{path}: the file does not say when its obs were recorded (no data.obs_convention attribute) and "
                "the actions do not tell it apart; set data.obs_convention: before (obs recorded before each "
                "step) or after (LIBERO's original create_dataset.py) in the spec")
        return detected
    if stated and stated != asked:
        raise DemoFileError(
            f"{path}: the spec says data.obs_convention: {asked} but the file records obs {stated} each step "
            f"(attribute data.obs_convention); set data.obs_convention: auto or {stated}")
    return asked


def _detect_convention(path: Path) -> str | None:
    try:
        from .libero_file import detect_obs_convention
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    try:
        got = detect_obs_convention(path)
    except Exception:
        return None
    return got[0] if isinstance(got, tuple) else got


def read_demo_file(path: str | Path, obs_convention: str | None = None, load_images: bool = False,
                   required_obs: Iterable[str] = REQUIRED_OBS, max_demos: int | None = None) -> DemoSet:
    """Read and validate a LIBERO-format file. `obs_convention` None/"auto" takes the file's own
    attribute, or detects it from the data; an explicit value that contradicts the file is an error."""
    path = Path(path)
    if not path.is_file():
        raise DemoFileError(f"{path}: demo file not found (generate one with `run_ablation.py demos`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DemoFileError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if "data" not in f:
            raise DemoFileError(f"{path}: no 'data' group; is this a LIBERO demo file?")
        g = f["data"]
        names = sorted((k for k in g.keys() if k.startswith("demo_")),
                       key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else 1 << 30)
        if not names:
            raise DemoFileError(f"{path}: empty file: 'data' holds no demo_* groups")
        conv = _resolve_convention(path, g, obs_convention)
        meta = DemoMeta(
            env_name=_attr_str(g, "env_name"), problem_info=_attr_json(g, "problem_info", str(path)),
            bddl_file_name=_attr_str(g, "bddl_file_name"), bddl_file_content=_attr_str(g, "bddl_file_content"),
            env_args=_attr_json(g, "env_args", str(path)), obs_convention=conv,
            attrs=_attr_json(g, "ablation_attrs", str(path)))
        episodes = [_read_episode(path, g[n], n, load_images, tuple(required_obs))
                    for n in names[:max_demos]]
    return DemoSet(path, meta, episodes, names[:max_demos])


def _read_episode(path: Path, d, name: str, load_images: bool, required_obs: tuple[str, ...]) -> Episode:
    where = f"{path}: {name}"

    def ds(key: str, group=d) -> np.ndarray:
        if key not in group:
            raise DemoFileError(f"{where}: missing dataset '{key}'")
        return np.asarray(group[key][()])

    actions = ds("actions").astype(np.float64)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise DemoFileError(f"{where}: 'actions' has shape {actions.shape}; LIBERO actions are (T, {ACTION_DIM}) "
                            "(xyz, axis-angle, gripper)")
    T = actions.shape[0]
    if T == 0:
        raise DemoFileError(f"{where}: 'actions' is empty")
    if "obs" not in d:
        raise DemoFileError(f"{where}: missing group 'obs'")
    obs: dict[str, np.ndarray] = {}
    for key in d["obs"].keys():
        if key in IMAGE_KEYS and not load_images:
            continue
        obs[key] = ds(key, d["obs"])
    for key in required_obs:
        if key not in obs:
            raise DemoFileError(f"{where}: missing obs key 'obs/{key}' (have: {', '.join(sorted(obs)) or 'none'})")
    arrays = {"actions": actions, **{f"obs/{k}": v for k, v in obs.items()}}
    for opt in ("states", "robot_states", "rewards", "dones"):
        if opt in d:
            arrays[opt] = ds(opt)
    for key, arr in arrays.items():
        if arr.shape[0] != T:
            raise DemoFileError(f"{where}: '{key}' has {arr.shape[0]} steps but 'actions' has {T}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.argwhere(~np.isfinite(arr.reshape(T, -1)))[0][0])
            raise DemoFileError(f"{where}: '{key}' contains NaN or inf (first at step {bad})")
    extras = {k: ds(k) for k in d.keys() if k not in ("actions", "states", "robot_states", "rewards",
                                                        "dones", "obs") and isinstance(d[k], h5py.Dataset)}
    init_state = d.attrs.get("init_state")
    states = arrays.get("states", np.zeros((T, 0)))
    return Episode(
        actions=actions, obs=obs, states=states,
        rewards=arrays.get("rewards", np.zeros(T)), dones=arrays.get("dones", np.zeros(T)),
        robot_states=arrays.get("robot_states", np.zeros((T, 0))),
        init_state=np.asarray(init_state if init_state is not None else (states[0] if len(states) else [])),
        model_file=_attr_str(d, "model_file"), extras=extras)


# ----------------------------------------------------------------------------- physical views

@dataclass(frozen=True)
class EpisodeView:
    """One episode aligned to "obs before action k", in physical units."""

    actions: np.ndarray       # (T, 7) native
    obs: dict[str, np.ndarray]  # (T, ...) obs before each action, plus gripper_history
    ee_pos: np.ndarray        # (T, 3) m, before each action
    ee_rot: np.ndarray        # (T, 3, 3)
    next_ee_pos: np.ndarray   # (T, 3) m, after each action
    next_ee_rot: np.ndarray   # (T, 3, 3)
    state: np.ndarray         # (T, 10) proprio state, physical


def episode_view(ep: Episode, convention: str) -> EpisodeView:
    T = len(ep)
    if convention == "before":
        obs = {k: v for k, v in ep.obs.items()}
    else:  # shift: obs before action k is the obs stored after action k-1
        obs = {k: np.concatenate([v[:1], v[:-1]], axis=0) for k, v in ep.obs.items()}
    ee_pos = obs["ee_pos"].astype(np.float64)
    ee_rot = R.axis_angle_to_matrix(obs["ee_ori"])
    if convention == "after":
        next_pos, next_rot = ep.obs["ee_pos"].astype(np.float64), R.axis_angle_to_matrix(ep.obs["ee_ori"])
    else:
        # The pose after the last action is not stored; use the commanded target there.
        last_pos = ee_pos[-1] + ep.actions[-1, :3] * CONTROLLER_POS_SCALE_M
        last_rot = R.axis_angle_to_matrix(ep.actions[-1, 3:6] * CONTROLLER_ROT_SCALE_RAD) @ ee_rot[-1]
        next_pos = np.concatenate([ee_pos[1:], last_pos[None]], axis=0)
        next_rot = np.concatenate([ee_rot[1:], last_rot[None]], axis=0)
    grip_hist = np.stack([gripper_history_features(ep.actions[:k, 6]) for k in range(T)])
    obs["gripper_history"] = grip_hist
    state = phys_state(ee_pos, ee_rot, obs["gripper_states"])
    return EpisodeView(ep.actions.astype(np.float64), obs, ee_pos, ee_rot, next_pos, next_rot, state)


def physical_actions(view: EpisodeView, rep: Representation) -> np.ndarray:
    """The episode's actions in the representation's physical units, (T, rep.dim)."""
    return rep.from_demo(view.actions, view.ee_pos, view.ee_rot, view.next_ee_pos, view.next_ee_rot)


# ----------------------------------------------------------------------------- windows

@dataclass
class Windows:
    """Training samples, one per (demo, step). Model-space arrays are float32.

    obs[i, j]      = low-dim features of step t-To+1+j (repeated first frame before the start)
    actions[i, h]  = model-space action of step t+h (repeated last action past the end)
    action_valid   = 1 for real steps, 0 for padding
    """

    obs: np.ndarray           # (N, To, F)
    state: np.ndarray         # (N, Ws) model-space proprio state at t
    actions: np.ndarray       # (N, H, W)
    action_valid: np.ndarray  # (N, H)
    phys_actions: np.ndarray  # (N, H, D) physical targets, for errors in physical units
    native_actions: np.ndarray  # (N, H, 7)
    ee_pos: np.ndarray        # (N, 3)
    ee_rot: np.ndarray        # (N, 3, 3)
    demo_index: np.ndarray    # (N,)
    step: np.ndarray          # (N,)
    images: np.ndarray | None = None  # (N, To, n_cams, h, w, 3) uint8

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def split_demos(n: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split demo indices into train / validation, by demo (never by frame)."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def build_windows(views: list[EpisodeView], ids: list[int], codec: ActionCodec, data: DataSpec,
                  images: list[dict[str, np.ndarray]] | None = None) -> Windows:
    To, H = data.obs_history, data.action_chunk
    keys = [k for k in data.obs_keys]
    cols: dict[str, list] = {k: [] for k in ("obs", "state", "actions", "valid", "phys", "native",
                                              "pos", "rot", "demo", "step", "img")}
    for i in ids:
        v = views[i]
        T = len(v.actions)
        missing = [k for k in keys if k not in v.obs and not (k in DERIVED_OBS and "ee_ori" in v.obs)]
        if missing:
            raise DemoFileError(f"demo {i}: obs key(s) {', '.join(missing)} requested by data.obs_keys are not "
                                f"in the file (have: {', '.join(sorted(v.obs))})")
        stored = [k for k in v.obs if k in keys or k == "ee_ori"]
        feats = np.stack([obs_features({k: v.obs[k][t] for k in stored}, keys) for t in range(T)])
        phys = physical_actions(v, codec.rep)
        model = codec.encode(phys)
        state = codec.encode_state(v.state)
        for t in range(T):
            hist = np.clip(np.arange(t - To + 1, t + 1), 0, None)
            fut = np.arange(t, t + H)
            valid = (fut < T).astype(np.float32)
            fut = np.minimum(fut, T - 1)
            cols["obs"].append(feats[hist])
            cols["state"].append(state[t])
            cols["actions"].append(model[fut])
            cols["valid"].append(valid)
            cols["phys"].append(phys[fut])
            cols["native"].append(v.actions[fut])
            cols["pos"].append(v.ee_pos[t])
            cols["rot"].append(v.ee_rot[t])
            cols["demo"].append(i)
            cols["step"].append(t)
            if images is not None:
                cams = [images[i][k] for k in IMAGE_KEYS if k in images[i]]
                cols["img"].append(np.stack([np.stack([c[h] for c in cams]) for h in hist]))
    if not cols["obs"]:
        raise DemoFileError("no training windows: the split holds no demo steps")
    return Windows(
        obs=np.asarray(cols["obs"], dtype=np.float32), state=np.asarray(cols["state"], dtype=np.float32),
        actions=np.asarray(cols["actions"], dtype=np.float32), action_valid=np.asarray(cols["valid"], dtype=np.float32),
        phys_actions=np.asarray(cols["phys"]), native_actions=np.asarray(cols["native"]),
        ee_pos=np.asarray(cols["pos"]), ee_rot=np.asarray(cols["rot"]),
        demo_index=np.asarray(cols["demo"]), step=np.asarray(cols["step"]),
        images=np.asarray(cols["img"], dtype=np.uint8) if images is not None else None)


@dataclass
class PreparedData:
    codec: ActionCodec
    train: Windows
    val: Windows | None
    train_ids: list[int]
    val_ids: list[int]
    demo_set: DemoSet


def fit_codec(codec_spec, views: list[EpisodeView], ids: list[int]) -> ActionCodec:
    """The codec fitted on the demos `ids` (a run's training split): the one codec a run trains with,
    audits and saves. Statistics come from the training split only, so validation measures
    generalisation honestly."""
    rep = representation(codec_spec.representation, codec_spec.rotation)
    phys = np.concatenate([physical_actions(views[i], rep) for i in ids])
    states = np.concatenate([views[i].state for i in ids])
    native = np.concatenate([views[i].actions for i in ids])
    return ActionCodec.fit(codec_spec, phys, states, native)


def prepare_data(spec_data: DataSpec, codec_spec, demo_path: str | Path, split_seed: int = 0,
                 demos: DemoSet | None = None) -> PreparedData:
    """Read a demo file (or take `demos`, already read from it), split by demo, fit the codec on the
    training split, build windows."""
    ds = demos if demos is not None else read_demo_file(demo_path, obs_convention=spec_data.obs_convention,
                                                        load_images=spec_data.images)
    views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    train_ids, val_ids = split_demos(len(views), spec_data.val_fraction, split_seed)
    codec = fit_codec(codec_spec, views, train_ids)
    imgs = [{k: ep.obs[k] for k in IMAGE_KEYS if k in ep.obs} for ep in ds.episodes] if spec_data.images else None
    train = build_windows(views, train_ids, codec, spec_data, imgs)
    val = build_windows(views, val_ids, codec, spec_data, imgs) if val_ids else None
    return PreparedData(codec, train, val, train_ids, val_ids, ds)
