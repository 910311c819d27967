"""Similarity per (block, step): standardized heatmaps (section 2) and group trends with a band (section 3).

Standardization follows the paper's Figure 5: for each (metric, feature), the run- and branch-averaged
mean similarity of every (block, step) cell is mapped to [0, 1] by min-max over the cells. The group
trends use the same map, so a trend and the heatmap rows it averages read on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import (
    note_figure,
    CONFIDENCE,
    FEATURE_LABELS,
    GROUP_COLORS,
    HEATMAP_COLORSCALE,
    METRIC_LABELS,
    METRIC_MEANINGS,
    Group,
    base_layout,
    block_axis_title,
    cell_feature,
    empty_reason,
    f32,
    feature_index,
    finite_count,
    index_axis,
    int_dtick,
    mean_over_runs_branches,
    mean_timesteps,
    minmax_standardize,
    missing_notes,
    nanmean,
    nanstd,
    page_features,
    page_metrics,
    resolve_block_groups,
    rgba,
    t_quantile,
    timesteps_differ,
)
from ._controls import initial_visibility, linked_menus

#: Quantile levels shown when hovering a heatmap cell (those the statistics hold).
HOVER_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


# --------------------------------------------------------------------------------------------------
# Info
# --------------------------------------------------------------------------------------------------


@dataclass
class SimilarityPanel:
    """One (metric, feature) heatmap; arrays are ``[block, step]``."""

    standardized: np.ndarray  # [B, S] in [0, 1], NaN where the cell has no finite value
    raw_mean: np.ndarray  # [B, S] run/branch-averaged mean similarity
    quantiles: np.ndarray  # [B, S, Q] run/branch-averaged quantiles (levels: info.quantile_levels)
    vmin: float  # raw value mapped to 0
    vmax: float  # raw value mapped to 1


@dataclass
class SimilarityHeatmapInfo:
    features: tuple[str, ...]
    metrics: tuple[str, ...]
    num_blocks: int
    num_steps: int
    timesteps: np.ndarray  # [S]
    quantile_levels: np.ndarray  # [Q]
    panels: dict = field(default_factory=dict)  # (metric, feature) -> SimilarityPanel | None
    missing: dict = field(default_factory=dict)  # (metric, feature) -> why it is not available
    notes: list = field(default_factory=list)
    block_title: str = "block"  # the block axis' title (names the block kinds of models with several)

    @property
    def available(self) -> bool:
        return any(p is not None for p in self.panels.values())


def _panel_reason(stats: Any, metric: str, feature: str) -> str | None:
    if metric not in getattr(stats, "sim_mean", {}):
        return f"no {METRIC_LABELS.get(metric, metric)} similarity in the statistics"
    if feature_index(stats, feature) is None:
        return "not recorded"
    return None


def _get_similarity_heatmap_info(stats: Any) -> SimilarityHeatmapInfo:
    features, metrics = page_features(stats), page_metrics(stats)
    reason = empty_reason(stats)
    info = SimilarityHeatmapInfo(
        features=features,
        metrics=metrics,
        num_blocks=stats.num_blocks if reason is None else 0,
        num_steps=stats.num_steps if reason is None else 0,
        timesteps=mean_timesteps(stats) if reason is None else np.zeros(0),
        quantile_levels=np.asarray(stats.quantile_levels, dtype=np.float64),
        block_title=block_axis_title(getattr(stats, "model", None)),
    )
    if reason is not None:
        info.notes.append(f"Similarity heatmaps not available: {reason}.")
        return info
    if timesteps_differ(stats):
        info.notes.append("The runs' timesteps differ; hover shows their mean per step.")
    for metric in metrics:
        for feature in features:
            key = (metric, feature)
            why = _panel_reason(stats, metric, feature)
            panel = None
            if why is None:
                fi = feature_index(stats, feature)
                raw = mean_over_runs_branches(cell_feature(stats.sim_mean[metric], fi))  # [B, S]
                std = minmax_standardize(raw)
                if std is None:
                    why = "all values are NaN"
                else:
                    z, lo, hi = std
                    if metric in getattr(stats, "sim_quantiles", {}):
                        quant = mean_over_runs_branches(cell_feature(stats.sim_quantiles[metric], fi))
                    else:
                        quant = np.full(raw.shape + (len(info.quantile_levels),), np.nan)
                    panel = SimilarityPanel(standardized=z, raw_mean=raw, quantiles=quant, vmin=lo, vmax=hi)
            info.panels[key] = panel
            if why is not None:
                info.missing[key] = why
    if not info.available:
        info.notes.append("Similarity heatmaps not available: no feature holds finite similarity values.")
    else:
        info.notes += missing_notes(info.missing, {m: METRIC_LABELS.get(m, m) for m in metrics})
    return info


def _quantile_label(level: float) -> str:
    if level == 0.0:
        return "min"
    if level == 1.0:
        return "max"
    if level == 0.5:
        return "median"
    return f"p{round(level * 100):02d}"


def _hover_levels(levels: np.ndarray) -> list[int]:
    idx = [int(np.argmin(np.abs(levels - q))) for q in HOVER_QUANTILES if np.any(np.isclose(levels, q))]
    return idx if idx else list(range(len(levels)))


def _text_trace(text: str, x: float, y: float, *, xaxis: str = "x", yaxis: str = "y", visible: bool = True) -> go.Scatter:
    """A centred message standing in for a panel that has no data."""
    return go.Scatter(
        x=[x],
        y=[y],
        mode="text",
        text=[text],
        textfont=dict(size=14, color="#777"),
        hoverinfo="skip",
        showlegend=False,
        xaxis=xaxis,
        yaxis=yaxis,
        visible=visible,
    )


def _get_similarity_heatmap_plot(info: SimilarityHeatmapInfo) -> go.Figure:
    fig = go.Figure()
    if not info.available:
        fig.update_layout(**base_layout(height=200))
        fig.add_annotation(text="similarity: " + "; ".join(info.notes), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    B, S = info.num_blocks, info.num_steps
    steps, blocks = np.arange(S), np.arange(B)
    hover_idx = _hover_levels(info.quantile_levels)
    keys = []
    for mi, metric in enumerate(info.metrics):
        for fi, feature in enumerate(info.features):
            keys.append((fi, mi))
    initial = next(((fi, mi) for (fi, mi) in keys if info.panels.get((info.metrics[mi], info.features[fi])) is not None))
    visible = initial_visibility(keys, initial)
    for (fi, mi), vis in zip(keys, visible):
        metric, feature = info.metrics[mi], info.features[fi]
        panel = info.panels.get((metric, feature))
        label = f"{FEATURE_LABELS.get(feature, feature)} \u00b7 {METRIC_LABELS.get(metric, metric)}"
        if panel is None:
            fig.add_trace(_text_trace(f"{label}: {info.missing.get((metric, feature), 'not available')}", (S - 1) / 2, (B - 1) / 2, visible=vis))
            continue
        ts = np.broadcast_to(info.timesteps[None, :], (B, S))
        custom = np.concatenate([ts[..., None], panel.raw_mean[..., None], panel.quantiles[..., hover_idx]], axis=-1)
        lines = [
            "block %{y}, step %{x}",
            "timestep %{customdata[0]:.1f}",
            "standardized %{z:.3f}",
            f"mean {METRIC_MEANINGS.get(metric, metric)} %{{customdata[1]:.4g}}",
        ]
        lines += [
            f"{_quantile_label(float(info.quantile_levels[q]))} %{{customdata[{2 + j}]:.4g}}" for j, q in enumerate(hover_idx)
        ]
        fig.add_trace(
            go.Heatmap(
                z=f32(panel.standardized),
                x=steps,
                y=blocks,
                customdata=f32(custom),
                coloraxis="coloraxis",
                hovertemplate="<br>".join(lines) + f"<extra>{label}</extra>",
                name=label,
                visible=vis,
            )
        )
    menus = linked_menus(
        keys,
        [
            dict(labels=[FEATURE_LABELS.get(f, f) for f in info.features], x=0.09, y=1.04),
            dict(labels=[METRIC_LABELS.get(m, m) for m in info.metrics], x=0.55, y=1.04),
        ],
        initial,
    )
    fig.update_layout(
        **base_layout(
            height=max(380, min(720, 120 + 14 * B)),
            margin=dict(l=60, r=30, t=70, b=50),
            updatemenus=menus,
            coloraxis=dict(
                colorscale=HEATMAP_COLORSCALE,
                cmin=0.0,
                cmax=1.0,
                colorbar=dict(title=dict(text="standardized", side="right"), thickness=14),
            ),
            xaxis=index_axis(S, title="denoising step"),
            yaxis=index_axis(B, title=info.block_title),
            annotations=[
                dict(text="feature", x=0.0, y=1.055, xref="paper", yref="paper", showarrow=False, xanchor="left", yanchor="bottom"),
                dict(text="similarity", x=0.45, y=1.055, xref="paper", yref="paper", showarrow=False, xanchor="left", yanchor="bottom"),
            ],
        )
    )
    return fig


def plot_similarity_heatmaps(stats: Any) -> go.Figure:
    """Block x step heatmaps of the standardized similarity, switchable by feature and metric."""
    return _get_similarity_heatmap_plot(_get_similarity_heatmap_info(stats))


# --------------------------------------------------------------------------------------------------
# Trends per block group
# --------------------------------------------------------------------------------------------------


@dataclass
class TrendPanel:
    """One (metric, feature): per group ``[G, S]`` mean over runs and its confidence band."""

    per_run: np.ndarray  # [R, G, S] standardized similarity of each run (mean over branches, group blocks)
    mean: np.ndarray  # [G, S]
    lower: np.ndarray  # [G, S], NaN where fewer than 2 runs have a value
    upper: np.ndarray  # [G, S]


@dataclass
class TrendInfo:
    features: tuple[str, ...]
    metrics: tuple[str, ...]
    groups: list  # [Group]
    num_steps: int
    num_runs: int
    confidence: float
    panels: dict = field(default_factory=dict)  # (metric, feature) -> TrendPanel | None
    missing: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def available(self) -> bool:
        return any(p is not None for p in self.panels.values())

    @property
    def has_band(self) -> bool:
        return any(p is not None and np.isfinite(p.lower).any() for p in self.panels.values())


def _get_trend_info(stats: Any, block_groups: Any = None, confidence: float = CONFIDENCE) -> TrendInfo:
    reason = empty_reason(stats)
    groups: list[Group] = [] if reason is not None else resolve_block_groups(block_groups, stats.num_blocks)
    info = TrendInfo(
        features=page_features(stats),
        metrics=page_metrics(stats),
        groups=groups,
        num_steps=stats.num_steps if reason is None else 0,
        num_runs=stats.num_runs,
        confidence=confidence,
    )
    if reason is not None:
        info.notes.append(f"Trends not available: {reason}.")
        return info
    for metric in info.metrics:
        for feature in info.features:
            key = (metric, feature)
            why = _panel_reason(stats, metric, feature)
            panel = None
            if why is None:
                fi = feature_index(stats, feature)
                arr = cell_feature(stats.sim_mean[metric], fi)  # [R, Br, S, B]
                std = minmax_standardize(mean_over_runs_branches(arr))
                if std is None:
                    why = "all values are NaN"
                else:
                    _, lo, hi = std
                    span = hi - lo
                    per_run = np.stack([nanmean(arr[:, :, :, list(g.indices)], axis=(1, 3)) for g in groups], axis=1)
                    per_run = (per_run - lo) / span if span > 0 else np.where(np.isfinite(per_run), 0.5, np.nan)
                    mean = nanmean(per_run, axis=0)
                    n = finite_count(per_run, axis=0)
                    half = t_quantile(confidence, n - 1) * nanstd(per_run, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1))
                    panel = TrendPanel(per_run=per_run, mean=mean, lower=mean - half, upper=mean + half)
            info.panels[key] = panel
            if why is not None:
                info.missing[key] = why
    if not info.available:
        info.notes.append("Trends not available: no feature holds finite similarity values.")
        return info
    if stats.num_runs < 2:
        info.notes.append(
            f"Only {stats.num_runs} run: no confidence band (a band across runs needs at least 2; profile more "
            "prompts or seeds)."
        )
    info.notes += missing_notes(info.missing, {m: METRIC_LABELS.get(m, m) for m in info.metrics})
    return info


def _get_trend_plot(info: TrendInfo) -> go.Figure:
    if not info.available:
        return note_figure(info.notes)
    F = len(info.features)
    fig = make_subplots(
        rows=1,
        cols=F,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=[FEATURE_LABELS.get(f, f) for f in info.features],
    )
    steps = np.arange(info.num_steps)
    initial_metric = next(
        mi for mi, m in enumerate(info.metrics) if any(info.panels.get((m, f)) is not None for f in info.features)
    )
    keys = []
    pct = round(info.confidence * 100)
    for mi, metric in enumerate(info.metrics):
        legend_done: set[str] = set()
        for fi, feature in enumerate(info.features):
            axis = "" if fi == 0 else str(fi + 1)
            panel = info.panels.get((metric, feature))
            vis = mi == initial_metric
            if panel is None:
                fig.add_trace(
                    _text_trace(info.missing.get((metric, feature), "not available"), (info.num_steps - 1) / 2, 0.5,
                                xaxis="x" + axis, yaxis="y" + axis, visible=vis)
                )
                keys.append((mi,))
                continue
            for gi, group in enumerate(info.groups):
                color = GROUP_COLORS[gi % len(GROUP_COLORS)]
                lower, upper = panel.lower[gi], panel.upper[gi]
                ok = np.isfinite(lower) & np.isfinite(upper)
                if ok.any():
                    xs = np.concatenate([steps[ok], steps[ok][::-1]])
                    ys = np.concatenate([upper[ok], lower[ok][::-1]])
                    fig.add_trace(
                        go.Scatter(
                            x=xs, y=f32(ys), fill="toself", fillcolor=rgba(color, 0.18), line=dict(width=0),
                            hoverinfo="skip", showlegend=False, legendgroup=group.name, visible=vis,
                            xaxis="x" + axis, yaxis="y" + axis,
                        )
                    )
                    keys.append((mi,))
                custom = np.stack([lower, upper], axis=-1)
                band = f"<br>{pct}% CI %{{customdata[0]:.3f}} to %{{customdata[1]:.3f}}" if ok.any() else ""
                fig.add_trace(
                    go.Scatter(
                        x=steps, y=f32(panel.mean[gi]), customdata=f32(custom), mode="lines",
                        line=dict(color=color, width=2), name=group.name, legendgroup=group.name,
                        showlegend=group.name not in legend_done, visible=vis,
                        hovertemplate=f"{group.name}<br>step %{{x}}: %{{y:.3f}}{band}<extra>{FEATURE_LABELS.get(feature, feature)}</extra>",
                        xaxis="x" + axis, yaxis="y" + axis,
                    )
                )
                legend_done.add(group.name)
                keys.append((mi,))
    menus = linked_menus(keys, [dict(labels=[METRIC_LABELS.get(m, m) for m in info.metrics], x=0.09, y=1.09)], (initial_metric,))
    fig.update_layout(
        **base_layout(
            height=400,
            margin=dict(l=60, r=30, t=95, b=50),
            updatemenus=menus,
            legend=dict(orientation="h", x=1.0, xanchor="right", y=1.1, yanchor="bottom"),
            hovermode="closest",
        )
    )
    fig.add_annotation(text="similarity", x=0.0, y=1.105, xref="paper", yref="paper", showarrow=False, xanchor="left", yanchor="bottom")
    fig.update_xaxes(title_text="denoising step", showgrid=True, gridcolor="#eee", zeroline=False, tick0=0,
                     dtick=int_dtick(info.num_steps, 8))
    fig.update_yaxes(showgrid=True, gridcolor="#eee", zeroline=False)
    fig.update_yaxes(title_text="standardized similarity", row=1, col=1)
    return fig


def plot_similarity_trends(stats: Any, block_groups: Any = None) -> go.Figure:
    """Standardized similarity over steps, one line per block group, with a band across runs."""
    return _get_trend_plot(_get_trend_info(stats, block_groups))
