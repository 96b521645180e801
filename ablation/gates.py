"""Gate A for any spec: replay a demo file's actions through the spec's OWN codec in the simulator.

    physical actions of the representation  (Representation.from_demo on the file's actions and poses)
      -> codec.encode -> model space -> codec.decode -> codec.to_env at the CURRENT simulated EEF pose
      -> env

This is the evaluation path of a policy of that spec with a perfect network. It matters for
representations with absolute targets (the seed's `seed_mix`: absolute target orientation decoded
at the current pose) and for any normaliser: if the decode path is wrong, the replay fails, whatever
the network learns. Each replayed episode starts from the demo's own stored init state
(`init_state` attr, else states[0]) via env.reset_to(state), after the file's wait steps.

DART demos record the clean expert label in `actions` but the env executed `executed_actions`;
the replay uses the executed ones when the file has them (the clean labels did not move the robot),
and says which in the result. Results are cached as JSON in `cache_dir`, keyed by (codec spec and
codec class, obs convention, actions used, demo file sha256, episodes), so each distinct codec is
replayed once per demo file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .episodes import check_replayable
from .errors import UserError
from .rollout_policy import ActionChunk, RolloutPolicy

GATE_VERSION = 2  # 2: replays get the suite's step budget (results of 1 are not reused)
GATE_MIN_SUCCESS = 0.9
REPLAY_CHUNK = 8


class GateFailed(UserError):
    """Gate A: the spec's own encode -> decode -> env path cannot replay its demos."""


@dataclass
class GateResult:
    gate: str
    spec: str
    codec: dict                 # the codec spec (model_dump) that was replayed
    codec_class: str
    demo_file: str
    demo_sha256: str
    suite: str
    task: int
    obs_convention: str
    actions_source: str         # "executed_actions" or "actions"
    n: int
    successes: list[bool]
    errors: list[str | None]
    steps: list[int]
    success_rate: float
    passed: bool
    reason: str
    wall_s: float
    cached: bool = False
    clip_rate: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GateResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def line(self) -> str:
        return self.reason


class SpecReplayPolicy(RolloutPolicy):
    """Open-loop replay of demo i (episode i) through a codec of `codec_spec` fitted on the file, as
    training would fit it. `act` returns the demo's encoded rows; each decodes at the pose it runs at.

    `codec_override(fitted_codec) -> codec-like` swaps in another codec (tests plant broken ones)."""

    def __init__(self, codec_spec: dict, demo_file: str, obs_convention: str, executed: bool = True,
                 chunk: int = REPLAY_CHUNK, wait_steps: int | None = None, max_demos: int | None = None,
                 codec_override=None):
        from .codec import ActionCodec
        from .representations import representation
        from .data import episode_view, read_demo_file
        from .spec import CodecSpec

        spec = CodecSpec.model_validate(codec_spec)
        ds = read_demo_file(demo_file, obs_convention=obs_convention, max_demos=max_demos)
        self.demo_file = str(demo_file)
        self.episodes = ds.episodes
        use_exec = executed and all("executed_actions" in ep.extras for ep in ds.episodes)
        self.actions_source = "executed_actions" if use_exec else "actions"
        rep = representation(spec.representation, spec.rotation)
        phys, states, native = [], [], []
        for ep in ds.episodes:
            v = episode_view(ep, ds.meta.obs_convention)
            a = (ep.extras["executed_actions"] if use_exec else ep.actions).astype(np.float64)
            phys.append(rep.from_demo(a, v.ee_pos, v.ee_rot, v.next_ee_pos, v.next_ee_rot))
            states.append(v.state)
            native.append(a)
        codec = ActionCodec.fit(spec, np.concatenate(phys), np.concatenate(states), np.concatenate(native))
        self.codec = codec_override(codec) if codec_override is not None else codec
        self.model = [np.asarray(self.codec.encode(p), dtype=np.float64) for p in phys]
        self.hold = [np.asarray(self.codec.encode(rep.hold(p[-1])[None]))[0] for p in phys]
        self.obs_history = 1
        self.chunk = chunk
        w = ds.meta.attrs.get("wait_steps")
        self.wait_steps = int(wait_steps if wait_steps is not None else (w if w is not None else 0))
        self._ep = 0

    def init_state_for(self, episode: int) -> np.ndarray:
        if not 0 <= episode < len(self.episodes):
            raise IndexError(f"{self.demo_file} has {len(self.episodes)} demos; no demo {episode}")
        ep = self.episodes[episode]
        if ep.init_state is not None and np.size(ep.init_state):
            return ep.init_state
        return ep.states[0]

    def reset(self, episode: int) -> None:
        self._ep = episode

    def act(self, window, generator=None) -> ActionChunk:
        t = int(window[-1]["t"][0])
        m = self.model[self._ep]
        rows = m[t:t + self.chunk]
        if len(rows) < self.chunk:
            pad = np.repeat(self.hold[self._ep][None], self.chunk - len(rows), axis=0)
            rows = np.concatenate([rows, pad]) if len(rows) else pad
        return ActionChunk(rows, self.codec)


def _sha256(path: str | Path) -> str:
    from .provenance import file_sha256

    return file_sha256(path)


