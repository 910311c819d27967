"""Statistics -> Schedule: the quantile policy of the paper (Sec. 3.4), presets and a FLOPs budget search.

For each schedule feature (``q`` from the statistics' Q similarity, ``kv`` from the V similarity: K and V
share V's matching, paper Sec. 4.3) the planner

1. takes the per-cell mean similarity of the chosen metric, averaged over runs and branches (NaN ignored)
   -> ``[num_blocks, num_steps]``;
2. aggregates it over each matching-cache window (steps ``w*s .. w*s+s-1``; mean by default) so that the
   rates are constant where one matching is reused;
3. standardises the window scores to [0, 1] (min-max over all measured cells of that feature);
4. ranks the cells (each window weighs its number of steps; ties share one rank) and reduces the top
   ``fraction`` of them whose standardised score is at least ``min_score``; within the reduced cells,
   tiers by rank (most similar first) get rates from a tier table, so the rate of a reduced cell grows
   with its similarity;
5. caps every rate at the policy's ``max_rate`` and at the matching ceiling ``N_src / N``; with
   ``q_at_most_kv`` (off by default) Q is additionally capped by the K/V rate of the same cell.

The default policy follows the paper (Table 2, Sec. 4.3): Q is reduced *hard* (up to 0.8) in the few most
redundant cells and never in low-similarity cells, K/V moderately in more cells.

A single scalar ``strength`` in [0, 1] moves every knob monotonically (fractions and tier rates are
interpolated between their strength-0 and strength-1 values), so the predicted FLOPs speedup is a
non-decreasing function of the strength and ``target_speedup`` is solved by bisection on it.

See ``docs/planner.md`` for the policy, the presets and the assumptions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

from . import flops as _flops
from . import vocab
from .errors import AsymRnRError
from .flops import FlopsReport, rates_flops

logger = logging.getLogger(__name__)

#: Schedule feature -> statistics feature its similarity is read from.
SOURCE_FEATURE = {f: vocab.SOURCE_FEATURE[f] for f in ("q", "kv")}
PLANNED_FEATURES = ("q", "kv")
AGGREGATES = ("mean", "min", "median")
#: Relative tolerance of the budget search (``|achieved - target| / target``).
SEARCH_TOLERANCE = 0.01
_SEARCH_ITERATIONS = 40
_RATE_DECIMALS = 4


class PlannerError(AsymRnRError, ValueError):
    """Bad planner input: unknown preset or metric, invalid policy, statistics the planner cannot use."""


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------


def _lerp(pair: tuple[float, float], s: float) -> float:
    lo, hi = pair
    return lo + s * (hi - lo)


@dataclass(frozen=True)
class FeaturePolicy:
    """How one schedule feature is reduced as a function of the strength ``s``.

    Attributes:
        fraction: (at s=0, at s=1) share of the measured (block, step) cells that are reduced: the most
            similar ones. Interpolated linearly.
        tier_edges: cumulative shares of the *reduced* cells per tier, most similar tier first; the last
            edge is 1. E.g. ``(1/3, 2/3, 1)``: three equal tiers.
        tier_rates: per tier, (rate at s=0, rate at s=1); non-increasing from tier to tier (more similar
            cells never get a lower rate).
        max_rate: hard cap on any rate of this feature (the matching ceiling ``N_src/N`` applies too).
        min_score: cells whose standardised similarity (0 = least similar cell, 1 = most) is below this are
            never reduced, whatever their rank.
    """

    fraction: tuple[float, float]
    tier_edges: tuple[float, ...]
    tier_rates: tuple[tuple[float, float], ...]
    max_rate: float
    min_score: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", tuple(float(x) for x in self.fraction))
        object.__setattr__(self, "tier_edges", tuple(float(x) for x in self.tier_edges))
        object.__setattr__(self, "tier_rates", tuple(tuple(float(x) for x in p) for p in self.tier_rates))
        object.__setattr__(self, "max_rate", float(self.max_rate))
        object.__setattr__(self, "min_score", float(self.min_score))

    def validate(self, name: str) -> None:
        where = f"policy.{name}"
        lo, hi = self.fraction if len(self.fraction) == 2 else (None, None)
        if lo is None or not 0.0 <= lo <= hi <= 1.0:
            raise PlannerError(f"{where}.fraction must be (at strength 0, at strength 1) with 0 <= lo <= hi <= 1, got {self.fraction}")
        edges = self.tier_edges
        if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] <= 0 or abs(edges[-1] - 1.0) > 1e-9:
            raise PlannerError(f"{where}.tier_edges must be increasing cumulative shares in (0, 1] ending at 1, got {edges}")
        if len(self.tier_rates) != len(edges):
            raise PlannerError(
                f"{where}.tier_rates has {len(self.tier_rates)} tiers but tier_edges has {len(edges)}; give one "
                "(rate at strength 0, rate at strength 1) pair per tier"
            )
        for k, pair in enumerate(self.tier_rates):
            if len(pair) != 2 or not 0.0 <= pair[0] <= pair[1] < 1.0:
                raise PlannerError(f"{where}.tier_rates[{k}] must be (lo, hi) with 0 <= lo <= hi < 1, got {pair}")
        for end in (0, 1):
            seq = [p[end] for p in self.tier_rates]
            if any(b > a + 1e-12 for a, b in zip(seq, seq[1:])):
                raise PlannerError(
                    f"{where}.tier_rates must not increase from tier to tier (the first tier holds the most similar "
                    f"cells), got {self.tier_rates}"
                )
        if not 0.0 <= self.max_rate < 1.0:
            raise PlannerError(f"{where}.max_rate must be in [0, 1), got {self.max_rate}")
        if not 0.0 <= self.min_score <= 1.0:
            raise PlannerError(f"{where}.min_score must be in [0, 1], got {self.min_score}")

    def fraction_at(self, s: float) -> float:
        return _lerp(self.fraction, s)

    def rates_at(self, s: float) -> np.ndarray:
        return np.minimum(np.array([_lerp(p, s) for p in self.tier_rates]), self.max_rate)

    def to_dict(self) -> dict:
        return {
            "fraction": list(self.fraction),
            "tier_edges": list(self.tier_edges),
            "tier_rates": [list(p) for p in self.tier_rates],
            "max_rate": self.max_rate,
            "min_score": self.min_score,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "FeaturePolicy":
        return cls(
            fraction=tuple(d["fraction"]),
            tier_edges=tuple(d["tier_edges"]),
            tier_rates=tuple(tuple(p) for p in d["tier_rates"]),
            max_rate=d["max_rate"],
            min_score=d.get("min_score", 0.0),
        )


#: Q: hard where it is redundant, untouched elsewhere (paper Table 2 and Sec. 4.3: Q is the most sensitive
#: feature in low-similarity cells, 10 % there already blurs, but takes 80 % in high-similarity cells
#: without visible artifacts). At most 54 % of the cells (27 % at the ``base`` strength, the share of the
#: authors' shipped 2B ``base``), two tiers of equal size: the most similar at 0.7 -> 0.8, the
#: rest at 0.2 -> 0.6 (0.75 / 0.4 at ``base``; shipped: 0.8 / 0.4). ``min_score`` 0.3: a cell in the
#: lowest 30 % of the similarity range is never reduced for Q, whatever the strength or the budget.
DEFAULT_Q = FeaturePolicy(
    fraction=(0.0, 0.54),
    tier_edges=(0.5, 1.0),
    tier_rates=((0.7, 0.8), (0.2, 0.6)),
    max_rate=0.8,
    min_score=0.3,
)
#: K/V (matched on V, the most robust feature alone, paper Fig. 7): moderate rates in more cells. Up to
#: 72 % of the cells (36 % at ``base``; the Q / KV fraction ratio is 3/4), three tiers at
#: 0.2 -> 0.6, 0.15 -> 0.45, 0.1 -> 0.3 (0.4 / 0.3 / 0.2 at ``base``; shipped: 0.3).
DEFAULT_KV = FeaturePolicy(
    fraction=(0.0, 0.72),
    tier_edges=(1 / 3, 2 / 3, 1.0),
    tier_rates=((0.2, 0.6), (0.15, 0.45), (0.1, 0.3)),
    max_rate=0.6,
)


@dataclass(frozen=True)
class PlannerPolicy:
    """Everything that turns similarity statistics into rates. ``strength`` in [0, 1] scales it all.

    Attributes:
        strength: 0 reduces nothing (with the default tables), 1 is the most aggressive schedule of the
            policy; fractions and tier rates grow monotonically with it.
        q, kv: per-feature :class:`FeaturePolicy`.
        q_at_most_kv: cap the Q rate of every cell at the K/V rate of the same cell (Q reduced only where
            K/V is, never more). Off by default: the paper reduces Q *above* K/V in the most redundant
            cells (the authors' shipped schedules: Q 0.4 / 0.8, V 0.3). A conservative variant.
        aggregate: how a cache window's per-step similarities become its score: mean, min (a window
            counts as similar only if every step is), or median.
    """

    strength: float = 0.5
    q: FeaturePolicy = DEFAULT_Q
    kv: FeaturePolicy = DEFAULT_KV
    q_at_most_kv: bool = False
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0.0 <= self.strength <= 1.0:
            raise PlannerError(f"policy.strength must be a number in [0, 1], got {self.strength!r}")
        if self.aggregate not in AGGREGATES:
            raise PlannerError(f"unknown policy.aggregate {self.aggregate!r}; use one of {', '.join(AGGREGATES)}")
        self.q.validate("q")
        self.kv.validate("kv")

    def with_strength(self, strength: float) -> "PlannerPolicy":
        return dataclasses.replace(self, strength=float(strength))

    def feature(self, name: str) -> FeaturePolicy:
        return {"q": self.q, "kv": self.kv}[name]

    def to_dict(self) -> dict:
        return {
            "strength": float(self.strength),
            "q": self.q.to_dict(),
            "kv": self.kv.to_dict(),
            "q_at_most_kv": self.q_at_most_kv,
            "aggregate": self.aggregate,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "PlannerPolicy":
        return cls(
            strength=float(d.get("strength", 0.5)),
            q=FeaturePolicy.from_dict(d["q"]) if "q" in d else DEFAULT_Q,
            kv=FeaturePolicy.from_dict(d["kv"]) if "kv" in d else DEFAULT_KV,
            q_at_most_kv=bool(d.get("q_at_most_kv", False)),
            aggregate=str(d.get("aggregate", "mean")),
        )


#: Presets are strengths of the default policy. On the paper's 2B-model-shaped statistics (the tests' Fig. 5-like
#: maps, 50 steps, cache 4) they predict about 1.14-1.17x (base; the paper's "Ours" is 12.000 / 10.342 =
#: 1.160x in FLOPs, 1.13x in latency) and 1.18-1.21x (fast; "Ours-fast" 12.000 / 9.976 = 1.203x) FLOPs
#: speedup. base reduces Q in 27 % of the cells (mean rate 0.17, at 0.75 / 0.4) and K/V in 36 % (mean
#: 0.10), against the authors' shipped 2B base: Q 27 % (0.18, at 0.8 / 0.4), V 30 % (0.09, at
#: 0.3). See docs/planner.md.
PRESETS: dict[str, PlannerPolicy] = {
    "base": PlannerPolicy(strength=0.5),
    "fast": PlannerPolicy(strength=0.6),
}


def preset_policy(name: str) -> PlannerPolicy:
    try:
        return PRESETS[name]
    except KeyError:
        raise PlannerError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (or pass policy=)") from None


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------


@dataclass
class PlanResult:
    """What :func:`plan_schedule` returns.

    Attributes:
        schedule: the planned :class:`~asymrnr.schedule_format.Schedule`.
        predicted_speedup: FLOPs ratio dense / scheduled (:mod:`asymrnr.flops`).
        reached: False when a ``target_speedup`` could not be met within 1 %.
        message: one line for humans (what was planned, or why the target was missed).
        strength: the policy strength used.
        flops: the full :class:`~asymrnr.flops.FlopsReport`.
        scores: feature -> ``[num_blocks, num_steps]`` standardised window similarity (NaN: unmeasured),
            the ranking the rates were drawn from (for reports).
        policy: the policy used (its strength is ``strength``).
    """

    schedule: Any
    predicted_speedup: float
    reached: bool
    message: str
    strength: float = 0.0
    flops: FlopsReport | None = None
    scores: dict = field(default_factory=dict)
    policy: PlannerPolicy | None = None


# --------------------------------------------------------------------------------------------------
# Similarity preparation
# --------------------------------------------------------------------------------------------------


def _nanmean(a: np.ndarray, axis) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(a, axis=axis)


def cell_similarity(stats: Any, metric: str, stat_feature: str) -> np.ndarray:
    """``[num_blocks, num_steps]`` mean similarity of one statistics feature over runs and branches (NaN-aware)."""
    metrics = tuple(getattr(stats, "metrics", ()) or tuple(stats.sim_mean))
    if metric not in stats.sim_mean:
        raise PlannerError(
            f"the statistics hold no {metric!r} similarity (they have {', '.join(metrics)}); pass metric= one of those"
        )
    features = tuple(stats.features)
    if stat_feature not in features:
        raise PlannerError(
            f"the statistics hold no feature {stat_feature!r} (features {features}); re-profile with the features "
            "h, q, k, v"
        )
    arr = np.asarray(stats.sim_mean[metric], dtype=np.float64)
    if arr.ndim != 5:
        raise PlannerError(f"stats.sim_mean[{metric!r}] must be [runs, branches, steps, blocks, features], got shape {arr.shape}")
    sim = _nanmean(arr[..., features.index(stat_feature)], axis=(0, 1))  # [S, B]
    return sim.T.copy()


def _resample(sim: np.ndarray, src_t: np.ndarray | None, dst_t: np.ndarray | None, num_steps: int) -> np.ndarray:
    """Map ``[B, S_src]`` similarities onto ``num_steps`` target steps (by timestep, else by progress)."""
    b, s_src = sim.shape
    if s_src == num_steps and (src_t is None or dst_t is None or np.allclose(src_t, dst_t)):
        return sim
    if src_t is not None and dst_t is not None:
        x_src, x_dst = np.asarray(src_t, float), np.asarray(dst_t, float)
    else:
        x_src = np.linspace(0.0, 1.0, s_src) if s_src > 1 else np.zeros(1)
        x_dst = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
    order = np.argsort(x_src)
    out = np.full((b, num_steps), np.nan)
    for i in range(b):
        xs, ys = x_src[order], sim[i, order]
        ok = np.isfinite(ys)
        if ok.any():
            out[i] = np.interp(x_dst, xs[ok], ys[ok])
    return out


def window_scores(sim: np.ndarray, cache_steps: int, aggregate: str = "mean") -> np.ndarray:
    """``[B, S]`` -> ``[B, S]``: each step gets its cache window's aggregate (NaN steps ignored)."""
    b, s = sim.shape
    cs = max(1, int(cache_steps))
    pad = (-s) % cs
    w = np.pad(sim, ((0, 0), (0, pad)), constant_values=np.nan).reshape(b, -1, cs)
    fn = {"mean": np.nanmean, "min": np.nanmin, "median": np.nanmedian}[aggregate]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        agg = fn(w, axis=2)  # [B, W]
    return np.repeat(agg, cs, axis=1)[:, :s]


