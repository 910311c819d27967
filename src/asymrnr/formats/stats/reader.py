"""Reading statistics files: the safety walk, one reader per format version, ``load_stats``, ``describe_stats``.

Order of every read (also of the writer's checks before it appends):

1. the path is a regular file (not a directory, device or FIFO) holding HDF5;
2. :func:`check_contents` walks every link of the file with low-level link information and refuses
   anything that is not a plain group or dataset *inside* the file (soft, external and user-defined links,
   external raw storage, virtual datasets, objects linked twice, unknown filters, huge chunks), before a
   byte of data is read;
3. ``format`` and ``version``; the reader registered for that version (:data:`READERS`) reads and checks the
   root attributes and upgrades them to version 2 in memory;
4. :func:`check_datasets` checks every dataset's shape and dtype against the attributes, and the data a
   read would allocate against the bytes the dataset really stores, still before reading any array;
5. only then are the complete runs read.

Every problem raises ``StatsFormatError`` whose message names the path and the fix, never chained to an
h5py traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5l, h5o

from ...errors import StatsFormatError
from ..descriptions import ModelDescription, upgrade_matching_v1, upgrade_model_v1
from . import spec as S
from .spec import StatsData

logger = logging.getLogger(__name__)

#: The fix a reader's message ends with.
REWRITE_FIX = "re-run `asymrnr profile` to write it again"


class Problem:
    """How errors about one file are phrased: ``"<where>: <problem>; <fix>"``."""

    def __init__(self, where: str, fix: str = REWRITE_FIX) -> None:
        self.where, self.fix = where, fix

    def __call__(self, problem: str) -> StatsFormatError:
        return StatsFormatError(f"{self.where}: {problem}; {self.fix}")


# --------------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------------


def file_kind(p: Path) -> str | None:
    """``None`` for a missing path, else ``"file"``, ``"directory"`` or what else it is (follows symlinks)."""
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. a symlink loop, a permission problem on a parent
        raise StatsFormatError(f"cannot access {p}: {exc}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def is_hdf5(p: Path) -> bool:
    try:
        return bool(h5py.is_hdf5(p))
    except (OSError, ValueError):
        return False


def open_error_reason(exc: BaseException) -> str:
    text = str(exc)
    if "unable to lock" in text.lower() or "file locking" in text.lower():
        return "the file is locked by another process (is a profiler still writing it?)"
    return f"the HDF5 file is truncated or corrupt ({text})"


def _open_for_reading(p: Path) -> h5py.File:
    kind = file_kind(p)
    if kind is None:
        raise StatsFormatError(
            f"statistics file {p} does not exist; check the path, or write it with `asymrnr profile --out {p}`"
        )
    if kind == "directory":
        raise StatsFormatError(f"{p} is a directory, not a statistics file; pass the .h5 file `asymrnr profile` wrote")
    if kind != "file":
        raise StatsFormatError(
            f"{p} is a {kind}, not a regular file; pass the .h5 file written by `asymrnr profile --out`"
        )
    if not is_hdf5(p):
        raise StatsFormatError(
            f"{p} is not an HDF5 file, so not an asymrnr statistics file; pass the .h5 file written by "
            "`asymrnr profile --out`"
        )
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise StatsFormatError(f"cannot read {p}: {open_error_reason(exc)}; {REWRITE_FIX}") from None


# --------------------------------------------------------------------------------------------------
# Safety: only plain groups and datasets inside the file
# --------------------------------------------------------------------------------------------------

_OUTSIDE = "asymrnr reads and writes only groups and datasets stored inside the file itself"


def _decode(name: bytes) -> str:
    return name.decode("utf-8", errors="backslashreplace")


def check_contents(f: h5py.File, err: Problem) -> None:
    """Refuse a file holding anything but plain groups and datasets inside it (reads no data).

    Walks every link from the root with low-level link information, never following one: soft links,
    external links and user-defined links are refused, as are objects linked more than once (cycles),
    committed datatypes, datasets with external raw storage or virtual layouts, datasets using filters
    other than deflate, shuffle and Fletcher-32 (each at most once), and chunks over
    ``MAX_CHUNK_BYTES``. At most ``MAX_LINKS`` links and ``MAX_DEPTH`` levels.
    """
    crafted = "the file is damaged or was crafted to read or write other files"
    root = h5o.get_info(f.id)
    if root.rc != 1:
        raise err(f"its root group is hard-linked {root.rc} times (a cycle inside the file); {crafted}")
    stack: list[tuple[str, Any, int]] = [("", f.id, 0)]
    count = 0
    while stack:
        path, gid, depth = stack.pop()
        names: list[bytes] = []

        def collect(name: bytes) -> int | None:
            names.append(name)
            return 1 if count + len(names) > S.MAX_LINKS else None  # non-None stops the iteration

        gid.links.iterate(collect)
        count += len(names)
        if count > S.MAX_LINKS:
            raise err(f"it holds more than {S.MAX_LINKS} links (a statistics file holds about 25); {crafted}")
        for bname in names:
            where = f"{path}/{_decode(bname)}"
            kind = gid.links.get_info(bname).type
            if kind == h5l.TYPE_SOFT:
                target = _decode(gid.links.get_val(bname))
                raise err(f"{where!r} is a soft link to {target!r}; {_OUTSIDE}, so it follows no link; {crafted}")
            if kind == h5l.TYPE_EXTERNAL:
                filename, target = (_decode(v) for v in gid.links.get_val(bname))
                raise err(
                    f"{where!r} is an external link to {target!r} in the file {filename!r}; {_OUTSIDE}, so it "
                    f"follows no link; {crafted}"
                )
            if kind != h5l.TYPE_HARD:
                raise err(f"{where!r} is a user-defined link (type {kind}); {_OUTSIDE}; {crafted}")
            info = h5o.get_info(gid, bname)
            if info.rc != 1:
                raise err(
                    f"{where!r} is linked {info.rc} times inside the file (asymrnr links every object once); {crafted}"
                )
            if info.type == h5o.TYPE_GROUP:
                if depth + 1 > S.MAX_DEPTH:
                    raise err(f"{where!r} is nested more than {S.MAX_DEPTH} groups deep; {crafted}")
                stack.append((where, h5g.open(gid, bname), depth + 1))
            elif info.type == h5o.TYPE_DATASET:
                _check_dataset_storage(h5d.open(gid, bname), where, err, crafted)
            else:
                raise err(f"{where!r} is neither a group nor a dataset (HDF5 object type {info.type}); {crafted}")


def _check_dataset_storage(did: Any, where: str, err: Problem, crafted: str) -> None:
    dcpl = did.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise err(
            f"dataset {where!r} is a virtual dataset (its data would be read from other files); {_OUTSIDE}; {crafted}"
        )
    n_ext = dcpl.get_external_count()
    if n_ext:
        files = ", ".join(repr(_decode(dcpl.get_external(i)[0])) for i in range(min(n_ext, 3)))
        raise err(
            f"dataset {where!r} keeps its data outside the HDF5 file (external raw storage in {files}); "
            f"{_OUTSIDE}; {crafted}"
        )
    seen: set[int] = set()
    for i in range(dcpl.get_nfilters()):
        code = int(dcpl.get_filter(i)[0])
        if code not in S.ALLOWED_FILTERS or code in seen:
            allowed = ", ".join(S.ALLOWED_FILTERS.values())
            raise err(
                f"dataset {where!r} uses HDF5 filter {code} (a statistics file uses only {allowed}, each once); "
                f"{crafted}"
            )
        seen.add(code)
    if layout == h5d.CHUNKED:
        chunk = dcpl.get_chunk()
        nbytes = math.prod(int(c) for c in chunk) * max(int(did.dtype.itemsize), 1)
        if nbytes > S.MAX_CHUNK_BYTES:
            raise err(
                f"dataset {where!r} has chunks of {_human_size(nbytes)} "
                f"(at most {_human_size(S.MAX_CHUNK_BYTES)}); {crafted}"
            )


# --------------------------------------------------------------------------------------------------
# Root attributes
# --------------------------------------------------------------------------------------------------


def read_attr(f: h5py.File, key: str, err: Problem) -> Any:
    """A root attribute as a plain value (``None`` when absent), its size checked before it is read."""
    if key not in f.attrs:
        return None
    aid = h5a.open(f.id, key.encode())
    if aid.shape != () or aid.get_storage_size() > S.MAX_ATTR_BYTES:
        raise err(f"root attribute {key!r} is not a single value (shape {aid.shape}); the file is damaged")
    value = S.attr_value(f.attrs[key])
    if isinstance(value, str) and len(value) > S.MAX_ATTR_BYTES:
        raise err(f"root attribute {key!r} holds {len(value)} characters; the file is damaged")
    return value


def read_json_attr(f: h5py.File, key: str, err: Problem) -> Any:
    raw = read_attr(f, key, err)
    if raw is None:
        raise err(f"lacks the root attribute {key!r}; the file is incomplete or damaged")
    try:
        return json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise err(f"root attribute {key!r} is not valid JSON ({str(raw)[:60]!r}); the file is damaged") from None


def read_num_complete_runs(f: h5py.File, err: Problem) -> int:
    raw = read_attr(f, S.ATTR_NUM_COMPLETE_RUNS, err)
    n = S.as_int(raw)
    if n is None or n < 0:
        raise err(f"root attribute {S.ATTR_NUM_COMPLETE_RUNS!r} is missing or invalid ({raw!r}); the file is damaged")
    return n


def read_format(f: h5py.File, err: Problem) -> Any:
    return read_attr(f, S.ATTR_FORMAT, err)


def read_version(f: h5py.File, err: Problem) -> tuple[int | None, Any]:
    """(the version as an int or None, the raw attribute value)."""
    raw = read_attr(f, S.ATTR_VERSION, err)
    return S.as_int(raw), raw


@dataclass
class Header:
    """The root attributes of a file, upgraded to version 2 and checked."""

    version: int  # the file's own version
    meta: dict  # JSON_ATTRS -> value (version 2: model is ModelDescription.to_dict())
    model: ModelDescription
    num_complete_runs: int
    branches: tuple[str, ...]
    features: tuple[str, ...]
    metrics: tuple[str, ...]


def _raw_meta(f: h5py.File, err: Problem) -> dict:
    meta = {key: read_json_attr(f, key, err) for key in S.JSON_ATTRS}
    for key in (S.ATTR_MODEL, S.ATTR_GENERATION, S.ATTR_MATCHING):
        if not isinstance(meta[key], dict):
            raise err(f"root attribute {key!r} is not a JSON object; the file is damaged")
    return meta


def _header(f: h5py.File, err: Problem, version: int, meta: dict, *, v1_model: bool) -> Header:
    """Check version-2 metadata (``meta`` already upgraded) and the names."""
    try:
        if v1_model:
            meta[S.ATTR_MODEL] = upgrade_model_v1(meta[S.ATTR_MODEL])
        model = S.model_description(meta[S.ATTR_MODEL], upgrade_v1=False)
    except (ValueError, TypeError) as exc:
        raise err(f"its model description cannot be read ({exc}); the file is damaged") from None
    meta[S.ATTR_MODEL] = model.to_dict()
    for key, check in ((S.ATTR_GENERATION, S.normalize_generation), (S.ATTR_MATCHING, S.normalize_matching)):
        try:
            meta[key] = check(meta[key])
        except (ValueError, TypeError) as exc:
            raise err(f"root attribute {key!r}: {exc}; the file is damaged") from None

    names = {}
    for key in (S.ATTR_BRANCHES, S.ATTR_FEATURES, S.ATTR_METRICS):
        value = meta[key]
        if (
            not isinstance(value, list) or not value or len(value) > 64
            or not all(isinstance(v, str) and v and len(v) <= 256 for v in value)
            or len(set(value)) != len(value)
        ):
            raise err(f"root attribute {key!r} is not a list of names; the file is damaged")
        names[key] = tuple(value)
    # The format fixes features and metrics (StatsData consumers index them by these names).
    for key, want in ((S.ATTR_FEATURES, S.STAT_FEATURES), (S.ATTR_METRICS, S.STAT_METRICS)):
        if names[key] != want:
            raise err(
                f"root attribute {key!r} is {list(names[key])}, format version {version} has {list(want)}; "
                "the file is damaged"
            )
    for key in (S.ATTR_TOOL_VERSION, S.ATTR_PROFILED_SCHEDULE):
        if not isinstance(meta[key], str):
            raise err(f"root attribute {key!r} is not a JSON string; the file is damaged")
    return Header(
        version=version,
        meta=meta,
        model=model,
        num_complete_runs=read_num_complete_runs(f, err),
        branches=names[S.ATTR_BRANCHES],
        features=names[S.ATTR_FEATURES],
        metrics=names[S.ATTR_METRICS],
    )


def _read_header_v1(f: h5py.File, err: Problem) -> Header:
    """Version 1 (one family only): model v1 upgraded, one transformer, partition ``"fixed"``."""
    meta = _raw_meta(f, err)
    meta[S.ATTR_GENERATION] = S.upgrade_generation_v1(meta[S.ATTR_GENERATION])
    meta[S.ATTR_MATCHING] = upgrade_matching_v1(meta[S.ATTR_MATCHING])
    return _header(f, err, 1, meta, v1_model=True)


def _read_header_v2(f: h5py.File, err: Problem) -> Header:
    return _header(f, err, 2, _raw_meta(f, err), v1_model=False)


#: The reader of each format version this asymrnr reads: root attributes -> version-2 ``Header``. (The
#: datasets of versions 1 and 2 are the same; a version that changes them registers its own here.)
READERS: dict[int, Callable[[h5py.File, Problem], Header]] = {1: _read_header_v1, 2: _read_header_v2}
assert tuple(sorted(READERS)) == S.SUPPORTED_READ_VERSIONS


# --------------------------------------------------------------------------------------------------
# Datasets: shapes, dtypes and sizes before anything is read
# --------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    steps: int
    blocks: int
    shared: dict[str, np.ndarray]  # shared axes, read (they are tiny and checked first)
    datasets: dict[str, h5py.Dataset]  # per-run dataset path -> dataset, checked


def _dataset(f: h5py.File, ds_path: str, err: Problem) -> h5py.Dataset:
    ds = f.get(ds_path)  # check_contents ran: every link is a hard link inside the file
    if not isinstance(ds, h5py.Dataset):
        raise err(
            f"lacks dataset {ds_path!r} (missing or unreadable); the file is incomplete, damaged, or was not "
            "written by asymrnr"
        )
    return ds


def _dtype_ok(ds: h5py.Dataset, want: str) -> bool:
    dt = ds.dtype
    if want == "str":
        return h5py.check_string_dtype(dt) is not None and dt.itemsize <= 1 << 20
    if want == "int":
        return dt.kind in "iu" and dt.itemsize <= 8
    return dt.kind == "f" and dt.itemsize <= 8


def _check_stored(ds: h5py.Dataset, ds_path: str, n: int, err: Problem) -> None:
    """The first ``n`` runs must be backed by bytes in the file (no fill values, no decompression bomb)."""
    cell = math.prod(int(s) for s in ds.shape[1:])
    itemsize = 16 if ds.dtype.kind == "O" else int(ds.dtype.itemsize)
    need = n * cell * itemsize
    stored = int(ds.id.get_storage_size())
    if need > S.MAX_EXPANSION * stored + S.EXPANSION_SLACK_BYTES:
        raise err(
            f"dataset {ds_path!r} would give {_human_size(need)} for {n} run(s) but stores only "
            f"{_human_size(stored)} in the file (num_complete_runs or the shapes claim data the file does not "
            "hold); the file is damaged or crafted"
        )


def check_datasets(f: h5py.File, header: Header, err: Problem) -> Layout:
    """Check every dataset a read of ``header.num_complete_runs`` runs touches; read only the shared axes."""
    n, version = header.num_complete_runs, header.version
    shared = {}
    for name, want in S.SHARED_AXES:
        ds = _dataset(f, name, err)
        if ds.shape != np.shape(want) or not _dtype_ok(ds, "float"):
            raise err(
                f"dataset {name!r} does not hold the format version {version} values (shape {ds.shape}); "
                "the file is damaged"
            )
        values = np.asarray(ds[()], dtype=np.float64)
        if not np.allclose(values, want, rtol=S.SHARED_AXES_RTOL, atol=0):
            raise err(f"dataset {name!r} does not hold the format version {version} values; the file is damaged")
        shared[name] = values

    branches, features, metrics = header.branches, header.features, header.metrics
    datasets: dict[str, h5py.Dataset] = {}

    def per_run(ds_path: str, trailing: tuple[int | None, ...], axes: Sequence[str], dtype: str) -> h5py.Dataset:
        ds = _dataset(f, ds_path, err)
        shape = ds.shape
        if len(shape) != 1 + len(trailing) or shape[0] < n or any(
            t is not None and s != t for s, t in zip(shape[1:], trailing)
        ):
            sizes = (f">={n}", *("?" if t is None else t for t in trailing))
            want = ", ".join(f"{a}={t}" for a, t in zip(("run", *axes), sizes))
            raise err(
                f"dataset {ds_path!r} has shape {shape}, expected [{want}] (num_complete_runs={n}); the file is damaged"
            )
        if not _dtype_ok(ds, dtype):
            raise err(f"dataset {ds_path!r} has dtype {ds.dtype}, expected {dtype}; the file is damaged")
        datasets[ds_path] = ds
        return ds

    first = per_run(
        f"{S.GROUP_RUNS}/{S.DS_SIM_MEAN}/{metrics[0]}", (len(branches), None, None, len(features)), S.CELL_AXES, "float"
    )
    steps, blocks = int(first.shape[2]), int(first.shape[3])
    if not (1 <= steps <= S.MAX_STEPS and 1 <= blocks <= S.MAX_BLOCKS):
        raise err(f"dataset {first.name!r} holds {steps} steps and {blocks} blocks; the file is damaged")
    meta = header.meta
    declared_steps = S.positive_int_or_none(meta[S.ATTR_GENERATION].get(S.GEN_NUM_STEPS))
    for key, what, declared, actual in (
        (S.ATTR_MODEL, "num_blocks", header.model.num_blocks, blocks),
        (S.ATTR_GENERATION, "num_steps", declared_steps, steps),
        (S.ATTR_GENERATION, f"len({S.GEN_STEP_TRANSFORMER})", _len_or_none(meta[S.ATTR_GENERATION]), steps),
    ):
        if declared not in (None, actual):
            raise err(f"{key}[{what!r}] is {declared} but the datasets hold {actual}; the file is damaged")

    cell = (len(branches), steps, blocks, len(features))
    per_run(f"{S.GROUP_RUNS}/{S.DS_PROMPTS}", (), (), "str")
    per_run(f"{S.GROUP_RUNS}/{S.DS_SEEDS}", (), (), "int")
    per_run(f"{S.GROUP_RUNS}/{S.DS_TIMESTEPS}", (steps,), ("step",), "float")
    extra = {"quantile": len(shared[S.DS_QUANTILE_LEVELS]), "rate": len(shared[S.DS_RATE_LEVELS]),
             "norm_bin": len(shared[S.DS_NORM_BIN_EDGES]) - 1}
    for spec in S.ARRAYS:
        trailing = cell + ((extra[spec.extra_axis],) if spec.extra_axis else ())
        for _, ds_path in S.dataset_paths(spec, metrics):
            per_run(ds_path, trailing, S.axes_of(spec), "int" if spec.dtype.kind == "i" else "float")
    for ds_path, ds in datasets.items():
        _check_stored(ds, ds_path, n, err)
    return Layout(steps=steps, blocks=blocks, shared=shared, datasets=datasets)


def _len_or_none(generation: dict) -> int | None:
    per_step = generation.get(S.GEN_STEP_TRANSFORMER)
    return None if per_step is None else len(per_step)


# --------------------------------------------------------------------------------------------------
# load_stats
# --------------------------------------------------------------------------------------------------


def check_format_and_version(f: h5py.File, p: Path, err: Problem) -> int:
    """The file's version, after checking ``format``; refuses versions this asymrnr does not read."""
    fmt = read_format(f, err)
    if fmt != S.STATS_FORMAT_NAME:
        what = "it has no 'format' attribute" if fmt is None else f"its 'format' attribute is {fmt!r:.60}"
        raise StatsFormatError(
            f"{p} is not an asymrnr statistics file ({what}, expected {S.STATS_FORMAT_NAME!r}); pass the .h5 "
            "file written by `asymrnr profile --out`"
        )
    version, raw = read_version(f, err)
    if version not in READERS:
        from ... import __version__

        readable = ", ".join(str(v) for v in S.SUPPORTED_READ_VERSIONS)
        if version is not None and version > max(S.SUPPORTED_READ_VERSIONS):
            fix = "it was written by a newer asymrnr: upgrade asymrnr (pip install -U asymrnr) to read it"
        else:
            fix = "re-run `asymrnr profile` with this asymrnr to write a readable file"
        raise StatsFormatError(
            f"{p} has stats format version {raw!r:.40}; this asymrnr ({__version__}) reads "
            f"stats format version(s) {readable}; {fix}"
        )
    return version


