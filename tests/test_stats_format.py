"""Tests of the statistics HDF5 file (asymrnr.formats.stats, also imported as asymrnr.profiler.stats_format):
round trip, append, crashes, bad files, version 1 upgrade, and hostile files (links, external storage,
virtual datasets, claimed sizes, planted temp paths, non-regular outputs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py  # tests craft foreign / damaged files; the library imports h5py only in asymrnr.formats.stats
import numpy as np
import pytest

from asymrnr.errors import AsymRnRError, StatsFormatError
from asymrnr.formats.descriptions import ModelDescription
from asymrnr.formats.stats import spec as stats_spec
from asymrnr.profiler import stats_format as sf
from asymrnr.profiler.stats_format import (
    NORM_BIN_EDGES,
    QUANTILE_LEVELS,
    RATE_LEVELS,
    STAT_FEATURES,
    STAT_METRICS,
    RunStats,
    StatsData,
    StatsWriter,
    describe_stats,
    load_stats,
)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "stats_v1_golden.h5"
GOLDEN_V2 = DATA / "stats_v2_golden.h5"
SRC = Path(sf.__file__).resolve().parents[1]

S, B = 5, 3  # steps, blocks of the synthetic files
CFG = ("cond", "uncond")
MODEL = {  # a version-2 ModelDescription
    "family": "cogvideox",
    "transformer_class": "CogVideoXTransformer3DModel",
    "num_blocks": B,
    "num_heads": 2,
    "head_dim": 8,
    "patch_size": (1, 2, 2),
    "latent_grid": (4, 6, 8),
    "rope": True,
    "text_len": 16,
    "text_layout": "first",
    "ffn_dim": 64,
}
GENERATION = {"height": 96, "width": 128, "num_frames": 13, "num_steps": S, "guidance_scale": 6.0,
              "scheduler_class": "CogVideoXDDIMScheduler", "prompt": "ignored", "seed": 1}
MATCHING = {"stride": (2, 2, 2), "seed": 0, "granularity": "joint"}
#: What version 2 adds to ``generation`` when the writer is not given it.
GENERATION_DEFAULTS = {"transformers": ["transformer"], "step_transformer": None, "scheduler_config": {}}


def make_run(rng: np.random.Generator, *, branches=CFG, steps=S, blocks=B, prompt="a cat", seed=0) -> RunStats:
    cell = (len(branches), steps, blocks, len(STAT_FEATURES))
    q, nr, nb = len(QUANTILE_LEVELS), len(RATE_LEVELS), len(NORM_BIN_EDGES) - 1

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    curves = {m: rand(*cell, nr) for m in STAT_METRICS}
    for c in curves.values():
        c[..., 17:] = np.nan  # past the ceiling
    same, corr = rng.random(cell).astype(np.float32), rand(*cell)
    same[:, 0] = corr[:, 0] = np.nan  # stability is undefined at step 0
    return RunStats(
        prompt=prompt,
        seed=seed,
        timesteps=np.sort(rng.uniform(0, 1000, steps))[::-1].copy(),
        sim_mean={m: rand(*cell) for m in STAT_METRICS},
        sim_quantiles={m: np.sort(rand(*cell, q), axis=-1) for m in STAT_METRICS},
        sim_rate_curve=curves,
        norm_quantiles=np.sort(np.abs(rand(*cell, q)), axis=-1),
        norm_hist=rng.integers(0, 500, (*cell, nb)),
        stability_same_dst=same,
        stability_corr=corr,
    )


def writer(path, *, mode="w", branches=CFG, model=MODEL, generation=GENERATION, matching=MATCHING,
           profiled_schedule=None) -> StatsWriter:
    return StatsWriter(path, model=model, generation=generation, matching=matching, branches=branches,
                       profiled_schedule=profiled_schedule, tool_version="9.9.9", mode=mode)


def write_file(path, runs, **kw) -> Path:
    with writer(path, **kw) as w:
        for run in runs:
            w.write_run(run)
    return Path(path)


def assert_run_equal(data: StatsData, r: int, run: RunStats) -> None:
    assert data.prompts[r] == run.prompt
    assert data.seeds[r] == run.seed
    np.testing.assert_array_equal(data.timesteps[r], run.timesteps)
    for name in ("sim_mean", "sim_quantiles", "sim_rate_curve"):
        got, want = getattr(data, name), getattr(run, name)
        assert set(got) == set(STAT_METRICS)
        for m in STAT_METRICS:
            np.testing.assert_array_equal(got[m][r], want[m], err_msg=f"{name}[{m}]")
    for name in ("norm_quantiles", "norm_hist", "stability_same_dst", "stability_corr"):
        np.testing.assert_array_equal(getattr(data, name)[r], getattr(run, name), err_msg=name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- constants ------------------------------------------------------------------------------------


def test_shared_axes_constants():
    assert RATE_LEVELS[0] == 0.05 and RATE_LEVELS[-1] == 0.95 and len(RATE_LEVELS) == 19
    np.testing.assert_allclose(np.diff(RATE_LEVELS), 0.05)
    assert QUANTILE_LEVELS[0] == 0.0 and QUANTILE_LEVELS[5] == 0.5 and QUANTILE_LEVELS[-1] == 1.0
    assert len(QUANTILE_LEVELS) == 11
    assert NORM_BIN_EDGES.shape == (71,)
    assert NORM_BIN_EDGES[0] == pytest.approx(1e-3) and NORM_BIN_EDGES[-1] == pytest.approx(1e4)
    np.testing.assert_allclose(np.diff(np.log10(NORM_BIN_EDGES)), 0.1)
    assert STAT_FEATURES == ("h", "q", "k", "v") and STAT_METRICS == ("euclidean", "cosine")


# ---- round trip -----------------------------------------------------------------------------------


def test_round_trip_two_runs_exact(tmp_path, rng):
    runs = [make_run(rng, prompt="a red fox in snow", seed=11), make_run(rng, prompt="猫 on a beach ✓", seed=-3)]
    path = write_file(tmp_path / "s.h5", runs, profiled_schedule="q50-kv70-abc123")
    data = load_stats(path)

    assert (data.num_runs, data.num_steps, data.num_blocks) == (2, S, B)
    for r, run in enumerate(runs):
        assert_run_equal(data, r, run)
    assert data.format_version == 2 and data.tool_version == "9.9.9"
    # JSON: tuples come back as lists; version 2 descriptions carry every field (defaults included)
    assert data.model == {**MODEL, "latent_grid": [4, 6, 8], "patch_size": [1, 2, 2], "cross_len": 0, "block_kinds": []}
    assert data.model_description == ModelDescription(**MODEL)
    assert data.generation == {**{k: v for k, v in GENERATION.items() if k not in ("prompt", "seed")},
                               **GENERATION_DEFAULTS}
    assert data.matching == {"stride": [2, 2, 2], "seed": 0, "granularity": "joint", "partition": "fixed"}
    assert data.profiled_schedule == "q50-kv70-abc123"
    assert data.branches == CFG and data.features == STAT_FEATURES and data.metrics == STAT_METRICS
    np.testing.assert_array_equal(data.quantile_levels, QUANTILE_LEVELS)
    np.testing.assert_array_equal(data.rate_levels, RATE_LEVELS)
    np.testing.assert_array_equal(data.norm_bin_edges, NORM_BIN_EDGES)
    assert data.sim_rate_curve["cosine"].shape == (2, 2, S, B, 4, 19)
    assert data.norm_hist.shape == (2, 2, S, B, 4, 70) and data.norm_hist.dtype == np.int64
    assert data.sim_mean["euclidean"].dtype == np.float32
    assert data.seeds.dtype == np.int64 and data.timesteps.shape == (2, S)
    assert np.isnan(data.stability_corr[:, :, 0]).all()


def test_no_cfg_single_branch(tmp_path, rng):
    runs = [make_run(rng, branches=("cond",), seed=s) for s in range(2)]
    data = load_stats(write_file(tmp_path / "nocfg.h5", runs, branches=("cond",)))
    assert data.branches == ("cond",)
    assert data.stability_same_dst.shape == (2, 1, S, B, 4)
    assert data.profiled_schedule is None
    for r, run in enumerate(runs):
        assert_run_equal(data, r, run)
    assert "(no CFG)" in describe_stats(data)


def test_float64_input_is_stored_as_float32_and_float_counts_as_int(tmp_path, rng):
    run = make_run(rng)
    run.sim_mean = {m: v.astype(np.float64) + 1e-9 for m, v in run.sim_mean.items()}
    run.norm_hist = run.norm_hist.astype(np.float64)
    data = load_stats(write_file(tmp_path / "s.h5", [run]))
    assert data.sim_mean["cosine"].dtype == np.float32
    np.testing.assert_array_equal(data.sim_mean["cosine"][0], run.sim_mean["cosine"].astype(np.float32))
    np.testing.assert_array_equal(data.norm_hist[0], run.norm_hist)


def test_file_layout_matches_docs(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "asymrnr-stats" and f.attrs["version"] == 2
        assert f.attrs["num_complete_runs"] == 1
        for key in ("model", "generation", "matching", "tool_version", "profiled_schedule",
                    "branches", "features", "metrics"):
            assert isinstance(json.loads(f.attrs[key]), (dict, list, str)), key
        assert json.loads(f.attrs["profiled_schedule"]) == ""
        for name, n in (("quantile_levels", 11), ("rate_levels", 19), ("norm_bin_edges", 71)):
            assert f[name].shape == (n,)
        expected = {
            "runs/prompts": (1,), "runs/seeds": (1,), "runs/timesteps": (1, S),
            "runs/sim_mean/euclidean": (1, 2, S, B, 4), "runs/sim_quantiles/cosine": (1, 2, S, B, 4, 11),
            "runs/sim_rate_curve/euclidean": (1, 2, S, B, 4, 19), "runs/norm_quantiles": (1, 2, S, B, 4, 11),
            "runs/norm_hist": (1, 2, S, B, 4, 70), "runs/stability_same_dst": (1, 2, S, B, 4),
            "runs/stability_corr": (1, 2, S, B, 4),
        }
        for name, shape in expected.items():
            ds = f[name]
            assert ds.shape == shape, name
            assert ds.maxshape[0] is None and ds.chunks[0] == 1, name
            assert ds.attrs["axes"].split(",")[0] == "run", name
        assert f["runs/sim_quantiles/cosine"].attrs["axes"] == "run,branch,step,block,feature,quantile"
        assert h5py.check_string_dtype(f["runs/prompts"].dtype).encoding == "utf-8"
        assert json.loads(f.attrs["model"]) == ModelDescription(**MODEL).to_dict()
    assert not Path(str(path) + ".tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no working copy left behind


def test_only_formats_stats_imports_h5py():
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.parent != SRC / "formats" / "stats" and re.search(r"^\s*(import h5py|from h5py)", p.read_text(), re.M)
    ]
    assert offenders == []
    spec = (SRC / "formats" / "stats" / "spec.py").read_text()
    assert not re.search(r"^\s*(import h5py|from h5py)", spec, re.M)
    # the constants load without HDF5 (the profiler's binning and the planner need only them)
    code = "import sys, asymrnr.formats.stats as s; s.RATE_LEVELS; assert 'h5py' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    assert proc.returncode == 0, proc.stderr


def test_old_import_paths_keep_working():
    import asymrnr.profiler
    from asymrnr.formats import stats

    assert asymrnr.profiler.load_stats is stats.load_stats is load_stats
    assert asymrnr.profiler.StatsWriter is StatsWriter is stats.StatsWriter
    assert sf.RunStats is stats.RunStats and sf.describe_stats is stats.describe_stats
    assert sf.STATS_FORMAT_VERSION == 2 and sf.SUPPORTED_READ_VERSIONS == (1, 2)


# ---- validation of RunStats -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: setattr(r, "norm_hist", r.norm_hist[:, :, :2]),
         r"norm_hist has shape .*block axis is 2, expected 3"),
        (lambda r: setattr(r, "stability_corr", r.stability_corr[:, :4]), r"step axis is 4, expected 5"),
        (lambda r: setattr(r, "norm_quantiles", r.norm_quantiles[:1]), r"branch axis is 1, expected 2"),
        (lambda r: setattr(r, "timesteps", r.timesteps[:3]), r"timesteps has shape \(3,\), expected \(5,\)"),
        (lambda r: r.sim_mean.pop("cosine"), r"sim_mean must be a dict with keys \['euclidean', 'cosine'\]"),
        (lambda r: setattr(r, "norm_hist", r.norm_hist + 0.5), r"norm_hist must hold whole token counts"),
        (lambda r: setattr(r, "norm_hist", -r.norm_hist - 1), r"non-negative"),
        (lambda r: setattr(r, "sim_rate_curve", {m: v[..., :18] for m, v in r.sim_rate_curve.items()}),
         r"rate axis is 18, expected 19"),
    ],
)
def test_write_run_rejects_bad_shapes(tmp_path, rng, mutate, match):
    with writer(tmp_path / "s.h5") as w:
        w.write_run(make_run(rng))
        bad = make_run(rng)
        mutate(bad)
        with pytest.raises(ValueError, match=match):
            w.write_run(bad)
        assert w.num_runs == 1
    assert load_stats(tmp_path / "s.h5").num_runs == 1


def test_steps_and_blocks_checked_against_metadata(tmp_path, rng):
    with writer(tmp_path / "s.h5") as w, pytest.raises(ValueError, match=r"block axis is 4, expected 3.*3 blocks"):
        w.write_run(make_run(rng, blocks=4))


def test_write_after_close_fails(tmp_path, rng):
    w = writer(tmp_path / "s.h5")
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write_run(make_run(rng))


# ---- append / overwrite ---------------------------------------------------------------------------


def test_append_adds_runs_in_order(tmp_path, rng):
    runs = [make_run(rng, prompt=f"p{i}", seed=i) for i in range(3)]
    path = write_file(tmp_path / "s.h5", runs[:1])
    gen2 = {**GENERATION, "prompt": "another prompt", "seed": 99}  # per-run keys may differ
    with writer(path, mode="a", generation=gen2) as w:
        assert w.num_runs == 1
        w.write_run(runs[1])
        w.write_run(runs[2])
    data = load_stats(path)
    assert data.prompts == ["p0", "p1", "p2"]
    for r, run in enumerate(runs):
        assert_run_equal(data, r, run)


def test_append_mode_creates_missing_file(tmp_path, rng):
    path = write_file(tmp_path / "sub" / "new.h5", [make_run(rng)], mode="a")
    assert load_stats(path).num_runs == 1


@pytest.mark.parametrize(
    "override, key, old, new",
    [
        ({"model": {**MODEL, "num_blocks": 4}}, "model.num_blocks", "3", "4"),
        ({"generation": {**GENERATION, "guidance_scale": 7.5}}, "generation.guidance_scale", "6.0", "7.5"),
        ({"generation": {**GENERATION, "height": 480}}, "generation.height", "96", "480"),
        ({"matching": {**MATCHING, "stride": (1, 2, 2)}}, "matching.stride", "[2, 2, 2]", "[1, 2, 2]"),
        ({"branches": ("cond",)}, "branches", "['cond', 'uncond']", "['cond']"),
        ({"profiled_schedule": "q50-abc"}, "profiled_schedule", "''", "'q50-abc'"),
    ],
)
def test_append_mismatch_names_key_values_and_fix(tmp_path, rng, override, key, old, new):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with pytest.raises(StatsFormatError) as exc:
        writer(path, mode="a", **override)
    msg = str(exc.value)
    assert f"{key} differs (file: {old}, this profiler: {new})" in msg
    assert str(path) in msg and "--out" in msg and "mode='w'" in msg
    assert load_stats(path).num_runs == 1  # untouched


def test_append_to_other_version_or_foreign_files_fails(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 3
    with pytest.raises(StatsFormatError, match=r"version differs \(file: 3, this asymrnr writes: 2\)") as exc:
        writer(path, mode="a")
    assert "upgrade asymrnr" in str(exc.value)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "anndata"
    with pytest.raises(StatsFormatError, match=r"not an asymrnr statistics file .*'anndata'.*--out"):
        writer(foreign, mode="a")

    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(StatsFormatError, match=r"notes.h5: it is not an HDF5 file"):
        writer(text, mode="a")
    assert text.read_text() == "hello"


def test_mode_w_overwrites(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng, prompt="old"), make_run(rng, prompt="old2")])
    new = make_run(rng, prompt="new", branches=("cond",))
    write_file(path, [new], branches=("cond",), mode="w")
    data = load_stats(path)
    assert data.prompts == ["new"] and data.branches == ("cond",)


def test_bad_mode_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode='r'"):
        writer(tmp_path / "s.h5", mode="r")


# ---- interrupted writers --------------------------------------------------------------------------


def _fake_partial_tail(path: Path, rng) -> None:
    """What an in-place writer killed mid-run leaves: datasets one run longer, count not raised."""
    with h5py.File(path, "r+") as f:
        n = int(f.attrs["num_complete_runs"])
        for name in ("runs/prompts", "runs/seeds", "runs/timesteps", "runs/sim_mean/euclidean", "runs/norm_hist"):
            ds = f[name]
            ds.resize(n + 1, axis=0)
            if name == "runs/prompts":
                ds[n] = "garbage"
            elif ds.dtype.kind == "f":
                ds[n] = rng.standard_normal(ds.shape[1:])
            else:
                ds[n] = -7


def test_partial_tail_is_ignored_and_replaced_on_append(tmp_path, rng):
    runs = [make_run(rng, prompt=f"p{i}", seed=i) for i in range(3)]
    path = write_file(tmp_path / "s.h5", runs[:2])
    _fake_partial_tail(path, rng)

    data = load_stats(path)
    assert data.num_runs == 2 and data.prompts == ["p0", "p1"]
    assert data.norm_hist.shape[0] == 2 and data.sim_mean["euclidean"].shape[0] == 2
    for r in range(2):
        assert_run_equal(data, r, runs[r])

    with writer(path, mode="a") as w:
        assert w.num_runs == 2
        w.write_run(runs[2])
    data = load_stats(path)
    assert data.prompts == ["p0", "p1", "p2"]
    for r in range(3):
        assert_run_equal(data, r, runs[r])


_KILLER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    import test_stats_format as t
    from asymrnr.profiler.stats_format import StatsWriter

    rng = np.random.default_rng(5)
    w = t.writer(sys.argv[1])
    for i in range(2):
        w.write_run(t.make_run(rng, prompt=f"p{i}", seed=i))
    kill_at, calls = int(sys.argv[2]), [0]
    original = StatsWriter._append
    def dying_append(self, *args):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(9)  # no cleanup, no close: like SIGKILL in the middle of the third run
        return original(self, *args)
    StatsWriter._append = dying_append
    w.write_run(t.make_run(rng, prompt="p2", seed=2))
    """
)