def standardize(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] over the finite cells; a flat map becomes 0.5 everywhere (NaN stays NaN)."""
    out = np.full(scores.shape, np.nan)
    ok = np.isfinite(scores)
    if not ok.any():
        return out
    lo, hi = float(scores[ok].min()), float(scores[ok].max())
    out[ok] = 0.5 if hi <= lo else (scores[ok] - lo) / (hi - lo)
    return out


def rank_positions(scores: np.ndarray) -> np.ndarray:
    """Top-position of every cell in ``(0, 1)``: the share of measured cells ranked above it plus half its tie
    group (so a cell is in the top ``f`` if its position is below ``f``). NaN cells get NaN."""
    pos = np.full(scores.shape, np.nan)
    ok = np.isfinite(scores)
    total = int(ok.sum())
    if total == 0:
        return pos
    values, inverse = np.unique(scores[ok], return_inverse=True)  # ascending
    counts = np.bincount(inverse, minlength=values.size).astype(np.float64)
    above = total - np.cumsum(counts)  # cells strictly more similar than each value
    pos[ok] = (above[inverse] + 0.5 * counts[inverse]) / total
    return pos


def feature_rates(std_scores: np.ndarray, fp: FeaturePolicy, strength: float, ceiling: float) -> np.ndarray:
    """Rates ``[B, S]`` of one feature from its standardised window scores, at ``strength``."""
    pos = rank_positions(std_scores)
    frac = fp.fraction_at(strength)
    rates = fp.rates_at(strength)
    cap = min(fp.max_rate, ceiling)
    out = np.zeros(std_scores.shape)
    ok = np.isfinite(pos) & (pos < frac) & (std_scores >= fp.min_score)
    if frac <= 0.0 or not ok.any():
        return out
    edges = np.asarray(fp.tier_edges) * frac
    tier = np.searchsorted(edges, pos[ok], side="right")  # first edge strictly above the position
    tier = np.minimum(tier, len(edges) - 1)
    out[ok] = np.minimum(rates[tier], cap)
    scale = 10**_RATE_DECIMALS
    return np.floor(out * scale + 1e-9) / scale


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    model: Any  # ModelDescription
    sampler: Any  # SamplerDescription
    matching: Any  # MatchingSettings
    scores: dict  # feature -> standardised [B, S]
    ceiling: float
    nan_cells: dict  # feature -> count of unmeasured cells
    flat: list  # features whose similarity is flat


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars/arrays to python)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def stats_digest(stats: Any) -> str:
    """12 hex digits identifying the similarity content of a statistics object (independent of its path)."""
    h = hashlib.sha256()
    for metric in sorted(stats.sim_mean):
        h.update(metric.encode())
        h.update(np.ascontiguousarray(stats.sim_mean[metric], dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(stats.timesteps, dtype=np.float64).tobytes())
    return h.hexdigest()[:12]


def _stats_summary(stats: Any) -> dict:
    prompts = list(getattr(stats, "prompts", []) or [])
    out = {
        "digest": stats_digest(stats),
        "path": getattr(stats, "path", None),
        "tool_version": getattr(stats, "tool_version", None),
        "num_runs": len(prompts) if prompts else int(np.shape(stats.timesteps)[0]),
        "branches": list(getattr(stats, "branches", ()) or ()),
        "prompts": [p if len(p) <= 80 else p[:77] + "..." for p in prompts[:8]],
        "seeds": _plain(np.asarray(getattr(stats, "seeds", []))),
        "profiled_schedule": getattr(stats, "profiled_schedule", None),
        "generation": _plain(dict(getattr(stats, "generation", {}) or {})),
    }
    matching = dict(getattr(stats, "matching", {}) or {})
    if matching:  # the layout the statistics were profiled with (granularity, partition, stride, seed)
        out["matching"] = _plain(matching)
    return out


def _supported(cls: Any, values: Mapping) -> dict:
    """The entries of ``values`` that ``cls`` (a description dataclass) has fields for.

    The planner fills the version-2 records (sampler ``config`` / ``transformers`` / ``step_transformer``,
    matching ``partition``); a schedule format without those fields gets the rest, and the provenance
    keeps everything.
    """
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(values)
    return {k: v for k, v in values.items() if k in names}


def _two_expert_fields(gen: Mapping) -> dict:
    """``transformers`` / ``step_transformer`` of a statistics file's generation record (absent in v1)."""
    out: dict = {}
    transformers = gen.get("transformers")
    if transformers:
        out["transformers"] = tuple(str(t) for t in transformers)
    step_transformer = gen.get("step_transformer")
    if step_transformer is not None:
        out["step_transformer"] = tuple(int(i) for i in step_transformer)
    return out


