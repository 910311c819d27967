"""Profiler: records token-similarity and norm statistics of every attention block into HDF5."""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("load_stats", "StatsData", "StatsWriter", "RunStats"):
        from . import stats_format

        return getattr(stats_format, name)
    if name in ("profile", "Profiler"):
        from . import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'asymrnr.profiler' has no attribute {name!r}")
