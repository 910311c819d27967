"""Runs of statistics files, one at a time: take them out of a file, check that files agree, write them
into a new file, and merge several files into one (``asymrnr merge``).

Statistics made on different machines (or by the ranks of one sharded calibration) belong in one file only
when they describe the same thing: the model, the generation settings, the matching settings (the
partitions the similarities were measured on), the profiled schedule, the CFG branches, features and
metrics, and the shared axes (quantile levels, rate levels, norm bins). :func:`header_differences` names
every key that differs, with both values. A run is identified by its prompt and seed: the same prompt and
seed on the same model and settings is the same generation, kept once (the first one met).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import StatsFormatError
from .spec import RunStats, StatsData, differences

logger = logging.getLogger(__name__)

#: What must agree between files whose runs go into one file (the shared axes are compared too).
HEADER_KEYS = ("model", "generation", "matching", "profiled_schedule", "branches", "features", "metrics")
_AXES = ("quantile_levels", "rate_levels", "norm_bin_edges")


def header_of(stats: StatsData) -> dict[str, Any]:
    """The settings of a statistics file that must agree with another's before their runs mix (plain
    JSON-like values: tuples as lists), plus the shared axes as lists."""
    out = {}
    for key in HEADER_KEYS:
        value = getattr(stats, key)
        out[key] = list(value) if isinstance(value, tuple) else value
    for key in _AXES:
        out[key] = np.asarray(getattr(stats, key), dtype=np.float64).tolist()
    return out


def header_differences(a: StatsData | dict, b: StatsData | dict) -> list[tuple[str, Any, Any]]:
    """Every key (dotted path, e.g. ``generation.guidance_scale``) where two files' settings differ, with
    both values; empty when their runs may go into one file."""
    ha = a if isinstance(a, dict) else header_of(a)
    hb = b if isinstance(b, dict) else header_of(b)
    diffs: list[tuple[str, Any, Any]] = []
    for key in (*HEADER_KEYS, *_AXES):
        diffs += differences(ha.get(key), hb.get(key), key)
    return diffs


def run_of(stats: StatsData, i: int) -> RunStats:
    """Run ``i`` of ``stats`` as the writer takes it."""
    return RunStats(
        prompt=stats.prompts[i],
        seed=int(stats.seeds[i]),
        timesteps=stats.timesteps[i],
        sim_mean={m: a[i] for m, a in stats.sim_mean.items()},
        sim_quantiles={m: a[i] for m, a in stats.sim_quantiles.items()},
        sim_rate_curve={m: a[i] for m, a in stats.sim_rate_curve.items()},
        norm_quantiles=stats.norm_quantiles[i],
        norm_hist=stats.norm_hist[i],
        stability_same_dst=stats.stability_same_dst[i],
        stability_corr=stats.stability_corr[i],
    )


def run_key(prompt: str, seed: int) -> tuple[str, int]:
    """What identifies a run: its prompt and seed."""
    return (str(prompt), int(seed))


@dataclasses.dataclass(frozen=True)
class FileSettings:
    """The settings a new statistics file is written with (taken from a loaded file, or sent by a rank)."""

    model: dict
    generation: dict
    matching: dict
    profiled_schedule: str | None
    branches: tuple[str, ...]
    tool_version: str
    header: dict  # header_of(...) of the file it came from

    @classmethod
    def of(cls, stats: StatsData) -> "FileSettings":
        return cls(stats.model, stats.generation, stats.matching, stats.profiled_schedule, tuple(stats.branches),
                   stats.tool_version, header_of(stats))

    def writer(self, path: str | os.PathLike, mode: str = "w"):
        from .writer import StatsWriter

        return StatsWriter(path, model=self.model, generation=self.generation, matching=self.matching,
                           branches=self.branches, profiled_schedule=self.profiled_schedule,
                           tool_version=self.tool_version, mode=mode)


def write_runs(path: str | os.PathLike, settings: FileSettings, runs: Iterable[RunStats]) -> int:
    """Write ``runs`` into a new file at ``path`` (replaced if present) with ``settings``; returns the count."""
    count = 0
    writer = settings.writer(path, "w")
    try:
        for run in runs:
            writer.write_run(run)
            count += 1
    finally:
        writer.close()
    return count


@dataclasses.dataclass
class MergeResult:
    """What :func:`merge_stats` wrote: the runs kept from each input and the duplicates left out."""

    path: Path
    num_runs: int
    kept: list[int]  # per input, runs kept
    duplicates: list[tuple[str, int, str]]  # (prompt, seed, input) of every run left out


def merge_stats(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> MergeResult:
    """Merge statistics files into ``output``: runs in input order, each (prompt, seed) once.

    Refuses (``StatsFormatError`` naming the key, both values and both files) when the inputs differ in
    model, generation settings, matching settings, profiled schedule, branches, features, metrics or axes. A
    differing ``tool_version`` only logs a warning (the output keeps the first input's). The output is
    written to a new temporary file beside it and moved into place once complete.
    """
    from ..._io import exclusive_temp
    from .reader import load_stats

    if not inputs:
        raise StatsFormatError("merge needs at least one statistics file")
    loaded = [load_stats(p) for p in inputs]
    first = loaded[0]
    for path, stats in zip(inputs[1:], loaded[1:]):
        diffs = header_differences(first, stats)
        if diffs:
            listed = "; ".join(f"{k} differs ({inputs[0]}: {a!r:.120}, {path}: {b!r:.120})" for k, a, b in diffs[:5])
            more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
            raise StatsFormatError(
                f"cannot merge: {listed}{more}. Statistics made with different models or settings must not be "
                "mixed; merge only files profiled with the same model, generation and matching settings"
            )
        if stats.tool_version != first.tool_version:
            logger.warning("%s was written by asymrnr %s, %s by %s; the merged file records %s", inputs[0],
                           first.tool_version, path, stats.tool_version, first.tool_version)
    seen: set[tuple[str, int]] = set()
    picked: list[RunStats] = []
    kept: list[int] = []
    duplicates: list[tuple[str, int, str]] = []
    for path, stats in zip(inputs, loaded):
        count = 0
        for i in range(stats.num_runs):
            key = run_key(stats.prompts[i], stats.seeds[i])
            if key in seen:
                duplicates.append((key[0], key[1], str(path)))
                continue
            seen.add(key)
            picked.append(run_of(stats, i))
            count += 1
        kept.append(count)
    out = Path(output)
    tmp = exclusive_temp(out, ".partial")
    try:
        write_runs(tmp, FileSettings.of(first), picked)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return MergeResult(out, len(picked), kept, duplicates)


__all__ = ["HEADER_KEYS", "header_of", "header_differences", "run_of", "run_key", "FileSettings", "write_runs",
           "MergeResult", "merge_stats"]
