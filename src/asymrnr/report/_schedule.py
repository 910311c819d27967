"""The schedule (section 6): rate heatmaps next to the similarity they were planned from, per-block savings.

Rates are drawn block x step on the same (matched) axes as the standardized similarity of the feature
they reduce: ``q`` next to Q, ``kv`` next to V (the paper matches K and V on V), ``h`` next to H, so a
high-similarity region and its reduction line up. ``h`` is shown only when some ``h`` rate is non-zero.
Predicted savings come from the FLOPs model (:func:`asymrnr.flops.schedule_flops`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import AsymRnRError
from ._common import (
    FEATURE_LABELS,
    HEATMAP_COLORSCALE,
    METRIC_LABELS,
    RATE_COLORSCALE,
    base_layout,
    block_axis_title,
    expert_spans,
    f32,
    index_axis,
    int_dtick,
    recompute_steps,
)
from ._stability import cache_window_shapes
from .. import vocab

logger = logging.getLogger(__name__)

#: Statistics feature shown next to each schedule feature.
SIMILARITY_OF = {"q": "q", "kv": "v", "h": "h"}


@dataclass
class FlopsSummary:
    dense_total: float
    reduced_total: float
    predicted_speedup: float
    saved_fraction: float
    per_block_dense: np.ndarray  # [B]
    per_block_reduced: np.ndarray  # [B]
    batch: int

    @property
    def per_block_saving(self) -> np.ndarray:
        """``[B]`` fraction of each block's dense FLOPs removed (negative when overheads win)."""
        dense = np.asarray(self.per_block_dense, dtype=np.float64)
        return np.where(dense > 0, 1.0 - np.asarray(self.per_block_reduced, dtype=np.float64) / np.where(dense > 0, dense, 1), np.nan)


@dataclass
class ScheduleInfo:
    tag: str
    features: tuple[str, ...]  # shown: q, kv, and h when non-zero
    rates: dict  # feature -> [B, S]
    mean_rate: dict  # feature -> float (all three)
    num_blocks: int
    num_steps: int
    timesteps: np.ndarray | None  # [S] from the schedule's sampler, if recorded
    metric: str
    cache_steps: int
    recompute: list
    flops: FlopsSummary | None = None
    flops_error: str | None = None
    similarity: dict = field(default_factory=dict)  # schedule feature -> (stat feature, metric, [B, S])
    notes: list = field(default_factory=list)
    block_title: str = "block"  # the block axis' title (names the block kinds of models with several)
    experts: list = field(default_factory=list)  # (transformer, first step, last step); two-expert pipelines


def compute_flops(schedule: Any) -> tuple[FlopsSummary | None, str | None]:
    """Run the FLOPs model on ``schedule``; ``(None, message)`` if it cannot (the page says why)."""
    try:
        from ..flops import schedule_flops

        rep = schedule_flops(schedule)
    except (AsymRnRError, ValueError, TypeError, ImportError) as exc:
        logger.warning("FLOPs model failed for schedule %s: %s", getattr(schedule, "tag", "?"), exc)
        return None, str(exc)
    return (
        FlopsSummary(
            dense_total=float(rep.dense_total),
            reduced_total=float(rep.reduced_total),
            predicted_speedup=float(rep.predicted_speedup),
            saved_fraction=float(1.0 - rep.reduced_total / rep.dense_total),
            per_block_dense=np.asarray(rep.per_block_dense, dtype=np.float64),
            per_block_reduced=np.asarray(rep.per_block_reduced, dtype=np.float64),
            batch=int(getattr(rep, "batch", 2)),
        ),
        None,
    )