def load_stats(path: str | os.PathLike) -> StatsData:
    """Read a statistics file written by ``StatsWriter`` (format version 1 or 2); only its complete runs.

    A version-1 file is upgraded in memory (``StatsData.model`` is a version-2 model description, its
    matching partition ``"fixed"``); ``StatsData.format_version`` stays the file's version. Raises
    ``StatsFormatError`` (naming the path and the fix) for a missing file, a file that is not a regular
    HDF5 file, a truncated or corrupt file, a file that is not an asymrnr statistics file, an unknown format
    version, a file that links outside itself, sizes it does not back, missing datasets, and a file without
    any complete run.
    """
    p = Path(path)
    err = Problem(str(p))
    f = _open_for_reading(p)
    try:
        return _read(f, p, err)
    except StatsFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeError, MemoryError) as exc:
        logger.debug("reading %s failed", p, exc_info=True)
        raise StatsFormatError(
            f"cannot read {p}: the HDF5 file is truncated or corrupt ({type(exc).__name__}: {exc}); {REWRITE_FIX}"
        ) from None
    finally:
        try:
            f.close()
        except Exception:  # a corrupt file may fail to close cleanly; nothing else to do
            logger.debug("closing %s failed", p, exc_info=True)


def _read(f: h5py.File, p: Path, err: Problem) -> StatsData:
    check_contents(f, err)
    version = check_format_and_version(f, p, err)
    header = READERS[version](f, err)
    n = header.num_complete_runs
    if n == 0:
        raise err(
            "holds no complete run: the profiler did not finish a generation (it was interrupted or failed "
            "before the first run was written)"
        )
    layout = check_datasets(f, header, err)
    ds = layout.datasets

    prompts = [str(s) for s in ds[f"{S.GROUP_RUNS}/{S.DS_PROMPTS}"].asstr()[:n]]
    seeds = np.asarray(ds[f"{S.GROUP_RUNS}/{S.DS_SEEDS}"][:n], dtype=S.SEEDS_DTYPE)
    timesteps = np.asarray(ds[f"{S.GROUP_RUNS}/{S.DS_TIMESTEPS}"][:n], dtype=S.TIMESTEPS_DTYPE)
    arrays: dict[str, Any] = {}
    for spec in S.ARRAYS:
        paths = S.dataset_paths(spec, header.metrics)
        values = {m: np.asarray(ds[ds_path][:n], dtype=spec.dtype) for m, ds_path in paths}
        arrays[spec.name] = values if spec.per_metric else values[None]

    meta = header.meta
    schedule_tag = meta[S.ATTR_PROFILED_SCHEDULE]
    return StatsData(
        format_version=header.version,
        tool_version=str(meta[S.ATTR_TOOL_VERSION]),
        model=meta[S.ATTR_MODEL],
        generation=meta[S.ATTR_GENERATION],
        matching=meta[S.ATTR_MATCHING],
        profiled_schedule=str(schedule_tag) if schedule_tag else None,
        branches=header.branches,
        features=header.features,
        metrics=header.metrics,
        quantile_levels=layout.shared[S.DS_QUANTILE_LEVELS],
        rate_levels=layout.shared[S.DS_RATE_LEVELS],
        norm_bin_edges=layout.shared[S.DS_NORM_BIN_EDGES],
        prompts=prompts,
        seeds=seeds,
        timesteps=timesteps,
        path=str(p),
        model_description=header.model,
        **arrays,
    )


