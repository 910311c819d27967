"""The profiler's statistics file (HDF5). The only module in asymrnr that imports h5py.

One file holds the statistics of one or more generations ("runs") made with the same model,
generation settings (apart from prompt and seed), matching settings and branches. The layout,
semantics and versioning policy are documented in ``docs/stats-format.md``; this module is the
single source of the group, dataset and attribute names (the module constants below).

Writing (``StatsWriter``) appends one run at a time along a resizable run axis. Each ``write_run``
appends the run to every dataset, flushes, and only then raises the root attribute
``num_complete_runs`` and flushes again. It does so on a working copy (``<path>.tmp``) that then
atomically replaces the file, so whenever the profiler dies the file at ``path`` is a cleanly closed
HDF5 file whose complete runs all load. The reader trusts ``num_complete_runs`` and ignores any
partial tail beyond it (which only an interrupted in-place writer would leave).

Reading (``load_stats``) returns plain numpy arrays in a ``StatsData``; every problem with the file
(missing, not HDF5, truncated, corrupt, not ours, unknown version, incomplete) raises
``asymrnr.errors.StatsFormatError`` with a message naming the path and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StatsFormatError

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Format constants (the contract, docs/architecture.md)
# --------------------------------------------------------------------------------------------------

STATS_FORMAT_NAME = "asymrnr-stats"
STATS_FORMAT_VERSION = 1
#: Versions of the stats format this asymrnr can read.
SUPPORTED_READ_VERSIONS: tuple[int, ...] = (1,)

STAT_FEATURES: tuple[str, ...] = ("h", "q", "k", "v")
STAT_METRICS: tuple[str, ...] = ("euclidean", "cosine")
QUANTILE_LEVELS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1.0)
RATE_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
NORM_BIN_EDGES: np.ndarray = np.logspace(-3, 4, 71)  # 70 log-spaced bins shared by all cells
NORM_BIN_EDGES.setflags(write=False)

#: Branch names: with classifier-free guidance the transformer sees both, without it only "cond".
BRANCHES_CFG: tuple[str, ...] = ("cond", "uncond")
BRANCHES_NO_CFG: tuple[str, ...] = ("cond",)

# Root attributes.
ATTR_FORMAT = "format"
ATTR_VERSION = "version"
ATTR_MODEL = "model"  # JSON
ATTR_GENERATION = "generation"  # JSON
ATTR_MATCHING = "matching"  # JSON
ATTR_TOOL_VERSION = "tool_version"  # JSON
ATTR_PROFILED_SCHEDULE = "profiled_schedule"  # JSON string, "" when none
ATTR_BRANCHES = "branches"  # JSON list
ATTR_FEATURES = "features"  # JSON list
ATTR_METRICS = "metrics"  # JSON list
ATTR_NUM_COMPLETE_RUNS = "num_complete_runs"  # int, written last by each write_run
#: Per-dataset attribute: comma-separated axis names, e.g. "run,branch,step,block,feature".
ATTR_AXES = "axes"

JSON_ATTRS: tuple[str, ...] = (
    ATTR_MODEL,
    ATTR_GENERATION,
    ATTR_MATCHING,
    ATTR_TOOL_VERSION,
    ATTR_PROFILED_SCHEDULE,
    ATTR_BRANCHES,
    ATTR_FEATURES,
    ATTR_METRICS,
)

# Shared axes (root datasets).
DS_QUANTILE_LEVELS = "quantile_levels"
DS_RATE_LEVELS = "rate_levels"
DS_NORM_BIN_EDGES = "norm_bin_edges"

# Per-run datasets live in this group.
GROUP_RUNS = "runs"
DS_PROMPTS = "prompts"
DS_SEEDS = "seeds"
DS_TIMESTEPS = "timesteps"
DS_SIM_MEAN = "sim_mean"  # group: one dataset per metric
DS_SIM_QUANTILES = "sim_quantiles"  # group: one dataset per metric
DS_SIM_RATE_CURVE = "sim_rate_curve"  # group: one dataset per metric
DS_NORM_QUANTILES = "norm_quantiles"
DS_NORM_HIST = "norm_hist"
DS_STABILITY_SAME_DST = "stability_same_dst"
DS_STABILITY_CORR = "stability_corr"

#: Suffix of the working copy a write goes to before it atomically replaces the file.
TMP_SUFFIX = ".tmp"
#: Root attributes that must be equal (after dropping per-run generation keys) to append to a file.
APPEND_MUST_MATCH: tuple[str, ...] = (
    ATTR_MODEL,
    ATTR_GENERATION,
    ATTR_MATCHING,
    ATTR_PROFILED_SCHEDULE,
    ATTR_BRANCHES,
    ATTR_FEATURES,
    ATTR_METRICS,
)

#: Keys of the ``generation`` dict that vary per run; they are stored per run, not in the attribute.
GENERATION_PER_RUN_KEYS: tuple[str, ...] = ("prompt", "prompts", "seed", "seeds")

CELL_AXES: tuple[str, ...] = ("branch", "step", "block", "feature")
STATS_DTYPE = np.dtype(np.float32)
COUNTS_DTYPE = np.dtype(np.int64)


@dataclass(frozen=True)
class _ArraySpec:
    name: str  # RunStats / StatsData field, and dataset (or group) name under GROUP_RUNS
    per_metric: bool
    extra_axis: str | None  # trailing axis after the cell axes
    dtype: np.dtype


_ARRAYS: tuple[_ArraySpec, ...] = (
    _ArraySpec(DS_SIM_MEAN, True, None, STATS_DTYPE),
    _ArraySpec(DS_SIM_QUANTILES, True, "quantile", STATS_DTYPE),
    _ArraySpec(DS_SIM_RATE_CURVE, True, "rate", STATS_DTYPE),
    _ArraySpec(DS_NORM_QUANTILES, False, "quantile", STATS_DTYPE),
    _ArraySpec(DS_NORM_HIST, False, "norm_bin", COUNTS_DTYPE),
    _ArraySpec(DS_STABILITY_SAME_DST, False, None, STATS_DTYPE),
    _ArraySpec(DS_STABILITY_CORR, False, None, STATS_DTYPE),
)

_CHUNK_TARGET_BYTES = 1 << 20  # HDF5's default chunk cache size


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    """Statistics of one generation; arrays indexed [branch, step, block, feature, ...]."""

    prompt: str
    seed: int
    timesteps: np.ndarray  # [S]
    sim_mean: dict[str, np.ndarray]  # metric -> [Br, S, B, F]
    sim_quantiles: dict[str, np.ndarray]  # metric -> [Br, S, B, F, Q]
    sim_rate_curve: dict[str, np.ndarray]  # metric -> [Br, S, B, F, 19] (NaN past the ceiling)
    norm_quantiles: np.ndarray  # [Br, S, B, F, Q]
    norm_hist: np.ndarray  # [Br, S, B, F, 70] counts
    stability_same_dst: np.ndarray  # [Br, S, B, F], NaN at step 0
    stability_corr: np.ndarray  # [Br, S, B, F], NaN at step 0


@dataclass
class StatsData:
    """What load_stats returns; arrays indexed [run, branch, step, block, feature, ...]."""

    format_version: int
    tool_version: str
    model: dict  # ModelDescription.to_dict()
    generation: dict  # height, width, num_frames, num_steps, guidance_scale, scheduler_class, ...
    matching: dict  # stride, seed, granularity (metrics are STAT_METRICS)
    profiled_schedule: str | None  # tag of a schedule active while profiling, else None
    branches: tuple[str, ...]  # ("cond", "uncond") with CFG, ("cond",) without
    features: tuple[str, ...]
    metrics: tuple[str, ...]
    quantile_levels: np.ndarray  # [Q]
    rate_levels: np.ndarray  # [19]
    norm_bin_edges: np.ndarray  # [71]
    prompts: list[str]
    seeds: np.ndarray  # [R]
    timesteps: np.ndarray  # [R, S]
    sim_mean: dict[str, np.ndarray]  # metric -> [R, Br, S, B, F]
    sim_quantiles: dict[str, np.ndarray]  # metric -> [R, Br, S, B, F, Q]
    sim_rate_curve: dict[str, np.ndarray]  # metric -> [R, Br, S, B, F, 19]
    norm_quantiles: np.ndarray  # [R, Br, S, B, F, Q]
    norm_hist: np.ndarray  # [R, Br, S, B, F, 70]
    stability_same_dst: np.ndarray  # [R, Br, S, B, F]
    stability_corr: np.ndarray  # [R, Br, S, B, F]
    #: The file it was loaded from (None when built in memory); not part of the contract's data.
    path: str | None = field(default=None, compare=False)

    @property
    def num_runs(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[1])

    @property
    def num_blocks(self) -> int:
        return int(self.norm_quantiles.shape[3])


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _extra_len(axis: str | None) -> int | None:
    if axis is None:
        return None
    return {"quantile": len(QUANTILE_LEVELS), "rate": len(RATE_LEVELS), "norm_bin": len(NORM_BIN_EDGES) - 1}[
        axis
    ]


def _axes_of(spec: _ArraySpec) -> tuple[str, ...]:
    return CELL_AXES + ((spec.extra_axis,) if spec.extra_axis else ())


def _dataset_paths(spec: _ArraySpec, metrics: Sequence[str]) -> list[tuple[str | None, str]]:
    """(metric or None, dataset path relative to the root) of one per-run array."""
    if spec.per_metric:
        return [(m, f"{GROUP_RUNS}/{spec.name}/{m}") for m in metrics]
    return [(None, f"{GROUP_RUNS}/{spec.name}")]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"value {obj!r} of type {type(obj).__name__} cannot be stored in a stats file")


def _as_plain_dict(value: Any, what: str) -> dict:
    """A JSON-normalized dict (tuples become lists) from a dict, a dataclass or a ``to_dict()`` object."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"StatsWriter {what}= must be a dict (or a dataclass), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), default=_json_default, sort_keys=True))
    except TypeError as exc:
        raise TypeError(f"StatsWriter {what}=: {exc}") from None


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, sort_keys=True)


