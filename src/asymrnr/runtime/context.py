"""Per-transformer runtime state, in three parts: step tracking, per-call plans, and the caches.

* :class:`StepTracker`: which denoising step a transformer call is. It prefers what the pipeline says
  (``step_index`` in ``transformer.cache_context(...)``, as Wan passes it), then the call's timestep
  looked up in the schedule's sampler, then counting distinct timesteps. A generation ends when diffusers
  resets the stateful hooks (pipelines do at the end of every call) or, for bare calls, when the timestep
  goes up.
* :class:`BlockPlan`: what one site drops in the current call, as plain ints decided here, on the host.
* :class:`MatchingCache` (paper Eq. 4, keyed by CFG branch, block and feature) and :class:`PartitionCache`
  (seeded destinations per (block, feature, cache window)).

:class:`Runtime` ties them together for one transformer component; the diffusers hook
(:mod:`asymrnr.runtime.hook`) calls :meth:`Runtime.begin_call` once per transformer call (eagerly, outside
any compiled graph), the processors read the plans.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .. import vocab
from ..archs.base import sampler_config
from ..errors import AsymRnRError, ScheduleMismatchError
from ..matching import Matching, Partition, make_partition, partition_seed

logger = logging.getLogger(__name__)

#: Branch name of calls made outside any ``cache_context`` (bare transformer calls).
DEFAULT_BRANCH = "default"

# Observers see the features of every attention call: fn(block, features, runtime), where features maps
# "h" -> [B, N, C] and "q"/"k"/"v" -> [B, heads, N, D] (video tokens only, after norm and RoPE).
Observer = Callable[[int, dict, "Runtime"], None]


@dataclass(frozen=True)
class BlockPlan:
    """What one site does in the current call. Counts are video tokens to drop (0: feature untouched)."""

    n_q: int = 0
    n_kv: int = 0
    n_h: int = 0

    @property
    def active(self) -> bool:
        return bool(self.n_q or self.n_kv or self.n_h)


@dataclass(frozen=True)
class CallState:
    """Facts of the current transformer call."""

    timestep: float
    branch: str  # "cond" / "uncond" (separate CFG calls), "cond_uncond" (batched), or "default"
    gen_step: int  # 0-based denoising step of the current generation
    step: int | None  # row of the schedule's steps (None: observing without a schedule)
    window: int  # matching-cache window, gen_step // cache_steps
    grid: tuple[int, int, int]
    new_generation: bool
    text_len: int = 0  # what the family's describe(text_len=...) takes: text tokens of this call
    batch: int = 1
    shard: Any = None  # asymrnr.distributed.Shard under context parallelism (or its simulation), else None


@dataclass
class CachedMatching:
    window: int
    batch: int
    matching: Matching
    # Index tensors derived from the matching, per (n_r, text_len, text_layout): reused within the window.
    derived: dict = field(default_factory=dict)


class MatchingCache:
    """Matchings of the current cache window, keyed by (branch, block, feature)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, int, str], CachedMatching] = {}

    def get(self, branch: str, block: int, feature: str, window: int, batch: int) -> CachedMatching | None:
        entry = self.entries.get((branch, block, feature))
        if entry is None or entry.window != window or entry.batch != batch:
            return None
        return entry

    def put(self, branch: str, block: int, feature: str, window: int, batch: int, matching: Matching) -> CachedMatching:
        entry = CachedMatching(window, batch, matching)
        self.entries[(branch, block, feature)] = entry
        return entry

    def clear(self) -> None:
        self.entries.clear()


