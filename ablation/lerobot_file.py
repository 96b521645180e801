"""The LeRobot v3 dataset format (a directory holding meta/info.json): read into `episodes.Episode` and
write from it, through LeRobot's own dataset code (the `lerobot-dataset` package, import `ledataset`;
the `[lerobot]` extra).

Feature mapping (the layout of LeRobot's LIBERO datasets, e.g. any4lerobot's libero conversion):

    action                          (7,) -> actions: LIBERO's native command, delta xyz and delta axis-angle
                                            scaled to [-1, 1] (not absolute targets), gripper -1 open / +1 close
    observation.state               (8,) -> ee_pos [0:3] (m, world frame), ee_ori [3:6] (axis-angle, rad, world
                                            frame), gripper_states [6:8] (finger joint positions, m)
    observation.states.ee_state     (6,) -> ee_states (optional)
    observation.states.joint_state  (7,) -> joint_states (optional)
    observation.environment_state   (K,) -> object_state: robosuite's object-state vector (optional; the
                                            default specs' data.obs_keys ask for it)
    observation.images.image             -> agentview_rgb    } rotated 180 degrees: LeRobot stores LIBERO frames
    observation.images.wrist_image       -> eye_in_hand_rgb  } upright, LIBERO's HDF5 files upside down (OpenGL)
    task                                 -> problem_info.language_instruction (and so the suite/task)
    next.reward, next.done               -> rewards, dones (optional; not written: nothing here uses them)
    libero.sim_state                (S,) -> states; its first row is the state a replay resets to (ours)
    libero.executed_action          (7,) -> extras["executed_actions"] (ours: what DART noise executed)

Frames: observation t is recorded before action t is applied (LeRobot's recording loop), so the obs
convention is "before" unless meta/ablation.json (written by `write_lerobot_dataset`) says otherwise.
The gripper sign and the delta kind are not stated by the format: `doctor` checks both from the data.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Iterable

import numpy as np

from .episodes import (REQUIRED_OBS, DemoFileError, DemoMeta, DemoSet, Episode, check_actions, check_convention,
                       check_steps, resolve_convention)
from .libero_tasks import infer_suite_task_from
from .lerobot_video import check_video_files, require_pyav, video_column

FPS = 20  # LIBERO's control rate (Hz): LeRobot stores it as the dataset's fps
CODEBASE_VERSION = "v3.0"
SIDECAR = "meta/ablation.json"  # our DemoMeta: env, BDDL, obs convention, provenance (LeRobot ignores it)
STATE = "observation.state"
STATE_NAMES = ["x", "y", "z", "axis_angle_x", "axis_angle_y", "axis_angle_z", "gripper_qpos_left", "gripper_qpos_right"]
IMAGES = {"observation.images.image": "agentview_rgb", "observation.images.wrist_image": "eye_in_hand_rgb"}
LOWDIM = {"observation.states.ee_state": "ee_states", "observation.states.joint_state": "joint_states",
          "observation.environment_state": "object_state"}
SIM_STATE, EXECUTED = "libero.sim_state", "libero.executed_action"
EXTRA_FIX = "re-export the dataset with observation.state = eef xyz (3), eef axis-angle (3), gripper qpos (2)"


def is_lerobot_dataset(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "meta" / "info.json").is_file()


@contextlib.contextmanager
def _torchvision_if_broken():
    """LeRobot's dataset code imports torchvision at module top, for `transforms.ToTensor` only. The
    locked torchvision is PyPI's CUDA build, which cannot load beside the CPU torch ("operator
    torchvision::nms does not exist"; see ablation/rdt/vision.py). While LeRobot imports, a broken
    torchvision is replaced by a stand-in with that one transform; afterwards it is taken out again,
    so no other code sees it."""
    try:
        import torchvision  # noqa: F401
        yield
        return
    except Exception:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    tr.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    tr.ToTensor, tv.transforms = _ToTensor, tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr})
    try:
        yield
    finally:
        for k in ("torchvision", "torchvision.transforms"):
            sys.modules.pop(k, None)


class _ToTensor:
    """torchvision's ToTensor for the RGB images LeRobot decodes: (H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""

    def __call__(self, img):
        import torch

        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0


