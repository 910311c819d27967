"""Step-to-step stability of the matching (paper Figure 4), section 5.

Two block x step heatmaps per feature, averaged over runs and branches: the fraction of source tokens
whose best destination is unchanged from the previous step, and the correlation of the similarities
with the previous step. Step 0 has no previous step (NaN). When a schedule is given, dashed lines mark
the start of each matching-cache window: the matching is recomputed at steps ``k % cache_steps == 0``
and reused in between, so low stability inside a window is what the cache costs in accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import (
    note_figure,
    FEATURE_LABELS,
    HEATMAP_COLORSCALE,
    base_layout,
    block_axis_title,
    cell_feature,
    empty_reason,
    f32,
    feature_index,
    index_axis,
    mean_over_runs_branches,
    mean_timesteps,
    missing_notes,
    page_features,
    recompute_steps,
)
from ._controls import linked_menus
from ._similarity import _text_trace

MEASURES = ("same_dst", "corr")
MEASURE_TITLES = {
    "same_dst": "unchanged best destination (fraction of sources)",
    "corr": "correlation of similarities with the previous step",
}
MEASURE_SHORT = {"same_dst": "unchanged", "corr": "correlation"}


@dataclass
class StabilityInfo:
    features: tuple[str, ...]
    num_blocks: int
    num_steps: int
    timesteps: np.ndarray  # [S]
    values: dict = field(default_factory=dict)  # (measure, feature) -> [B, S] mean over runs and branches | None
    missing: dict = field(default_factory=dict)  # (measure, feature) -> why
    cache_steps: int | None = None
    recompute: list = field(default_factory=list)  # steps where the matching cache recomputes
    notes: list = field(default_factory=list)
    block_title: str = "block"  # the block axis' title (names the block kinds of models with several)

    @property
    def available(self) -> bool:
        return any(v is not None for v in self.values.values())


def cache_steps_of(schedule: Any) -> int | None:
    if schedule is None:
        return None
    return int(schedule.matching.cache_steps)


def _get_stability_info(stats: Any, schedule: Any = None) -> StabilityInfo:
    reason = empty_reason(stats)
    info = StabilityInfo(
        features=page_features(stats),
        num_blocks=stats.num_blocks if reason is None else 0,
        num_steps=stats.num_steps if reason is None else 0,
        timesteps=mean_timesteps(stats) if reason is None else np.zeros(0),
        cache_steps=cache_steps_of(schedule),
        block_title=block_axis_title(getattr(stats, "model", None)),
    )
    if reason is not None:
        info.notes.append(f"Stability not available: {reason}.")
        return info
    arrays = {"same_dst": stats.stability_same_dst, "corr": stats.stability_corr}
    for feature in info.features:
        fi = feature_index(stats, feature)
        for measure in MEASURES:
            key = (measure, feature)
            if fi is None:
                info.values[key], info.missing[key] = None, "not recorded"
                continue
            value = mean_over_runs_branches(cell_feature(arrays[measure], fi))  # [B, S]
            if not np.isfinite(value).any():
                why = "needs at least two steps" if info.num_steps < 2 else "all values are NaN"
                info.values[key], info.missing[key] = None, why
            else:
                info.values[key] = value
    if info.cache_steps is not None:
        info.recompute = recompute_steps(info.num_steps, info.cache_steps)
    if not info.available:
        info.notes.append(
            "Stability not available: "
            + ("the statistics hold a single step." if info.num_steps < 2 else "no feature holds finite values.")
        )
        return info
    if schedule is None:
        info.notes.append("No schedule given: the matching-cache windows are not drawn.")
    elif schedule.num_steps != info.num_steps:
        info.notes.append(
            f"The schedule has {schedule.num_steps} steps, the statistics {info.num_steps}: cache windows drawn "
            f"every {info.cache_steps} steps of the statistics."
        )
    info.notes += missing_notes(info.missing, MEASURE_SHORT)
    return info


def cache_window_shapes(recompute: list, xrefs: list[str]) -> list[dict]:
    """Dashed vertical lines at the left edge of every cache window after the first (k - 0.5)."""
    shapes = []
    for xref in xrefs:
        for k in recompute:
            if k == 0:
                continue
            shapes.append(
                dict(type="line", xref=xref, yref=f"{xref.replace('x', 'y')} domain", x0=k - 0.5, x1=k - 0.5, y0=0, y1=1,
                     line=dict(color="rgba(255,255,255,0.95)", width=1.5, dash="dash"), layer="above")
            )
    return shapes


def _get_stability_plot(info: StabilityInfo) -> go.Figure:
    if not info.available:
        return note_figure(info.notes)
    B, S = info.num_blocks, info.num_steps
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.11,
                        subplot_titles=[MEASURE_TITLES[m] for m in MEASURES])
    steps, blocks = np.arange(S), np.arange(B)
    ts = np.broadcast_to(info.timesteps[None, :], (B, S))[..., None]
    keys = []
    initial = next(fi for fi, f in enumerate(info.features) if any(info.values.get((m, f)) is not None for m in MEASURES))
    for fi, feature in enumerate(info.features):
        label = FEATURE_LABELS.get(feature, feature)
        for col, measure in enumerate(MEASURES, start=1):
            axis = "" if col == 1 else str(col)
            value = info.values.get((measure, feature))
            vis = fi == initial
            if value is None:
                fig.add_trace(_text_trace(f"{label}: {info.missing[(measure, feature)]}", (S - 1) / 2, (B - 1) / 2,
                                          xaxis="x" + axis, yaxis="y" + axis, visible=vis))
            else:
                fig.add_trace(
                    go.Heatmap(
                        z=f32(value), x=steps, y=blocks, customdata=f32(ts), visible=vis,
                        coloraxis="coloraxis" if col == 1 else "coloraxis2", name=label,
                        hovertemplate=(
                            "block %{y}, step %{x}<br>timestep %{customdata[0]:.1f}<br>"
                            f"{MEASURE_SHORT[measure]} %{{z:.3f}}<extra>{label}</extra>"
                        ),
                        xaxis="x" + axis, yaxis="y" + axis,
                    )
                )
            keys.append((fi,))
    corr_values = [v for (m, _), v in info.values.items() if m == "corr" and v is not None]
    corr_min = min([0.0] + [float(np.nanmin(v)) for v in corr_values])
    menus = linked_menus(keys, [dict(labels=[FEATURE_LABELS.get(f, f) for f in info.features], x=0.09, y=1.1)], (initial,))
    fig.update_layout(
        **base_layout(
            height=max(380, min(720, 120 + 14 * B)),
            margin=dict(l=60, r=30, t=100, b=50),
            updatemenus=menus,
            coloraxis=dict(colorscale=HEATMAP_COLORSCALE, cmin=0.0, cmax=1.0,
                           colorbar=dict(x=0.455, thickness=12, len=0.9, title=dict(text="fraction", side="right"))),
            coloraxis2=dict(colorscale=HEATMAP_COLORSCALE, cmin=corr_min, cmax=1.0,
                            colorbar=dict(x=1.0, thickness=12, len=0.9, title=dict(text="correlation", side="right"))),
            shapes=cache_window_shapes(info.recompute, ["x", "x2"]),
        )
    )
    fig.add_annotation(text="feature", x=0.0, y=1.115, xref="paper", yref="paper", showarrow=False, xanchor="left", yanchor="bottom")
    if info.cache_steps is not None:
        fig.add_annotation(
            text=f"dashed: matching-cache windows ({info.cache_steps} steps; recomputed at the step right of a line)",
            x=1.0, y=1.115, xref="paper", yref="paper", showarrow=False, xanchor="right", yanchor="bottom",
            font=dict(size=11, color="#555"),
        )
    fig.update_xaxes(**index_axis(S, title_text="denoising step"))
    fig.update_yaxes(**index_axis(B))
    fig.update_yaxes(title_text=info.block_title, row=1, col=1)
    return fig


def plot_stability(stats: Any, schedule: Any = None) -> go.Figure:
    """Step-to-step stability heatmaps (unchanged destinations, correlation) with cache windows."""
    return _get_stability_plot(_get_stability_info(stats, schedule))
