"""The statistics file's contract: names, constants, array specs, axes and metadata rules (no h5py).

Every group, dataset and attribute name of ``stats.h5`` is a constant here (``ATTR_*``, ``DS_*``,
``GROUP_RUNS``, ``GEN_*``, ``MATCH_*``); the writer (:mod:`.writer`) and the reader (:mod:`.reader`) use
nothing else. The layout, semantics, versions and safety rules are documented in ``docs/stats-format.md``.

This module imports numpy but not h5py, so code that only needs the constants (the profiler's binning, the
planner's levels) does not load HDF5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import vocab
from ..descriptions import ModelDescription, upgrade_model_v1

# --------------------------------------------------------------------------------------------------
# Format identity and versions
# --------------------------------------------------------------------------------------------------

STATS_FORMAT_NAME = "asymrnr-stats"
#: The version the writer writes.
STATS_FORMAT_VERSION = 2
#: Versions of the stats format this asymrnr can read (older ones are upgraded in memory).
SUPPORTED_READ_VERSIONS: tuple[int, ...] = (1, 2)

# --------------------------------------------------------------------------------------------------
# Shared axes and vocabularies
# --------------------------------------------------------------------------------------------------

STAT_FEATURES: tuple[str, ...] = vocab.STAT_FEATURES  # ("h", "q", "k", "v")
STAT_METRICS: tuple[str, ...] = vocab.STAT_METRICS  # ("euclidean", "cosine")
QUANTILE_LEVELS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1.0)
RATE_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
#: 70 log-spaced bins shared by all cells. Files store the edges; a reader accepts stored edges within
#: 1e-12 (relative) of these, since ``numpy.logspace`` differs in the last bit between numpy versions.
NORM_BIN_EDGES: np.ndarray = np.logspace(-3, 4, 71)
NORM_BIN_EDGES.setflags(write=False)
#: Relative tolerance of the stored shared axes against the values above.
SHARED_AXES_RTOL = 1e-12

#: Branch names: with classifier-free guidance the transformer sees both, without it only "cond".
BRANCHES_CFG: tuple[str, ...] = ("cond", "uncond")
BRANCHES_NO_CFG: tuple[str, ...] = ("cond",)

# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

# Root attributes.
ATTR_FORMAT = "format"
ATTR_VERSION = "version"
ATTR_MODEL = "model"  # JSON object: ModelDescription (v2) .to_dict()
ATTR_GENERATION = "generation"  # JSON object
ATTR_MATCHING = "matching"  # JSON object
ATTR_TOOL_VERSION = "tool_version"  # JSON string
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

# Keys of the ``generation`` attribute that version 2 defines (others are free-form settings).
GEN_NUM_STEPS = "num_steps"
GEN_TRANSFORMERS = "transformers"  # list of transformer component names, default ["transformer"]
GEN_STEP_TRANSFORMER = "step_transformer"  # per-step index into transformers, or null (the first, always)
GEN_SCHEDULER_CONFIG = "scheduler_config"  # JSON object, default {}
DEFAULT_TRANSFORMERS: tuple[str, ...] = ("transformer",)
# Keys of the ``matching`` attribute that version 2 defines.
MATCH_PARTITION = "partition"  # "window" | "fixed"
#: Partition of a file (or a writer's matching settings) that does not name one: version 1's rule.
DEFAULT_STATS_PARTITION = "fixed"

# Shared axes (root datasets).
DS_QUANTILE_LEVELS = "quantile_levels"
DS_RATE_LEVELS = "rate_levels"
DS_NORM_BIN_EDGES = "norm_bin_edges"
SHARED_AXES: tuple[tuple[str, Any], ...] = (
    (DS_QUANTILE_LEVELS, QUANTILE_LEVELS),
    (DS_RATE_LEVELS, RATE_LEVELS),
    (DS_NORM_BIN_EDGES, NORM_BIN_EDGES),
)

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

#: Suffix of the working copies (``.<name>.<random>.tmp``, created exclusively) a write goes through.
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
SEEDS_DTYPE = np.dtype(np.int64)
TIMESTEPS_DTYPE = np.dtype(np.float64)

# --------------------------------------------------------------------------------------------------
# Safety limits (docs/stats-format.md, "Safety"): what a reader or an appending writer accepts
# --------------------------------------------------------------------------------------------------

#: At most this many links in the whole file (a real one has about 25).
MAX_LINKS = 10_000
#: At most this deep a group nesting (a real file has 2 levels).
MAX_DEPTH = 16
#: HDF5 filters a dataset may use, each at most once: deflate (gzip), shuffle, Fletcher-32.
ALLOWED_FILTERS: dict[int, str] = {1: "deflate", 2: "shuffle", 3: "fletcher32"}
#: A chunk's uncompressed size (the writer's chunks are about 1 MiB).
MAX_CHUNK_BYTES = 256 << 20
#: Data read from a dataset is at most this many times the bytes it occupies in the file, plus
#: ``EXPANSION_SLACK_BYTES`` (deflate's largest ratio is 1032:1; unallocated chunks read as fill values).
MAX_EXPANSION = 1100
EXPANSION_SLACK_BYTES = 1 << 20
#: A root attribute holds at most this much (JSON text).
MAX_ATTR_BYTES = 16 << 20
#: Bound on steps and blocks of a file (as in the schedule format's descriptions).
MAX_STEPS = 100_000
MAX_BLOCKS = 100_000
MAX_TRANSFORMERS = 64


# --------------------------------------------------------------------------------------------------
# Per-run array specs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """One per-run statistics array of ``RunStats`` / ``StatsData``."""

    name: str  # RunStats / StatsData field, and dataset (or group) name under GROUP_RUNS
    per_metric: bool
    extra_axis: str | None  # trailing axis after the cell axes
    dtype: np.dtype


ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec(DS_SIM_MEAN, True, None, STATS_DTYPE),
    ArraySpec(DS_SIM_QUANTILES, True, "quantile", STATS_DTYPE),
    ArraySpec(DS_SIM_RATE_CURVE, True, "rate", STATS_DTYPE),
    ArraySpec(DS_NORM_QUANTILES, False, "quantile", STATS_DTYPE),
    ArraySpec(DS_NORM_HIST, False, "norm_bin", COUNTS_DTYPE),
    ArraySpec(DS_STABILITY_SAME_DST, False, None, STATS_DTYPE),
    ArraySpec(DS_STABILITY_CORR, False, None, STATS_DTYPE),
)

CHUNK_TARGET_BYTES = 1 << 20  # HDF5's default chunk cache size


def extra_len(axis: str | None) -> int | None:
    """Length of a trailing axis (``quantile``, ``rate``, ``norm_bin``)."""
    if axis is None:
        return None
    return {"quantile": len(QUANTILE_LEVELS), "rate": len(RATE_LEVELS), "norm_bin": len(NORM_BIN_EDGES) - 1}[axis]


def axes_of(spec: ArraySpec) -> tuple[str, ...]:
    """Axis names of one run's array (after the run axis)."""
    return CELL_AXES + ((spec.extra_axis,) if spec.extra_axis else ())