def _library():
    """LeRobot's dataset class; a clear error when the [lerobot] extra is not installed."""
    try:
        with _torchvision_if_broken():
            from ledataset.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as e:
        raise DemoFileError(f"reading or writing a LeRobot dataset needs the lerobot-dataset package ({e}); "
                            "install the extra: pip install -e '.[lerobot]' (scripts/setup.sh installs it)") from None
    return LeRobotDataset


# ----------------------------------------------------------------------------- reading

def _info(root: Path) -> dict:
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DemoFileError(f"{root}: meta/info.json is not readable JSON ({e})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DemoFileError(f"{root}: meta/info.json: codebase_version {version or 'missing'!r}; this reader takes "
                            "LeRobot v3 datasets; convert it with LeRobot's convert_dataset_v21_to_v30")
    for need in ("meta/tasks.parquet", "meta/episodes", "data"):
        if not (root / need).exists():
            raise DemoFileError(f"{root}: missing {need}; not a complete LeRobot v3 dataset (copy the whole folder)")
    return info


def check_features(root: Path, features: dict, load_images: bool) -> None:
    """The features the harness needs, with the shapes it maps; one error naming the feature and the fix."""
    def shape(key: str) -> tuple:
        return tuple(features[key].get("shape") or ())

    if "action" not in features:
        raise DemoFileError(f"{root}: feature 'action' is missing (have: {', '.join(sorted(features))}); the harness "
                            "needs LIBERO's 7-d native action per frame; re-export the dataset with an 'action' feature")
    if shape("action") != (7,):
        raise DemoFileError(f"{root}: feature 'action' has shape {shape('action')}; the harness maps (7,) LIBERO "
                            "actions (delta xyz, delta axis-angle, gripper); re-export the native LIBERO actions")
    if STATE not in features or shape(STATE) != (8,):
        got = f"has shape {shape(STATE)}" if STATE in features else "is missing"
        raise DemoFileError(f"{root}: feature '{STATE}' {got}; the harness maps an (8,) state: eef position (3, m), "
                            f"eef axis-angle (3, rad), gripper finger qpos (2); {EXTRA_FIX}")
    for key in IMAGES:
        if load_images and key in features and features[key].get("dtype") == "video":
            require_pyav(root, key)


def _sidecar(root: Path) -> dict:
    p = root / SIDECAR
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DemoFileError(f"{root}: {SIDECAR} is not valid JSON; delete it to use the LeRobot defaults") from None
    return d if isinstance(d, dict) else {}


def _meta(root: Path, side: dict, tasks: list[str]) -> DemoMeta:
    language = tasks[0] if tasks else ""
    return DemoMeta(env_name=str(side.get("env_name", "")),
                    problem_info=dict(side.get("problem_info") or {"language_instruction": language}),
                    bddl_file_name=str(side.get("bddl_file_name", "")),
                    bddl_file_content=str(side.get("bddl_file_content", "")),
                    env_args=dict(side.get("env_args") or {}), attrs=dict(side.get("attrs") or {}))


def _columns(ds, features: dict, load_images: bool) -> dict[str, np.ndarray]:
    """Every column as a numpy array, in the dataset's own dtypes (datasets' numpy format would turn
    float64 sim states into float32, and a replay must reset to the exact state)."""
    import pyarrow as pa  # with the [lerobot] extra; the HDF5 path never pays for it

    hf = ds.hf_dataset
    table = hf.with_format("arrow")[:]
    cols = {}
    for k in table.column_names:
        if k in IMAGES:
            continue
        col = table.column(k).combine_chunks()
        if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):  # one vector per frame
            cols[k] = np.asarray(col.flatten()).reshape(len(col), -1)
        else:
            cols[k] = np.asarray(col.to_numpy(zero_copy_only=False))
    images = [k for k in IMAGES if load_images and k in hf.column_names]
    if images:  # upright (LeRobot) -> upside down (LIBERO HDF5, OpenGL)
        frames = hf.with_format("numpy", columns=images)[:]
        cols.update({k: np.ascontiguousarray(np.asarray(frames[k])[:, ::-1, ::-1]) for k in images})
    videos = [k for k in IMAGES if load_images and features.get(k, {}).get("dtype") == "video"]
    for k in videos:  # kept outside the table, in mp4 files: decoded here, turned as the images are
        frames = video_column(Path(ds.root), ds, k, cols["episode_index"], cols["timestamp"])
        cols[k] = np.ascontiguousarray(frames[:, ::-1, ::-1])
    return cols


