"""The profiler's statistics file: kept as the historical import path.

The format lives in :mod:`asymrnr.formats.stats` (``spec``, ``writer``, ``reader``; documented in
``docs/stats-format.md``). ``from asymrnr.profiler.stats_format import StatsWriter, RunStats, StatsData,
load_stats, describe_stats, QUANTILE_LEVELS, ...`` keeps working.
"""

from __future__ import annotations

from ..formats.stats.reader import READERS, describe_stats, load_stats
from ..formats.stats.spec import *  # noqa: F403
from ..formats.stats.spec import __all__ as _spec_all
from ..formats.stats.writer import StatsWriter

__all__ = [*_spec_all, "StatsWriter", "load_stats", "describe_stats", "READERS"]
