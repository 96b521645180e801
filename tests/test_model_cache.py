"""Compiled MuJoCo scenes kept on disk (ablation/sim/model_cache.py): real MuJoCo, real files.

A loaded model must be the fresh compile, array for array; a changed asset, another XML, a damaged file,
a full cache or a cache turned off must each fall back to MuJoCo's own compile. The LIBERO test checks the
same on a real scene through the env, with LIBERO's `model_file` XML unchanged.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import mujoco
import numpy as np
import pytest

from ablation.sim import model_cache
from ablation.sim.model_cache import compile_xml, model_dir, model_key, saved_xml
from tests.conftest import assert_same_model

CUBE_OBJ = """v -1 -1 -1\nv 1 -1 -1\nv 1 1 -1\nv -1 1 -1\nv -1 -1 1\nv 1 -1 1\nv 1 1 1\nv -1 1 1
f 1 3 2\nf 1 4 3\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\nf 2 3 7\nf 2 7 6\nf 3 4 8\nf 3 8 7\nf 4 1 5\nf 4 5 8
"""


def scene(mesh: Path, scale: float = 0.05, mass: float = 1.0) -> str:
    return f"""<mujoco>
  <option timestep="0.002"/>
  <asset><mesh name="cube" file="{mesh}" scale="{scale} {scale} {scale}"/></asset>
  <worldbody>
    <geom type="plane" size="1 1 0.1"/>
    <body name="box" pos="0 0 0.2"><freejoint/><geom type="mesh" mesh="cube" mass="{mass}"/>
      <site name="tip" pos="0 0 0.05" size="0.01" rgba="1 0 0 1"/></body>
  </worldbody>
</mujoco>"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(model_cache.LIMIT_ENV, raising=False)
    for k in model_cache.STATS:
        monkeypatch.setitem(model_cache.STATS, k, 0)
    return tmp_path


@pytest.fixture
def mesh(tmp_path) -> Path:
    p = tmp_path / "assets" / "cube.obj"
    p.parent.mkdir()
    p.write_text(CUBE_OBJ)
    return p


def rollout(model, steps: int = 200) -> np.ndarray:
    data = mujoco.MjData(model)
    for _ in range(steps):
        mujoco.mj_step(model, data)
    return np.concatenate([data.qpos, data.qvel])


def test_second_compile_loads_the_same_model(cache, mesh):
    xml = scene(mesh)
    first = compile_xml(xml)
    files = list(model_dir().glob("*.mjb"))
    assert model_cache.STATS == {"hits": 0, "misses": 1, "writes": 1, "evicted": 0}
    assert [f.stem for f in files] == [model_key(xml)]
    assert files[0].parent == cache / "xdg" / "ablation" / "mujoco_models"
    second = compile_xml(xml)
    assert model_cache.STATS["hits"] == 1 and model_cache.STATS["misses"] == 1
    fresh = mujoco.MjModel.from_xml_string(xml)
    assert_same_model(second, fresh)
    assert_same_model(first, fresh)
    assert np.array_equal(rollout(second), rollout(fresh))  # the box falls onto the plane the same way


def test_a_changed_asset_or_xml_compiles_afresh(cache, mesh):
    xml = scene(mesh)
    compile_xml(xml)
    key = model_key(xml)
    mesh.write_text(CUBE_OBJ.replace("v 1 1 1", "v 1 1 1.5"))  # the same path, another mesh
    os.utime(mesh, ns=(mesh.stat().st_atime_ns, mesh.stat().st_mtime_ns + 10**9))
    assert model_key(xml) != key
    changed = compile_xml(xml)
    assert model_cache.STATS["misses"] == 2 and model_cache.STATS["hits"] == 0
    assert_same_model(changed, mujoco.MjModel.from_xml_string(xml))
    heavier = scene(mesh, mass=2.0)
    assert model_key(heavier) != model_key(xml)
    assert compile_xml(heavier).body_mass[1] == pytest.approx(2.0)


def test_relative_or_missing_files_are_not_cached(cache, mesh, monkeypatch):
    monkeypatch.chdir(mesh.parent)
    relative = scene(Path("cube.obj"))
    assert model_key(relative) is None
    compile_xml(relative)
    assert model_key(scene(mesh.parent / "nothere.obj")) is None
    assert model_cache.STATS["writes"] == 0 and not model_dir().exists()


