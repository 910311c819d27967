"""Silent wrong behaviour, made loud (issue 10): replaced processors, another sampler, another resolution,
batches of prompts in the profiler, bad profiler options."""

from __future__ import annotations

import logging

import pytest
import torch

import asymrnr
from asymrnr import Schedule
from asymrnr.errors import AsymRnRError, ScheduleMismatchError
from asymrnr.runtime import installed


def gen(pipe, prompt="a red square", seed=0, steps=3, **kw):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                output_type="latent", **kw).frames


def test_fused_projections_after_apply_are_refused_at_the_next_call(tiny_pipeline):
    pipe = tiny_pipeline
    ref = gen(pipe)
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.3))
    try:
        pipe.transformer.fuse_qkv_projections()
        with pytest.raises(AsymRnRError, match=r"transformer_blocks.0.attn1 was replaced by .*asymrnr.remove"):
            gen(pipe)
    finally:
        asymrnr.remove(pipe)
        pipe.transformer.unfuse_qkv_projections()
    # diffusers' unfuse put back what fuse saw (our processors): detached, they now act as the originals
    assert installed(pipe) is None
    assert torch.equal(gen(pipe), ref)
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3))  # and apply unwraps them
    try:
        assert torch.equal(gen(pipe), ref)
    finally:
        asymrnr.remove(pipe)
    assert all(type(p).__name__ == "CogVideoXAttnProcessor2_0" for p in pipe.transformer.attn_processors.values())


def test_set_attn_processor_after_apply_is_refused(tiny_pipeline):
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    pipe = tiny_pipeline
    originals = dict(pipe.transformer.attn_processors)
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, kv=0.3))
    try:
        pipe.transformer.set_attn_processor(CogVideoXAttnProcessor2_0())
        with pytest.raises(AsymRnRError, match="set_attn_processor"):
            gen(pipe)
    finally:
        asymrnr.remove(pipe)
        pipe.transformer.set_attn_processor(originals)


def test_a_schedule_for_another_sampler_is_refused(tiny_pipeline):
    from diffusers import CogVideoXDDIMScheduler

    pipe = tiny_pipeline
    schedule = Schedule.uniform(pipe, 3, q=0.3)  # made with the pipeline's DPM scheduler
    original = pipe.scheduler
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(original.config)
    try:
        with pytest.raises(ScheduleMismatchError, match="scheduler CogVideoXDDIMScheduler instead of CogVideoXDPMScheduler"):
            asymrnr.apply(pipe, schedule)
        assert installed(pipe) is None
    finally:
        pipe.scheduler = original
    # the same class with another noise schedule setting is refused too
    pipe.scheduler = type(original).from_config(original.config, snr_shift_scale=3.0)
    try:
        with pytest.raises(ScheduleMismatchError, match="snr_shift_scale = 3.0 instead of 1.0"):
            asymrnr.apply(pipe, schedule)
    finally:
        pipe.scheduler = original


def test_swapping_the_scheduler_after_apply_is_caught_at_the_next_generation(tiny_pipeline):
    from diffusers import CogVideoXDDIMScheduler

    pipe = tiny_pipeline
    original = pipe.scheduler
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.3))
    try:
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(original.config)
        with pytest.raises(ScheduleMismatchError, match="sampler differs"):
            gen(pipe)
    finally:
        asymrnr.remove(pipe)
        pipe.scheduler = original


def test_another_resolution_warns(tiny_pipeline, caplog):
    pipe = tiny_pipeline
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.3))
    try:
        with caplog.at_level(logging.WARNING, logger="asymrnr"):
            gen(pipe, height=48, width=64)
    finally:
        asymrnr.remove(pipe)
    assert any("calibrated at token grid" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_profiling_a_batch_records_every_prompt_as_its_own_run(tiny_pipeline, tmp_path):
    from asymrnr.profiler import load_stats

    pipe = tiny_pipeline
    path = tmp_path / "stats.h5"
    with asymrnr.profile(pipe, path, mode="w"):
        pipe(["a red square", "a blue circle", "a green cat"],
             generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7)], num_inference_steps=2,
             output_type="latent")
    stats = load_stats(path)
    assert stats.prompts == ["a red square", "a blue circle", "a green cat"]
    assert list(stats.seeds) == [5, 6, 7]
    means = stats.sim_mean["euclidean"]  # [runs, branches, steps, blocks, features]
    assert means.shape[:3] == (3, 2, 2)
    assert not torch.allclose(torch.as_tensor(means[0]), torch.as_tensor(means[1]))  # different samples


def test_a_profile_mode_that_does_not_exist_fails_before_any_work(tiny_pipeline, tmp_path):
    with pytest.raises(ValueError, match="mode='x' does not exist"):
        asymrnr.profile(tiny_pipeline, tmp_path / "s.h5", mode="x")
    assert not (tmp_path / "s.h5").exists()
