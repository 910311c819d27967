"""Runtime on bare tiny transformers of the three CogVideoX styles."""

import dataclasses

import pytest
import torch

import asymrnr
from asymrnr import Schedule
from asymrnr.errors import ScheduleMismatchError
from asymrnr.matching import make_reduction
from asymrnr.runtime import installed
from asymrnr.runtime.hook import HOOK_NAME
from helpers import TEXT_LEN, call, record_sdpa, tiny_inputs, tiny_transformer, token_count

STYLES = ["2b", "5b", "1.5"]
TIMESTEPS = [900, 700, 500, 300, 100]


def run_steps(model, x, e, steps=TIMESTEPS):
    return [call(model, x, e, t) for t in steps]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("batch", [1, 2])
def test_zero_schedule_is_bit_identical(style, batch):
    model = tiny_transformer(style)
    x, e = tiny_inputs(style, batch)
    ref = run_steps(model, x, e)
    asymrnr.apply(model, Schedule.uniform(model, len(TIMESTEPS)))
    out = run_steps(model, x, e)
    assert all(torch.equal(a, b) for a, b in zip(ref, out))


@pytest.mark.parametrize("style", STYLES)
def test_reduction_lengths_are_exact_and_text_is_kept(style):
    model = tiny_transformer(style)
    x, e = tiny_inputs(style, batch=2)
    n = token_count(style)
    with record_sdpa() as dense_calls:
        call(model, x, e, 900)
    schedule = Schedule.uniform(model, len(TIMESTEPS), q=0.5, kv=0.3)
    asymrnr.apply(model, schedule)
    with record_sdpa() as calls:
        call(model, x, e, 900)
    assert len(calls) == model.config.num_layers
    for dense, reduced in zip(dense_calls, calls):
        assert reduced["q"].shape[2] == TEXT_LEN + n - int(0.5 * n)
        assert reduced["k_shape"][2] == TEXT_LEN + n - int(0.3 * n)
        assert reduced["v_shape"][2] == TEXT_LEN + n - int(0.3 * n)
    # Every text query of the first block (whose input is not yet affected by any reduction) is present,
    # unchanged, in front.
    assert torch.equal(calls[0]["q"][:, :, :TEXT_LEN], dense_calls[0]["q"][:, :, :TEXT_LEN])


def test_reduction_lengths_follow_a_nonuniform_schedule_per_block_and_step():
    model = tiny_transformer("5b", num_layers=3)
    x, e = tiny_inputs("5b")
    n = token_count("5b")
    base = Schedule.uniform(model, len(TIMESTEPS))
    q = [[0.0, 0.2, 0.4, 0.0, 0.6], [0.1, 0.0, 0.0, 0.0, 0.0], [0.0] * 5]
    kv = [[0.0] * 5, [0.5, 0.5, 0.0, 0.0, 0.7], [0.3, 0.0, 0.3, 0.0, 0.3]]
    schedule = base.with_rates(q=q, kv=kv)
    asymrnr.apply(model, schedule)
    for step, t in enumerate(TIMESTEPS):
        with record_sdpa() as calls:
            call(model, x, e, t)
        for block, rec in enumerate(calls):
            assert rec["q"].shape[2] == TEXT_LEN + n - int(q[block][step] * n), (block, step)
            assert rec["k_shape"][2] == TEXT_LEN + n - int(kv[block][step] * n), (block, step)


