"""Planner on synthetic statistics built from a known ground truth (which (block, step) cells are
redundant), the budget search, presets, and the text summary."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from asymrnr.flops import rate_ceiling, schedule_flops
from asymrnr.formats.descriptions import MatchingSettings as V2Matching
from asymrnr.formats.descriptions import SamplerDescription as V2Sampler
from asymrnr.inspect_text import NOT_FASTER, schedule_summary, schedule_warnings
from asymrnr.planner import (
    PRESETS,
    FeaturePolicy,
    PlannerError,
    PlannerPolicy,
    matching_fields,
    plan_schedule,
    rank_positions,
    sampler_fields,
    schedule_shape_summary,
)
from asymrnr.profiler.stats_format import NORM_BIN_EDGES, QUANTILE_LEVELS, RATE_LEVELS, StatsData
from asymrnr.schedule_format import MatchingSettings, ModelDescription, SamplerDescription, Schedule, load_schedule

CVX2B = ModelDescription(
    family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=30, num_heads=30, head_dim=64,
    patch_size=(1, 2, 2), rope=False, latent_grid=(13, 30, 45), text_len=226, text_layout="first", ffn_dim=7680,
)
SMALL = ModelDescription(
    family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=6, num_heads=4, head_dim=64,
    patch_size=(1, 2, 2), rope=True, latent_grid=(13, 10, 15), text_len=226, text_layout="first", ffn_dim=1024,
)
FEATURES = ("h", "q", "k", "v")


def make_stats(sim_q, sim_v, *, model=SMALL, runs=3, branches=2, noise=0.05, seed=0, timesteps=None,
               stride=(2, 2, 2), match_seed=7, scheduler="CogVideoXDDIMScheduler"):
    """StatsData whose per-cell mean similarity is ``sim_q`` / ``sim_v`` ([blocks, steps]) plus noise,
    independently per run and branch (h and k are unrelated noise)."""
    sim_q, sim_v = np.asarray(sim_q, float), np.asarray(sim_v, float)
    b, s = sim_q.shape
    rng = np.random.default_rng(seed)
    cell = (runs, branches, s, b, len(FEATURES))
    arr = rng.normal(-5.0, 1.0, cell)
    arr[..., 1] = sim_q.T + noise * rng.standard_normal(cell[:4])
    arr[..., 3] = sim_v.T + noise * rng.standard_normal(cell[:4])
    if timesteps is None:
        timesteps = np.linspace(999, 0, s).round()
    ts = np.tile(np.asarray(timesteps, float), (runs, 1))
    z = lambda *extra: np.zeros(cell + extra, np.float32)  # noqa: E731
    return StatsData(
        format_version=1,
        tool_version="0.1.0",
        model=model.to_dict(),
        generation={"scheduler_class": scheduler, "num_steps": s, "guidance_scale": 6.0},
        matching={"stride": list(stride), "seed": match_seed, "granularity": "joint"},
        profiled_schedule=None,
        branches=("cond", "uncond")[:branches],
        features=FEATURES,
        metrics=("euclidean", "cosine"),
        quantile_levels=np.array(QUANTILE_LEVELS),
        rate_levels=np.array(RATE_LEVELS),
        norm_bin_edges=NORM_BIN_EDGES,
        prompts=[f"prompt {i}" for i in range(runs)],
        seeds=np.arange(runs),
        timesteps=ts,
        sim_mean={"euclidean": arr.astype(np.float32), "cosine": (-arr / 10).astype(np.float32)},
        sim_quantiles={"euclidean": z(11), "cosine": z(11)},
        sim_rate_curve={"euclidean": z(19), "cosine": z(19)},
        norm_quantiles=z(11),
        norm_hist=np.zeros(cell + (70,), np.int64),
        stability_same_dst=z(),
        stability_corr=z(),
    )


# Ground truth on SMALL: 6 blocks x 16 steps, cache 4 -> 24 windows. K/V: 8 redundant windows (1/3),
# Q: 6 of those (1/4 of all windows); the ratio 3/4 equals the default policy's Q/KV fraction ratio.
B, S, CS = 6, 16, 4
GT_KV = [(0, 0), (0, 1), (1, 0), (2, 3), (3, 2), (4, 0), (5, 0), (5, 3)]  # (block, window)
GT_Q = [(0, 0), (0, 1), (1, 0), (2, 3), (4, 0), (5, 3)]


def gt_similarity(windows, rng, high=-1.0, low=-4.0):
    sim = low + 0.5 * rng.standard_normal((B, S))
    for blk, w in windows:
        sim[blk, w * CS:(w + 1) * CS] = high + 0.2 * rng.standard_normal(CS)
    return sim


def gt_mask(windows):
    m = np.zeros((B, S), bool)
    for blk, w in windows:
        m[blk, w * CS:(w + 1) * CS] = True
    return m


@pytest.fixture(scope="module")
def gt_stats():
    rng = np.random.default_rng(1)
    return make_stats(gt_similarity(GT_Q, rng), gt_similarity(GT_KV, rng), noise=0.3)


def fig5_like(b=30, s=50, seed=1):
    """CogVideoX-2B-shaped similarity maps with the paper's Fig. 5 trends (high early, block groups)."""
    rng = np.random.default_rng(seed)
    k = np.arange(s)[None, :]
    blk = np.arange(b)[:, None]
    early = np.exp(-k / 6.0)
    level_q = np.where(blk < 4, 0.8, np.where(blk < 15, 0.3, np.where(blk < 25, 0.4, 0.5)))
    level_v = np.where(blk < 4, 0.3 + 0.5 * np.clip((k - 10) / 40, 0, 1), np.where(blk < 15, 0.4, np.where(blk < 25, 0.5, 0.35)))
    q = -(10 - 6 * level_q - 3 * early * (blk > 20)) + 0.1 * rng.standard_normal((b, s))
    v = -(10 - 6 * level_v - 2 * early) + 0.1 * rng.standard_normal((b, s))
    return q, v


