"""Profiler on the tiny pipeline: file contents, known answers, interruption, composition with apply."""

import numpy as np
import pytest
import torch

import asymrnr
from asymrnr import Schedule
from asymrnr.errors import StatsFormatError
from asymrnr.matching import make_partition, partition_seed
from asymrnr.profiler import load_stats
from asymrnr.runtime import installed

STEPS = 3


def generate(pipe, prompt="a red square moving left", seed=0, steps=STEPS, guidance=6.0, **kw):
    return pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        **kw,
    )


@pytest.fixture
def pipe(tiny_pipeline):
    yield tiny_pipeline
    asymrnr.remove(tiny_pipeline)
    assert installed(tiny_pipeline.transformer) is None


def test_two_generations_shapes_metadata_and_monotonic_quantiles(pipe, tmp_path):
    path = tmp_path / "stats.h5"
    with asymrnr.profile(pipe, path) as prof:
        generate(pipe, "a red square moving left", seed=1)
        generate(pipe, "a blue circle growing", seed=2)
    assert prof.completed_runs == 2
    d = load_stats(path)
    blocks = pipe.transformer.config.num_layers
    assert d.num_runs == 2 and d.num_steps == STEPS and d.num_blocks == blocks
    assert d.prompts == ["a red square moving left", "a blue circle growing"]
    assert list(d.seeds) == [1, 2]
    assert d.branches == ("cond", "uncond")
    assert d.sim_mean["euclidean"].shape == (2, 2, STEPS, blocks, 4)
    assert d.sim_quantiles["cosine"].shape == (2, 2, STEPS, blocks, 4, len(d.quantile_levels))
    np.testing.assert_array_equal(d.timesteps[0], pipe.scheduler.timesteps.numpy().astype(float))
    assert d.generation["num_steps"] == STEPS and d.generation["guidance_scale"] == 6.0
    assert d.model["num_blocks"] == blocks and d.profiled_schedule is None
    for metric in ("euclidean", "cosine"):
        q = d.sim_quantiles[metric]
        assert np.all(np.diff(q, axis=-1) >= 0)
        assert np.all(d.sim_mean[metric] <= q[..., -1] + 1e-5) and np.all(d.sim_mean[metric] >= q[..., 0] - 1e-5)
        curve = d.sim_rate_curve[metric]
        finite = np.isfinite(curve)
        assert finite[..., 0].all()
        both = finite[..., 1:] & finite[..., :-1]
        diffs = np.diff(np.where(finite, curve, 0.0), axis=-1)
        assert np.all(diffs[both] <= 1e-6)  # the n_r-th best match only gets worse with r
    assert np.all(np.diff(d.norm_quantiles, axis=-1) >= 0)
    n_tokens = int(np.prod(d.model["latent_grid"]))
    assert np.all(d.norm_hist.sum(-1) == n_tokens)
    assert np.isnan(d.stability_same_dst[:, :, 0]).all() and np.isfinite(d.stability_same_dst[:, :, 1:]).all()
    # Text reaches video tokens through attention: from block 1 on, cond and uncond features differ.
    cond, uncond = d.sim_mean["euclidean"][:, 0, :, 1:], d.sim_mean["euclidean"][:, 1, :, 1:]
    assert not np.allclose(cond, uncond)


def test_hooks_are_gone_after_the_block(pipe, tmp_path):
    processors = dict(pipe.transformer.attn_processors)
    with asymrnr.profile(pipe, tmp_path / "s.h5"):
        assert installed(pipe.transformer) is not None
        assert "encode_prompt" in pipe.__dict__
    assert installed(pipe.transformer) is None
    assert "encode_prompt" not in pipe.__dict__ and "prepare_latents" not in pipe.__dict__
    assert len(pipe.transformer._forward_pre_hooks) == 0 and len(pipe.transformer._forward_hooks) == 0
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())


def _replace_attention_input(pipe, make_input):
    """Pre-hook on block 0's attention replacing the video part of its input H."""

    def hook(module, args, kwargs):
        kwargs["hidden_states"] = make_input(kwargs["hidden_states"])
        return args, kwargs

    return pipe.transformer.transformer_blocks[0].attn1.register_forward_pre_hook(hook, with_kwargs=True)