@pytest.mark.parametrize("kill_at", [1, 7, 13])  # 13 datasets per run: first, middle, last
def test_process_killed_mid_run_leaves_complete_runs(tmp_path, kill_at):
    path = tmp_path / "killed.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(path), str(kill_at), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 9, proc.stderr
    rng = np.random.default_rng(5)
    expected = [make_run(rng, prompt=f"p{i}", seed=i) for i in range(2)]
    data = load_stats(path)
    assert data.num_runs == 2
    for r in range(2):
        assert_run_equal(data, r, expected[r])
    # a stale working copy may be left behind; the next writer must not care
    with writer(path, mode="a") as w:
        w.write_run(make_run(rng, prompt="p2", seed=2))
    assert load_stats(path).prompts == ["p0", "p1", "p2"]


def test_failed_write_keeps_previous_file(tmp_path, rng, monkeypatch):
    path = write_file(tmp_path / "s.h5", [make_run(rng, prompt="kept")])

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with writer(path, mode="a") as w:
        monkeypatch.setattr(StatsWriter, "_append", boom)
        with pytest.raises(StatsFormatError, match="No space left on device"):
            w.write_run(make_run(rng))
        assert w.num_runs == 1
    assert load_stats(path).prompts == ["kept"]
    assert not Path(str(path) + ".tmp").exists()


