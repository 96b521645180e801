"""The frames of a LeRobot v3 dataset's video features, decoded with PyAV (`av`, in the [lerobot] extra;
LeRobot's own writer encodes with it).

LeRobot's reader decodes through torchcodec or torchvision's video reader; this stack has neither
(torchvision's video reader is gone from current torchvision, and torchcodec needs its own FFmpeg), so
the frames are decoded here. A v3 dataset keeps many episodes in one mp4 per camera (meta/episodes
gives each episode's file and its `from_timestamp` in it); frame t of an episode is the file's frame
at `from_timestamp + timestamp[t]`, matched to the nearest frame of the stream's rate. Video is lossy:
frames come back close to what was recorded, not equal (AV1 at LeRobot's default crf 30).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .episodes import DemoFileError

DECODE_FIX = "install the [lerobot] extra (PyAV: pip install 'av>=15,<16'), or train without images (data.images: false)"


def require_pyav(root: Path, key: str) -> None:
    """One clear error when a video feature is asked for and PyAV is missing."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise DemoFileError(f"{root}: feature '{key}' is stored as video; decoding it needs PyAV; {DECODE_FIX}") from None


def check_video_files(root: Path, info: dict) -> None:
    """Every mp4 that meta/episodes names for the dataset's video features is there. LeRobot's loader
    would otherwise try to download a missing one from the Hub and fail with a network error."""
    keys = [k for k, f in (info.get("features") or {}).items() if f.get("dtype") == "video"]
    if not keys:
        return
    import pandas as pd  # (with the [lerobot] extra, as pyarrow)

    parts = sorted((root / "meta" / "episodes").glob("**/*.parquet"))
    episodes = pd.concat([pd.read_parquet(p) for p in parts]) if parts else pd.DataFrame()
    template = str(info.get("video_path") or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    for key in keys:
        cols = (f"videos/{key}/chunk_index", f"videos/{key}/file_index")
        if not all(c in episodes.columns for c in cols):
            raise DemoFileError(f"{root}: meta/episodes has no {cols[0]} / {cols[1]} for video feature '{key}'; "
                                "not a complete LeRobot v3 dataset (re-export it)")
        for chunk, file in sorted(set(zip(episodes[cols[0]].astype(int), episodes[cols[1]].astype(int)))):
            rel = template.format(video_key=key, chunk_index=chunk, file_index=file)
            if not (root / rel).is_file():
                raise DemoFileError(f"{root}: video {rel} of feature '{key}' is missing; copy the whole dataset "
                                    "folder (videos/ included)")


def _decode_file(path: Path, fps: float) -> dict[int, np.ndarray]:
    """Every frame of an mp4 as {frame number at `fps`: (H, W, 3) uint8 RGB}."""
    import av

    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames[int(round(float(frame.time) * fps))] = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError) as e:
        raise DemoFileError(f"{path}: cannot decode this video ({type(e).__name__}: {e}); {DECODE_FIX}") from None
    if not frames:
        raise DemoFileError(f"{path}: the video holds no frames; re-export the dataset")
    return frames


def video_column(root: Path, ds, key: str, episode_index: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """The (N, H, W, 3) uint8 frames of video feature `key` for the dataset rows given by their episode
    index and timestamp (s), in that row order, as LeRobot stores them (upright)."""
    fps = float(ds.meta.fps)
    decoded: dict[Path, dict[int, np.ndarray]] = {}
    where: dict[int, tuple[Path, float]] = {}   # episode -> (its mp4, its start in it): looked up once
    out: list[np.ndarray] = []
    for ep, ts in zip(episode_index.astype(int), timestamp.astype(float)):
        if ep not in where:
            where[ep] = (root / ds.meta.get_video_file_path(int(ep), key),
                         float(ds.meta.episodes[int(ep)][f"videos/{key}/from_timestamp"]))
        path, start = where[ep]
        if path not in decoded:
            if not path.is_file():
                raise DemoFileError(f"{root}: episode {ep}: video {path.relative_to(root)} of feature '{key}' is "
                                    "missing; copy the whole dataset folder (videos/ included)")
            decoded[path] = _decode_file(path, fps)
        n = int(round((start + ts) * fps))
        frame = decoded[path].get(n)
        if frame is None:
            raise DemoFileError(f"{path}: no frame at {start + ts:.3f} s (episode {ep}, timestamp {ts:.3f} s) for "
                                f"feature '{key}'; the video is shorter than meta/episodes says: re-export the dataset")
        out.append(frame)
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