def sampler_fields(stats: Any) -> dict:
    """The sampler a statistics file was profiled with, as keyword arguments of ``SamplerDescription``.

    ``scheduler_class``, ``num_steps`` and the timesteps of run 0, plus ``config`` (the generation's
    ``scheduler_config``) and, for two-expert pipelines (Wan 2.2), ``transformers`` and
    ``step_transformer`` (which transformer runs each step). The last three are read with ``.get``: a
    version-1 statistics file has none of them.
    """
    ts = np.asarray(stats.timesteps, dtype=np.float64)
    num_steps = int(ts.shape[1])
    t0 = ts[0] if ts.shape[0] else None
    timesteps = tuple(float(t) for t in t0) if t0 is not None and np.all(np.isfinite(t0)) else None
    gen = dict(getattr(stats, "generation", {}) or {})
    out = {
        "scheduler_class": gen.get("scheduler_class") or None,
        "num_steps": num_steps,
        "timesteps": timesteps,
        "config": _plain(dict(gen.get("scheduler_config") or {})),
    }
    out.update(_two_expert_fields(gen))
    step_transformer = out.get("step_transformer")
    if step_transformer is not None and len(step_transformer) != num_steps:
        raise PlannerError(
            f"the statistics' generation.step_transformer has {len(step_transformer)} entries but they hold "
            f"{num_steps} steps; the statistics file is inconsistent: re-profile"
        )
    return out


