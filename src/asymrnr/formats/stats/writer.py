"""Writing statistics files (format version 2): ``StatsWriter``.

Each ``write_run`` appends the run to every per-run dataset, flushes, and only then raises
``num_complete_runs`` and flushes again, on a working copy that then atomically replaces the file
(``os.replace``): whenever the process dies, the file at ``path`` is a cleanly closed HDF5 file whose
complete runs all load.

Safety (docs/stats-format.md, "Safety"): the working copy is a new file with an unpredictable name in the
target folder, created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``), so nothing planted at a temporary
path is ever followed or overwritten; HDF5 writes to it through that file descriptor only. The output path
must be a regular file (or absent). Before appending, the existing file is checked like a reader checks it
(no soft, external or user-defined links, no external raw storage, no virtual datasets, sizes backed by
bytes), and so is every working copy before it is edited.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from ...errors import StatsFormatError
from . import spec as S
from .reader import READERS, Problem, check_contents, check_datasets, file_kind, is_hdf5, open_error_reason
from .reader import read_format, read_json_attr, read_num_complete_runs, read_version
from .spec import RunStats

logger = logging.getLogger(__name__)

_APPEND_FIX = "write to another file (a new --out) or overwrite it with mode='w'"
_TMP_ATTEMPTS = 100


class StatsWriter:
    """Writes the statistics of one generation after another into one HDF5 file (format version 2).

    ``StatsWriter(path, *, model, generation, matching, branches, profiled_schedule=None,
    tool_version=None, mode="w")``:

    - ``model``: ``ModelDescription`` (version 2) or its ``to_dict()``; a version-1 description (one family
      only: int ``patch_size`` plus ``patch_size_t``, ``text_first``) is upgraded.
    - ``generation``: dict of generation settings (height, width, num_frames, num_steps, guidance_scale,
      scheduler_class, pipeline_class, ...; the per-run keys prompt/seed are dropped, they are stored per
      run) with ``transformers`` (default ``["transformer"]``), ``step_transformer`` (the index into
      ``transformers`` of every step, or None: the first one runs every step) and ``scheduler_config``
      (a JSON object, default ``{}``).
    - ``matching``: dict (or ``MatchingSettings``) with stride, seed, granularity and ``partition``
      (``"window"`` or ``"fixed"``; ``"fixed"`` when absent, as in version 1).
    - ``profiled_schedule``: tag (or object with ``.tag``) of a schedule that was active while profiling,
      else None; ``tool_version``: defaults to ``asymrnr.__version__``; ``branches``: ``("cond", "uncond")``
      with CFG, ``("cond",)`` without.
    - ``mode="w"`` creates or overwrites the file (at once, with zero runs). ``mode="a"`` appends to an
      existing version-2 stats file when its model, generation settings, matching settings, profiled
      schedule and branches all match (else ``StatsFormatError`` naming the key and both values); it
      creates the file when absent, and refuses a version-1 file (write a new one with mode "w").

    Crash safety: ``write_run`` appends the run to every dataset, flushes, raises ``num_complete_runs``,
    flushes and closes -- on a working copy that then atomically replaces ``path`` (``os.replace``). The
    file at ``path`` is therefore always a cleanly closed HDF5 file holding only complete runs, whenever
    the process dies (even inside an HDF5 flush, which can leave an in-place-appended file unreadable). The
    copy costs one file copy per run, small next to a generation.

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
        self._closed = False

        if tool_version is None:
            from ... import __version__ as tool_version  # noqa: N811
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
                f"e.g. {S.BRANCHES_CFG!r} with CFG or {S.BRANCHES_NO_CFG!r} without"
            )
        try:
            model_desc = S.model_description(model, upgrade_v1=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"StatsWriter model=: {exc}") from None
        checked = {}
        for what, value, check in (
            ("generation", generation, S.normalize_generation),
            ("matching", matching, S.normalize_matching),
        ):
            try:
                checked[what] = check(S.as_plain_dict(value, what))
            except ValueError as exc:
                raise ValueError(f"StatsWriter {what}=: {exc}") from None

        self._meta: dict[str, Any] = {
            S.ATTR_MODEL: model_desc.to_dict(),
            S.ATTR_GENERATION: checked["generation"],
            S.ATTR_MATCHING: checked["matching"],
            S.ATTR_TOOL_VERSION: str(tool_version),
            S.ATTR_PROFILED_SCHEDULE: profiled_schedule or "",
            S.ATTR_BRANCHES: list(branches),
            S.ATTR_FEATURES: list(S.STAT_FEATURES),
            S.ATTR_METRICS: list(S.STAT_METRICS),
        }
        self.model = model_desc
        self.branches = branches
        self._num_runs = 0
        gen = self._meta[S.ATTR_GENERATION]
        per_step = gen[S.GEN_STEP_TRANSFORMER]
        self._num_steps: int | None = S.positive_int_or_none(gen.get(S.GEN_NUM_STEPS)) or (
            len(per_step) if per_step else None
        )
        self._num_blocks: int | None = model_desc.num_blocks

        kind = self._output_kind()
        if mode == "a" and kind == "file":
            self._open_append()
        else:
            self._create()

    # ---- opening ----------------------------------------------------------------------------------

    def _output_kind(self) -> str | None:
        """Refuse an output path that exists and is not a regular file; ``"file"`` or None (absent)."""
        kind = file_kind(self.path)
        if kind == "directory":
            raise StatsFormatError(f"cannot write statistics to {self.path}: it is a directory; pass a file path")
        if kind not in (None, "file"):
            raise StatsFormatError(
                f"cannot write statistics to {self.path}: it is a {kind}, not a regular file; pass the path of a "
                "regular file (a new --out)"
            )
        return kind

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StatsFormatError(f"cannot create the directory of {self.path}: {exc}") from None

        def header(f: h5py.File) -> None:
            f.attrs[S.ATTR_FORMAT] = S.STATS_FORMAT_NAME
            f.attrs[S.ATTR_VERSION] = np.int64(S.STATS_FORMAT_VERSION)
            for key in S.JSON_ATTRS:
                f.attrs[key] = S.dumps(self._meta[key])
            for name, values in S.SHARED_AXES:
                f.create_dataset(name, data=np.asarray(values, dtype=np.float64))
            f.require_group(S.GROUP_RUNS)
            f.attrs[S.ATTR_NUM_COMPLETE_RUNS] = np.int64(0)

        self._commit(header, copy_existing=False)
        logger.debug("created statistics file %s (branches %s)", self.path, self.branches)

    def _open_append(self) -> None:
        p = self.path
        err = Problem(f"cannot append statistics to {p}", _APPEND_FIX)
        if not is_hdf5(p):
            raise err("it is not an HDF5 file")
        try:
            f = h5py.File(p, "r")
        except OSError as exc:
            raise err(open_error_reason(exc)) from None
        try:
            with f:
                check_contents(f, err)  # before anything else is read, and long before a byte is written
                self._check_append_compatible(f, err)
        except StatsFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeError) as exc:
            raise err(f"the HDF5 file is truncated or corrupt ({exc})") from None
        logger.info("appending to %s, which holds %d complete run(s)", p, self._num_runs)

    def _check_append_compatible(self, f: h5py.File, err: Problem) -> None:
        p = self.path
        fmt = read_format(f, err)
        if fmt != S.STATS_FORMAT_NAME:
            what = "has no 'format' attribute" if fmt is None else f"has format {fmt!r:.60}"
            raise err(f"it is not an asymrnr statistics file (it {what}, expected {S.STATS_FORMAT_NAME!r})")
        version, raw = read_version(f, err)
        if version != S.STATS_FORMAT_VERSION:
            differs = f"version differs (file: {raw!r:.40}, this asymrnr writes: {S.STATS_FORMAT_VERSION})"
            if version is not None and version < S.STATS_FORMAT_VERSION and version in READERS:
                raise StatsFormatError(
                    f"cannot append to {p}: {differs}: a file of stats format version {version} can still be read, "
                    "but runs are only appended to a file of the version this asymrnr writes; write a new file "
                    "(a new --out, or overwrite it with mode='w')"
                )
            if version is not None and version > S.STATS_FORMAT_VERSION:
                raise StatsFormatError(
                    f"cannot append to {p}: {differs}: it was written by a newer asymrnr; upgrade asymrnr "
                    f"(pip install -U asymrnr) to append to it, or {_APPEND_FIX}"
                )
            raise StatsFormatError(f"cannot append to {p}: {differs}; {_APPEND_FIX}")

        # Compare what the file says (raw, as a reader of this version sees it) with this writer's settings.
        header = READERS[version](f, err)
        diffs: list[tuple[str, Any, Any]] = []
        for key in S.APPEND_MUST_MATCH:
            diffs += S.differences(header.meta[key], self._meta[key], key)
        if diffs:
            listed = "; ".join(f"{k} differs (file: {fv!r}, this profiler: {nv!r})" for k, fv, nv in diffs)
            raise StatsFormatError(
                f"cannot append to {p}: {listed}. Statistics made with different settings must not be "
                f"mixed in one file; {_APPEND_FIX}"
            )
        file_tool = read_json_attr(f, S.ATTR_TOOL_VERSION, err)
        if file_tool != self._meta[S.ATTR_TOOL_VERSION]:
            logger.warning(
                "%s was written by asymrnr %s; appending with asymrnr %s (the file keeps its tool_version)",
                p,
                file_tool,
                self._meta[S.ATTR_TOOL_VERSION],
            )
        self._num_runs = read_num_complete_runs(f, err)
        if self._num_runs == 0:
            return  # a partial first run (if any) is replaced by the next write_run
        # The complete runs must be there, with the sizes the attributes claim, as a reader checks them.
        layout = check_datasets(f, header, err)
        for ds_path, ds in layout.datasets.items():
            if ds.maxshape[0] is not None:
                raise err(f"dataset {ds_path!r} cannot grow (its run axis has a fixed size); the file is damaged")
            if ds.shape[0] > self._num_runs:
                logger.warning(
                    "%s: an incomplete run left by an interrupted profiler will be replaced (%s)", p, ds_path
                )
        self._num_steps, self._num_blocks = layout.steps, layout.blocks

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
            found = S.as_int(f.attrs.get(S.ATTR_NUM_COMPLETE_RUNS))
            if found != n:
                raise StatsFormatError(
                    f"{self.path} changed while this profiler was writing it (it now holds {found} complete "
                    f"runs, this writer wrote {n}); let one process write a statistics file at a time"
                )
            for ds_path, (value, axes) in values.items():
                self._append(f, ds_path, value, axes, n)
            f.flush()
            f.attrs[S.ATTR_NUM_COMPLETE_RUNS] = np.int64(n + 1)  # last: marks the run complete
            f.flush()

        self._commit(append, copy_existing=True)
        self._num_runs = n + 1
        self._num_steps, self._num_blocks = steps, blocks
        logger.debug("%s: wrote run %d (prompt %r, seed %d)", self.path, n, run.prompt, int(run.seed))

    def _commit(self, edit: Callable[[h5py.File], None], *, copy_existing: bool) -> None:
        """Apply ``edit(h5py.File)`` to a new working copy of the file, then atomically replace the file.

        The working copy is created exclusively under an unpredictable name, and HDF5 reaches it only
        through the descriptor this creates: a file or symlink planted at any name is never followed.
        """
        self._output_kind()
        fd, tmp = _create_exclusive(self.path)
        try:
            with os.fdopen(fd, "r+b") as fh:
                if copy_existing:
                    _copy_regular_file(self.path, fh)
                    fh.seek(0)
                    with h5py.File(fh, "r+") as f:
                        # The file may have changed since it was opened: check the copy before editing it.
                        check_contents(f, Problem(f"cannot append statistics to {self.path}", _APPEND_FIX))
                        edit(f)
                else:
                    with h5py.File(fh, "w") as f:
                        edit(f)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
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
        if ds is not None and (not isinstance(ds, h5py.Dataset) or tuple(ds.shape[1:]) != cell):
            if n > 0:  # _validate checks shapes against the file, so this means a damaged file
                raise StatsFormatError(
                    f"{self.path}: {ds_path!r} is not a dataset with cells of shape {cell}; "
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
            chunks = S.chunks(cell, value.dtype.itemsize) if value.ndim >= 4 else (1, *cell)
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
        ds.attrs[S.ATTR_AXES] = ",".join(("run", *axes))
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
            first = run.sim_mean.get(S.STAT_METRICS[0]) if isinstance(run.sim_mean, Mapping) else None
            shape = np.shape(first) if first is not None else ()
            if len(shape) != len(S.CELL_AXES):
                raise ValueError(
                    f"RunStats.sim_mean[{S.STAT_METRICS[0]!r}] must be an array [branch, step, block, feature], "
                    f"got shape {shape}"
                )
            steps = steps or int(shape[1])
            blocks = blocks or int(shape[2])
        cell = (len(self.branches), steps, blocks, len(S.STAT_FEATURES))
        context = (
            f"the file {self.path} holds branches {self.branches}, {steps} steps, {blocks} blocks, "
            f"features {S.STAT_FEATURES}"
        )

        out: dict[str, tuple[np.ndarray | str, tuple[str, ...]]] = {
            f"{S.GROUP_RUNS}/{S.DS_PROMPTS}": (run.prompt, ()),
            f"{S.GROUP_RUNS}/{S.DS_SEEDS}": (np.int64(run.seed), ()),
        }
        if run.timesteps is None:
            timesteps = np.full(steps, np.nan)
        else:
            timesteps = np.asarray(run.timesteps, dtype=np.float64)
            if timesteps.shape != (steps,):
                raise ValueError(f"RunStats.timesteps has shape {timesteps.shape}, expected ({steps},); {context}")
        out[f"{S.GROUP_RUNS}/{S.DS_TIMESTEPS}"] = (timesteps, ("step",))

        for spec in S.ARRAYS:
            raw = getattr(run, spec.name)
            axes = S.axes_of(spec)
            expected = cell + ((S.extra_len(spec.extra_axis),) if spec.extra_axis else ())
            if spec.per_metric:
                if not isinstance(raw, Mapping) or set(raw) != set(S.STAT_METRICS):
                    got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
                    raise ValueError(f"RunStats.{spec.name} must be a dict with keys {list(S.STAT_METRICS)}, got {got}")
                items = [(m, raw[m]) for m in S.STAT_METRICS]
            else:
                items = [(None, raw)]
            for (metric, value), (_, ds_path) in zip(items, S.dataset_paths(spec, S.STAT_METRICS)):
                label = f"RunStats.{spec.name}" + (f"[{metric!r}]" if metric else "")
                arr = np.asarray(value)
                if arr.shape != expected:
                    raise ValueError(
                        f"{label} has shape {arr.shape}, expected {expected} [{', '.join(axes)}]: "
                        f"{S.describe_shape_mismatch(arr.shape, expected, axes)}; {context}"
                    )
                if spec.dtype.kind == "i":
                    arr = S.as_counts(arr, label)
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


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _create_exclusive(path: Path) -> tuple[int, Path]:
    """A new, empty working file next to ``path``: ``.<name>.<random>.tmp``, created with O_EXCL.

    Like ``tempfile.mkstemp`` (exclusive creation, never through a symlink), but with the umask's
    permissions, as the file it replaces would get.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    stem = path.name[:200]
    for _ in range(_TMP_ATTEMPTS):
        tmp = path.with_name(f".{stem}.{secrets.token_hex(8)}{S.TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise StatsFormatError(f"cannot create a working copy of {path}: {_TMP_ATTEMPTS} random names were all taken")


def _copy_regular_file(src: Path, dst: BinaryIO) -> None:
    """Copy ``src`` into ``dst``, refusing (without blocking) anything but a regular file."""
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StatsFormatError(f"cannot append statistics to {src}: it is not a regular file; {_APPEND_FIX}")
        shutil.copyfileobj(fh, dst, 1 << 20)
    dst.flush()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform or file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["StatsWriter"]
