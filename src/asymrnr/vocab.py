"""The words every part of asymrnr shares, defined once (standard library only).

Features, metrics and matching settings; the token-window arithmetic behind the rate ceiling; the
matching-cache window rule; the rule that one (block, step) cell runs either SymRnR or AsymRnR.
"""

from __future__ import annotations

import math
from typing import Iterable

#: Features a schedule reduces: ``q`` (queries), ``kv`` (keys and values, one matching on V) and ``h``
#: (the attention input, SymRnR / ToMe).
SCHEDULE_FEATURES: tuple[str, ...] = ("q", "kv", "h")
#: Features the profiler records: the attention input and Q, K, V after norm and RoPE.
STAT_FEATURES: tuple[str, ...] = ("h", "q", "k", "v")
#: The statistics feature whose similarity ranks each schedule feature (K and V share V's matching).
SOURCE_FEATURE: dict[str, str] = {"q": "q", "kv": "v", "h": "h"}
#: The partition each recorded feature is matched with at run time.
PARTITION_OF: dict[str, str] = {"h": "h", "q": "q", "k": "kv", "v": "kv", "kv": "kv"}

METRICS: tuple[str, ...] = ("euclidean", "cosine", "dot", "random")
#: Metrics the profiler records.
STAT_METRICS: tuple[str, ...] = ("euclidean", "cosine")
REDUCE_OPS: tuple[str, ...] = ("discard", "mean")
#: ``head``: every head matched on its own (the paper's reference); ``joint``: all heads together.
GRANULARITIES: tuple[str, ...] = ("head", "joint")
#: ``window``: the partition is redrawn for every matching-cache window (the paper's random destination
#: choice, seeded); ``fixed``: one partition per (block, feature) for the whole generation.
PARTITION_MODES: tuple[str, ...] = ("window", "fixed")
#: Where the text tokens sit in a self-attention call's sequence.
TEXT_LAYOUTS: tuple[str, ...] = ("first", "last", "none")

DEFAULT_STRIDE: tuple[int, int, int] = (2, 2, 2)
DEFAULT_CACHE_STEPS = 4
DEFAULT_METRIC = "euclidean"
DEFAULT_GRANULARITY = "head"
DEFAULT_PARTITION_MODE = "window"


def window_counts(grid: Iterable[int], stride: Iterable[int]) -> tuple[int, int, int]:
    """Full windows per axis: ``g // s`` (the leftover edge slab holds sources only, as in the paper)."""
    return tuple(int(g) // int(s) for g, s in zip(grid, stride))  # type: ignore[return-value]


def num_destinations(grid: Iterable[int], stride: Iterable[int]) -> int:
    """Destination tokens: one per *full* stride window (paper Table 6: 1,980 of 17,550 = 11.28 % at 13x30x45, stride (2,2,2))."""
    return math.prod(window_counts(grid, stride))


def rate_ceiling(grid: Iterable[int], stride: Iterable[int]) -> float:
    """The largest rate the matching can realise, ``N_src / N`` (0.887 on a 13x30x45 grid at (2,2,2)).

    A grid smaller than one window on some axis has no destination and a ceiling of 0.
    """
    grid = tuple(int(g) for g in grid)
    n = math.prod(grid)
    nd = num_destinations(grid, stride)
    return 0.0 if nd == 0 else (n - nd) / n


def cache_window(step: int, cache_steps: int) -> int:
    """Matching-cache window of a 0-based denoising step (paper Eq. 4): steps ``w*s .. w*s+s-1``."""
    return int(step) // max(1, int(cache_steps))


def is_recompute_step(step: int, cache_steps: int) -> bool:
    """Whether the matching of a cell that is reduced at every step is recomputed at ``step``."""
    return int(step) % max(1, int(cache_steps)) == 0


def exclusive_violation(h: float, q: float, kv: float) -> str | None:
    """The name of the AsymRnR feature that clashes with a non-zero ``h`` in one cell, or ``None``.

    A (block, step) cell runs either SymRnR (``h``) or AsymRnR (``q``/``kv``), not both (paper Sec. 4.3
    combines them only in parallel, never on the same cell).
    """
    if h > 0.0:
        if q > 0.0:
            return "q"
        if kv > 0.0:
            return "kv"
    return None


__all__ = [
    "SCHEDULE_FEATURES", "STAT_FEATURES", "SOURCE_FEATURE", "PARTITION_OF", "METRICS", "STAT_METRICS",
    "REDUCE_OPS", "GRANULARITIES", "PARTITION_MODES", "TEXT_LAYOUTS", "DEFAULT_STRIDE", "DEFAULT_CACHE_STEPS",
    "DEFAULT_METRIC", "DEFAULT_GRANULARITY", "DEFAULT_PARTITION_MODE", "window_counts", "num_destinations",
    "rate_ceiling", "cache_window", "is_recompute_step", "exclusive_violation",
]
