"""Profiling prompts on one process or many, with nothing lost when a process fails.

Every rank (one process of ``torchrun``, or the only one) profiles its share of the prompts, one prompt
per round (:func:`asymrnr.distributed.gather_rounds`); each prompt is profiled into a temporary file of its
own rank and read back as one run (:class:`~asymrnr.formats.stats.spec.RunStats`, about 200 KiB), which
travels to rank 0. Rank 0 (:class:`RunCollector`) appends every run it receives to a *partial* file as soon
as it arrives (crash-safe: the stats writer replaces the file atomically per run), then writes the final
file in prompt order. When a rank fails or the job is interrupted, the partial file keeps every run
profiled so far; a re-run with ``--resume`` reads it and profiles only the prompts that are missing.

The statistics of a run depend on its prompt and seed only (partitions are seeded, the profiler's state is
reset per generation), so they equal a single-process calibration's: exactly on the CPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..distributed import RankContext, all_gather_object, gather_rounds
from ..errors import AsymRnRError
from ..formats.stats.merge import FileSettings, header_differences, run_key, run_of, write_runs
from ..formats.stats.spec import RunStats, StatsData

logger = logging.getLogger(__name__)


def partial_path(path: str | Path) -> Path:
    """Where the runs of an unfinished ``path`` are kept: ``stats.h5`` -> ``stats.partial.h5``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.partial{p.suffix or '.h5'}")


@dataclass
class RunCollector:
    """Rank 0's side: the runs of earlier files to keep, the runs received, and the partial file.

    Args:
        runs: the job's ``(prompt, seed)`` in prompt order.
        sources: loaded statistics files whose matching runs are kept (first file first), e.g. the old
            ``stats.h5`` and the partial file of an interrupted run when resuming.
        partial: the partial file received runs are appended to (``None``: keep them in memory only).
        append_partial: add to an existing partial file (resuming) instead of starting it anew.
    """

    runs: list[tuple[str, int]]
    sources: Sequence[StatsData] = ()
    partial: Path | None = None
    append_partial: bool = False
    kept: dict[int, tuple[StatsData, int]] = field(default_factory=dict)
    received: dict[int, RunStats] = field(default_factory=dict)
    settings: FileSettings | None = None
    _writer: Any = None

    def __post_init__(self) -> None:
        have: dict[tuple[str, int], tuple[StatsData, int]] = {}
        for stats in self.sources:
            if self.settings is None:
                self.settings = FileSettings.of(stats)
            for i in range(stats.num_runs):
                have.setdefault(run_key(stats.prompts[i], stats.seeds[i]), (stats, i))
        for j, key in enumerate(self.runs):
            if run_key(*key) in have:
                self.kept[j] = have[run_key(*key)]

    @property
    def todo(self) -> list[int]:
        """Prompts (indices into ``runs``) still to profile."""
        return [j for j in range(len(self.runs)) if j not in self.kept and j not in self.received]

    def receive(self, j: int, payload: tuple[FileSettings, RunStats]) -> None:
        """A run arrived (from any rank): check it fits the others, keep it, append it to the partial file."""
        settings, run = payload
        if self.settings is None:
            self.settings = settings
        else:
            diffs = header_differences(self.settings.header, settings.header)
            if diffs:
                key, a, b = diffs[0]
                raise AsymRnRError(
                    f"the run of prompt {j} was profiled with {key} = {b!r:.120}, the others with {a!r:.120}; every "
                    "rank must run the same asymrnr, diffusers and model files"
                )
        self.received[j] = run
        if self.partial is not None:
            if self._writer is None:
                mode = "a" if self.append_partial and self.partial.exists() else "w"
                self._writer = self.settings.writer(self.partial, mode)
            self._writer.write_run(run)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def ordered(self) -> list[RunStats]:
        """Every run of the job in prompt order (all must be there)."""
        out = []
        for j in range(len(self.runs)):
            if j in self.kept:
                stats, i = self.kept[j]
                out.append(run_of(stats, i))
            else:
                out.append(self.received[j])
        return out

    def write(self, path: Path) -> None:
        """Write the complete set into ``path``, in prompt order."""
        write_runs(path, self.settings, self.ordered())

    def missing(self) -> list[int]:
        return self.todo


def profile_one(pipe: Any, prompt: str, seed: int, settings: dict, folder: Path) -> tuple[FileSettings, RunStats]:
    """Profile one generation (``pipe(prompt=prompt, **settings)`` with a generator seeded by ``seed``) into a
    temporary file in ``folder`` and return it as one run."""
    import torch

    import asymrnr

    from ..formats.stats.reader import load_stats

    fd, name = tempfile.mkstemp(prefix="run-", suffix=".h5", dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        with asymrnr.profile(pipe, path, mode="w"):
            generator = torch.Generator(device="cpu").manual_seed(seed)
            # by keyword: image-to-video pipelines take the image first
            pipe(prompt=prompt, generator=generator, output_type="latent", **settings)
        stats = load_stats(path)
    finally:
        path.unlink(missing_ok=True)
    return FileSettings.of(stats), run_of(stats, 0)


def agree(ctx: RankContext, error: BaseException | None, what: str) -> None:
    """A step every rank takes together (loading the model): raise on every rank if it failed on any."""
    message = None if error is None else f"{type(error).__name__}: {error}"
    failed = [(r, m) for r, m in enumerate(all_gather_object(message, ctx)) if m is not None]
    if error is not None:
        raise error
    if failed:
        raise AsymRnRError("; ".join(f"rank {r} failed {what}: {m}" for r, m in failed))


def profile_prompts(ctx: RankContext, pipe: Any, job_runs: Sequence[tuple[str, int]],
                    call_kwargs: Callable[[int], dict], todo: Sequence[int], receive: Callable[[int, Any], None], *,
                    on_round: Callable[[int], None] | None = None) -> list[int]:
    """Every rank: profile its share of ``todo`` (indices into ``job_runs``) with ``pipe``, round by round,
    prompt ``j`` called with ``call_kwargs(j)``; rank 0's ``receive(j, payload)`` gets every run. Returns the
    indices done.

    Raises :class:`asymrnr.distributed.RankFailed` when a rank failed (see
    :func:`~asymrnr.distributed.gather_rounds`)."""
    with tempfile.TemporaryDirectory(prefix=f"asymrnr-rank{ctx.rank}-") as folder:
        def work(j: int):
            prompt, seed = job_runs[j]
            return profile_one(pipe, prompt, seed, call_kwargs(j), Path(folder))

        return gather_rounds(ctx, list(todo), work, receive, on_round=on_round)


def describe_missing(runs: Sequence[tuple[str, int]], missing: Sequence[int], limit: int = 8) -> str:
    """``prompt 3 (seed 3): "a cat ...", ...`` for a message."""
    parts = []
    for j in missing[:limit]:
        prompt, seed = runs[j]
        short = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        parts.append(f"prompt {j} (seed {seed}): {short!r}")
    more = f", and {len(missing) - limit} more" if len(missing) > limit else ""
    return ", ".join(parts) + more


__all__ = ["partial_path", "RunCollector", "profile_one", "profile_prompts", "agree", "describe_missing"]