def _sampler_from_stats(stats: Any):
    from .schedule_format import SamplerDescription

    fields = sampler_fields(stats)
    try:
        return SamplerDescription(**_supported(SamplerDescription, fields))
    except AsymRnRError as exc:
        raise PlannerError(f"cannot build the sampler description from the statistics: {exc}") from None


def _rate_ceiling(grid, stride) -> float:
    """The matching ceiling ``N_src / N`` as the FLOPs model counts destinations (it rejects any rate above
    its ceiling); :func:`asymrnr.vocab.rate_ceiling` (destinations in full windows only) if it has none."""
    fn = getattr(_flops, "rate_ceiling", None) or vocab.rate_ceiling
    return float(fn(tuple(grid), tuple(stride)))


def _check_choice(name: str, value: Any, choices: tuple) -> str:
    if value not in choices:
        raise PlannerError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")
    return value


def matching_fields(stats: Any, *, metric: str = vocab.DEFAULT_METRIC, cache_steps: int = vocab.DEFAULT_CACHE_STEPS,
                    granularity: str = vocab.DEFAULT_GRANULARITY,
                    partition: str = vocab.DEFAULT_PARTITION_MODE) -> dict:
    """The planned schedule's matching settings, as keyword arguments of ``MatchingSettings``.

    The stride and the seed are the statistics' (the ranking was measured with them); the metric, cache
    window, granularity and partition are the planner's arguments (defaults: the paper's per-head matching
    and a partition redrawn for every cache window); the reduction is the paper's ``discard``.
    """
    info = dict(getattr(stats, "matching", {}) or {})
    return {
        "metric": metric,
        "stride": tuple(int(x) for x in info.get("stride", vocab.DEFAULT_STRIDE)),
        "cache_steps": int(cache_steps),
        "reduce_op": "discard",
        "granularity": _check_choice("granularity", granularity, vocab.GRANULARITIES),
        "seed": int(info.get("seed", 0)),
        "partition": _check_choice("partition", partition, vocab.PARTITION_MODES),
    }