class PartitionCache:
    """Seeded partitions, built once per (grid, stride, seed, block, feature, window, device).

    With partitions redrawn per cache window, only the current window's are kept (older ones are dropped
    when a window begins), so memory stays bounded over a generation.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple, Partition] = {}
        self._cpu: dict[tuple, Partition] = {}  # CPU originals, shared by devices and generations

    def get(self, grid, stride, seed: int, block: int, feature: str, window: int | None, device,
            shard=None) -> Partition:
        """The partition; with a (real) context-parallel ``shard``, restricted to it (local indices)."""
        shard_key = (shard.rank, shard.bounds) if shard is not None else None
        key = (tuple(grid), tuple(stride), int(seed), int(block), feature, window, str(device), shard_key)
        part = self._parts.get(key)
        if part is None and shard is not None:
            from ..distributed import restrict

            part = restrict(self.get(grid, stride, seed, block, feature, window, device), shard)
            self._parts[key] = part
        if part is None:
            cpu_key = key[:-2]
            cpu = self._cpu.get(cpu_key)
            if cpu is None:
                cpu = make_partition(grid, stride, partition_seed(seed, block, feature, window))
                if window is None:
                    self._cpu[cpu_key] = cpu
            part = cpu if torch.device(device).type == "cpu" else cpu.to(device)
            self._parts[key] = part
        return part

    def keep_window(self, window: int) -> None:
        """Drop the partitions of other cache windows (fixed partitions stay)."""
        self._parts = {k: v for k, v in self._parts.items() if k[5] is None or k[5] == window}

    def clear(self) -> None:
        self._parts.clear()
        self._cpu.clear()


class StepTracker:
    """The denoising step of each transformer call, and where a generation starts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.last_t: float | None = None
        self.last_index: int | None = None
        self.gen_step = -1
        self.last_schedule_step: int | None = None

    def advance(self, t: float, step_index: int | None) -> bool:
        """Register a call at timestep ``t`` (and the pipeline's ``step_index``, if given); returns whether
        it starts a new generation. ``gen_step`` is then the call's 0-based step."""
        if step_index is not None:
            new = self.last_index is None or step_index < self.last_index
            self.gen_step = int(step_index)
            self.last_index = int(step_index)
        else:
            new = self.last_t is None or t > self.last_t
            if new:
                self.gen_step = 0
            elif t != self.last_t:
                self.gen_step += 1
        if new:
            self.last_schedule_step = None
        self.last_t = t
        return new


