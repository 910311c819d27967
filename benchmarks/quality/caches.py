"""The ``caches`` group: diffusers' FirstBlockCache (FBC) alone, calibrated AsymRnR alone, and both, at matched cost.

FBC's cost is known only after running it: at each step it either runs every block or only the first one
(the others replay their cached residual). So the group runs in two phases (``run.py``):

1. ``FBC t=<threshold>`` rows (no schedule): the generations record, per step, whether FBC ran the whole
   transformer (:class:`ComputedSteps`); the row's *realised* speedup is the dense FLOPs over the FLOPs of
   what ran (:func:`cost`).
2. From each FBC row: ``calibrated @FBC t=<t>``, AsymRnR alone solved to that realised speedup; and
   ``FBC t=<lower> + calibrated @FBC t=<t>``, FBC at a lower threshold (:data:`FBC_PAIRS`; it skips fewer
   steps) plus a calibrated schedule solved so that the two together are *predicted* to cost the same, using
   the steps FBC at the lower threshold computed alone. Both FBC and AsymRnR change what the first block
   sees, so the combination's skipped steps are recorded again while it runs, and its row carries the
   realised speedup beside the predicted one.

The FLOPs are those of :mod:`asymrnr.flops` (transformer blocks; the same model every other row uses), per
(block, step) cell: a step FBC skips costs its first block only. A matching whose window starts at a skipped
step is computed at the next step that runs; the model charges it to the window's first step either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: ``(target, lower)`` FBC thresholds: AsymRnR alone is matched to FBC at ``target``; the combination runs FBC
#: at ``lower`` (fewer skipped steps) plus AsymRnR for the rest. diffusers' default threshold (0.05) never skips
#: on micro-cogvideox at 20 steps: the first block's residual changes by 14 % (last steps) to 126 % (first)
#: from one step to the next, so the thresholds sit above 0.14.
#: One skipped step of 20 is worth about 1.04x here, so the targets stay where calibrated AsymRnR reaches
#: on this model (predicted 1.03x to 1.12x); a row whose budget was not reached says so.
FBC_PAIRS = ((0.15, 0.12), (0.2, 0.15))


class ComputedSteps:
    """Which transformer calls of the generations ran the whole transformer (FBC did not skip them).

    A skipped step never reaches the last self-attention site, so each transformer call records whether that
    site ran; every ``num_steps`` calls are one generation (one call per step: CFG is batched on the micro
    models). :meth:`fraction` is, per step, the share of generations that computed it.
    """

    def __init__(self, transformer: Any, last_site: Any, num_steps: int):
        self.transformer, self.last_site, self.num_steps = transformer, last_site, int(num_steps)
        self.calls: list[bool] = []
        self._ran = False
        self._handles: list = []

    def __enter__(self) -> "ComputedSteps":
        def site_called(*_):
            self._ran = True

        def call_started(*_):
            self._ran = False

        def call_done(*_):
            self.calls.append(self._ran)

        self._handles = [self.last_site.register_forward_pre_hook(site_called),
                         self.transformer.register_forward_pre_hook(call_started),
                         self.transformer.register_forward_hook(call_done)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def fraction(self) -> list[float]:
        """Per step, the share of generations that ran the whole transformer."""
        if len(self.calls) % self.num_steps:
            raise RuntimeError(f"{len(self.calls)} transformer calls recorded, not a multiple of {self.num_steps} "
                               "steps: one call per step is expected (batched CFG)")
        runs = np.asarray(self.calls, dtype=np.float64).reshape(-1, self.num_steps)
        return runs.mean(axis=0).tolist()


def cost(report, computed: list[float] | None) -> float:
    """FLOPs of a generation with the schedule of ``report`` (``asymrnr.flops.FlopsReport``) when FBC runs
    the whole transformer at step ``s`` with probability ``computed[s]`` and the first block only otherwise."""
    cells = report.per_cell_reduced  # [B, S]
    if computed is None:
        return float(cells.sum())
    c = np.asarray(computed, dtype=np.float64)
    if c.shape != (cells.shape[1],):
        raise ValueError(f"computed has {c.shape[0]} steps, the schedule {cells.shape[1]}")
    return float((cells.sum(axis=0) * c + cells[0] * (1.0 - c)).sum())


def speedup(schedule, computed: list[float] | None, dense_schedule) -> float:
    """Predicted speedup of ``schedule`` (None: dense) with FBC's computed steps ``computed`` (None: no FBC)."""
    from asymrnr.flops import schedule_flops

    dense = schedule_flops(dense_schedule).dense_total
    return dense / cost(schedule_flops(schedule if schedule is not None else dense_schedule), computed)


def solve_combined(stats, target: float, computed: list[float], dense_schedule, iterations: int = 14):
    """A calibrated schedule whose speedup together with FBC's ``computed`` steps is ``target``.

    Bisection on the planner's own target (AsymRnR alone); returns ``(schedule, reached, predicted)``.
    """
    from asymrnr.planner import plan_schedule

    alone = speedup(None, computed, dense_schedule)
    if alone >= target:  # FBC alone already reaches it: no reduction
        return None, True, alone
    lo, hi = 1.0, target / alone * 1.5
    best = plan_schedule(stats, preset=None, target_speedup=hi)
    if speedup(best.schedule, computed, dense_schedule) < target:
        return best.schedule, False, speedup(best.schedule, computed, dense_schedule)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        res = plan_schedule(stats, preset=None, target_speedup=mid)
        if speedup(res.schedule, computed, dense_schedule) < target:
            lo = mid
        else:
            hi, best = mid, res
    return best.schedule, True, speedup(best.schedule, computed, dense_schedule)


def fbc_config(threshold: float):
    from diffusers import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=threshold)


__all__ = ["FBC_PAIRS", "ComputedSteps", "cost", "speedup", "solve_combined", "fbc_config"]