def _prepare(stats: Any, *, metric: str, cache_steps: int, sampler: Any, aggregate: str, granularity: str,
             partition: str) -> _Prepared:
    from .schedule_format import MatchingSettings, ModelDescription

    if isinstance(cache_steps, bool) or not isinstance(cache_steps, (int, np.integer)) or cache_steps < 1:
        raise PlannerError(f"cache_steps must be an integer >= 1 (the matching-cache window in steps), got {cache_steps!r}")
    model = ModelDescription.from_dict(stats.model, where="stats.model")
    stats_sampler = _sampler_from_stats(stats)
    if sampler is None:
        sampler = stats_sampler
    elif not (hasattr(sampler, "num_steps") and hasattr(sampler, "timesteps")):
        raise PlannerError(
            f"sampler must be a SamplerDescription (scheduler_class, num_steps, timesteps), got {type(sampler).__name__}"
        )
    settings = matching_fields(stats, metric=metric, cache_steps=cache_steps, granularity=granularity,
                               partition=partition)
    try:
        matching = MatchingSettings(**_supported(MatchingSettings, settings))
    except AsymRnRError as exc:
        raise PlannerError(f"cannot build the matching settings from the statistics and arguments: {exc}") from None
    ceiling = _rate_ceiling(model.latent_grid, matching.stride)
    scores, nan_cells, flat = {}, {}, []
    for feat in PLANNED_FEATURES:
        sim = cell_similarity(stats, metric, SOURCE_FEATURE[feat])
        if sim.shape[0] != model.num_blocks:
            raise PlannerError(
                f"the statistics have {sim.shape[0]} blocks but their model description says {model.num_blocks}; "
                "the statistics file is inconsistent: re-profile"
            )
        src_t = np.asarray(stats.timesteps[0], float) if stats_sampler.timesteps is not None else None
        dst_t = np.asarray(sampler.timesteps, float) if sampler.timesteps is not None else None
        sim = _resample(sim, src_t, dst_t, sampler.num_steps)
        nan_cells[feat] = int(np.isnan(sim).sum())
        win = window_scores(sim, cache_steps, aggregate)
        std = standardize(win)
        measured = win[np.isfinite(win)]
        if measured.size and float(np.ptp(measured)) == 0.0:
            flat.append(feat)
        scores[feat] = std
    return _Prepared(model, sampler, matching, scores, ceiling, nan_cells, flat)


