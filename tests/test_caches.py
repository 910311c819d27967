"""AsymRnR together with diffusers' step caches (``transformer.enable_cache``) on tiny CogVideoX and Wan pipelines.

For every cache the tiny transformer supports, in both orders of enabling: in one generation the cache skips
work (fewer self-attention calls than the dense model makes: whole blocks for FirstBlockCache and MagCache,
attention calls for PyramidAttentionBroadcast, FasterCache and TaylorSeer) and every self-attention call that
does run is reduced by AsymRnR; ``asymrnr.remove`` leaves the cache hooks working (the output is then the
cache's alone, bit for bit) and ``transformer.disable_cache()`` leaves AsymRnR working (the output is then
AsymRnR's alone, bit for bit). Attention calls are counted with :func:`asymrnr.testing.recorder.record_attention`.
See docs/caches.md.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import asymrnr
from asymrnr.runtime import installed
from asymrnr.runtime.hook import find_hook
from asymrnr.runtime.uniform import uniform_schedule
from asymrnr.testing import WAN_T2V, load_tiny_wan_pipeline
from asymrnr.testing.recorder import record_attention

STEPS = 6
Q, KV = 0.5, 0.3
N = 3 * 4 * 5  # video tokens of both tiny pipelines at their sizes here
TEXT = {"cogvideox": 226, "wan": 0}  # text tokens in a self-attention call (CogVideoX: joint [text | video])
CFG_CALLS = {"cogvideox": 1, "wan": 2}  # transformer calls per step (batched CFG / separate cond and uncond)


def cache_configs(pipe):
    """Settings that make each cache fire on a 6-step tiny generation (the thresholds are loose on purpose:
    random weights change a lot from step to step). Expected self-attention calls per CFG branch and block
    are in ``EXPECTED``."""
    now = lambda: pipe.current_timestep  # noqa: E731
    return {
        # every step after the first is skipped after the head block
        "first_block": lambda: FirstBlockCacheConfig(threshold=10.0),
        # step 0 computes, then at most 2 skipped steps in a row: steps 0 and 3 compute
        "mag": lambda: MagCacheConfig(threshold=10.0, max_skip_steps=2, retention_ratio=0.0,
                                      num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS),
        # the default identifiers ("^transformer_blocks.*attn") do not fullmatch "...attn1": name the sites
        "taylorseer": lambda: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2,
                                                    taylor_factors_dtype=torch.float32,
                                                    cache_identifiers=[r"(transformer_)?blocks\.\d+\.attn1"]),
        # every second call of each self-attention module is broadcast from the previous one
        "pyramid": lambda: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                           spatial_attention_timestep_skip_range=(-1, 1001),
                                                           current_timestep_callback=now),
        # every second step skips the unconditional half of the batch and approximates the attention
        "faster": lambda: FasterCacheConfig(spatial_attention_block_skip_range=2,
                                            spatial_attention_timestep_skip_range=(-1, 1001),
                                            unconditional_batch_skip_range=2,
                                            unconditional_batch_timestep_skip_range=(-1, 1001),
                                            attention_weight_callback=lambda _: 0.5, current_timestep_callback=now,
                                            tensor_format="BFCHW"),
    }


def expected_calls(cache: str, family: str, blocks: int) -> int:
    """Self-attention calls of a 6-step generation with the cache alone (see :func:`cache_configs`)."""
    cfg = CFG_CALLS[family]
    per_branch = {
        "first_block": blocks + (STEPS - 1),
        "mag": 2 * blocks,
        "taylorseer": 4 * blocks,  # steps 0, 1 (warm-up), 3, 5 compute; 2 and 4 are predicted
        "pyramid": STEPS * blocks // 2,
        "faster": STEPS * blocks // 2,
    }[cache]
    return cfg * per_branch


# FasterCache needs batched CFG (it splits one batch into its uncond and cond halves): diffusers' Wan pipeline
# runs separate calls and fails with it (IndexError in FasterCacheDenoiserHook) with or without asymrnr.
CASES = [("cogvideox", c) for c in ("first_block", "mag", "taylorseer", "pyramid", "faster")] + \
        [("wan", c) for c in ("first_block", "mag", "taylorseer", "pyramid")]


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


@pytest.fixture
def pipe_of(request, tiny_pipeline, wan):
    """The family's pipeline, left clean afterwards (no schedule, no cache): the CogVideoX one is shared."""
    pipes = {"cogvideox": tiny_pipeline, "wan": wan}
    yield pipes.__getitem__
    for pipe in pipes.values():
        asymrnr.remove(pipe)
        if pipe.transformer.is_cache_enabled:
            pipe.transformer.disable_cache()