def _attr_str(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _differences(file_value: Any, new_value: Any, key: str) -> list[tuple[str, Any, Any]]:
    """Keys (dotted paths) where two JSON-normalized values differ, with both values."""
    if isinstance(file_value, dict) and isinstance(new_value, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(file_value) | set(new_value)):
            out += _differences(file_value.get(k, "<missing>"), new_value.get(k, "<missing>"), f"{key}.{k}")
        return out
    if file_value == new_value:
        return []
    if isinstance(file_value, float) and isinstance(new_value, float):
        if math.isnan(file_value) and math.isnan(new_value):
            return []
    return [(key, file_value, new_value)]


def _strip_per_run(generation: dict) -> dict:
    return {k: v for k, v in generation.items() if k not in GENERATION_PER_RUN_KEYS}


def _all_per_run_paths(metrics: Sequence[str]) -> list[str]:
    out = [f"{GROUP_RUNS}/{DS_PROMPTS}", f"{GROUP_RUNS}/{DS_SEEDS}", f"{GROUP_RUNS}/{DS_TIMESTEPS}"]
    for spec in _ARRAYS:
        out += [ds_path for _, ds_path in _dataset_paths(spec, metrics)]
    return out


def _chunks(cell_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape of a per-run dataset whose per-run cell has ``cell_shape``.

    The run axis is always chunked by 1: appending a run then only writes new chunks and never
    rewrites (re-compresses, relocates) a chunk that holds a complete run, which is what keeps the
    complete runs readable when a profiler dies mid-run. [branch, step, ...] cells are further split
    along the step axis so that a chunk stays near 1 MiB (HDF5's default chunk cache).
    """
    if len(cell_shape) < 2:
        return (1, *cell_shape)
    _, steps, *rest = cell_shape
    per_step = itemsize * int(np.prod(rest, dtype=np.int64))
    steps_per_chunk = max(1, min(steps, _CHUNK_TARGET_BYTES // max(per_step, 1)))
    return (1, 1, steps_per_chunk, *rest)


def _describe_shape_mismatch(got: tuple[int, ...], expected: tuple[int, ...], axes: Sequence[str]) -> str:
    if len(got) != len(expected):
        return f"it has {len(got)} axes, expected {len(expected)} [{', '.join(axes)}]"
    parts = [f"{a} axis is {g}, expected {e}" for a, g, e in zip(axes, got, expected) if g != e]
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------


class StatsWriter:
    """Writes the statistics of one generation after another into one HDF5 file.

    ``StatsWriter(path, *, model, generation, matching, branches, profiled_schedule=None,
    tool_version=None, mode="w")``:

    - ``model``: ``ModelDescription`` (or its ``to_dict()``); ``generation``: dict of generation
      settings (height, width, num_frames, num_steps, guidance_scale, scheduler_class, ...; the
      per-run keys prompt/seed are dropped, they are stored per run); ``matching``: dict (or
      ``MatchingSettings``); ``profiled_schedule``: tag (or object with ``.tag``) of a schedule that
      was active while profiling, else None; ``tool_version``: defaults to ``asymrnr.__version__``;
      ``branches``: ``("cond", "uncond")`` with CFG, ``("cond",)`` without.
    - ``mode="w"`` creates or overwrites the file (at once, with zero runs). ``mode="a"`` appends to
      an existing stats file when its format version, model, generation settings, matching settings,
      profiled schedule and branches all match (else ``StatsFormatError`` naming the key and both
      values); it creates the file when absent.

    Crash safety: ``write_run`` appends the run to every dataset, flushes, raises
    ``num_complete_runs``, flushes and closes -- on a working copy ``<path>.tmp`` that then atomically
    replaces ``<path>`` (``os.replace``). The file at ``path`` is therefore always a cleanly closed
    HDF5 file holding only complete runs, whenever the process dies (even inside an HDF5 flush,
    which can leave an in-place-appended file unreadable). The copy costs one file copy per run,
    small next to a generation.

    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: Any,
        generation: Mapping[str, Any],
        matching: Any,
        branches: Sequence[str],
        profiled_schedule: Any = None,
        tool_version: str | None = None,
        mode: str = "w",
    ) -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"StatsWriter mode={mode!r} is not supported; use 'w' (overwrite) or 'a' (append)")
        self.path = Path(path)
        self._tmp_path = self.path.with_name(self.path.name + TMP_SUFFIX)
        self._closed = False

        if tool_version is None:
            from .. import __version__ as tool_version  # noqa: N811
        if profiled_schedule is not None and not isinstance(profiled_schedule, str):
            profiled_schedule = getattr(profiled_schedule, "tag", profiled_schedule)
        if profiled_schedule is not None and not isinstance(profiled_schedule, str):
            raise TypeError(
                f"StatsWriter profiled_schedule= must be a schedule tag (str) or None, got {profiled_schedule!r}"
            )
        branches = tuple(branches)
        if not branches or len(set(branches)) != len(branches) or not all(isinstance(b, str) and b for b in branches):
            raise ValueError(
                f"StatsWriter branches={branches!r} must be distinct non-empty names, "
                f"e.g. {BRANCHES_CFG!r} with CFG or {BRANCHES_NO_CFG!r} without"
            )

        self._meta: dict[str, Any] = {
            ATTR_MODEL: _as_plain_dict(model, "model"),
            ATTR_GENERATION: _strip_per_run(_as_plain_dict(generation, "generation")),
            ATTR_MATCHING: _as_plain_dict(matching, "matching"),
            ATTR_TOOL_VERSION: str(tool_version),
            ATTR_PROFILED_SCHEDULE: profiled_schedule or "",
            ATTR_BRANCHES: list(branches),
            ATTR_FEATURES: list(STAT_FEATURES),
            ATTR_METRICS: list(STAT_METRICS),
        }
        self.branches = branches
        self._num_runs = 0
        self._num_steps: int | None = _positive_int_or_none(self._meta[ATTR_GENERATION].get("num_steps"))
        self._num_blocks: int | None = _positive_int_or_none(self._meta[ATTR_MODEL].get("num_blocks"))

        if self.path.is_dir():
            raise StatsFormatError(f"cannot write statistics to {self.path}: it is a directory; pass a file path")
        if mode == "a" and self.path.exists():
            self._open_append()
        else:
            self._create()

    # ---- opening ----------------------------------------------------------------------------------

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StatsFormatError(f"cannot create the directory of {self.path}: {exc}") from None

        def header(f: h5py.File) -> None:
            f.attrs[ATTR_FORMAT] = STATS_FORMAT_NAME
            f.attrs[ATTR_VERSION] = np.int64(STATS_FORMAT_VERSION)
            for key in JSON_ATTRS:
                f.attrs[key] = _dumps(self._meta[key])
            for name, values in (
                (DS_QUANTILE_LEVELS, QUANTILE_LEVELS),
                (DS_RATE_LEVELS, RATE_LEVELS),
                (DS_NORM_BIN_EDGES, NORM_BIN_EDGES),
            ):
                f.create_dataset(name, data=np.asarray(values, dtype=np.float64))
            f.require_group(GROUP_RUNS)
            f.attrs[ATTR_NUM_COMPLETE_RUNS] = np.int64(0)

        self._commit(header, copy_existing=False)
        logger.debug("created statistics file %s (branches %s)", self.path, self.branches)

    def _open_append(self) -> None:
        p = self.path
        fix = "write to another file (a new --out) or overwrite it with mode='w'"
        if not _is_hdf5(p):
            raise StatsFormatError(f"cannot append statistics to {p}: it is not an HDF5 file; {fix}")
        try:
            f = h5py.File(p, "r")
        except OSError as exc:
            raise StatsFormatError(f"cannot append statistics to {p}: {_open_error_reason(exc)}; {fix}") from None
        try:
            with f:
                self._check_append_compatible(f, fix)
                self._num_runs = _read_num_complete_runs(f, p)
                self._adopt_existing_datasets(f)
        except StatsFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise StatsFormatError(
                f"cannot append statistics to {p}: the HDF5 file is truncated or corrupt ({exc}); {fix}"
            ) from None
        logger.info("appending to %s, which holds %d complete run(s)", p, self._num_runs)

    def _check_append_compatible(self, f: h5py.File, fix: str) -> None:
        p = self.path
        fmt = _attr_str(f.attrs.get(ATTR_FORMAT))
        if fmt != STATS_FORMAT_NAME:
            what = "has no 'format' attribute" if fmt is None else f"has format {fmt!r}"
            raise StatsFormatError(
                f"cannot append statistics to {p}: it is not an asymrnr statistics file (it {what}, "
                f"expected {STATS_FORMAT_NAME!r}); {fix}"
            )
        version = f.attrs.get(ATTR_VERSION)
        if _as_int(version) != STATS_FORMAT_VERSION:
            raise StatsFormatError(
                f"cannot append to {p}: version differs (file: {_attr_str(version)!r}, "
                f"this asymrnr writes: {STATS_FORMAT_VERSION}); {fix}"
            )
        diffs: list[tuple[str, Any, Any]] = []
        for key in APPEND_MUST_MATCH:
            file_value = _read_json_attr(f, key, p)
            if key == ATTR_GENERATION and isinstance(file_value, dict):
                file_value = _strip_per_run(file_value)
            diffs += _differences(file_value, self._meta[key], key)
        if diffs:
            listed = "; ".join(f"{k} differs (file: {fv!r}, this profiler: {nv!r})" for k, fv, nv in diffs)
            raise StatsFormatError(
                f"cannot append to {p}: {listed}. Statistics made with different settings must not be "
                f"mixed in one file; {fix}"
            )
        file_tool = _read_json_attr(f, ATTR_TOOL_VERSION, p)
        if file_tool != self._meta[ATTR_TOOL_VERSION]:
            logger.warning(
                "%s was written by asymrnr %s; appending with asymrnr %s (the file keeps its tool_version)",
                p,
                file_tool,
                self._meta[ATTR_TOOL_VERSION],
            )

    def _adopt_existing_datasets(self, f: h5py.File) -> None:
        """Check the per-run datasets of the complete runs and take steps/blocks from them."""
        n = self._num_runs
        if n == 0:
            return  # a partial first run (if any) is replaced by the next write_run
        for ds_path in _all_per_run_paths(STAT_METRICS):
            ds = f.get(ds_path)
            if not isinstance(ds, h5py.Dataset) or ds.shape[0] < n:
                have = "lacks it" if ds is None else f"it holds {getattr(ds, 'shape', ('?',))[0]} runs"
                raise StatsFormatError(
                    f"cannot append to {self.path}: dataset {ds_path!r} does not hold the file's {n} complete "
                    f"run(s) ({have}); the file is damaged; write to another file (a new --out)"
                )
            if ds.shape[0] > n:
                logger.warning(
                    "%s: an incomplete run left by an interrupted profiler will be replaced (%s)", self.path, ds_path
                )
        ds = f[f"{GROUP_RUNS}/{DS_SIM_MEAN}/{STAT_METRICS[0]}"]
        self._num_steps, self._num_blocks = int(ds.shape[2]), int(ds.shape[3])

    # ---- writing ----------------------------------------------------------------------------------

    @property
    def num_runs(self) -> int:
        """Number of complete runs in the file."""
        return self._num_runs

    def write_run(self, run: RunStats) -> None:
        """Append one generation's statistics to every dataset, mark it complete, flush and commit."""
        if self._closed:
            raise RuntimeError(f"StatsWriter for {self.path} is closed")
        values, steps, blocks = self._validate(run)
        n = self._num_runs

        def append(f: h5py.File) -> None:
            found = _as_int(f.attrs.get(ATTR_NUM_COMPLETE_RUNS))
            if found != n:
                raise StatsFormatError(
                    f"{self.path} changed while this profiler was writing it (it now holds {found} complete "
                    f"runs, this writer wrote {n}); let one process write a statistics file at a time"
                )
            for ds_path, (value, axes) in values.items():
                self._append(f, ds_path, value, axes, n)
            f.flush()
            f.attrs[ATTR_NUM_COMPLETE_RUNS] = np.int64(n + 1)  # last: marks the run complete
            f.flush()

        self._commit(append, copy_existing=True)
        self._num_runs = n + 1
        self._num_steps, self._num_blocks = steps, blocks
        logger.debug("%s: wrote run %d (prompt %r, seed %d)", self.path, n, run.prompt, int(run.seed))

    def _commit(self, edit: Any, *, copy_existing: bool) -> None:
        """Apply ``edit(h5py.File)`` to a working copy of the file, then atomically replace the file."""
        tmp = self._tmp_path
        try:
            if copy_existing:
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+" if copy_existing else "w") as f:
                edit(f)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, StatsFormatError):
                raise StatsFormatError(
                    f"cannot write statistics file {self.path} (via {tmp.name}): {exc}; check that the "
                    "directory is writable, has free space, and that no other process holds the file"
                ) from None
            raise

    def _append(self, f: h5py.File, ds_path: str, value: np.ndarray | str, axes: tuple[str, ...], n: int) -> None:
        ds = f.get(ds_path)
        cell = () if isinstance(value, str) else tuple(value.shape)
        if ds is not None and tuple(ds.shape[1:]) != cell:
            if n > 0:  # _validate checks shapes against the file, so this means a damaged file
                raise StatsFormatError(
                    f"{self.path}: dataset {ds_path!r} has cells of shape {ds.shape[1:]}, this run has {cell}; "
                    "the file is damaged; write to another file (a new --out)"
                )
            del f[ds_path]  # left by an interrupted first run of other shape
            ds = None
        if ds is None:
            ds = self._create_dataset(f, ds_path, value, axes)
        # resize to n + 1 also drops any partial tail beyond the complete runs
        ds.resize(n + 1, axis=0)
        ds[n] = value

    def _create_dataset(self, f: h5py.File, ds_path: str, value: Any, axes: tuple[str, ...]) -> h5py.Dataset:
        if isinstance(value, str):
            ds = f.create_dataset(
                ds_path, shape=(0,), maxshape=(None,), chunks=(1,), dtype=h5py.string_dtype("utf-8")
            )
        else:
            cell = tuple(value.shape)
            chunks = _chunks(cell, value.dtype.itemsize) if value.ndim >= 4 else (1, *cell)
            ds = f.create_dataset(
                ds_path,
                shape=(0, *cell),
                maxshape=(None, *cell),
                chunks=chunks,
                dtype=value.dtype,
                compression="gzip",
                compression_opts=4,
                shuffle=True,
                fletcher32=True,  # checksums: a corrupted chunk fails to read instead of giving garbage
            )
        ds.attrs[ATTR_AXES] = ",".join(("run", *axes))
        return ds

    def _validate(self, run: RunStats) -> tuple[dict[str, tuple[np.ndarray | str, tuple[str, ...]]], int, int]:
        """(dataset path -> (this run's value, axis names after the run axis), steps, blocks), checked."""
        if not isinstance(run, RunStats):
            raise TypeError(f"write_run expects a RunStats, got {type(run).__name__}")
        if not isinstance(run.prompt, str):
            raise ValueError(f"RunStats.prompt must be a str, got {type(run.prompt).__name__}")
        if isinstance(run.seed, bool) or not isinstance(run.seed, (int, np.integer)):
            raise ValueError(f"RunStats.seed must be an int, got {run.seed!r}")

        steps, blocks = self._num_steps, self._num_blocks
        if steps is None or blocks is None:
            # Neither the file nor the metadata fixes them: the first run does (checked for consistency).
            first = run.sim_mean.get(STAT_METRICS[0]) if isinstance(run.sim_mean, Mapping) else None
            shape = np.shape(first) if first is not None else ()
            if len(shape) != len(CELL_AXES):
                raise ValueError(
                    f"RunStats.sim_mean[{STAT_METRICS[0]!r}] must be an array [branch, step, block, feature], "
                    f"got shape {shape}"
                )
            steps = steps or int(shape[1])
            blocks = blocks or int(shape[2])
        cell = (len(self.branches), steps, blocks, len(STAT_FEATURES))
        context = (
            f"the file {self.path} holds branches {self.branches}, {steps} steps, {blocks} blocks, "
            f"features {STAT_FEATURES}"
        )

        out: dict[str, tuple[np.ndarray | str, tuple[str, ...]]] = {
            f"{GROUP_RUNS}/{DS_PROMPTS}": (run.prompt, ()),
            f"{GROUP_RUNS}/{DS_SEEDS}": (np.int64(run.seed), ()),
        }
        if run.timesteps is None:
            timesteps = np.full(steps, np.nan)
        else:
            timesteps = np.asarray(run.timesteps, dtype=np.float64)
            if timesteps.shape != (steps,):
                raise ValueError(f"RunStats.timesteps has shape {timesteps.shape}, expected ({steps},); {context}")
        out[f"{GROUP_RUNS}/{DS_TIMESTEPS}"] = (timesteps, ("step",))

        for spec in _ARRAYS:
            raw = getattr(run, spec.name)
            axes = _axes_of(spec)
            expected = cell + ((_extra_len(spec.extra_axis),) if spec.extra_axis else ())
            if spec.per_metric:
                if not isinstance(raw, Mapping) or set(raw) != set(STAT_METRICS):
                    got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
                    raise ValueError(f"RunStats.{spec.name} must be a dict with keys {list(STAT_METRICS)}, got {got}")
                items = [(m, raw[m]) for m in STAT_METRICS]
            else:
                items = [(None, raw)]
            for (metric, value), (_, ds_path) in zip(items, _dataset_paths(spec, STAT_METRICS)):
                label = f"RunStats.{spec.name}" + (f"[{metric!r}]" if metric else "")
                arr = np.asarray(value)
                if arr.shape != expected:
                    raise ValueError(
                        f"{label} has shape {arr.shape}, expected {expected} [{', '.join(axes)}]: "
                        f"{_describe_shape_mismatch(arr.shape, expected, axes)}; {context}"
                    )
                if spec.dtype.kind == "i":
                    arr = _as_counts(arr, label)
                else:
                    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                        raise ValueError(f"{label} must hold real numbers, got dtype {arr.dtype}")
                    arr = arr.astype(spec.dtype, copy=False)
                out[ds_path] = (arr, axes)
        return out, steps, blocks

    # ---- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish writing. Every ``write_run`` already left a complete file, so this only forbids more runs."""
        self._closed = True

    def __enter__(self) -> StatsWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"StatsWriter({str(self.path)!r}, runs={self._num_runs}, branches={self.branches}, {state})"


