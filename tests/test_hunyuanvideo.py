"""The runtime on the tiny HunyuanVideo pipeline: two kinds of sites (dual- and single-stream blocks), text
last with a bool key mask over the padded text, guidance-distilled and true CFG, SymRnR, the CLI end to end,
refusals across families, and the FLOPs model against a count of the real forward."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr import Schedule, archs
from asymrnr.errors import ScheduleMismatchError
from asymrnr.runtime import installed
from asymrnr.testing import HUNYUAN_T2V, load_tiny_hunyuan_pipeline
from asymrnr.testing.recorder import record_attention
from asymrnr.testing.tiny_hunyuan import build_tiny_hunyuan_transformer

N = 3 * 4 * 5  # video tokens of the tiny default call
T = HUNYUAN_T2V.text_len  # text tokens (padded)
GRID = HUNYUAN_T2V.latent_grid
SITE = re.compile(r"(single_)?transformer_blocks\.(\d+)\.attn")


@pytest.fixture(scope="module")
def hunyuan():
    pipe = load_tiny_hunyuan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generate(pipe, seed=0, steps=3, prompt="a red square", **extra):
    kwargs = HUNYUAN_T2V.call_kwargs(num_inference_steps=steps, **extra)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).frames


def true_cfg(**extra):
    return dict(true_cfg_scale=2.0, negative_prompt="blurry, low quality", **extra)


def site_calls(calls):
    """The self-attention calls of the schedule's sites (not the text-only token refiner)."""
    return [c for c in calls if SITE.fullmatch(c.site)]


def site_row(pipe_or_transformer, path: str) -> int:
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    return next(s.index for s in archs.adapter_for(transformer).sites(transformer) if s.path == path)


def kept(rate: float, n: int = N) -> int:
    return n - int(rate * n)


# --------------------------------------------------------------------------------------------------- facts


def test_sites_kinds_and_description(hunyuan):
    transformer = hunyuan.transformer
    adapter = archs.adapter_for(hunyuan)
    assert adapter.family == "hunyuanvideo" and archs.get("hunyuanvideo") is adapter
    sites = adapter.sites(transformer)
    assert [(s.index, s.kind, s.path) for s in sites] == [
        (0, "dual", "transformer_blocks.0.attn"), (1, "dual", "transformer_blocks.1.attn"),
        (2, "single", "single_transformer_blocks.0.attn"), (3, "single", "single_transformer_blocks.1.attn"),
    ]
    desc = adapter.describe(transformer, latent_grid=GRID, text_len=T)
    assert desc.block_kinds == ("dual", "dual", "single", "single") and desc.num_blocks == 4
    assert desc.text_layout == "last" and desc.patch_size == (1, 2, 2) and desc.ffn_dim == 4 * 32
    real = adapter.describe(transformer)  # the model card's generation: 720 x 1280, 129 frames, 256 text tokens
    assert real.latent_grid == (33, 45, 80) and real.text_len == 256
    rules = adapter.generation_rules()
    assert rules.check(720, 1280, 129) is None and rules.check(720, 1280, 130) and rules.check(720, 1272, 129)
    x = torch.zeros(1, 4, 3, 8, 10)
    assert adapter.call_grid(transformer, {"hidden_states": x}) == GRID
    assert adapter.generation_size(hunyuan, transformer, GRID) == {"height": 64, "width": 80, "num_frames": 9}
    schedule = Schedule.uniform(hunyuan, 3)
    assert schedule.model.block_kinds == desc.block_kinds
    # the sampler is the pipeline's: FlowMatch Euler with sigmas linspace(1, 0, n + 1)[:-1]
    hunyuan.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, 4)[:-1])
    assert schedule.sampler.timesteps == tuple(float(t) for t in hunyuan.scheduler.timesteps)


