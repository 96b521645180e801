"""This process's idle LIBERO envs, kept between rollout runs (creating one costs ~4 s on 2 cores).

Keyed by (suite, task, images, image_size): a process that runs many evaluations (a pool worker, a
plan's job process) builds each env once. An env whose episode raised is closed, not kept (its sim
may be in any state).
"""
from __future__ import annotations

import atexit

from .sim import env as sim_env  # looked up per call: tests count the envs made

_IDLE_ENVS: dict[tuple, list] = {}


def take_env(key: tuple):
    """An idle env for `key` (suite, task, images, image_size), made when there is none."""
    idle = _IDLE_ENVS.get(key)
    if idle:
        return idle.pop()
    suite, task, images, image_size = key
    # Made with robosuite's step; each run then sets env.fast from its RunConfig (one env serves both).
    return sim_env.make_env(suite, task, images=images, image_size=image_size, fast=False)


def keep_env(key: tuple, env) -> None:
    """Hand an env whose episode ended cleanly back to the cache."""
    if not _IDLE_ENVS:  # close them before interpreter teardown, while their GL contexts can still go cleanly
        atexit.register(close_cached_envs)
    _IDLE_ENVS.setdefault(key, []).append(env)


def close_env(env) -> None:
    """Close an env, ignoring errors (it may be broken: that is why it is being closed)."""
    if env is not None:
        try:
            env.close()
        except Exception:
            pass


def warm_envs(suite: str, task: int, images: bool = False, image_size: int = 128, n: int = 1) -> None:
    """Make sure this process holds n idle envs for (suite, task, images, image_size)."""
    key = (suite, int(task), bool(images), int(image_size))
    made = [take_env(key) for _ in range(n)]
    for env in made:
        keep_env(key, env)


def close_cached_envs() -> None:
    """Close every idle env this process keeps."""
    for envs in _IDLE_ENVS.values():
        for env in envs:
            close_env(env)
    _IDLE_ENVS.clear()