def _positive_int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _as_counts(arr: np.ndarray, label: str) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        out = arr.astype(COUNTS_DTYPE, copy=False)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{label} must hold whole token counts, got non-integer values")
        out = arr.astype(COUNTS_DTYPE)
    else:
        raise ValueError(f"{label} must hold token counts, got dtype {arr.dtype}")
    if out.size and out.min() < 0:
        raise ValueError(f"{label} must hold non-negative token counts, got {out.min()}")
    return out


def _as_int(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        return int(value)
    return None


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------


def _is_hdf5(p: Path) -> bool:
    try:
        return bool(h5py.is_hdf5(p))
    except (OSError, ValueError):
        return False


def _open_error_reason(exc: BaseException) -> str:
    text = str(exc)
    if "unable to lock" in text.lower() or "file locking" in text.lower():
        return "the file is locked by another process (is a profiler still writing it?)"
    return f"the HDF5 file is truncated or corrupt ({text})"


def _read_json_attr(f: h5py.File, key: str, p: Path) -> Any:
    if key not in f.attrs:
        raise StatsFormatError(
            f"{p} lacks the root attribute {key!r}; the file is incomplete or damaged; "
            "re-run `asymrnr profile` to write it again"
        )
    raw = _attr_str(f.attrs[key])
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise StatsFormatError(
            f"{p}: root attribute {key!r} is not valid JSON ({str(raw)[:60]!r}); the file is damaged; "
            "re-run `asymrnr profile` to write it again"
        ) from None


def _read_num_complete_runs(f: h5py.File, p: Path) -> int:
    raw = f.attrs.get(ATTR_NUM_COMPLETE_RUNS)
    n = _as_int(raw)
    if n is None or n < 0:
        raise StatsFormatError(
            f"{p}: root attribute {ATTR_NUM_COMPLETE_RUNS!r} is missing or invalid ({raw!r}); the file is "
            "damaged; re-run `asymrnr profile` to write it again"
        )
    return n


def load_stats(path: str | os.PathLike) -> StatsData:
    """Read a statistics file written by ``StatsWriter``; only its complete runs are returned.

    Raises ``StatsFormatError`` (naming the path and the fix) for a missing file, a file that is not
    HDF5, a truncated or corrupt file, a file that is not an asymrnr statistics file, an unknown format
    version, missing datasets, and a file without any complete run.
    """
    p = Path(path)
    if not p.exists():
        raise StatsFormatError(
            f"statistics file {p} does not exist; check the path, or write it with `asymrnr profile --out {p}`"
        )
    if p.is_dir():
        raise StatsFormatError(f"{p} is a directory, not a statistics file; pass the .h5 file `asymrnr profile` wrote")
    if not _is_hdf5(p):
        raise StatsFormatError(
            f"{p} is not an HDF5 file, so not an asymrnr statistics file; pass the .h5 file written by "
            "`asymrnr profile --out`"
        )
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise StatsFormatError(
            f"cannot read {p}: {_open_error_reason(exc)}; re-run `asymrnr profile` to write it again"
        ) from None
    try:
        return _read(f, p)
    except StatsFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeError) as exc:
        logger.debug("reading %s failed", p, exc_info=True)
        raise StatsFormatError(
            f"cannot read {p}: the HDF5 file is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "re-run `asymrnr profile` to write it again"
        ) from None
    finally:
        try:
            f.close()
        except Exception:  # a corrupt file may fail to close cleanly; nothing else to do
            logger.debug("closing %s failed", p, exc_info=True)


