"""One line, no calibration: ``asymrnr.uniform(pipe, q=, kv=)`` / ``asymrnr.apply(pipe, q=, kv=)`` on tiny
CogVideoX and Wan pipelines: it reduces, a zero rate is the dense model bit for bit, ``remove`` restores it,
any step count runs, and bad rates are refused before anything is generated."""

from __future__ import annotations

import math

import pytest
import torch

import asymrnr
from asymrnr.errors import RateError
from asymrnr.runtime import installed
from asymrnr.runtime.uniform import BARE_TRANSFORMER_STEPS, uniform_schedule
from asymrnr.testing import WAN_T2V, load_tiny_wan_pipeline
from asymrnr.testing.recorder import record_attention

COG_GRID, COG_TEXT = (3, 4, 5), 226
WAN_GRID = (3, 4, 5)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wan():
    pipe = load_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cog_generate(pipe, steps=3, seed=0):
    return pipe("a red square", num_inference_steps=steps, guidance_scale=6.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


def wan_generate(pipe, steps=3, seed=0):
    d = WAN_T2V
    return pipe("a red square", height=d.height, width=d.width, num_frames=d.num_frames, num_inference_steps=steps,
                guidance_scale=d.guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


def self_attention(calls):
    return [c for c in calls if c.site.endswith("attn1")]


def kept(rate, n):
    return n - int(rate * n)


def test_cogvideox_one_line_reduces_zero_is_dense_and_remove_restores(tiny_pipeline):
    pipe = tiny_pipeline
    ref = cog_generate(pipe)
    try:
        rt = asymrnr.uniform(pipe, q=0.0, kv=0.0)
        assert rt.schedule.provenance["source"] == "asymrnr.uniform"
        assert torch.equal(cog_generate(pipe), ref)  # a zero rate calls the original processors
        # the schedule records the pipeline's default step count (50); a 3-step generation still runs
        rt = asymrnr.apply(pipe, q=0.5, kv=0.3)
        assert rt.schedule.num_steps == 50 and rt.resample_steps
        assert tuple(rt.schedule.model.latent_grid) == COG_GRID
        with record_attention(pipe, probe_text=False) as rec:
            reduced = cog_generate(pipe)
    finally:
        asymrnr.remove(pipe)
    n = math.prod(COG_GRID)
    calls = self_attention(rec.calls)
    assert len(calls) == 3 * pipe.transformer.config.num_layers  # steps x blocks (CFG batched)
    assert all((c.q_len, c.k_len) == (COG_TEXT + kept(0.5, n), COG_TEXT + kept(0.3, n)) for c in calls)
    assert not torch.equal(reduced, ref) and torch.isfinite(reduced).all()
    assert installed(pipe) is None
    assert torch.equal(cog_generate(pipe), ref)  # removed: bit for bit the dense model


def test_wan_one_line_at_the_pipeline_default_and_at_the_generation_size(wan):
    pipe = wan
    ref = wan_generate(pipe)
    try:
        # no size given: the pipeline's defaults (480 x 832, 81 frames) decide the grid and the ceiling;
        # a generation at another size runs with the same rates
        rt = asymrnr.uniform(pipe, q=0.5, kv=0.5)
        assert tuple(rt.schedule.model.latent_grid) == (21, 30, 52)
        with record_attention(pipe, probe_text=False) as rec:
            out = wan_generate(pipe, steps=2)
        n = math.prod(WAN_GRID)
        calls = self_attention(rec.calls)
        assert len(calls) == 2 * 2 * pipe.transformer.config.num_layers  # steps x (cond, uncond) x blocks
        assert all((c.q_len, c.k_len) == (kept(0.5, n), kept(0.5, n)) for c in calls)
        assert torch.isfinite(out).all()
        # the size in pixels gives the generation's own grid
        rt = asymrnr.uniform(pipe, kv=0.4, height=WAN_T2V.height, width=WAN_T2V.width, num_frames=WAN_T2V.num_frames,
                             num_inference_steps=3)
        assert tuple(rt.schedule.model.latent_grid) == WAN_GRID and rt.schedule.num_steps == 3
        with record_attention(pipe, probe_text=False) as rec:
            wan_generate(pipe)
        assert all((c.q_len, c.k_len) == (n, kept(0.4, n)) for c in self_attention(rec.calls))
        asymrnr.apply(pipe, q=0.0, kv=0.0)
        assert torch.equal(wan_generate(pipe), ref)
    finally:
        asymrnr.remove(pipe)
    assert torch.equal(wan_generate(pipe), ref)


@pytest.mark.parametrize("rates, match", [
    (dict(q=-0.1), "negative"),
    (dict(kv=float("nan")), "nan"),
    (dict(q=float("inf")), "inf"),
    (dict(q=1.0), "not below 1"),
    (dict(kv="0.5"), "must be a number"),
    (dict(q=True), "must be a number"),
    (dict(q=0.3, h=0.2), "either SymRnR"),
    (dict(q=0.9), r"ceiling 0\.8810 of stride \(2, 2, 2\) on the token grid \(21, 30, 52\)"),
])
def test_bad_rates_are_refused_before_any_generation(wan, rates, match):
    pipe = wan
    forwards = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(RateError, match=match):
            asymrnr.uniform(pipe, **rates)
        with pytest.raises(RateError, match=match):
            asymrnr.apply(pipe, **rates)
    finally:
        handle.remove()
    assert not forwards and installed(pipe) is None  # nothing ran, nothing was installed


def test_the_ceiling_follows_the_generation_size(wan):
    # 3 x 4 x 5 tokens: 4 full (2, 2, 2) windows of 60 tokens, so up to 56 / 60 can be dropped
    schedule = uniform_schedule(wan, q=0.93, height=WAN_T2V.height, width=WAN_T2V.width,
                                num_frames=WAN_T2V.num_frames)
    assert schedule.rate("q", 0, 0) == 0.93
    with pytest.raises(RateError, match=r"ceiling 0\.9333.*use q <= 0\.933"):
        uniform_schedule(wan, q=0.94, latent_grid=WAN_GRID)
    with pytest.raises(RateError, match="larger stride|ceiling"):
        uniform_schedule(wan, kv=0.5, latent_grid=WAN_GRID, stride=(4, 4, 4))  # no full window: ceiling 0


def test_a_rate_above_the_ceiling_of_the_actual_grid_is_refused_at_the_first_call(tiny_transformer_factory):
    model = tiny_transformer_factory("5b")
    # checked on the grid given here (ceiling 0.9333), then again on the grid the call has (3 x 4 x 4: 0.9167)
    asymrnr.uniform(model, q=0.92, latent_grid=(3, 4, 5))
    try:
        x = torch.randn(1, 3, 4, 8, 8)
        e = torch.randn(1, 226, 32)
        with pytest.raises(Exception, match="exceeds the ceiling"):
            with torch.no_grad():
                model(hidden_states=x, encoder_hidden_states=e, timestep=torch.tensor([900]), return_dict=False)
    finally:
        asymrnr.remove(model)


def test_bare_transformer_runs_any_number_of_calls(tiny_transformer_factory):
    model = tiny_transformer_factory("5b")
    x = torch.randn(1, 3, 4, 8, 10)
    e = torch.randn(1, 226, 32)

    def run(t):
        with torch.no_grad():
            return model(hidden_states=x, encoder_hidden_states=e, timestep=torch.tensor([t]), return_dict=False)[0]

    ref = [run(t) for t in range(990, 0, -15)]  # 66 steps, more than the schedule's nominal 50
    rt = asymrnr.uniform(model, q=0.5, kv=0.5)
    try:
        assert rt.schedule.num_steps == BARE_TRANSFORMER_STEPS
        out = [run(t) for t in range(990, 0, -15)]
        assert all(not torch.equal(a, b) for a, b in zip(ref, out))
        assert rt.calls == len(ref)
    finally:
        asymrnr.remove(model)
    assert all(torch.equal(a, run(t)) for a, t in zip(ref, range(990, 0, -15)))


def test_height_without_a_pipeline_is_a_clear_error(tiny_transformer_factory):
    with pytest.raises(Exception, match="need a pipeline"):
        uniform_schedule(tiny_transformer_factory("5b"), q=0.3, height=64)
    with pytest.raises(TypeError, match="together with a schedule"):
        asymrnr.apply(tiny_transformer_factory("5b"), uniform_schedule(tiny_transformer_factory("5b")), q=0.3)


def test_another_size_does_not_warn_and_a_new_scheduler_says_to_apply_again(tiny_pipeline, caplog):
    import logging

    from diffusers import CogVideoXDDIMScheduler

    from asymrnr.errors import ScheduleMismatchError

    pipe = tiny_pipeline
    original = pipe.scheduler
    asymrnr.uniform(pipe, q=0.3)
    try:
        with caplog.at_level(logging.WARNING, logger="asymrnr"):
            pipe("a red square", height=48, width=64, num_inference_steps=2, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
        # nothing was calibrated at the default size, so nothing is said about another one
        assert not any("calibrated at token grid" in r.getMessage() for r in caplog.records)
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(original.config)
        with pytest.raises(ScheduleMismatchError, match=r"apply it again after changing the scheduler"):
            cog_generate(pipe, steps=2)
    finally:
        asymrnr.remove(pipe)
        pipe.scheduler = original
