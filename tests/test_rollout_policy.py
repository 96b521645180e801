"""The rollout-policy contract and the one episode summary, without the simulator: what a policy must
define, the env actions its chunk decodes to, the trained bundle's policy behind the contract, and
the success rule and key names that rollout, run and report share."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ablation.bundle_policy import BundlePolicy
from ablation.builtin_policies import ReplayPolicy, ZeroPolicy, native_codec
from ablation.data import episode_view, prepare_data, read_demo_file
from ablation.policy import ObsNormalizer, build_policy
from ablation.rollout import EpisodeRunner
from ablation.rollout_episode import RunConfig, episode_generator
from ablation.rollout_policy import ActionChunk, RolloutPolicy
from ablation.rollout_records import EpisodeRecord, EpisodeSummary, RolloutResult, episode_succeeded, wilson_interval
from ablation.rotation import axis_angle_to_matrix
from ablation.run import summarise_episodes
from ablation.spec import resolve_spec, spec_path

OBS = {"ee_pos": np.array([0.1, 0.0, 1.0]), "ee_ori": np.array([np.pi, 0.0, 0.0]),
       "gripper_states": np.array([0.04, -0.04])}


# ----------------------------------------------------------------------------- the contract

def test_a_policy_must_define_act():
    class NoAct(RolloutPolicy):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoAct()


def test_defaults_of_the_contract():
    p = ZeroPolicy(chunk=3)
    assert (p.obs_history, p.wait_steps, p.batched) == (1, None, False)
    assert p.init_state_for(5) is None and p.reset(0) is None and p.attach_env(object()) is None
    chunks = p.act_batch([[OBS], [OBS]], [None, None])
    assert [len(c) for c in chunks] == [3, 3]


def test_a_chunk_decodes_each_row_to_an_env_action():
    codec = native_codec()
    rows = np.array([[0.5, 0, 0, 0, 0, 0, 1.0], [2.0, 0, 0, 0, 0, 0, -1.0]])
    chunk = ActionChunk(rows, codec)
    assert len(chunk) == 2
    first, second = chunk.env_action(0, OBS), chunk.env_action(1, OBS)
    np.testing.assert_allclose(first.clipped[0], rows[0])
    assert second.raw[0, 0] == 2.0 and second.clipped[0, 0] == 1.0 and second.clip_fraction > 0


def test_a_chunk_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match=r"expected \(H>=1, 7\)"):
        ActionChunk(np.zeros((4, 5)), native_codec())
    with pytest.raises(ValueError, match="expected"):
        ActionChunk(np.zeros((0, 7)), native_codec())
    assert len(ActionChunk(np.zeros(7), native_codec())) == 1  # one row given flat


def test_the_engine_refuses_a_factory_that_returns_no_rollout_policy():
    class OldStyle:  # the duck-typed policies of before: codec, obs_history, act -> model space
        codec, obs_history = native_codec(), 1

        def act(self, window):
            return np.zeros((4, 7))

    runner = EpisodeRunner(OldStyle, RunConfig("libero_object", 0, replan_every=4))
    rec = runner.start(0)
    assert rec is not None and "not a RolloutPolicy" in rec.error and "load_rollout_policy" in rec.error


def test_replay_policy_pads_with_the_last_gripper_command(synthetic_demo_file):
    p = ReplayPolicy(str(synthetic_demo_file), executed=False, chunk=4)
    p.reset(0)
    n = len(p.actions[0])
    chunk = p.act([{"t": np.array([n - 2.0])}])
    assert len(chunk) == 4
    np.testing.assert_allclose(chunk.rows[:2], p.actions[0][-2:])
    assert np.all(chunk.rows[2:, :6] == 0) and np.all(chunk.rows[2:, 6] == p.actions[0][-1, 6])


# ----------------------------------------------------------------------------- a trained bundle's policy

@pytest.fixture(scope="module")
def tiny(synthetic_demo_file):
    spec = resolve_spec(spec_path("fix_minmax"), ["model.size=tiny", "data.action_chunk=4"])
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    model = build_policy(spec, data.codec, ObsNormalizer.fit(data.train.obs, spec.data.obs_keys),
                         data.train.obs.shape[-1])
    return model, BundlePolicy(model)


def test_bundle_policy_returns_the_models_chunk_as_env_actions(tiny, synthetic_demo_file):
    model, policy = tiny
    assert policy.batched and policy.codec is model.codec and policy.obs_history == model.obs_history
    v = episode_view(read_demo_file(synthetic_demo_file).episodes[0], "before")
    windows = [[{k: v.obs[k][t] for k in v.obs} for t in (s, s + 1)] for s in (0, 3)]
    chunks = policy.act_batch(windows, [episode_generator(0, 0), episode_generator(0, 1)])
    rows = model.act_batch(windows, [episode_generator(0, 0), episode_generator(0, 1)])
    for chunk, r, w in zip(chunks, rows, windows):
        assert isinstance(chunk, ActionChunk) and len(chunk) == 4
        np.testing.assert_array_equal(chunk.rows, r)  # the same noise, the same chunk, bit for bit
        ea = chunk.env_action(1, w[-1])
        want = model.codec.to_env(r[1:2], w[-1]["ee_pos"], axis_angle_to_matrix(w[-1]["ee_ori"]))
        np.testing.assert_array_equal(ea.raw, want.raw)
    one = policy.act(windows[0], torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(one.rows, model.act(windows[0], torch.Generator().manual_seed(7)))


# ----------------------------------------------------------------------------- one episode summary

def _rec(i, success, steps=10, error=None, clip=0.0, ratio=None) -> EpisodeRecord:
    return EpisodeRecord(episode=i, init_state=i, success=success, steps=steps, error=error, clip_fraction=clip,
                         pos_step_ratio=ratio)


def test_one_success_rule_a_crash_is_a_failure():
    assert episode_succeeded(_rec(0, True)) and not episode_succeeded(_rec(0, True, error="boom"))
    assert episode_succeeded({"success": True}) and not episode_succeeded({"success": True, "error": "x"})
    assert not episode_succeeded({})


def test_the_summary_of_records_and_of_their_dicts_agree():
    from dataclasses import asdict

    recs = [_rec(0, True, 20, clip=0.1, ratio=0.5), _rec(1, False, 40, ratio=1.5), _rec(2, True, 5, error="crash", ratio=9.0)]
    s = EpisodeSummary.of(recs)
    assert s == EpisodeSummary.of([asdict(r) for r in recs])
    assert (s.episodes, s.successes, s.crashed_episodes) == (3, 1, 1)
    assert s.success_rate == pytest.approx(1 / 3) and (s.success_ci95_low, s.success_ci95_high) == wilson_interval(1, 3)
    assert s.clip_rate == pytest.approx(0.05) and s.episode_len == 30.0  # means over the episodes that ran
    assert s.pos_out_of_range == 1.5                                     # the crashed episode's 9.0 is left out


def test_one_key_set_for_rollout_run_and_report():
    recs = [_rec(0, True), _rec(1, False)]
    keys = list(EpisodeSummary.of(recs).to_dict())
    assert list(summarise_episodes([r.__dict__ for r in recs])) == [f"eval/{k}" for k in keys if k != "pos_out_of_range"]
    summary = RolloutResult("libero_object", 0, recs, replan_every=8, workers=1, wall_s=1.0).summary()
    assert list(summary)[:len(keys)] == keys and summary["successes"] == 1
    assert "eval/pos_out_of_range" in summarise_episodes([_rec(0, True, ratio=0.2).__dict__])
