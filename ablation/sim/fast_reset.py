"""A faster `env.reset` for LIBERO's robosuite env: the same model and state, bit for bit.

LIBERO's env keeps robosuite's default `hard_reset=True`: every reset frees the sim (with a full
`gc.collect()`), rebuilds the scene's XML, then compiles it into a new MjModel. Profiled on
libero_object 0 (cProfile, 4 resets, 2.8 s): the compile `MjModel.from_xml_string` 0.38 s a reset, the
`gc.collect()` 0.17 s, all else ~0.15 s. In a plan's rollout (~200 steps at ~6 ms) that was ~40% of an
episode, and in the test suite's 40-step episodes most of it.

`ModelReuse`, installed on one env, keeps robosuite's reset sequence (the XML is still built, so
numpy's global generator sees the same draws) and changes two things:
- **The compile.** When the new XML is the one this env compiled last, it wraps that same MjModel
  again (a new MjData, as a new sim has), with every array of 1 MiB or less set back to its compiled
  value first: LIBERO's reset writes fixture poses into `body_pos`/`body_quat`, robosuite hides sites
  through `site_size`. The large arrays (meshes, textures: ~250 MB on libero_object) are never
  written by robosuite 1.4 or LIBERO 0.1.4; tests/test_fast_env.py compares every model array with a
  fresh compile after whole episodes. Any other XML is compiled as before, or loaded from disk when
  an earlier process compiled the same scene (`model_cache`).
- **The free.** The old sim is dropped without the explicit `gc.collect()`; Python's collector frees
  it on its own schedule. No simulation quantity depends on when.

An env built inside `kept_at_construction` compiles its scene through a ModelReuse from the start (the
same compile robosuite does), so even its first reset reuses a model instead of compiling the same XML
a second time (~0.4 s on a quiet core, ~1.3 s in a busy process's first env; every rollout worker, plan
job and demo worker builds at least one env).

One env, one model: envs never share one (a rollout worker steps several envs of one task in lockstep,
and each reset writes its own fixture poses into its model). Installed with the fast step
(`sim.fast`, versions checked there); `uninstall` gives robosuite's own reset back.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .model_cache import compile_xml, model_arrays, saved_xml

__all__ = ["ModelReuse", "kept_at_construction"]

RESTORED_MAX_BYTES = 1 << 20  # arrays up to this size are restored on reuse; larger ones are never written


class ModelReuse:
    """Replaces `_initialize_sim` and `_destroy_sim` on one robosuite env (instance attributes)."""

    def __init__(self, env):
        self._env = env
        self._xml: str | None = None
        self._model = None  # the raw mujoco.MjModel compiled from self._xml
        self._pristine: dict[str, np.ndarray] = {}
        self.compiles = 0  # how many resets compiled (the rest reused): for tests and benchmarks
        self.reuses = 0

    def install(self) -> "ModelReuse":
        self._env._initialize_sim = self.initialize_sim
        self._env._destroy_sim = self.destroy_sim
        return self

    def uninstall(self) -> None:
        for name in ("_initialize_sim", "_destroy_sim"):
            self._env.__dict__.pop(name, None)
        self._xml = self._model = None
        self._pristine = {}

    def initialize_sim(self, xml_string: str | None = None) -> None:
        """robosuite 1.4's `MujocoEnv._initialize_sim`, with the model reused when the XML is unchanged."""
        from robosuite.utils.binding_utils import MjSim

        env = self._env
        xml = xml_string if xml_string else env.model.get_xml()
        if env._xml_processor is not None:
            xml = env._xml_processor(xml)
        if self._model is not None and xml == self._xml:
            for name, value in self._pristine.items():
                np.copyto(getattr(self._model, name), value)
            self.reuses += 1
        else:
            self._model = compile_xml(xml)  # from the compiled-scene cache when this scene was compiled before
            self._xml = xml
            self._pristine = pristine_arrays(self._model)
            self.compiles += 1
        env.sim = MjSim(self._model)
        env.sim.forward()
        env.initialize_time(env.control_freq)

    def model_xml(self) -> str:
        """robosuite's `MjModel.get_xml()` of this env's model, also when it was loaded from the
        compiled-scene cache (model_cache.saved_xml)."""
        model = self._env.sim.model._model
        return saved_xml(model, self._xml) if self._xml is not None else self._env.sim.model.get_xml()

    def destroy_sim(self) -> None:
        """robosuite's `_destroy_sim`/`MjSim.free` without the full collection."""
        sim = self._env.sim
        if sim is not None:
            del sim._render_context_offscreen, sim.data, sim.model
            self._env.sim = None


@contextlib.contextmanager
def kept_at_construction():
    """While a robosuite env is built: its one construction-time compile goes through a ModelReuse (the
    compile robosuite 1.4 does, with the pristine arrays taken before its reset writes fixture poses).
    Yields a list that receives that ModelReuse, to be `install`ed when the env takes the fast reset.
    robosuite's class method is put back on exit, whatever happens. The patch is on the class, so envs are
    built one at a time in a process (as every caller here does: no process builds envs on two threads)."""
    from robosuite.environments.base import MujocoEnv

    made: list[ModelReuse] = []
    original = MujocoEnv.__dict__["_initialize_sim"]

    def initialize_sim(env, xml_string=None):
        reuse = ModelReuse(env)
        reuse.initialize_sim(xml_string)
        made.append(reuse)

    MujocoEnv._initialize_sim = initialize_sim
    try:
        yield made
    finally:
        MujocoEnv._initialize_sim = original


def pristine_arrays(model) -> dict[str, np.ndarray]:
    return {name: a.copy() for name, a in model_arrays(model).items()
            if a.nbytes <= RESTORED_MAX_BYTES and a.flags.writeable}