def _rates_for(prep: _Prepared, policy: PlannerPolicy, strength: float) -> dict:
    q = feature_rates(prep.scores["q"], policy.q, strength, prep.ceiling)
    kv = feature_rates(prep.scores["kv"], policy.kv, strength, prep.ceiling)
    if policy.q_at_most_kv:
        q = np.minimum(q, kv)
    return {"q": q, "kv": kv, "h": np.zeros_like(q)}


def _flops_for(prep: _Prepared, rates: dict) -> FlopsReport:
    return rates_flops(
        prep.model, rates["q"], rates["kv"], rates["h"], cache_steps=prep.matching.cache_steps, stride=prep.matching.stride
    )


def _search(prep: _Prepared, policy: PlannerPolicy, target: float) -> tuple[float, dict, FlopsReport, bool, str]:
    """Bisection on the strength for ``target`` (the speedup is non-decreasing in the strength)."""

    def evaluate(s: float):
        rates = _rates_for(prep, policy, s)
        return rates, _flops_for(prep, rates)

    tol = SEARCH_TOLERANCE
    r_hi, f_hi = evaluate(1.0)
    if f_hi.predicted_speedup < target * (1.0 - tol):
        return 1.0, r_hi, f_hi, False, (
            f"target speedup {target:.3f}x is not reachable with this policy on these statistics: the strongest "
            f"schedule (strength 1.0) predicts {f_hi.predicted_speedup:.3f}x, the best reachable; returning it. "
            "Raise the policy's fractions or max rates, or lower the target"
        )
    r_lo, f_lo = evaluate(0.0)
    if f_lo.predicted_speedup >= target:
        ok = f_lo.predicted_speedup <= target * (1.0 + tol)
        msg = "" if ok else (
            f"target speedup {target:.3f}x is below what the weakest schedule of this policy predicts "
            f"({f_lo.predicted_speedup:.3f}x at strength 0); returning that"
        )
        return 0.0, r_lo, f_lo, ok, msg
    lo, hi = 0.0, 1.0  # speedup(lo) < target <= speedup(hi)
    for _ in range(_SEARCH_ITERATIONS):
        mid = 0.5 * (lo + hi)
        r_mid, f_mid = evaluate(mid)
        if f_mid.predicted_speedup >= target:
            hi, r_hi, f_hi = mid, r_mid, f_mid
        else:
            lo, r_lo, f_lo = mid, r_mid, f_mid
        if abs(f_hi.predicted_speedup - target) <= 1e-4 * target:
            break
    best = min(((hi, r_hi, f_hi), (lo, r_lo, f_lo)), key=lambda c: abs(c[2].predicted_speedup - target))
    s, rates, rep = best
    ok = abs(rep.predicted_speedup - target) <= tol * target
    msg = "" if ok else (
        f"target speedup {target:.3f}x cannot be hit within {tol:.0%}: the achievable speedups jump from "
        f"{f_lo.predicted_speedup:.3f}x to {f_hi.predicted_speedup:.3f}x here (too few cells to spread the budget "
        f"over); returning the closest, {rep.predicted_speedup:.3f}x"
    )
    return s, rates, rep, ok, msg


