"""The configurations the quality benchmark compares, each solved to a predicted FLOPs budget.

Every method is brought to the same predicted FLOPs speedup (``asymrnr.flops``) by bisection on its one
knob (a uniform rate, or the planner's strength), so that differences in quality are at matched cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from asymrnr.flops import rate_ceiling, schedule_flops
from asymrnr.planner import FeaturePolicy, PlannerPolicy, plan_schedule
from asymrnr.schedule_format import Schedule

import caches as K  # noqa: E402  (benchmarks/quality/caches.py)

#: A feature policy that reduces nothing (for the planner's one-feature rows of Table 2).
OFF = FeaturePolicy(fraction=(0.0, 0.0), tier_edges=(1.0,), tier_rates=((0.0, 0.0),), max_rate=0.0)


@dataclass
class Config:
    """One row of the benchmark: a schedule (or none: dense), a group and a method label."""

    name: str
    group: str  # main | table2 | table4 | table5 | caches
    method: str  # the line it belongs to in the figure
    budget: float | None  # the predicted speedup it was solved for (None: not solved)
    schedule: Schedule | None = None
    cache: Any = None  # a diffusers cache config (enable_cache) instead of / beside a schedule
    reached: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def predicted(self) -> float:
        return 1.0 if self.schedule is None else schedule_flops(self.schedule).predicted_speedup


def bisect(make: Callable[[float], Schedule], target: float, hi: float, iterations: int = 40) -> tuple[Schedule, bool]:
    """The schedule ``make(x)`` whose predicted speedup is ``target``, x in [0, hi] (monotone in x)."""
    if schedule_flops(make(hi)).predicted_speedup < target:
        return make(hi), False
    lo = 0.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if schedule_flops(make(mid)).predicted_speedup < target:
            lo = mid
        else:
            hi = mid
    return make(hi), True


def uniform(pipe, steps: int, target: float, features: tuple[str, ...], **matching) -> tuple[Schedule, bool]:
    """Uniform rates over ``features`` (``("q", "kv")``, ``("h",)``, ``("q",)``, ``("kv",)``) solved to ``target``."""
    base = Schedule.uniform(pipe, steps, **matching)
    ceiling = rate_ceiling(base.model.latent_grid, base.matching.stride) - 1e-4

    def make(r: float) -> Schedule:
        return Schedule.uniform(pipe, steps, **{f: r for f in features}, **matching)

    return bisect(make, target, ceiling)


def calibrated(stats, target: float, *, policy: PlannerPolicy | None = None, **kw) -> tuple[Schedule, bool]:
    res = plan_schedule(stats, preset=None, target_speedup=target, policy=policy, **kw)
    return res.schedule, res.reached


def with_matching(schedule: Schedule, **changes) -> Schedule:
    return dataclasses.replace(schedule, matching=dataclasses.replace(schedule.matching, **changes))


def build(pipe, stats, steps: int, budgets: list[float], groups: set[str]) -> list[Config]:
    """Every configuration of the requested groups (dense first)."""
    out = [Config("dense", "main", "dense", None)]
    mid = budgets[len(budgets) // 2]
    for b in budgets:
        if "main" in groups:
            s, ok = calibrated(stats, b)
            out.append(Config(f"calibrated @{b:g}", "main", "AsymRnR calibrated", b, s, reached=ok))
            s, ok = uniform(pipe, steps, b, ("q", "kv"))
            out.append(Config(f"uniform q=kv @{b:g}", "main", "AsymRnR uniform q=kv", b, s, reached=ok))
            s, ok = uniform(pipe, steps, b, ("h",))
            out.append(Config(f"ToMe h @{b:g}", "main", "ToMe / SymRnR (h)", b, s, reached=ok))
            s, ok = calibrated(stats, b, granularity="joint")
            out.append(Config(f"calibrated joint @{b:g}", "main", "calibrated, joint heads", b, s, reached=ok))
            s, ok = calibrated(stats, b, partition="fixed")
            out.append(Config(f"calibrated fixed partition @{b:g}", "main", "calibrated, fixed partition", b, s,
                              reached=ok))
        if "table2" in groups:  # paper Table 2: Q only, V only, Q + V; without and with the schedule
            for feats, label in ((("q",), "Q"), (("kv",), "V")):
                s, ok = uniform(pipe, steps, b, feats)
                out.append(Config(f"T2 {label} uniform @{b:g}", "table2", f"{label} only, uniform", b, s, reached=ok))
                policy = PlannerPolicy(q=OFF) if label == "V" else PlannerPolicy(kv=OFF)
                s, ok = calibrated(stats, b, policy=policy)
                out.append(Config(f"T2 {label} schedule @{b:g}", "table2", f"{label} only, schedule", b, s,
                                  reached=ok))
    if "table4" in groups:  # paper Table 4: cache steps, at the middle budget
        for cs in (1, 2, 3, 4, 5):
            s, ok = calibrated(stats, mid, cache_steps=cs)
            out.append(Config(f"T4 cache steps {cs} @{mid:g}", "table4", "cache steps", mid, s, reached=ok,
                              extra={"cache_steps": cs}))
    if "table5" in groups:  # paper Table 5: similarity metric and reduction operator, on the calibrated rates
        s, ok = calibrated(stats, mid)
        for metric in ("euclidean", "cosine", "dot", "random"):
            out.append(Config(f"T5 {metric} @{mid:g}", "table5", "metric", mid, with_matching(s, metric=metric),
                              reached=ok, extra={"metric": metric}))
        out.append(Config(f"T5 euclidean mean @{mid:g}", "table5", "metric", mid, with_matching(s, reduce_op="mean"),
                          reached=ok, extra={"metric": "euclidean, mean"}))
    if "caches" in groups:  # phase 1 of the caches group: FirstBlockCache alone (its cost is known after running)
        for t in cache_thresholds():
            out.append(Config(f"FBC t={t:g}", "caches", "FirstBlockCache", None, cache=K.fbc_config(t),
                              extra={"cache": f"FirstBlockCache(threshold={t:g})"}))
    return out


def cache_thresholds() -> list[float]:
    """Every FBC threshold the caches group runs alone: both of each pair of ``caches.FBC_PAIRS``."""
    return sorted({t for pair in K.FBC_PAIRS for t in pair})


def dense_like(schedule: Schedule) -> Schedule:
    """``schedule`` with every rate 0 (the FLOPs of a dense generation of the same model, grid and steps)."""
    zeros = [[0.0] * schedule.num_steps for _ in range(schedule.num_blocks)]
    return schedule.with_rates(q=zeros, kv=zeros, h=zeros)


def cache_followups(stats, rows: list[dict]) -> list[Config]:
    """Phase 2 of the caches group, from the finished ``FBC t=`` rows (``rows``, with ``computed_steps``):
    calibrated AsymRnR alone at each FBC's realised speedup, and FBC at a lower threshold plus a calibrated
    schedule predicted to cost the same together (see ``caches.py``)."""
    by_name = {r["config"]: r for r in rows}
    dense = dense_like(calibrated(stats, 1.05)[0])
    out = []
    for top, low in K.FBC_PAIRS:
        target_row, low_row = by_name.get(f"FBC t={top:g}"), by_name.get(f"FBC t={low:g}")
        if target_row is None:
            continue
        target = target_row["realised_speedup"]
        label = f"@FBC t={top:g}"
        if target > 1.0 + 1e-9:
            s, ok = calibrated(stats, target)
            out.append(Config(f"calibrated {label}", "caches", "AsymRnR calibrated", target, s, reached=ok,
                              extra={"matched_to": target_row["config"]}))
        if low_row is None:
            continue
        s, ok, predicted = K.solve_combined(stats, target, low_row["computed_steps"], dense)
        if s is None:
            continue  # FBC at the lower threshold already reaches the target alone
        out.append(Config(f"FBC t={low:g} + calibrated {label}", "caches", "FirstBlockCache + AsymRnR", target, s,
                          cache=K.fbc_config(low), reached=ok,
                          extra={"cache": f"FirstBlockCache(threshold={low:g})", "matched_to": target_row["config"],
                                 "combined_predicted_speedup": predicted,
                                 "asymrnr_alone_speedup": schedule_flops(s).predicted_speedup}))
    return out
