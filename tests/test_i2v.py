"""Image-to-video (CogVideoX-5B-I2V and Wan 2.1 I2V styles) and video-to-video on the tiny pipelines:
exact zero schedules, reduced self-attention lengths, the CLI with and without --images, schedules applied
in a fresh process, and profiling of video-to-video runs that skip the first steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr import Schedule
from asymrnr.cli import calibrate_command, main
from asymrnr.errors import ScheduleMismatchError
from asymrnr.models.images import fit_image, synthetic_image
from asymrnr.models.presets import get_preset
from asymrnr.profiler import load_stats
from asymrnr.testing import TINY_FAMILIES, tiny_image
from asymrnr.testing.recorder import record_attention

#: tiny family -> its embedded preset
PRESETS = {"cogvideox-i2v": "tiny-cogvideox-i2v", "wan2.1-i2v": "tiny-wan-i2v"}
N = 3 * 4 * 5  # video tokens of the tiny default call


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes():
    loaded = {}
    for family in PRESETS:
        pipe = TINY_FAMILIES[family].load()
        pipe.set_progress_bar_config(disable=True)
        loaded[family] = pipe
    return loaded


def generate(pipe, family, steps=3, seed=0, prompt="a red square", **extra):
    kwargs = TINY_FAMILIES[family].defaults.call_kwargs(num_inference_steps=steps, output_type="latent", **extra)
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def self_attention(calls):
    return [c for c in calls if c.site.endswith("attn1")]


# ------------------------------------------------------------------------------------------------ runtime


@pytest.mark.parametrize("family", list(PRESETS))
def test_zero_schedule_is_bit_identical_and_self_attention_is_reduced_as_scheduled(pipes, family):
    pipe = pipes[family]
    ref = generate(pipe, family)
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3))
    try:
        assert torch.equal(generate(pipe, family), ref)
        asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.5, kv=0.3))
        with record_attention(pipe) as rec:
            reduced = generate(pipe, family)
    finally:
        asymrnr.remove(pipe)
    assert torch.equal(generate(pipe, family), ref)  # removed: exactly the model again
    assert not torch.equal(reduced, ref) and torch.isfinite(reduced).all()
    calls = self_attention(rec.calls)
    text = TINY_FAMILIES[family].defaults.text_len if family == "cogvideox-i2v" else 0  # joint: text first
    assert len(calls) == 3 * pipe.transformer.config.num_layers * (1 if family == "cogvideox-i2v" else 2)
    assert all(c.q_len == text + N - int(0.5 * N) and c.k_len == text + N - int(0.3 * N) for c in calls)
    if family == "wan2.1-i2v":  # cross-attention to the 17 image and 512 text tokens is never reduced
        cross = [c for c in rec.calls if c.site.endswith("attn2")]
        assert {(c.q_len, c.k_len) for c in cross} == {(N, 17), (N, 512)}


@pytest.mark.parametrize("family", list(PRESETS))
def test_flops_model_matches_a_count_of_one_forward(pipes, family, tmp_path):
    """The FLOPs model of the statistics' model description (Wan I2V: cross-attention over 17 image + 512
    text tokens) against the multiply-adds FlopCounterMode counts in the blocks of one real forward (SDPA
    through its math kernel, so that the attention products are counted too)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from asymrnr.flops import transformer_flops

    pipe = pipes[family]
    inputs = {}
    grab = pipe.transformer.register_forward_pre_hook(lambda m, a, k: inputs or inputs.update(k), with_kwargs=True)
    try:
        with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):
            generate(pipe, family, steps=1, guidance_scale=1.0)
    finally:
        grab.remove()
    model = load_stats(tmp_path / "stats.h5").model
    if family == "wan2.1-i2v":
        assert model["cross_len"] == 512 + 17

    totals = []

    def enter(module, args, kwargs):
        module._asymrnr_flops = FlopCounterMode(display=False)
        module._asymrnr_flops.__enter__()

    def leave(module, args, output):
        module._asymrnr_flops.__exit__(None, None, None)
        totals.append(module._asymrnr_flops.get_total_flops())

    blocks = getattr(pipe.transformer, "blocks", None) or pipe.transformer.transformer_blocks
    hooks = [b.register_forward_pre_hook(enter, with_kwargs=True) for b in blocks]
    hooks += [b.register_forward_hook(leave) for b in blocks]
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            pipe.transformer(**inputs)
    finally:
        for h in hooks:
            h.remove()
    counted = float(sum(totals))
    predicted = transformer_flops(model, batch=int(inputs["hidden_states"].shape[0]))
    assert abs(predicted - counted) / counted < 0.05, (predicted, counted)