class Runtime:
    """State shared by the AsymRnR processors of one transformer component.

    Args:
        adapter: the family's :class:`~asymrnr.archs.base.ArchAdapter`.
        module: the transformer (unwrapped from torch.compile).
        component: its attribute name on the pipeline (``transformer``, ``transformer_2``).
        sites: its self-attention sites.
        pipe: the pipeline, when applied to one (its scheduler is checked at every new generation).
    """

    def __init__(self, adapter, module, component: str, sites, pipe: Any = None):
        self.adapter = adapter
        self.module = module
        self.component = component
        self.sites = list(sites)
        self.num_blocks = len(self.sites)
        self._pipe = weakref.ref(pipe) if pipe is not None else None
        # set when the runtime is removed: a processor of ours that something put back afterwards (diffusers'
        # unfuse_qkv_projections restores what fuse_qkv_projections saw) then behaves as the original
        self.detached = False
        self.schedule = None
        self.resample_steps = False
        self.strict_sampler = True
        self.observers: list[Observer] = []
        self.end_listeners: list[Callable[["Runtime"], None]] = []
        self.call_listeners: list[Callable[["Runtime"], None]] = []  # after every transformer call
        self.steps = StepTracker()
        self.cache = MatchingCache()
        self.partitions = PartitionCache()
        self.plans: list[BlockPlan | None] = [None] * self.num_blocks
        self.call: CallState | None = None
        self.processors: dict[str, Any] = {}  # processor name -> the processor we installed
        # (world, destinations) while asymrnr.distributed.simulate_context_parallel is active, else None
        self.simulate_shards: tuple[int, str] | None = None
        # (gen_step, block, feature) of every matching computed in the current generation (tests, logs).
        self.match_log: list[tuple[int, int, str]] = []
        self.generation = 0
        self.calls = 0  # transformer calls in this generation
        self._checked_grids: set[tuple[int, int, int]] = set()
        self._warned_grids: set[tuple[int, int, int]] = set()

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def pipe(self) -> Any:
        return self._pipe() if self._pipe is not None else None

    @property
    def matching(self):
        """The schedule's matching settings (defaults when only observing)."""
        from ..formats.descriptions import MatchingSettings

        return self.schedule.matching if self.schedule is not None else MatchingSettings()

    @property
    def cache_steps(self) -> int:
        return self.schedule.matching.cache_steps if self.schedule is not None else 1

    def set_schedule(self, schedule, *, resample_steps: bool = False, strict_sampler: bool = True) -> None:
        """Run ``schedule`` from the next generation on (``None``: observe only)."""
        self.schedule = schedule
        self.resample_steps = bool(resample_steps)
        self.strict_sampler = bool(strict_sampler)
        self._checked_grids.clear()
        self.end_generation()

    def end_generation(self) -> None:
        """Forget the matching cache and the step position (a new generation starts with the next call)."""
        finished = self.calls > 0
        self.cache.clear()
        self.steps.reset()
        self.call = None
        self.plans = [None] * self.num_blocks
        if finished:
            for listener in list(self.end_listeners):
                listener(self)
        self.calls = 0

    # ------------------------------------------------------------------------------------------- checks
    def check_processors(self) -> None:
        """Raise when someone replaced our processors after ``apply`` (it would silently run at full cost)."""
        for site in self.sites:
            ours = self.processors.get(site.processor_name)
            current = getattr(site.module, "processor", None)
            if ours is not None and current is not ours:
                raise AsymRnRError(
                    f"the attention processor of {self.component}.{site.path} was replaced by "
                    f"{type(current).__name__} after asymrnr.apply (set_attn_processor, fuse_qkv_projections or "
                    "another library); asymrnr would silently do nothing. Call asymrnr.remove(pipe) first, make "
                    "the change, then asymrnr.apply(pipe, schedule) again"
                )

    def check_sampler(self) -> None:
        """Refuse a pipeline whose sampler differs from the schedule's (class, timestep settings, steps)."""
        pipe = self.pipe
        if pipe is None or self.schedule is None:
            return
        check_sampler(self.schedule, pipe.scheduler, strict=self.strict_sampler, resample=self.resample_steps)

    def _check_grid(self, grid: tuple[int, int, int]) -> None:
        if grid in self._checked_grids or self.schedule is None:
            return
        sched = self.schedule
        stride = tuple(sched.matching.stride)
        ceiling = vocab.rate_ceiling(grid, stride)
        for feature in vocab.SCHEDULE_FEATURES:
            for b, row in enumerate(sched.rates[feature]):
                for k, r in enumerate(row):
                    if r > ceiling + 1e-12:
                        raise ScheduleMismatchError(
                            f"rates.{feature}[{b}][{k}] = {r:g} exceeds the ceiling {ceiling:.4f} (sources / video "
                            f"tokens) of stride {stride} on the token grid {grid}; lower the rate or use a smaller "
                            "stride (asymrnr never clamps rates silently)"
                        )
        # asymrnr.uniform's schedule measured nothing at its grid, so another size loses nothing: no warning
        uniform = (sched.provenance or {}).get("source") == "asymrnr.uniform"
        if tuple(sched.model.latent_grid) != tuple(grid) and grid not in self._warned_grids and not uniform:
            self._warned_grids.add(grid)
            logger.warning(
                "schedule %s was calibrated at token grid %s but this generation runs at %s: rates are "
                "fractions of the video tokens and still apply, but the redundancy measured at the calibrated "
                "size may not hold; calibrate at this size for the best quality", sched.tag,
                tuple(sched.model.latent_grid), grid,
            )
        self._checked_grids.add(grid)

    # ---------------------------------------------------------------------------------------------- steps
    def _schedule_step(self, t: float, step_index: int | None, new_generation: bool) -> int:
        sched = self.schedule
        num_steps = sched.sampler.num_steps
        timesteps = sched.sampler.timesteps
        gen_step = self.steps.gen_step
        if timesteps is None:
            if gen_step < num_steps:
                return gen_step
            if self.resample_steps:
                return num_steps - 1
            raise ScheduleMismatchError(
                f"this generation runs more than the schedule's {num_steps} steps; run {num_steps} inference "
                "steps, or apply(..., resample_steps=True) to stretch the schedule over the new steps"
            )
        diffs = [abs(float(ts) - t) for ts in timesteps]
        best = min(range(len(diffs)), key=diffs.__getitem__)
        if self.resample_steps:
            return best
        exact = diffs[best] <= 1e-3 * max(1.0, abs(t))
        last = self.steps.last_schedule_step
        if step_index is not None:
            expected_ok = best == step_index
        else:
            # the first call of a generation may start mid-way (video-to-video, strength < 1)
            expected_ok = last is None or best in (last, last + 1)
        if not exact or not expected_ok:
            raise ScheduleMismatchError(
                f"timestep {t:g} at denoising step {gen_step} does not follow the schedule's sampler "
                f"({sched.sampler.scheduler_class or 'unspecified'}, {num_steps} steps, timesteps "
                f"{_short(timesteps)}); run the pipeline with num_inference_steps={num_steps} and the same "
                "scheduler, or apply(..., resample_steps=True) to map the schedule onto the new steps by timestep"
            )
        return best

    @torch.compiler.disable
    def begin_call(self, inputs: Mapping[str, Any], cache_context: Any = None) -> CallState:
        """Resolve the step of this transformer call and decide every site's plan (on the host, eagerly).

        ``inputs`` are the call's bound arguments (by name); ``cache_context`` is diffusers' ``CacheContext``
        set by the pipeline (or ``None``).
        """
        self.check_processors()
        grid = tuple(int(g) for g in self.adapter.call_grid(self.module, inputs))
        # the one host sync per transformer call (as the family reports it: Wan 2.2 TI2V passes per-token
        # timesteps, the max is t; Mochi's transformer gets reversed timesteps, flipped back)
        t = self.adapter.call_timestep(inputs)
        branch = getattr(cache_context, "name", None) or DEFAULT_BRANCH
        step_index = getattr(cache_context, "step_index", None)
        new_generation = self.steps.advance(t, step_index)
        if new_generation:
            if self.calls:
                self.end_generation()
                self.steps.advance(t, step_index)
            self.generation += 1
            self.match_log = []
            if self.schedule is not None:
                self.check_sampler()
        self.calls += 1
        step = None
        plans: list[BlockPlan | None] = [None] * self.num_blocks
        if self.schedule is not None:
            self._check_grid(grid)
            step = self._schedule_step(t, step_index, new_generation)
            self.steps.last_schedule_step = step
            self._check_component(step)
            n = math.prod(grid)
            rates = self.schedule.rates
            for b in range(self.num_blocks):
                plan = BlockPlan(n_q=int(rates["q"][b][step] * n), n_kv=int(rates["kv"][b][step] * n),
                                 n_h=int(rates["h"][b][step] * n))
                plans[b] = plan if plan.active else None
        window = vocab.cache_window(self.steps.gen_step, self.cache_steps)
        if self.call is None or self.call.window != window:
            self.partitions.keep_window(window)
        self.plans = plans
        hidden = inputs.get("hidden_states")
        self.call = CallState(t, branch, self.steps.gen_step, step, window, grid, new_generation,
                              text_len=self.adapter.call_text_len(inputs),
                              batch=int(hidden.shape[0]) if hidden is not None else 1,
                              shard=self._shard(grid))
        return self.call

    def _shard(self, grid: tuple[int, int, int]):
        """This rank's shard of the video tokens under context parallelism (refused where asymrnr cannot run
        it right), a simulated one inside ``simulate_context_parallel``, else ``None``."""
        from .. import distributed

        if distributed.context_parallel_config(self.module) is not None:
            distributed.check_context_parallel(self.adapter, self.module, self.component,
                                               observing=bool(self.observers))
            return distributed.shard_of(self.module, math.prod(grid))
        if self.simulate_shards is not None:
            world = self.simulate_shards[0]
            return distributed.Shard(0, world, distributed.shard_bounds(math.prod(grid), world, uneven=True),
                                     simulated=True)
        return None

    def end_call(self) -> None:
        for listener in list(self.call_listeners):
            listener(self)

    def _check_component(self, step: int) -> None:
        sampler = self.schedule.sampler
        want = sampler.transformer_of_step(step)
        if want != self.component and not self.resample_steps:
            raise ScheduleMismatchError(
                f"{self.component} ran denoising step {step}, but schedule {self.schedule.tag} was calibrated with "
                f"{want} at that step (the pipeline's expert switch, e.g. boundary_ratio, differs from "
                "calibration); use the pipeline settings of the calibration, or re-calibrate"
            )

    # ------------------------------------------------------------------------------------------- helpers
    def plan(self, block: int) -> BlockPlan | None:
        return self.plans[block]

    def partition(self, block: int, feature: str, device, *, stride=None, seed=None, mode: str | None = None,
                  shard=None) -> Partition:
        """The partition of ``(block, feature)`` for the current call (its grid and cache window); restricted
        to ``shard`` (a real context-parallel one) when given."""
        m = self.matching
        stride = tuple(stride or m.stride)
        seed = m.seed if seed is None else seed
        mode = mode or m.partition
        window = self.call.window if mode == "window" else None
        return self.partitions.get(self.call.grid, stride, seed, block, vocab.PARTITION_OF.get(feature, feature),
                                   window, device, shard=shard)