@pytest.mark.parametrize("style", ["2b", "5b"])
def test_h_reduction_shrinks_the_whole_sequence(style):
    model = tiny_transformer(style)
    x, e = tiny_inputs(style)
    n = token_count(style)
    asymrnr.apply(model, Schedule.uniform(model, len(TIMESTEPS), h=0.4))
    with record_sdpa() as calls:
        out = call(model, x, e, 900)
    assert calls[0]["q"].shape[2] == calls[0]["k_shape"][2] == TEXT_LEN + n - int(0.4 * n)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_dropped_queries_take_their_destination_output():
    model = tiny_transformer("5b", num_layers=1)
    x, e = tiny_inputs("5b", batch=2)
    # joint matching: every head drops the same tokens, so the block output of a dropped token is its destination's
    ctx = asymrnr.apply(model, Schedule.uniform(model, len(TIMESTEPS), q=0.6, granularity="joint"))
    attn = model.transformer_blocks[0].attn1
    captured = {}
    def keep_output(module, args, out):
        captured["video"] = out[0].detach().clone()

    hook = attn.register_forward_hook(keep_output)
    call(model, x, e, 900)
    hook.remove()
    video = captured["video"]  # [B, N, C] attention output of the video tokens
    n = token_count("5b")
    part = ctx.partition(0, "q", video.device)
    red = make_reduction(part, ctx.cache.entries[("default", 0, "q")].matching, int(0.6 * n))
    for b in range(2):
        dst_tokens = part.dst_idx[red.drop_dst[b]]
        assert torch.equal(video[b, red.drop_idx[b]], video[b, dst_tokens])
        assert not torch.equal(video[b, red.drop_idx[b]], video[b, red.drop_idx[b].roll(1)])


@pytest.mark.parametrize("cache_steps", [1, 2, 3, 4])
def test_matching_cache_recomputes_on_eq4_steps(cache_steps):
    model = tiny_transformer("5b", num_layers=2)
    x, e = tiny_inputs("5b")
    steps = list(range(950, 0, -100))  # 10 steps
    schedule = Schedule.uniform(model, len(steps), q=0.3, kv=0.3, cache_steps=cache_steps)
    ctx = asymrnr.apply(model, schedule)
    run_steps(model, x, e, steps)
    expected = [k for k in range(len(steps)) if k % cache_steps == 0]
    for block in range(2):
        for feature in ("q", "kv"):
            got = [k for (k, b, f) in ctx.match_log if b == block and f == feature]
            assert got == expected
    # A new generation (timestep goes back up) resets the cache and recomputes at its step 0.
    call(model, x, e, steps[0])
    assert [k for (k, b, f) in ctx.match_log] == [0, 0, 0, 0]


def test_cached_matching_is_reused_between_recomputes():
    model = tiny_transformer("5b", num_layers=1)
    x, e = tiny_inputs("5b")
    ctx = asymrnr.apply(model, Schedule.uniform(model, 4, kv=0.5, cache_steps=4))
    call(model, x, e, 900)
    first = ctx.cache.entries[("default", 0, "kv")].matching
    call(model, x + 0.5, e, 800)  # different features: a fresh matching would differ
    assert ctx.cache.entries[("default", 0, "kv")].matching is first


def test_cfg_samples_are_matched_separately():
    model = tiny_transformer("5b", num_layers=2)
    x, e = tiny_inputs("5b", batch=2)
    schedule = Schedule.uniform(model, len(TIMESTEPS), q=0.5, kv=0.5)
    asymrnr.apply(model, schedule)
    both = call(model, x, e, 900)
    asymrnr.apply(model, schedule)  # fresh cache
    alone = call(model, x[1:], e[1:], 900)
    assert torch.allclose(both[1:], alone, atol=1e-5)