def test_profiler_records_the_guidance_asked_for_with_dynamic_cfg(pipes, tmp_path):
    pipe = pipes["cogvideox-i2v"]
    with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):
        generate(pipe, "cogvideox-i2v", steps=2, use_dynamic_cfg=True)
    assert load_stats(tmp_path / "stats.h5").generation["guidance_scale"] == 6.0  # not the last step's


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """``asymrnr-calibrate --model tiny-<family>`` without --images (synthetic pictures), for each family."""
    out = {}
    for family, preset in PRESETS.items():
        folder = tmp_path_factory.mktemp(preset)
        res = CliRunner().invoke(calibrate_command, ["--model", preset, "--steps", "3", "--out", str(folder)],
                                 catch_exceptions=False)
        out[family] = (folder, res)
    return out


@pytest.mark.parametrize("family", list(PRESETS))
def test_cli_calibrates_with_synthetic_images(calibrated, family):
    folder, res = calibrated[family]
    assert res.exit_code == 0, res.output
    assert "conditioning images: synthetic" in res.output
    for name in ("stats.h5", "schedule.json", "report.html"):
        assert (folder / name).is_file(), name
    stats = load_stats(folder / "stats.h5")
    assert stats.num_runs == 2 and stats.num_steps == 3
    assert stats.generation["pipeline_class"] == get_preset(PRESETS[family]).pipeline_class
    schedule = asymrnr.load_schedule(folder / "schedule.json")
    assert schedule.num_steps == 3 and schedule.model.num_blocks == 2
    assert "(synthetic images)" in schedule.provenance["notes"]