def plan_schedule(
    stats: Any,
    *,
    preset: str | None = "base",
    target_speedup: float | None = None,
    cache_steps: int = 4,
    metric: str = "euclidean",
    policy: PlannerPolicy | None = None,
    sampler: Any = None,
    notes: str = "",
    granularity: str = vocab.DEFAULT_GRANULARITY,
    partition: str = vocab.DEFAULT_PARTITION_MODE,
) -> PlanResult:
    """Plan a reduction schedule from profiler statistics.

    Args:
        stats: a :class:`~asymrnr.profiler.stats_format.StatsData` (``sim_mean`` metric ->
            ``[runs, branches, steps, blocks, features]``, ``features`` with ``q`` and ``v``, ``model``,
            ``generation``, ``matching``, ``timesteps [runs, steps]``).
        preset: ``"base"`` (near-lossless) or ``"fast"``; ignored when ``policy`` is given; ``None``: the
            default policy (the presets' tables), typically with ``target_speedup``.
        target_speedup: solve the policy's strength for this predicted FLOPs speedup (within 1 %) instead
            of using the preset's strength (the presets share one policy family, so they give the same
            result here).
        cache_steps: matching-cache window; rates are constant inside each window.
        metric: similarity the ranking uses (and the schedule's matching metric): ``euclidean`` or
            ``cosine`` (whatever the statistics hold).
        policy: a :class:`PlannerPolicy` (overrides ``preset``).
        sampler: a :class:`~asymrnr.schedule_format.SamplerDescription` to plan for; by default the
            profiled one (with its scheduler config and, for two-expert pipelines such as Wan 2.2, its
            ``transformers`` and ``step_transformer``). With another step count the similarities are
            mapped by timestep (or progress).
        notes: free text stored in the schedule's provenance.
        granularity: the schedule's matching granularity: ``"head"`` (every head matched on its own, the
            paper's reference; default) or ``"joint"`` (all heads together).
        partition: ``"window"`` (the destination partition redrawn, seeded, for every matching-cache
            window, as the paper's random choice; default) or ``"fixed"`` (one per block and feature).

    The stride and seed of the matching come from the statistics; their own matching layout (what they
    were profiled with) is recorded in the provenance (``provenance["stats"]["matching"]``).
    """
    from . import __version__
    from .schedule_format import Schedule

    if policy is None:
        # preset=None: the default policy (its tables; strength 0.5 unless target_speedup solves it).
        policy = PlannerPolicy() if preset is None else preset_policy(preset)
        used_preset = preset
    else:
        if not isinstance(policy, PlannerPolicy):
            raise PlannerError(f"policy must be a PlannerPolicy, got {type(policy).__name__}")
        policy.validate()
        used_preset = None
    if target_speedup is not None:
        if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or not math.isfinite(target_speedup) or target_speedup < 1.0:
            raise PlannerError(f"target_speedup must be a number >= 1.0 (e.g. 1.15), got {target_speedup!r}")
    _check_choice("granularity", granularity, vocab.GRANULARITIES)
    _check_choice("partition", partition, vocab.PARTITION_MODES)
    prep = _prepare(stats, metric=metric, cache_steps=cache_steps, sampler=sampler, aggregate=policy.aggregate,
                    granularity=granularity, partition=partition)

    if target_speedup is None:
        strength = float(policy.strength)
        rates = _rates_for(prep, policy, strength)
        report = _flops_for(prep, rates)
        reached, problem = True, ""
    else:
        strength, rates, report, reached, problem = _search(prep, policy, float(target_speedup))
    used_policy = policy.with_strength(strength)

    cautions = []
    for feat, n in prep.nan_cells.items():
        if n:
            cautions.append(f"{n} unmeasured (NaN) {feat} cells were left unreduced")
    for feat in prep.flat:
        cautions.append(f"the {feat} similarity is flat across cells, so its ranking carries no information")
    if getattr(stats, "profiled_schedule", None):
        cautions.append(
            f"the statistics were profiled with schedule {stats.profiled_schedule} active; profile without a "
            "schedule for an unbiased ranking"
        )

    provenance = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notes": notes,
        "source": "planner",
        "planner": {
            "preset": used_preset,
            "target_speedup": None if target_speedup is None else float(target_speedup),
            "reached": bool(reached),
            "strength": float(strength),
            "metric": metric,
            "predicted_speedup": float(report.predicted_speedup),
            "policy": used_policy.to_dict(),
            # Kept here too: a schedule format without these matching fields still records what was meant.
            "matching": {"granularity": granularity, "partition": partition},
        },
        "stats": _stats_summary(stats),
    }
    schedule = Schedule(
        model=prep.model, sampler=prep.sampler, matching=prep.matching, rates=rates, provenance=provenance
    )
    q_cells = float(np.mean(rates["q"] > 0))
    kv_cells = float(np.mean(rates["kv"] > 0))
    summary = (
        f"planned {schedule.tag}: strength {strength:.3f}, Q reduced in {q_cells:.0%} of cells (mean rate "
        f"{rates['q'].mean():.3f}), K/V in {kv_cells:.0%} (mean {rates['kv'].mean():.3f}); predicted FLOPs "
        f"speedup {report.predicted_speedup:.3f}x"
    )
    if target_speedup is not None:
        summary += f" (target {float(target_speedup):.3f}x{'' if reached else ', NOT reached'})"
    message = "; ".join(([problem] if problem else []) + [summary] + cautions)
    (logger.warning if not reached else logger.info)("%s", message)
    return PlanResult(
        schedule=schedule,
        predicted_speedup=float(report.predicted_speedup),
        reached=bool(reached),
        message=message,
        strength=float(strength),
        flops=report,
        scores={f: prep.scores[f].copy() for f in PLANNED_FEATURES},
        policy=used_policy,
    )


# --------------------------------------------------------------------------------------------------
# Shape of a schedule
# --------------------------------------------------------------------------------------------------