def _episode(cols: dict[str, np.ndarray], rows: np.ndarray, name: str, where: str,
             required_obs: tuple[str, ...]) -> Episode:
    actions = cols["action"][rows].astype(np.float64)
    check_actions(where, actions, "action")
    T = len(actions)
    state = cols[STATE][rows].astype(np.float64)
    obs = {"ee_pos": state[:, :3], "ee_ori": state[:, 3:6], "gripper_states": state[:, 6:8]}
    obs.update({ours: cols[k][rows].astype(np.float64) for k, ours in LOWDIM.items() if k in cols})
    obs.update({ours: cols[k][rows] for k, ours in IMAGES.items() if k in cols})
    missing = [k for k in required_obs if k not in obs]
    if missing:
        raise DemoFileError(f"{where}: obs {', '.join(missing)} cannot be mapped from the dataset's features")
    states = cols[SIM_STATE][rows].astype(np.float64) if SIM_STATE in cols else np.zeros((T, 0))
    extras = {"executed_actions": cols[EXECUTED][rows].astype(np.float64)} if EXECUTED in cols else {}
    rewards = cols["next.reward"][rows].astype(np.float64).ravel() if "next.reward" in cols else np.zeros(T)
    dones = cols["next.done"][rows].astype(np.float64).ravel() if "next.done" in cols else np.zeros(T)
    check_steps(where, {"action": actions, STATE: state, **({SIM_STATE: states} if states.size else {}),
                        **{EXECUTED: v for v in extras.values()}}, T, ref="action")
    return Episode(actions=actions, obs=obs, states=states, rewards=rewards, dones=dones,
                   robot_states=np.zeros((T, 0)), init_state=states[0] if states.size else np.zeros(0),
                   extras=extras, name=name)


def read_lerobot_dataset(path: str | Path, obs_convention: str | None = None, load_images: bool = False,
                         required_obs: Iterable[str] = REQUIRED_OBS, max_demos: int | None = None) -> DemoSet:
    """Read a local LeRobot v3 dataset as demos (episode i -> demo_i), mapped as the module doc says."""
    root = Path(path)
    check_convention(str(root), obs_convention, "data.obs_convention")
    info = _info(root)
    features = info.get("features") or {}
    check_features(root, features, load_images)
    check_video_files(root, info)
    side = _sidecar(root)
    try:
        ds = _library()(repo_id=f"local/{root.name}", root=root, download_videos=False)
    except DemoFileError:
        raise
    except Exception as e:  # the library's own errors: name the dataset
        raise DemoFileError(f"{root}: LeRobot cannot load this dataset ({type(e).__name__}: {e})") from None
    cols = _columns(ds, features, load_images)
    order = np.lexsort((cols["frame_index"], cols["episode_index"]))
    ep_ids = sorted({int(i) for i in cols["episode_index"]})[:max_demos]
    episodes = []
    for i in ep_ids:
        rows = order[cols["episode_index"][order] == i]
        episodes.append(_episode(cols, rows, f"demo_{i}", f"{root}: episode {i}", tuple(required_obs)))
    if not episodes:
        raise DemoFileError(f"{root}: the dataset holds no episodes")
    meta = _meta(root, side, [str(t) for t in ds.meta.tasks.index])
    # LeRobot records observation t before action t; only our sidecar may say otherwise
    stated_by = f"{SIDECAR} obs_convention" if "obs_convention" in side else "LeRobot's frame order"
    meta.obs_convention = resolve_convention(str(root), obs_convention, side.get("obs_convention", "before"),
                                             lambda: None, stated_by)
    return DemoSet(root, meta, episodes, [ep.name for ep in episodes])


def dataset_attrs(path: str | Path) -> dict:
    """The facts a LIBERO file keeps in its attributes, for a LeRobot dataset: from meta/ablation.json
    when we wrote it, else the task text as the language instruction."""
    root = Path(path)
    _info(root)
    side = _sidecar(root)
    tasks = _task_texts(root)
    out = {"problem_info": side.get("problem_info") or {"language_instruction": tasks[0] if tasks else ""},
           "bddl_file_name": side.get("bddl_file_name", ""), "bddl_file_content": side.get("bddl_file_content", ""),
           "env_args": side.get("env_args") or {}, "ablation_attrs": side.get("attrs") or {}}
    if side.get("obs_convention"):
        out["obs_convention"] = side["obs_convention"]
    return out