def test_apply_remove_apply_round_trip_and_no_hooks_left():
    model = tiny_transformer("5b")
    x, e = tiny_inputs("5b", batch=2)
    ref = run_steps(model, x, e)
    processors = dict(model.attn_processors)
    schedule = Schedule.uniform(model, len(TIMESTEPS), q=0.5, kv=0.5)
    asymrnr.apply(model, schedule)
    reduced = run_steps(model, x, e)
    asymrnr.apply(model, schedule)  # applying twice replaces, never stacks
    assert model._diffusers_hook._hook_order == [HOOK_NAME]
    again = run_steps(model, x, e)
    assert all(torch.equal(a, b) for a, b in zip(reduced, again))
    assert not torch.equal(reduced[0], ref[0])
    asymrnr.remove(model)
    assert installed(model) is None
    assert HOOK_NAME not in model._diffusers_hook._hook_order
    assert all(model.attn_processors[k] is v for k, v in processors.items())
    after = run_steps(model, x, e)
    assert all(torch.equal(a, b) for a, b in zip(ref, after))
    asymrnr.remove(model)  # removing twice is harmless
    asymrnr.apply(model, schedule)
    assert all(torch.equal(a, b) for a, b in zip(reduced, run_steps(model, x, e)))


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "dot", "random"])
@pytest.mark.parametrize("reduce_op", ["discard", "mean"])
def test_all_metrics_and_reduce_ops_run(metric, reduce_op):
    model = tiny_transformer("5b", num_layers=1)
    x, e = tiny_inputs("5b", batch=2)
    schedule = Schedule.uniform(model, 5, q=0.3, kv=0.5, metric=metric, reduce_op=reduce_op)
    asymrnr.apply(model, schedule)
    out = call(model, x, e, 900)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_per_head_granularity_runs():
    model = tiny_transformer("5b", num_layers=1)
    x, e = tiny_inputs("5b", batch=2)
    asymrnr.apply(model, Schedule.uniform(model, 5, q=0.3, kv=0.5, granularity="head"))
    with record_sdpa() as calls:
        out = call(model, x, e, 900)
    n = token_count("5b")
    assert calls[0]["k_shape"][2] == TEXT_LEN + n - int(0.5 * n)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------- bad input
def other_model_schedule(model, **changes):
    schedule = Schedule.uniform(model, 5)
    desc = dataclasses.replace(schedule.model, **changes)
    other = Schedule.zeros(desc, schedule.sampler, schedule.matching)
    return other.with_rates(q=[[0.3] * 5] * desc.num_blocks)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"num_blocks": 42}, ["blocks = 42", "blocks = 2", "asymrnr-calibrate"]),
        ({"num_heads": 30}, ["attention heads = 30", "attention heads = 2"]),
        ({"head_dim": 64}, ["head dim = 64", "head dim = 16"]),
        ({"patch_size": (1, 1, 1)}, ["patch size (t, h, w) = (1, 1, 1)", "patch size (t, h, w) = (1, 2, 2)"]),
        ({"patch_size": (2, 2, 2)}, ["patch size (t, h, w) = (2, 2, 2)", "patch size (t, h, w) = (1, 2, 2)"]),
        ({"rope": False}, ["rotary embeddings = False", "rotary embeddings = True"]),
    ],
)
def test_schedule_for_another_model_is_refused(change, words):
    model = tiny_transformer("5b")
    with pytest.raises(ScheduleMismatchError) as err:
        asymrnr.apply(model, other_model_schedule(model, **change))
    for w in words:
        assert w in str(err.value)
    assert installed(model) is None  # nothing half-applied


def test_rate_above_ceiling_is_an_error_not_a_clamp():
    model = tiny_transformer("5b")
    x, e = tiny_inputs("5b")
    asymrnr.apply(model, Schedule.uniform(model, 5, kv=0.95))
    with pytest.raises(ScheduleMismatchError, match=r"rates.kv\[0\]\[0\] = 0.95 exceeds the ceiling"):
        call(model, x, e, 900)


def test_not_a_schedule_is_refused():
    model = tiny_transformer("5b")
    with pytest.raises(TypeError, match="asymrnr.load_schedule"):
        asymrnr.apply(model, {"q": 0.5})


def test_more_steps_than_the_schedule_needs_resample():
    model = tiny_transformer("5b")
    x, e = tiny_inputs("5b")
    asymrnr.apply(model, Schedule.uniform(model, 3, q=0.3))
    run_steps(model, x, e, [900, 600, 300])
    with pytest.raises(ScheduleMismatchError, match="resample_steps=True"):
        run_steps(model, x, e, [900, 700, 500, 300])
    asymrnr.apply(model, Schedule.uniform(model, 3, q=0.3), resample_steps=True)
    run_steps(model, x, e, [900, 700, 500, 300])


