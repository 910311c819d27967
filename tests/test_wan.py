"""The runtime on Wan 2.1 and Wan 2.2 (two experts) tiny pipelines: exactness, reduced lengths, attention
backends, separate CFG calls, profiling and planning, and refusals across families."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import asymrnr
from asymrnr import Schedule
from asymrnr.errors import ScheduleMismatchError
from asymrnr.runtime import installed, runtimes
from asymrnr.testing import WAN22_T2V, WAN_T2V, load_tiny_wan22_pipeline, load_tiny_wan_pipeline
from asymrnr.testing.recorder import record_attention


@pytest.fixture(scope="module")
def wan():
    pipe = load_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def wan22():
    pipe = load_tiny_wan22_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kwargs(defaults, steps=3, **extra):
    return dict(height=defaults.height, width=defaults.width, num_frames=defaults.num_frames,
                num_inference_steps=steps, guidance_scale=defaults.guidance_scale, output_type="latent", **extra)


def generate(pipe, defaults, seed=0, steps=3, prompt="a red square", **extra):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs(defaults, steps, **extra)).frames


def self_attention(calls):
    return [c for c in calls if c.site.endswith("attn1")]


@pytest.mark.parametrize("backend", [None, "_native_math"])
def test_zero_schedule_is_bit_identical_and_reductions_are_exact(wan, backend):
    pipe = wan
    if backend is not None:
        pipe.transformer.set_attention_backend(backend)
    try:
        ref = generate(pipe, WAN_T2V)
        asymrnr.apply(pipe, Schedule.uniform(pipe, 3))
        try:
            assert torch.equal(generate(pipe, WAN_T2V), ref)
            schedule = Schedule.uniform(pipe, 3, q=0.5, kv=0.3)
            asymrnr.apply(pipe, schedule)
            with record_attention(pipe) as rec:
                reduced = generate(pipe, WAN_T2V)
        finally:
            asymrnr.remove(pipe)
        n = 3 * 4 * 5
        calls = self_attention(rec.calls)
        assert len(calls) == 3 * 2 * pipe.transformer.config.num_layers  # steps x (cond, uncond) x blocks
        assert {c.context for c in calls} == {"cond", "uncond"}  # separate CFG calls
        assert all(c.q_len == n - int(0.5 * n) and c.k_len == n - int(0.3 * n) for c in calls)
        assert all(c.via == "dispatch_attention_fn" for c in calls)  # the user's backend choice is honoured
        assert not torch.equal(reduced, ref) and torch.isfinite(reduced).all()
        assert torch.equal(generate(pipe, WAN_T2V), ref)  # removed: exactly the model again
    finally:
        if backend is not None:
            pipe.transformer.reset_attention_backend()


def test_cfg_branches_keep_their_own_matching_cache(wan):
    pipe = wan
    rt = asymrnr.apply(pipe, Schedule.uniform(pipe, 3, kv=0.4, cache_steps=2))
    try:
        generate(pipe, WAN_T2V)
        branches = {key[0] for key in rt.cache.entries} if rt.cache.entries else set()
        # the cache is dropped at the end of the generation: look at the log instead
        assert [k for k, b, f in rt.match_log if b == 0] == [0, 0, 2, 2]  # cond and uncond, windows 0 and 1
        assert not branches
    finally:
        asymrnr.remove(pipe)


def test_h_reduction_runs_with_rope(wan):
    pipe = wan
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, h=0.4))
    try:
        with record_attention(pipe) as rec:
            out = generate(pipe, WAN_T2V)
    finally:
        asymrnr.remove(pipe)
    n = 60
    assert all(c.q_len == c.k_len == n - int(0.4 * n) for c in self_attention(rec.calls))
    assert torch.isfinite(out).all()


def test_wan22_schedule_covers_both_experts(wan22):
    pipe = wan22
    steps = WAN22_T2V.num_inference_steps
    ref = generate(pipe, WAN22_T2V, steps=steps)
    schedule = Schedule.uniform(pipe, steps, q=0.4, kv=0.4)
    assert schedule.sampler.transformers == ("transformer", "transformer_2")
    assert len(set(schedule.sampler.step_transformer)) == 2  # both experts run
    asymrnr.apply(pipe, Schedule.uniform(pipe, steps))
    try:
        assert torch.equal(generate(pipe, WAN22_T2V, steps=steps), ref)
        asymrnr.apply(pipe, schedule)
        assert set(runtimes(pipe)) == {"transformer", "transformer_2"}
        with record_attention(pipe) as rec:
            generate(pipe, WAN22_T2V, steps=steps)
    finally:
        asymrnr.remove(pipe)
    assert runtimes(pipe) == {}
    n = 60
    calls = self_attention(rec.calls)
    assert {c.component for c in calls} == {"transformer", "transformer_2"}
    assert all(c.q_len == n - int(0.4 * n) for c in calls)


def test_wan22_refuses_a_different_expert_switch(wan22):
    pipe = wan22
    steps = WAN22_T2V.num_inference_steps
    schedule = Schedule.uniform(pipe, steps, q=0.4)
    forced = dataclasses.replace(schedule.sampler, step_transformer=(0,) * steps)
    other = Schedule(schedule.model, forced, schedule.matching, schedule.rates)
    asymrnr.apply(pipe, other)
    try:
        with pytest.raises(ScheduleMismatchError, match="transformer_2 ran denoising step .* calibrated with transformer"):
            generate(pipe, WAN22_T2V, steps=steps)
    finally:
        asymrnr.remove(pipe)


def test_schedules_are_refused_across_families(wan, tiny_pipeline):
    wan_schedule = Schedule.uniform(wan, 3, q=0.3)
    cog_schedule = Schedule.uniform(tiny_pipeline, 3, q=0.3)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a cogvideox model .*this is a wan model"):
        asymrnr.apply(wan, cog_schedule)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a wan model .*this is a cogvideox model"):
        asymrnr.apply(tiny_pipeline, wan_schedule)
    assert installed(wan) is None and installed(tiny_pipeline) is None


def test_sampler_settings_are_checked(wan):
    pipe = wan
    schedule = Schedule.uniform(pipe, 3, q=0.3)
    assert "flow_shift" in schedule.sampler.config
    original = pipe.scheduler
    pipe.scheduler = type(original).from_config(original.config, flow_shift=original.config.flow_shift + 2.0)
    try:
        with pytest.raises(ScheduleMismatchError, match="flow_shift = .* instead of"):
            asymrnr.apply(pipe, schedule)
        assert installed(pipe) is None
        asymrnr.apply(pipe, schedule, strict_sampler=False, resample_steps=True)  # a warning, then it runs
        generate(pipe, WAN_T2V)
    finally:
        asymrnr.remove(pipe)
        pipe.scheduler = original


def test_replaced_processor_is_detected(wan):
    pipe = wan
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.3))
    try:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        pipe.transformer.blocks[1].attn1.set_processor(WanAttnProcessor())
        with pytest.raises(asymrnr.AsymRnRError, match=r"blocks.1.attn1 was replaced by WanAttnProcessor"):
            generate(pipe, WAN_T2V)
    finally:
        asymrnr.remove(pipe)


def test_profile_and_plan_on_wan22(wan22, tmp_path):
    from asymrnr.planner import plan_schedule
    from asymrnr.profiler import load_stats

    pipe = wan22
    steps = WAN22_T2V.num_inference_steps
    path = tmp_path / "stats.h5"
    with asymrnr.profile(pipe, path, mode="w"):
        generate(pipe, WAN22_T2V, steps=steps)
        generate(pipe, WAN22_T2V, seed=1, steps=steps, prompt="a blue circle")
    stats = load_stats(path)
    assert stats.num_runs == 2 and stats.branches == ("cond", "uncond")
    assert stats.generation["transformers"] == ["transformer", "transformer_2"]
    want = list(Schedule.uniform(pipe, steps).sampler.step_transformer)
    assert stats.generation["step_transformer"] == want
    assert stats.model_description.family == "wan"
    plan = plan_schedule(stats, target_speedup=1.05)
    assert plan.schedule.sampler.step_transformer == tuple(want)
    asymrnr.apply(pipe, plan.schedule)
    try:
        generate(pipe, WAN22_T2V, steps=steps)
    finally:
        asymrnr.remove(pipe)


def test_report_shows_both_experts(wan22, tmp_path):
    from asymrnr.report import write_report
    from asymrnr.report._common import expert_spans

    pipe = wan22
    steps = WAN22_T2V.num_inference_steps
    with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):
        generate(pipe, WAN22_T2V, steps=steps)
    from asymrnr.profiler import load_stats

    stats = load_stats(tmp_path / "stats.h5")
    schedule = Schedule.uniform(pipe, steps, q=0.3)
    spans = expert_spans(schedule.sampler.transformers, schedule.sampler.step_transformer)
    assert [s[0] for s in spans] == ["transformer", "transformer_2"]
    html = write_report(stats, tmp_path / "report.html", schedule=schedule).read_text(encoding="utf-8")
    for name, first, last in spans:
        assert f"{name}: steps {first}-{last}" in html  # summary row
        assert f"{name} (steps {first}-{last})" in html  # the rates figure's annotation