def _get_schedule_info(schedule: Any, stats: Any = None, similarity_info: Any = None, flops: tuple | None = None) -> ScheduleInfo:
    rates = {f: np.asarray(schedule.rates[f], dtype=np.float64).reshape(schedule.num_blocks, schedule.num_steps)
             for f in vocab.SCHEDULE_FEATURES}
    shown = ("q", "kv") + (("h",) if np.any(rates["h"] > 0) else ())
    ts = schedule.sampler.timesteps
    info = ScheduleInfo(
        tag=schedule.tag,
        features=shown,
        rates={f: rates[f] for f in shown},
        mean_rate={f: float(rates[f].mean()) for f in rates},
        num_blocks=schedule.num_blocks,
        num_steps=schedule.num_steps,
        timesteps=None if ts is None else np.asarray(ts, dtype=np.float64),
        metric=schedule.matching.metric,
        cache_steps=int(schedule.matching.cache_steps),
        recompute=recompute_steps(schedule.num_steps, schedule.matching.cache_steps),
        block_title=block_axis_title(schedule.model),
        experts=expert_spans(schedule.sampler.transformers, schedule.sampler.step_transformer),
    )
    info.flops, info.flops_error = flops if flops is not None else compute_flops(schedule)
    if info.flops_error:
        info.notes.append(f"Predicted savings not available: the FLOPs model failed ({info.flops_error}).")
    if stats is None:
        return info
    if (stats.num_blocks, stats.num_steps) != (schedule.num_blocks, schedule.num_steps):
        info.notes.append(
            f"The schedule is {schedule.num_blocks} blocks x {schedule.num_steps} steps, the statistics "
            f"{stats.num_blocks} x {stats.num_steps}: the similarity is not shown next to the rates."
        )
        return info
    if similarity_info is None:
        from ._similarity import _get_similarity_heatmap_info

        similarity_info = _get_similarity_heatmap_info(stats)
    metric = info.metric if info.metric in similarity_info.metrics else "euclidean"
    for f in shown:
        stat_feature = SIMILARITY_OF[f]
        panel = similarity_info.panels.get((metric, stat_feature))
        if panel is None:
            info.notes.append(
                f"Similarity of {FEATURE_LABELS[stat_feature]} ({METRIC_LABELS.get(metric, metric)}) not available "
                f"next to the {FEATURE_LABELS[f]} rates."
            )
            continue
        info.similarity[f] = (stat_feature, metric, panel.standardized)
    return info


def _get_rates_plot(info: ScheduleInfo) -> go.Figure:
    B, S = info.num_blocks, info.num_steps
    with_sim = bool(info.similarity)
    cols = 2 if with_sim else 1
    titles = []
    for f in info.features:
        if with_sim:
            if f in info.similarity:
                sf, metric, _ = info.similarity[f]
                titles.append(f"similarity of {FEATURE_LABELS[sf]} (standardized, {METRIC_LABELS.get(metric, metric)})")
            else:
                titles.append("")
        titles.append(f"{FEATURE_LABELS[f]} rate (mean {info.mean_rate[f]:.3f})")
    fig = make_subplots(rows=len(info.features), cols=cols, shared_xaxes="all", shared_yaxes="all",
                        horizontal_spacing=0.12, vertical_spacing=0.08, subplot_titles=titles)
    steps, blocks = np.arange(S), np.arange(B)
    ts = info.timesteps if info.timesteps is not None else np.full(S, np.nan)
    custom = f32(np.broadcast_to(ts[None, :], (B, S))[..., None])
    zmax = max([float(r.max()) for r in info.rates.values()] + [1e-9])
    for row, f in enumerate(info.features, start=1):
        if with_sim and f in info.similarity:
            sf, metric, z = info.similarity[f]
            fig.add_trace(
                go.Heatmap(
                    z=f32(z), x=steps, y=blocks, coloraxis="coloraxis", customdata=custom, name=FEATURE_LABELS[sf],
                    hovertemplate=("block %{y}, step %{x}<br>timestep %{customdata[0]:.1f}<br>standardized similarity "
                                   f"%{{z:.3f}}<extra>{FEATURE_LABELS[sf]}</extra>"),
                ),
                row=row, col=1,
            )
        fig.add_trace(
            go.Heatmap(
                z=f32(info.rates[f]), x=steps, y=blocks, coloraxis="coloraxis2", customdata=custom, name=FEATURE_LABELS[f],
                hovertemplate=("block %{y}, step %{x}<br>timestep %{customdata[0]:.1f}<br>rate %{z:.3f}"
                               f"<extra>{FEATURE_LABELS[f]} rate</extra>"),
            ),
            row=row, col=cols,
        )
    xrefs = [ax.plotly_name.replace("axis", "") for ax in fig.select_xaxes()]
    shapes = cache_window_shapes(info.recompute, xrefs)
    for shape in shapes:
        shape["line"]["color"] = "rgba(90,90,90,0.6)"
    # Two-expert pipelines (Wan 2.2): where the second transformer takes over, and who runs which steps.
    annotations = list(fig.layout.annotations)
    for i, (name, first, last) in enumerate(info.experts):
        for xref in xrefs:
            if i > 0:
                shapes.append(dict(type="line", xref=xref, yref="paper", x0=first - 0.5, x1=first - 0.5, y0=0, y1=1,
                                   line=dict(color="#d62728", width=2)))
        annotations.append(dict(x=(first + last) / 2, y=1.0, xref=xrefs[-1], yref="paper", yanchor="bottom",
                                showarrow=False, text=f"{name} (steps {first}-{last})", font=dict(color="#d62728")))
    fig.update_layout(
        **base_layout(
            height=min(1500, len(info.features) * max(260, 60 + 11 * B) + 120),
            margin=dict(l=60, r=30, t=70, b=50),
            coloraxis=dict(colorscale=HEATMAP_COLORSCALE, cmin=0.0, cmax=1.0,
                           colorbar=dict(x=0.455, thickness=12, len=0.6, title=dict(text="similarity", side="right"))),
            coloraxis2=dict(colorscale=RATE_COLORSCALE, cmin=0.0, cmax=zmax,
                            colorbar=dict(x=1.0, thickness=12, len=0.6, title=dict(text="rate", side="right"))),
            shapes=shapes,
            annotations=annotations,
        )
    )
    if not with_sim:
        fig.update_layout(coloraxis_showscale=False)
    fig.update_xaxes(**index_axis(S))
    fig.update_yaxes(**index_axis(B))
    fig.update_xaxes(title_text="denoising step", row=len(info.features))
    fig.update_yaxes(title_text=info.block_title, col=1)
    return fig