#: Names of the block groups of :func:`schedule_shape_summary` when there are three.
BLOCK_GROUP_NAMES = ("shallow", "intermediate", "deep")


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` contiguous, non-empty ``(start, stop)`` ranges."""
    return [(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(n), max(1, int(parts))) if a.size]


def _span(a: int, b: int) -> str:
    return f"{a}-{b - 1}" if b - a > 1 else f"{a}"


def _share_and_mean(r: np.ndarray) -> dict:
    reduced = r > 0
    return {
        "cells": round(float(reduced.mean()), 4) if r.size else 0.0,
        "mean_rate": round(float(r.mean()), 4) if r.size else 0.0,
    }


def schedule_shape_summary(schedule: Any, *, block_groups: int = 3, step_ranges: int = 5) -> dict:
    """Where and how hard a schedule reduces, as plain numbers (for docs, reports and tests).

    Args:
        schedule: a :class:`~asymrnr.schedule_format.Schedule`, or a mapping feature -> ``[blocks, steps]``
            rates (e.g. a reference schedule turned into rates).
        block_groups: contiguous block groups (3: shallow / intermediate / deep).
        step_ranges: contiguous step ranges.

    Returns a dict with ``num_blocks``, ``num_steps``, ``block_groups`` and ``step_ranges`` (their labels),
    and per feature present with a non-zero rate somewhere (``features[f]``):

    * ``cells``: share of the (block, step) cells reduced; ``mean_rate``: mean rate over *all* cells;
      ``mean_reduced_rate``: over the reduced cells; ``max_rate``;
    * ``levels``: rate (rounded to 2 decimals, as a string) -> share of all cells at that rate;
    * ``by_blocks`` / ``by_steps``: label -> ``{"cells", "mean_rate"}`` per block group / step range;
    * ``cells_grid`` / ``rate_grid``: ``[block group][step range]`` share of cells reduced / mean rate;
    * ``every_step_blocks``: the blocks reduced at every step.

    and, when both ``q`` and ``kv`` are there, ``q_vs_kv``: the shares of cells where Q is reduced more
    than K/V (``q_above_kv``), where only Q is reduced (``q_only``), only K/V (``kv_only``) and both.
    """
    raw = getattr(schedule, "rates", schedule)
    if not isinstance(raw, Mapping):
        raise PlannerError(
            f"schedule_shape_summary needs a Schedule or a mapping feature -> rates, got {type(schedule).__name__}"
        )
    tables = {str(f): np.asarray(t, dtype=np.float64) for f, t in raw.items()}
    if not tables:
        raise PlannerError("schedule_shape_summary got no rate tables")
    shapes = {t.shape for t in tables.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise PlannerError(f"every rate table must be [blocks, steps] of one shape, got {sorted(shapes)}")
    nb, ns = next(iter(shapes))
    b_ranges, s_ranges = _ranges(nb, block_groups), _ranges(ns, step_ranges)
    names = BLOCK_GROUP_NAMES if len(b_ranges) == 3 else tuple(f"group {i}" for i in range(len(b_ranges)))
    b_labels = [f"{n} ({_span(a, b)})" for n, (a, b) in zip(names, b_ranges)]
    s_labels = [_span(a, b) for a, b in s_ranges]
    out: dict = {
        "num_blocks": int(nb),
        "num_steps": int(ns),
        "block_groups": b_labels,
        "step_ranges": s_labels,
        "features": {},
    }
    for feat, r in tables.items():
        reduced = r > 0
        if not reduced.any():
            continue
        values, counts = np.unique(np.round(r[reduced], 2), return_counts=True)
        out["features"][feat] = {
            **_share_and_mean(r),
            "mean_reduced_rate": round(float(r[reduced].mean()), 4),
            "max_rate": round(float(r.max()), 4),
            "levels": {f"{v:.2f}": round(float(c) / r.size, 4) for v, c in zip(values, counts)},
            "by_blocks": {lab: _share_and_mean(r[a:b]) for lab, (a, b) in zip(b_labels, b_ranges)},
            "by_steps": {lab: _share_and_mean(r[:, a:b]) for lab, (a, b) in zip(s_labels, s_ranges)},
            "cells_grid": [[round(float(np.mean(reduced[a:b, c:d])), 4) for c, d in s_ranges] for a, b in b_ranges],
            "rate_grid": [[round(float(np.mean(r[a:b, c:d])), 4) for c, d in s_ranges] for a, b in b_ranges],
            "every_step_blocks": [int(i) for i in np.flatnonzero(reduced.all(axis=1))],
        }
    if "q" in tables and "kv" in tables:
        q, kv = tables["q"], tables["kv"]
        out["q_vs_kv"] = {
            "q_above_kv": round(float(np.mean(q > kv)), 4),
            "q_only": round(float(np.mean((q > 0) & (kv <= 0))), 4),
            "kv_only": round(float(np.mean((kv > 0) & (q <= 0))), 4),
            "both": round(float(np.mean((q > 0) & (kv > 0))), 4),
        }
    return out


__all__ = [
    "BLOCK_GROUP_NAMES",
    "DEFAULT_KV",
    "DEFAULT_Q",
    "FeaturePolicy",
    "PlanResult",
    "PlannerError",
    "PlannerPolicy",
    "PRESETS",
    "SEARCH_TOLERANCE",
    "cell_similarity",
    "feature_rates",
    "matching_fields",
    "plan_schedule",
    "preset_policy",
    "rank_positions",
    "sampler_fields",
    "schedule_shape_summary",
    "standardize",
    "window_scores",
]