@pytest.mark.parametrize("family", list(PRESETS))
def test_cli_calibrates_with_an_images_folder(family, tmp_path):
    images = tmp_path / "pictures"
    images.mkdir()
    # one picture per prompt, of another aspect and size than the generation: centre-cropped and resized
    synthetic_image(120, 90, 7, "x").save(images / "b.png")
    synthetic_image(50, 200, 8, "y").convert("RGB").save(images / "a.jpg")
    (images / ".DS_Store").write_bytes(b"\0\1")  # hidden files are skipped
    out = tmp_path / "out"
    res = CliRunner().invoke(calibrate_command, ["--model", PRESETS[family], "--steps", "2", "--images", str(images),
                                                 "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"conditioning images: 2 from {images}" in res.output and "(a.jpg ... b.png)" in res.output
    assert load_stats(out / "stats.h5").num_runs == 2
    assert f"--images {images}" in asymrnr.load_schedule(out / "schedule.json").provenance["notes"]


def test_images_are_paired_with_prompts_in_sorted_order(monkeypatch, tmp_path):
    """The image of prompt i is the i-th file by name (checked on what the pipeline is called with)."""
    from asymrnr.cli import prepare_job

    images = tmp_path / "pictures"
    images.mkdir()
    for name, seed in (("2.png", 2), ("1.png", 1), ("3.png", 3)):
        synthetic_image(64, 80, seed).save(images / name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first\nsecond\nthird\n")
    job = prepare_job("tiny-cogvideox-i2v", None, str(prompts), 2, 0, None, None, None, None, None, None, None,
                      str(images))
    assert [p.name for p in job.images] == ["1.png", "2.png"]  # the first 2 of 3, with --num-prompts 2
    got = np.asarray(job.call_kwargs(1)["image"])
    assert np.array_equal(got, np.asarray(synthetic_image(64, 80, 2)))


@pytest.mark.parametrize(
    "setup, message",
    [
        ("fewer", "holds 1 file(s) but 2 prompt(s) are used"),
        ("unreadable", "cannot read"),
        ("missing", "does not exist"),
    ],
)
def test_bad_images_folder_is_refused_before_loading(setup, message, tmp_path, monkeypatch):
    import asymrnr.models.presets as presets

    monkeypatch.setattr(presets, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    images = tmp_path / "pictures"
    if setup != "missing":
        images.mkdir()
        synthetic_image(64, 80, 1).save(images / "a.png")
    if setup == "unreadable":
        (images / "b.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-wan-i2v", "--images", str(images), "--out", str(out)])
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output
    if setup == "unreadable":
        assert "b.png" in res.output
    assert not out.exists()


def test_images_for_a_text_to_video_model_are_refused(tmp_path):
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-cogvideox", "--images", str(tmp_path),
                                                 "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "takes no conditioning images" in res.output


def test_fixed_size_of_learned_positional_embeddings_is_refused_before_generating(tmp_path):
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-cogvideox-i2v", "--height", "32", "--width", "48",
                                                 "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "generates 64x80 only" in res.output, res.output
    assert not (tmp_path / "out" / "stats.h5").exists()


def test_synthetic_images_are_deterministic_and_differ_per_prompt():
    a = np.asarray(synthetic_image(48, 64, 3, "a fox"))
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, np.asarray(synthetic_image(48, 64, 3, "a fox")))
    assert not np.array_equal(a, np.asarray(synthetic_image(48, 64, 4, "a fox")))
    assert not np.array_equal(a, np.asarray(synthetic_image(48, 64, 3, "a cat")))
    assert a.std() > 10  # a picture, not a flat colour


def test_fit_image_crops_to_the_aspect_then_resizes():
    img = tiny_image(40, 200)  # far too wide: the sides go
    fitted = fit_image(img, 64, 80)
    assert fitted.size == (80, 64)
    wide = fit_image(tiny_image(64, 160), 64, 80)  # exactly twice too wide: the centre 80 columns stay
    assert np.array_equal(np.asarray(wide), np.asarray(tiny_image(64, 160))[:, 40:120])


def test_calibrated_schedules_apply_in_a_fresh_process(calibrated):
    """Load each tiny I2V pipeline and its calibrated schedule in a new interpreter, generate, and report the
    self-attention lengths that ran."""
    schedules = {family: str(calibrated[family][0] / "schedule.json") for family in PRESETS}
    code = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads(1)
        import asymrnr
        from asymrnr.testing import TINY_FAMILIES
        from asymrnr.testing.recorder import record_attention
        out = {{}}
        for family, path in {schedules!r}.items():
            pipe = TINY_FAMILIES[family].load()
            pipe.set_progress_bar_config(disable=True)
            schedule = asymrnr.load_schedule(path)
            asymrnr.apply(pipe, schedule)
            kwargs = TINY_FAMILIES[family].defaults.call_kwargs(num_inference_steps=schedule.num_steps,
                                                                output_type="latent")
            with record_attention(pipe) as rec:
                video = pipe(prompt="a green triangle", generator=torch.Generator().manual_seed(0), **kwargs).frames
            out[family] = {{"finite": bool(torch.isfinite(video).all()),
                           "calls": [[c.q_len, c.k_len] for c in rec.calls if c.site.endswith("attn1")]}}
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [os.path.abspath("src"), os.environ.get("PYTHONPATH")] if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for family in PRESETS:
        schedule = asymrnr.load_schedule(schedules[family])
        text = 226 if family == "cogvideox-i2v" else 0
        per_step = 1 if family == "cogvideox-i2v" else 2  # batched CFG / cond and uncond calls
        want = [[text + N - int(schedule.rates["q"][b][k] * N), text + N - int(schedule.rates["kv"][b][k] * N)]
                for k in range(schedule.num_steps) for _ in range(per_step) for b in range(schedule.num_blocks)]
        assert result[family]["finite"]
        assert result[family]["calls"] == want
        assert any(q < text + N or k < text + N for q, k in want)  # the schedule reduces something


def test_plan_refuses_i2v_stats_for_another_family(calibrated, tmp_path):
    folder, _ = calibrated["wan2.1-i2v"]
    res = CliRunner().invoke(main, ["plan", str(folder / "stats.h5"), "--model", "tiny-cogvideox-i2v",
                                    "-o", str(tmp_path / "s.json")])
    assert res.exit_code != 0 and "family = wan" in res.output and "family = cogvideox" in res.output


# ------------------------------------------------------------------------------------------- video to video


@pytest.fixture(scope="module")
def cogvideox_v2v(tiny_pipeline):
    from diffusers import CogVideoXVideoToVideoPipeline

    pipe = CogVideoXVideoToVideoPipeline(**tiny_pipeline.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def v2v_generate(pipe, steps=6, strength=0.5, seed=0, **extra):
    video = [tiny_image(64, 80)] * 9
    kwargs = dict(height=64, width=80, num_inference_steps=steps, strength=strength, output_type="latent", **extra)
    if "max_sequence_length" in pipe.__call__.__code__.co_varnames:
        kwargs.setdefault("max_sequence_length", 226)
    return pipe(video=video, prompt="a red square", generator=torch.Generator().manual_seed(seed), **kwargs).frames


def test_video_to_video_profiles_the_steps_that_run(cogvideox_v2v, tmp_path):
    """strength 0.5 of 6 steps runs the last 3: the run holds those 3 steps and their timesteps; a schedule
    planned from it applies to the same call (no resample_steps) and reduces every call as scheduled, and is
    refused, by timestep, on a text-to-video run."""
    from asymrnr.planner import plan_schedule

    pipe = cogvideox_v2v
    path = tmp_path / "stats.h5"
    with asymrnr.profile(pipe, path, mode="w") as profiler:
        v2v_generate(pipe)
        v2v_generate(pipe, seed=1)
    assert profiler.completed_runs == 2
    stats = load_stats(path)
    full = Schedule.uniform(pipe, 6).sampler.timesteps
    assert stats.num_steps == 3 and stats.generation["num_steps"] == 3
    np.testing.assert_allclose(stats.timesteps[0], full[3:])
    assert stats.generation["pipeline_class"] == "CogVideoXVideoToVideoPipeline"

    schedule = plan_schedule(stats, preset="fast", cache_steps=1).schedule
    assert schedule.sampler.timesteps == tuple(full[3:])
    asymrnr.apply(pipe, schedule)
    try:
        with record_attention(pipe) as rec:
            out = v2v_generate(pipe)
        text = 226
        want = [(text + N - int(schedule.rates["q"][b][k] * N), text + N - int(schedule.rates["kv"][b][k] * N))
                for k in range(3) for b in range(schedule.num_blocks)]
        assert [(c.q_len, c.k_len) for c in self_attention(rec.calls)] == want
        assert torch.isfinite(out).all()
        v2v_generate(pipe, strength=0.34)  # fewer steps: a later part of the same timesteps, fine
        with pytest.raises(ScheduleMismatchError, match="does not follow the schedule's sampler"):
            v2v_generate(pipe, strength=1.0)  # steps the statistics never saw
    finally:
        asymrnr.remove(pipe)


def test_full_schedule_applies_to_a_video_to_video_run(cogvideox_v2v):
    """A schedule of all N steps (e.g. calibrated on text to video) runs the steps a v2v call makes."""
    pipe = cogvideox_v2v
    ref = v2v_generate(pipe)
    asymrnr.apply(pipe, Schedule.uniform(pipe, 6))
    try:
        assert torch.equal(v2v_generate(pipe), ref)
        base = Schedule.uniform(pipe, 6)
        per_step = (0.0, 0.0, 0.0, 0.4, 0.2, 0.1)  # only the steps a strength-0.5 call runs reduce
        rates = {"q": base.rates["q"], "h": base.rates["h"], "kv": (per_step,) * base.num_blocks}
        asymrnr.apply(pipe, Schedule(base.model, base.sampler, base.matching, rates))
        with record_attention(pipe) as rec:
            v2v_generate(pipe)
        want = [226 + N - int(r * N) for r in per_step[3:] for _ in range(base.num_blocks)]
        assert [c.k_len for c in self_attention(rec.calls)] == want
    finally:
        asymrnr.remove(pipe)


def test_wan_video_to_video_records_both_cfg_branches(tmp_path):
    """WanVideoToVideoPipeline calls its transformer without cache_context (cond, then uncond each step):
    both branches are recorded, not one overwriting the other."""
    from diffusers import WanVideoToVideoPipeline

    t2v = TINY_FAMILIES["wan2.1-t2v"].load()
    parts = {k: v for k, v in t2v.components.items() if k in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")}
    pipe = WanVideoToVideoPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):
        v2v_generate(pipe, guidance_scale=5.0)
    stats = load_stats(tmp_path / "stats.h5")
    assert stats.branches == ("cond", "uncond") and stats.num_steps == 3
    sim = stats.sim_mean["euclidean"][0]  # [branch, step, block, feature]
    assert np.isfinite(sim).all()
    assert not np.array_equal(sim[0, :, 1], sim[1, :, 1])  # block 1 sees the text through block 0's cross-attention


def test_fixed_size_is_read_from_a_cached_snapshot_before_loading(monkeypatch, tmp_path):
    """cogvideox-5b-i2v from the local Hugging Face cache: its config's size is known before any weight loads."""
    import shutil

    import asymrnr.models.presets as presets
    from asymrnr.testing._common import default_cache_root

    TINY_FAMILIES["cogvideox-i2v"].load()
    cache = tmp_path / "hub"
    repo = cache / "models--zai-org--CogVideoX-5b-I2V"
    shutil.copytree(default_cache_root() / "tiny-cogvideox-i2v-v1", repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(presets, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    res = CliRunner().invoke(calibrate_command, ["--model", "cogvideox-5b-i2v", "--height", "480", "--width", "720",
                                                 "--out", str(tmp_path / "out")])
    # the tiny snapshot's learned positional embeddings are made for 64x80, not the real model's 480x720
    assert res.exit_code != 0 and "generates 64x80 only" in res.output, res.output


def test_profile_command_takes_images(tmp_path):
    images = tmp_path / "pictures"
    images.mkdir()
    synthetic_image(64, 80, 3).save(images / "only.png")
    out = tmp_path / "stats.h5"
    res = CliRunner().invoke(main, ["profile", "--model", "tiny-wan-i2v", "--num-prompts", "1", "--steps", "2",
                                    "--images", str(images), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "conditioning images: 1 from" in res.output and load_stats(out).num_runs == 1