def _task_texts(root: Path) -> list[str]:
    import pandas as pd  # pandas is 1-2 s to import: only a LeRobot dataset pays for it

    return [str(t) for t in pd.read_parquet(root / "meta" / "tasks.parquet").index]


def infer_suite_task(path: str | Path) -> tuple[str, int]:
    """(suite, task) of a LeRobot dataset: our sidecar's suite/task, else its BDDL facts, else the task text."""
    return infer_suite_task_from(str(path), dataset_attrs(path))


# ----------------------------------------------------------------------------- writing

def _features(ep: Episode, images: bool, videos: bool = False) -> dict:
    f = {"action": {"dtype": "float32", "shape": (7,), "names": ["x", "y", "z", "axis_angle_x", "axis_angle_y",
                                                                "axis_angle_z", "gripper"]},
         STATE: {"dtype": "float32", "shape": (8,), "names": STATE_NAMES}}
    for key, ours in LOWDIM.items():
        if ours in ep.obs:
            f[key] = {"dtype": "float32", "shape": tuple(np.shape(ep.obs[ours])[1:]), "names": None}
    for key, ours in IMAGES.items():
        if images and ours in ep.obs:
            f[key] = {"dtype": "video" if videos else "image", "shape": tuple(np.shape(ep.obs[ours])[1:]),
                      "names": ["height", "width", "channel"]}
    if np.size(ep.states):
        f[SIM_STATE] = {"dtype": "float64", "shape": (int(np.shape(ep.states)[1]),), "names": None}
    if "executed_actions" in ep.extras:
        f[EXECUTED] = {"dtype": "float32", "shape": (7,), "names": None}
    return f


def _frame(ep: Episode, t: int, features: dict, task: str) -> dict:
    state = np.concatenate([ep.obs["ee_pos"][t], ep.obs["ee_ori"][t], ep.obs["gripper_states"][t]])
    frame = {"action": np.asarray(ep.actions[t], np.float32), STATE: state.astype(np.float32), "task": task}
    frame.update({k: np.asarray(ep.obs[ours][t], np.float32) for k, ours in LOWDIM.items() if k in features})
    # LIBERO's frames are upside down (OpenGL); LeRobot's LIBERO datasets store them upright
    frame.update({k: np.ascontiguousarray(ep.obs[ours][t][::-1, ::-1]) for k, ours in IMAGES.items() if k in features})
    if SIM_STATE in features:
        frame[SIM_STATE] = np.asarray(ep.states[t], np.float64)
    if EXECUTED in features:
        frame[EXECUTED] = np.asarray(ep.extras["executed_actions"][t], np.float32)
    return frame


def write_lerobot_dataset(root: str | Path, demo_set: DemoSet, images: bool = True, videos: bool = False) -> Path:
    """Write demos as a LeRobot v3 dataset at `root` (which must not exist), with LeRobot's own writer:
    frames as images (lossless), or as AV1 video with `videos` (LeRobot's default format; lossy), the
    features of the module doc, our DemoMeta in meta/ablation.json."""
    root = Path(root)
    if root.exists():
        raise DemoFileError(f"{root}: already exists; LeRobot writes a new dataset folder (pick a new path)")
    if not demo_set.episodes:
        raise DemoFileError(f"{root}: refusing to write a dataset with no episodes")
    eps, meta = demo_set.episodes, demo_set.meta
    if meta.obs_convention != "before":
        raise DemoFileError(f"{root}: LeRobot frames pair each observation with the action taken after it; "
                            f"{demo_set.path} records obs {meta.obs_convention} each step: re-record it (or shift it)")
    features = _features(eps[0], images, videos)
    task = str((meta.problem_info or {}).get("language_instruction", "")) or meta.env_name or "libero task"
    ds = _library().create(repo_id=f"local/{root.name}", fps=FPS, features=features, root=root, use_videos=videos)
    for ep in eps:
        for t in range(len(ep)):
            ds.add_frame(_frame(ep, t, features, task))
        ds.save_episode()
    ds.finalize()
    side = {"env_name": meta.env_name, "problem_info": meta.problem_info, "bddl_file_name": meta.bddl_file_name,
            "bddl_file_content": meta.bddl_file_content, "env_args": meta.env_args,
            "obs_convention": meta.obs_convention, "attrs": meta.attrs, "source": str(demo_set.path)}
    (root / SIDECAR).write_text(json.dumps(side, indent=1, sort_keys=True, default=str))
    return root