# ---------------------------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("cfg", [False, True], ids=["distilled", "true-cfg"])
def test_zero_schedule_is_bit_identical_with_a_padded_prompt(hunyuan, cfg):
    pipe = hunyuan
    extra = true_cfg() if cfg else {}
    masks = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["encoder_attention_mask"].clone()), with_kwargs=True)
    try:
        with record_attention(pipe) as rec:
            ref = generate(pipe, **extra)
    finally:
        handle.remove()
    assert all(0 < float(m.sum()) < T for m in masks)  # the prompt is padded: the key mask has False columns
    calls = site_calls(rec.calls)
    assert all(c.mask_kind == "bool" and c.mask_shape == (1, 1, 1, N + T) and c.text_layout == "last" for c in calls)
    assert {c.context for c in calls} == ({"cond", "uncond"} if cfg else {"cond"})
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3))
    try:
        assert torch.equal(generate(pipe, **extra), ref)
    finally:
        asymrnr.remove(pipe)
    assert torch.equal(generate(pipe, **extra), ref)


@pytest.mark.parametrize("cfg", [False, True], ids=["distilled", "true-cfg"])
def test_reduced_lengths_follow_the_schedule_in_both_block_kinds(hunyuan, cfg):
    pipe = hunyuan
    extra = true_cfg() if cfg else {}
    ref = generate(pipe, **extra)
    schedule = Schedule.uniform(pipe, 3, latent_grid=GRID, text_len=T)
    # other rates per kind and per step: dual blocks reduce Q and K/V, single blocks K/V only (not at step 1)
    q = [[0.5, 0.5, 0.5]] * 2 + [[0.0, 0.0, 0.0]] * 2
    kv = [[0.3, 0.3, 0.3]] * 2 + [[0.4, 0.0, 0.4]] * 2
    schedule = schedule.with_rates(q=q, kv=kv)
    asymrnr.apply(pipe, schedule)
    try:
        with record_attention(pipe) as rec:
            out = generate(pipe, **extra)
    finally:
        asymrnr.remove(pipe)
    calls = site_calls(rec.calls)
    per_step = 2 if cfg else 1
    assert len(calls) == 3 * per_step * 4
    assert {c.context for c in calls} == ({"cond", "uncond"} if cfg else {"cond"})
    for c in calls:
        b, step = site_row(pipe, c.site), c.forward_index // per_step
        assert (c.q_len, c.k_len) == (kept(q[b][step]) + T, kept(kv[b][step]) + T), (c.site, step)
        assert c.mask_shape[-1] == c.k_len and c.mask_kind == "bool"  # the mask follows the kept keys
        assert c.via == "dispatch_attention_fn"
    kinds = {site_row(pipe, c.site): c.site.split(".")[0] for c in calls}
    assert kinds == {0: "transformer_blocks", 1: "transformer_blocks", 2: "single_transformer_blocks",
                     3: "single_transformer_blocks"}
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_symrnr_h_in_both_block_kinds(hunyuan):
    pipe = hunyuan
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, h=0.4))
    try:
        with record_attention(pipe) as rec:
            out = generate(pipe)
    finally:
        asymrnr.remove(pipe)
    calls = site_calls(rec.calls)
    assert {c.site.split(".")[0] for c in calls} == {"transformer_blocks", "single_transformer_blocks"}
    assert all(c.q_len == c.k_len == kept(0.4) + T and c.mask_shape[-1] == c.k_len for c in calls)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("rates", [{"q": 0.5, "kv": 0.4}, {"h": 0.4}], ids=["q-kv", "h"])
