"""``asymrnr compare`` and :func:`asymrnr.compare.compare` on the embedded tiny model: files, numbers, refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr.cli import main
from asymrnr.compare import (
    CompareError, CompareResult, Variant, compare, load_compare, make_variants, parse_cache, speedup_verdict,
)
from asymrnr.quality import latent_similarity, psnr_frames

STEPS = 2


@pytest.fixture(scope="module")
def schedules(tmp_path_factory, tiny_pipeline):
    """A schedule that reduces nothing, one that reduces, one of another architecture, one of 3 steps."""
    folder = tmp_path_factory.mktemp("schedules")
    zero = asymrnr.Schedule.uniform(tiny_pipeline, STEPS)
    real = asymrnr.Schedule.uniform(tiny_pipeline, STEPS, q=0.3, kv=0.3)
    other = dataclasses.replace(real, model=dataclasses.replace(real.model, num_heads=4))
    three = asymrnr.Schedule.uniform(tiny_pipeline, 3, q=0.3)
    return {name: s.save(folder / f"{name}.json") for name, s in
            (("zero", zero), ("real", real), ("other", other), ("three", three))}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, schedules):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cmp") / "out"
    result = CliRunner().invoke(main, [
        "compare", "--model", "tiny-cogvideox", "--schedule", str(schedules["real"]), "--schedule",
        str(schedules["zero"]), "--num-prompts", "1", "--no-warmup", "--out", str(out),
    ], catch_exceptions=False)
    return out, result


def test_cli_writes_the_comparison(compared):
    out, result = compared
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.json", "samples"]
    videos = sorted(p.name for p in (out / "samples").iterdir())
    assert len(videos) == 2 and all(v.endswith((".gif", ".mp4")) and v.split(".")[0].endswith("-p0") for v in videos)
    if videos[0].endswith(".gif"):
        from PIL import Image

        img = Image.open(out / "samples" / videos[0])
        assert img.n_frames == 9 and img.size == (2 * 80 + 4, 64)  # dense | gap | reduced, every frame
    for needle in ("predicted", "compare.json", "compare.html", "identical to dense"):
        assert needle in result.output, needle
    # the reducing schedule's line states plainly how it compares with the prediction
    line = next(ln for ln in result.output.splitlines() if "q30-kv30" in ln)
    assert ("BELOW the predicted" in line and "% of the prediction" in line) or "meets the predicted" in line


def test_compare_json_round_trips_with_every_number(compared):
    out, _ = compared
    raw = json.loads((out / "compare.json").read_text())
    assert raw["format"] == "asymrnr-compare" and raw["version"] == 1
    for key in ("prompts", "seeds", "repeats", "warmup", "device", "timer", "memory", "settings", "info", "dense",
                "variants"):
        assert key in raw, key
    assert raw["settings"]["num_inference_steps"] == STEPS and raw["timer"] == "cpu" and raw["device"] == "cpu"
    assert raw["info"]["model"] == "tiny-cogvideox"
    result = load_compare(out / "compare.json")
    assert isinstance(result, CompareResult) and result.to_dict() == raw
    (t,), = result.dense.timings
    assert t.transformer_calls == STEPS and 0 < t.transformer_s < t.wall_s and t.transformer_cpu_s > 0
    assert result.memory in ("process_peak_rss", None)
    for v in raw["variants"]:
        for key in ("transformer_speedup", "transformer_cpu_speedup", "generation_speedup", "predicted_speedup",
                    "shortfall", "verdict", "mean_ssim", "mean_latent_cosine", "paired_transformer_speedups"):
            assert key in v["summary"], key
        assert len(v["quality"]) == 1 and len(v["quality"][0]["psnr_db"]) == 9  # one PSNR per frame


def test_zero_schedule_is_identical_and_a_real_one_is_not(compared):
    out, _ = compared
    result = load_compare(out / "compare.json")
    real, zero = result.variants
    assert zero.name.startswith("schedule-") and "q00-kv00" in zero.name
    (qz,), (qr,) = zero.quality, real.quality
    assert all(math.isinf(x) for x in qz.psnr_db) and qz.ssim == [1.0] * 9
    assert qz.latent_cosine == 1.0 and qz.latent_rel_l2 == 0.0  # bit-identical latents
    assert all(math.isfinite(x) and x > 10 for x in qr.psnr_db)
    assert qr.latent_cosine < 1.0 and qr.latent_rel_l2 > 0.0
    assert zero.predicted_speedup == pytest.approx(1.0) and real.predicted_speedup > 1.0


def test_page_is_self_contained_and_says_the_verdict(compared):
    out, _ = compared
    import plotly.offline as po

    page = (out / "compare.html").read_text(encoding="utf-8")
    js = po.get_plotlyjs()
    assert page.count(js[:2000]) == 1
    rest = page.replace(js, "")
    assert not re.search(r"https?://", rest)  # nothing to fetch: figures and frames are inline
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", page, re.I)
    for sid in ("compare-summary", "compare-speed", "compare-quality", "compare-frames"):
        assert page.count(f'<section id="{sid}">') == 1, sid
    assert re.findall(r'<div id="(fig-[a-z-]+)" class="plotly-graph-div"', page) == ["fig-compare-speed",
                                                                                     "fig-compare-quality"]
    assert rest.count('src="data:image/png;base64,') == 2 * 2 * 6  # 2 variants x (dense, reduced) x 6 frames
    assert "could not be drawn" not in page
    result = load_compare(out / "compare.json")
    for v in result.variants:
        assert speedup_verdict(result.summary(v)["transformer_speedup"], v.predicted_speedup) in page


def test_compare_refuses_to_overwrite_without_the_flag(compared, schedules):
    out, _ = compared
    before = (out / "compare.json").read_bytes()
    res = CliRunner().invoke(main, ["compare", "--model", "tiny-cogvideox", "--schedule", str(schedules["zero"]),
                                    "--num-prompts", "1", "--out", str(out)])
    assert res.exit_code != 0 and "--overwrite" in res.output and "loading" not in res.output
    assert (out / "compare.json").read_bytes() == before


@pytest.mark.parametrize("case, args, needle", [
    ("nothing", [], "--schedule FILE"),
    ("missing", ["--schedule", "{tmp}/nope.json"], "no such file"),
    ("other model", ["--schedule", "{other}"], "num_heads = 4"),
    ("steps", ["--schedule", "{real}", "--steps", "3"], "calibrated for 2 steps"),
    ("mixed steps", ["--schedule", "{real}", "--schedule", "{three}"], "different step counts"),
    ("twice", ["--schedule", "{real}", "--schedule", "{real}"], "given twice"),
    ("cache", ["--schedule", "{real}", "--cache", "magic:1"], "unknown cache"),
    ("cache value", ["--schedule", "{real}", "--cache", "fbc:-1"], "positive"),
    ("unknown model", ["--schedule", "{real}", "--model", "no-such-model"], "no-such-model"),
])
def test_bad_input_is_refused_before_loading(case, args, needle, schedules, tmp_path):
    paths = {k: str(v) for k, v in schedules.items()}
    args = [a.format(tmp=tmp_path, **paths) for a in args]
    if "--model" not in args:
        args = ["--model", "tiny-cogvideox", *args]
    res = CliRunner().invoke(main, ["compare", *args, "--out", str(tmp_path / "out")])
    assert res.exit_code != 0, (case, res.output)
    assert needle in res.output, (case, res.output)
    assert "loading" not in res.output and not (tmp_path / "out").exists()


def test_a_statistics_file_is_not_a_schedule(tmp_path):
    stats = tmp_path / "stats.h5"
    stats.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    res = CliRunner().invoke(main, ["compare", "--model", "tiny-cogvideox", "--schedule", str(stats)])
    assert res.exit_code != 0 and "statistics file" in res.output


def test_python_api_repeats_interleaved_and_leaves_the_pipeline_clean(tiny_pipeline):
    torch.set_num_threads(1)
    before = {k: type(v) for k, v in tiny_pipeline.transformer.attn_processors.items()}
    zero = asymrnr.Schedule.uniform(tiny_pipeline, STEPS)
    seen = []
    kwargs = dict(num_inference_steps=STEPS, height=64, width=80, num_frames=9, guidance_scale=6.0)
    result = compare(tiny_pipeline, [zero], ["a red ball"], [7], lambda i: kwargs, repeats=2, warmup=False,
                     progress=lambda done, total, label: seen.append((done, total, label)))
    assert [s[2] for s in seen] == ["dense", result.variants[0].name, result.variants[0].name, "dense"]
    assert seen[-1][:2] == (4, 4)
    assert len(result.dense.timings[0]) == 2 and len(result.variants[0].timings[0]) == 2
    assert all(t.transformer_calls == STEPS for row in result.dense.timings for t in row)
    assert len(result.summary(result.variants[0])["paired_transformer_speedups"]) == 2
    from asymrnr.runtime.apply import runtimes

    assert runtimes(tiny_pipeline) == {}
    assert {k: type(v) for k, v in tiny_pipeline.transformer.attn_processors.items()} == before
    for module in (tiny_pipeline.transformer,):
        assert not module._forward_pre_hooks and not module._forward_hooks  # the timer's hooks are gone


def test_variants_and_caches():
    config = parse_cache("fbc:0.1")
    assert type(config).__name__ == "FirstBlockCacheConfig" and config.threshold == 0.1
    for bad in ("fbc", "fbc:x", "fbc:0", "fbc:nan", "tea:0.1"):
        with pytest.raises(CompareError):
            parse_cache(bad)
    (v,) = make_variants(caches=["fbc:0.1"])
    assert v.kind == "cache" and v.name == "cache-fbc-0.1" and v.predicted_speedup is None
    with pytest.raises(CompareError, match="nothing to compare"):
        make_variants()
    assert isinstance(v, Variant)


def test_metrics_and_verdict():
    a = np.random.default_rng(0).random((3, 8, 8, 3))
    assert np.all(np.isinf(psnr_frames(a, a, max_db=None)))
    assert np.all(psnr_frames(a, a) == 100.0)  # the quality benchmark's capped default is unchanged
    b = a.copy()
    b[1] += 0.01
    p = psnr_frames(np.clip(b, 0, 1), a, max_db=None)
    assert math.isinf(p[0]) and math.isfinite(p[1])
    assert latent_similarity(a, a) == (1.0, 0.0)
    cos, rel = latent_similarity(a, 2 * a)
    assert cos == pytest.approx(1.0) and rel == pytest.approx(0.5)  # ||a - 2a|| / ||2a||
    below = speedup_verdict(1.2, 1.5)
    assert "BELOW the predicted 1.500x by 0.300x (20.0% of the prediction)" in below
    assert "meets" in speedup_verdict(1.6, 1.5) and "no FLOPs prediction" in speedup_verdict(1.1, None)


@pytest.mark.browser
def test_compare_page_renders_offline_in_chromium(compared, tmp_path):
    from pathlib import Path

    from test_report_browser import CHROMIUM, _probe

    if not Path(CHROMIUM).exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (install Debian's chromium or set ASYMRNR_CHROMIUM)")
    out, _ = compared
    probe, stderr = _probe(out / "compare.html", tmp_path)
    assert "exception" not in probe and probe["errors"] == [] and "Uncaught" not in stderr
    assert [r for r in probe["resources"] if not r.startswith(("file:", "data:", "blob:"))] == []
    for sid, fig in (("compare-speed", "fig-compare-speed"), ("compare-quality", "fig-compare-quality")):
        (plot,) = probe["sections"][sid]["plots"]
        assert plot["id"] == fig and plot["ready"] and plot["content"]["svg"] >= 1
        assert plot["content"]["bars"] + plot["content"]["lines"] > 0


@pytest.mark.gpu
def test_compare_times_with_cuda_events_on_a_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from asymrnr.models.presets import load_pipeline

    pipe = load_pipeline("tiny-cogvideox", device="cuda")
    pipe.set_progress_bar_config(disable=True)
    real = asymrnr.Schedule.uniform(pipe, STEPS, q=0.3, kv=0.3)
    kwargs = dict(num_inference_steps=STEPS, height=64, width=80, num_frames=9, guidance_scale=6.0)
    result = compare(pipe, [real], ["a red ball"], [0], kwargs, repeats=2)
    assert result.timer == "cuda-events" and result.memory == "cuda_max_memory_allocated"
    for row in result.dense.timings + result.variants[0].timings:
        for t in row:
            assert 0 < t.transformer_s <= t.wall_s and t.transformer_cpu_s is None and t.peak_memory_bytes > 0
    assert math.isfinite(result.variants[0].quality[0].mean_psnr)
    result.save(tmp_path / "compare.json")
    assert load_compare(tmp_path / "compare.json").to_dict() == result.to_dict()


def test_a_schedule_of_another_sampler_is_refused_before_generating(schedules, tmp_path, monkeypatch):
    import asymrnr.compare as C

    generated = []
    monkeypatch.setattr(C, "_generate", lambda *a, **k: generated.append(a))
    real = asymrnr.load_schedule(schedules["real"])
    other = dataclasses.replace(real, sampler=dataclasses.replace(real.sampler,
                                                                  scheduler_class="FlowMatchEulerDiscreteScheduler"))
    path = other.save(tmp_path / "other-sampler.json")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compare", "--model", "tiny-cogvideox", "--schedule", str(path), "--out", str(out)])
    assert res.exit_code != 0 and "FlowMatchEulerDiscreteScheduler" in res.output and "sampler" in res.output
    assert generated == []  # refused by the runtime's sampler check, before the first generation
    assert not out.exists()  # the folder it created is gone again, no staging left


def test_compare_has_help():
    res = CliRunner().invoke(main, ["compare", "--help"])
    assert res.exit_code == 0
    for option in ("--schedule", "--cache", "--repeats", "--out", "--overwrite", "--prompts", "--seed"):
        assert option in res.output, option


def test_a_pipeline_with_asymrnr_or_a_cache_already_on_is_refused(tiny_pipeline):
    zero = asymrnr.Schedule.uniform(tiny_pipeline, STEPS)
    asymrnr.apply(tiny_pipeline, zero)
    try:
        with pytest.raises(CompareError, match=r"asymrnr.remove\(pipe\)"):
            compare(tiny_pipeline, [zero], ["a"], [0], dict(num_inference_steps=STEPS))
    finally:
        asymrnr.remove(tiny_pipeline)
    tiny_pipeline.transformer.enable_cache(parse_cache("fbc:0.1"))
    try:
        with pytest.raises(CompareError, match="disable_cache"):
            compare(tiny_pipeline, [zero], ["a"], [0], dict(num_inference_steps=STEPS))
    finally:
        tiny_pipeline.transformer.disable_cache()


def test_a_cache_variant_is_enabled_for_its_own_runs_only(tiny_pipeline):
    torch.set_num_threads(1)
    states = []
    kwargs = dict(num_inference_steps=STEPS, height=64, width=80, num_frames=9, guidance_scale=6.0)

    def call_kwargs(i):  # evaluated inside each run's configuration
        states.append(tiny_pipeline.transformer.is_cache_enabled)
        return kwargs

    (variant,) = make_variants(caches=["fbc:0.1"])
    result = compare(tiny_pipeline, [variant], ["a red ball"], [3], call_kwargs, warmup=False)
    assert states[1:] == [False, True]  # states[0]: the settings read before any run
    assert not tiny_pipeline.transformer.is_cache_enabled
    (v,) = result.variants
    assert v.kind == "cache" and v.predicted_speedup is None and len(v.quality) == 1
    assert "no FLOPs prediction" in result.summary(v)["verdict"]
