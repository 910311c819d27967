"""The runtime on the tiny LTX-Video pipeline: exactness, reduced lengths (self-attention over video only,
packed tokens, RoPE before the head split), the sampler's token-count shift, calibration from the CLI, refusals
across families, and the FLOPs model against a count of a real forward."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr import archs
from asymrnr import Schedule
from asymrnr.errors import AsymRnRError, ScheduleMismatchError
from asymrnr.runtime import installed, runtimes
from asymrnr.testing import LTX_T2V, load_tiny_ltx_pipeline
from asymrnr.testing.recorder import record_attention

N = 3 * 4 * 5  # video tokens of the tiny default generation


@pytest.fixture(scope="module")
def ltx():
    pipe = load_tiny_ltx_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generate(pipe, seed=0, steps=3, prompt="a red square", **extra):
    kwargs = LTX_T2V.call_kwargs(num_inference_steps=steps, **extra)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).frames


def uniform(pipe, steps=3, **rates):
    """A uniform schedule at the tiny grid (LTX's timesteps depend on the token count)."""
    return Schedule.uniform(pipe, steps, latent_grid=LTX_T2V.latent_grid, **rates)


def self_attention(calls):
    return [c for c in calls if c.site.endswith("attn1")]


@pytest.mark.parametrize("backend", [None, "_native_math"])
def test_zero_schedule_is_bit_identical_and_reductions_have_the_scheduled_lengths(ltx, backend):
    pipe = ltx
    if backend is not None:
        pipe.transformer.set_attention_backend(backend)
    try:
        ref = generate(pipe)
        asymrnr.apply(pipe, uniform(pipe))
        try:
            assert torch.equal(generate(pipe), ref)
            asymrnr.apply(pipe, uniform(pipe, q=0.5, kv=0.3))
            with record_attention(pipe) as rec:
                reduced = generate(pipe)
        finally:
            asymrnr.remove(pipe)
        calls = self_attention(rec.calls)
        assert len(calls) == 3 * pipe.transformer.config.num_layers  # one batched CFG call per step
        assert {c.context for c in calls} == {"cond_uncond"} and {c.batch for c in calls} == {2}
        assert all(c.q_len == N - int(0.5 * N) and c.k_len == N - int(0.3 * N) for c in calls)
        assert all(c.via == "dispatch_attention_fn" for c in calls)  # the user's backend choice is honoured
        cross = [c for c in rec.calls if c.site.endswith("attn2")]  # never reduced, mask kept
        assert cross and all(c.q_len == N and c.k_len == LTX_T2V.text_len and c.mask_shape for c in cross)
        assert not torch.equal(reduced, ref) and torch.isfinite(reduced).all()
        assert torch.equal(generate(pipe), ref)  # removed: exactly the model again
    finally:
        if backend is not None:
            pipe.transformer.reset_attention_backend()


def test_h_reduction_gathers_the_rope_tables(ltx):
    pipe = ltx
    asymrnr.apply(pipe, uniform(pipe, h=0.4))
    try:
        with record_attention(pipe) as rec:
            out = generate(pipe)
    finally:
        asymrnr.remove(pipe)
    assert all(c.q_len == c.k_len == N - int(0.4 * N) for c in self_attention(rec.calls))
    assert torch.isfinite(out).all()


def _capture_site(pipe, block=0):
    """Forward hook on ``attn1`` of ``block``: (the upstream processor's output, ours) of its first call."""
    module = pipe.transformer.transformer_blocks[block].attn1
    seen = []

    def hook(mod, args, kwargs, output):
        if not seen:
            proc = mod.processor
            upstream = getattr(proc, "original", proc)
            ref = upstream(mod, kwargs["hidden_states"], None, None, kwargs["image_rotary_emb"])
            seen.append((ref, output))

    return module.register_forward_hook(hook, with_kwargs=True), seen


def test_replacement_computes_what_upstream_computes(ltx, tmp_path):
    pipe = ltx
    ref = generate(pipe)
    with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):  # observers: our processor, nothing dropped
        observed = generate(pipe)
    torch.testing.assert_close(observed, ref, rtol=1e-4, atol=1e-5)

    # one matching for all heads, so that a kept query is kept in every head (and its projected row exact)
    asymrnr.apply(pipe, uniform(pipe, q=0.5, granularity="joint"))
    handle, seen = _capture_site(pipe)
    try:
        generate(pipe)
    finally:
        handle.remove()
        asymrnr.remove(pipe)
    upstream, ours = seen[0]
    for b in range(ours.shape[0]):
        same = torch.isclose(ours[b], upstream[b], rtol=1e-4, atol=1e-5).all(-1)
        # kept queries are exact; every dropped one takes the output of a kept one (its destination)
        assert int(same.sum()) >= N - int(0.5 * N)
        dist = torch.cdist(ours[b], upstream[b], compute_mode="donot_use_mm_for_euclid_dist")
        assert float(dist.min(dim=1).values.max()) < 1e-4


