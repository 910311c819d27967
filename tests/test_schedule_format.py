"""Tests of the schedule JSON format (asymrnr.formats.schedule, also reachable as asymrnr.schedule_format):
golden files of both versions, the v1 upgrade, validation, hostile files, round trips, tag, provenance."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import asymrnr
from asymrnr import schedule_format as sf
from asymrnr.errors import AsymRnRError, ScheduleFormatError, ScheduleMismatchError
from asymrnr.formats import schedule as fs
from asymrnr.schedule_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MatchingSettings,
    ModelDescription,
    SamplerDescription,
    Schedule,
    load_schedule,
)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "schedule_v1_golden.json"
#: The tag version 1 gave the v1 golden file (stored in it, recorded in provenance.upgraded_from).
GOLDEN_V1_TAG = "cogvideox-L4-q23-kv15-s2-n6-6cd8c6"
#: Its tag once upgraded (the hash covers the version-2 records).
GOLDEN_TAG = "cogvideox-L4-q23-kv15-s2-n6-15a582"
GOLDEN_V2 = DATA / "schedule_v2_golden.json"
GOLDEN_V2_TAG = "wan-L4-q20-kv13-h07-s2-n6-0e4b62"
LOGGER = "asymrnr.formats.schedule"


@pytest.fixture
def golden_doc() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture
def golden() -> Schedule:
    return load_schedule(GOLDEN)


@pytest.fixture
def golden_v2_doc() -> dict:
    return json.loads(GOLDEN_V2.read_text(encoding="utf-8"))


@pytest.fixture
def golden_v2() -> Schedule:
    return load_schedule(GOLDEN_V2)


def _model(**kw) -> ModelDescription:
    base = dict(
        family="cogvideox",
        transformer_class="CogVideoXTransformer3DModel",
        num_blocks=3,
        num_heads=2,
        head_dim=16,
        patch_size=(1, 2, 2),
        rope=True,
        latent_grid=(3, 4, 4),
        text_len=16,
        text_layout="first",
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
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        schedule = load_schedule(str(GOLDEN))  # str accepted as well as Path
    assert caplog.records == []  # stored (version-1) tag agrees with the content
    assert schedule.to_dict() == golden.to_dict()

    assert golden.tag == GOLDEN_TAG
    assert golden.provenance["upgraded_from"] == {"version": 1, "tag": GOLDEN_V1_TAG}
    assert golden.model.transformer_class == "CogVideoXTransformer3DModel"
    assert golden.model.family == "cogvideox"  # upgraded: version 1 described CogVideoX only
    assert golden.model.patch_size == (1, 2, 2)  # (t, h, w) from patch_size_t 1 and patch_size 2
    assert golden.model.patch_size_t == 1 and golden.model.spatial_patch == 2
    assert golden.model.text_layout == "first" and golden.model.cross_len == 0 and golden.model.block_kinds == ()
    assert golden.model.latent_grid == (13, 30, 45)
    assert golden.model.num_video_tokens == 13 * 30 * 45 == 17550
    assert golden.model.inner_dim == 48 * 64
    assert golden.model.text_first is True
    assert golden.sampler.scheduler_class == "CogVideoXDPMScheduler"
    assert golden.sampler.timesteps == (999.0, 832.0, 666.0, 499.0, 332.0, 166.0)
    assert golden.sampler.config == {} and golden.sampler.transformers == ("transformer",)
    assert golden.sampler.step_transformer is None
    # version 1 had one partition per (block, feature) for the whole generation; its granularity is kept
    assert golden.matching == MatchingSettings(cache_steps=2, granularity="joint", partition="fixed")
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


def test_golden_v2_file_loads_with_exact_values(golden_v2, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        schedule = load_schedule(str(GOLDEN_V2))
    assert caplog.records == []
    assert schedule == golden_v2
    assert golden_v2.tag == GOLDEN_V2_TAG
    m = golden_v2.model
    assert m == ModelDescription(
        family="wan", transformer_class="WanTransformer3DModel", num_blocks=4, num_heads=40, head_dim=128,
        patch_size=(1, 2, 2), rope=True, latent_grid=(21, 30, 52), text_len=0, text_layout="none", ffn_dim=13824,
        cross_len=512, block_kinds=(),
    )
    assert m.num_video_tokens == 21 * 30 * 52 and m.inner_dim == 5120 and m.text_first is False
    smp = golden_v2.sampler
    assert smp.scheduler_class == "UniPCMultistepScheduler" and smp.num_steps == 6
    assert smp.timesteps == (999.0, 983.0, 960.0, 923.0, 857.0, 707.0)
    assert smp.config == {
        "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True,
        "flow_shift": 12.0, "solver_order": 2, "solver_type": "bh2", "timestep_spacing": "linspace",
        "final_sigmas_type": "zero",
    }
    assert smp.transformers == ("transformer", "transformer_2")
    assert smp.step_transformer == (0, 0, 0, 0, 1, 1)
    # row b at step k applies to block b of the transformer that runs step k
    assert [smp.transformer_of_step(k) for k in range(6)] == ["transformer"] * 4 + ["transformer_2"] * 2
    assert smp.steps_of("transformer_2") == (4, 5)
    assert golden_v2.matching == MatchingSettings(
        metric="cosine", stride=(1, 2, 2), cache_steps=2, reduce_op="discard", granularity="head", seed=3,
        partition="window",
    )
    assert golden_v2.rates["q"] == (
        (0.6, 0.6, 0.5, 0.5, 0.0, 0.0), (0.3, 0.3, 0.0, 0.0, 0.2, 0.2), (0.0,) * 6, (0.5, 0.5, 0.25, 0.25, 0.0, 0.0),
    )
    assert golden_v2.rates["kv"] == (
        (0.4, 0.4, 0.4, 0.4, 0.0, 0.0), (0.2, 0.2, 0.1, 0.1, 0.1, 0.1), (0.0,) * 6, (0.0, 0.0, 0.35, 0.35, 0.0, 0.0),
    )
    assert golden_v2.rates["h"] == ((0.0, 0.0, 0.0, 0.0, 0.5, 0.5), (0.0,) * 6, (0.35, 0.35, 0.0, 0.0, 0.0, 0.0), (0.0,) * 6)
    assert golden_v2.rate("h", 0, 4) == 0.5 and golden_v2.rate("q", 0, 4) == 0.0
    assert golden_v2.mean_rate("q") == pytest.approx(4.7 / 24)
    assert golden_v2.mean_rate("kv") == pytest.approx(3.1 / 24)
    assert golden_v2.mean_rate("h") == pytest.approx(1.7 / 24)
    assert golden_v2.provenance == {
        "tool_version": "0.1.0",
        "created": "2026-06-01T12:00:00Z",
        "notes": "Golden example of schedule format version 2 (4 of Wan 2.2 A14B's 40 blocks, 6 UniPC steps, two "
                 "experts). It must keep loading in every later asymrnr release: never edit it.",
        "source": "hand-written",
        "model_id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "dtype": "bfloat16",
        "torch_version": "2.13.0",
        "diffusers_version": "0.42.1",
    }


def test_golden_v2_file_is_what_its_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_golden_schedule", DATA / "make_golden_schedule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert written.read_bytes() == GOLDEN_V2.read_bytes()


@pytest.mark.parametrize("path", [GOLDEN, GOLDEN_V2], ids=["v1", "v2"])
def test_golden_rates_constant_within_cache_windows(path):
    golden = load_schedule(path)
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
        f"s = asymrnr.load_schedule({str(GOLDEN_V2)!r})\n"
        f"assert s.tag == {GOLDEN_V2_TAG!r}, s.tag\n"
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


def test_save_load_round_trip(golden_v2, tmp_path):
    out = golden_v2.save(tmp_path / "sub" / "s.json")  # creates the folder
    assert isinstance(out, Path) and out == tmp_path / "sub" / "s.json"
    again = load_schedule(out)
    assert again.to_dict() == golden_v2.to_dict()
    assert again == golden_v2
    # saving is deterministic: the golden file's bytes are reproduced exactly
    assert out.read_bytes() == GOLDEN_V2.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.json"]


def test_v1_file_saves_as_v2_and_round_trips(golden, tmp_path):
    out = golden.save(tmp_path / "s.json")
    doc = json.loads(out.read_text())
    assert doc["version"] == 2 and doc["tag"] == GOLDEN_TAG
    assert doc["model"]["family"] == "cogvideox" and doc["model"]["patch_size"] == [1, 2, 2]
    assert "patch_size_t" not in doc["model"] and "text_first" not in doc["model"]
    assert doc["matching"]["partition"] == "fixed"
    assert doc["provenance"]["upgraded_from"] == {"version": 1, "tag": GOLDEN_V1_TAG}
    again = load_schedule(out)
    assert again == golden and again.tag == GOLDEN_TAG
    assert golden.save(tmp_path / "t.json").read_bytes() == out.read_bytes()  # deterministic


def test_v1_upgrade_maps_text_first_and_patch(golden_doc):
    golden_doc["model"].update(patch_size=2, patch_size_t=2, text_first=False)
    del golden_doc["tag"]
    s = Schedule.from_dict(golden_doc)
    assert s.model.patch_size == (2, 2, 2) and s.model.text_layout == "last" and s.model.text_first is False
    golden_doc["model"].update(text_len=0, text_first=True)
    assert Schedule.from_dict(golden_doc).model.text_layout == "none"


def test_each_rates_row_on_one_line(golden, tmp_path):
    text = golden.save(tmp_path / "s.json").read_text()
    lines = text.splitlines()
    assert "      [0.8, 0.8, 0.8, 0.8, 0.4, 0.4]," in lines
    assert "      [0.0, 0.0, 0.0, 0.0, 0.3, 0.3]" in lines
    assert '    "latent_grid": [13, 30, 45],' in lines
    assert '    "patch_size": [1, 2, 2],' in lines
    assert lines[1] == '  "format": "asymrnr-schedule",'
    assert lines[2] == '  "version": 2,'
    assert json.loads(text)["tag"] == GOLDEN_TAG


@pytest.mark.parametrize("path", [GOLDEN, GOLDEN_V2], ids=["v1", "v2"])
def test_dataclass_dict_round_trips(path):
    golden = load_schedule(path)
    assert ModelDescription.from_dict(golden.model.to_dict()) == golden.model
    assert SamplerDescription.from_dict(golden.sampler.to_dict()) == golden.sampler
    assert MatchingSettings.from_dict(golden.matching.to_dict()) == golden.matching
    assert Schedule.from_dict(golden.to_dict()).to_dict() == golden.to_dict()
    d = golden.to_dict()
    assert d["format"] == FORMAT_NAME and d["version"] == FORMAT_VERSION == 2
    assert list(d) == ["format", "version", "tag", "model", "sampler", "matching", "rates", "provenance"]
    assert sf.READABLE_VERSIONS == (1, 2) and sorted(fs.READERS) == [1, 2]


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
    real_iter = fs._iter_json

    def crashing(obj, *a, **k):
        for i, chunk in enumerate(real_iter(obj, *a, **k)):
            if i == 40:
                raise OSError("disk full (simulated)")
            yield chunk

    monkeypatch.setattr(fs, "_iter_json", crashing)
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
    # every version-2 record takes part
    d = golden.to_dict()
    d["matching"]["partition"] = "window"
    assert Schedule.from_dict(d).tag != golden.tag
    d = golden.to_dict()
    d["sampler"]["config"] = {"flow_shift": 5.0}
    assert Schedule.from_dict(d).tag != golden.tag
    d = golden.to_dict()
    d["model"]["cross_len"] = 1
    assert Schedule.from_dict(d).tag != golden.tag


def test_tag_format_uses_the_family(golden_v2):
    assert re.fullmatch(r"wan-L4-q20-kv13-h07-s2-n6-[0-9a-f]{6}", golden_v2.tag)
    # the family, never the class name; characters outside [a-z0-9-] become '-', so the tag stays file-safe
    s = Schedule.zeros(_model(family="ltx_video.2", transformer_class="LTXVideoTransformer3DModel"), _sampler())
    assert re.fullmatch(r"ltx-video-2-L3-q00-kv00-s4-n4-[0-9a-f]{6}", s.tag)
    # the hash is the first 6 hex digits of the SHA-256 of the canonical JSON of the four records
    content = {k: golden_v2.to_dict()[k] for k in ("model", "sampler", "matching", "rates")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    assert golden_v2.tag.endswith("-" + hashlib.sha256(canonical.encode("ascii")).hexdigest()[:6])


def test_tag_ignores_environment_provenance(golden_v2):
    other = dataclasses.replace(golden_v2, provenance={**golden_v2.provenance, "dtype": "float32",
                                                       "torch_version": "9.9", "model_id": None})
    assert other.tag == golden_v2.tag


def test_tag_shows_h_only_when_used(golden):
    zeros = {f: [[0.0] * 6] * 4 for f in ("q", "kv")}
    with_h = golden.with_rates(**zeros, h=[[0.25] * 6] * 4)
    assert re.fullmatch(r"cogvideox-L4-q00-kv00-h25-s2-n6-[0-9a-f]{6}", with_h.tag)
    assert "-h" not in golden.tag


def test_stale_stored_tag_warns_and_is_recomputed(golden_doc, tmp_path, caplog):
    golden_doc["rates"]["q"][0][0] = 0.5  # edited by hand, stored tag left as it was
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(golden_doc))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        schedule = load_schedule(path)
    assert schedule.tag != GOLDEN_TAG
    assert schedule.to_dict()["tag"] == schedule.tag
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert GOLDEN_V1_TAG in messages[0] and schedule.tag in messages[0] and "edited" in messages[0]
    assert schedule.provenance["upgraded_from"]["tag"] != GOLDEN_V1_TAG  # the v1 tag of the edited content


def test_stale_stored_tag_warns_v2(golden_v2_doc, caplog):
    golden_v2_doc["rates"]["kv"][1][0] = 0.25
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        schedule = Schedule.from_dict(golden_v2_doc)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert GOLDEN_V2_TAG in messages[0] and schedule.tag in messages[0] and "edited" in messages[0]


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


# ---------------------------------------------------------------------------------------------------
# Hostile files: refused at load with the key path or the cause, never a crash later
# ---------------------------------------------------------------------------------------------------


def _load_text(tmp_path, text: str | bytes, name="hostile.json"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ScheduleFormatError) as info:
        load_schedule(path)
    msg = str(info.value)
    assert str(path) in msg
    return msg


@pytest.mark.parametrize("where, old, key", [
    (GOLDEN_V2, '"num_heads": 40', "model.num_heads must be <= 100000"),
    (GOLDEN_V2, '"seed": 3', "matching.seed must be <="),
    (GOLDEN_V2, '"flow_shift": 12.0', "sampler.config.flow_shift is an integer of 5000 digits"),
    (GOLDEN_V2, '"dtype": "bfloat16"', "provenance.dtype is an integer of 5000 digits"),
    (GOLDEN, '"version": 1', "unsupported schedule version <an integer of 5000 digits>"),
])
def test_integer_of_5000_digits_names_its_key(tmp_path, where, old, key):
    # json.loads alone raises a bare ValueError (Python converts at most 4,300 digits)
    huge = "9" * 5000
    with pytest.raises(ValueError):
        json.loads(huge)
    text = where.read_text().replace(old, old.split(":")[0] + ": " + huge)
    msg = _load_text(tmp_path, text)
    assert key in msg
    assert len(msg) < 1000  # the number is never spelled out


def test_integer_of_5000_digits_in_rates(tmp_path):
    text = GOLDEN_V2.read_text().replace("[0.6, 0.6, 0.5", "[-" + "1" * 5000 + ", 0.6, 0.5")
    msg = _load_text(tmp_path, text)
    assert "rates.q[0][0] (block 0, step 0) must be a number in [0, 1), got an integer of 5000 digits" in msg


@pytest.mark.parametrize("old, new, key", [
    ("[0.6, 0.6, 0.5", "[1e999, 0.6, 0.5", "rates.q[0][0] (block 0, step 0) is +inf"),
    ("[0.3, 0.3, 0.0", "[-1e999, 0.3, 0.0", "rates.q[1][0] (block 1, step 0) is -inf"),
    ("999.0, 983.0", "999.0, 1e999", "sampler.timesteps[1] is +inf"),
    ('"flow_shift": 12.0', '"flow_shift": 1e999', "sampler.config.flow_shift is +inf"),
    ('"source": "hand-written"', '"source": [1e999]', "provenance.source[0] is +inf"),
    ('"stride": [1, 2, 2]', '"stride": [100000000000000000000, 2, 2]', "matching.stride[0] must be <= 1024"),
    ('"num_heads": 40', '"num_heads": 1000000000000000000000000000000', "model.num_heads must be <= 100000"),
    ('"num_blocks": 4', '"num_blocks": 4.0', "model.num_blocks must be an integer"),
])
def test_hostile_values_in_file(tmp_path, old, new, key):
    text = GOLDEN_V2.read_text()
    assert old in text
    assert key in _load_text(tmp_path, text.replace(old, new, 1))


def test_deep_nesting_is_refused(tmp_path):
    msg = _load_text(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.json")
    assert "nested too deeply" in msg
    deep = "[" * 200 + "]" * 200  # parses, but no schedule value is nested like that
    msg = _load_text(tmp_path, GOLDEN_V2.read_text().replace('"hand-written"', deep), "deep2.json")
    assert "provenance.source" in msg and "nested more than 32 levels" in msg
    msg = _load_text(tmp_path, GOLDEN_V2.read_text().replace("[0.6, 0.6, 0.5", "[" + deep + ", 0.6, 0.5"), "deep3.json")
    assert "rates.q[0][0] (block 0, step 0) must be a number" in msg


def test_duplicate_key_in_v2_file(tmp_path):
    msg = _load_text(tmp_path, GOLDEN_V2.read_text().replace('"family": "wan"', '"family": "wan", "family": "x"'))
    assert "duplicate key 'family'" in msg


def test_non_utf8_file(tmp_path):
    text = GOLDEN_V2.read_bytes().replace(b"hand-written", b"hand-wr\xe9tten")  # latin-1, not UTF-8
    msg = _load_text(tmp_path, text)
    assert "corrupt or truncated" in msg and "not UTF-8 text" in msg


def test_file_over_64_mib_is_refused_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:  # sparse: costs no disk
        f.truncate(64 * 2**20 + 1)
    reads = []
    real_fdopen = os.fdopen
    monkeypatch.setattr(fs.os, "fdopen", lambda *a, **k: reads.append(a) or real_fdopen(*a, **k))
    with pytest.raises(ScheduleFormatError, match="larger than the 64 MiB a schedule may be") as info:
        load_schedule(big)
    assert str(big) in str(info.value) and "67,108,865 bytes" in str(info.value)
    assert reads == []  # refused from its size, never opened for reading
    # exactly at the limit it is read (and then refused as not JSON)
    with open(big, "r+b") as f:
        f.truncate(64 * 2**20)
    with pytest.raises(ScheduleFormatError, match="corrupt or truncated"):
        load_schedule(big)


def test_file_growing_past_the_limit_while_read(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    path.write_bytes(GOLDEN_V2.read_bytes())
    monkeypatch.setattr(fs, "MAX_FILE_BYTES", 100)
    with pytest.raises(ScheduleFormatError, match="larger than"):
        load_schedule(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            load_schedule(fifo)
        except ScheduleFormatError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # unblock it before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("load_schedule blocked on a FIFO")
    assert "is a FIFO (named pipe), not a regular file" in result["error"] and str(fifo) in result["error"]


def test_device_is_refused():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(ScheduleFormatError, match="'/dev/zero' is a character device, not a regular file"):
        load_schedule("/dev/zero")


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
    ("version-3", ("version",), 3, ["unsupported schedule version 3", "reads schedule version(s) 1, 2", "upgrade asymrnr"]),
    ("version-0", ("version",), 0, ["unsupported schedule version 0", "no asymrnr writes it", "corrupt"]),
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
    ("granularity", ("matching", "granularity"), "token", ["unknown granularity 'token'", "allowed: head, joint"]),
    ("cache-steps-0", ("matching", "cache_steps"), 0, ["matching.cache_steps must be >= 1, got 0"]),
    ("stride-0", ("matching", "stride", 1), 0, ["matching.stride[1] must be >= 1, got 0"]),
    ("stride-len", ("matching", "stride"), [2, 2], ["matching.stride must hold 3 integers"]),
    ("seed-neg", ("matching", "seed"), -1, ["matching.seed must be >= 0"]),
    ("rates-no-kv", ("rates", "kv"), _DELETE, ["missing key 'rates.kv'", "q, kv, h"]),
    ("rates-unknown", ("rates", "v"), [[0.0] * 6] * 4, ["unknown key 'rates.v'", "q, kv, h"]),
    ("rate-high", ("rates", "q", 3, 5), 1.2, ["rates.q[3][5] (block 3, step 5) = 1.2 is outside [0, 1)", "0.887"]),
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
    # version-1 files hold version-1 keys only (and are told so)
    ("v1-family", ("model", "family"), "cogvideox",
     ["unknown key 'model.family'", "model of a version 1 file holds only", "patch_size_t"]),
    ("v1-partition", ("matching", "partition"), "window", ["unknown key 'matching.partition'", "version 1"]),
    ("v1-config", ("sampler", "config"), {}, ["unknown key 'sampler.config'", "version 1"]),
    ("v1-no-text-first", ("model", "text_first"), _DELETE, ["missing key 'model.text_first'", "version 1"]),
    ("v1-text-first-str", ("model", "text_first"), "yes", ["model.text_first must be true or false"]),
    ("v1-patch-str", ("model", "patch_size"), "2", ["model.patch_size", "must be an integer", "'2' (string)"]),
    ("v1-patch-0", ("model", "patch_size_t"), 0, ["model.patch_size_t", "must be >= 1, got 0"]),
    ("v1-patch-huge", ("model", "patch_size"), 10**20, ["model.patch_size", "must be <= 1024"]),
    # bounded integers: hostile values are refused at load, with their key path
    ("num-heads-huge", ("model", "num_heads"), 10**30, ["model.num_heads must be <= 100000", "the file is corrupt"]),
    ("stride-huge", ("matching", "stride", 0), 10**20, ["matching.stride[0] must be <= 1024"]),
    ("grid-huge", ("model", "latent_grid", 2), 10**12, ["model.latent_grid[2] must be <= 1000000"]),
    ("seed-huge", ("matching", "seed"), 2**64, ["matching.seed must be <="]),
    ("cache-huge", ("matching", "cache_steps"), 10**9, ["matching.cache_steps must be <= 100000"]),
    ("version-huge", ("version",), 10**40, ["unsupported schedule version", "an integer of about 41 digits", "corrupt"]),
    ("rate-huge-int", ("rates", "q", 0, 0), 10**400, ["rates.q[0][0] (block 0, step 0) must be a number"]),
    ("provenance-huge-int", ("provenance", "n"), 10**30, ["provenance.n is", "below 10^18"]),
    ("provenance-inf", ("provenance", "x"), float("inf"), ["provenance.x is +inf"]),
    ("provenance-deep", ("provenance", "deep"), json.loads("[" * 40 + "]" * 40),
     ["provenance.deep", "nested more than 32 levels"]),
    ("class-long", ("model", "transformer_class"), "X" * 20_000, ["model.transformer_class is 20000 characters"]),
]

_GRID = [13, 30, 45]
V2_BAD_CASES = [
    ("v2-no-family", ("model", "family"), _DELETE, ["missing key 'model.family'", "a version 2 file needs"]),
    ("v2-family-bad", ("model", "family"), "Wan 2.2", ["model.family 'Wan 2.2' is not a family name"]),
    ("v2-patch-int", ("model", "patch_size"), 2, ["model.patch_size must be an array"]),
    ("v2-patch-len", ("model", "patch_size"), [2, 2], ["model.patch_size must hold 3 integers, got 2 entries"]),
    ("v2-patch-t", ("model", "patch_size_t"), 1, ["unknown key 'model.patch_size_t'", "version 2"]),
    ("v2-text-first", ("model", "text_first"), True, ["unknown key 'model.text_first'"]),
    ("v2-layout", ("model", "text_layout"), "middle", ["unknown text_layout 'middle'", "allowed: first, last, none"]),
    ("v2-layout-text", ("model", "text_layout"), "first", ["model.text_layout is 'first' but model.text_len is 0"]),
    ("v2-cross-neg", ("model", "cross_len"), -1, ["model.cross_len must be >= 0"]),
    ("v2-kinds", ("model", "block_kinds"), ["block"] * 3, ["model.block_kinds has 3 entries but model.num_blocks is 4"]),
    ("v2-num-heads-huge", ("model", "num_heads"), 10**30, ["model.num_heads must be <= 100000"]),
    ("v2-config-list", ("sampler", "config"), [1], ["sampler.config must be a JSON object"]),
    ("v2-config-inf", ("sampler", "config", "flow_shift"), float("inf"), ["sampler.config.flow_shift is +inf"]),
    ("v2-transformers-dup", ("sampler", "transformers"), ["transformer", "transformer"],
     ["sampler.transformers must name each transformer component once"]),
    ("v2-step-len", ("sampler", "step_transformer"), [0, 1], ["sampler.step_transformer has 2 entries", "num_steps is 6"]),
    ("v2-step-index", ("sampler", "step_transformer", 5), 2, ["sampler.step_transformer holds 2", "only 2 entries"]),
    ("v2-timestep-inf", ("sampler", "timesteps", 0), float("inf"), ["sampler.timesteps[0] is +inf"]),
    ("v2-partition", ("matching", "partition"), "random", ["unknown partition 'random'", "allowed: window, fixed"]),
    ("v2-no-partition", ("matching", "partition"), _DELETE, None),  # optional: defaults to "window"
    ("v2-stride-huge", ("matching", "stride", 0), 10**20, ["matching.stride[0] must be <= 1024"]),
    ("v2-h-and-kv", ("rates", "h", 0, 0), 0.1, ["rates.h[0][0] = 0.1 and rates.q[0][0] = 0.6 are both non-zero"]),
    ("v2-h-and-kv-only", ("rates", "h", 1, 2), 0.1, ["rates.h[1][2] = 0.1 and rates.kv[1][2] = 0.1 are both non-zero"]),
    ("v2-provenance-dtype", ("provenance", "dtype"), 16, ["provenance.dtype must be a string or null"]),
    ("v2-provenance-model-id-null", ("provenance", "model_id"), None, None),
    ("v2-version-1", ("version",), 1, ["missing key 'model.patch_size_t'", "version 1 file"]),
    ("v2-unknown-root", ("schedule",), {}, ["unknown key 'schedule'", "version 2 file"]),
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


@pytest.mark.parametrize("path, value, fragments", [c[1:] for c in V2_BAD_CASES], ids=[c[0] for c in V2_BAD_CASES])
def test_bad_v2_documents_raise_clear_errors(golden_v2_doc, path, value, fragments):
    _set(golden_v2_doc, path, value)
    if fragments is None:  # valid
        Schedule.from_dict(golden_v2_doc)
        return
    with pytest.raises(ScheduleFormatError) as info:
        Schedule.from_dict(golden_v2_doc)
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


@pytest.mark.parametrize("golden_path", [GOLDEN, GOLDEN_V2], ids=["v1", "v2"])
def test_no_mutation_escapes_as_a_bare_exception(golden_path):
    """Every key deleted or replaced by a value of another type: valid, or a ScheduleFormatError."""
    golden_doc = json.loads(golden_path.read_text(encoding="utf-8"))
    replacements = [_DELETE, None, "x", 0.5, -3, True, [], {}, [[1]], 10**30, float("inf"), [[[[[[1]]]]]] * 100]
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


class _Config(dict):
    """A pipeline config: a dict whose keys are also attributes (as diffusers' FrozenDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Pipe:
    def __init__(self, transformer, scheduler, name_or_path=None, **components):
        self.transformer = transformer
        self.scheduler = scheduler
        self.config = _Config(_name_or_path=name_or_path, **components.pop("config", {}))
        for name, value in components.items():
            setattr(self, name, value)


def test_uniform_bare_transformer(tiny_transformer, tmp_path):
    s = Schedule.uniform(tiny_transformer, 5, q=0.3, kv=0.2, cache_steps=2, seed=7, notes="smoke")
    assert s.sampler == SamplerDescription(None, 5, None)
    assert s.model.transformer_class == "CogVideoXTransformer3DModel"
    assert s.model.family == "cogvideox" and s.model.patch_size == (1, 2, 2) and s.model.text_layout == "first"
    assert s.matching.granularity == "head" and s.matching.partition == "window"  # the v2 defaults
    assert s.model.num_blocks == 2 and s.model.num_heads == 2 and s.model.head_dim == 16
    assert s.model.rope is True and s.model.text_len == 16
    assert s.model.latent_grid == (3, 4, 4)
    assert s.matching == MatchingSettings(cache_steps=2, seed=7)
    assert s.rates["q"] == ((0.3,) * 5,) * 2
    assert s.rates["h"] == ((0.0,) * 5,) * 2
    assert s.provenance["notes"] == "smoke" and s.provenance["source"] == "uniform"
    assert s.tag.startswith("cogvideox-L2-q30-kv20-s2-n5-")
    assert load_schedule(s.save(tmp_path / "u.json")).to_dict() == s.to_dict()


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


def test_uniform_records_environment_provenance(tiny_transformer):
    import diffusers
    import torch
    from diffusers import CogVideoXDDIMScheduler

    bare = Schedule.uniform(tiny_transformer, 3, q=0.1, notes="env")
    prov = bare.provenance
    assert list(prov) == ["tool_version", "created", "notes", "source", "model_id", "dtype", "torch_version",
                          "diffusers_version"]
    assert prov["tool_version"] == asymrnr.__version__ and prov["notes"] == "env" and prov["source"] == "uniform"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["created"])
    assert prov["model_id"] is None  # built in code: no _name_or_path
    assert prov["dtype"] == "float32"
    assert prov["torch_version"] == torch.__version__ and prov["diffusers_version"] == diffusers.__version__
    # a pipeline's name wins over the transformer's
    pipe = _Pipe(tiny_transformer, CogVideoXDDIMScheduler(), name_or_path="THUDM/CogVideoX-5b")
    assert Schedule.uniform(pipe, 3).provenance["model_id"] == "THUDM/CogVideoX-5b"
    assert fs.environment_provenance(pipe)["model_id"] == "THUDM/CogVideoX-5b"
    bf16 = copy.deepcopy(tiny_transformer).to(torch.bfloat16)
    bf16.register_to_config(_name_or_path="some/checkpoint")
    env = fs.environment_provenance(bf16)
    assert env == {"tool_version": asymrnr.__version__, "model_id": "some/checkpoint", "dtype": "bfloat16",
                   "torch_version": torch.__version__, "diffusers_version": diffusers.__version__}
    # provenance never changes the tag
    assert Schedule.uniform(bf16, 3, q=0.1, notes="other").tag == bare.tag