def _read(f: h5py.File, p: Path) -> StatsData:
    fmt = _attr_str(f.attrs.get(ATTR_FORMAT))
    if fmt != STATS_FORMAT_NAME:
        what = "it has no 'format' attribute" if fmt is None else f"its 'format' attribute is {fmt!r}"
        raise StatsFormatError(
            f"{p} is not an asymrnr statistics file ({what}, expected {STATS_FORMAT_NAME!r}); pass the .h5 "
            "file written by `asymrnr profile --out`"
        )
    raw_version = f.attrs.get(ATTR_VERSION)
    version = _as_int(raw_version)
    readable = ", ".join(str(v) for v in SUPPORTED_READ_VERSIONS)
    if version not in SUPPORTED_READ_VERSIONS:
        from .. import __version__

        if version is not None and version > max(SUPPORTED_READ_VERSIONS):
            fix = "upgrade asymrnr (pip install -U asymrnr) to read it"
        else:
            fix = "re-run `asymrnr profile` with this asymrnr to write a readable file"
        raise StatsFormatError(
            f"{p} has stats format version {_attr_str(raw_version)!r}; this asymrnr ({__version__}) reads "
            f"stats format version(s) {readable}; {fix}"
        )

    meta = {key: _read_json_attr(f, key, p) for key in JSON_ATTRS}
    n = _read_num_complete_runs(f, p)
    if n == 0:
        raise StatsFormatError(
            f"{p} holds no complete run: the profiler did not finish a generation (it was interrupted or "
            "failed before the first run was written); re-run `asymrnr profile` and let one generation finish"
        )

    for key in (ATTR_MODEL, ATTR_GENERATION, ATTR_MATCHING):
        if not isinstance(meta[key], dict):
            raise StatsFormatError(f"{p}: root attribute {key!r} is not a JSON object; the file is damaged")
    names = {}
    for key in (ATTR_BRANCHES, ATTR_FEATURES, ATTR_METRICS):
        value = meta[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise StatsFormatError(f"{p}: root attribute {key!r} is not a list of names; the file is damaged")
        names[key] = tuple(value)
    branches, features, metrics = names[ATTR_BRANCHES], names[ATTR_FEATURES], names[ATTR_METRICS]
    # Version 1 fixes features and metrics (StatsData consumers index them by these names).
    for key, got, want in ((ATTR_FEATURES, features, STAT_FEATURES), (ATTR_METRICS, metrics, STAT_METRICS)):
        if got != want:
            raise StatsFormatError(
                f"{p}: root attribute {key!r} is {list(got)}, format version 1 has {list(want)}; the file is damaged"
            )

    def dataset(ds_path: str) -> h5py.Dataset:
        ds = f.get(ds_path)
        if not isinstance(ds, h5py.Dataset):
            raise StatsFormatError(
                f"{p} lacks dataset {ds_path!r} (missing or unreadable); the file is incomplete, damaged, "
                "or was not written by asymrnr; re-run `asymrnr profile` to write it again"
            )
        return ds

    shared = {name: np.asarray(dataset(name)[()], dtype=np.float64) for name in
              (DS_QUANTILE_LEVELS, DS_RATE_LEVELS, DS_NORM_BIN_EDGES)}
    # In format version 1 the shared axes are fixed; anything else means a damaged file.
    for name, want in (
        (DS_QUANTILE_LEVELS, QUANTILE_LEVELS),
        (DS_RATE_LEVELS, RATE_LEVELS),
        (DS_NORM_BIN_EDGES, NORM_BIN_EDGES),
    ):
        if shared[name].shape != np.shape(want) or not np.allclose(shared[name], want, rtol=1e-12, atol=0):
            raise StatsFormatError(
                f"{p}: dataset {name!r} does not hold the format version 1 values; the file is damaged; "
                "re-run `asymrnr profile` to write it again"
            )
    extra = {
        "quantile": len(shared[DS_QUANTILE_LEVELS]),
        "rate": len(shared[DS_RATE_LEVELS]),
        "norm_bin": len(shared[DS_NORM_BIN_EDGES]) - 1,
    }

    def per_run(ds_path: str, trailing: tuple[int | None, ...], axes: Sequence[str]) -> h5py.Dataset:
        ds = dataset(ds_path)
        shape = ds.shape
        if len(shape) != 1 + len(trailing) or shape[0] < n or any(
            t is not None and s != t for s, t in zip(shape[1:], trailing)
        ):
            sizes = (f">={n}", *("?" if t is None else t for t in trailing))
            want = ", ".join(f"{a}={t}" for a, t in zip(("run", *axes), sizes))
            raise StatsFormatError(
                f"{p}: dataset {ds_path!r} has shape {shape}, expected [{want}] "
                f"(num_complete_runs={n}); the file is damaged; re-run `asymrnr profile` to write it again"
            )
        return ds

    first = per_run(f"{GROUP_RUNS}/{DS_SIM_MEAN}/{metrics[0]}", (len(branches), None, None, len(features)), CELL_AXES)
    steps, blocks = int(first.shape[2]), int(first.shape[3])
    cell = (len(branches), steps, blocks, len(features))
    for key, what, declared, actual in (
        (ATTR_MODEL, "num_blocks", meta[ATTR_MODEL].get("num_blocks"), blocks),
        (ATTR_GENERATION, "num_steps", meta[ATTR_GENERATION].get("num_steps"), steps),
    ):
        if _positive_int_or_none(declared) not in (None, actual):
            raise StatsFormatError(
                f"{p}: {key}[{what!r}] is {declared} but the datasets hold {actual}; the file is damaged; "
                "re-run `asymrnr profile` to write it again"
            )

    prompts_ds = per_run(f"{GROUP_RUNS}/{DS_PROMPTS}", (), ())
    prompts = [str(s) for s in prompts_ds.asstr()[:n]]
    seeds = np.asarray(per_run(f"{GROUP_RUNS}/{DS_SEEDS}", (), ())[:n], dtype=np.int64)
    timesteps = np.asarray(per_run(f"{GROUP_RUNS}/{DS_TIMESTEPS}", (steps,), ("step",))[:n])

    arrays: dict[str, Any] = {}
    for spec in _ARRAYS:
        axes = _axes_of(spec)
        trailing = cell + ((extra[spec.extra_axis],) if spec.extra_axis else ())
        if spec.per_metric:
            arrays[spec.name] = {
                m: np.asarray(per_run(ds_path, trailing, axes)[:n]) for m, ds_path in _dataset_paths(spec, metrics)
            }
        else:
            (_, ds_path), = _dataset_paths(spec, metrics)
            arrays[spec.name] = np.asarray(per_run(ds_path, trailing, axes)[:n])

    schedule_tag = meta[ATTR_PROFILED_SCHEDULE]
    return StatsData(
        format_version=int(version),
        tool_version=str(meta[ATTR_TOOL_VERSION]),
        model=meta[ATTR_MODEL],
        generation=meta[ATTR_GENERATION],
        matching=meta[ATTR_MATCHING],
        profiled_schedule=str(schedule_tag) if schedule_tag else None,
        branches=branches,
        features=features,
        metrics=metrics,
        quantile_levels=shared[DS_QUANTILE_LEVELS],
        rate_levels=shared[DS_RATE_LEVELS],
        norm_bin_edges=shared[DS_NORM_BIN_EDGES],
        prompts=prompts,
        seeds=seeds,
        timesteps=timesteps,
        path=str(p),
        **arrays,
    )


# --------------------------------------------------------------------------------------------------
# Human summary
# --------------------------------------------------------------------------------------------------


def _human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _shorten(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_stats(path_or_data: str | os.PathLike | StatsData, *, max_prompts: int = 5) -> str:
    """A short human summary of a statistics file (what ``asymrnr inspect stats.h5`` prints)."""
    data = path_or_data if isinstance(path_or_data, StatsData) else load_stats(path_or_data)
    size = "unknown size"
    if data.path is not None and os.path.isfile(data.path):
        size = _human_size(os.path.getsize(data.path))
    model, gen = data.model, data.generation
    title = data.path if data.path is not None else "statistics (in memory)"

    model_bits = [str(model.get("transformer_class", "unknown model"))]
    model_bits.append(f"{data.num_blocks} blocks")
    if "num_heads" in model and "head_dim" in model:
        model_bits.append(f"{model['num_heads']} heads x {model['head_dim']}")
    grid = model.get("latent_grid")
    if isinstance(grid, list) and len(grid) == 3:
        model_bits.append(f"token grid {grid[0]}x{grid[1]}x{grid[2]}")

    gen_bits = []
    if "width" in gen and "height" in gen:
        gen_bits.append(f"{gen['width']}x{gen['height']}")
    if "num_frames" in gen:
        gen_bits.append(f"{gen['num_frames']} frames")
    gen_bits.append(f"{data.num_steps} steps")
    if gen.get("guidance_scale") is not None:
        gen_bits.append(f"guidance {gen['guidance_scale']}")
    if gen.get("scheduler_class"):
        gen_bits.append(str(gen["scheduler_class"]))

    match_bits = [f"{k} {v}" for k, v in sorted(data.matching.items())]
    lines = [
        f"{title}: asymrnr statistics, format v{data.format_version}, {size}, written by asymrnr {data.tool_version}",
        f"  model:      {', '.join(model_bits)}",
        f"  generation: {', '.join(gen_bits)}",
        f"  branches:   {', '.join(data.branches)}{'' if len(data.branches) > 1 else ' (no CFG)'}",
        f"  features:   {', '.join(data.features)}; metrics: {', '.join(data.metrics)}",
        f"  matching:   {', '.join(match_bits) if match_bits else '-'}",
        f"  profiled with schedule: {data.profiled_schedule or 'none (dense)'}",
        f"  runs:       {data.num_runs}, seeds {', '.join(str(int(s)) for s in data.seeds[:max_prompts])}"
        + (" ..." if data.num_runs > max_prompts else ""),
        "  prompts:",
    ]
    for i, prompt in enumerate(data.prompts[:max_prompts]):
        lines.append(f"    [{i}] {_shorten(prompt)}")
    if data.num_runs > max_prompts:
        lines.append(f"    ... and {data.num_runs - max_prompts} more")
    return "\n".join(lines)


__all__ = [
    "STATS_FORMAT_NAME",
    "STATS_FORMAT_VERSION",
    "SUPPORTED_READ_VERSIONS",
    "STAT_FEATURES",
    "STAT_METRICS",
    "QUANTILE_LEVELS",
    "RATE_LEVELS",
    "NORM_BIN_EDGES",
    "RunStats",
    "StatsData",
    "StatsWriter",
    "load_stats",
    "describe_stats",
]
