"""Per-transformer runtime state: which denoising step this call is, what each block reduces, and the
matching cache.

A forward pre-hook on the transformer calls :meth:`RuntimeContext.begin_call` once per transformer call.
It reads the timestep (the only host sync, outside every attention block), resolves the schedule step,
detects the start of a new generation (timesteps strictly decrease inside one), and precomputes each
block's :class:`BlockPlan` as plain Python ints so that the attention processors decide nothing from
device data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import ScheduleMismatchError
from ..matching import Matching, Partition, make_partition, partition_seed, rate_ceiling

logger = logging.getLogger(__name__)

# Observers see the features of every attention call: fn(block_index, features, context), where features
# maps "h" -> [B, N, C] and "q"/"k"/"v" -> [B, heads, N, D] (video tokens only, after norm and RoPE).
Observer = Callable[[int, dict, "RuntimeContext"], None]


@dataclass(frozen=True)
class BlockPlan:
    """What one attention block does in the current call. Counts are tokens to drop (0: feature untouched)."""

    n_q: int = 0
    n_kv: int = 0
    n_h: int = 0

    @property
    def active(self) -> bool:
        return bool(self.n_q or self.n_kv or self.n_h)


@dataclass
class CachedMatching:
    window: int
    batch: int
    matching: Matching
    # Index tensors derived from the matching, per (n_r, text_len): reused on every step of the window.
    derived: dict = field(default_factory=dict)


@dataclass
class CallInfo:
    """Facts of the current transformer call."""

    timestep: float
    step: int  # index into the schedule's steps
    gen_step: int  # 0-based count of denoising steps in the current generation
    window: int  # matching-cache window, gen_step // cache_steps
    grid: tuple[int, int, int]
    new_generation: bool


class RuntimeContext:
    """State shared by the processors of one transformer.

    Args:
        num_blocks: attention blocks of the transformer.
        schedule: the schedule to run, or ``None`` to only observe (profiling without reduction).
        resample_steps: map a generation with another step count onto the schedule by timestep.
        scheduler: the pipeline's scheduler, when applied to a pipeline (used to check step counts early).
    """

    def __init__(self, num_blocks: int, schedule=None, *, resample_steps: bool = False, scheduler: Any = None):
        self.num_blocks = num_blocks
        self.schedule = schedule
        self.resample_steps = resample_steps
        self.scheduler = scheduler
        self.observers: list[Observer] = []
        self.call: CallInfo | None = None
        self._plans: list[BlockPlan | None] = [None] * num_blocks
        self._partitions: dict[tuple, Partition] = {}
        self.match_cache: dict[tuple[int, str], CachedMatching] = {}
        # (gen_step, block, feature) of every matching computed in the current generation (tests, logs).
        self.match_log: list[tuple[int, int, str]] = []
        self._last_t: float | None = None
        self._gen_step = -1
        self._last_step: int | None = None
        self._checked_grids: set[tuple[int, int, int]] = set()
        self._partitioned: set[tuple] = set()  # (grid, device) whose partitions are all built
        self.generation = 0

    # ----------------------------------------------------------------------------------------- schedule
    @property
    def cache_steps(self) -> int:
        return self.schedule.matching.cache_steps if self.schedule is not None else 1

    def reset(self) -> None:
        """Forget the matching cache and the step position (called at the start of every generation)."""
        self.match_cache.clear()
        self.match_log = []
        self._last_t = None
        self._gen_step = -1
        self._last_step = None

    def set_schedule(self, schedule, *, resample_steps: bool = False) -> None:
        """Run ``schedule`` from the next generation on (``None``: observe only)."""
        self.schedule = schedule
        self.resample_steps = bool(resample_steps)
        self._checked_grids.clear()
        self._partitioned.clear()  # the stride or seed may differ
        self.reset()

    def partition(
        self,
        grid: tuple[int, int, int],
        block: int,
        feature: str,
        device: torch.device,
        *,
        stride: tuple[int, int, int] | None = None,
        seed: int | None = None,
    ) -> Partition:
        """The seeded partition of ``(block, feature)`` for ``grid``, built once per device.

        ``stride`` and ``seed`` default to the schedule's matching settings ((2, 2, 2) and 0 without one).
        """
        matching = self.schedule.matching if self.schedule is not None else None
        if stride is None:
            stride = tuple(matching.stride) if matching is not None else (2, 2, 2)
        if seed is None:
            seed = matching.seed if matching is not None else 0
        key = (grid, tuple(stride), int(seed), block, feature, str(device))
        part = self._partitions.get(key)
        if part is None:
            part = make_partition(grid, stride, partition_seed(seed, block, feature)).to(device)
            self._partitions[key] = part
        return part

    # ------------------------------------------------------------------------------------------- steps
    def _resolve_step(self, t: float) -> int:
        sched = self.schedule
        num_steps = sched.sampler.num_steps
        timesteps = sched.sampler.timesteps
        if timesteps is None:
            if self._gen_step < num_steps:
                return self._gen_step
            if self.resample_steps:
                return num_steps - 1
            raise ScheduleMismatchError(
                f"this generation runs more than the schedule's {num_steps} steps; run {num_steps} inference "
                "steps, or apply(..., resample_steps=True) to stretch the schedule over the new steps"
            )
        diffs = [abs(float(ts) - t) for ts in timesteps]
        best = min(range(len(diffs)), key=diffs.__getitem__)
        exact = diffs[best] <= 1e-3 * max(1.0, abs(t))
        if self.resample_steps:
            return best
        expected = 0 if self._last_step is None else self._last_step + 1
        if not exact or (best != expected and best != self._last_step):
            raise ScheduleMismatchError(
                f"timestep {t:g} at denoising step {self._gen_step} does not follow the schedule's sampler "
                f"({sched.sampler.scheduler_class or 'unspecified'}, {num_steps} steps, timesteps "
                f"{_short(timesteps)}); run the pipeline with num_inference_steps={num_steps} and the same "
                "scheduler, or apply(..., resample_steps=True) to map the schedule onto the new steps by timestep"
            )
        return best

    def _check_step_count(self) -> None:
        if self.scheduler is None or self.resample_steps:
            return
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timesteps is None:
            return
        n = len(timesteps)
        want = self.schedule.sampler.num_steps
        if n != want:
            raise ScheduleMismatchError(
                f"the pipeline runs {n} inference steps but the schedule {self.schedule.tag} was made for {want}; "
                f"run with num_inference_steps={want}, or apply(..., resample_steps=True) to map the schedule "
                "onto the new steps by timestep"
            )

    def _check_grid(self, grid: tuple[int, int, int]) -> None:
        if grid in self._checked_grids or self.schedule is None:
            return
        sched = self.schedule
        ceiling = rate_ceiling(grid, tuple(sched.matching.stride))
        for feature in ("q", "kv", "h"):
            rates = sched.rates[feature]
            for b, row in enumerate(rates):
                for k, r in enumerate(row):
                    if r > ceiling + 1e-12:
                        raise ScheduleMismatchError(
                            f"rates.{feature}[{b}][{k}] = {r:g} exceeds the ceiling {ceiling:.4f} (sources / video "
                            f"tokens) of stride {tuple(sched.matching.stride)} on the token grid {grid}; lower the "
                            "rate or use a larger stride (asymrnr never clamps rates silently)"
                        )
        if tuple(sched.model.latent_grid) != tuple(grid):
            logger.info(
                "schedule %s was made at token grid %s; running at %s (rates are fractions of video tokens)",
                sched.tag, tuple(sched.model.latent_grid), grid,
            )
        self._checked_grids.add(grid)

    def _ensure_partitions(self, grid: tuple[int, int, int], device: torch.device | None) -> None:
        """Build every partition the blocks may use, here (eagerly, outside any compiled attention)."""
        if device is None or (grid, str(device)) in self._partitioned:
            return
        self._partitioned.add((grid, str(device)))
        for block in range(self.num_blocks):
            for feature in ("h", "q", "kv"):
                self.partition(grid, block, feature, device)

    @torch.compiler.disable
    def begin_call(self, timestep: Any, grid: tuple[int, int, int], device: torch.device | None = None) -> CallInfo:
        """Resolve the step of this transformer call and precompute every block's plan.

        Runs eagerly (excluded from torch.compile): it reads the timestep on the host once per call.
        """
        self._ensure_partitions(tuple(grid), device)
        t = float(torch.as_tensor(timestep).flatten()[0]) if timestep is not None else 0.0
        new_generation = self._last_t is None or t > self._last_t
        if new_generation:
            self.reset()
            self.generation += 1
            if self.schedule is not None:
                self._check_step_count()
        if new_generation or t != self._last_t:
            self._gen_step += 1
        self._last_t = t
        n = math.prod(grid)
        if self.schedule is None:
            step = self._gen_step
            self._plans = [None] * self.num_blocks
        else:
            self._check_grid(grid)
            step = self._resolve_step(t)
            self._last_step = step
            rates = self.schedule.rates
            plans: list[BlockPlan | None] = []
            for b in range(self.num_blocks):
                plan = BlockPlan(
                    n_q=int(rates["q"][b][step] * n),
                    n_kv=int(rates["kv"][b][step] * n),
                    n_h=int(rates["h"][b][step] * n),
                )
                plans.append(plan if plan.active else None)
            self._plans = plans
        window = self._gen_step // max(1, self.cache_steps)
        self.call = CallInfo(t, step, self._gen_step, window, tuple(grid), new_generation)
        return self.call

    def plan_for_block(self, block: int) -> BlockPlan | None:
        return self._plans[block]

    def cached_matching(self, block: int, feature: str, batch: int) -> CachedMatching | None:
        entry = self.match_cache.get((block, feature))
        if entry is None or entry.window != self.call.window or entry.batch != batch:
            return None
        return entry

    def store_matching(self, block: int, feature: str, batch: int, matching: Matching) -> CachedMatching:
        entry = CachedMatching(self.call.window, batch, matching)
        self.match_cache[(block, feature)] = entry
        self.match_log.append((self.call.gen_step, block, feature))
        return entry


def _short(values) -> str:
    vals = [f"{float(v):g}" for v in values]
    if len(vals) <= 6:
        return "[" + ", ".join(vals) + "]"
    return "[" + ", ".join(vals[:3]) + ", ..., " + ", ".join(vals[-2:]) + "]"