def generate(pipe, family):
    kwargs = dict(num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
    if family == "wan":
        kwargs.update(height=WAN_T2V.height, width=WAN_T2V.width, num_frames=WAN_T2V.num_frames,
                      guidance_scale=WAN_T2V.guidance_scale)
    else:
        kwargs.update(guidance_scale=6.0)
    return pipe("a red square", **kwargs).frames


def recorded(pipe, family):
    """``(output, self-attention calls, how many of them AsymRnR reduced)`` of one generation."""
    with record_attention(pipe, probe_text=False) as rec:
        out = generate(pipe, family)
    calls = [c for c in rec.calls if c.site.endswith("attn1")]
    text = TEXT[family]
    reduced = [c for c in calls if (c.q_len, c.k_len) == (text + N - int(Q * N), text + N - int(KV * N))]
    dense = [c for c in calls if (c.q_len, c.k_len) == (text + N, text + N)]
    assert len(reduced) + len(dense) == len(calls), "a self-attention call of unexpected length"
    return out, len(calls), len(reduced)


def apply_asymrnr(pipe):
    return asymrnr.uniform(pipe, q=Q, kv=KV, latent_grid=(3, 4, 5))


@pytest.mark.parametrize("order", ["cache_first", "asymrnr_first"])
@pytest.mark.parametrize("family, cache", CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_cache_and_asymrnr_fire_together_and_come_off_independently(pipe_of, family, cache, order):
    pipe = pipe_of(family)
    transformer = pipe.transformer
    blocks = transformer.config.num_layers
    dense_calls = STEPS * CFG_CALLS[family] * blocks
    make = cache_configs(pipe)[cache]

    # each alone, for reference
    transformer.enable_cache(make())
    cache_out, cache_calls, cache_reduced = recorded(pipe, family)
    transformer.disable_cache()
    assert cache_calls == expected_calls(cache, family, blocks) < dense_calls and cache_reduced == 0
    apply_asymrnr(pipe)
    asym_out, asym_calls, asym_reduced = recorded(pipe, family)
    asymrnr.remove(pipe)
    assert asym_calls == asym_reduced == dense_calls

    # both in one generation: the cache skips as much as alone, and every call that runs is reduced
    if order == "cache_first":
        transformer.enable_cache(make())
        apply_asymrnr(pipe)
    else:
        apply_asymrnr(pipe)
        transformer.enable_cache(make())
    both_out, both_calls, both_reduced = recorded(pipe, family)
    assert both_calls == both_reduced == cache_calls
    assert torch.isfinite(both_out).all()
    assert not torch.equal(both_out, cache_out) and not torch.equal(both_out, asym_out)

    # asymrnr.remove leaves the cache: it still fires, and the output is the cache's alone, bit for bit
    asymrnr.remove(pipe)
    assert installed(pipe) is None and transformer.is_cache_enabled
    out, calls, reduced = recorded(pipe, family)
    assert (calls, reduced) == (cache_calls, 0) and torch.equal(out, cache_out)

    # back on, then disable_cache leaves AsymRnR: every call runs and is reduced, the output is AsymRnR's alone
    apply_asymrnr(pipe)
    assert torch.equal(recorded(pipe, family)[0], both_out)
    transformer.disable_cache()
    assert find_hook(transformer) is not None
    out, calls, reduced = recorded(pipe, family)
    assert calls == reduced == dense_calls and torch.equal(out, asym_out)
    asymrnr.remove(pipe)


def test_a_skipped_recompute_step_matches_at_the_next_call_that_runs(pipe_of):
    """FirstBlockCache skips blocks 1.. at every step after the first, so with cache_steps=2 their matchings
    are computed once (step 0) and never again, while block 0 runs every step and rematches every window."""
    pipe = pipe_of("cogvideox")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    rt = asymrnr.uniform(pipe, q=Q, kv=KV, cache_steps=2)
    generate(pipe, "cogvideox")
    log = rt.match_log
    windows = math.ceil(STEPS / 2)
    assert sorted(s for s, b, f in log if b == 0 and f == "q") == [2 * w for w in range(windows)]
    assert [(s, f) for s, b, f in log if b == 1] == [(0, "q"), (0, "kv")]


def _bench_caches():
    """``benchmarks/quality/caches.py`` (the quality benchmark's FirstBlockCache accounting), by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "caches.py"
    spec = importlib.util.spec_from_file_location("bench_quality_caches", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_counts_the_steps_first_block_cache_ran_and_their_flops(pipe_of):
    from asymrnr.flops import schedule_flops

    K = _bench_caches()
    pipe = pipe_of("cogvideox")
    schedule = uniform_schedule(pipe, q=Q, kv=KV, num_inference_steps=STEPS)
    dense = schedule.with_rates(q=[[0.0] * STEPS] * 2, kv=[[0.0] * STEPS] * 2)
    report = schedule_flops(schedule)
    # every step computed: the schedule's own FLOPs; none: the first block's only
    assert K.cost(report, [1.0] * STEPS) == pytest.approx(report.reduced_total)
    assert K.cost(report, [0.0] * STEPS) == pytest.approx(report.per_block_reduced[0])
    assert K.speedup(None, None, dense) == pytest.approx(1.0)
    # FBC (threshold 10) runs the whole transformer at step 0 only, in each of two generations
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    last = pipe.transformer.transformer_blocks[-1].attn1
    with K.ComputedSteps(pipe.transformer, last, STEPS) as counted:
        generate(pipe, "cogvideox")
        generate(pipe, "cogvideox")
    assert counted.fraction() == [1.0] + [0.0] * (STEPS - 1)
    per_step_dense = schedule_flops(dense).per_step_dense[0]
    block0 = schedule_flops(dense).per_block_dense[0] / STEPS
    want = STEPS * per_step_dense / (per_step_dense + (STEPS - 1) * block0)
    assert K.speedup(None, counted.fraction(), dense) == pytest.approx(want)
