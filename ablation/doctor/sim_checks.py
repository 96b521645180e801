"""Checks that run the LIBERO simulator: Gate A, start states, image orientation."""
from __future__ import annotations

import numpy as np

from .findings import Finding, where_demos

START_QPOS_TOL = 1e-4     # after set_init_state the sim must hold the stored state
START_JOINT_TOL = 0.05    # rad: robot joints vs the file's first recorded obs (after the wait steps)
# A broken file (flipped gripper, shifted obs, wrong starts) fails the replay of nearly every demo; a clean
# file of a contact-rich task can lose one demo in a few (measured: libero_10 task 5, expert demos, 2/3:
# the start states reproduced exactly). Gate A is serious only below this rate over at least
# GATE_SERIOUS_MIN_EPISODES demos; between it and the gate's own 90% it is a warning.
GATE_SERIOUS_BELOW = 0.5
GATE_SERIOUS_MIN_EPISODES = 3


def check_gate_a(spec, spec_label: str, data: str, suite: str, task: int, episodes: int, cache_dir,
                 workers: int = 1, names: list[str] | None = None) -> list[Finding]:
    from ..gates import replay_gate

    r = replay_gate(spec, data, episodes=episodes, workers=workers, cache_dir=cache_dir, suite=suite, task=task)
    nums = r.to_dict()
    names = names if names is not None and len(names) >= len(r.successes) else [f"demo_{i}" for i in
                                                                                   range(len(r.successes))]
    evid = r.reason + (" (cached)" if r.cached else "") + "; per demo: " + ", ".join(
        f"{names[i]} {'ok' if s else 'FAIL'}" for i, s in enumerate(r.successes))
    if r.passed:
        return [Finding("gate_a", "info", f"Gate A passes through {spec_label}'s decode path", evid, numbers=nums)]
    n = len(r.successes)
    broken = r.success_rate < GATE_SERIOUS_BELOW and n >= GATE_SERIOUS_MIN_EPISODES
    if not broken:
        why = ("too few demos replayed to call it serious" if n < GATE_SERIOUS_MIN_EPISODES
               else "a broken file fails nearly every replay")
        evid += (f"; {why} (serious below {GATE_SERIOUS_BELOW:.0%} over >= {GATE_SERIOUS_MIN_EPISODES} demos): contact-rich "
                 "replays are not exactly reproducible; look at the failing demos")
    return [Finding("gate_a", "serious" if broken else "warning", f"Gate A fails: replaying the file's own actions "
                    f"through {spec_label} succeeds in {r.success_rate:.0%}", evid,
                    fix="no policy can beat its own demos: fix the findings above (gripper, alignment, transform), "
                        "or the file/simulator mismatch (start states, versions)",
                    next=f"run_ablation.py replay {data} --json", numbers=nums,
                    where=where_demos([names[i] for i, ok in enumerate(r.successes) if not ok]))]