def dataset_paths(spec: ArraySpec, metrics: Sequence[str]) -> list[tuple[str | None, str]]:
    """(metric or None, dataset path relative to the root) of one per-run array."""
    if spec.per_metric:
        return [(m, f"{GROUP_RUNS}/{spec.name}/{m}") for m in metrics]
    return [(None, f"{GROUP_RUNS}/{spec.name}")]


def all_per_run_paths(metrics: Sequence[str]) -> list[str]:
    """Every per-run dataset of a file (13 with the two metrics)."""
    out = [f"{GROUP_RUNS}/{DS_PROMPTS}", f"{GROUP_RUNS}/{DS_SEEDS}", f"{GROUP_RUNS}/{DS_TIMESTEPS}"]
    for spec in ARRAYS:
        out += [ds_path for _, ds_path in dataset_paths(spec, metrics)]
    return out


def chunks(cell_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
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
    steps_per_chunk = max(1, min(steps, CHUNK_TARGET_BYTES // max(per_step, 1)))
    return (1, 1, steps_per_chunk, *rest)


def describe_shape_mismatch(got: tuple[int, ...], expected: tuple[int, ...], axes: Sequence[str]) -> str:
    if len(got) != len(expected):
        return f"it has {len(got)} axes, expected {len(expected)} [{', '.join(axes)}]"
    parts = [f"{a} axis is {g}, expected {e}" for a, g, e in zip(axes, got, expected) if g != e]
    return "; ".join(parts)


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
    """What load_stats returns; arrays indexed [run, branch, step, block, feature, ...].

    ``model`` is ``ModelDescription.to_dict()`` (version 2; a version-1 file's description is upgraded),
    ``model_description`` the dataclass itself. Built in memory, ``model`` may also be given as a
    ``ModelDescription``; ``model_description`` is then derived from ``model`` when that is a complete
    version-2 description, else left ``None``.
    """

    format_version: int  # the version of the file it was read from
    tool_version: str
    model: dict  # ModelDescription.to_dict()
    generation: dict  # height, width, num_frames, num_steps, guidance_scale, scheduler_class, transformers, ...
    matching: dict  # stride, seed, granularity, partition (metrics are STAT_METRICS)
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
    #: ``model`` as the dataclass (derived from ``model``, so not compared).
    model_description: ModelDescription | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, ModelDescription):
            self.model_description = self.model
            self.model = self.model.to_dict()
        elif self.model_description is None and isinstance(self.model, Mapping):
            try:
                self.model_description = ModelDescription.from_dict(self.model)
            except (ValueError, TypeError):
                self.model_description = None  # an in-memory partial description (tests, old callers)

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
# JSON helpers
# --------------------------------------------------------------------------------------------------


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"value {obj!r} of type {type(obj).__name__} cannot be stored in a stats file")


def dumps(value: Any) -> str:
    """How every JSON attribute is written: sorted keys, tuples as lists."""
    return json.dumps(value, default=json_default, sort_keys=True)


def as_plain_dict(value: Any, what: str) -> dict:
    """A JSON-normalized dict (tuples become lists) from a dict, a dataclass or a ``to_dict()`` object."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"StatsWriter {what}= must be a dict (or a dataclass), got {type(value).__name__}")
    try:
        return json.loads(dumps(dict(value)))
    except TypeError as exc:
        raise TypeError(f"StatsWriter {what}=: {exc}") from None


def attr_value(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def differences(file_value: Any, new_value: Any, key: str) -> list[tuple[str, Any, Any]]:
    """Keys (dotted paths) where two JSON-normalized values differ, with both values."""
    if isinstance(file_value, dict) and isinstance(new_value, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(file_value) | set(new_value)):
            out += differences(file_value.get(k, "<missing>"), new_value.get(k, "<missing>"), f"{key}.{k}")
        return out
    if file_value == new_value:
        return []
    if isinstance(file_value, float) and isinstance(new_value, float):
        if math.isnan(file_value) and math.isnan(new_value):
            return []
    return [(key, file_value, new_value)]


def strip_per_run(generation: Mapping) -> dict:
    return {k: v for k, v in generation.items() if k not in GENERATION_PER_RUN_KEYS}


def positive_int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def as_int(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        return int(value)
    return None


def as_counts(arr: np.ndarray, label: str) -> np.ndarray:
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


def json_depth_ok(value: Any, limit: int = 32) -> bool:
    """Whether a decoded JSON value nests at most ``limit`` levels (iteratively: no recursion limit)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(v, dict):
            stack += [(x, depth + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, depth + 1) for x in v]
    return True


# --------------------------------------------------------------------------------------------------
# Metadata of version 2 (used by the writer on its input and by the reader on a file's attributes).
# Each raises ValueError (or TypeError) with the key path; callers add the file and the fix.
# --------------------------------------------------------------------------------------------------


def is_v1_model(d: Mapping) -> bool:
    """A version-1 (one family only) model description: int ``patch_size`` + ``patch_size_t``, no ``family``."""
    return "family" not in d and ("patch_size_t" in d or "text_first" in d)


def model_description(value: Any, *, upgrade_v1: bool) -> ModelDescription:
    """The ``ModelDescription`` (version 2) of a writer's ``model=`` or a file's ``model`` attribute.

    ``upgrade_v1``: accept a version-1 description (upgraded with ``upgrade_model_v1``).
    """
    if isinstance(value, ModelDescription):
        return value
    d = as_plain_dict(value, "model")
    if upgrade_v1 and is_v1_model(d):
        d = upgrade_model_v1(d)
    return ModelDescription.from_dict(
        d, where="model", version=2, fix="describe the transformer with asymrnr.archs (ModelDescription version 2)"
    )


def normalize_generation(generation: Mapping) -> dict:
    """The ``generation`` attribute of version 2: per-run keys dropped, ``transformers``,
    ``step_transformer`` and ``scheduler_config`` checked (and filled with their defaults when absent)."""
    if not isinstance(generation, Mapping):
        raise ValueError(f"generation must be a JSON object, got {type(generation).__name__}")
    out = strip_per_run(generation)
    if not json_depth_ok(out):
        raise ValueError("generation is nested more than 32 levels deep")

    names = out.get(GEN_TRANSFORMERS, list(DEFAULT_TRANSFORMERS))
    if (
        not isinstance(names, (list, tuple))
        or not names
        or len(names) > MAX_TRANSFORMERS
        or not all(isinstance(n, str) and n and len(n) <= 256 for n in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(
            f"generation.{GEN_TRANSFORMERS} must list the pipeline's transformer components once each "
            f"(1 to {MAX_TRANSFORMERS} non-empty names, e.g. ['transformer', 'transformer_2']), got {names!r:.80}"
        )
    out[GEN_TRANSFORMERS] = list(names)

    per_step = out.get(GEN_STEP_TRANSFORMER)
    if per_step is not None:
        if not isinstance(per_step, (list, tuple)) or len(per_step) > MAX_STEPS:
            raise ValueError(
                f"generation.{GEN_STEP_TRANSFORMER} must be null or a list with the index (into "
                f"generation.{GEN_TRANSFORMERS}) of the transformer of every step, got {per_step!r:.80}"
            )
        for i, v in enumerate(per_step):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(names):
                raise ValueError(
                    f"generation.{GEN_STEP_TRANSFORMER}[{i}] is {v!r:.40}; it must be an index into "
                    f"generation.{GEN_TRANSFORMERS} ({', '.join(names)}): 0 to {len(names) - 1}"
                )
        num_steps = positive_int_or_none(out.get(GEN_NUM_STEPS))
        if num_steps is not None and len(per_step) != num_steps:
            raise ValueError(
                f"generation.{GEN_STEP_TRANSFORMER} has {len(per_step)} entries but generation.{GEN_NUM_STEPS} "
                f"is {num_steps}; give the transformer of every step"
            )
        out[GEN_STEP_TRANSFORMER] = list(per_step)
    else:
        out[GEN_STEP_TRANSFORMER] = None

    config = out.get(GEN_SCHEDULER_CONFIG, {})
    if not isinstance(config, Mapping):
        raise ValueError(f"generation.{GEN_SCHEDULER_CONFIG} must be a JSON object, got {type(config).__name__}")
    out[GEN_SCHEDULER_CONFIG] = dict(config)
    return out


def normalize_matching(matching: Mapping) -> dict:
    """The ``matching`` attribute of version 2: ``partition`` checked (``"fixed"`` when absent)."""
    if not isinstance(matching, Mapping):
        raise ValueError(f"matching must be a JSON object, got {type(matching).__name__}")
    if not json_depth_ok(matching):
        raise ValueError("matching is nested more than 32 levels deep")
    out = dict(matching)
    partition = out.setdefault(MATCH_PARTITION, DEFAULT_STATS_PARTITION)
    if partition not in vocab.PARTITION_MODES:
        raise ValueError(
            f"matching.{MATCH_PARTITION} is {partition!r:.40}; allowed: {', '.join(vocab.PARTITION_MODES)}"
        )
    return out


def upgrade_generation_v1(generation: Any) -> Any:
    """Version-1 generation settings: one transformer, no scheduler config recorded."""
    if not isinstance(generation, Mapping):
        return generation
    out = dict(generation)
    out.setdefault(GEN_TRANSFORMERS, list(DEFAULT_TRANSFORMERS))
    out.setdefault(GEN_STEP_TRANSFORMER, None)
    out.setdefault(GEN_SCHEDULER_CONFIG, {})
    return out


__all__ = [
    "STATS_FORMAT_NAME", "STATS_FORMAT_VERSION", "SUPPORTED_READ_VERSIONS", "STAT_FEATURES", "STAT_METRICS",
    "QUANTILE_LEVELS", "RATE_LEVELS", "NORM_BIN_EDGES", "SHARED_AXES_RTOL", "BRANCHES_CFG", "BRANCHES_NO_CFG",
    "ATTR_FORMAT", "ATTR_VERSION", "ATTR_MODEL", "ATTR_GENERATION", "ATTR_MATCHING", "ATTR_TOOL_VERSION",
    "ATTR_PROFILED_SCHEDULE", "ATTR_BRANCHES", "ATTR_FEATURES", "ATTR_METRICS", "ATTR_NUM_COMPLETE_RUNS",
    "ATTR_AXES", "JSON_ATTRS", "GEN_NUM_STEPS", "GEN_TRANSFORMERS", "GEN_STEP_TRANSFORMER",
    "GEN_SCHEDULER_CONFIG", "DEFAULT_TRANSFORMERS", "MATCH_PARTITION", "DEFAULT_STATS_PARTITION",
    "DS_QUANTILE_LEVELS", "DS_RATE_LEVELS", "DS_NORM_BIN_EDGES", "SHARED_AXES", "GROUP_RUNS", "DS_PROMPTS",
    "DS_SEEDS", "DS_TIMESTEPS", "DS_SIM_MEAN", "DS_SIM_QUANTILES", "DS_SIM_RATE_CURVE", "DS_NORM_QUANTILES",
    "DS_NORM_HIST", "DS_STABILITY_SAME_DST", "DS_STABILITY_CORR", "TMP_SUFFIX", "APPEND_MUST_MATCH",
    "GENERATION_PER_RUN_KEYS", "CELL_AXES", "STATS_DTYPE", "COUNTS_DTYPE", "MAX_LINKS", "MAX_DEPTH",
    "ALLOWED_FILTERS", "MAX_CHUNK_BYTES", "MAX_EXPANSION", "EXPANSION_SLACK_BYTES", "MAX_ATTR_BYTES",
    "MAX_STEPS", "MAX_BLOCKS", "ArraySpec", "ARRAYS", "RunStats", "StatsData",
]
