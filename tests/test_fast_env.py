"""The fast env step (ablation.sim.fast_step, spec `sim.fast`) against robosuite's own `env.step`.

Tolerance: none. The fast step does robosuite's floating-point operations in robosuite's order, so
every state, observation and outcome is asserted bit for bit (np.array_equal), over whole episodes:
a policy-like action sequence on three suites, the scripted expert's DART demos (generated both
ways) and their Gate A replay, and expert rollouts from fixed benchmark init states.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from ablation.sim import fast_step
from ablation.spec import resolve_spec, spec_path
from tests.conftest import assert_same_model

# baseline_rdt's hash (resources out of the identity) and the one it had before the `sim` section
# existed (commit d941e0b, Spec.legacy_hash): sim.fast must move neither.
BASELINE_RDT_HASH = "ba0f1edbdc1a8445"
LEGACY_BASELINE_RDT_HASH = "468c747d3018d7a4"
SUITES = [("libero_object", 0), ("libero_spatial", 0), ("libero_goal", 0)]


# ----------------------------------------------------------------------------- no simulator

def test_sim_fast_is_outside_the_spec_hash():
    from ablation.run import rollout_kwargs

    spec = resolve_spec(spec_path("baseline_rdt"))
    stock = resolve_spec(spec_path("baseline_rdt"), ["sim.fast=false"])
    assert spec.sim.fast is True and stock.sim.fast is False
    assert spec.hash() == stock.hash() == BASELINE_RDT_HASH
    assert spec.legacy_hash() == stock.legacy_hash() == LEGACY_BASELINE_RDT_HASH
    assert rollout_kwargs(spec, 0)["fast"] is True and rollout_kwargs(stock, 0)["fast"] is False
    # any other field still moves it
    assert resolve_spec(spec_path("baseline_rdt"), ["rollout.episodes=11"]).hash() != BASELINE_RDT_HASH


def test_unvalidated_versions_are_refused_with_the_fix(monkeypatch):
    from ablation.sim.env import LiberoEnv

    fast_step.check_versions()  # this install is the validated one
    monkeypatch.setattr(fast_step, "installed_versions",
                        lambda: {"robosuite": "1.5.1", "libero": "hf-libero 0.1.4", "mujoco": "3.8.1"})
    with pytest.raises(fast_step.FastPathError) as e:
        LiberoEnv("libero_object", 0)  # refused before any sim is built
    msg = str(e.value)
    assert "robosuite 1.5.1 (validated: 1.4.0)" in msg and "--set sim.fast=false" in msg
    assert "mujoco" not in msg  # only what is off is named


# ----------------------------------------------------------------------------- simulator

@pytest.fixture(scope="module")
def env_pairs():
    """(stock, fast) envs per (suite, task), built once for the module."""
    from ablation.sim.env import make_env

    made: dict = {}

    def get(suite: str, task: int):
        if (suite, task) not in made:
            made[suite, task] = (make_env(suite, task, fast=False), make_env(suite, task, fast=True))
        return made[suite, task]

    yield get
    for pair in made.values():
        for env in pair:
            env.close()


def _policy_like_actions(n: int, seed: int) -> np.ndarray:
    """Chunks of 8 steps around a drifting mean, as a diffusion policy's replans look, with the
    gripper closing and opening, some arm dims past [-1, 1] (the controller clips them)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 7))
    mean = np.zeros(6)
    for t in range(n):
        if t % 8 == 0:
            mean = np.clip(mean + rng.normal(0.0, 0.35, 6), -1.2, 1.2) * np.array([1, 1, 1, 0.3, 0.3, 0.3])
        out[t, :6] = mean + rng.normal(0.0, 0.05, 6)
        out[t, 6] = 1.0 if (t // 20) % 2 else -1.0
    return out


def _reset_both(stock, fast, init: np.ndarray, seed: int) -> tuple[dict, dict]:
    """reset_to on both with numpy's global generator seeded alike: LIBERO's reset places the
    fixtures (model body_pos, outside the flattened state) by drawing from it."""
    out = []
    for env in (stock, fast):
        np.random.seed(seed)
        out.append(env.reset_to(init))
    return out[0], out[1]


def _assert_same_sim(stock, fast, where: str) -> None:
    assert np.array_equal(stock.sim_state(), fast.sim_state()), f"{where}: sim state differs"
    d0, d1 = stock.sim.data._data, fast.sim.data._data
    for name in ("qacc_warmstart", "ctrl", "act", "xpos", "xquat", "site_xpos", "qfrc_bias", "sensordata"):
        assert np.array_equal(getattr(d0, name), getattr(d1, name)), f"{where}: MjData.{name} differs"


def _assert_same_model(stock, fast, where: str) -> None:
    """The fast reset reuses its model (ablation.sim.fast_reset) and must leave nothing changed against
    the stock reset's fresh compile."""
    assert_same_model(stock.sim.model._model, fast.sim.model._model, where)


def _assert_same_obs(a: dict, b: dict, where: str) -> None:
    assert sorted(a) == sorted(b), where
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{where}: obs {k} differs"


def test_the_construction_hook_is_removed_whatever_happens():
    """kept_at_construction patches robosuite's class only while one env is built, also when it fails."""
    from robosuite.environments.base import MujocoEnv

    from ablation.sim.fast_reset import kept_at_construction

    original = MujocoEnv.__dict__["_initialize_sim"]
    with pytest.raises(RuntimeError, match="construction failed"):
        with kept_at_construction() as made:
            assert MujocoEnv.__dict__["_initialize_sim"] is not original and made == []
            raise RuntimeError("construction failed")
    assert MujocoEnv.__dict__["_initialize_sim"] is original


@pytest.mark.sim
@pytest.mark.parametrize("suite,task", SUITES)
def test_policy_like_episode_is_bit_identical(env_pairs, suite, task):
    stock, fast = env_pairs(suite, task)
    assert fast.fast and not stock.fast
    o0, o1 = _reset_both(stock, fast, stock.init_states[1], seed=1)
    _assert_same_obs(o0, o1, "reset")
    # the first reset compiled nothing: it reused the model compiled when the env was built
    # (fast_reset.kept_at_construction), set back to its pristine arrays; the stock env compiled anew
    assert (fast._reuse.compiles, fast._reuse.reuses) == (1, 1)
    _assert_same_model(stock, fast, "first reset")
    for t, a in enumerate(_policy_like_actions(45, seed=task)):
        (o0, d0), (o1, d1) = stock.step(a), fast.step(a)
        assert d0 == d1, f"step {t}: done differs"
        _assert_same_obs(o0, o1, f"step {t}")
        _assert_same_sim(stock, fast, f"step {t}")
    assert np.array_equal(stock.robot_state(), fast.robot_state())
    rs0, rs1 = stock.robosuite_env, fast.robosuite_env
    assert rs0.timestep == rs1.timestep and rs0.cur_time == rs1.cur_time
    assert np.array_equal(rs0.robots[0].gripper.current_action, rs1.robots[0].gripper.current_action)
    # a reset between episodes rebinds the fast step to the new sim: the next episode matches too. The
    # fast env's reset reused the model its first reset compiled, the stock one compiled a new one.
    reuses = fast._reuse.reuses
    o0, o1 = _reset_both(stock, fast, stock.init_states[2], seed=2)
    assert fast._reuse.reuses == reuses + 1
    _assert_same_model(stock, fast, "second reset")
    for t, a in enumerate(_policy_like_actions(10, seed=99)):
        (o0, _), (o1, _) = stock.step(a), fast.step(a)
        _assert_same_obs(o0, o1, f"second episode, step {t}")
    _assert_same_sim(stock, fast, "second episode")
    _assert_same_model(stock, fast, "second episode")


@pytest.mark.sim
def test_expert_episode_is_bit_identical(env_pairs):
    """A whole scripted-expert episode with DART noise (to success or the suite's budget)."""
    from ablation.sim.demos import record_episode
    from ablation.sim.expert import ScriptedExpert

    stock, fast = env_pairs("libero_spatial", 0)
    starts = _reset_both(stock, fast, stock.init_states[3], seed=3)
    eps = [record_episode(env, env.init_states[3], ScriptedExpert.for_env(env), np.random.default_rng(5), 0.3,
                          env.max_steps, obs=obs) for env, obs in zip((stock, fast), starts)]
    assert eps[0] is not None and eps[1] is not None, "the expert should solve this start both ways"
    a, b = eps
    assert len(a.actions) == len(b.actions)
    for name in ("actions", "states", "robot_states"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.extras["executed_actions"], b.extras["executed_actions"])
    _assert_same_obs(a.obs, b.obs, "expert episode")


def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f["data"].visititems(lambda name, node: out.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset)
                             else None)
    return out