def test_torch_compile_graphs_are_bounded_and_match_eager():
    """A compiled transformer with a schedule compiles a fixed set of graphs in the first cache window and never
    recompiles over a 50-step generation, even when the rates change from window to window (the plans, the
    matching cache and "recompute or reuse" live in eager code between the graphs)."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    model = tiny_transformer("5b", num_layers=2)
    x, e = tiny_inputs("5b", batch=2)
    steps = [float(t) for t in torch.linspace(999, 1, 50).round()]
    base = Schedule.uniform(model, 50, cache_steps=4)
    q = [[0.5 if (k // 4) % 2 == 0 else 0.2 for k in range(50)], [0.0 if k < 20 else 0.4 for k in range(50)]]
    schedule = base.with_rates(q=q, kv=[[0.3] * 50, [0.6] * 50])
    asymrnr.apply(model, schedule)
    eager = run_steps(model, x, e, steps[:9])
    asymrnr.apply(model, schedule)  # fresh cache
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    graphs = []
    out = []
    for t in steps:
        out.append(call(compiled, x, e, t))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[3] == graphs[-1], graphs  # nothing compiled after the first cache window
    assert sum(v for k, v in counters["recompiles"].items()) == 0 if "recompiles" in counters else True
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, out[:9]))
    # Every graph break is one of the three eager entry points, documented in docs/architecture.md.
    with torch.no_grad():
        explained = dynamo.explain(lambda: call(model, x, e, 900))()
    reasons = {str(r.reason) for r in explained.break_reasons}
    assert all(any(f in r for f in ("_before_call", "reduce_input", "attend")) for r in reasons), reasons
    asymrnr.remove(compiled)
    assert installed(model) is None


def test_works_with_model_cpu_offload(tiny_pipeline):
    pipe = tiny_pipeline
    kwargs = dict(num_inference_steps=3, guidance_scale=6.0, output_type="latent")
    ref = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).frames
    pipe.enable_model_cpu_offload(device="cpu")
    try:
        asymrnr.apply(pipe, Schedule.uniform(pipe, 3))
        zero = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).frames
        assert torch.equal(zero, ref)
        asymrnr.apply(pipe, Schedule.uniform(pipe, 3, q=0.5, kv=0.5))
        with record_sdpa() as calls:
            reduced = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).frames
        n = 60
        calls = [c for c in calls if c["q"].shape[2] > 226]  # drop the T5 text encoder's attention calls
        assert calls[0]["k_shape"][2] == 226 + n - int(0.5 * n)  # the reduction really ran
        assert not torch.equal(reduced, ref)
        asymrnr.remove(pipe)
        assert hasattr(pipe.transformer, "_hf_hook")  # accelerate's offload hook is untouched
        again = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).frames
        assert torch.equal(again, ref)
    finally:
        asymrnr.remove(pipe)
        pipe.remove_all_hooks()


def test_pipeline_step_count_is_checked_before_any_work(tiny_pipeline):
    pipe = tiny_pipeline
    schedule = Schedule.uniform(pipe, 4, q=0.3, kv=0.3)
    assert schedule.sampler.num_steps == 4 and schedule.sampler.timesteps is not None
    asymrnr.apply(pipe, schedule)
    try:
        with pytest.raises(ScheduleMismatchError, match="runs 6 inference steps but the schedule .* was made for 4"):
            pipe("a red square", num_inference_steps=6, output_type="latent")
        asymrnr.apply(pipe, schedule, resample_steps=True)
        with record_sdpa() as calls:
            pipe("a red square", num_inference_steps=6, output_type="latent")
        calls = [c for c in calls if c["q"].shape[2] > 226]  # drop the T5 text encoder's attention calls
        assert len(calls) == 6 * pipe.transformer.config.num_layers
    finally:
        asymrnr.remove(pipe)


def test_cfg_and_no_cfg_zero_schedule_bit_identical_through_the_pipeline(tiny_pipeline):
    pipe = tiny_pipeline
    for guidance in (1.0, 6.0):
        kwargs = dict(num_inference_steps=3, guidance_scale=guidance, output_type="latent")
        ref = pipe("a blue circle", generator=torch.Generator().manual_seed(1), **kwargs).frames
        asymrnr.apply(pipe, Schedule.uniform(pipe, 3))
        try:
            out = pipe("a blue circle", generator=torch.Generator().manual_seed(1), **kwargs).frames
        finally:
            asymrnr.remove(pipe)
        assert torch.equal(out, ref)