def test_sampler_timesteps_follow_the_pipeline(ltx):
    pipe = ltx
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(float(kw["timestep"].max())), with_kwargs=True)
    try:
        generate(pipe, steps=4)
    finally:
        handle.remove()
    schedule = uniform(pipe, 4)
    assert schedule.sampler.timesteps == pytest.approx(seen, abs=1e-3)
    assert schedule.sampler.config["use_dynamic_shifting"] is True

    # the shift depends on the token count: timesteps recorded for the model card's size do not fit the tiny one
    card = Schedule.uniform(pipe, 4, q=0.3)
    assert tuple(card.model.latent_grid) == (21, 15, 22)
    assert card.sampler.timesteps != schedule.sampler.timesteps
    asymrnr.apply(pipe, card)
    try:
        with pytest.raises(ScheduleMismatchError, match="does not follow the schedule's sampler"):
            generate(pipe, steps=4)
        asymrnr.apply(pipe, card, resample_steps=True)  # mapped by timestep instead
        assert torch.isfinite(generate(pipe, steps=4)).all()
    finally:
        asymrnr.remove(pipe)
    with pytest.raises(AsymRnRError, match="at least 2 denoising steps"):
        uniform(pipe, 1)


def test_grid_comes_from_the_call_arguments(ltx):
    transformer = ltx.transformer
    adapter = archs.adapter_for(transformer)
    hidden = torch.zeros(2, 3 * 8 * 10, 8)
    assert adapter.call_grid(transformer, {"hidden_states": hidden, "num_frames": 3, "height": 8, "width": 10}) \
        == (3, 8, 10)
    with pytest.raises(AsymRnRError, match="holds 240 tokens"):
        adapter.call_grid(transformer, {"hidden_states": hidden, "num_frames": 3, "height": 8, "width": 5})
    with pytest.raises(AsymRnRError, match="no num_frames/height/width"):
        adapter.call_grid(transformer, {"hidden_states": hidden, "num_frames": None, "height": 8, "width": 10})

    # a bare call at another size: reduced by the grid it names
    asymrnr.apply(transformer, Schedule.uniform(transformer, 1, kv=0.25))
    try:
        with record_attention(transformer) as rec:
            transformer(hidden_states=torch.randn(2, 240, 8), encoder_hidden_states=torch.randn(2, 7, 32),
                        timestep=torch.tensor([900.0, 900.0]), encoder_attention_mask=torch.ones(2, 7),
                        num_frames=3, height=8, width=10, rope_interpolation_scale=(8 / 25, 32, 32))
        assert installed(transformer).call.grid == (3, 8, 10)
    finally:
        asymrnr.remove(transformer)
    assert all(c.q_len == 240 and c.k_len == 240 - 60 for c in self_attention(rec.calls))


def test_calibrate_cli_and_the_schedule_in_a_fresh_process(tmp_path):
    from asymrnr.cli import calibrate_command
    from asymrnr.profiler import load_stats

    out = tmp_path / "out"
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-ltx-video", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "stats.h5").is_file() and (out / "schedule.json").is_file() and (out / "report.html").is_file()
    stats = load_stats(out / "stats.h5")
    assert stats.model_description.family == "ltx" and stats.branches == ("cond", "uncond")
    schedule = asymrnr.load_schedule(out / "schedule.json")
    assert schedule.model.family == "ltx" and tuple(schedule.model.latent_grid) == LTX_T2V.latent_grid
    assert schedule.sampler.timesteps == pytest.approx(tuple(stats.timesteps[0]))
    assert schedule.mean_rate("q") + schedule.mean_rate("kv") > 0

    code = f"""
import json, sys, torch
torch.set_num_threads(1)
import asymrnr
from asymrnr import archs
from asymrnr.models.presets import get_preset, load_pipeline
from asymrnr.testing.recorder import record_attention
pipe = load_pipeline("tiny-ltx-video")
pipe.set_progress_bar_config(disable=True)
schedule = asymrnr.load_schedule({str(out / "schedule.json")!r})
asymrnr.apply(pipe, schedule)
with record_attention(pipe) as rec:
    video = pipe("a blue circle", generator=torch.Generator().manual_seed(3), output_type="latent",
                 **get_preset("tiny-ltx-video").call_kwargs()).frames
lengths = sorted({{(c.q_len, c.k_len) for c in rec.calls if c.site.endswith("attn1")}})
print(json.dumps({{"finite": bool(torch.isfinite(video).all()), "lengths": lengths}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finite"]
    want = {(N - int(q * N), N - int(kv * N)) for b in range(schedule.model.num_blocks)
            for q, kv in zip(schedule.rates["q"][b], schedule.rates["kv"][b])}
    assert {tuple(x) for x in result["lengths"]} == want and len(want) > 1


def test_schedules_are_refused_across_families(ltx, tiny_pipeline):
    ltx_schedule = uniform(ltx, q=0.3)
    cog_schedule = Schedule.uniform(tiny_pipeline, 3, q=0.3)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a cogvideox model .*this is a ltx model"):
        asymrnr.apply(ltx, cog_schedule)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a ltx model .*this is a cogvideox model"):
        asymrnr.apply(tiny_pipeline, ltx_schedule)
    assert installed(ltx) is None and installed(tiny_pipeline) is None


def _flop_count(transformer, kwargs):
    """FLOPs of one forward (SDPA through the math kernel, so that FlopCounterMode sees its matmuls): the
    total and the transformer blocks' share."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(**kwargs)
    per_module = counter.get_flop_counts()
    blocks = sum(sum(v.values()) for k, v in per_module.items() if k.split(".")[-2:-1] == ["transformer_blocks"])
    return counter.get_total_flops(), blocks