@pytest.mark.sim
def test_demo_generation_and_gate_a_replay_are_unchanged(tmp_path):
    """The same demo file either way (the cache key ignores sim.fast, rightly), and Gate A's replay
    of it through a spec's codec has the same per-episode outcomes and lengths."""
    from ablation.gates import replay_gate
    from ablation.sim.demos import generate_demos

    files = {fast: generate_demos("libero_object", 0, n=1, out=tmp_path / f"fast_{fast}.hdf5", seed=3,
                                  workers=1, progress=False, fast=fast) for fast in (False, True)}
    d0, d1 = _datasets(files[False]), _datasets(files[True])
    assert sorted(d0) == sorted(d1) and len(d0) > 5
    for k in d0:
        assert np.array_equal(d0[k], d1[k]), f"demo dataset {k} differs"
    gates = {fast: replay_gate(resolve_spec(spec_path("native_delta"), [f"sim.fast={str(fast).lower()}"]),
                               files[True], episodes=1) for fast in (False, True)}
    assert gates[False].successes == gates[True].successes
    assert gates[False].steps == gates[True].steps
    assert gates[False].passed == gates[True].passed


@pytest.mark.sim
def test_rollout_outcomes_match_on_fixed_init_states():
    """Through the rollout runner (whose cached env switches path per run): the expert from benchmark
    init states 0 and 1, within a budget short enough that not every episode need succeed."""
    from ablation.builtin_policies import ExpertPolicy
    from ablation.rollout_pool import run_rollouts

    runs = {fast: run_rollouts(ExpertPolicy, "libero_object", 0, [0, 1], replan_every=1, max_steps=100,
                               fast=fast) for fast in (True, False)}
    for e0, e1 in zip(runs[False].episodes, runs[True].episodes):
        assert e0.error is None and e1.error is None
        assert (e0.episode, e0.success, e0.steps) == (e1.episode, e1.success, e1.steps)
        assert e0.action_mean == e1.action_mean and e0.action_std == e1.action_std
    print("outcomes:", [(e.episode, e.success, e.steps) for e in runs[True].episodes])
