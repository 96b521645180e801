"""Rotation conversions in float64 numpy, batched over leading dims.

6D rotation = the first two columns of the rotation matrix, column by column
([R00, R10, R20, R01, R11, R21]); decoded with Gram-Schmidt (RDT docs/test_6drot.py).
Quaternions are (x, y, z, w), robosuite's order.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle in radians -> (..., 3, 3) rotation matrix (Rodrigues)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)[..., None]  # (..., 1, 1)
    k = _skew(aa)
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor series near 0, so tiny deltas stay exact.
    small = theta < 1e-6
    t2 = theta * theta
    a = np.where(small, 1.0 - t2 / 6.0, np.sin(theta) / np.where(small, 1.0, theta))
    b = np.where(small, 0.5 - t2 / 24.0, (1.0 - np.cos(theta)) / np.where(small, 1.0, t2))
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrix -> (..., 3) axis-angle in radians, angle in [0, pi]."""
    m = np.asarray(m, dtype=np.float64)
    return quat_to_axis_angle(matrix_to_quat(m))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) quaternion (x, y, z, w) with w >= 0 (Shepperd's method)."""
    m = np.asarray(m, dtype=np.float64)
    flat = m.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    for i, r in enumerate(flat):
        tr = r[0, 0] + r[1, 1] + r[2, 2]
        if tr > 0:
            s = np.sqrt(tr + 1.0) * 2
            q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
        elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
            s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
            q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
        elif r[1, 1] > r[2, 2]:
            s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
            q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
        else:
            s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
            q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
        q = np.asarray(q)
        q /= np.linalg.norm(q)
        out[i] = -q if q[3] < 0 else q
    return out.reshape(m.shape[:-2] + (4,))


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion (x, y, z, w) -> (..., 3) axis-angle, angle in [0, pi]."""
    q = np.asarray(q, dtype=np.float64)
    q = np.where(q[..., 3:4] < 0, -q, q)
    xyz, w = q[..., :3], np.clip(q[..., 3:4], -1.0, 1.0)
    s = np.linalg.norm(xyz, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, w)
    # angle / sin(angle/2) -> 2 as s -> 0
    scale = np.where(s < 1e-9, 2.0 / np.maximum(w, _EPS), angle / np.maximum(s, _EPS))
    return xyz * scale


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion (x, y, z, w) -> (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = (q[..., i] for i in range(4))
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): first column then second column."""
    m = np.asarray(m, dtype=np.float64)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt; exact inverse of matrix_to_rot6d on rotations."""
    r6 = np.asarray(r6, dtype=np.float64)
    a1, a2 = r6[..., :3], r6[..., 3:6]
    b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), _EPS)
    a2p = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2p / np.maximum(np.linalg.norm(a2p, axis=-1, keepdims=True), _EPS)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def _skew(v: np.ndarray) -> np.ndarray:
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(x)
    return np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(v.shape[:-1] + (3, 3))