@pytest.mark.parametrize("rates", [{}, {"q": 0.5, "kv": 0.3}, {"h": 0.4}], ids=["dense", "q-kv", "h"])
def test_flops_model_matches_a_flop_count(ltx, rates):
    from asymrnr.flops import rates_flops

    transformer = ltx.transformer
    grid, text, batch = (3, 8, 10), 16, 2
    n = grid[0] * grid[1] * grid[2]
    torch.manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(batch, n, 8), encoder_hidden_states=torch.randn(batch, text, 32),
                  timestep=torch.tensor([500.0] * batch), encoder_attention_mask=torch.ones(batch, text),
                  num_frames=grid[0], height=grid[1], width=grid[2], rope_interpolation_scale=(8 / 25, 32, 32))
    adapter = archs.adapter_for(transformer)
    model = adapter.describe(transformer, latent_grid=grid, text_len=text)
    report = rates_flops(model, cache_steps=1, batch=batch, num_steps=1, **rates)
    if rates:
        asymrnr.apply(transformer, Schedule.uniform(transformer, 1, latent_grid=grid, text_len=text, **rates))
    try:
        total, blocks = _flop_count(transformer, kwargs)
    finally:
        asymrnr.remove(transformer)
    # gathers are index copies (no FLOPs for the counter); the matching's few elementwise terms are not matmuls
    modelled = report.reduced_total - report.components_reduced["gather"]
    assert blocks == pytest.approx(modelled, rel=0.01)
    if not rates:
        assert blocks == report.dense_total  # exactly: projections, attention, cross-attention, MLP
    # the whole forward: + patchify/unpatchify projections, caption projection, timestep embedding
    assert total == pytest.approx(report.reduced_total, rel=0.05)


def test_generation_rules_size_and_presets(ltx):
    from asymrnr.models.presets import get_preset

    adapter = archs.get("ltx")
    rules = adapter.generation_rules()
    assert rules.check(480, 704, 161) is None
    assert "multiples of 32" in rules.check(480, 700, 161)
    assert "8k+1" in rules.check(480, 704, 160)
    assert adapter.generation_size(ltx, ltx.transformer, LTX_T2V.latent_grid) == {
        "height": LTX_T2V.height, "width": LTX_T2V.width, "num_frames": LTX_T2V.num_frames}
    assert adapter.token_grid(ltx.transformer.config, 480, 704, 161, 32, 8) == (21, 15, 22)
    real = get_preset("ltx-video")
    assert real.family == "ltx" and rules.check(real.height, real.width, real.num_frames) is None
    assert (real.num_inference_steps, real.guidance_scale, real.max_sequence_length) == (50, 3.0, 128)
    tiny = get_preset("tiny-ltx-video")
    assert tiny.tiny_family == "ltx-video" and tiny.family == "ltx" and tiny.extra_kwargs["frame_rate"] == 25
    assert rules.check(tiny.height, tiny.width, tiny.num_frames) is None
    model = adapter.describe(ltx.transformer)
    assert (model.text_layout, model.text_len, model.cross_len, model.patch_size) == ("none", 0, 128, (1, 1, 1))
    assert set(runtimes(ltx)) == set()


def test_flops_model_at_the_model_card_size():
    """The real LTX-Video config on the meta device (no memory, no weights), counted at 480 x 704, 161 frames."""
    from diffusers import LTXVideoTransformer3DModel

    from asymrnr.flops import transformer_flops

    with torch.device("meta"):
        transformer = LTXVideoTransformer3DModel()  # 0.9.x: 28 blocks, 32 heads x 64, caption 4096
        kwargs = dict(hidden_states=torch.randn(2, 21 * 15 * 22, 128), encoder_hidden_states=torch.randn(2, 128, 4096),
                      timestep=torch.full((2,), 500.0), encoder_attention_mask=torch.ones(2, 128),
                      num_frames=21, height=15, width=22, rope_interpolation_scale=(8 / 25, 32, 32))
    total, blocks = _flop_count(transformer, kwargs)
    model = archs.adapter_for(transformer).describe(transformer)  # defaults: the model card's grid, 128 tokens
    assert tuple(model.latent_grid) == (21, 15, 22)
    assert blocks == transformer_flops(model)
    assert total == pytest.approx(transformer_flops(model), rel=1e-3)  # 6.8e13 per call of batch 2
