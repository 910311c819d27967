"""The runtime on the tiny Mochi-1 pipeline: exactness, reduced lengths of joint attention run per sample with
each sample's valid text tokens (last), reversed timesteps, processors set per module, calibration from the
CLI, refusals across families, and the FLOPs model against a count of a real forward."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr import Schedule, archs
from asymrnr.errors import ScheduleMismatchError
from asymrnr.runtime import installed
from asymrnr.testing import LTX_T2V, MOCHI_T2V, load_tiny_ltx_pipeline, load_tiny_mochi_pipeline
from asymrnr.testing.recorder import record_attention

N = 3 * 4 * 5  # video tokens of the tiny default generation

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported")


@pytest.fixture(scope="module")
def mochi():
    pipe = load_tiny_mochi_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generate(pipe, seed=0, steps=3, prompt="a red square", **extra):
    kwargs = MOCHI_T2V.call_kwargs(num_inference_steps=steps, **extra)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).frames


def self_attention(calls):
    return [c for c in calls if c.site.endswith("attn1")]


def text_lengths(pipe, prompts):
    """Valid text tokens of each prompt, as the pipeline's mask gives them."""
    _, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                       max_sequence_length=MOCHI_T2V.max_sequence_length)
    return [int(m.sum()) for m in mask]


def test_zero_schedule_is_bit_identical_and_reductions_have_the_scheduled_lengths(mochi):
    pipe = mochi
    uncond, cond = text_lengths(pipe, ["", "a red square"])
    assert uncond != cond  # the two samples of the batched CFG call attend to different text lengths
    ref = generate(pipe)
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3))
    try:
        assert torch.equal(generate(pipe), ref)
        asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.5, kv=0.3))
        with record_attention(pipe) as rec:
            reduced = generate(pipe)
    finally:
        asymrnr.remove(pipe)
    calls = self_attention(rec.calls)
    layers = pipe.transformer.config.num_layers
    assert len(calls) == 3 * layers * 2  # steps x blocks x one SDPA per sample
    assert {c.context for c in calls} == {"cond_uncond"} and {c.via for c in calls} == {"sdpa"}
    for c in calls:
        text = (uncond, cond)[c.call_in_module]  # [uncond, cond]: sample 0 first
        assert (c.batch, c.q_len, c.k_len) == (1, N - int(0.5 * N) + text, N - int(0.3 * N) + text)
    assert not torch.equal(reduced, ref) and torch.isfinite(reduced).all()
    assert torch.equal(generate(pipe), ref)  # removed: exactly the model again


def test_h_reduction_gathers_the_per_head_rope_tables(mochi):
    pipe = mochi
    uncond, cond = text_lengths(pipe, ["", "a red square"])
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, h=0.4))
    try:
        with record_attention(pipe) as rec:
            out = generate(pipe)
    finally:
        asymrnr.remove(pipe)
    for c in self_attention(rec.calls):
        text = (uncond, cond)[c.call_in_module]
        assert c.q_len == c.k_len == N - int(0.4 * N) + text
    assert torch.isfinite(out).all()


def test_processors_are_set_per_module(mochi):
    pipe = mochi
    assert not hasattr(pipe.transformer, "set_attn_processor")  # Mochi has no AttentionMixin
    originals = [b.attn1.processor for b in pipe.transformer.transformer_blocks]
    rt = asymrnr.apply(pipe, Schedule.uniform(pipe, 3, kv=0.3))
    try:
        assert [s.kind for s in rt.sites] == ["block", "final"]  # the last block is context_pre_only
        assert all(b.attn1.processor is rt.processors[s.processor_name]
                   for b, s in zip(pipe.transformer.transformer_blocks, rt.sites))
    finally:
        asymrnr.remove(pipe)
    assert [b.attn1.processor for b in pipe.transformer.transformer_blocks] == originals


def _capture_site(pipe, block=0):
    """Forward hook on ``attn1`` of ``block``: (the upstream processor's outputs, ours) of its first call."""
    module = pipe.transformer.transformer_blocks[block].attn1
    seen = []

    def hook(mod, args, kwargs, output):
        if not seen:
            upstream = getattr(mod.processor, "original", mod.processor)
            ref = upstream(mod, kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["attention_mask"],
                           kwargs["image_rotary_emb"])
            seen.append((ref, output))

    return module.register_forward_hook(hook, with_kwargs=True), seen