# ---- bad files ------------------------------------------------------------------------------------


def _load_error(path) -> str:
    with pytest.raises(StatsFormatError) as exc:
        load_stats(path)
    assert isinstance(exc.value, AsymRnRError)
    assert exc.value.__cause__ is None  # never chained to an h5py traceback
    msg = str(exc.value)
    assert str(path) in msg
    return msg


def test_missing_file_and_directory(tmp_path):
    msg = _load_error(tmp_path / "nope.h5")
    assert "does not exist" in msg and "asymrnr profile --out" in msg
    assert "is a directory" in _load_error(tmp_path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "stats.h5"
    path.write_text('{"format": "asymrnr-schedule"}')
    assert "is not an HDF5 file" in _load_error(path)


@pytest.fixture
def big_file(tmp_path):
    """A file whose bytes are mostly checksummed chunk data."""
    rng = np.random.default_rng(0)
    return write_file(tmp_path / "big.h5", [make_run(rng, prompt=f"p{i}", seed=i) for i in range(3)])


def test_truncated_file(big_file):
    data = big_file.read_bytes()
    big_file.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _load_error(big_file)


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_overwritten_bytes_in_the_middle(big_file, where):
    data = bytearray(big_file.read_bytes())
    start = int(len(data) * where)
    data[start : start + 4096] = b"\xa5" * 4096
    big_file.write_bytes(bytes(data))
    msg = _load_error(big_file)
    assert "re-run `asymrnr profile`" in msg


def test_hdf5_that_is_not_ours(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    assert "no 'format' attribute" in _load_error(path)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "anndata"
    msg = _load_error(path)
    assert "not an asymrnr statistics file" in msg and "'anndata'" in msg


def test_unknown_version(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 7
    msg = _load_error(path)
    assert "version 7" in msg and "reads stats format version(s) 1, 2" in msg and "upgrade asymrnr" in msg
    assert "newer asymrnr" in msg
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = "one"
    msg = _load_error(path)
    assert "reads stats format version(s) 1, 2" in msg and "upgrade asymrnr" not in msg
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 0
    assert "re-run `asymrnr profile`" in _load_error(path)


def test_missing_dataset_and_attribute(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        del f["runs/norm_hist"]
    assert "lacks dataset 'runs/norm_hist'" in _load_error(path)

    path = write_file(tmp_path / "s2.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        del f.attrs["model"]
    assert "lacks the root attribute 'model'" in _load_error(path)


def test_damaged_shared_axis(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f["rate_levels"][3] = 0.33
    assert "dataset 'rate_levels' does not hold the format version 2 values" in _load_error(path)


@pytest.mark.parametrize(
    "attr, value, message",
    [
        ("features", '["h", "q"]', "root attribute 'features' is ['h', 'q'], format version 2 has"),
        ("branches", '"cond"', "root attribute 'branches' is not a list of names"),
        ("model", json.dumps({**MODEL, "num_blocks": 4}), "model['num_blocks'] is 4 but the datasets hold 3"),
        ("model", '{"num_blocks": 4}', "its model description cannot be read (missing key 'model.family'"),
        ("generation", json.dumps({**GENERATION, "step_transformer": [0, 1]}), "step_transformer[1] is 1"),
        ("generation", json.dumps({**GENERATION, "step_transformer": [0, 0]}),
         "generation.step_transformer has 2 entries but generation.num_steps is 5"),
        ("matching", json.dumps({**MATCHING, "partition": "sometimes"}), "matching.partition is 'sometimes'"),
        ("generation", "{not json", "root attribute 'generation' is not valid JSON"),
        ("num_complete_runs", -1, "'num_complete_runs' is missing or invalid"),
        ("num_complete_runs", 5, "expected [run=>=5"),
    ],
)
def test_damaged_attributes(tmp_path, rng, attr, value, message):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    assert message in _load_error(path)


def test_wrong_dataset_shape(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        del f["runs/stability_corr"]
        f["runs/stability_corr"] = np.zeros((1, 2, S, B, 3), np.float32)
    assert "dataset 'runs/stability_corr' has shape (1, 2, 5, 3, 3)" in _load_error(path)


def test_zero_complete_runs(tmp_path, rng):
    path = tmp_path / "empty.h5"
    writer(path).close()
    msg = _load_error(path)
    assert "no complete run" in msg and "did not finish a generation" in msg

    # a first run that died midway (datasets written, count not raised) does not count either
    no_steps = {k: v for k, v in GENERATION.items() if k != "num_steps"}  # steps then come from the run
    write_file(path, [make_run(rng, steps=4)], generation=no_steps)
    with h5py.File(path, "r+") as f:
        f.attrs["num_complete_runs"] = 0
    assert "no complete run" in _load_error(path)
    # ...and appending replaces it, even with cells of another shape
    run = make_run(rng, prompt="fresh")
    write_file(path, [run], mode="a", generation=no_steps)
    data = load_stats(path)
    assert data.prompts == ["fresh"] and data.num_steps == S
    assert_run_equal(data, 0, run)


# ---- golden file (format version 1, must load forever) -------------------------------------------


def _golden_expected(r: int) -> dict:
    """The closed-form values documented in tests/data/make_golden_stats.py, written out independently."""
    br, s, b, f = np.meshgrid(np.arange(2), np.arange(3), np.arange(2), np.arange(4), indexing="ij")
    base = 1000.0 * r + 100 * br + 10 * s + b + f / 8
    i11, i19, bins = np.arange(11), np.arange(19), np.arange(70)
    curve = lambda m: np.where(i19 < 17, m[..., None] - i19 / 4, np.nan)  # noqa: E731
    same = np.where(s == 0, np.nan, 0.25 + s / 8 + b / 16 + f / 64)
    corr = np.where(s == 0, np.nan, 1 - (s / 16 + b / 32 + f / 64 + br / 128 + r / 256))
    return {
        "sim_mean": {"euclidean": -base, "cosine": base / 2048},
        "sim_quantiles": {"euclidean": -base[..., None] - (10 - i11), "cosine": base[..., None] / 2048 + i11 / 16},
        "sim_rate_curve": {"euclidean": curve(-base), "cosine": curve(base / 2048)},
        "norm_quantiles": base[..., None] / 16 + i11,
        "norm_hist": (r + 1) * (bins % 7) + br[..., None] + b[..., None],
        "stability_same_dst": same,
        "stability_corr": corr,
    }


def _stored_edges(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["norm_bin_edges"][()]


def _assert_golden_values(data: StatsData, path: Path) -> None:
    """The values every golden file holds (the closed forms of tests/data/make_golden_stats.py)."""
    assert data.num_runs == 2 and data.num_steps == 3 and data.num_blocks == 2
    assert data.prompts == ["a red fox running through fresh snow", "un chat sur la plage, 猫が海辺を歩く ✓"]
    assert data.seeds.tolist() == [42, 7]
    assert data.timesteps.tolist() == [[999.0, 666.0, 333.0]] * 2
    assert data.branches == ("cond", "uncond") and data.features == ("h", "q", "k", "v")
    assert data.metrics == ("euclidean", "cosine") and data.profiled_schedule is None
    np.testing.assert_array_equal(data.quantile_levels, QUANTILE_LEVELS)
    np.testing.assert_array_equal(data.rate_levels, RATE_LEVELS)
    # Stored values exactly; computed ones with a tolerance (numpy's logspace differs in the last bit
    # between versions: numpy 2.4 gives other edges than the numpy that wrote the v1 file).
    stored = _stored_edges(path)
    assert stored.shape == (71,) and stored[0] == 0.001 and stored[-1] == 10000.0
    np.testing.assert_array_equal(data.norm_bin_edges, stored)
    np.testing.assert_allclose(data.norm_bin_edges, np.logspace(-3, 4, 71), rtol=1e-15, atol=0)
    # spot values, by hand: run 1, uncond, step 2, block 1, feature v (f=3)
    assert data.sim_mean["euclidean"][1, 1, 2, 1, 3] == -(1000 + 100 + 20 + 1 + 3 / 8)
    assert data.norm_hist[1, 1, 2, 1, 3, 9] == 2 * 2 + 1 + 1
    assert np.isnan(data.sim_rate_curve["cosine"][0, 0, 1, 0, 0, 17])
    for r in range(2):
        want = _golden_expected(r)
        for name, value in want.items():
            got = getattr(data, name)
            if isinstance(value, dict):
                for m in value:
                    np.testing.assert_array_equal(got[m][r], value[m].astype(got[m].dtype), err_msg=f"{name}[{m}]")
            else:
                np.testing.assert_array_equal(got[r], value.astype(got.dtype), err_msg=name)


def test_golden_v1_file_loads_with_exact_values():
    assert GOLDEN.stat().st_size < 200_000
    data = load_stats(GOLDEN)
    assert data.format_version == 1 and data.tool_version == "0.1.0"
    assert data.model["transformer_class"] == "CogVideoXTransformer3DModel" and data.model["num_blocks"] == 2
    assert data.model["latent_grid"] == [4, 6, 8]
    # version 1 is upgraded in memory: one transformer, no scheduler config, a fixed partition
    assert data.generation == {"height": 96, "width": 128, "num_frames": 13, "num_steps": 3, "guidance_scale": 6.0,
                               "scheduler_class": "CogVideoXDDIMScheduler", "negative_prompt": "",
                               **GENERATION_DEFAULTS}
    assert data.matching == {"stride": [2, 2, 2], "seed": 0, "granularity": "joint", "partition": "fixed"}
    _assert_golden_values(data, GOLDEN)


def test_v1_file_is_upgraded_in_memory():
    data = load_stats(GOLDEN)
    with h5py.File(GOLDEN, "r") as f:
        raw_model = json.loads(f.attrs["model"])
    assert raw_model["patch_size"] == 2 and raw_model["patch_size_t"] == 1 and raw_model["text_first"] is True
    want = ModelDescription(
        family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=2, num_heads=2, head_dim=8,
        patch_size=(1, 2, 2), rope=True, latent_grid=(4, 6, 8), text_len=16, text_layout="first", ffn_dim=64,
    )
    assert data.model_description == want and data.model == want.to_dict()
    assert "patch_size_t" not in data.model and "text_first" not in data.model
    assert data.format_version == 1  # the file's own version
    assert "format v1" in describe_stats(data)


def test_appending_to_a_v1_file_is_refused(tmp_path, rng):
    path = tmp_path / "old.h5"
    path.write_bytes(GOLDEN.read_bytes())
    before = path.read_bytes()
    with pytest.raises(StatsFormatError) as exc:
        StatsWriter(path, model=load_stats(GOLDEN).model_description, generation={"num_steps": 3},
                    matching={}, branches=CFG, mode="a")
    msg = str(exc.value)
    assert "version differs (file: 1, this asymrnr writes: 2)" in msg
    assert "write a new file" in msg and "mode='w'" in msg and str(path) in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]


def test_golden_v2_file_loads_with_exact_values():
    assert GOLDEN_V2.stat().st_size < 200_000
    data = load_stats(GOLDEN_V2)
    assert data.format_version == 2 and data.tool_version == "0.1.0"
    assert data.model_description == ModelDescription(
        family="wan", transformer_class="WanTransformer3DModel", num_blocks=2, num_heads=2, head_dim=8,
        patch_size=(1, 2, 2), rope=True, latent_grid=(4, 6, 8), text_len=0, text_layout="none", ffn_dim=64,
        cross_len=512,
    )
    assert data.model["patch_size"] == [1, 2, 2] and data.model["family"] == "wan"
    assert data.generation == {
        "height": 96, "width": 128, "num_frames": 13, "num_steps": 3, "guidance_scale": 4.0,
        "scheduler_class": "UniPCMultistepScheduler", "pipeline_class": "WanPipeline", "negative_prompt": "",
        "transformers": ["transformer", "transformer_2"], "step_transformer": [0, 0, 1],
        "scheduler_config": {"flow_shift": 3.0, "prediction_type": "flow_prediction", "use_flow_sigmas": True},
    }
    assert data.matching == {"stride": [2, 2, 2], "seed": 0, "granularity": "joint", "partition": "window"}
    _assert_golden_values(data, GOLDEN_V2)


def test_golden_script_reproduces_the_values(tmp_path):
    sys.path.insert(0, str(DATA))
    try:
        import make_golden_stats
    finally:
        sys.path.remove(str(DATA))
    fresh_path = make_golden_stats.main(tmp_path)
    assert fresh_path.name == GOLDEN_V2.name
    fresh = load_stats(fresh_path)
    golden = load_stats(GOLDEN_V2)
    for name in ("norm_hist", "stability_corr", "norm_quantiles"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(golden, name))
    np.testing.assert_array_equal(fresh.sim_rate_curve["euclidean"], golden.sim_rate_curve["euclidean"])
    assert fresh.prompts == golden.prompts and fresh.generation == golden.generation
    assert fresh.model == golden.model and fresh.matching == golden.matching
    # the v1 golden file holds the same values (the closed forms did not change with the version)
    v1 = load_stats(GOLDEN)
    for name in ("sim_mean", "sim_quantiles", "sim_rate_curve"):
        for m in STAT_METRICS:
            np.testing.assert_array_equal(getattr(fresh, name)[m], getattr(v1, name)[m])
    for name in ("norm_quantiles", "norm_hist", "stability_same_dst", "stability_corr", "seeds", "timesteps"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(v1, name))


# ---- describe_stats -------------------------------------------------------------------------------


def test_describe_stats_summary(tmp_path, rng):
    runs = [make_run(rng, prompt=f"prompt number {i} " + "x" * 100, seed=i) for i in range(7)]
    path = write_file(tmp_path / "s.h5", runs)
    text = describe_stats(path)
    assert str(path) in text and "format v2" in text
    assert "CogVideoXTransformer3DModel" in text and f"{B} blocks" in text
    assert f"{S} steps" in text and "128x96" in text and "guidance 6.0" in text
    assert "cond, uncond" in text and "runs:       7" in text
    assert "[0] prompt number 0" in text and "... and 2 more" in text
    assert re.search(r"\d+(\.\d)? KiB", text)
    assert max(len(line) for line in text.splitlines()[1:]) < 100  # long prompts are shortened
    assert describe_stats(load_stats(path)) == text
    with pytest.raises(StatsFormatError, match="does not exist"):
        describe_stats(tmp_path / "missing.h5")


# ---- version 2: transformers, step_transformer, scheduler_config, partition ------------------------

WAN_MODEL = ModelDescription(
    family="wan", transformer_class="WanTransformer3DModel", num_blocks=B, num_heads=2, head_dim=8,
    patch_size=(1, 2, 2), rope=True, latent_grid=(4, 6, 8), text_len=0, text_layout="none", ffn_dim=64,
    cross_len=512,
)
WAN_GENERATION = {
    **GENERATION, "guidance_scale": 4.0, "scheduler_class": "UniPCMultistepScheduler", "pipeline_class": "WanPipeline",
    "transformers": ["transformer", "transformer_2"], "step_transformer": [0, 0, 0, 1, 1],
    "scheduler_config": {"flow_shift": 3.0, "solver_order": 2, "use_flow_sigmas": True, "final_sigmas_type": None,
                         "timestep_spacing": "linspace", "trained_betas": [0.1, 0.2], "extra": {"nested": [1, {}]}},
}
WAN_MATCHING = {**MATCHING, "partition": "window"}


def test_v2_round_trip_with_transformers_step_transformer_and_scheduler_config(tmp_path, rng):
    runs = [make_run(rng, prompt=f"p{i}", seed=i) for i in range(3)]
    path = write_file(tmp_path / "wan.h5", runs[:2], model=WAN_MODEL, generation=WAN_GENERATION,
                      matching=WAN_MATCHING)
    # append with the description's dict and the same settings (tuples, other per-run keys): accepted
    write_file(path, runs[2:], mode="a", model=WAN_MODEL.to_dict(), matching={**WAN_MATCHING, "stride": [2, 2, 2]},
               generation={**WAN_GENERATION, "step_transformer": (0, 0, 0, 1, 1), "prompt": "other"})
    data = load_stats(path)
    assert data.format_version == 2 and data.num_runs == 3
    for r, run in enumerate(runs):
        assert_run_equal(data, r, run)
    assert data.model_description == WAN_MODEL and data.model == WAN_MODEL.to_dict()
    assert data.generation["transformers"] == ["transformer", "transformer_2"]
    assert data.generation["step_transformer"] == [0, 0, 0, 1, 1]
    assert data.generation["scheduler_config"] == WAN_GENERATION["scheduler_config"]
    assert data.generation == {k: v for k, v in WAN_GENERATION.items() if k not in ("prompt", "seed")}
    assert data.matching["partition"] == "window"
    text = describe_stats(data)
    assert "WanTransformer3DModel (wan)" in text and "transformer (3 steps), transformer_2 (2 steps)" in text
    assert "partition window" in text

    # another expert split, scheduler config or partition is another set of statistics
    for override, key in (
        ({"generation": {**WAN_GENERATION, "step_transformer": [0, 0, 1, 1, 1]}}, "generation.step_transformer"),
        ({"generation": {**WAN_GENERATION,
                         "scheduler_config": {**WAN_GENERATION["scheduler_config"], "flow_shift": 5.0}}},
         "generation.scheduler_config.flow_shift"),
        ({"matching": {**WAN_MATCHING, "partition": "fixed"}}, "matching.partition"),
    ):
        kw = {"model": WAN_MODEL, "generation": WAN_GENERATION, "matching": WAN_MATCHING, **override}
        with pytest.raises(StatsFormatError, match=re.escape(key) + " differs"):
            writer(path, mode="a", **kw)
    assert load_stats(path).num_runs == 3


def test_v2_writer_checks_its_settings(tmp_path):
    def make(**kw):
        args = {"model": WAN_MODEL, "generation": WAN_GENERATION, "matching": WAN_MATCHING, **kw}
        return writer(tmp_path / "s.h5", **args)

    cases = [
        ({"generation": {**WAN_GENERATION, "step_transformer": [0, 0, 2, 1, 1]}}, r"step_transformer\[2\] is 2"),
        ({"generation": {**WAN_GENERATION, "step_transformer": [0, 1]}},
         r"has 2 entries but generation.num_steps is 5"),
        ({"generation": {**WAN_GENERATION, "transformers": ["t", "t"]}}, r"generation.transformers must list"),
        ({"generation": {**WAN_GENERATION, "transformers": []}}, r"generation.transformers must list"),
        ({"generation": {**WAN_GENERATION, "scheduler_config": [1]}}, r"scheduler_config must be a JSON object"),
        ({"matching": {**WAN_MATCHING, "partition": "random"}}, r"matching.partition is 'random'"),
        ({"model": {**WAN_MODEL.to_dict(), "family": None}}, r"StatsWriter model=: model.family"),
        ({"model": {"num_blocks": 3}}, r"StatsWriter model=: missing key 'model.family'"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            make(**kw)
    assert not (tmp_path / "s.h5").exists()


def test_v2_writer_defaults_and_v1_model_input(tmp_path, rng):
    # a version-1 description (CogVideoX: int patch_size + patch_size_t, text_first) is upgraded
    v1_model = {"transformer_class": "CogVideoXTransformer3DModel", "num_blocks": B, "num_heads": 2, "head_dim": 8,
                "patch_size": 2, "patch_size_t": 1, "rope": True, "latent_grid": [4, 6, 8], "text_len": 16,
                "ffn_dim": 64, "text_first": True}
    no_steps = {k: v for k, v in GENERATION.items() if k != "num_steps"}
    path = write_file(tmp_path / "s.h5", [make_run(rng)], model=v1_model,
                      generation={**no_steps, "transformers": ["transformer", "transformer_2"],
                                  "step_transformer": [1, 1, 1, 1, 0]})
    data = load_stats(path)
    assert data.model_description == ModelDescription(**MODEL)
    assert data.generation["step_transformer"] == [1, 1, 1, 1, 0] and data.generation["scheduler_config"] == {}
    assert data.matching["partition"] == "fixed"  # no partition named: version 1's rule
    # step_transformer fixes the number of steps when num_steps is not given
    with writer(tmp_path / "s2.h5", generation={**no_steps, "step_transformer": [0, 0, 0]}) as w:
        with pytest.raises(ValueError, match=r"timesteps has shape \(5,\), expected \(3,\)"):
            w.write_run(make_run(rng))


def test_stats_data_model_description_in_memory():
    data = load_stats(GOLDEN_V2)
    built = StatsData(**{**data.__dict__, "model": data.model_description, "model_description": None})
    assert built.model == data.model and built.model_description == data.model_description
    assert built == data
    partial = StatsData(**{**data.__dict__, "model": {"num_blocks": 2}, "model_description": None})
    assert partial.model_description is None and partial.model == {"num_blocks": 2}


# ---- hostile files: nothing outside the file is read or written -----------------------------------

HOSTILE_KINDS = ("external_link", "soft_link", "external_storage", "virtual_dataset")
HOSTILE_MESSAGES = {
    "external_link": "is an external link to '/victim' in the file",
    "soft_link": "is a soft link to '/elsewhere'",
    "external_storage": "keeps its data outside the HDF5 file (external raw storage",
    "virtual_dataset": "is a virtual dataset",
}


def _plant(path: Path, kind: str, outside: Path) -> list[Path]:
    """Replace ``runs/seeds`` of a stats file by ``kind`` pointing outside it; returns the outside files."""
    victim_h5, victim_bin = outside / "victim.h5", outside / "victim.bin"
    with h5py.File(victim_h5, "w") as v:
        v.create_dataset("victim", data=np.array([123], np.int64), maxshape=(None,), chunks=(1,))
    victim_bin.write_bytes(np.array([123], np.int64).tobytes() + b"private text\n")
    with h5py.File(path, "r+") as f:
        n = f["runs/seeds"].shape[0]
        del f["runs/seeds"]
        if kind == "external_link":
            f["runs/seeds"] = h5py.ExternalLink(str(victim_h5), "/victim")
        elif kind == "soft_link":
            f.create_dataset("elsewhere", data=np.arange(n, dtype=np.int64), maxshape=(None,), chunks=(1,))
            f["runs/seeds"] = h5py.SoftLink("/elsewhere")
        elif kind == "external_storage":
            f.create_dataset("runs/seeds", shape=(n,), maxshape=(None,), dtype=np.int64,
                             external=[(str(victim_bin), 0, h5py.h5f.UNLIMITED)])
        else:
            layout = h5py.VirtualLayout(shape=(n,), dtype=np.int64, maxshape=(None,))
            layout[:n] = h5py.VirtualSource(str(victim_h5), "victim", shape=(n,))
            f.create_virtual_dataset("runs/seeds", layout)
    return [victim_h5, victim_bin]


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_file_is_refused_by_the_reader(tmp_path, rng, outside, kind):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    _plant(path, kind, outside)
    msg = _load_error(path)
    assert HOSTILE_MESSAGES[kind] in msg and "'/runs/seeds'" in msg
    assert "asymrnr reads and writes only groups and datasets stored inside the file" in msg
    with pytest.raises(StatsFormatError, match=re.escape(HOSTILE_MESSAGES[kind])):
        describe_stats(path)


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_file_is_refused_by_an_appending_writer(tmp_path, rng, outside, kind):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    victims = _plant(path, kind, outside)
    before = {p: p.read_bytes() for p in [path, *victims]}
    with pytest.raises(StatsFormatError) as exc:
        with writer(path, mode="a") as w:
            w.write_run(make_run(rng))
    msg = str(exc.value)
    assert HOSTILE_MESSAGES[kind] in msg and f"cannot append statistics to {path}" in msg and "mode='w'" in msg
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p.name} was modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "s.h5"]


def test_text_file_is_not_read_as_prompts(tmp_path, rng):
    """External raw storage can make any file's first bytes look like a fixed-length prompt string."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 4)
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        del f["runs/prompts"]
        f.create_dataset("runs/prompts", shape=(1,), dtype="S64", external=[(str(secret), 0, 64)])
    msg = _load_error(path)
    assert "external raw storage" in msg and "secret.txt" in msg and "root:x" not in msg


def test_hostile_link_anywhere_in_the_file_is_refused(tmp_path, rng, outside):
    """The walk covers every group, including ones asymrnr never reads, and cycles of hard links."""
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f.create_group("extra/deeper")["link"] = h5py.ExternalLink(str(outside / "victim.h5"), "/x")
    assert "'/extra/deeper/link' is an external link" in _load_error(path)

    path = write_file(tmp_path / "s2.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f["runs/loop"] = f["runs"]  # a second hard link: a cycle
    assert "is linked 2 times inside the file" in _load_error(path)


def test_claimed_runs_not_backed_by_the_file_are_refused(tmp_path, rng):
    """A small file claiming many runs (unallocated chunks would read as fill values) is refused before
    anything is allocated; the writer refuses to append to it too."""
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    claimed = 1000
    with h5py.File(path, "r+") as f:
        f.attrs["num_complete_runs"] = claimed
        for name in stats_spec.all_per_run_paths(STAT_METRICS):
            f[name].resize(claimed, axis=0)
    assert path.stat().st_size < 500 * 1024
    msg = _load_error(path)
    assert f"for {claimed} run(s) but stores only" in msg and "does not hold" in msg
    with pytest.raises(StatsFormatError, match="but stores only"):
        writer(path, mode="a")


def test_huge_attributes_and_shapes_are_refused(tmp_path, rng):
    path = write_file(tmp_path / "s.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        f.attrs.create("generation", data=np.zeros(1000, np.uint8))
    assert "root attribute 'generation' is not a single value" in _load_error(path)

    path = write_file(tmp_path / "s2.h5", [make_run(rng)])
    with h5py.File(path, "r+") as f:
        del f["rate_levels"]
        f.create_dataset("rate_levels", shape=(10**9,), dtype=np.float64, chunks=(1 << 16,))
    assert "dataset 'rate_levels' does not hold the format version 2 values (shape (1000000000,))" in _load_error(path)


POSIX = pytest.mark.skipif(os.name != "posix", reason="symlinks, O_NOFOLLOW, /dev/null and FIFOs are POSIX")


@POSIX
def test_planted_symlink_at_a_temporary_path_is_not_followed(tmp_path, rng):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / "s.h5"
    planted = tmp_path / "s.h5.tmp"  # the fixed working-copy name of earlier versions
    planted.symlink_to(victim)
    runs = [make_run(rng, prompt=f"p{i}", seed=i) for i in range(2)]
    write_file(path, runs[:1])
    write_file(path, runs[1:], mode="a")
    assert victim.read_text() == "keep me" and planted.is_symlink()
    assert load_stats(path).prompts == ["p0", "p1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.tmp", "victim.txt"]


@POSIX
def test_working_copies_are_created_exclusively_with_unpredictable_names(tmp_path, rng, monkeypatch):
    from asymrnr.formats.stats import writer as writer_module

    names: list[str] = []
    real_open = os.open

    def recording_open(file, flags, *args, **kwargs):
        if str(file).endswith(".tmp"):
            names.append(Path(file).name)
            assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW
            if len(names) == 1:  # someone got there first: the name is taken, the writer draws another
                Path(file).symlink_to(tmp_path / "victim")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(writer_module.os, "open", recording_open)
    write_file(tmp_path / "s.h5", [make_run(rng)])
    assert len(set(names)) == len(names) >= 3  # header, taken name, first run
    assert all(re.fullmatch(r"\.s\.h5\.[0-9a-f]{16}\.tmp", n) for n in names)
    assert not (tmp_path / "victim").exists()
    assert load_stats(tmp_path / "s.h5").num_runs == 1


@POSIX
def test_output_that_is_not_a_regular_file_is_refused(tmp_path, rng):
    null_link = tmp_path / "null.h5"
    null_link.symlink_to("/dev/null")
    for mode in ("w", "a"):
        with pytest.raises(StatsFormatError, match=r"null.h5: it is a device, not a regular file"):
            writer(null_link, mode=mode)
    assert null_link.is_symlink() and os.readlink(null_link) == "/dev/null"
    assert "is a device, not a regular file" in _load_error(null_link)


_FIFO_CHECK = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    import test_stats_format as t
    from asymrnr.errors import StatsFormatError
    from asymrnr.profiler.stats_format import load_stats
    for call in (lambda: t.writer(sys.argv[1], mode="w"), lambda: t.writer(sys.argv[1], mode="a"),
                 lambda: load_stats(sys.argv[1])):
        try:
            call()
        except StatsFormatError as exc:
            print(exc)
    """
)


@POSIX
def test_fifo_output_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    proc = subprocess.run(  # a subprocess: opening a FIFO would block forever
        [sys.executable, "-c", _FIFO_CHECK, str(fifo), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all("FIFO (named pipe), not a regular file" in line for line in lines), lines
    assert fifo.exists() and not fifo.is_file()