@pytest.fixture(scope="module")
def cvx_stats():
    q, v = fig5_like()
    return make_stats(q, v, model=CVX2B, runs=2, noise=0.1)


@pytest.fixture(scope="module")
def cvx_agree_stats():
    _, v = fig5_like()
    q = v + 0.05 * np.random.default_rng(3).standard_normal(v.shape)
    return make_stats(q, v, model=CVX2B, runs=2, noise=0.1)


def rates(result, feature):
    return np.asarray(result.schedule.rates[feature])


# ------------------------------------------------------------------------------------------ recovery


def test_reduces_exactly_the_ground_truth_cells(gt_stats):
    strength = (len(GT_KV) / 24) / PRESETS["base"].kv.fraction[1]  # K/V fraction = 1/3 of the cells
    res = plan_schedule(gt_stats, policy=PlannerPolicy(strength=strength), cache_steps=CS)
    np.testing.assert_array_equal(rates(res, "kv") > 0, gt_mask(GT_KV))
    np.testing.assert_array_equal(rates(res, "q") > 0, gt_mask(GT_Q))
    assert not rates(res, "h").any()
    # Without the Q <= K/V coupling Q still finds its own ground truth (it is not just copied from K/V).
    free = plan_schedule(gt_stats, policy=PlannerPolicy(strength=strength, q_at_most_kv=False), cache_steps=CS)
    np.testing.assert_array_equal(rates(free, "q") > 0, gt_mask(GT_Q))


def test_weaker_strength_reduces_a_subset_of_the_ground_truth(gt_stats):
    res = plan_schedule(gt_stats, policy=PlannerPolicy(strength=0.2), cache_steps=CS)
    kv = rates(res, "kv") > 0
    assert kv.any() and not (kv & ~gt_mask(GT_KV)).any()
    assert kv.sum() < gt_mask(GT_KV).sum()


def test_rate_grows_with_similarity_tier(gt_stats):
    res = plan_schedule(gt_stats, policy=PlannerPolicy(strength=0.8, q_at_most_kv=False), cache_steps=CS)
    for f in ("q", "kv"):
        r, score = rates(res, f).ravel(), res.scores[f].ravel()
        order = np.argsort(-score, kind="stable")
        assert np.all(np.diff(r[order]) <= 1e-12), f  # more similar -> never a lower rate
        assert len(np.unique(r[r > 0])) >= 2  # several tiers in use


def test_rank_positions_handles_ties_and_nan():
    pos = rank_positions(np.array([[3.0, 3.0, 1.0, np.nan]]))
    np.testing.assert_allclose(pos[0, :3], [1 / 3, 1 / 3, 5 / 6])
    assert np.isnan(pos[0, 3])


# ------------------------------------------------------------------------------------- constraints


