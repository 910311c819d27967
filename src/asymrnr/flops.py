"""FLOPs model of a transformer call, dense or with a reduction schedule, for every supported family.

Torch-free (numpy only) so that the planner's budget search and the text/HTML reports stay cheap.

Each family's adapter (:meth:`asymrnr.archs.base.ArchAdapter.block_terms`) gives, per block kind and
sample, the tokens entering self-attention ``S`` (text + video for joint attention, video only for Wan),
the projections' FLOPs per such token, and every other term of the block (MLP, cross-attention), which no
reduction changes. What this module adds, per (block, step) cell and sample (one multiply-add = 2 FLOPs):

==============  =====================================  ===========================================
term            dense                                   reduced
==============  =====================================  ===========================================
projections     ``S * proj_per_token``                  unchanged by ``q``/``kv`` (AsymRnR reduces
                                                        after the projections); ``h`` (SymRnR)
                                                        runs them on ``S - n_h`` tokens
attention       ``2 * 2*H*Sq*Skv*D`` (QK^T and AV)      ``Sq = S - n_q``, ``Skv = S - n_kv``;
                                                        ``h``: ``Sq = Skv = S - n_h``
fixed terms     the adapter's (MLP, cross-attention)    unchanged (``h`` restores before them)
matching        --                                      ``2*Ns*Nd*C + 3*Ns*Nd + 2*N*C`` per matched
                                                        feature, once per (block, cache window)
gather/scatter  --                                      q: ``(N-n_q)*C + N*C``; kv: ``2*(N-n_kv)*C``;
                                                        h: ``(N-n_h)*C + N*C`` (one op per element)
==============  =====================================  ===========================================

``n_f = floor(rate_f * N)`` (the runtime's ``int(r * n)``), text tokens are never reduced. ``Nd`` is the
number of full stride windows (:func:`asymrnr.vocab.num_destinations`), ``Ns = N - Nd``, and a rate above
``Ns / N`` is an error (never clamped). The matching of a feature in a block is computed once per
matching-cache window (steps ``w*s .. w*s+s-1``), at the first step of the window where that feature is
reduced, exactly like the runtime's cache.

Not counted (well under 0.1 % at real sizes): patch embedding, text/time embeddings, the AdaLN modulation
linears, normalisations, softmax, activations, RoPE, the final projection, the sort of the matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import vocab
from .errors import ScheduleFormatError, ScheduleMismatchError

COMPONENTS = ("projections", "attention", "mlp", "matching", "gather")
RATE_FEATURES = vocab.SCHEDULE_FEATURES


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def num_windows(grid, stride=vocab.DEFAULT_STRIDE) -> int:
    """Number of destination tokens ``Nd``: one per full stride window (:func:`asymrnr.vocab.num_destinations`)."""
    grid = tuple(int(g) for g in grid)
    stride = tuple(int(s) for s in stride)
    if len(grid) != 3 or len(stride) != 3 or min(grid) < 1 or min(stride) < 1:
        raise ValueError(f"grid and stride must be 3 positive integers, got grid={grid}, stride={stride}")
    return vocab.num_destinations(grid, stride)


def rate_ceiling(grid, stride=vocab.DEFAULT_STRIDE) -> float:
    """Largest rate the matching can realise, ``Ns / N`` (0.887 on a 13x30x45 grid at (2,2,2))."""
    return vocab.rate_ceiling(grid, stride)


@dataclass(frozen=True)
class _Shape:
    num_blocks: int
    num_heads: int
    head_dim: int
    grid: tuple[int, int, int]
    self_tokens: np.ndarray  # [B] tokens entering self-attention, per block
    proj_per_token: np.ndarray  # [B]
    fixed: np.ndarray  # [B] every other term (MLP, cross-attention)

    @property
    def n(self) -> int:
        return math.prod(self.grid)

    @property
    def c(self) -> int:
        return self.num_heads * self.head_dim


def model_description(model: Any):
    """A ModelDescription from a ModelDescription, its ``to_dict()`` (v2) or a version-1 dict."""
    from .formats.descriptions import ModelDescription, upgrade_model_v1

    if isinstance(model, ModelDescription):
        return model
    if isinstance(model, Mapping):
        d = dict(model)
        if "family" not in d:
            d = upgrade_model_v1(d)
        return ModelDescription.from_dict(d)
    raise TypeError(f"expected a ModelDescription (or its dict), got {type(model).__name__}")


def _shape(model: Any) -> _Shape:
    from . import archs

    desc = model_description(model)
    adapter = archs.get(desc.family)
    terms = {kind: adapter.block_terms(desc, kind) for kind in set(desc.kinds())}
    kinds = desc.kinds()
    return _Shape(
        num_blocks=desc.num_blocks,
        num_heads=desc.num_heads,
        head_dim=desc.head_dim,
        grid=tuple(desc.latent_grid),
        self_tokens=np.array([terms[k].self_tokens for k in kinds], dtype=np.float64),
        proj_per_token=np.array([terms[k].proj_per_token for k in kinds], dtype=np.float64),
        fixed=np.array([sum(terms[k].fixed.values()) for k in kinds], dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass
class FlopsReport:
    """FLOPs of a whole generation (every step, the whole CFG batch) with and without the reduction.

    Attributes:
        dense_total / reduced_total: FLOPs without / with the schedule.
        predicted_speedup: ``dense_total / reduced_total`` (a FLOPs ratio, not a measured latency ratio).
        per_block_dense / per_block_reduced: ``[B]`` FLOPs of each block summed over steps.
        per_step_dense / per_step_reduced: ``[S]`` FLOPs of each transformer call (all blocks).
        attention_share: share of attention (QK^T + AV) in ``dense_total``.
        components_dense / components_reduced: totals per term (projections, attention, mlp, matching,
            gather).
        matchings: number of (block, window, feature) matchings computed in the generation.
        per_cell_reduced: ``[B, S]`` FLOPs of each (block, step) cell with the schedule.
    """

    dense_total: float
    reduced_total: float
    predicted_speedup: float
    per_block_dense: np.ndarray
    per_block_reduced: np.ndarray
    per_step_dense: np.ndarray
    per_step_reduced: np.ndarray
    attention_share: float
    components_dense: dict = field(default_factory=dict)
    components_reduced: dict = field(default_factory=dict)
    matchings: int = 0
    batch: int = 2
    cache_steps: int = 1
    #: ``[B, S]`` FLOPs of every (block, step) cell with the schedule (for step caches that skip blocks:
    #: ``benchmarks/quality/caches.py``); not written by :meth:`to_dict`.
    per_cell_reduced: np.ndarray | None = None

    @property
    def num_blocks(self) -> int:
        return int(self.per_block_dense.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.per_step_dense.shape[0])

    @property
    def saved_fraction(self) -> float:
        """Fraction of the dense FLOPs the schedule removes (negative if overheads win)."""
        return 1.0 - self.reduced_total / self.dense_total

    def to_dict(self) -> dict:
        """Plain JSON-ready data (lists and floats)."""
        return {
            "dense_total": self.dense_total,
            "reduced_total": self.reduced_total,
            "predicted_speedup": self.predicted_speedup,
            "per_block_dense": self.per_block_dense.tolist(),
            "per_block_reduced": self.per_block_reduced.tolist(),
            "per_step_dense": self.per_step_dense.tolist(),
            "per_step_reduced": self.per_step_reduced.tolist(),
            "attention_share": self.attention_share,
            "components_dense": dict(self.components_dense),
            "components_reduced": dict(self.components_reduced),
            "matchings": self.matchings,
            "batch": self.batch,
            "cache_steps": self.cache_steps,
        }


# --------------------------------------------------------------------------------------------------
# Core: vectorised per-cell FLOPs
# --------------------------------------------------------------------------------------------------


def _dense_block(sh: _Shape) -> dict:
    """FLOPs of every block for one sample, dense: name -> ``[B]``."""
    s = sh.self_tokens
    return {
        "projections": s * sh.proj_per_token,
        "attention": 2 * 2 * sh.num_heads * s * s * sh.head_dim,
        "mlp": sh.fixed.copy(),
        "matching": np.zeros(sh.num_blocks),
        "gather": np.zeros(sh.num_blocks),
    }


def _matching_cost(sh: _Shape, nd: int) -> float:
    """FLOPs of one matching of one feature (one sample): similarities of every source to every destination."""
    n, c = sh.n, sh.c
    ns = n - nd
    return 2.0 * ns * nd * c + 3.0 * ns * nd + 2.0 * n * c


def _counts(rate: np.ndarray, sh: _Shape, ceiling: float, feature: str) -> np.ndarray:
    """``floor(rate * N)`` after checking the rates (finite, in [0, ceiling])."""
    if not np.all(np.isfinite(rate)):
        raise ScheduleFormatError(f"rates.{feature} holds NaN or inf; rates must be finite numbers in [0, 1)")
    if rate.size and float(rate.min()) < 0.0:
        b, k = np.unravel_index(int(np.argmin(rate)), rate.shape)
        raise ScheduleFormatError(f"rates.{feature}[{b}][{k}] = {rate[b, k]:g} is negative; rates are in [0, 1)")
    if rate.size and float(rate.max()) > ceiling + 1e-12:
        b, k = np.unravel_index(int(np.argmax(rate)), rate.shape)
        raise ScheduleMismatchError(
            f"rates.{feature}[{b}][{k}] = {rate[b, k]:g} exceeds the ceiling {ceiling:.4f} (sources / video "
            f"tokens) of the token grid {sh.grid}; lower the rate (asymrnr never clamps rates silently)"
        )
    return np.floor(rate * sh.n).astype(np.int64)


def _window_first_reduced(active: np.ndarray, cache_steps: int) -> np.ndarray:
    """``[B, S]`` bool: the first step of each cache window at which ``active`` holds (one matching there)."""
    b, s = active.shape
    cs = max(1, int(cache_steps))
    if cs == 1:
        return active.copy()
    pad = (-s) % cs
    a = np.pad(active, ((0, 0), (0, pad)), constant_values=False).reshape(b, -1, cs)
    before = np.cumsum(a, axis=2) - a  # number of active steps earlier in the window
    first = a & (before == 0)
    return first.reshape(b, -1)[:, :s]


def _as_table(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    if value is None:
        return np.zeros(shape)
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(shape, float(arr))
    if arr.shape != shape:
        raise ScheduleMismatchError(
            f"rates {name} have shape {arr.shape}, expected [num_blocks, num_steps] = {list(shape)}"
        )
    return arr


def rates_flops(
    model: Any,
    q: Any = None,
    kv: Any = None,
    h: Any = None,
    cache_steps: int = 4,
    batch: int = 2,
    *,
    stride=(2, 2, 2),
    num_steps: int | None = None,
) -> FlopsReport:
    """FLOPs of a generation whose rates are ``[B, S]`` arrays (vectorised; the planner's inner loop).

    Args:
        model: a ModelDescription (or its dict): blocks, heads, head_dim, latent_grid, text_len, ffn_dim.
        q, kv, h: ``[num_blocks, num_steps]`` rates (fraction of all video tokens dropped), a scalar, or
            ``None`` (zeros). ``h`` and ``q``/``kv`` must not both be non-zero in one cell.
        cache_steps: matching-cache window in steps (``s`` of the paper; 1 = match at every step).
        batch: samples per transformer call (2 with classifier-free guidance).
        stride: destination window stride (sets ``Nd`` and the rate ceiling).
        num_steps: needed only when every rate argument is a scalar or ``None``.
    """
    sh = _shape(model)
    steps = num_steps
    for arr in (q, kv, h):
        if arr is not None and np.ndim(arr) == 2:
            steps = int(np.shape(arr)[1])
            break
    if steps is None:
        raise ValueError("rates_flops: pass [num_blocks, num_steps] arrays or num_steps=")
    shape = (sh.num_blocks, steps)
    tables = {"q": _as_table(q, shape, "q"), "kv": _as_table(kv, shape, "kv"), "h": _as_table(h, shape, "h")}
    nd = num_windows(sh.grid, stride)
    ceiling = vocab.rate_ceiling(sh.grid, stride)
    counts = {f: _counts(t, sh, ceiling, f) for f, t in tables.items()}
    both = (counts["h"] > 0) & ((counts["q"] > 0) | (counts["kv"] > 0))
    if both.any():
        b, k = np.argwhere(both)[0]
        raise ScheduleFormatError(
            f"block {b}, step {k}: h and q/kv are both non-zero; a cell runs either SymRnR (h) or AsymRnR "
            "(q/kv), not both: set one of them to 0"
        )
    cs = max(1, int(cache_steps))
    match = {f: _window_first_reduced(counts[f] > 0, cs) for f in RATE_FEATURES}
    cells = _cell_flops(sh, counts, match, nd)
    return _report(sh, cells, batch=batch, cache_steps=cs, matchings=int(sum(m.sum() for m in match.values())))


def _cell_flops(sh: _Shape, counts: Mapping[str, np.ndarray], match: Mapping[str, np.ndarray], nd: int) -> dict:
    """Per-sample FLOPs of every (block, step) cell, by component: dict name -> [B, S] float64."""
    c, n = float(sh.c), float(sh.n)
    s = sh.self_tokens[:, None]
    nq = counts["q"].astype(np.float64)
    nkv = counts["kv"].astype(np.float64)
    nh = counts["h"].astype(np.float64)
    s_h = s - nh  # sequence seen by projections and attention (s when h is 0)
    sq = s_h - nq
    skv = s_h - nkv
    proj = s_h * sh.proj_per_token[:, None]
    attn = 2 * 2 * sh.num_heads * sq * skv * sh.head_dim
    mlp = np.broadcast_to(sh.fixed[:, None], nq.shape).copy()
    mcost = _matching_cost(sh, nd)
    matching = mcost * sum(match[f].astype(np.float64) for f in RATE_FEATURES)
    gather = (
        np.where(nq > 0, (n - nq) * c + n * c, 0.0)
        + np.where(nkv > 0, 2 * (n - nkv) * c, 0.0)
        + np.where(nh > 0, (n - nh) * c + n * c, 0.0)
    )
    return {"projections": proj, "attention": attn, "mlp": mlp, "matching": matching, "gather": gather}


def _report(sh: _Shape, cells: dict, *, batch: int, cache_steps: int, matchings: int) -> FlopsReport:
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    bsz = float(batch)
    num_blocks, num_steps = cells["attention"].shape
    dense_block = {k: v * bsz for k, v in _dense_block(sh).items()}  # name -> [B]
    dense_cell = sum(dense_block.values())  # [B]
    reduced = sum(cells[k] for k in COMPONENTS) * bsz  # [B, S]
    dense_total = float(dense_cell.sum()) * num_steps
    reduced_total = float(reduced.sum())
    return FlopsReport(
        dense_total=dense_total,
        reduced_total=reduced_total,
        predicted_speedup=float(dense_total / reduced_total),
        per_block_dense=dense_cell * num_steps,
        per_block_reduced=reduced.sum(axis=1),
        per_step_dense=np.full(num_steps, float(dense_cell.sum())),
        per_step_reduced=reduced.sum(axis=0),
        attention_share=float(dense_block["attention"].sum() / dense_cell.sum()),
        components_dense={k: float(v.sum() * num_steps) for k, v in dense_block.items()},
        components_reduced={k: float(cells[k].sum() * bsz) for k in COMPONENTS},
        matchings=matchings,
        batch=int(batch),
        cache_steps=cache_steps,
        per_cell_reduced=reduced,
    )


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def schedule_flops(schedule: Any, batch: int = 2) -> FlopsReport:
    """FLOPs of one generation (``schedule.sampler.num_steps`` calls, ``batch`` samples) with ``schedule``.

    Counted at the schedule's own shape (``model.latent_grid``, ``model.text_len``).
    """
    matching = schedule.matching
    rates = schedule.rates
    return rates_flops(
        schedule.model,
        q=np.asarray(rates["q"], dtype=np.float64),
        kv=np.asarray(rates["kv"], dtype=np.float64),
        h=np.asarray(rates["h"], dtype=np.float64),
        cache_steps=matching.cache_steps,
        batch=batch,
        stride=tuple(matching.stride),
    )


def dense_generation_flops(model: Any, num_steps: int, batch: int = 2) -> float:
    """FLOPs of a whole dense generation: ``num_steps`` transformer calls of ``batch`` samples."""
    return transformer_flops(model, batch=batch) * int(num_steps)


def transformer_flops(
    model: Any,
    *,
    batch: int = 2,
    rates: Mapping[str, Any] | None = None,
    step: int | None = None,
    cache_steps: int = 4,
    stride=(2, 2, 2),
    recompute: bool | None = None,
) -> float:
    """FLOPs of one transformer call (all blocks, ``batch`` samples).

    Args:
        rates: ``None`` (dense) or feature -> rates of this call: a scalar, a ``[num_blocks]`` array, or a
            ``[num_blocks, num_steps]`` table together with ``step``.
        step: 0-based step of this call (selects the column of 2-D rates; sets ``recompute``).
        recompute: whether the matchings are computed in this call (default: ``step % cache_steps == 0``,
            or ``True`` without a step). A call that reuses the cache pays no matching.
    """
    sh = _shape(model)
    if rates is None:
        return float(sum(v.sum() for v in _dense_block(sh).values()) * int(batch))
    unknown = set(rates) - set(RATE_FEATURES)
    if unknown:
        raise ValueError(f"unknown rate feature(s) {sorted(unknown)}; use {', '.join(RATE_FEATURES)}")
    cols = {}
    for f in RATE_FEATURES:
        v = rates.get(f)
        arr = np.zeros(sh.num_blocks) if v is None else np.asarray(v, dtype=np.float64)
        if arr.ndim == 2:
            if step is None:
                raise ValueError(f"rates[{f!r}] is a [blocks, steps] table: pass step= to pick this call's column")
            arr = arr[:, int(step)]
        cols[f] = np.broadcast_to(arr, (sh.num_blocks,)).reshape(sh.num_blocks, 1)
    if recompute is None:
        recompute = True if step is None else vocab.is_recompute_step(step, cache_steps)
    report = rates_flops(model, cols["q"], cols["kv"], cols["h"], cache_steps=1, batch=batch, stride=stride)
    total = report.reduced_total
    if not recompute:
        total -= report.components_reduced["matching"]
    return float(total)


__all__ = [
    "COMPONENTS",
    "FlopsReport",
    "num_windows",
    "rate_ceiling",
    "model_description",
    "rates_flops",
    "schedule_flops",
    "transformer_flops",
    "dense_generation_flops",
]
