"""How long a plan will take: an estimate before it runs (--dry-run) and a whole-plan ETA while it runs.

Costs are worker-seconds per unit of work (one demo, one Gate A codec, one training run, one
closed-loop episode). Before a plan runs they come from the profile's `costs:` (measured figures,
with the command that measured them beside them); while it runs, from the runs finished so far. A plan
with looks stops extending the arms whose comparisons are decided, so the remaining time has a range:
the low end if every comparison is decided now, the high end if every arm goes to the last look.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

log = logging.getLogger("ablation")


@dataclass(frozen=True)
class StageCosts:
    """Worker-seconds per unit: demo_s per demo made, gate_s per Gate A codec x task, train_s per run
    (training and the open-loop evaluation), episode_s per closed-loop episode."""

    demo_s: float = 0.0
    gate_s: float = 0.0
    train_s: float = 0.0
    episode_s: float = 0.0

    @classmethod
    def from_mapping(cls, raw: Mapping | None) -> "StageCosts | None":
        if not raw:
            return None
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(raw) - known)
        if bad:
            raise ValueError(f"costs: {', '.join(bad)} not known; known: {', '.join(sorted(known))}")
        return cls(**{k: float(v) for k, v in raw.items()})


def estimate_plan_s(costs: StageCosts, *, n_runs: int, n_codecs: int, n_demos: int, looks: Sequence[int | None],
                    parallel: int, train_runs: float | None = None) -> tuple[float, float]:
    """(low, high) wall seconds for a plan: demos and Gate A, every run trained and given the first
    look's episodes; low stops there (every comparison decided at look 1), high takes every run to the
    last look. Work is spread over `parallel` processes. `train_runs`: training in units of one run at
    the profile's steps (a 4x arm counts 4, pretraining counts too); None: n_runs."""
    p = max(1, parallel)
    real = [x for x in looks if x is not None] or [0]
    base = (n_demos * costs.demo_s + n_codecs * costs.gate_s) / p
    first = ((n_runs if train_runs is None else train_runs) * costs.train_s + n_runs * real[0] * costs.episode_s) / p
    rest = n_runs * (real[-1] - real[0]) * costs.episode_s / p
    return base + first, base + first + rest


def minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


