"""Tests of the schedule JSON format (asymrnr.schedule_format): golden file, validation, round trips."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import asymrnr
from asymrnr import schedule_format as sf
from asymrnr.errors import AsymRnRError, ScheduleFormatError, ScheduleMismatchError
from asymrnr.schedule_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MatchingSettings,
    ModelDescription,
    SamplerDescription,
    Schedule,
    load_schedule,
)

GOLDEN = Path(__file__).parent / "data" / "schedule_v1_golden.json"
GOLDEN_TAG = "cogvideox-L4-q23-kv15-s2-n6-6cd8c6"


@pytest.fixture
def golden_doc() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture
def golden() -> Schedule:
    return load_schedule(GOLDEN)


def _model(**kw) -> ModelDescription:
    base = dict(
        transformer_class="CogVideoXTransformer3DModel",
        num_blocks=3,
        num_heads=2,
        head_dim=16,
        patch_size=2,
        patch_size_t=1,
        rope=True,
        latent_grid=(3, 4, 4),
        text_len=16,
        ffn_dim=128,
    )
    base.update(kw)
    return ModelDescription(**base)


def _sampler(num_steps=4) -> SamplerDescription:
    return SamplerDescription("CogVideoXDDIMScheduler", num_steps, [float(999 - 250 * i) for i in range(num_steps)])


# ---------------------------------------------------------------------------------------------------
# Golden file
# ---------------------------------------------------------------------------------------------------


def test_golden_file_loads_with_exact_values(golden, caplog):
    with caplog.at_level(logging.WARNING, logger="asymrnr.schedule_format"):
        schedule = load_schedule(str(GOLDEN))  # str accepted as well as Path
    assert caplog.records == []  # stored tag agrees with the content
    assert schedule.to_dict() == golden.to_dict()

    assert golden.tag == GOLDEN_TAG
    assert golden.model.transformer_class == "CogVideoXTransformer3DModel"
    assert golden.model.latent_grid == (13, 30, 45)
    assert golden.model.num_video_tokens == 13 * 30 * 45 == 17550
    assert golden.model.inner_dim == 48 * 64
    assert golden.model.text_first is True
    assert golden.sampler.scheduler_class == "CogVideoXDPMScheduler"
    assert golden.sampler.timesteps == (999.0, 832.0, 666.0, 499.0, 332.0, 166.0)
    assert golden.matching == MatchingSettings(cache_steps=2)
    assert golden.rate("q", 0, 0) == 0.8
    assert golden.rate("q", 0, 4) == 0.4
    assert golden.rate("q", 2, 3) == 0.0
    assert golden.rate("kv", 3, 5) == 0.3
    assert golden.rate("h", 1, 1) == 0.0
    assert golden.mean_rate("q") == pytest.approx(5.6 / 24)
    assert golden.mean_rate("kv") == pytest.approx(0.15)
    assert golden.mean_rate("h") == 0.0
    assert golden.provenance["source"] == "hand-written"
    assert golden.provenance["created"] == "2025-06-01T12:00:00Z"


def test_golden_rates_constant_within_cache_windows(golden):
    s = golden.matching.cache_steps
    for feature in sf.SCHEDULE_FEATURES:
        for row in golden.rates[feature]:
            for k in range(golden.num_steps):
                assert row[k] == row[k - k % s]


def test_reading_imports_neither_torch_nor_diffusers():
    code = (
        "import sys, asymrnr\n"
        f"s = asymrnr.load_schedule({str(GOLDEN)!r})\n"
        f"assert s.tag == {GOLDEN_TAG!r}, s.tag\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'diffusers' not in sys.modules, 'diffusers imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------------------------------------------
# Round trips and the file layout
# ---------------------------------------------------------------------------------------------------


def test_save_load_round_trip(golden, tmp_path):
    out = golden.save(tmp_path / "sub" / "s.json")  # creates the folder
    assert isinstance(out, Path) and out == tmp_path / "sub" / "s.json"
    again = load_schedule(out)
    assert again.to_dict() == golden.to_dict()
    assert again == golden
    # saving is deterministic: the golden file's bytes are reproduced exactly
    assert out.read_bytes() == GOLDEN.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.json"]


def test_each_rates_row_on_one_line(golden, tmp_path):
    text = golden.save(tmp_path / "s.json").read_text()
    lines = text.splitlines()
    assert "      [0.8, 0.8, 0.8, 0.8, 0.4, 0.4]," in lines
    assert "      [0.0, 0.0, 0.0, 0.0, 0.3, 0.3]" in lines
    assert '    "latent_grid": [13, 30, 45],' in lines
    assert lines[1] == '  "format": "asymrnr-schedule",'
    assert json.loads(text)["tag"] == GOLDEN_TAG


def test_dataclass_dict_round_trips(golden):
    assert ModelDescription.from_dict(golden.model.to_dict()) == golden.model
    assert SamplerDescription.from_dict(golden.sampler.to_dict()) == golden.sampler
    assert MatchingSettings.from_dict(golden.matching.to_dict()) == golden.matching
    assert Schedule.from_dict(golden.to_dict()).to_dict() == golden.to_dict()
    d = golden.to_dict()
    assert d["format"] == FORMAT_NAME and d["version"] == FORMAT_VERSION == 1
    assert list(d) == ["format", "version", "tag", "model", "sampler", "matching", "rates", "provenance"]


def test_from_dict_where_prefixes_messages(golden):
    d = golden.model.to_dict()
    del d["num_heads"]
    with pytest.raises(ScheduleFormatError, match=re.escape("missing key 'stats.model.num_heads'")):
        ModelDescription.from_dict(d, where="stats.model")


def test_atomic_save_keeps_old_file_on_crash(golden, tmp_path, monkeypatch):
    target = tmp_path / "s.json"
    golden.save(target)
    before = target.read_bytes()
    other = golden.with_rates(q=[[0.1] * 6] * 4)
    real_iter = sf._iter_json

    def crashing(obj, *a, **k):
        for i, chunk in enumerate(real_iter(obj, *a, **k)):
            if i == 40:
                raise OSError("disk full (simulated)")
            yield chunk

    monkeypatch.setattr(sf, "_iter_json", crashing)
    with pytest.raises(OSError, match="disk full"):
        other.save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]  # no temp file left behind
    monkeypatch.undo()
    other.save(target)
    assert load_schedule(target).rate("q", 0, 0) == 0.1


# ---------------------------------------------------------------------------------------------------
# Tag
# ---------------------------------------------------------------------------------------------------


def test_tag_deterministic_and_ignores_provenance(golden):
    a = Schedule.zeros(_model(), _sampler(), notes="one").with_rates(q=[[0.2] * 4] * 3, kv=[[0.1] * 4] * 3)
    b = Schedule.zeros(_model(), _sampler(), notes="two").with_rates(kv=[[0.1] * 4] * 3, q=[[0.2] * 4] * 3)
    b.provenance["extra"] = {"anything": [1, 2]}
    assert a.tag == b.tag
    assert re.fullmatch(r"cogvideox-L3-q20-kv10-s4-n4-[0-9a-f]{6}", a.tag)
    assert re.fullmatch(r"[A-Za-z0-9-]+", golden.tag)


def test_tag_sensitive_to_rates_and_settings(golden):
    q = [list(row) for row in golden.rates["q"]]
    q[2][3] = 0.01  # mean moves by < 0.5 %: only the hash part can tell
    edited = golden.with_rates(q=q)
    assert edited.tag != golden.tag
    assert edited.tag.rsplit("-", 1)[0] == golden.tag.rsplit("-", 1)[0]
    d = golden.to_dict()
    d["matching"]["seed"] = 1
    assert Schedule.from_dict(d).tag != golden.tag
    d = golden.to_dict()
    d["sampler"]["timesteps"][0] = 998.0
    assert Schedule.from_dict(d).tag != golden.tag


def test_tag_shows_h_only_when_used(golden):
    zeros = {f: [[0.0] * 6] * 4 for f in ("q", "kv")}
    with_h = golden.with_rates(**zeros, h=[[0.25] * 6] * 4)
    assert re.fullmatch(r"cogvideox-L4-q00-kv00-h25-s2-n6-[0-9a-f]{6}", with_h.tag)
    assert "-h" not in golden.tag


def test_stale_stored_tag_warns_and_is_recomputed(golden_doc, tmp_path, caplog):
    golden_doc["rates"]["q"][0][0] = 0.5  # edited by hand, stored tag left as it was
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(golden_doc))
    with caplog.at_level(logging.WARNING, logger="asymrnr.schedule_format"):
        schedule = load_schedule(path)
    assert schedule.tag != GOLDEN_TAG
    assert schedule.to_dict()["tag"] == schedule.tag
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert GOLDEN_TAG in messages[0] and schedule.tag in messages[0] and "edited" in messages[0]


def test_tag_is_optional_on_read(golden_doc):
    del golden_doc["tag"]
    assert Schedule.from_dict(golden_doc).tag == GOLDEN_TAG


# ---------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ScheduleFormatError, match="schedule file not found") as info:
        load_schedule(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, AsymRnRError)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ScheduleFormatError, match="is a directory"):
        load_schedule(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b"\xff\xfe{\x00", id="binary"),
    ],
)
def test_corrupt_or_truncated_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(GOLDEN.read_bytes()[:700] if content is None else content)
    with pytest.raises(ScheduleFormatError) as info:
        load_schedule(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "corrupt or truncated" in msg
    assert "re-save" in msg and "asymrnr-calibrate" in msg


def test_duplicate_key_in_file(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text(GOLDEN.read_text().replace('"seed": 0', '"seed": 0, "seed": 1'))
    with pytest.raises(ScheduleFormatError, match="duplicate key 'seed'"):
        load_schedule(path)


def test_nan_in_file_names_cell_and_path(golden_doc, tmp_path):
    golden_doc["rates"]["q"][2][4] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(golden_doc))  # python writes a bare NaN token
    with pytest.raises(ScheduleFormatError) as info:
        load_schedule(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "rates.q[2][4] (block 2, step 4) is NaN" in msg


def _set(doc, path, value):
    *parents, last = path
    node = doc
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

BAD_CASES = [
    # (id, path, value, expected message fragments)
    ("root-list", (), [1], ["not an asymrnr schedule", "JSON object"]),
    ("no-format", ("format",), _DELETE, ["not an asymrnr schedule", "'format' is missing", "asymrnr-schedule"]),
    ("other-format", ("format",), "asymrnr-stats", ["format is 'asymrnr-stats'", "expected 'asymrnr-schedule'"]),
    ("version-2", ("version",), 2, ["unsupported schedule version 2", "reads schedule version(s) 1", "upgrade asymrnr"]),
    ("version-str", ("version",), "1", ["version must be an integer", "'1' (string)"]),
    ("no-version", ("version",), _DELETE, ["missing key 'version'"]),
    ("no-model", ("model",), _DELETE, ["missing key 'model'"]),
    ("no-rates", ("rates",), _DELETE, ["missing key 'rates'"]),
    ("model-not-object", ("model",), [1, 2], ["model must be a JSON object"]),
    ("no-num-heads", ("model", "num_heads"), _DELETE, ["missing key 'model.num_heads'"]),
    ("no-cache-steps", ("matching", "cache_steps"), _DELETE, ["missing key 'matching.cache_steps'"]),
    ("no-timesteps", ("sampler", "timesteps"), _DELETE, ["missing key 'sampler.timesteps'"]),
    ("unknown-root", ("extra",), 1, ["unknown key 'extra'", "upgrade asymrnr"]),
    ("unknown-matching", ("matching", "cache_step"), 4, ["unknown key 'matching.cache_step'", "fix the spelling"]),
    ("num-heads-str", ("model", "num_heads"), "48", ["model.num_heads must be an integer", "'48' (string)"]),
    ("num-blocks-float", ("model", "num_blocks"), 4.0, ["model.num_blocks must be an integer"]),
    ("num-blocks-bool", ("model", "num_blocks"), True, ["model.num_blocks must be an integer"]),
    ("num-blocks-zero", ("model", "num_blocks"), 0, ["model.num_blocks must be >= 1, got 0"]),
    ("rope-str", ("model", "rope"), "yes", ["model.rope must be true or false"]),
    ("grid-2", ("model", "latent_grid"), [13, 30], ["model.latent_grid must hold 3 integers"]),
    ("grid-entry", ("model", "latent_grid", 1), 0, ["model.latent_grid[1] must be >= 1, got 0"]),
    ("class-int", ("model", "transformer_class"), 3, ["model.transformer_class must be a string"]),
    ("num-steps-str", ("sampler", "num_steps"), "6", ["sampler.num_steps must be an integer"]),
    ("timesteps-short", ("sampler", "timesteps"), [999.0, 800.0, 600.0, 400.0, 200.0],
     ["sampler.timesteps has 5 entries but sampler.num_steps is 6", "must agree"]),
    ("timestep-str", ("sampler", "timesteps", 2), "666", ["sampler.timesteps[2] must be a number"]),
    ("timestep-inf", ("sampler", "timesteps", 0), float("inf"), ["sampler.timesteps[0] is +inf"]),
    ("metric", ("matching", "metric"), "l2",
     ["unknown metric 'l2' at matching.metric", "allowed: euclidean, cosine, dot, random"]),
    ("reduce-op", ("matching", "reduce_op"), "max", ["unknown reduce_op 'max'", "allowed: discard, mean"]),
    ("granularity", ("matching", "granularity"), "token", ["unknown granularity 'token'", "allowed: joint, head"]),
    ("cache-steps-0", ("matching", "cache_steps"), 0, ["matching.cache_steps must be >= 1, got 0"]),
    ("stride-0", ("matching", "stride", 1), 0, ["matching.stride[1] must be >= 1, got 0"]),
    ("stride-len", ("matching", "stride"), [2, 2], ["matching.stride must hold 3 integers"]),
    ("seed-neg", ("matching", "seed"), -1, ["matching.seed must be >= 0"]),
    ("rates-no-kv", ("rates", "kv"), _DELETE, ["missing key 'rates.kv'", "q, kv, h"]),
    ("rates-unknown", ("rates", "v"), [[0.0] * 6] * 4, ["unknown key 'rates.v'", "q, kv, h"]),
    ("rate-high", ("rates", "q", 3, 5), 1.2, ["rates.q[3][5] (block 3, step 5) = 1.2 is outside [0, 1)", "0.862"]),
    ("rate-one", ("rates", "q", 0, 0), 1.0, ["rates.q[0][0] (block 0, step 0) = 1.0 is outside [0, 1)"]),
    ("rate-neg", ("rates", "kv", 1, 2), -0.1, ["rates.kv[1][2] (block 1, step 2) = -0.1 is outside [0, 1)"]),
    ("rate-nan", ("rates", "q", 2, 4), float("nan"), ["rates.q[2][4] (block 2, step 4) is NaN"]),
    ("rate-inf", ("rates", "h", 0, 1), float("inf"), ["rates.h[0][1] (block 0, step 1) is +inf"]),
    ("rate-str", ("rates", "q", 0, 0), "0.5", ["rates.q[0][0] (block 0, step 0) must be a number", "'0.5' (string)"]),
    ("rate-null", ("rates", "q", 0, 0), None, ["rates.q[0][0] (block 0, step 0) must be a number", "(null)"]),
    ("rates-rows", ("rates", "q"), [[0.0] * 6] * 3, ["rates.q has 3 rows but model.num_blocks is 4"]),
    ("rates-cols", ("rates", "kv", 2), [0.0] * 5,
     ["rates.kv[2] (block 2) has 5 entries but sampler.num_steps is 6"]),
    ("rates-row-scalar", ("rates", "kv", 2), 0.0, ["rates.kv[2] must be an array"]),
    ("h-and-q", ("rates", "h", 0, 0), 0.2,
     ["rates.h[0][0] = 0.2 and rates.q[0][0] = 0.8 are both non-zero", "SymRnR", "AsymRnR", "set one of them to 0"]),
    ("h-and-kv", ("rates", "h", 1, 2), 0.2, ["rates.h[1][2] = 0.2 and rates.kv[1][2] = 0.3 are both non-zero"]),
    ("provenance-list", ("provenance",), [], ["provenance must be a JSON object"]),
    ("provenance-notes", ("provenance", "notes"), 5, ["provenance.notes must be a string"]),
    ("tag-int", ("tag",), 5, ["tag must be a string"]),
]


@pytest.mark.parametrize("path, value, fragments", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_documents_raise_clear_errors(golden_doc, path, value, fragments):
    doc = value if path == () else golden_doc
    if path:
        _set(doc, path, value)
    with pytest.raises(ScheduleFormatError) as info:
        Schedule.from_dict(doc)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_bad_document_in_file_names_path_and_key(golden_doc, tmp_path):
    golden_doc["rates"]["q"][3][5] = 1.2
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(golden_doc))
    with pytest.raises(ScheduleFormatError) as info:
        load_schedule(path)
    assert str(info.value).startswith(f"schedule file '{path}': rates.q[3][5]")


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node[:2]):
            yield from _paths(value, prefix + (i,))


def test_no_mutation_escapes_as_a_bare_exception(golden_doc):
    """Every key deleted or replaced by a value of another type: valid, or a ScheduleFormatError."""
    replacements = [_DELETE, None, "x", 0.5, -3, True, [], {}, [[1]]]
    checked = 0
    for path in list(_paths(golden_doc))[1:]:
        for value in replacements:
            doc = copy.deepcopy(golden_doc)
            if value is _DELETE and isinstance(path[-1], int):
                continue
            _set(doc, path, value)
            try:
                Schedule.from_dict(doc)
            except ScheduleFormatError:
                pass
            checked += 1
    assert checked > 400


# ---------------------------------------------------------------------------------------------------
# API: constructors and queries
# ---------------------------------------------------------------------------------------------------


def test_numpy_rates_are_stored_as_python_floats():
    q = np.full((3, 4), 0.25, dtype=np.float32)
    s = Schedule.zeros(_model(), _sampler()).with_rates(q=q, kv=np.zeros((3, 4)))
    assert isinstance(s.rates["q"], tuple) and isinstance(s.rates["q"][0], tuple)
    assert all(type(r) is float for row in s.rates["q"] for r in row)
    assert s.rate("q", 2, 3) == 0.25
    direct = Schedule(_model(), _sampler(), MatchingSettings(), {"q": q.tolist(), "kv": [[0] * 4] * 3, "h": q * 0})
    assert direct.rates == s.rates
    assert type(direct.rates["kv"][0][0]) is float


def test_zeros_and_with_rates_copy():
    base = Schedule.zeros(_model(), _sampler())
    assert base.matching == MatchingSettings()
    assert all(base.mean_rate(f) == 0.0 for f in sf.SCHEDULE_FEATURES)
    assert base.provenance["tool_version"] == asymrnr.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", base.provenance["created"])
    new = base.with_rates(kv=[[0.5] * 4] * 3)
    assert new.mean_rate("kv") == 0.5 and base.mean_rate("kv") == 0.0
    assert new.model == base.model and new.sampler == base.sampler
    new.provenance["notes"] = "changed"
    assert base.provenance["notes"] == ""
    with pytest.raises(ScheduleFormatError, match="unknown rate feature 'v'; schedule features are q, kv, h"):
        base.with_rates(v=[[0.1] * 4] * 3)
    with pytest.raises(ScheduleFormatError, match=re.escape("rates.q[0][0] (block 0, step 0) = 1.5 is outside")):
        base.with_rates(q=[[1.5] * 4] * 3)
    with pytest.raises(ScheduleFormatError, match=re.escape("rates.h[0][0] = 0.1 and rates.kv[0][0] = 0.5")):
        new.with_rates(h=[[0.1] * 4] * 3)


def test_rate_and_mean_rate_errors(golden):
    with pytest.raises(ScheduleFormatError, match="unknown feature 'k'; schedule features are q, kv, h"):
        golden.rate("k", 0, 0)
    with pytest.raises(ScheduleFormatError, match="unknown feature 'v'"):
        golden.mean_rate("v")
    with pytest.raises(ScheduleMismatchError, match=re.escape("block 4 is out of range: the schedule has 4 blocks (0..3)")):
        golden.rate("q", 4, 0)
    with pytest.raises(ScheduleMismatchError, match=re.escape("step 6 is out of range: the schedule has 6 steps (0..5)")):
        golden.rate("q", 0, 6)


def test_descriptions_validate_on_construction():
    with pytest.raises(ScheduleFormatError, match="unknown metric 'l2'"):
        MatchingSettings(metric="l2")
    with pytest.raises(ScheduleFormatError, match=re.escape("matching.stride[2] must be >= 1, got 0")):
        MatchingSettings(stride=(2, 2, 0))
    with pytest.raises(ScheduleFormatError, match="sampler.timesteps has 2 entries but sampler.num_steps is 3"):
        SamplerDescription(None, 3, [1.0, 2.0])
    assert MatchingSettings(stride=[1, 2, 2]).stride == (1, 2, 2)
    assert _model(latent_grid=[2, 3, 4]).latent_grid == (2, 3, 4)
    assert SamplerDescription(None, 2, None).timesteps is None
    with pytest.raises(ScheduleFormatError, match="Schedule.model must be a ModelDescription"):
        Schedule({"num_blocks": 3}, _sampler(), MatchingSettings(), {})


def test_provenance_must_be_json(golden):
    with pytest.raises(ScheduleFormatError, match="provenance must hold only JSON values"):
        Schedule(golden.model, golden.sampler, golden.matching, golden.rates, {"when": object()})


# ---------------------------------------------------------------------------------------------------
# Schedule.uniform with a tiny CogVideoX transformer
# ---------------------------------------------------------------------------------------------------

needs_arch = pytest.mark.skipif(importlib.util.find_spec("asymrnr.arch") is None, reason="asymrnr.arch not written yet")


@pytest.fixture(scope="module")
def tiny_transformer():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.CogVideoXTransformer3DModel(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        sample_height=8,
        sample_width=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )


class _Pipe:
    def __init__(self, transformer, scheduler):
        self.transformer = transformer
        self.scheduler = scheduler


@needs_arch
def test_uniform_bare_transformer(tiny_transformer, tmp_path):
    s = Schedule.uniform(tiny_transformer, 5, q=0.3, kv=0.2, cache_steps=2, seed=7, notes="smoke")
    assert s.sampler == SamplerDescription(None, 5, None)
    assert s.model.transformer_class == "CogVideoXTransformer3DModel"
    assert s.model.num_blocks == 2 and s.model.num_heads == 2 and s.model.head_dim == 16
    assert s.model.rope is True and s.model.text_len == 16
    assert s.model.latent_grid == (3, 4, 4)
    assert s.matching == MatchingSettings(cache_steps=2, seed=7)
    assert s.rates["q"] == ((0.3,) * 5,) * 2
    assert s.rates["h"] == ((0.0,) * 5,) * 2
    assert s.provenance["notes"] == "smoke" and s.provenance["source"] == "uniform"
    assert s.tag.startswith("cogvideox-L2-q30-kv20-s2-n5-")
    assert load_schedule(s.save(tmp_path / "u.json")).to_dict() == s.to_dict()


@needs_arch
def test_uniform_pipeline_records_timesteps(tiny_transformer):
    from diffusers import CogVideoXDDIMScheduler

    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing")
    pipe = _Pipe(tiny_transformer, scheduler)
    s = Schedule.uniform(pipe, 6, kv=0.4, latent_grid=(13, 30, 45), text_len=226, metric="cosine", stride=[1, 2, 2])
    assert s.sampler.scheduler_class == "CogVideoXDDIMScheduler"
    assert s.sampler.timesteps == (999.0, 832.0, 666.0, 499.0, 332.0, 166.0)
    assert all(type(t) is float for t in s.sampler.timesteps)
    assert scheduler.num_inference_steps is None  # the pipeline's own scheduler was left alone
    assert s.model.latent_grid == (13, 30, 45) and s.model.text_len == 226
    assert s.matching.metric == "cosine" and s.matching.stride == (1, 2, 2)
    assert s.mean_rate("kv") == pytest.approx(0.4) and s.mean_rate("q") == 0.0


@needs_arch
def test_uniform_rejects_bad_rates(tiny_transformer):
    with pytest.raises(ScheduleFormatError, match="Schedule.uniform: h=0.2 together with q=0.1"):
        Schedule.uniform(tiny_transformer, 4, q=0.1, h=0.2)
    with pytest.raises(ScheduleFormatError, match=re.escape("Schedule.uniform: q=1.0 is outside [0, 1)")):
        Schedule.uniform(tiny_transformer, 4, q=1.0)
    with pytest.raises(ScheduleFormatError, match="Schedule.uniform: kv must be a finite number"):
        Schedule.uniform(tiny_transformer, 4, kv=math.nan)
    with pytest.raises(ScheduleFormatError, match="matching.cache_steps must be >= 1, got 0"):
        Schedule.uniform(tiny_transformer, 4, q=0.1, cache_steps=0)
    with pytest.raises(ScheduleFormatError, match="num_steps must be >= 1"):
        Schedule.uniform(tiny_transformer, 0)
    h_only = Schedule.uniform(tiny_transformer, 4, h=0.2)
    assert h_only.mean_rate("h") == pytest.approx(0.2) and "-h20-" in h_only.tag


def test_saved_file_permissions_follow_umask(golden, tmp_path):
    old = os.umask(0o022)
    try:
        path = golden.save(tmp_path / "p.json")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