def test_uniform_wan22_two_experts(tmp_path):
    diffusers = pytest.importorskip("diffusers")

    def expert(seed):
        import torch

        torch.manual_seed(seed)
        return diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        )

    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=12.0)
    pipe = _Pipe(expert(0), scheduler, transformer_2=expert(1), config={"boundary_ratio": 0.875})
    s = Schedule.uniform(pipe, 6, kv=0.3, latent_grid=(3, 4, 4))
    assert s.model.family == "wan" and s.model.text_layout == "none" and s.model.cross_len == 512
    assert s.sampler.scheduler_class == "UniPCMultistepScheduler"
    assert s.sampler.timesteps == (999.0, 983.0, 960.0, 923.0, 857.0, 707.0)
    assert s.sampler.transformers == ("transformer", "transformer_2")
    assert s.sampler.step_transformer == (0, 0, 0, 0, 1, 1)
    assert s.sampler.config["flow_shift"] == 12.0
    assert re.fullmatch(r"wan-L2-q00-kv30-s4-n6-[0-9a-f]{6}", s.tag)
    assert load_schedule(s.save(tmp_path / "wan.json")) == s


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


def test_inspect_summary_shows_provenance_versions(golden, golden_v2):
    from asymrnr.inspect_text import schedule_summary

    lines = schedule_summary(golden_v2).splitlines()
    assert ("  versions  asymrnr 0.1.0, torch 2.13.0, diffusers 0.42.1; model Wan-AI/Wan2.2-T2V-A14B-Diffusers "
            "(bfloat16)") in lines
    lines = schedule_summary(golden).splitlines()
    assert f"  versions  asymrnr 0.1.0; read from a version 1 file, tagged {GOLDEN_V1_TAG} there" in lines
    bare = dataclasses.replace(golden_v2, provenance={})
    assert not any(line.startswith("  versions") for line in schedule_summary(bare).splitlines())