def gate_cache_key(codec_spec: dict, codec_class: str, convention: str, executed: bool, sha: str,
                   episodes: list[int], suite: str, task: int) -> str:
    payload = {"v": GATE_VERSION, "codec": codec_spec, "codec_class": codec_class, "conv": convention,
               "executed": executed, "sha256": sha, "episodes": episodes, "suite": suite, "task": task}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def replay_gate(spec, demo_file: str | Path, *, episodes: int = 10, workers: int = 1,
                cache_dir: str | Path | None = None, suite: str | None = None, task: int | None = None,
                obs_convention: str | None = None, executed: bool = True, codec_override=None,
                min_success: float = GATE_MIN_SUCCESS, demos=None) -> GateResult:
    """Gate A through `spec`'s own codec: replay the first `episodes` demos of `demo_file` in LIBERO.

    spec: a Spec (its codec and data.obs_convention are used), or a CodecSpec.
    suite/task: default to the file's own (ablation.demo_io.infer_suite_task).
    obs_convention: default: the spec's data.obs_convention when a Spec is given ("auto": the file's
    attribute, else detected from the data).
    passed = success rate >= min_success (0.9).
    demos: the file's DemoSet when the caller has read it already (the run pipeline reads it once)."""
    from .data import read_demo_file
    from .demo_io import infer_suite_task
    from .spec import CodecSpec

    demo_file = Path(demo_file)
    codec_spec = spec.codec if hasattr(spec, "codec") else spec
    if not isinstance(codec_spec, CodecSpec):
        raise UserError(f"replay_gate: expected a Spec or CodecSpec, got {type(spec).__name__}")
    name = getattr(spec, "name", f"{codec_spec.representation}/{codec_spec.normalizer}")
    if obs_convention is None:  # "auto": the file's attribute, else detected from the data
        obs_convention = spec.data.obs_convention if hasattr(spec, "data") else None
    if suite is None or task is None:
        s, t = infer_suite_task(demo_file)
        suite, task = suite or s, t if task is None else task
    ds = demos if demos is not None else read_demo_file(demo_file, obs_convention=obs_convention)
    obs_convention = ds.meta.obs_convention
    n = min(int(episodes), len(ds.episodes))
    if n < 1:
        raise UserError(f"replay_gate: episodes must be >= 1 (got {episodes})")
    check_replayable(ds, n)
    has_exec = all("executed_actions" in ep.extras for ep in ds.episodes[:n])
    source = "executed_actions" if executed and has_exec else "actions"
    codec_class = "ActionCodec" if codec_override is None else getattr(codec_override, "__qualname__",
                                                                       type(codec_override).__qualname__)
    spec_json = codec_spec.model_dump(mode="json")
    sha = _sha256(demo_file)
    key = gate_cache_key(spec_json, codec_class, obs_convention, source == "executed_actions", sha,
                         list(range(n)), suite, int(task))
    cache_path = Path(cache_dir) / f"gate_a_{key}.json" if cache_dir is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            res = GateResult.from_dict(json.loads(cache_path.read_text()))
            res.cached = True
            return res
        except (json.JSONDecodeError, TypeError):
            pass  # a broken cache entry is simply recomputed
    from .rollout_pool import run_rollouts

    factory = functools.partial(SpecReplayPolicy, spec_json, str(demo_file), obs_convention,
                                source == "executed_actions", REPLAY_CHUNK, None, n, codec_override)
    # The suite's own step budget, as in evaluation: the gate asks whether the codec can do the task,
    # not whether it keeps the demo's pace (absolute targets decoded at the current pose replay a
    # little slower than the executed deltas, since the controller lags the pose it is sent to).
    t0 = time.perf_counter()
    fast = spec.sim.fast if hasattr(spec, "sim") else True  # a bare CodecSpec: the default
    res = run_rollouts(factory, suite, int(task), list(range(n)), replan_every=REPLAY_CHUNK, workers=workers,
                       fast=fast)
    wall = time.perf_counter() - t0
    succ = [bool(e.success) for e in res.episodes]
    rate = sum(succ) / n
    passed = rate >= min_success
    errs = [e.error for e in res.episodes]
    crashed = sum(e is not None for e in errs)
    reason = (f"Gate A ({name}: {codec_spec.representation}/{codec_spec.layout}/{codec_spec.normalizer}, "
              f"{source}, obs {obs_convention}): replay succeeded in {sum(succ)}/{n} = {rate:.0%} "
              f"(needs >= {min_success:.0%}) -> {'PASS' if passed else 'FAIL'}"
              + (f"; {crashed} episode(s) crashed: {next(e for e in errs if e)}" if crashed else ""))
    out = GateResult("A", name, spec_json, codec_class, str(demo_file), sha, suite, int(task), obs_convention,
                     source, n, succ, errs, [e.steps for e in res.episodes], rate, passed, reason, round(wall, 2),
                     False, res.stats.clip_rate)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out.to_dict(), indent=1))
        tmp.replace(cache_path)
    return out


__all__ = ["replay_gate", "GateResult", "GateFailed", "SpecReplayPolicy", "GATE_MIN_SUCCESS", "gate_cache_key"]