def test_replacement_computes_what_upstream_computes(mochi, tmp_path):
    pipe = mochi
    ref = generate(pipe)
    with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):  # observers: our processor, nothing dropped
        observed = generate(pipe)
    torch.testing.assert_close(observed, ref, rtol=1e-4, atol=1e-5)

    # Q only, one matching for all heads: kept video queries are exact, dropped ones take a kept one's output,
    # and the text queries (never reduced, attending to every video key) are exact
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.5, granularity="joint"))
    handle, seen = _capture_site(pipe)
    try:
        generate(pipe)
    finally:
        handle.remove()
        asymrnr.remove(pipe)
    (up_video, up_text), (video, text) = seen[0]
    torch.testing.assert_close(text, up_text, rtol=1e-4, atol=1e-5)
    for b in range(video.shape[0]):
        same = torch.isclose(video[b], up_video[b], rtol=1e-4, atol=1e-5).all(-1)
        assert int(same.sum()) >= N - int(0.5 * N)
        dist = torch.cdist(video[b], up_video[b], compute_mode="donot_use_mm_for_euclid_dist")
        assert float(dist.min(dim=1).values.max()) < 1e-4


def test_reversed_timesteps_are_flipped(mochi):
    pipe = mochi
    raw = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: raw.append(float(kw["timestep"].max())), with_kwargs=True)
    try:
        generate(pipe, steps=4)
    finally:
        handle.remove()
    assert raw[0] == 0.0 and raw == sorted(raw)  # the transformer sees rising timesteps (0 = pure noise)
    schedule = Schedule.uniform(pipe, 4, kv=0.3)
    assert schedule.sampler.timesteps == pytest.approx([1000.0 - t for t in raw], abs=1e-3)
    assert list(schedule.sampler.timesteps) == sorted(schedule.sampler.timesteps, reverse=True)
    assert schedule.sampler.config["invert_sigmas"] is True

    rt = asymrnr.apply(pipe, schedule)
    steps = []
    rt.call_listeners.append(lambda r: steps.append((r.generation, r.call.gen_step, r.call.step)))
    try:
        generate(pipe, steps=4)
        generate(pipe, steps=4, seed=1)
    finally:
        asymrnr.remove(pipe)
    first = steps[0][0]
    assert steps == [(first + g, k, k) for g in range(2) for k in range(4)]  # one generation per pipeline call

    # bare calls: rising raw timesteps are one generation, counted step by step
    transformer = pipe.transformer
    rt = asymrnr.apply(transformer, Schedule.uniform(transformer, 2, q=0.3))
    seen = []
    rt.call_listeners.append(lambda r: seen.append((r.generation, r.call.gen_step, r.call.timestep)))
    try:
        for t in (0.0, 250.0, 0.0):
            _bare_call(transformer, t)
    finally:
        asymrnr.remove(transformer)
    g = seen[0][0]
    assert seen == [(g, 0, 1000.0), (g, 1, 750.0), (g + 1, 0, 1000.0)]