def test_a_damaged_file_is_compiled_again_and_rewritten(cache, mesh, caplog, monkeypatch):
    monkeypatch.chdir(cache)  # MuJoCo logs the truncated file to MUJOCO_LOG.TXT in the current directory
    xml = scene(mesh)
    compile_xml(xml)
    path = model_dir() / f"{model_key(xml)}.mjb"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="ablation.sim.model_cache"):
        model = compile_xml(xml)
    assert f"compiled-scene cache file {path} is unreadable" in caplog.text
    assert_same_model(model, mujoco.MjModel.from_xml_string(xml))
    assert path.read_bytes() == whole  # written again, whole
    compile_xml(xml)
    assert model_cache.STATS["hits"] == 1


def test_turned_off_unwritable_and_full(cache, mesh, monkeypatch):
    xml = scene(mesh)
    monkeypatch.setenv(model_cache.LIMIT_ENV, "0")
    compile_xml(xml)
    assert not model_dir().exists() and set(model_cache.STATS.values()) == {0}  # not even looked up
    monkeypatch.delenv(model_cache.LIMIT_ENV)
    blocker = cache / "blocker"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    assert_same_model(compile_xml(xml), mujoco.MjModel.from_xml_string(xml))
    assert model_cache.STATS["writes"] == 0
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
    # A limit below two scenes: the least recently used is deleted, the one just written kept.
    compile_xml(xml)
    size = (model_dir() / f"{model_key(xml)}.mjb").stat().st_size
    monkeypatch.setenv(model_cache.LIMIT_ENV, str(1.5 * size / (1 << 30)))
    other = scene(mesh, scale=0.07)
    compile_xml(other)
    assert sorted(p.stem for p in model_dir().glob("*.mjb")) == [model_key(other)]
    assert model_cache.STATS["evicted"] == 1


def test_a_bad_limit_warns_and_keeps_the_default(monkeypatch, caplog):
    monkeypatch.setenv(model_cache.LIMIT_ENV, "4GB")
    with caplog.at_level(logging.WARNING, logger="ablation.sim.model_cache"):
        assert model_cache.limit_bytes() == 4 << 30
    assert "ABLATION_MODEL_CACHE_GB='4GB' is not a number of GB" in caplog.text


def test_saved_xml_of_a_loaded_model_carries_its_current_values(cache, mesh):
    """MuJoCo copies a model's values back into the saved XML only from the last parse's model; a loaded
    one (signature 0) goes through that parse's model."""
    xml = scene(mesh)
    compile_xml(xml)
    loaded, compiled = compile_xml(xml), mujoco.MjModel.from_xml_string(xml)
    assert loaded.signature == 0 and compiled.signature != 0
    for m in (loaded, compiled):
        m.body_pos[1] = [0.1, 0.2, 0.3]
        m.site_rgba[0, 3] = -1
        m.opt.timestep = 0.004
    a, b = saved_xml(loaded, xml), saved_xml(compiled, xml)
    assert a == b
    assert re.search(r'<body name="box" pos="0.1 0.2 0.3"', a) and 'rgba="1 0 0 -1"' in a and 'timestep="0.004"' in a


@pytest.mark.sim
def test_libero_env_from_the_cache_is_the_fresh_compile(cache):
    """A fast env whose scene another env compiled: its model, an episode, and LIBERO's model_file XML
    (fixture poses written by the reset included) equal those of the env that compiled it."""
    from ablation.sim.env import make_env

    envs = []
    for _ in range(2):
        envs.append(make_env("libero_object", 0))
    assert model_cache.STATS["misses"] == 1 and model_cache.STATS["hits"] == 1
    try:
        out = []
        for env in envs:
            np.random.seed(3)  # LIBERO's reset places the fixtures with numpy's global generator
            env.reset_to(env.init_states[0])
            actions = np.random.default_rng(0).uniform(-1, 1, (20, 7))
            for a in actions:
                env.step(a)
            out.append((env.sim_state(), env.model_xml(), env.sim.model._model))
        assert np.array_equal(out[0][0], out[1][0])
        # MuJoCo itself writes content_type="model/stl" on meshes or not, depending on what this process
        # compiled before (the stock and fast envs differ so, too): it is the type the file's extension says.
        untyped = [re.sub(r' content_type="[^"]*"', "", o[1]) for o in out]
        assert untyped[0] == untyped[1] and len(untyped[0]) > 10_000
        hidden = 'name="gripper0_ft_frame" pos="0 0 0" size="0.01" group="1" rgba="1 0 0 -1"'  # by the reset
        assert hidden in untyped[1]
        assert out[1][2].signature == 0
        assert_same_model(out[0][2], out[1][2])
    finally:
        for env in envs:
            env.close()