# ---------------------------------------------------------------------------------------------------
# docs/schedule-format.md stays in sync with the records' field specs
# ---------------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "schedule-format.md"


def _doc_rows(heading: str) -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(heading + "\n")
    end = min(i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1), len(text)) if i > 0)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _doc_type(fs) -> str:
    names = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "json": "object"}
    if fs.kind in names:
        text = names[fs.kind]
    else:
        text = f"[{names[fs.kind[:-1]]}]" + (f" x {fs.length}" if fs.length else "")
    return text + (" or null" if fs.nullable else "")


def _doc_bounds(fs) -> str:
    kind = fs.kind[:-1] if fs.kind in ("ints", "floats", "strs") else fs.kind
    bound = lambda x: "2^63-1" if x == 2**63 - 1 else str(int(x))  # noqa: E731
    if kind == "int":
        text = f"{bound(fs.minimum)} .. {bound(fs.maximum)}"
    elif kind == "float":
        text = "finite"
    elif kind == "str":
        text = ", ".join(f"`{c}`" for c in fs.choices) if fs.choices else "non-empty"
    elif kind == "json":
        text = "JSON values"
    else:
        text = ""
    return f"each {text}" if kind != fs.kind else text


@pytest.mark.parametrize("cls, heading", [
    (ModelDescription, "### `model`"), (SamplerDescription, "### `sampler`"), (MatchingSettings, "### `matching`"),
])
def test_doc_tables_match_the_field_specs(cls, heading):
    from asymrnr.formats.fields import field_specs

    rows = _doc_rows(heading)
    specs = field_specs(cls)
    assert [row[0].strip("`") for row in rows] == [name for name, _, _ in specs]
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for row, (name, fs, required) in zip(rows, specs):
        assert row[1] == _doc_type(fs), name
        assert row[2] == _doc_bounds(fs), name
        if required:
            assert row[3] == "required", name
        else:
            f = defaults[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            plain = list(default) if isinstance(default, tuple) else default
            assert row[3] == f"`{json.dumps(plain)}`", name


def test_doc_root_and_v1_tables_match_the_code():
    assert [row[0].strip("`") for row in _doc_rows("## Root object")] == list(fs.ROOT_KEYS)
    v1 = {}
    for row in _doc_rows("### Version 1 and its upgrade"):  # the key table comes before the upgrade table
        if row[0] in ("`model`", "`sampler`", "`matching`"):
            v1.setdefault(row[0].strip("`"), re.findall(r"`(\w+)`", row[1]))
    from asymrnr.formats.descriptions import V1_MATCHING_KEYS, V1_MODEL_KEYS

    assert v1 == {"model": list(V1_MODEL_KEYS), "sampler": list(fs.V1_SAMPLER_KEYS), "matching": list(V1_MATCHING_KEYS)}
    text = DOC.read_text(encoding="utf-8")
    assert GOLDEN_V2_TAG in text and f"{fs.MAX_FILE_BYTES // 2**20} MiB" in text