def check_start_states(demo_set, suite: str, task: int, n: int = 3) -> list[Finding]:
    from ..rollout_episode import WAIT_ACTION
    from ..sim.env import make_env

    eps = demo_set.episodes[:n]
    wait = int(demo_set.meta.attrs.get("wait_steps", 0) or 0)
    env = make_env(suite, task)
    try:
        nq = int(env.sim.model.nq)
        rows, bad, size_bad, joint_gap, matches = [], [], [], [], []
        bench = env.init_states
        for i, ep in enumerate(eps):
            init = np.asarray(ep.init_state if np.size(ep.init_state) else ep.states[0], dtype=np.float64)
            if init.size != env.sim_state().size:
                size_bad.append((i, int(init.size), int(env.sim_state().size)))
                continue
            obs = env.reset_to(init)
            s = env.sim_state()
            d = float(np.abs(s[1:1 + nq] - init[1:1 + nq]).max())
            rows.append(d)
            if d > START_QPOS_TOL:
                bad.append((i, d))
            if bench.shape[1] == init.size:
                k = int(np.argmin(np.abs(bench[:, 1:1 + nq] - init[1:1 + nq]).max(1)))
                matches.append((i, k, float(np.abs(bench[k, 1:1 + nq] - init[1:1 + nq]).max())))
            if "joint_states" in ep.obs and demo_set.meta.obs_convention == "before":
                for _ in range(wait):
                    obs, _ = env.step(WAIT_ACTION)
                joint_gap.append(float(np.abs(obs["joint_states"] - ep.obs["joint_states"][0]).max()))
    finally:
        env.close()
    nums = {"qpos_max_diff": rows, "size_mismatch": size_bad, "benchmark_init_match": matches,
            "joint_gap_rad": joint_gap}
    bench_txt = ("; starts match benchmark init states " + ", ".join(f"demo_{i}->#{k} ({e:.1g})" for i, k, e in matches)
                 if matches else "")
    names = list(demo_set.names)
    if size_bad:
        i, a, b = size_bad[0]
        return [Finding("start_state", "serious", "stored start states do not fit this task's simulator",
                        f"{names[i]}: init_state has {a} numbers, the {suite} task {task} sim state has {b}",
                        fix="the file is from another task or robosuite/LIBERO version; pass the right --suite/--task",
                        next="run_ablation.py doctor --data FILE --suite SUITE --task N", numbers=nums,
                        where=where_demos([names[j] for j, _a, _b in size_bad]))]
    evid = (f"after reset + set_init_state the sim qpos differs from the stored start by at most "
            f"{max(rows):.2g} (tolerance {START_QPOS_TOL:g}) over {len(rows)} demo(s)"
            + (f"; robot joints after the {wait} wait steps vs the first recorded obs: max {max(joint_gap):.3g} rad"
               if joint_gap else "") + bench_txt)
    if bad or (joint_gap and max(joint_gap) > START_JOINT_TOL):
        return [Finding("start_state", "serious" if bad else "warning", "the simulator does not reproduce the stored starts",
                        evid, fix="set_init_state must follow reset; a MuJoCo/robosuite version drift can also "
                                  "move start scenes (domain pitfalls 6, 7)",
                        next="run_ablation.py replay FILE", numbers=nums,
                        where=where_demos([names[i] for i, _d in bad] or names[:len(eps)]))]
    return [Finding("start_state", "info", "start states are reproduced", evid, numbers=nums)]


def _resize_nn(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) * img.shape[0] / h).astype(int)
    xs = (np.arange(w) * img.shape[1] / w).astype(int)
    return img[ys][:, xs]


def check_orientation(demo_set, frames: dict, suite: str, task: int, spec_uses_images: bool | None) -> list[Finding]:
    """Compare the file's first agentview frame with the simulator's render of the same start (as
    rendered, i.e. LIBERO's stored convention), flipped vertically, horizontally and rotated 180 deg."""
    from ..rollout_episode import WAIT_ACTION
    from ..sim.env import make_env

    if "agentview_rgb" not in frames:
        return []
    ep0 = demo_set.episodes[0]
    f0 = frames["agentview_rgb"][0][0]
    if f0.reshape(-1).std() < 1.0:
        return []  # blank: the blank-frame finding says it
    wait = int(demo_set.meta.attrs.get("wait_steps", 0) or 0)
    env = make_env(suite, task, images=True, image_size=int(f0.shape[0]))
    try:
        obs = env.reset_to(ep0.init_state if np.size(ep0.init_state) else ep0.states[0])
        for _ in range(wait if demo_set.meta.obs_convention == "before" else wait + 1):
            obs, _ = env.step(WAIT_ACTION)
        ref = _resize_nn(np.asarray(obs["agentview_rgb"]), f0.shape[0], f0.shape[1]).astype(np.float64)
    finally:
        env.close()
    cands = {"as rendered (LIBERO's convention)": f0, "flipped vertically": f0[::-1], "flipped horizontally": f0[:, ::-1],
             "rotated 180 deg": f0[::-1, ::-1]}
    score = {}
    for k, v in cands.items():
        a, b = v.astype(np.float64).ravel(), ref.ravel()
        a, b = a - a.mean(), b - b.mean()
        score[k] = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))
    best = max(score, key=score.get)
    nums = {"correlation": score, "best": best}
    evid = ("the file's first agentview frame vs the simulator's render of the same start: correlation "
            + ", ".join(f"{k} {v:.2f}" for k, v in score.items()))
    if best.startswith("as rendered"):
        return [Finding("images.orientation", "info", "image orientation matches the simulator's", evid, numbers=nums)]
    return [Finding("images.orientation", "serious" if spec_uses_images else "warning",
                    f"images are {best} relative to what the simulator gives the policy at evaluation", evid,
                    fix="store frames as rendered (the rollout feeds the raw render), or transform them the same way "
                        "at evaluation",
                    next="fix the converter, then run_ablation.py doctor --data FILE", numbers=nums)]