def test_a_batch_of_differently_padded_prompts_reduces_each_sample_with_its_own_mask(hunyuan, rates):
    """Two prompts of different lengths in one batch: each sample keeps its own key mask (its own padding)
    through the reduction, so the batch gives what the prompts give one by one (to float rounding)."""
    pipe = hunyuan
    prompts = ["a red square", "a small blue circle moving slowly to the left over a green field at dusk"]
    latents = torch.randn(2, 4, 3, 8, 10, generator=torch.Generator().manual_seed(0))

    def run(prompt, lat):
        kwargs = HUNYUAN_T2V.call_kwargs(num_inference_steps=3)
        return pipe(prompt, latents=lat.clone(), output_type="latent", **kwargs).frames

    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, **rates))
    try:
        with record_attention(pipe) as rec:
            both = run(prompts, latents)
        one = torch.cat([run(p, latents[i:i + 1]) for i, p in enumerate(prompts)])
    finally:
        asymrnr.remove(pipe)
    calls = site_calls(rec.calls)
    assert all(c.batch == 2 and c.mask_shape[0] == 2 and c.k_len == kept(rates.get("kv", rates.get("h", 0.0))) + T
               for c in calls)
    torch.testing.assert_close(both, one, rtol=1e-5, atol=1e-5)


def _tiny_inputs(valid_text: int = 10):
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 4, 3, 8, 10, generator=g), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, T, 32, generator=g),
                encoder_attention_mask=(torch.arange(T) < valid_text).float()[None],
                pooled_projections=torch.randn(1, 32, generator=g), guidance=torch.tensor([6000.0]))


@pytest.mark.parametrize("site,rates", [
    ("transformer_blocks.1.attn", {"q": 0.3, "kv": 0.4}),
    ("single_transformer_blocks.0.attn", {"kv": 0.5}),
    ("single_transformer_blocks.1.attn", {"h": 0.4}),
    ("transformer_blocks.0.attn", {"h": 0.3}),
], ids=["dual-q-kv", "single-kv", "single-h", "dual-h"])
def test_mask_columns_follow_the_kept_keys(monkeypatch, site, rates):
    """A reduced call's mask holds exactly the columns of the kept keys (text columns untouched): a random
    key mask (video and text columns) is put on one block, the keys of the dense and the reduced call are
    matched row by row, and the reduced mask must be the dense one at those columns."""
    from diffusers.models import attention_dispatch
    from diffusers.models.transformers import transformer_hunyuan_video as upstream

    transformer = build_tiny_hunyuan_transformer()
    row = site_row(transformer, site)
    block = transformer.get_submodule(site.rsplit(".", 1)[0])
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(1, 1, 1, N + T, generator=g) > 0.3
    mask[..., 0] = True
    assert not mask[..., :N].all() and not mask[..., N:].all()

    def put_mask(module, args):
        return (*args[:3], mask, *args[4:])

    seen = []
    for module in (attention_dispatch, upstream):
        original = module.dispatch_attention_fn

        def spy(query, key, value, attn_mask=None, *args, _original=original, **kwargs):
            seen.append((key.detach().clone(), None if attn_mask is None else attn_mask.clone()))
            return _original(query, key, value, attn_mask, *args, **kwargs)

        monkeypatch.setattr(module, "dispatch_attention_fn", spy)
    handle = block.register_forward_pre_hook(put_mask)
    inputs = _tiny_inputs()
    try:
        with torch.no_grad():
            transformer(**inputs)
            dense_key, dense_mask = seen[row]
            seen.clear()
            table = {f: [[r if b == row else 0.0] for b in range(4)] for f, r in rates.items()}
            schedule = Schedule.uniform(transformer, 1, latent_grid=GRID, text_len=T).with_rates(**table)
            asymrnr.apply(transformer, schedule)
            try:
                out = transformer(**inputs).sample
            finally:
                asymrnr.remove(transformer)
    finally:
        handle.remove()
    key, red_mask = seen[row]
    assert torch.equal(dense_mask, mask)
    n_k = kept(rates.get("kv", rates.get("h", 0.0)))
    assert key.shape[1] == n_k + T and red_mask.shape[-1] == n_k + T
    heads = key.shape[2]
    red_mask = red_mask.expand(1, heads, 1, n_k + T)
    for h in range(heads):
        dist = torch.cdist(key[0, :, h].double(), dense_key[0, :, h].double())
        nearest, idx = dist.min(dim=1)
        assert float(nearest.max()) < 1e-4, "a reduced key is no dense key"
        assert len(set(idx.tolist())) == n_k + T
        assert idx[-T:].tolist() == list(range(N, N + T))  # text keys kept, in place, last
        assert torch.equal(red_mask[0, h, 0], mask[0, 0, 0, idx])
    assert torch.isfinite(out).all()