def test_known_answer_duplicate_tokens(pipe, tmp_path):
    grid = (3, 4, 5)
    n = 60
    part = make_partition(grid, (2, 2, 2), partition_seed(0, 0, "h"))
    dup_fraction = 0.30
    k = int(dup_fraction * n)
    dup_src = part.src_idx[:k]
    dup_dst = part.dst_idx[torch.arange(k) % part.num_dst]
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, n, pipe.transformer.config.num_attention_heads * 16, generator=gen) * 3

    def make_input(h):
        x = base.expand(h.shape[0], -1, -1).clone()
        x[:, dup_src] = x[:, dup_dst]
        return x

    handle = _replace_attention_input(pipe, make_input)
    try:
        with asymrnr.profile(pipe, tmp_path / "dup.h5"):
            generate(pipe, steps=2)
    finally:
        handle.remove()
    d = load_stats(tmp_path / "dup.h5")
    h = d.features.index("h")
    eu_max = d.sim_quantiles["euclidean"][0, :, :, 0, h, -1]
    assert np.all(eu_max > -1e-2)  # distance 0: the best possible Euclidean similarity
    assert np.all(d.sim_quantiles["cosine"][0, :, :, 0, h, -1] > 1 - 1e-5)
    curve = d.sim_rate_curve["euclidean"][0, :, :, 0, h]  # [Br, S, 19]
    rates = np.asarray(d.rate_levels)
    flat = rates <= dup_fraction + 1e-9
    assert np.all(curve[..., flat] > -1e-2)  # flat at distance 0 up to the duplicated fraction
    assert np.all(curve[..., ~flat & np.isfinite(curve[0, 0])] < -0.5)  # then real distances
    # Identical features on consecutive steps: the matching is perfectly stable.
    assert np.allclose(d.stability_same_dst[0, :, 1, 0, :], 1.0)
    assert np.allclose(d.stability_corr[0, :, 1, 0, :], 1.0)


def test_interrupted_generation_keeps_complete_runs(pipe, tmp_path):
    path = tmp_path / "int.h5"

    def boom(pipe_, step, timestep, callback_kwargs):
        if step == 1:
            raise KeyboardInterrupt("user pressed ctrl-c")
        return callback_kwargs

    with pytest.raises(KeyboardInterrupt):
        with asymrnr.profile(pipe, path):
            generate(pipe, "first", seed=1)
            generate(pipe, "second", seed=2)
            generate(pipe, "third", seed=3, callback_on_step_end=boom)
    d = load_stats(path)
    assert d.num_runs == 2 and d.prompts == ["first", "second"]
    assert installed(pipe.transformer) is None


def test_appending_needs_matching_settings(pipe, tmp_path):
    path = tmp_path / "app.h5"
    with asymrnr.profile(pipe, path):
        generate(pipe, seed=1)
    with asymrnr.profile(pipe, path):
        generate(pipe, seed=2)
    assert load_stats(path).num_runs == 2
    with pytest.raises(StatsFormatError, match="num_steps"):
        with asymrnr.profile(pipe, path):
            generate(pipe, seed=3, steps=STEPS + 1)
    assert load_stats(path).num_runs == 2
    with asymrnr.profile(pipe, path, mode="w"):
        generate(pipe, seed=3, steps=STEPS + 1)
    assert load_stats(path).num_runs == 1


def test_profiling_a_scheduled_pipeline_records_the_schedule(pipe, tmp_path):
    schedule = Schedule.uniform(pipe, STEPS, q=0.3, kv=0.3)
    asymrnr.apply(pipe, schedule)
    with asymrnr.profile(pipe, tmp_path / "sched.h5"):
        generate(pipe)
    d = load_stats(tmp_path / "sched.h5")
    assert d.profiled_schedule == schedule.tag
    # The schedule stays applied after the profiler leaves.
    assert installed(pipe.transformer) is not None
    asymrnr.remove(pipe)
    assert installed(pipe.transformer) is None


def test_profile_needs_a_pipeline(tiny_transformer_factory, tmp_path):
    with pytest.raises(TypeError, match="needs a pipeline"):
        asymrnr.profile(tiny_transformer_factory("5b"), tmp_path / "x.h5")
