"""The report's tables (arms, effects, per-task effects) and the notes printed under them, as document
`Table`s of formatted text: every number is formatted here, once, for both formats.
"""
from __future__ import annotations

from ..analysis import ComparisonResult
from ..recorded_plan import ArmRow
from ..spec import GROUPS
from ..verdicts import pts
from .document import Table
from .prose import level_text

NMSE_NOTE = ("Open-loop nMSE: the group's mean squared error of fully sampled actions (DPM-Solver from noise, as "
             "in closed loop) in physical units on held-out demos, divided by that group's variance in those "
             "windows; 1.0 is the error of always predicting their mean (a nearly constant group divides by a "
             "tiny variance: do not rank on it). The trainer's one-step x0 figures (val/nmse/*) "
             "are training diagnostics only: at a random diffusion step they favour data that are large "
             "relative to the unit noise.")


PER_TASK_NOTE = ("Each task is its own set of trained networks (arm x seed x task). The pooled effect, which the "
                 "verdicts use, treats tasks as a random factor: its interval resamples the tasks as well as the "
                 "init states and seeds, so it speaks for tasks like these, and widens when they disagree. Tasks "
                 "disagree when one task's interval lies wholly above 0 and another's wholly below, or Cochran's Q "
                 "rejects equal effects at alpha; Q has little power with few tasks.")


def arm_table(rows: list[ArmRow]) -> Table:
    """One row per arm: success (all seeds, per seed, per task with several), crashes, the final loss and
    the open-loop, clipping and R2 figures (means over the arm's finished runs)."""
    def f(x, fmt="{:.3g}"):
        return "-" if x is None else fmt.format(x)

    head = ["arm", "success (all seeds)", "per seed", "crashed", "final train loss", "open-loop nMSE pos / rot / grip",
            "clip rate", "pos step vs train range", "R2 pos vs abs pose / delta"]
    tasks = any(r.per_task_rate for r in rows)
    if tasks:  # a multi-task plan: success per task too (the table's other figures are means over tasks)
        head.insert(3, "per task")
    body = []
    for r in rows:
        per = ", ".join(f"{100 * v:.0f}%" for _s, v in sorted(r.per_seed_rate.items()) if v == v) or "-"
        row = [r.arm, f"{r.successes}/{r.episodes}" + (f" = {100 * r.rate:.0f}%" if r.rate is not None else ""),
               per, str(r.crashed), f(r.final_train_loss),
               " / ".join(f(r.openloop_nmse.get(g)) for g in GROUPS), f(r.clip_rate),
               f(r.pos_out_of_range, "{:.2f}x"), f"{f(r.r2_abs, '{:.2f}')} / {f(r.r2_delta, '{:.2f}')}"]
        if tasks:
            row.insert(3, ", ".join(f"{t.split('/')[-1]}: {100 * v:.0f}%" for t, v in r.per_task_rate.items()
                                    if v == v) or "-")
        body.append(row)
    return Table(tuple(head), tuple(tuple(r) for r in body))


def effects_table(comps: list[ComparisonResult]) -> Table:
    """The decision interval (at the level the word was decided at) first; the plain 95% interval
    beside it, labelled, for reference only."""
    head = ["hypothesis", "arm vs control", "expect", "success arm / control (per seed)", "effect (pts)",
            "decision interval", "its level", "95% interval (reference)", "adjusted p", "verdict", "look"]
    body = []
    for c in comps:
        seeds = ""
        if c.per_seed_arm:
            seeds = (" (" + "/".join(f"{100 * x:.0f}" for x in c.per_seed_arm) + " vs "
                     + "/".join(f"{100 * x:.0f}" for x in c.per_seed_control) + ")")
        rates = "-" if c.rate_arm is None else f"{100 * c.rate_arm:.0f}% / {100 * (c.rate_control or 0):.0f}%{seeds}"
        word = c.word + (f" ({c.bound}: says nothing of the claim)" if c.word == "no meaningful difference" and c.bound
                         else " (floor, but the positive control succeeds: it counts)" if c.bound_excused else "")
        body.append([c.hypothesis, f"{c.arm} vs {c.control}", c.expect, rates, pts(c.estimate),
                     "-" if c.lo is None else f"[{pts(c.lo)}, {pts(c.hi)}]", level_text(c),
                     "-" if c.lo95 is None else f"[{pts(c.lo95)}, {pts(c.hi95)}]",
                     "-" if c.p_holm is None else f"{c.p_holm:.3g}", word,
                     "-" if c.decided_at_look is None else str(c.decided_at_look + 1)])
    return Table(tuple(head), tuple(tuple(r) for r in body))


def per_task_table(comps: list[ComparisonResult]) -> Table:
    """Every comparison run on several tasks: its effect on each task, then the pooled effect (tasks a
    random factor, what the verdict uses) and whether the tasks disagree."""
    head = ["arm vs control", "task", "effect (pts)", "95% interval", "success arm / control", "init states",
            "tasks agree?"]
    body = []
    for c in comps:
        if c.n_tasks < 2 or c.estimate is None:
            continue
        name = f"{c.arm} vs {c.control}"
        for t in c.per_task:
            body.append([name, t["task"], pts(t["estimate"]), f"[{pts(t['lo'])}, {pts(t['hi'])}]",
                         f"{100 * t['rate_arm']:.0f}% / {100 * t['rate_control']:.0f}%", str(t["n_states"]), ""])
        body.append([name, f"pooled over {c.n_tasks} tasks", pts(c.estimate), f"[{pts(c.lo)}, {pts(c.hi)}]",
                     f"{100 * (c.rate_arm or 0):.0f}% / {100 * (c.rate_control or 0):.0f}%", str(c.n_states),
                     ("NO: " if c.tasks_disagree else "yes: ") + c.heterogeneity])
    return Table(tuple(head), tuple(tuple(r) for r in body))