def _get_savings_plot(info: ScheduleInfo) -> go.Figure:
    fig = go.Figure()
    if info.flops is None:
        fig.update_layout(**base_layout(height=200))
        fig.add_annotation(text="; ".join(info.notes) or "FLOPs not available", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        return fig
    fl = info.flops
    saving = fl.per_block_saving
    saved = fl.per_block_dense - fl.per_block_reduced
    blocks = np.arange(len(saving))
    colors = np.where(saving >= 0, "#2b7bba", "#d62728").tolist()
    fig.add_trace(
        go.Bar(
            x=blocks, y=f32(saving * 100), marker=dict(color=colors), customdata=f32(saved / 1e12)[:, None],
            hovertemplate="block %{x}: %{y:.1f}% of its FLOPs saved<br>%{customdata[0]:.1f} TFLOPs over the generation"
                          "<extra></extra>",
            name="saved",
        )
    )
    fig.add_hline(y=fl.saved_fraction * 100, line=dict(color="#555", dash="dash", width=1),
                  annotation_text=f"whole model: {fl.saved_fraction:.1%} saved, {fl.predicted_speedup:.3f}x",
                  annotation_position="top right")
    fig.update_layout(
        **base_layout(
            height=320,
            margin=dict(l=60, r=30, t=40, b=50),
            xaxis=dict(title=info.block_title, tick0=0, dtick=int_dtick(len(blocks), 30), showgrid=False),
            yaxis=dict(title="predicted FLOPs saved (%)", showgrid=True, gridcolor="#eee", zeroline=True, zerolinecolor="#999"),
            bargap=0.15,
        )
    )
    return fig


def plot_schedule_rates(schedule: Any, stats: Any = None) -> go.Figure:
    """Q / KV (/ H) rate heatmaps, next to the similarity of the matched feature when ``stats`` fit."""
    return _get_rates_plot(_get_schedule_info(schedule, stats))


def plot_block_savings(schedule: Any) -> go.Figure:
    """Per-block predicted FLOPs savings of ``schedule`` (bar chart)."""
    return _get_savings_plot(_get_schedule_info(schedule))
