"""asymrnr.report: info extraction on hand-made statistics, figures, partial data, the offline page."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import plotly.graph_objects as go
import plotly.offline as po
import pytest

from asymrnr.profiler.stats_format import (
    NORM_BIN_EDGES,
    QUANTILE_LEVELS,
    RATE_LEVELS,
    STAT_FEATURES,
    STAT_METRICS,
    StatsData,
)
from asymrnr.report import ReportError, histogram_percentile, report_html, resolve_block_groups, write_report
from asymrnr.report._norms import _get_norm_info, _get_norm_plot
from asymrnr.report._schedule import _get_rates_plot, _get_savings_plot, _get_schedule_info
from asymrnr.report._similarity import (
    _get_similarity_heatmap_info,
    _get_similarity_heatmap_plot,
    _get_trend_info,
    _get_trend_plot,
)
from asymrnr.report._stability import _get_stability_info, _get_stability_plot
from asymrnr.report._summary import _get_summary_info, _summary_html
from asymrnr.schedule_format import MatchingSettings, ModelDescription, SamplerDescription, Schedule

# --------------------------------------------------------------------------------------------------
# Builders (also used by test_report_browser.py)
# --------------------------------------------------------------------------------------------------

MODEL = dict(
    family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=2, num_heads=30, head_dim=64,
    patch_size=[1, 2, 2], rope=False, latent_grid=[13, 30, 45], text_len=226, text_layout="first", ffn_dim=7680,
)

#: [step, block] base of the hand-made similarity; its standardized value is (base + 5) / 5.
BASE = np.array([[-4.0, -2.0], [-3.0, -1.0], [-5.0, 0.0]])
RUN_OFFSET = (-1.0, 1.0)  # added to every cell of run 0 / run 1
BRANCH_OFFSET = (0.5, -0.5)  # cond / uncond


def make_stats(
    *,
    runs: int = 2,
    branches: tuple[str, ...] = ("cond", "uncond"),
    features: tuple[str, ...] = STAT_FEATURES,
    metrics: tuple[str, ...] = STAT_METRICS,
    sim_mean: dict | None = None,
    sim_quantiles: dict | None = None,
    norm_hist: np.ndarray | None = None,
    same_dst: np.ndarray | None = None,
    corr: np.ndarray | None = None,
    timesteps: np.ndarray | None = None,
    model: dict | None = None,
    num_steps: int | None = None,
    num_blocks: int | None = None,
) -> StatsData:
    """A StatsData built directly from arrays; missing arrays are the hand-made defaults below."""
    R, Br, F, Q = runs, len(branches), len(features), len(QUANTILE_LEVELS)
    if sim_mean is None:
        S, B = BASE.shape
        m = np.zeros((R, Br, S, B, F))
        for r in range(R):
            for br in range(Br):
                for fi in range(F):
                    m[r, br, :, :, fi] = BASE + 10 * fi + RUN_OFFSET[r % 2] + BRANCH_OFFSET[br % 2]
        sim_mean = {metric: m.copy() for metric in metrics}
    S, B = next(iter(sim_mean.values())).shape[2:4] if sim_mean else (num_steps, num_blocks)
    levels = np.asarray(QUANTILE_LEVELS)
    if sim_quantiles is None:
        sim_quantiles = {k: v[..., None] + (2 * levels - 1) for k, v in sim_mean.items()}
    if norm_hist is None:
        norm_hist = np.zeros((R, Br, S, B, F, len(NORM_BIN_EDGES) - 1))
        norm_hist[:, :, :, 0, :, 30] = 100  # block 0: every token in bin 30
        norm_hist[:, :, :, 1, :, 35] = 80  # block 1: 80 % in bin 35, 20 % in bin 45
        norm_hist[:, :, :, 1, :, 45] = 20
    if same_dst is None or corr is None:
        s_i = np.arange(S)[None, None, :, None, None]
        b_i = np.arange(B)[None, None, None, :, None]
        f_i = np.arange(F)[None, None, None, None, :]
        r_i = np.arange(R)[:, None, None, None, None]
        base = 0.5 + 0.1 * s_i + 0.2 * b_i + 0.01 * f_i + 0.0 * r_i + np.zeros((R, Br, S, B, F))
        spread = np.where(r_i % 2 == 0, -0.05, 0.05) if R > 1 else 0.0
        stab = base + spread
        stab[:, :, 0] = np.nan
        same_dst = stab if same_dst is None else same_dst
        corr = (stab - 0.3) if corr is None else corr
    if timesteps is None:
        timesteps = np.tile(np.linspace(999.0, 999.0 * (1 - (S - 1) / max(S, 1)), S), (R, 1))
    return StatsData(
        format_version=1,
        tool_version="0.1.0",
        model=dict(MODEL if model is None else model, num_blocks=B),
        generation=dict(height=480, width=720, num_frames=49, num_steps=S, guidance_scale=6.0,
                        scheduler_class="CogVideoXDDIMScheduler"),
        matching=dict(stride=[2, 2, 2], seed=0, granularity="joint"),
        profiled_schedule=None,
        branches=tuple(branches),
        features=tuple(features),
        metrics=tuple(metrics),
        quantile_levels=levels,
        rate_levels=np.asarray(RATE_LEVELS),
        norm_bin_edges=np.asarray(NORM_BIN_EDGES),
        prompts=[f"prompt {r} <b>&amp;</b>" for r in range(R)],
        seeds=np.arange(R),
        timesteps=np.asarray(timesteps, dtype=np.float64),
        sim_mean=sim_mean,
        sim_quantiles=sim_quantiles,
        sim_rate_curve={k: np.full(v.shape + (len(RATE_LEVELS),), np.nan) for k, v in sim_mean.items()},
        norm_quantiles=np.zeros((R, Br, S, B, F, Q)),
        norm_hist=norm_hist,
        stability_same_dst=same_dst,
        stability_corr=corr,
    )


def make_schedule(num_blocks: int = 2, num_steps: int = 3, cache_steps: int = 2, h: bool = False, seed: int = 0) -> Schedule:
    rng = np.random.default_rng(seed)
    q = np.round(rng.uniform(0, 0.8, (num_blocks, num_steps)), 2)
    kv = np.round(rng.uniform(0, 0.5, (num_blocks, num_steps)), 2)
    hh = np.zeros((num_blocks, num_steps))
    if h:
        hh[0, :] = 0.3
        q[0, :] = kv[0, :] = 0.0
    return Schedule(
        model=ModelDescription(**dict(MODEL, num_blocks=num_blocks, latent_grid=(13, 30, 45))),
        sampler=SamplerDescription("CogVideoXDDIMScheduler", num_steps, tuple(np.linspace(999, 20, num_steps).tolist())),
        matching=MatchingSettings(cache_steps=cache_steps),
        rates={"q": q, "kv": kv, "h": hh},
        provenance={"tool_version": "0.1.0", "created": "2025-01-01T00:00:00Z", "notes": "test"},
    )


def synthetic_stats(runs: int = 4, blocks: int = 30, steps: int = 50, seed: int = 0) -> StatsData:
    """Plausible statistics of the real size (for the page size and the browser test)."""
    rng = np.random.default_rng(seed)
    Br, F = 2, len(STAT_FEATURES)
    s = np.linspace(0, 1, steps)[None, None, :, None, None]
    b = np.linspace(0, 1, blocks)[None, None, None, :, None]
    f = np.arange(F)[None, None, None, None, :]
    trend = np.exp(-6 * s) * (1.5 - b) + 0.4 * np.sin(3 * b + f) * s + 0.1 * f
    noise = rng.normal(0, 0.05, (runs, Br, steps, blocks, F))
    euc = -(4.0 - 2.0 * trend) + noise
    cos = np.tanh(0.5 + trend) + 0.5 * noise
    levels = np.asarray(QUANTILE_LEVELS)
    spread = (levels - 0.5) * 1.5
    quant = {"euclidean": euc[..., None] + spread, "cosine": np.clip(cos[..., None] + 0.3 * spread, -1, 1)}
    from scipy.stats import norm as _norm

    log_edges = np.log(NORM_BIN_EDGES)
    mu = np.log(np.array([20.0, 8.0, 8.0, 5.0]))[None, None, None, None, :] + 0.5 * b
    sigma = np.array([0.25, 0.35, 0.35, 0.7])[None, None, None, None, :] * (1 + 0.3 * s)
    cdf = _norm.cdf((log_edges - mu[..., None]) / sigma[..., None])
    hist = np.round(np.diff(cdf, axis=-1) * 17550 * np.ones((runs, Br, steps, blocks, F, 1)))
    stab = np.clip(0.75 + 0.2 * s + 0.03 * f - 0.05 * b + rng.normal(0, 0.02, (runs, Br, steps, blocks, F)), 0, 1)
    stab[:, :, 0] = np.nan
    return StatsData(
        format_version=1, tool_version="0.1.0",
        model=dict(MODEL, num_blocks=blocks, latent_grid=[13, 60, 90]),
        generation=dict(height=480, width=720, num_frames=49, num_steps=steps, guidance_scale=6.0,
                        scheduler_class="CogVideoXDDIMScheduler"),
        matching=dict(stride=[2, 2, 2], seed=0, granularity="joint"), profiled_schedule=None,
        branches=("cond", "uncond"), features=STAT_FEATURES, metrics=STAT_METRICS,
        quantile_levels=levels, rate_levels=np.asarray(RATE_LEVELS), norm_bin_edges=np.asarray(NORM_BIN_EDGES),
        prompts=[f"a synthetic prompt number {r}" for r in range(runs)], seeds=np.arange(runs),
        timesteps=np.tile(np.linspace(999, 1, steps), (runs, 1)),
        sim_mean={"euclidean": euc, "cosine": cos}, sim_quantiles=quant,
        sim_rate_curve={k: np.full(v.shape + (len(RATE_LEVELS),), np.nan) for k, v in (("euclidean", euc), ("cosine", cos))},
        norm_quantiles=np.exp(mu[..., None] + sigma[..., None] * _norm.ppf(np.clip(levels, 1e-3, 1 - 1e-3))) * np.ones((runs, Br, steps, blocks, F, 1)),
        norm_hist=hist, stability_same_dst=stab, stability_corr=np.clip(stab + 0.1, -1, 1),
    )


def synthetic_schedule(stats: StatsData, cache_steps: int = 4) -> Schedule:
    """A schedule reducing the most similar cells (top 40 % for Q, top 30 % of V for KV), window-constant."""
    B, S = stats.num_blocks, stats.num_steps
    euc = stats.sim_mean["euclidean"].mean(axis=(0, 1))  # [S, B, F]
    rates = {}
    for name, fi, top, r in (("q", 1, 0.4, 0.8), ("kv", 3, 0.3, 0.3)):
        m = euc[:, :, fi].T  # [B, S]
        m = np.repeat(m.reshape(B, -1, cache_steps).mean(axis=2), cache_steps, axis=1) if S % cache_steps == 0 else m
        rates[name] = np.where(m >= np.quantile(m, 1 - top), r, 0.0)
    rates["h"] = np.zeros((B, S))
    return Schedule(
        model=ModelDescription(**dict(MODEL, num_blocks=B, latent_grid=(13, 30, 45))),
        sampler=SamplerDescription("CogVideoXDDIMScheduler", S, tuple(np.linspace(999, 1, S).tolist())),
        matching=MatchingSettings(cache_steps=cache_steps),
        rates=rates,
    )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

_MENU_KEY = re.compile(r"updatemenus\[(\d+)\]\.buttons\[(\d+)\]\.args\[0\]\.visible")


def click(fig_dict: dict, menu: int, button: int) -> list[str]:
    """Apply a menu button the way plotly.js does (restyle/update with relayout of nested keys).

    Returns the names of the visible traces after the click.
    """
    b = fig_dict["layout"]["updatemenus"][menu]["buttons"][button]
    assert b["method"] in ("restyle", "update")
    for trace, vis in zip(fig_dict["data"], b["args"][0]["visible"]):
        trace["visible"] = vis
    if b["method"] == "update":
        for key, value in b["args"][1].items():
            m = _MENU_KEY.fullmatch(key)
            assert m, key
            fig_dict["layout"]["updatemenus"][int(m.group(1))]["buttons"][int(m.group(2))]["args"][0]["visible"] = value
    return visible_names(fig_dict)


def visible_names(fig_dict: dict) -> list[str]:
    return [t.get("name", "") for t in fig_dict["data"] if t.get("visible", True) is True]


def std_expected() -> np.ndarray:
    return ((BASE + 5.0) / 5.0).T  # [block, step]


# --------------------------------------------------------------------------------------------------
# Section 2: standardized heatmaps
# --------------------------------------------------------------------------------------------------


def test_heatmap_info_standardizes_the_run_and_branch_mean_per_feature():
    info = _get_similarity_heatmap_info(make_stats())
    assert info.features == ("h", "q", "k", "v") and info.metrics == ("euclidean", "cosine")
    assert (info.num_blocks, info.num_steps) == (2, 3)
    for metric in STAT_METRICS:
        for fi, feature in enumerate(STAT_FEATURES):
            p = info.panels[(metric, feature)]
            # run offsets (-1, +1) and branch offsets (+0.5, -0.5) cancel in the mean
            np.testing.assert_allclose(p.raw_mean, BASE.T + 10 * fi)
            np.testing.assert_allclose(p.standardized, std_expected())
            assert (p.vmin, p.vmax) == (-5.0 + 10 * fi, 0.0 + 10 * fi)
            np.testing.assert_allclose(p.quantiles, (BASE.T + 10 * fi)[..., None] + (2 * np.asarray(QUANTILE_LEVELS) - 1))
    np.testing.assert_allclose(info.timesteps, [999.0, 666.0, 333.0])
    assert info.notes == [] and info.missing == {}


def test_standardization_ignores_nan_cells_and_constant_maps_to_half():
    stats = make_stats()
    stats.sim_mean["euclidean"][:, :, 2, 1, 1] = np.nan  # the maximum cell of Q, in every run and branch
    stats.sim_mean["euclidean"][..., 2] = 7.0  # K constant
    info = _get_similarity_heatmap_info(stats)
    q = info.panels[("euclidean", "q")].standardized
    assert np.isnan(q[1, 2])
    np.testing.assert_allclose(q[~np.isnan(q)], ((BASE.T + 5) / 4)[~np.isnan(q)])  # new max: -1 -> 1
    np.testing.assert_array_equal(info.panels[("euclidean", "k")].standardized, np.full((2, 3), 0.5))


def test_heatmap_figure_hover_data_and_linked_switches():
    info = _get_similarity_heatmap_info(make_stats())
    fig = _get_similarity_heatmap_plot(info)
    assert isinstance(fig, go.Figure) and len(fig.data) == 8
    first = fig.data[0]
    assert first.name == "H \u00b7 Euclidean" and first.visible is True
    assert [t.visible for t in fig.data[1:]] == [False] * 7
    np.testing.assert_allclose(first.z, std_expected(), rtol=1e-6)
    custom = np.asarray(first.customdata)
    assert custom.shape == (2, 3, 2 + 7)  # timestep, mean, 7 quantiles
    np.testing.assert_allclose(custom[..., 0], np.tile([999.0, 666.0, 333.0], (2, 1)))
    np.testing.assert_allclose(custom[..., 1], BASE.T, rtol=1e-6)
    np.testing.assert_allclose(custom[..., 2], BASE.T - 1, rtol=1e-6)  # min (level 0)
    np.testing.assert_allclose(custom[..., -1], BASE.T + 1, rtol=1e-6)  # max (level 1)
    for part in ("block %{y}", "step %{x}", "timestep %{customdata[0]", "median %{customdata[5]", "max %{customdata[8]"):
        assert part in first.hovertemplate
    d = fig.to_dict()
    assert [len(m["buttons"]) for m in d["layout"]["updatemenus"]] == [4, 2]
    assert click(d, 0, 1) == ["Q \u00b7 Euclidean"]
    assert click(d, 1, 1) == ["Q \u00b7 cosine"]
    assert click(d, 0, 3) == ["V \u00b7 cosine"]  # the feature switch keeps the metric
    assert click(d, 1, 0) == ["V \u00b7 Euclidean"]  # the metric switch keeps the feature
    assert click(d, 0, 0) == ["H \u00b7 Euclidean"]


# --------------------------------------------------------------------------------------------------
# Section 3: trends per block group
# --------------------------------------------------------------------------------------------------


def test_trend_info_group_mean_and_t_band_across_runs():
    info = _get_trend_info(make_stats(), {"all": [0, 1]})
    assert [g.name for g in info.groups] == ["all"] and info.num_runs == 2
    half = 12.706204736174698 * 0.4 / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n)
    for key, p in info.panels.items():
        # per run: mean over branches and blocks, standardized with the heatmap's min/max
        np.testing.assert_allclose(p.per_run[:, 0], [[0.2, 0.4, 0.3], [0.6, 0.8, 0.7]], err_msg=str(key))
        np.testing.assert_allclose(p.mean[0], [0.4, 0.6, 0.5])
        np.testing.assert_allclose(p.lower[0], p.mean[0] - half)
        np.testing.assert_allclose(p.upper[0], p.mean[0] + half)
    assert info.has_band and info.notes == []


def test_trend_of_a_single_block_group_is_the_heatmap_row():
    stats = make_stats()
    info = _get_trend_info(stats, None)  # 2 blocks: "thirds" leave one group per block
    assert [(g.name, g.indices) for g in info.groups] == [("block 0", (0,)), ("block 1", (1,))]
    heat = _get_similarity_heatmap_info(stats)
    for key, p in info.panels.items():
        np.testing.assert_allclose(p.mean, heat.panels[key].standardized)


def test_trend_with_one_run_has_no_band_and_says_so():
    info = _get_trend_info(make_stats(runs=1), None)
    assert not info.has_band
    assert any("no confidence band" in n for n in info.notes)
    p = info.panels[("euclidean", "q")]
    assert np.isnan(p.lower).all() and np.isnan(p.upper).all()
    np.testing.assert_allclose(p.mean, std_expected())  # one run: min-max of that run itself
    fig = _get_trend_plot(info)
    assert not [t for t in fig.data if t.fill == "toself"]
    assert {t.name for t in fig.data if t.mode == "lines"} == {"block 0", "block 1"}


def test_trend_figure_bands_and_metric_switch():
    fig = _get_trend_plot(_get_trend_info(make_stats(), {"shallow": [0], "deep": [1]}))
    bands = [t for t in fig.data if t.fill == "toself"]
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(bands) == len(lines) == 2 * 4 * 2  # metric x feature x group
    d = fig.to_dict()
    shown = click(d, 0, 1)
    assert len(shown) == 8 + 8 and all(t["visible"] is False for t in d["data"][:16])


@pytest.mark.parametrize(
    "groups, expected",
    [
        (None, [("shallow", tuple(range(0, 10))), ("intermediate", tuple(range(10, 20))), ("deep", tuple(range(20, 30)))]),
        (2, [("blocks 0\u201314", tuple(range(15))), ("blocks 15\u201329", tuple(range(15, 30)))]),
        ("4", [("blocks 0\u20137", tuple(range(8))), ("blocks 8\u201315", tuple(range(8, 16))),
               ("blocks 16\u201322", tuple(range(16, 23))), ("blocks 23\u201329", tuple(range(23, 30)))]),
        ({"early": [2, 0, 1]}, [("early", (0, 1, 2))]),
        ([[5], [7, 9]], [("block 5", (5,)), ("blocks 7, 9", (7, 9))]),
        ("top=0-2+29, 10-11", [("top", (0, 1, 2, 29)), ("blocks 10\u201311", (10, 11))]),
    ],
)
def test_resolve_block_groups(groups, expected):
    assert [(g.name, g.indices) for g in resolve_block_groups(groups, 30)] == expected


@pytest.mark.parametrize(
    "groups, message",
    [({"deep": [28, 30]}, "names block(s) [30]"), ("0-x", "cannot read '0-x'"), ("9-3", "runs backwards"),
     ([[]], "is empty"), (0, "must be >= 1"), ("", "empty string")],
)
def test_bad_block_groups_raise_a_report_error(groups, message):
    with pytest.raises(ReportError, match=re.escape(message)):
        resolve_block_groups(groups, 30)
    with pytest.raises(ReportError):
        report_html(make_stats(), block_groups={"x": [5]})  # the page validates before drawing anything


# --------------------------------------------------------------------------------------------------
# Section 4: norms
# --------------------------------------------------------------------------------------------------


def test_norm_info_pools_histograms_and_finds_the_95th_percentile_bin():
    e = np.asarray(NORM_BIN_EDGES)
    info = _get_norm_info(make_stats())
    assert [g.name for g in info.block_options] == ["all blocks", "block 0", "block 1"]
    assert [g.name for g in info.step_options] == ["all steps", "step 0", "step 1", "step 2"]
    assert info.fraction.shape == (3, 4, 4, 70)
    # all blocks, all steps: bins 30 / 35 / 45 hold 50 / 40 / 10 % of 2 runs x 2 branches x 3 steps x 200 tokens
    np.testing.assert_allclose(info.total[0, 0], [2400.0] * 4)
    np.testing.assert_allclose(info.fraction[0, 0, :, [30, 35, 45]].T, np.tile([0.5, 0.4, 0.1], (4, 1)))
    assert info.fraction[0, 0].sum(axis=-1).tolist() == pytest.approx([1.0] * 4)
    np.testing.assert_array_equal(info.p95_bin[:, :, 0], [[45] * 4, [30] * 4, [45] * 4])
    # inside the bin, log-linear: all blocks reach 95 % half-way through bin 45, block 1 at 3/4, block 0 at 95 %
    np.testing.assert_allclose(info.p95[0, 0], np.sqrt(e[45] * e[46]))
    np.testing.assert_allclose(info.p95[2, 1], np.exp(np.log(e[45]) + 0.75 * np.log(e[46] / e[45])))
    np.testing.assert_allclose(info.p95[1, 3], np.exp(np.log(e[30]) + 0.95 * np.log(e[31] / e[30])))
    assert info.notes == []


def test_histogram_percentile_edge_cases():
    e = np.asarray(NORM_BIN_EDGES)
    value, k = histogram_percentile(np.zeros(70), e)
    assert math.isnan(value) and k == -1
    counts = np.zeros(70)
    counts[3] = 5
    assert histogram_percentile(counts, e) == (pytest.approx(np.exp(np.log(e[3]) + 0.95 * np.log(e[4] / e[3]))), 3)
    counts[60] = np.nan  # non-finite counts are ignored
    assert histogram_percentile(counts, e)[1] == 3


def test_norm_figure_block_menu_and_step_frames():
    info = _get_norm_info(make_stats())
    fig = _get_norm_plot(info)
    assert len(fig.data) == 3 * 4 * 2  # block options x features x (curve, percentile line)
    assert [t.visible for t in fig.data] == [True] * 8 + [False] * 16
    curve, marker = fig.data[0], fig.data[1]
    assert marker.line.dash == "dash"
    assert list(marker.x) == [pytest.approx(info.p95[0, 0, 0])] * 2
    assert [f.name for f in fig.frames] == ["steps0", "steps1", "steps2", "steps3"]
    assert list(fig.frames[2].traces) == list(range(24))
    np.testing.assert_allclose(fig.frames[2].data[0].y, np.asarray(curve.y), rtol=1e-6)  # every step alike here
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["all steps", "step 0", "step 1", "step 2"]
    assert steps[3].method == "animate" and list(steps[3].args[0]) == ["steps3"]
    d = fig.to_dict()
    assert d["layout"]["updatemenus"][0]["type"] == "dropdown"
    click(d, 0, 2)  # block 1
    assert [t["visible"] for t in d["data"]] == [False] * 16 + [True] * 8


def test_norm_frames_follow_the_steps():
    stats = make_stats()
    stats.norm_hist[:, :, 2] = 0
    stats.norm_hist[:, :, 2, :, :, 50] = 10  # the last step: every token in bin 50
    info = _get_norm_info(stats)
    assert info.p95_bin[0, 3, 1] == 50 and info.p95_bin[0, 1, 1] == 45
    fig = _get_norm_plot(info)
    assert list(fig.frames[3].data[1].x) == [pytest.approx(info.p95[0, 3, 0])] * 2


# --------------------------------------------------------------------------------------------------
# Section 5: stability
# --------------------------------------------------------------------------------------------------


def test_stability_info_and_cache_windows():
    info = _get_stability_info(make_stats(), make_schedule(cache_steps=2))
    s = np.arange(3)[None, :]
    b = np.arange(2)[:, None]
    for fi, feature in enumerate(STAT_FEATURES):
        expected = 0.5 + 0.1 * s + 0.2 * b + 0.01 * fi
        expected = np.where(s == 0, np.nan, expected)
        np.testing.assert_allclose(info.values[("same_dst", feature)], expected)
        np.testing.assert_allclose(info.values[("corr", feature)], expected - 0.3)
    assert info.cache_steps == 2 and info.recompute == [0, 2]
    fig = _get_stability_plot(info)
    lines = [(sh.xref, sh.x0) for sh in fig.layout.shapes]
    assert lines == [("x", 1.5), ("x2", 1.5)]  # the window that starts at step 2
    assert len(fig.data) == 8 and [t.name for t in fig.data if t.visible] == ["H", "H"]
    assert click(fig.to_dict(), 0, 2) == ["K", "K"]


def test_stability_without_schedule_or_with_one_step():
    info = _get_stability_info(make_stats())
    assert info.recompute == [] and any("No schedule given" in n for n in info.notes)
    assert not _get_stability_plot(info).layout.shapes
    one = make_stats(sim_mean={m: np.zeros((2, 2, 1, 2, 4)) for m in STAT_METRICS},
                     norm_hist=np.ones((2, 2, 1, 2, 4, 70)), same_dst=np.full((2, 2, 1, 2, 4), np.nan),
                     corr=np.full((2, 2, 1, 2, 4), np.nan))
    info = _get_stability_info(one)
    assert not info.available and info.notes == ["Stability not available: the statistics hold a single step."]


# --------------------------------------------------------------------------------------------------
# Section 6 and 1: schedule, FLOPs, summary
# --------------------------------------------------------------------------------------------------


def test_schedule_info_rates_flops_and_similarity_side_by_side():
    from asymrnr.flops import schedule_flops

    stats, sched = make_stats(), make_schedule(cache_steps=2)
    info = _get_schedule_info(sched, stats)
    assert info.features == ("q", "kv") and info.tag == sched.tag
    np.testing.assert_array_equal(info.rates["q"], np.asarray(sched.rates["q"]))
    assert info.mean_rate["h"] == 0.0 and info.recompute == [0, 2]
    rep = schedule_flops(sched)
    assert info.flops.predicted_speedup == rep.predicted_speedup
    np.testing.assert_allclose(info.flops.per_block_saving, 1 - rep.per_block_reduced / rep.per_block_dense)
    assert info.similarity["kv"][:2] == ("v", "euclidean") and info.similarity["q"][:2] == ("q", "euclidean")
    np.testing.assert_allclose(info.similarity["q"][2], std_expected())
    fig = _get_rates_plot(info)
    assert len(fig.data) == 4 and {t.coloraxis for t in fig.data} == {"coloraxis", "coloraxis2"}
    for select in (fig.select_xaxes, fig.select_yaxes):  # one zoom for all four panels
        matches = [ax.matches for ax in select()]
        assert matches.count(None) == 1 and len(set(matches) - {None}) == 1
    bars = _get_savings_plot(info)
    np.testing.assert_allclose(bars.data[0].y, info.flops.per_block_saving * 100, rtol=1e-5)


def test_schedule_with_h_and_mismatched_shape():
    sched = make_schedule(num_steps=4, h=True)
    info = _get_schedule_info(sched, make_stats())
    assert info.features == ("q", "kv", "h") and info.similarity == {}
    assert any("4 steps" in n and "not shown next to the rates" in n for n in info.notes)
    fig = _get_rates_plot(info)
    assert len(fig.data) == 3  # rates only


def test_summary_rows_prompts_and_schedule():
    stats, sched = make_stats(), make_schedule()
    info = _get_summary_info(stats, sched)
    rows = dict(info.rows)
    assert rows["model"].startswith("CogVideoXTransformer3DModel \u00b7 2 blocks \u00b7 30 heads")
    assert "480\u00d7720 px" in rows["generation"] and "3 steps" in rows["generation"]
    assert rows["runs"] == "2 (2 distinct prompts)"
    assert info.runs == [(0, "prompt 0 <b>&amp;</b>", 0), (1, "prompt 1 <b>&amp;</b>", 1)]
    srows = dict(info.schedule_rows)
    assert srows["tag"] == sched.tag
    assert srows["predicted speedup"].startswith(f"{schedule_flops_speedup(sched):.3f}\u00d7")
    page = _summary_html(info)
    assert "prompt 0 &lt;b&gt;&amp;amp;&lt;/b&gt;" in page and "<b>&amp;</b>" not in page
    none = _get_summary_info(stats, None)
    assert none.schedule_rows == [] and "No schedule given" in none.schedule_notes[0]


def schedule_flops_speedup(sched) -> float:
    from asymrnr.flops import schedule_flops

    return schedule_flops(sched).predicted_speedup


# --------------------------------------------------------------------------------------------------
# Partial data: the page says so, section by section
# --------------------------------------------------------------------------------------------------


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, sid
    return m.group(1)


def test_missing_feature_and_all_nan_feature():
    stats = make_stats(features=("q", "k", "v"))
    stats.sim_mean["cosine"][..., 1] = np.nan  # K under cosine
    heat = _get_similarity_heatmap_info(stats)
    assert heat.panels[("euclidean", "h")] is None and heat.missing[("euclidean", "h")] == "not recorded"
    assert heat.missing == {("euclidean", "h"): "not recorded", ("cosine", "h"): "not recorded",
                            ("cosine", "k"): "all values are NaN"}
    assert heat.notes == ["H: not recorded.", "K (cosine): all values are NaN."]
    np.testing.assert_allclose(heat.panels[("euclidean", "q")].standardized, std_expected())
    fig = _get_similarity_heatmap_plot(heat)
    assert fig.data[0].mode == "text" and "not recorded" in fig.data[0].text[0]
    assert [t.name for t in fig.data if t.visible] == ["Q \u00b7 Euclidean"]  # starts on the first available
    page = report_html(stats)
    for sid in ("similarity", "trends", "norms", "stability"):
        assert "H: not recorded." in _section(page, sid), sid
    assert "K (cosine): all values are NaN." in _section(page, "similarity")
    assert "could not be drawn" not in page


def test_all_nan_statistics_give_notes_not_figures():
    stats = make_stats()
    for m in STAT_METRICS:
        stats.sim_mean[m][:] = np.nan
    stats.norm_hist[:] = 0
    stats.stability_same_dst[:] = np.nan
    stats.stability_corr[:] = np.nan
    page = report_html(stats, schedule=make_schedule())
    assert "Similarity heatmaps not available" in _section(page, "similarity")
    assert "Trends not available" in _section(page, "trends")
    assert "Norm distributions not available" in _section(page, "norms")
    assert "Stability not available" in _section(page, "stability")
    assert 'id="fig-similarity"' not in page and 'id="fig-norms"' not in page
    sched = _section(page, "schedule")  # the schedule is still drawn, without the similarity next to it
    assert 'id="fig-rates"' in sched and "Similarity of Q (Euclidean) not available" in sched
    assert "could not be drawn" not in page


def test_no_runs_and_no_schedule():
    stats = make_stats(runs=0)
    assert stats.num_runs == 0
    page = report_html(stats)
    for sid in ("similarity", "trends", "norms", "stability"):
        assert "the statistics hold no runs" in _section(page, sid), sid
    assert "No schedule given" in _section(page, "schedule")
    assert "plotly-graph-div" not in page
    assert "could not be drawn" not in page


def test_public_plot_functions_build_figures():
    from asymrnr import report

    stats, sched = make_stats(), make_schedule()
    figs = [
        report.plot_similarity_heatmaps(stats),
        report.plot_similarity_trends(stats, 1),
        report.plot_norm_distributions(stats, 2),
        report.plot_stability(stats, sched),
        report.plot_schedule_rates(sched, stats),
        report.plot_block_savings(sched),
    ]
    for fig in figs:
        assert isinstance(fig, go.Figure) and len(fig.data) > 0
        json.loads(fig.to_json())


# --------------------------------------------------------------------------------------------------
# The page: self-contained, written atomically
# --------------------------------------------------------------------------------------------------


def test_page_is_self_contained_with_plotly_js_once(tmp_path):
    path = write_report(make_stats(), tmp_path / "sub" / "report.html", schedule=make_schedule(), title="T <1>")
    assert path == tmp_path / "sub" / "report.html"
    page = path.read_text(encoding="utf-8")
    js = po.get_plotlyjs()
    assert page.count(js[:2000]) == 1 and js in page
    assert page.index(js[:2000]) < page.index("</head>")
    assert len(re.findall(r"<script\b[^>]*\bsrc\s*=", page, re.I)) == 0  # no external (or any) script files
    assert not re.search(r"<link\b[^>]*href\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"<link\b[^>]*stylesheet", page, re.I)
    css = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert "@import" not in css and "url(" not in css
    assert "<title>T &lt;1&gt;</title>" in page
    for sid in ("summary", "similarity", "trends", "norms", "stability", "schedule"):
        assert page.count(f'<section id="{sid}">') == 1 and f'<a href="#{sid}">' in page
    ids = re.findall(r'<div id="(fig-[a-z]+)" class="plotly-graph-div"', page)
    assert ids == ["fig-similarity", "fig-trends", "fig-norms", "fig-stability", "fig-rates", "fig-savings"]
    assert page.count("Plotly.newPlot(") == 6
    assert "could not be drawn" not in page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left


def test_write_report_is_atomic(tmp_path, monkeypatch):
    import asymrnr._io as io_mod

    target = tmp_path / "report.html"
    target.write_text("previous")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(make_stats(), target)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_page_size_for_30_blocks_50_steps_4_runs():
    stats = synthetic_stats(runs=4, blocks=30, steps=50)
    page = report_html(stats, schedule=synthetic_schedule(stats))
    total = len(page.encode("utf-8"))
    figures = total - len(po.get_plotlyjs().encode("utf-8"))
    assert figures < 2.5e6, f"figures take {figures / 1e6:.2f} MB"
    assert total < 7.5e6


def test_report_of_the_golden_statistics_file():
    from pathlib import Path

    from asymrnr.profiler.stats_format import load_stats

    golden = Path(__file__).parent / "data" / "stats_v1_golden.h5"
    if not golden.exists():
        pytest.skip("tests/data/stats_v1_golden.h5 not present")
    stats = load_stats(golden)
    sched = make_schedule(num_blocks=stats.num_blocks, num_steps=stats.num_steps)
    page = report_html(stats, schedule=sched)
    assert "could not be drawn" not in page
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 6


def test_flops_model_failure_is_a_note():
    sched = make_schedule()
    sched = Schedule(
        model=ModelDescription(**dict(MODEL, latent_grid=(1, 2, 2))),  # ceiling 3/4 < the largest q rate
        sampler=sched.sampler, matching=sched.matching,
        rates={"q": np.full((2, 3), 0.8), "kv": np.zeros((2, 3)), "h": np.zeros((2, 3))},
    )
    info = _get_schedule_info(sched, make_stats())
    assert info.flops is None and "exceeds the ceiling" in info.flops_error
    assert info.notes[0].startswith("Predicted savings not available: the FLOPs model failed (")
    page = report_html(make_stats(), schedule=sched)
    assert 'id="fig-rates"' in page and 'id="fig-savings"' not in page
    assert "Predicted FLOPs not available" in _section(page, "summary")
    assert "could not be drawn" not in page