@pytest.mark.parametrize("cache_steps", [1, 3, 4])
def test_rates_constant_within_cache_windows(cvx_stats, cache_steps):
    res = plan_schedule(cvx_stats, preset="fast", cache_steps=cache_steps)
    assert res.schedule.matching.cache_steps == cache_steps
    for f in ("q", "kv"):
        r = rates(res, f)
        assert r.any()
        for w0 in range(0, r.shape[1], cache_steps):
            window = r[:, w0:w0 + cache_steps]
            assert np.all(window == window[:, :1]), (f, w0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_q_at_most_kv_option_caps_q_at_kv(cvx_stats, name):
    # Adapted from test_q_never_exceeds_kv_under_default_policy: Q <= K/V is an option now, off by default.
    capped = plan_schedule(cvx_stats, policy=PlannerPolicy(strength=PRESETS[name].strength, q_at_most_kv=True))
    q, kv = rates(capped, "q"), rates(capped, "kv")
    assert q.any() and np.all(q <= kv)
    assert q.max() <= PRESETS[name].q.max_rate
    # The coupling is what guarantees it: without it (the default) these statistics give Q > K/V somewhere.
    free = plan_schedule(cvx_stats, preset=name)
    assert not PRESETS[name].q_at_most_kv
    assert np.any(rates(free, "q") > rates(free, "kv"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_default_policy_reduces_q_hard_where_redundant_and_never_where_not(cvx_stats, name):
    """Paper Table 2 / Sec. 4.3: Q takes 80 % where it is redundant, nothing in low-similarity cells."""
    res = plan_schedule(cvx_stats, preset=name)
    q, kv, score = rates(res, "q"), rates(res, "kv"), res.scores["q"]
    top = score >= np.nanquantile(score, 0.9)  # the 10 % most similar Q cells
    assert np.all(q[top] >= 0.7)  # hard in the most redundant cells...
    assert q.max() > kv.max()  # ...above anything K/V gets...
    assert np.mean(q > kv) >= 0.2  # ...and above K/V in about the reference's share of cells (27 %)
    floor = PRESETS[name].q.min_score
    assert floor > 0 and not q[score < floor].any()
    # The floor holds at full strength and under a budget too: only K/V and the redundant Q cells grow.
    for strongest in (plan_schedule(cvx_stats, policy=PlannerPolicy(strength=1.0)),
                      plan_schedule(cvx_stats, target_speedup=1.35)):
        assert not rates(strongest, "q")[strongest.scores["q"] < floor].any()
        assert rates(strongest, "q").max() <= 0.8


def test_min_score_keeps_q_untouched_in_low_similarity_cells(gt_stats):
    # At full strength the Q fraction (54 %) is far above the redundant share (25 %): the floor, not the
    # fraction, is what keeps the non-redundant cells unreduced.
    res = plan_schedule(gt_stats, policy=PlannerPolicy(strength=1.0), cache_steps=CS)
    np.testing.assert_array_equal(rates(res, "q") > 0, gt_mask(GT_Q))
    no_floor = PlannerPolicy(strength=1.0, q=FeaturePolicy(**{**PRESETS["base"].q.to_dict(), "min_score": 0.0}))
    assert (rates(plan_schedule(gt_stats, policy=no_floor, cache_steps=CS), "q") > 0).sum() > gt_mask(GT_Q).sum()


@pytest.mark.parametrize("grid, stride", [((1, 3, 4), (1, 1, 2)), ((1, 3, 3), (2, 2, 2))])
def test_never_exceeds_ceiling_or_max_rate(grid, stride):
    tiny_grid = ModelDescription(
        family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=2, num_heads=2, head_dim=16,
        patch_size=(1, 2, 2), rope=True, latent_grid=grid, text_len=16, text_layout="first", ffn_dim=128,
    )
    # destinations only in full windows: 6 of 12 tokens (ceiling 1/2), or none at all (ceiling 0: a single
    # frame has no full (2, 2, 2) window)
    ceiling = rate_ceiling(grid, stride)
    assert ceiling < 0.6
    rng = np.random.default_rng(0)
    stats = make_stats(rng.normal(size=(2, 8)), rng.normal(size=(2, 8)), model=tiny_grid, stride=stride)
    res = plan_schedule(stats, policy=PlannerPolicy(strength=1.0), cache_steps=2)
    for f in ("q", "kv"):
        assert rates(res, f).max() <= ceiling
    assert rates(res, "kv").max() == pytest.approx(math.floor(ceiling * 1e4) / 1e4)
    schedule_flops(res.schedule)  # the FLOPs model (which rejects rates above the ceiling) accepts it


def test_nan_cells_are_ignored_or_left_unreduced(gt_stats):
    sim = {m: a.copy() for m, a in gt_stats.sim_mean.items()}
    v = FEATURES.index("v")
    sim["euclidean"][:, :, 0:4, 0, v] = np.nan  # GT window (block 0, window 0): unmeasured everywhere
    sim["euclidean"][0, :, 4:8, 0, v] = np.nan  # GT window (block 0, window 1): missing in run 0 only
    sim["euclidean"][1, 0, 12, 3, v] = np.nan  # one stray NaN in a non-redundant cell
    stats = StatsData(**{**gt_stats.__dict__, "sim_mean": sim})
    # The fraction counts measured cells: 7 of the 23 measured windows are redundant.
    strength = (7 / 23) / PRESETS["base"].kv.fraction[1]
    res = plan_schedule(stats, policy=PlannerPolicy(strength=strength), cache_steps=CS)
    kv = rates(res, "kv")
    assert np.all(np.isfinite(kv))
    assert not kv[0, 0:4].any()  # unmeasured -> not reduced
    assert np.all(kv[0, 4:8] > 0)  # measured by the other runs -> still ranked as redundant
    expected = gt_mask(GT_KV)
    expected[0, 0:4] = False
    np.testing.assert_array_equal(kv > 0, expected)
    assert "4 unmeasured (NaN) kv cells" in res.message


# ----------------------------------------------------------------------------------- budget search


@pytest.mark.parametrize("target", [1.05, 1.13, 1.2, 1.35])
def test_budget_search_hits_target_within_one_percent(cvx_stats, target):
    res = plan_schedule(cvx_stats, target_speedup=target)
    assert res.reached, res.message
    assert abs(res.predicted_speedup - target) <= 0.01 * target
    assert schedule_flops(res.schedule).predicted_speedup == pytest.approx(res.predicted_speedup, rel=1e-12)
    assert res.schedule.provenance["planner"]["target_speedup"] == target


def test_speedup_is_monotone_in_strength(cvx_stats):
    speedups = [plan_schedule(cvx_stats, policy=PlannerPolicy(strength=s)).predicted_speedup for s in np.linspace(0, 1, 11)]
    assert speedups[0] == 1.0
    assert all(b >= a for a, b in zip(speedups, speedups[1:]))
    assert speedups[-1] > 1.3


def test_target_without_preset_uses_the_default_policy(cvx_stats):
    res = plan_schedule(cvx_stats, preset=None, target_speedup=1.15)
    assert res.reached and res.policy == PlannerPolicy(strength=res.strength)
    assert res.predicted_speedup == pytest.approx(plan_schedule(cvx_stats, target_speedup=1.15).predicted_speedup)


def test_unreachable_target_returns_closest_with_message(cvx_stats):
    strongest = plan_schedule(cvx_stats, policy=PlannerPolicy(strength=1.0))
    res = plan_schedule(cvx_stats, target_speedup=4.0)
    assert not res.reached
    assert res.strength == 1.0
    assert res.predicted_speedup == pytest.approx(strongest.predicted_speedup)
    assert "not reachable" in res.message and f"{strongest.predicted_speedup:.3f}x" in res.message
    assert res.schedule.provenance["planner"]["reached"] is False
    assert any("not reached" in w for w in schedule_warnings(res.schedule))


# ----------------------------------------------------------------------------------------- presets


def test_presets_ordered_and_near_the_paper(cvx_stats, cvx_agree_stats):
    for stats in (cvx_stats, cvx_agree_stats):
        base = plan_schedule(stats, preset="base")
        fast = plan_schedule(stats, preset="fast")
        assert 1.0 < base.predicted_speedup < fast.predicted_speedup
        assert 1.12 <= base.predicted_speedup <= 1.20  # paper "Ours": 12.000 / 10.342 = 1.160x in FLOPs
        assert np.all(rates(fast, "kv") >= rates(base, "kv"))
    # With Q and V similarity in agreement, base reduces roughly the reference's share of cells.
    base = plan_schedule(cvx_agree_stats, preset="base")
    assert 0.2 <= np.mean(rates(base, "q") > 0) <= 0.35
    assert 0.3 <= np.mean(rates(base, "kv") > 0) <= 0.45


def test_presets_have_the_shape_of_the_authors_shipped_schedules(cvx_stats, cvx_agree_stats):
    """The authors' CogVideoX-2B base: Q in 27 % of cells (mean 0.18, at 0.4 / 0.8), V in 30 % (mean 0.09)
    at 1.160x; fast at 1.203x (paper Table 1, FLOPs)."""
    for stats in (cvx_stats, cvx_agree_stats):
        base = schedule_shape_summary(plan_schedule(stats, preset="base").schedule)
        q, kv = base["features"]["q"], base["features"]["kv"]
        assert 0.22 <= q["cells"] <= 0.32 and 0.12 <= q["mean_rate"] <= 0.22
        assert 0.25 <= kv["cells"] <= 0.45 and kv["mean_rate"] <= 0.15
        assert q["mean_reduced_rate"] > kv["mean_reduced_rate"]  # Q hard where reduced, K/V moderate
        fast = plan_schedule(stats, preset="fast")
        assert 1.16 <= fast.predicted_speedup <= 1.25  # paper "Ours-fast": 12.000 / 9.976 = 1.203x
    # Q heavily in the shallow blocks at every step and in the deep blocks at early steps (Fig. 5-like map).
    q = schedule_shape_summary(plan_schedule(cvx_stats, preset="base").schedule)["features"]["q"]
    assert set(q["every_step_blocks"]) >= {0, 1, 2, 3}
    deep = q["cells_grid"][2]
    assert deep[0] > 0.5 > deep[-1]


def test_schedule_shape_summary_counts_cells_rates_and_places():
    q = np.zeros((6, 10))
    q[0, :] = 0.8  # shallow block 0 at every step
    q[5, :2] = 0.4  # deep block 5, first two steps
    kv = np.zeros((6, 10))
    kv[0:2, 5:] = 0.3
    sh = schedule_shape_summary({"q": q, "kv": kv, "h": np.zeros((6, 10))}, step_ranges=2)
    assert (sh["num_blocks"], sh["num_steps"]) == (6, 10)
    assert sh["block_groups"] == ["shallow (0-1)", "intermediate (2-3)", "deep (4-5)"]
    assert sh["step_ranges"] == ["0-4", "5-9"]
    assert set(sh["features"]) == {"q", "kv"}  # h reduces nothing: left out
    fq = sh["features"]["q"]
    assert fq["cells"] == pytest.approx(12 / 60) and fq["mean_rate"] == pytest.approx((8 + 0.8) / 60, abs=1e-4)
    assert fq["mean_reduced_rate"] == pytest.approx(8.8 / 12, abs=1e-4) and fq["max_rate"] == 0.8
    assert fq["levels"] == {"0.40": pytest.approx(2 / 60, abs=1e-4), "0.80": pytest.approx(10 / 60, abs=1e-4)}
    assert fq["every_step_blocks"] == [0]
    assert fq["by_blocks"]["shallow (0-1)"] == {"cells": 0.5, "mean_rate": 0.4}
    assert fq["cells_grid"] == [[0.5, 0.5], [0.0, 0.0], [0.2, 0.0]]
    assert sh["q_vs_kv"] == {"q_above_kv": pytest.approx(12 / 60, abs=1e-4), "q_only": pytest.approx(7 / 60, abs=1e-4),
                             "kv_only": pytest.approx(5 / 60, abs=1e-4), "both": pytest.approx(5 / 60, abs=1e-4)}
    with pytest.raises(PlannerError, match="one shape"):
        schedule_shape_summary({"q": q, "kv": kv[:, :5]})


# --------------------------------------------------------------------------- schedule and provenance


def test_schedule_carries_stats_metadata_and_round_trips(gt_stats, tmp_path):
    res = plan_schedule(gt_stats, preset="base", cache_steps=CS, metric="cosine", notes="unit test")
    sch = res.schedule
    assert sch.model == SMALL
    assert sch.sampler.scheduler_class == "CogVideoXDDIMScheduler"
    assert sch.sampler.num_steps == S
    assert sch.sampler.timesteps == tuple(float(t) for t in gt_stats.timesteps[0])
    # granularity: the planner's default is the paper's per-head matching now (the statistics say "joint").
    assert sch.matching == MatchingSettings(metric="cosine", stride=(2, 2, 2), cache_steps=CS, seed=7, granularity="head")
    prov = sch.provenance
    assert prov["source"] == "planner" and prov["notes"] == "unit test"
    assert prov["planner"]["preset"] == "base"
    assert PlannerPolicy.from_dict(prov["planner"]["policy"]) == PRESETS["base"]
    assert len(prov["stats"]["digest"]) == 12 and prov["stats"]["num_runs"] == 3
    loaded = load_schedule(sch.save(tmp_path / "s.json"))
    assert loaded.tag == sch.tag and loaded.rates == sch.rates


def _has_field(cls, name):
    return name in {f.name for f in dataclasses.fields(cls)}


def test_matching_defaults_to_the_papers_layout_and_records_the_statistics_own(gt_stats):
    res = plan_schedule(gt_stats, preset="base", cache_steps=CS)
    assert res.schedule.matching.granularity == "head"
    if _has_field(MatchingSettings, "partition"):  # schedule format v2
        assert res.schedule.matching.partition == "window"
    prov = res.schedule.provenance
    assert prov["planner"]["matching"] == {"granularity": "head", "partition": "window"}
    assert prov["stats"]["matching"] == {"stride": [2, 2, 2], "seed": 7, "granularity": "joint"}
    joint = plan_schedule(gt_stats, preset="base", cache_steps=CS, granularity="joint", partition="fixed")
    assert joint.schedule.matching.granularity == "joint"
    assert joint.schedule.provenance["planner"]["matching"] == {"granularity": "joint", "partition": "fixed"}
    assert joint.schedule.rates == res.schedule.rates  # the layout changes how tokens are matched, not the rates
    with pytest.raises(PlannerError, match="granularity 'token'.*head, joint"):
        plan_schedule(gt_stats, granularity="token")
    with pytest.raises(PlannerError, match="partition 'random'.*window, fixed"):
        plan_schedule(gt_stats, partition="random")
    # The fields are valid version-2 matching settings (with the statistics' stride and seed).
    v2 = V2Matching(**matching_fields(gt_stats, metric="cosine", cache_steps=CS, partition="fixed"))
    assert v2 == V2Matching(metric="cosine", stride=(2, 2, 2), cache_steps=CS, seed=7, granularity="head",
                            partition="fixed")
    # Statistics recorded with a layout keep it in the provenance as they wrote it.
    stats = StatsData(**{**gt_stats.__dict__, "matching": {**gt_stats.matching, "granularity": "head", "partition": "window"}})
    assert plan_schedule(stats, cache_steps=CS).schedule.provenance["stats"]["matching"]["partition"] == "window"


def test_two_expert_statistics_carry_their_transformers_into_the_sampler(gt_stats):
    step_transformer = [0] * 6 + [1] * (S - 6)  # Wan 2.2: transformer (high noise), then transformer_2
    config = {"shift": 5.0, "num_train_timesteps": 1000}
    gen = {**gt_stats.generation, "scheduler_class": "UniPCMultistepScheduler", "transformers": ["transformer", "transformer_2"],
           "step_transformer": step_transformer, "scheduler_config": config}
    stats = StatsData(**{**gt_stats.__dict__, "generation": gen})
    fields = sampler_fields(stats)
    assert fields["transformers"] == ("transformer", "transformer_2")
    assert fields["step_transformer"] == tuple(step_transformer)
    assert fields["config"] == config and fields["num_steps"] == S
    V2Sampler(**fields)  # valid version-2 sampler fields
    res = plan_schedule(stats, preset="base", cache_steps=CS)
    sampler = res.schedule.sampler
    for key, value in (("transformers", fields["transformers"]), ("step_transformer", fields["step_transformer"]),
                       ("config", config)):
        if _has_field(type(sampler), key):  # schedule format v2
            assert getattr(sampler, key) == value
    assert res.schedule.provenance["stats"]["generation"]["step_transformer"] == step_transformer
    # One plan over the whole [blocks, steps] table: the same cells as without the expert split.
    assert res.schedule.rates == plan_schedule(gt_stats, preset="base", cache_steps=CS).schedule.rates
    # Version-1 statistics: no such keys, one transformer.
    plain = sampler_fields(gt_stats)
    assert "transformers" not in plain and "step_transformer" not in plain and plain["config"] == {}
    bad = StatsData(**{**gt_stats.__dict__, "generation": {**gen, "step_transformer": [0, 1]}})
    with pytest.raises(PlannerError, match="step_transformer has 2 entries"):
        plan_schedule(bad, cache_steps=CS)


def test_plans_for_another_sampler_by_timestep():
    # Redundancy in the first half of the trajectory (t > 500) only.
    sim = np.full((B, S), -4.0)
    sim[:, : S // 2] = -1.0
    stats = make_stats(sim, sim, noise=0.05)
    sampler = SamplerDescription("CogVideoXDDIMScheduler", 8, tuple(np.linspace(999, 0, 8).round()))
    res = plan_schedule(stats, policy=PlannerPolicy(strength=0.5), sampler=sampler, cache_steps=2)
    kv = rates(res, "kv")
    assert kv.shape == (B, 8) and res.schedule.sampler == sampler
    assert kv[:, :4].any() and not kv[:, 4:].any()


def test_bad_inputs_raise_planner_errors(gt_stats):
    with pytest.raises(PlannerError, match="preset"):
        plan_schedule(gt_stats, preset="turbo")
    with pytest.raises(PlannerError, match="euclidean, cosine"):
        plan_schedule(gt_stats, metric="dot")
    with pytest.raises(PlannerError, match="target_speedup"):
        plan_schedule(gt_stats, target_speedup=0.9)
    with pytest.raises(PlannerError, match="tier_rates"):
        FeaturePolicy(fraction=(0, 0.5), tier_edges=(0.5, 1.0), tier_rates=((0.1, 0.2), (0.3, 0.4)), max_rate=0.5).validate("q")
    with pytest.raises(PlannerError, match="strength"):
        PlannerPolicy(strength=1.5)
    with pytest.raises(PlannerError, match="cache_steps"):
        plan_schedule(gt_stats, cache_steps=0)


# ---------------------------------------------------------------------------------- text summaries


def test_summary_reports_rates_flops_and_no_warning_for_a_useful_schedule(cvx_stats):
    res = plan_schedule(cvx_stats, preset="base")
    text = schedule_summary(res.schedule)
    assert res.schedule.tag in text
    for word in ("shallow (0-9)", "intermediate (10-19)", "deep (20-29)", "0-9", "40-49", "CogVideoXDDIMScheduler"):
        assert word in text
    assert f"{res.predicted_speedup:.3f}x" in text
    assert "cache 4 steps" in text
    assert schedule_warnings(res.schedule) == []
    assert "WARNINGS" not in text


def test_summary_warns_when_schedule_is_useless():
    sampler = SamplerDescription(None, 10, None)
    zero = Schedule.zeros(CVX2B, sampler)
    warns = schedule_warnings(zero)
    assert len(warns) == 1 and "reduces nothing" in warns[0] and NOT_FASTER in warns[0]
    assert NOT_FASTER in schedule_summary(zero)
    kv = np.zeros((30, 10))
    kv[0, 0] = 0.3  # one cell: far below 1.02x
    tiny = zero.with_rates(kv=kv)
    warns = schedule_warnings(tiny)
    assert len(warns) == 1 and "under 1.02x" in warns[0] and NOT_FASTER in warns[0]


def test_plans_from_a_stats_file_written_and_loaded_by_the_profiler_format(gt_stats, tmp_path):
    sf = pytest.importorskip("asymrnr.profiler.stats_format")
    path = tmp_path / "stats.h5"
    with sf.StatsWriter(path, model=gt_stats.model, generation=gt_stats.generation, matching=gt_stats.matching,
                        branches=gt_stats.branches) as writer:
        for r in range(gt_stats.num_runs):
            writer.write_run(sf.RunStats(
                prompt=gt_stats.prompts[r], seed=int(gt_stats.seeds[r]), timesteps=gt_stats.timesteps[r],
                sim_mean={m: a[r] for m, a in gt_stats.sim_mean.items()},
                sim_quantiles={m: a[r] for m, a in gt_stats.sim_quantiles.items()},
                sim_rate_curve={m: a[r] for m, a in gt_stats.sim_rate_curve.items()},
                norm_quantiles=gt_stats.norm_quantiles[r], norm_hist=gt_stats.norm_hist[r],
                stability_same_dst=gt_stats.stability_same_dst[r], stability_corr=gt_stats.stability_corr[r],
            ))
    loaded = sf.load_stats(path)
    direct = plan_schedule(gt_stats, preset="base", cache_steps=CS)
    via_file = plan_schedule(loaded, preset="base", cache_steps=CS)
    assert via_file.schedule.rates == direct.schedule.rates
    assert via_file.schedule.sampler == direct.schedule.sampler
    assert via_file.schedule.provenance["stats"]["path"] == str(path)