def check_sampler(schedule, scheduler, *, strict: bool = True, resample: bool = False) -> None:
    """Refuse (or warn, with ``strict=False``) a scheduler other than the schedule's: its class, the config
    values that change timesteps or noise levels, and (unless ``resample``) its step count."""
    want = schedule.sampler
    problems = []
    have_class = type(scheduler).__name__
    if want.scheduler_class is not None and want.scheduler_class != have_class:
        problems.append(f"scheduler {have_class} instead of {want.scheduler_class}")
    have = sampler_config(scheduler)
    for key, value in (want.config or {}).items():
        if key in have and not _same(have[key], value):
            problems.append(f"{key} = {have[key]!r} instead of {value!r}")
    if problems:
        msg = (f"the pipeline's sampler differs from the one schedule {schedule.tag} was calibrated with: "
               f"{'; '.join(problems)}. Load the calibration's scheduler (e.g. "
               f"pipe.scheduler = {want.scheduler_class or have_class}.from_config(pipe.scheduler.config"
               f"{', ' if want.config else ''}{', '.join(f'{k}={v!r}' for k, v in list((want.config or {}).items())[:2])})), "
               "or re-calibrate with this sampler; asymrnr.apply(..., strict_sampler=False) runs anyway")
        if (schedule.provenance or {}).get("source") == "asymrnr.uniform":
            msg += ("; for a uniform schedule, simply apply it again after changing the scheduler "
                    "(asymrnr.uniform(pipe, q=..., kv=...))")
        if strict:
            raise ScheduleMismatchError(msg)
        logger.warning(msg)
    timesteps = getattr(scheduler, "timesteps", None)
    if not resample and timesteps is not None and len(timesteps) and len(timesteps) != want.num_steps \
            and not _is_tail(want, timesteps):
        raise ScheduleMismatchError(
            f"the pipeline runs {len(timesteps)} inference steps but the schedule {schedule.tag} was made for "
            f"{want.num_steps}; run with num_inference_steps={want.num_steps}, or apply(..., resample_steps=True) "
            "to map the schedule onto the new steps by timestep"
        )


def _is_tail(sampler, timesteps) -> bool:
    """Whether the schedule's timesteps are the last ones of the scheduler's: video-to-video pipelines
    (``strength < 1``) set ``N`` timesteps and run the last ``int(N * strength)``, and a schedule profiled on
    such runs holds those (each call is then checked against them by timestep)."""
    want = sampler.timesteps
    if want is None or not 0 < len(want) < len(timesteps):
        return False
    tail = timesteps[len(timesteps) - len(want):]
    tail = tail.tolist() if hasattr(tail, "tolist") else list(tail)
    return all(_same(float(a), float(b)) for a, b in zip(tail, want))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _short(values) -> str:
    vals = [f"{float(v):g}" for v in values]
    if len(vals) <= 6:
        return "[" + ", ".join(vals) + "]"
    return "[" + ", ".join(vals[:3]) + ", ..., " + ", ".join(vals[-2:]) + "]"


#: The name the previous release used for the per-transformer state.
RuntimeContext = Runtime

__all__ = ["BlockPlan", "CallState", "CachedMatching", "MatchingCache", "PartitionCache", "StepTracker", "Runtime",
           "RuntimeContext", "check_sampler", "DEFAULT_BRANCH"]