class PlanClock:
    """The whole plan's ETA while it runs: after each finished run, the time left in this look (the runs
    left at the worker-seconds of this look's runs that worked, over the workers) and in the plan (this
    look's remainder plus the later looks' extra episodes for the arms still undecided, at the measured
    cost per episode)."""

    def __init__(self, looks: Sequence[int | None], parallel: int, prior: StageCosts | None = None,
                 prior_class: str | None = None):
        """`prior`: the profile's measured costs (for CPU class `prior_class`, where the profile names one),
        used only until the runs have measured their own: a re-run whose first runs are all reused still
        gets an upper bound, and the later looks a cost per episode."""
        self.looks = list(looks)
        self.parallel = max(1, parallel)
        self.prior, self.prior_class = prior, prior_class
        self.t0 = time.time()
        self.episode_s: list[float] = []   # worker-seconds per episode, from finished runs
        # this look's finished runs that worked: (worker-seconds, started afresh: took over no earlier work)
        self.look_runs: list[tuple[float, bool]] = []
        self.look = 0
        self.look_total = 0
        self.look_done = 0
        self.look_reused = 0   # runs that had nothing left to do (resumed, reused): no pace to learn from

    def start_look(self, k: int, n_runs: int) -> None:
        self.look, self.look_total, self.look_done = k, n_runs, 0
        self.look_reused = 0
        self.look_runs = []

    def finished(self, stage_seconds: Mapping[str, float], episodes: int, active_runs: int,
                 took_over: bool = False) -> str:
        """Record one finished run; return the ETA line (also logged). `took_over`: the run began from an
        earlier invocation's work (run.RunResult.took_over), so in the first look, where a run left may
        have to train from scratch, its cost is only a lower bound on theirs."""
        self.look_done += 1
        # "total" is the run's wall time (run.execute), which a reused run has too: opening its tracker and
        # checkpoint took 2.8-6.8 s in a re-run of `--plan all`, whose ETA then said ~75 s for 22 runs to train
        if sum(v for k, v in stage_seconds.items() if k != "total") < 1.0:
            self.look_reused += 1
        else:
            # later looks: every run carries on from its earlier looks, and costs only its new episodes
            fresh_run = not took_over or self.look > 0
            self.look_runs.append((float(stage_seconds.get("total", sum(stage_seconds.values()))), fresh_run))
            # (a first-look run resumed mid-rollout ran fewer than `episodes`: its cost per episode would be low)
            if fresh_run and episodes > 0 and stage_seconds.get("closed_loop", 0.0) >= 1.0:
                self.episode_s.append(float(stage_seconds["closed_loop"]) / episodes)
        worked = len(self.look_runs)
        left_runs = self.look_total - self.look_done
        real = [x for x in self.looks if x is not None]
        measured_ep = sum(self.episode_s) / len(self.episode_s) if self.episode_s else None
        if worked == 0:  # only reused runs so far: their instant finish says nothing about the rest
            return self._bound_line(f"{self.look_reused} reused", left_runs, episodes, active_runs, measured_ep, real)
        # The runs left at the cost of the runs of this look that worked (a reused one among them costs
        # less), over the workers. Not the wall pace (time so far / runs done): with 2 workers the first two
        # runs end together, so the first pace doubled every ETA of a look. When a run ends, the other
        # workers' runs are on average half done.
        fresh = [s for s, f in self.look_runs if f]
        if not fresh and self.prior is not None:  # only resumed runs so far (a killed plan's re-run): they cost
            # less than the runs left that start afresh; priced at their cost, a re-run's first ETA said ~8 min
            # for 17 runs to train
            what = f"{worked} resumed" + (f", {self.look_reused} reused" if self.look_reused else "")
            return self._bound_line(what, left_runs, episodes, active_runs, measured_ep, real)
        pace = fresh or [s for s, _ in self.look_runs]  # no prior: the resumed runs' cost, as a lower bound ("at least")
        per_run = sum(pace) / len(pace)
        in_flight = min(self.parallel - 1, left_runs)
        left_look = max(0.0, (left_runs - in_flight / 2) * per_run / self.parallel)
        per_ep = measured_ep if measured_ep is not None else (self.prior.episode_s if self.prior else 0.0)
        later = self._later(active_runs, per_ep, real)
        at_least = "" if fresh else "at least "
        line = (f"[plan] look {self.look + 1}/{len(self.looks)}: {self.look_done}/{self.look_total} runs done, "
                f"{at_least}~{minutes(left_look)} left in this look; the plan {at_least}~{minutes(left_look)}"
                + (f" to ~{minutes(left_look + later)} (if every undecided arm goes to {real[-1]} episodes)"
                   if later > 0 else "") + f" left; {minutes(time.time() - self.t0)} so far")
        log.info(line)
        return line

    def _bound_line(self, what: str, left_runs: int, episodes: int, active_runs: int, measured_ep: float | None,
                    real: list[int]) -> str:
        """The ETA line (also logged) when no run of this look has set a pace: `what` says which runs are done."""
        line = (f"[plan] look {self.look + 1}/{len(self.looks)}: {self.look_done}/{self.look_total} runs done "
                f"({what}); " + self._bound(left_runs, episodes, active_runs, measured_ep, real)
                + f"; {minutes(time.time() - self.t0)} so far")
        log.info(line)
        return line

    def _bound(self, left_runs: int, episodes: int, active_runs: int, measured_ep: float | None,
               real: list[int]) -> str:
        """Before any run of this look has worked: an upper bound on the time left (every run left trains,
        in the first look, and rolls this look's episodes out), from the episodes this plan has measured
        or else the profile's costs; or why there is none."""
        trains = self.look == 0  # (then nothing is measured yet: no run of this plan has worked)
        if left_runs == 0:  # (the look's last run: the next line is the look's decision)
            return "this look is done"
        if self.prior is None and (trains or measured_ep is None):
            return "time left not known until a run that trains or rolls out finishes"
        per_ep = measured_ep if measured_ep is not None else self.prior.episode_s
        source = (f"{per_ep:.1f} s per episode as measured in this plan" if measured_ep is not None
                  else f"the profile's {self.prior_class + ' ' if self.prior_class else ''}costs")
        per_run = (self.prior.train_s if trains else 0.0) + episodes * per_ep
        left_look = left_runs * per_run / self.parallel
        later = self._later(active_runs, per_ep, real)
        return (f"up to ~{minutes(left_look)} left in this look if every run left has to "
                f"{'train and ' if trains else ''}roll out ({source}); the plan up to ~{minutes(left_look + later)} left")

    def _later(self, active_runs: int, per_episode_s: float, real: list[int]) -> float:
        """Wall seconds of the later looks' extra episodes if every undecided arm goes to the last look."""
        if not real or self.look + 1 >= len(real):
            return 0.0
        return active_runs * (real[-1] - real[self.look]) * per_episode_s / self.parallel