def _bare_call(transformer, t, valid=(32, 32), grid=(3, 4, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = len(valid)
    mask = torch.zeros(batch, 32, dtype=torch.bool)
    for b, v in enumerate(valid):
        mask[b, :v] = True
    return transformer(hidden_states=torch.randn(batch, 12, grid[0], grid[1] * 2, grid[2] * 2, generator=gen),
                       encoder_hidden_states=torch.randn(batch, 32, 32, generator=gen),
                       timestep=torch.full((batch,), t), encoder_attention_mask=mask).sample


def test_samples_with_different_and_empty_text(mochi):
    transformer = mochi.transformer
    valid = (0, 5, 32)  # an all-False mask (an empty prompt with force_zeros_for_empty_prompt) attends video only
    ref = _bare_call(transformer, 10.0, valid)
    asymrnr.apply(transformer, Schedule.uniform(transformer, 1))
    try:
        assert torch.equal(_bare_call(transformer, 10.0, valid), ref)
        asymrnr.apply(transformer, Schedule.uniform(transformer, 1, q=0.25, kv=0.5))
        with record_attention(transformer) as rec:
            out = _bare_call(transformer, 10.0, valid)
        assert installed(transformer).call.text_len == 32  # the longest valid prompt
    finally:
        asymrnr.remove(transformer)
    calls = self_attention(rec.calls)
    assert [(c.call_in_module, c.q_len, c.k_len) for c in calls] == [
        (b, N - int(0.25 * N) + v, N - int(0.5 * N) + v) for _ in range(2) for b, v in enumerate(valid)]
    assert torch.isfinite(out).all()


def test_calibrate_cli_and_the_schedule_in_a_fresh_process(mochi, tmp_path):
    from asymrnr.cli import calibrate_command
    from asymrnr.models.presets import get_preset
    from asymrnr.profiler import load_stats

    out = tmp_path / "out"
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-mochi", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "stats.h5").is_file() and (out / "schedule.json").is_file() and (out / "report.html").is_file()
    stats = load_stats(out / "stats.h5")
    assert stats.model_description.family == "mochi" and stats.branches == ("cond", "uncond")
    steps = get_preset("tiny-mochi").num_inference_steps
    assert stats.timesteps[0][0] == pytest.approx(1000.0)  # flipped: falling from pure noise
    schedule = asymrnr.load_schedule(out / "schedule.json")
    assert schedule.model.family == "mochi" and schedule.model.kinds() == ("block", "final")
    assert schedule.sampler.timesteps == pytest.approx(Schedule.uniform(mochi, steps).sampler.timesteps)
    assert schedule.mean_rate("q") + schedule.mean_rate("kv") > 0

    code = f"""
import json, torch
torch.set_num_threads(1)
import asymrnr
from asymrnr.models.presets import get_preset, load_pipeline
from asymrnr.testing.recorder import record_attention
pipe = load_pipeline("tiny-mochi")
pipe.set_progress_bar_config(disable=True)
asymrnr.apply(pipe, asymrnr.load_schedule({str(out / "schedule.json")!r}))
with record_attention(pipe) as rec:
    video = pipe("a blue circle", generator=torch.Generator().manual_seed(3), output_type="latent",
                 **get_preset("tiny-mochi").call_kwargs()).frames
lengths = sorted({{(c.call_in_module, c.q_len, c.k_len) for c in rec.calls if c.site.endswith("attn1")}})
print(json.dumps({{"finite": bool(torch.isfinite(video).all()), "lengths": lengths}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finite"]
    text = text_lengths(mochi, ["", "a blue circle"])
    want = {(b, N - int(q * N) + text[b], N - int(kv * N) + text[b]) for b in range(2)
            for row in range(schedule.model.num_blocks)
            for q, kv in zip(schedule.rates["q"][row], schedule.rates["kv"][row])}
    assert {tuple(x) for x in result["lengths"]} == want and len(want) > 2


def test_schedules_are_refused_across_families(mochi, tiny_pipeline):
    ltx = load_tiny_ltx_pipeline()
    mochi_schedule = Schedule.uniform(mochi, 3, q=0.3)
    ltx_schedule = Schedule.uniform(ltx, 3, q=0.3, latent_grid=LTX_T2V.latent_grid)
    cog_schedule = Schedule.uniform(tiny_pipeline, 3, q=0.3)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a ltx model .*this is a mochi model"):
        asymrnr.apply(mochi, ltx_schedule)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a mochi model .*this is a ltx model"):
        asymrnr.apply(ltx, mochi_schedule)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a cogvideox model .*this is a mochi model"):
        asymrnr.apply(mochi, cog_schedule)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a mochi model .*this is a cogvideox model"):
        asymrnr.apply(tiny_pipeline, mochi_schedule)
    assert installed(mochi) is None and installed(ltx) is None and installed(tiny_pipeline) is None


def _flop_count(transformer, kwargs):
    """FLOPs of one forward (SDPA through the math kernel, so that FlopCounterMode sees its matmuls), by
    module."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(**kwargs)
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    blocks = sum(v for k, v in per_module.items() if k.split(".")[-2:-1] == ["transformer_blocks"])
    return counter.get_total_flops(), blocks, per_module


@pytest.mark.parametrize("rates", [{}, {"q": 0.5, "kv": 0.3}, {"h": 0.4}], ids=["dense", "q-kv", "h"])
def test_flops_model_matches_a_flop_count(mochi, rates):
    from asymrnr.flops import rates_flops

    transformer = mochi.transformer
    grid, text, batch = (3, 8, 10), 32, 2  # every text token valid: the text stream runs over them all
    torch.manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(batch, 12, grid[0], grid[1] * 2, grid[2] * 2),
                  encoder_hidden_states=torch.randn(batch, text, 32), timestep=torch.tensor([500.0] * batch),
                  encoder_attention_mask=torch.ones(batch, text, dtype=torch.bool))
    model = archs.adapter_for(transformer).describe(transformer, latent_grid=grid, text_len=text)
    assert model.kinds() == ("block", "final")
    report = rates_flops(model, cache_steps=1, batch=batch, num_steps=1, **rates)
    if rates:
        asymrnr.apply(transformer, Schedule.uniform(transformer, 1, latent_grid=grid, text_len=text, **rates))
    try:
        total, blocks, per_module = _flop_count(transformer, kwargs)
    finally:
        asymrnr.remove(transformer)
    # gathers are index copies (no FLOPs for the counter); the matching's few elementwise terms are not matmuls;
    # the blocks' AdaLN linears (one row per sample) are not modelled: well under 1 % here
    modelled = report.reduced_total - report.components_reduced["gather"]
    assert blocks == pytest.approx(modelled, rel=0.01)
    # the whole forward: + the patch embedding and the output projection (48 latent values per token against
    # 32 channels: ~5 % of this tiny model, < 0.01 % of Mochi-1's), the caption pooler and timestep embedding
    edges = per_module["MochiTransformer3DModel.patch_embed"] + per_module["MochiTransformer3DModel.proj_out"]
    assert total - edges == pytest.approx(report.reduced_total, rel=0.05)


def test_generation_rules_size_and_presets(mochi):
    from asymrnr.models.presets import get_preset

    adapter = archs.get("mochi")
    rules = adapter.generation_rules()
    assert rules.check(480, 848, 79) is None and rules.check(480, 848, 85) is None
    assert "6k+1" in rules.check(480, 848, 84)
    assert "multiples of 16" in rules.check(480, 840, 79)
    assert adapter.generation_size(mochi, mochi.transformer, MOCHI_T2V.latent_grid) == {
        "height": MOCHI_T2V.height, "width": MOCHI_T2V.width, "num_frames": MOCHI_T2V.num_frames}
    assert adapter.token_grid(mochi.transformer.config, 480, 848, 84, 8, 6) == (14, 30, 53)  # the model card
    real = get_preset("mochi-1")
    assert real.family == "mochi" and rules.check(real.height, real.width, real.num_frames) is None
    assert adapter.token_grid(mochi.transformer.config, real.height, real.width, real.num_frames, 8, 6) == (14, 30, 53)
    assert (real.num_inference_steps, real.guidance_scale, real.max_sequence_length) == (64, 4.5, 256)
    tiny = get_preset("tiny-mochi")
    assert tiny.tiny_family == "mochi-1" and tiny.family == "mochi"
    assert rules.check(tiny.height, tiny.width, tiny.num_frames) is None
    model = adapter.describe(mochi.transformer)
    assert (model.text_layout, model.text_len, model.patch_size) == ("last", 32, (1, 2, 2))


class _AllTextValid:
    """``MochiAttnProcessor2_0`` for prompts whose tokens are all valid, without its ``nonzero`` (which the meta
    device cannot run): the same operations on the same shapes."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        import torch.nn.functional as F

        q, k, v = (f(hidden_states).unflatten(2, (attn.heads, -1)) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        eq, ek, ev = (f(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                      for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        n = q.shape[1]
        q, k, v = (torch.cat([a, b], 1).transpose(1, 2) for a, b in ((q, eq), (k, ek), (v, ev)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2, 3)
        video, text = attn.to_out[0](out[:, :n]), out[:, n:]
        return video, attn.to_add_out(text) if hasattr(attn, "to_add_out") else text


def test_flops_model_at_the_model_card_size():
    """The real Mochi-1 config on the meta device (no memory, no weights), counted at 480 x 848, 84 frames with
    256 valid text tokens."""
    from diffusers import MochiTransformer3DModel

    from asymrnr.flops import transformer_flops

    with torch.device("meta"):
        transformer = MochiTransformer3DModel()  # 48 blocks, 24 heads x 128, text stream 1536
        kwargs = dict(hidden_states=torch.randn(2, 12, 14, 60, 106), encoder_hidden_states=torch.randn(2, 256, 4096),
                      timestep=torch.full((2,), 500.0), encoder_attention_mask=torch.ones(2, 256, dtype=torch.bool))

    def create_rope(freqs, pos):  # upstream's, without its autocast context (none exists for meta)
        f = torch.einsum("nd,dhf->nhf", pos.to(torch.float32), freqs.to(torch.float32))
        return torch.cos(f), torch.sin(f)

    transformer.rope._create_rope = create_rope
    for block in transformer.transformer_blocks:
        block.attn1.processor = _AllTextValid()
    total, blocks, _ = _flop_count(transformer, kwargs)
    model = archs.adapter_for(transformer).describe(transformer)  # defaults: the model card's grid, 256 tokens
    assert tuple(model.latent_grid) == (14, 30, 53) and model.text_len == 256
    assert blocks == pytest.approx(transformer_flops(model), rel=1e-4)  # AdaLN linears aside
    assert total == pytest.approx(transformer_flops(model), rel=1e-3)  # 1.08e15 per call of batch 2