# --------------------------------------------------------------------------------------------------
# Human summary
# --------------------------------------------------------------------------------------------------


def _human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def _shorten(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _transformer_bits(gen: dict, num_steps: int) -> str | None:
    names = gen.get(S.GEN_TRANSFORMERS) or list(S.DEFAULT_TRANSFORMERS)
    per_step = gen.get(S.GEN_STEP_TRANSFORMER)
    if len(names) <= 1 and per_step is None:
        return None
    if per_step is None:
        return f"{names[0]} (all {num_steps} steps)"
    counts = [sum(1 for i in per_step if i == k) for k in range(len(names))]
    return ", ".join(f"{name} ({c} step{'s' if c != 1 else ''})" for name, c in zip(names, counts))


def describe_stats(path_or_data: str | os.PathLike | StatsData, *, max_prompts: int = 5) -> str:
    """A short human summary of a statistics file (what ``asymrnr inspect stats.h5`` prints)."""
    data = path_or_data if isinstance(path_or_data, StatsData) else load_stats(path_or_data)
    size = "unknown size"
    if data.path is not None and os.path.isfile(data.path):
        size = _human_size(os.path.getsize(data.path))
    model, gen = data.model, data.generation
    title = data.path if data.path is not None else "statistics (in memory)"

    model_bits = [str(model.get("transformer_class", "unknown model"))]
    if model.get("family"):
        model_bits[0] += f" ({model['family']})"
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
    ]
    transformers = _transformer_bits(gen, data.num_steps)
    if transformers:
        lines.append(f"  transformers: {_shorten(transformers, 84)}")
    lines += [
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


__all__ = ["READERS", "Header", "Layout", "Problem", "check_contents", "check_datasets", "load_stats", "describe_stats"]
