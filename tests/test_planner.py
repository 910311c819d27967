"""Planner on synthetic statistics built from a known ground truth (which (block, step) cells are
redundant), the budget search, presets, and the text summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asymrnr.flops import rate_ceiling, schedule_flops
from asymrnr.inspect_text import NOT_FASTER, schedule_summary, schedule_warnings
from asymrnr.planner import (
    PRESETS,
    FeaturePolicy,
    PlannerError,
    PlannerPolicy,
    plan_schedule,
    rank_positions,
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
def test_q_never_exceeds_kv_under_default_policy(cvx_stats, name):
    res = plan_schedule(cvx_stats, preset=name)
    q, kv = rates(res, "q"), rates(res, "kv")
    assert q.any() and np.all(q <= kv)
    assert q.max() <= PRESETS[name].q.max_rate < PRESETS[name].kv.max_rate
    # The coupling is what guarantees it: without it these statistics (Q and V disagree) give Q > K/V somewhere.
    free = plan_schedule(cvx_stats, policy=PlannerPolicy(strength=PRESETS[name].strength, q_at_most_kv=False))
    assert np.any(rates(free, "q") > rates(free, "kv"))


def test_never_exceeds_ceiling_or_max_rate():
    tiny_grid = ModelDescription(
        family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=2, num_heads=2, head_dim=16,
        patch_size=(1, 2, 2), rope=True, latent_grid=(1, 3, 3), text_len=16, text_layout="first", ffn_dim=128,
    )
    ceiling = rate_ceiling((1, 3, 3))  # 4 windows, 9 tokens -> 5/9
    assert ceiling < 0.6
    rng = np.random.default_rng(0)
    stats = make_stats(rng.normal(size=(2, 8)), rng.normal(size=(2, 8)), model=tiny_grid)
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


# --------------------------------------------------------------------------- schedule and provenance


def test_schedule_carries_stats_metadata_and_round_trips(gt_stats, tmp_path):
    res = plan_schedule(gt_stats, preset="base", cache_steps=CS, metric="cosine", notes="unit test")
    sch = res.schedule
    assert sch.model == SMALL
    assert sch.sampler.scheduler_class == "CogVideoXDDIMScheduler"
    assert sch.sampler.num_steps == S
    assert sch.sampler.timesteps == tuple(float(t) for t in gt_stats.timesteps[0])
    assert sch.matching == MatchingSettings(metric="cosine", stride=(2, 2, 2), cache_steps=CS, seed=7, granularity="joint")
    prov = sch.provenance
    assert prov["source"] == "planner" and prov["notes"] == "unit test"
    assert prov["planner"]["preset"] == "base"
    assert PlannerPolicy.from_dict(prov["planner"]["policy"]) == PRESETS["base"]
    assert len(prov["stats"]["digest"]) == 12 and prov["stats"]["num_runs"] == 3
    loaded = load_schedule(sch.save(tmp_path / "s.json"))
    assert loaded.tag == sch.tag and loaded.rates == sch.rates


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