def test_schedules_are_refused_across_families(hunyuan, tiny_pipeline):
    ours = Schedule.uniform(hunyuan, 3, q=0.3)
    cog = Schedule.uniform(tiny_pipeline, 3, q=0.3)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a cogvideox model .*this is a hunyuanvideo model"):
        asymrnr.apply(hunyuan, cog)
    with pytest.raises(ScheduleMismatchError, match="calibrated for a hunyuanvideo model .*this is a cogvideox model"):
        asymrnr.apply(tiny_pipeline, ours)
    assert installed(hunyuan) is None and installed(tiny_pipeline) is None


def test_replaced_processor_is_detected(hunyuan):
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    pipe = hunyuan
    asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.3))
    try:
        pipe.transformer.single_transformer_blocks[1].attn.set_processor(HunyuanVideoAttnProcessor2_0())
        with pytest.raises(asymrnr.AsymRnRError, match=r"single_transformer_blocks.1.attn was replaced"):
            generate(pipe)
    finally:
        asymrnr.remove(pipe)


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from asymrnr.cli import calibrate_command

    out = tmp_path_factory.mktemp("calib-hunyuan")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(calibrate_command, ["--model", "tiny-hunyuanvideo", "--out", str(out)],
                                    catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    return out, result


def test_calibrate_writes_stats_schedule_and_a_report_naming_the_block_kinds(calibrated):
    from asymrnr.profiler import load_stats

    out, result = calibrated
    assert result.exit_code == 0, result.output
    assert (out / "stats.h5").is_file() and (out / "schedule.json").is_file() and (out / "report.html").is_file()
    stats = load_stats(out / "stats.h5")
    assert stats.model_description.family == "hunyuanvideo" and stats.branches == ("cond",)
    assert tuple(stats.model["block_kinds"]) == ("dual", "dual", "single", "single")
    assert stats.num_runs == 2 and stats.num_steps == 4
    schedule = asymrnr.load_schedule(out / "schedule.json")
    assert schedule.model.block_kinds == ("dual", "dual", "single", "single")
    assert schedule.sampler.scheduler_class == "FlowMatchEulerDiscreteScheduler"
    page = (out / "report.html").read_text()
    assert "dual-stream: blocks 0\u20131 \u00b7 single-stream: blocks 2\u20133" in page  # the summary
    assert "block (dual-stream 0\\u20131, single-stream 2\\u20133)" in page  # the block axes of the figures


def test_calibrated_schedule_applies_in_a_fresh_process(calibrated):
    out, _ = calibrated
    path = out / "schedule.json"
    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "import asymrnr\n"
        "from asymrnr.models.presets import get_preset, load_pipeline\n"
        "from asymrnr.testing.recorder import record_attention\n"
        "pipe = load_pipeline('tiny-hunyuanvideo')\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "asymrnr.apply(pipe, asymrnr.load_schedule(sys.argv[1]))\n"
        "with record_attention(pipe) as rec:\n"
        "    video = pipe('a lighthouse at dusk', generator=torch.Generator().manual_seed(3), output_type='latent',\n"
        "                 **get_preset('tiny-hunyuanvideo').call_kwargs()).frames\n"
        "assert torch.isfinite(video).all()\n"
        "print(json.dumps([[c.site, c.forward_index, c.q_len, c.k_len] for c in rec.calls]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [c for c in json.loads(proc.stdout.strip().splitlines()[-1]) if SITE.fullmatch(c[0])]
    schedule = asymrnr.load_schedule(path)
    assert len(calls) == schedule.num_steps * 4
    transformer = build_tiny_hunyuan_transformer()
    for path_, step, q_len, k_len in calls:
        b = site_row(transformer, path_)
        assert q_len == kept(schedule.rates["q"][b][step]) + T and k_len == kept(schedule.rates["kv"][b][step]) + T
    assert any(q_len < N + T for _, _, q_len, _ in calls)  # the calibrated schedule reduces something


# ----------------------------------------------------------------------------------------------- FLOPs


def _count_block_flops(transformer, inputs) -> tuple[float, float]:
    """FLOPs of one forward counted by torch: the sites' blocks (less their AdaLN modulation linears, which
    the FLOPs model leaves out for every family) and the whole transformer."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        transformer(**inputs)
    counts = {k: float(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    root = type(transformer).__name__ + "."
    blocks = sum(v for k, v in counts.items() if re.fullmatch(re.escape(root) + r"(single_)?transformer_blocks\.\d+", k))
    adaln = sum(v for k, v in counts.items()
                if re.fullmatch(re.escape(root) + r"(single_)?transformer_blocks\.\d+\.(norm1|norm1_context|norm)", k))
    return blocks - adaln, counts["Global"]


@pytest.mark.parametrize("rates", [{}, {"q": 0.5, "kv": 0.3}, {"h": 0.4}], ids=["dense", "q-kv", "h"])
def test_flops_model_matches_a_count_of_the_real_forward(rates):
    """One transformer call of the tiny model, counted with ``FlopCounterMode`` (attention through the
    ``_native_math`` backend, whose matmuls torch counts; the CPU flash kernel has no FLOP formula), against
    :func:`asymrnr.flops.schedule_flops` for one call of one sample.

    Counted and modelled alike: projections, attention (QK^T and AV over the padded text too), MLPs of both
    streams, single blocks' fused ``proj_out``. Differences, by design: torch also counts the similarity
    matmul of each matching (``2 Ns Nd C``; the model adds the norms, scores and gathers around it); the model
    leaves out the AdaLN linears (subtracted here) and everything outside the blocks (patch embedding, time /
    guidance / text embeddings, the text-only token refiner, final projection) -- 9 % of this tiny model's
    forward because its 64-token refiner is as wide as the blocks, well under 0.1 % at real sizes."""
    from asymrnr import vocab
    from asymrnr.flops import schedule_flops

    transformer = build_tiny_hunyuan_transformer()
    transformer.set_attention_backend("_native_math")
    inputs = _tiny_inputs()
    schedule = Schedule.uniform(transformer, 1, latent_grid=GRID, text_len=T, **rates)
    if rates:
        asymrnr.apply(transformer, schedule)
    try:
        counted, whole = _count_block_flops(transformer, inputs)
    finally:
        asymrnr.remove(transformer)
    report = schedule_flops(schedule, batch=1)
    parts = report.components_reduced
    modelled = report.reduced_total
    assert abs(counted - modelled) / modelled < 0.05
    # term by term: what torch counts is exactly the model's projections, attention and fixed terms plus the
    # similarity matmul of every matching
    nd = vocab.num_destinations(GRID, schedule.matching.stride)
    similarity = report.matchings * 2 * (N - nd) * nd * schedule.model.inner_dim
    assert counted == parts["projections"] + parts["attention"] + parts["mlp"] + similarity
    assert 0.05 < 1 - counted / whole < 0.15  # the refiner and embeddings, outside the model


def test_profiling_is_bit_identical_and_records_both_true_cfg_branches(hunyuan, tmp_path):
    """Observing runs the AsymRnR processor at full length at every site: its Q/K/V and attention are
    upstream's to the bit. True CFG's separate calls are profiled as the cond and uncond branches."""
    from asymrnr.profiler import load_stats

    pipe = hunyuan
    ref = generate(pipe, **true_cfg())
    with asymrnr.profile(pipe, tmp_path / "stats.h5", mode="w"):
        out = generate(pipe, **true_cfg())
    assert torch.equal(out, ref)
    stats = load_stats(tmp_path / "stats.h5")
    assert stats.branches == ("cond", "uncond") and stats.num_runs == 1 and stats.num_steps == 3
    assert stats.num_blocks == 4 and stats.model_description.text_len == T
