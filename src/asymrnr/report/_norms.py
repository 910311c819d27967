"""Norm distributions per feature with the 95th percentile (paper Figure 3), section 4.

The profiler stores, per (run, branch, step, block, feature), counts of token norms in one shared set of
log-spaced bins, so distributions of any set of cells add up exactly. The page offers every block (and
all blocks together) through a dropdown and contiguous step groups (and all steps) through a slider; the
95th percentile is read off the pooled histogram (log-linear interpolation inside its bin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import (
    note_figure,
    FEATURE_COLORS,
    FEATURE_LABELS,
    Group,
    base_layout,
    empty_reason,
    f32,
    feature_index,
    page_features,
    rgba,
    step_groups,
)
from ._controls import animate_args, linked_menus
from ._similarity import _text_trace

PERCENTILE = 0.95
#: Default number of step groups on the slider (besides "all steps"): 50 steps -> groups of 5.
DEFAULT_STEP_GROUPS = 10


@dataclass
class NormInfo:
    features: tuple[str, ...]
    bin_edges: np.ndarray  # [nb + 1]
    block_options: list  # [Group]; the first is all blocks
    step_options: list  # [Group]; the first is all steps
    fraction: np.ndarray  # [Bo, So, F, nb] share of tokens per bin (NaN where no tokens were counted)
    total: np.ndarray  # [Bo, So, F] tokens counted
    p95: np.ndarray  # [Bo, So, F] 95th percentile of the norm (NaN where no tokens)
    p95_bin: np.ndarray  # [Bo, So, F] bin holding the 95th percentile (-1 where no tokens)
    percentile: float = PERCENTILE
    missing: dict = field(default_factory=dict)  # feature -> why it is not available
    notes: list = field(default_factory=list)

    @property
    def bin_centers(self) -> np.ndarray:
        e = self.bin_edges
        return np.sqrt(e[:-1] * e[1:])

    @property
    def available(self) -> bool:
        return bool(np.any(self.total > 0))


def histogram_percentile(counts: Any, edges: Any, q: float = PERCENTILE) -> tuple[float, int]:
    """``(value, bin)`` of the ``q`` quantile of a histogram; log-linear interpolation inside the bin.

    ``bin`` is the first bin whose cumulative share reaches ``q``; ``(nan, -1)`` when nothing was counted.
    """
    c = np.asarray(counts, dtype=np.float64)
    c = np.where(np.isfinite(c) & (c > 0), c, 0.0)
    total = c.sum()
    if total <= 0:
        return float("nan"), -1
    cum = np.cumsum(c) / total
    k = int(np.searchsorted(cum, q - 1e-12, side="left"))
    k = min(k, len(c) - 1)
    before = cum[k - 1] if k > 0 else 0.0
    inside = (q - before) / (cum[k] - before) if cum[k] > before else 0.0
    e = np.asarray(edges, dtype=np.float64)
    lo, hi = np.log(e[k]), np.log(e[k + 1])
    return float(np.exp(lo + np.clip(inside, 0.0, 1.0) * (hi - lo))), k


def _get_norm_info(stats: Any, num_step_groups: int = DEFAULT_STEP_GROUPS) -> NormInfo:
    features = page_features(stats)
    edges = np.asarray(stats.norm_bin_edges, dtype=np.float64)
    nb = len(edges) - 1
    reason = empty_reason(stats)
    B = stats.num_blocks if reason is None else 0
    S = stats.num_steps if reason is None else 0
    block_options = [Group("all blocks", tuple(range(B)))] + [Group(f"block {b}", (b,)) for b in range(B)]
    step_options = [Group("all steps", tuple(range(S)))]
    groups = step_groups(S, num_step_groups)
    if len(groups) > 1:
        step_options += groups
    Bo, So, F = len(block_options), len(step_options), len(features)
    info = NormInfo(
        features=features,
        bin_edges=edges,
        block_options=block_options,
        step_options=step_options,
        fraction=np.full((Bo, So, F, nb), np.nan),
        total=np.zeros((Bo, So, F)),
        p95=np.full((Bo, So, F), np.nan),
        p95_bin=np.full((Bo, So, F), -1, dtype=np.int64),
    )
    if reason is not None:
        info.notes.append(f"Norm distributions not available: {reason}.")
        return info
    hist = np.asarray(stats.norm_hist, dtype=np.float64)  # [R, Br, S, B, F', nb]
    hist = np.where(np.isfinite(hist) & (hist > 0), hist, 0.0).sum(axis=(0, 1))  # [S, B, F', nb]
    for fi, feature in enumerate(features):
        si = feature_index(stats, feature)
        if si is None:
            info.missing[feature] = "not recorded"
            continue
        h = hist[:, :, si, :]  # [S, B, nb]
        if not np.any(h > 0):
            info.missing[feature] = "no norms counted (empty histograms)"
            continue
        per_step_group = np.stack([h[list(g.indices)].sum(axis=0) for g in step_options])  # [So, B, nb]
        for bo, bg in enumerate(block_options):
            counts = per_step_group[:, list(bg.indices), :].sum(axis=1)  # [So, nb]
            for so in range(So):
                tot = counts[so].sum()
                info.total[bo, so, fi] = tot
                if tot > 0:
                    info.fraction[bo, so, fi] = counts[so] / tot
                    info.p95[bo, so, fi], info.p95_bin[bo, so, fi] = histogram_percentile(counts[so], edges, PERCENTILE)
    if not info.available:
        info.notes.append("Norm distributions not available: no feature has counted norms.")
    else:
        for feature, why in info.missing.items():
            info.notes.append(f"{FEATURE_LABELS.get(feature, feature)}: {why}.")
    return info


def _get_norm_plot(info: NormInfo) -> go.Figure:
    if not info.available:
        return note_figure(info.notes)
    F = len(info.features)
    fig = make_subplots(
        rows=1, cols=F, shared_xaxes=True, horizontal_spacing=0.04,
        subplot_titles=[FEATURE_LABELS.get(f, f) for f in info.features],
    )
    # Show only the bins that hold tokens somewhere (plus one on each side): same x range on all panels.
    used = np.nonzero(np.nansum(info.fraction[0, 0], axis=0) > 0)[0]
    k0, k1 = max(int(used[0]) - 1, 0), min(int(used[-1]) + 1, len(info.bin_edges) - 2)
    sl = slice(k0, k1 + 1)
    centers = info.bin_centers[sl]
    x_range = [float(np.log10(info.bin_edges[k0])), float(np.log10(info.bin_edges[k1 + 1]))]
    pct = round(info.percentile * 100)

    def curve_y(bo: int, so: int, fi: int) -> np.ndarray:
        return f32(info.fraction[bo, so, fi, sl])

    def marker_xy(bo: int, so: int, fi: int) -> tuple[list, list]:
        p = info.p95[bo, so, fi]
        top = np.nanmax(info.fraction[bo, so, fi, sl]) if np.isfinite(p) else np.nan
        return [float(p), float(p)], [0.0, float(top) * 1.05]

    keys, dynamic = [], []  # dynamic: (trace index, kind, bo, fi) updated by the step frames
    vis0 = 0
    for fi, feature in enumerate(info.features):
        axis = "" if fi == 0 else str(fi + 1)
        if feature in info.missing:
            middle = float(np.sqrt(centers[0] * centers[-1]))  # data units on the log axis
            fig.add_trace(_text_trace(info.missing[feature], middle, 0.5, xaxis="x" + axis, yaxis="y" + axis))
            keys.append(None)
    for bo, bg in enumerate(info.block_options):
        for fi, feature in enumerate(info.features):
            if feature in info.missing:
                continue
            axis = "" if fi == 0 else str(fi + 1)
            color = FEATURE_COLORS.get(feature, "#444")
            label = FEATURE_LABELS.get(feature, feature)
            fig.add_trace(
                go.Scatter(
                    x=f32(centers), y=curve_y(bo, 0, fi), mode="lines", line=dict(color=color, width=1.5, shape="hvh"),
                    fill="tozeroy", fillcolor=rgba(color, 0.15), name=label, showlegend=False, visible=bo == vis0,
                    hovertemplate=f"{label}, {bg.name}<br>norm \u2248 %{{x:.3g}}: %{{y:.2%}} of tokens<extra></extra>",
                    xaxis="x" + axis, yaxis="y" + axis,
                )
            )
            keys.append((bo,))
            dynamic.append((len(fig.data) - 1, "curve", bo, fi))
            mx, my = marker_xy(bo, 0, fi)
            fig.add_trace(
                go.Scatter(
                    x=mx, y=my, mode="lines", line=dict(color="#222", width=1.5, dash="dash"),
                    name=f"{pct}th percentile", showlegend=False, visible=bo == vis0,
                    hovertemplate=f"{label}: {pct}th percentile \u2248 %{{x:.3g}}<extra></extra>",
                    xaxis="x" + axis, yaxis="y" + axis,
                )
            )
            keys.append((bo,))
            dynamic.append((len(fig.data) - 1, "marker", bo, fi))
    frames = []
    for so, sg in enumerate(info.step_options):
        data = []
        for _, kind, bo, fi in dynamic:
            if kind == "curve":
                data.append(go.Scatter(y=curve_y(bo, so, fi)))
            else:
                mx, my = marker_xy(bo, so, fi)
                data.append(go.Scatter(x=mx, y=my))
        frames.append(go.Frame(name=f"steps{so}", data=data, traces=[d[0] for d in dynamic]))
    fig.frames = frames
    menus = linked_menus(
        keys,
        [dict(labels=[g.name for g in info.block_options], type="dropdown", direction="down", x=0.0, y=1.1,
              xanchor="left", yanchor="bottom")],
        (vis0,),
    )
    sliders = []
    if len(info.step_options) > 1:
        sliders.append(
            dict(
                active=0,
                currentvalue=dict(visible=False),
                pad=dict(t=62, b=0),
                len=1.0,
                x=0.0,
                steps=[dict(label=sg.name.replace("steps ", ""), method="animate", args=animate_args(f"steps{so}"))
                       for so, sg in enumerate(info.step_options)],
            )
        )
    fig.update_layout(
        **base_layout(height=480 if sliders else 380, margin=dict(l=60, r=30, t=90, b=120 if sliders else 50),
                      updatemenus=menus,
                      sliders=sliders, hovermode="closest")
    )
    fig.add_annotation(
        text=f"dashed: {pct}th percentile of the pooled histogram; slider: denoising steps",
        x=1.0, y=1.12, xref="paper", yref="paper", showarrow=False, xanchor="right", yanchor="bottom",
        font=dict(size=11, color="#555"),
    )
    fig.update_xaxes(type="log", range=x_range, title_text="token norm (Euclidean)", showgrid=True, gridcolor="#eee",
                     exponentformat="power")
    fig.update_yaxes(showgrid=True, gridcolor="#eee", rangemode="tozero", tickformat=".0%")
    fig.update_yaxes(title_text="share of tokens per bin", row=1, col=1)
    return fig


def plot_norm_distributions(stats: Any, num_step_groups: int = DEFAULT_STEP_GROUPS) -> go.Figure:
    """Histograms of token norms per feature with the 95th percentile; block dropdown, step slider."""
    return _get_norm_plot(_get_norm_info(stats, num_step_groups))


__all__ = ["NormInfo", "histogram_percentile", "plot_norm_distributions"]
