"""Shared pieces of the report: labels, NaN-aware reductions, block groups, figure style.

Pure numpy (plus the plotly layout constants at the bottom). Arrays of :class:`StatsData` are indexed
``[run, branch, step, block, feature, ...]``; the report shows cells as ``[block, step]`` (block on the
y axis, step on the x axis), the orientation used by every heatmap of the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import AsymRnRError
from .. import vocab

#: Statistics features and metrics in page order (the contract's order; see docs/architecture.md).
STAT_FEATURES: tuple[str, ...] = vocab.STAT_FEATURES
STAT_METRICS: tuple[str, ...] = vocab.STAT_METRICS
FEATURE_LABELS = {"h": "H", "q": "Q", "k": "K", "v": "V", "kv": "KV"}
METRIC_LABELS = {"euclidean": "Euclidean", "cosine": "cosine"}
METRIC_MEANINGS = {
    "euclidean": "minus the Euclidean distance",
    "cosine": "cosine similarity",
}
#: Confidence of the band drawn around the group trends (two-sided, Student t over runs).
CONFIDENCE = 0.95

#: Shown on a panel / in a section when there is nothing to draw.
NOT_AVAILABLE = "not available"


class ReportError(AsymRnRError, ValueError):
    """Bad report input (e.g. block groups that name blocks the statistics do not have)."""


# --------------------------------------------------------------------------------------------------
# NaN-aware reductions (no RuntimeWarnings on empty slices; non-finite values count as missing)
# --------------------------------------------------------------------------------------------------


def nanmean(a: Any, axis=None) -> np.ndarray:
    """Mean over ``axis`` of the finite values; NaN where a slice has none."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    total = np.where(finite, a, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def nanstd(a: Any, axis=None, ddof: int = 1) -> np.ndarray:
    """Standard deviation (``ddof``) of the finite values; NaN where fewer than ``ddof + 1``."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    count = finite.sum(axis=axis)
    mean = nanmean(a, axis=axis)
    mean_b = np.expand_dims(mean, axis) if axis is not None else mean
    sq = np.where(finite, (a - mean_b) ** 2, 0.0).sum(axis=axis)
    return np.where(count > ddof, np.sqrt(sq / np.maximum(count - ddof, 1)), np.nan)


def finite_count(a: Any, axis=None) -> np.ndarray:
    return np.isfinite(np.asarray(a, dtype=np.float64)).sum(axis=axis)


def minmax_standardize(values: Any) -> tuple[np.ndarray, float, float] | None:
    """``(values - min) / (max - min)`` over the finite cells; ``None`` if there is none.

    Returns ``(standardized, min, max)``. All-equal finite cells map to 0.5 (no contrast to show).
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return None
    lo = float(v[finite].min())
    hi = float(v[finite].max())
    if hi > lo:
        z = (v - lo) / (hi - lo)
    else:
        z = np.where(finite, 0.5, np.nan)
    return np.where(finite, z, np.nan), lo, hi


def t_quantile(confidence: float, dof: np.ndarray) -> np.ndarray:
    """Two-sided Student t quantile for ``dof`` degrees of freedom (NaN where ``dof < 1``)."""
    from scipy import stats as _st

    dof = np.asarray(dof, dtype=np.float64)
    out = np.full(dof.shape, np.nan)
    ok = dof >= 1
    out[ok] = _st.t.ppf(0.5 + confidence / 2.0, dof[ok])
    return out


# --------------------------------------------------------------------------------------------------
# Statistics access
# --------------------------------------------------------------------------------------------------


def empty_reason(stats: Any) -> str | None:
    """Why the statistics hold nothing to show, or ``None`` when they hold at least one cell."""
    if stats.num_runs == 0:
        return "the statistics hold no runs (profile at least one generation)"
    if np.asarray(stats.timesteps).ndim != 2 or stats.num_steps == 0:
        return "the statistics hold no denoising steps"
    if stats.num_blocks == 0:
        return "the statistics hold no transformer blocks"
    return None


def feature_index(stats: Any, feature: str) -> int | None:
    """Index of ``feature`` on the statistics' feature axis, ``None`` when it was not recorded."""
    features = tuple(stats.features)
    return features.index(feature) if feature in features else None


def page_features(stats: Any) -> tuple[str, ...]:
    """The contract's features (h, q, k, v) plus any other recorded feature, in that order."""
    extra = tuple(f for f in stats.features if f not in STAT_FEATURES)
    return STAT_FEATURES + extra


def page_metrics(stats: Any) -> tuple[str, ...]:
    extra = tuple(m for m in stats.metrics if m not in STAT_METRICS)
    extra += tuple(m for m in getattr(stats, "sim_mean", {}) if m not in STAT_METRICS + extra)
    return STAT_METRICS + extra


def cell_feature(arr: Any, fi: int) -> np.ndarray:
    """``arr[:, :, :, :, fi, ...]`` of a ``[R, Br, S, B, F, ...]`` array as float64."""
    return np.asarray(arr, dtype=np.float64)[:, :, :, :, fi, ...]


def mean_over_runs_branches(arr: Any) -> np.ndarray:
    """``[R, Br, S, B, ...]`` -> ``[B, S, ...]``: NaN-aware mean over runs and branches, block first."""
    m = nanmean(np.asarray(arr, dtype=np.float64), axis=(0, 1))  # [S, B, ...]
    return np.swapaxes(m, 0, 1)


def mean_timesteps(stats: Any) -> np.ndarray:
    """``[S]`` timesteps, the mean over runs (runs of one file share the sampler)."""
    ts = np.asarray(stats.timesteps, dtype=np.float64)
    if ts.ndim != 2 or ts.shape[0] == 0:
        return np.full(stats.num_steps if ts.ndim == 2 else 0, np.nan)
    return nanmean(ts, axis=0)


def timesteps_differ(stats: Any) -> bool:
    ts = np.asarray(stats.timesteps, dtype=np.float64)
    if ts.ndim != 2 or ts.shape[0] < 2:
        return False
    return not np.allclose(ts, ts[:1], equal_nan=True)


# --------------------------------------------------------------------------------------------------
# Block and step groups
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """A named set of block (or step) indices."""

    name: str
    indices: tuple[int, ...]


def span_label(indices: Sequence[int], noun: str = "blocks") -> str:
    """``blocks 0-9`` for a contiguous run, ``blocks 0, 2, 5`` otherwise."""
    idx = list(indices)
    if not idx:
        return f"no {noun}"
    singular = noun[:-1] if noun.endswith("s") else noun
    if len(idx) == 1:
        return f"{singular} {idx[0]}"
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"{noun} {idx[0]}\u2013{idx[-1]}"
    return f"{noun} " + ", ".join(str(i) for i in idx)


def split_evenly(n: int, parts: int) -> list[tuple[int, ...]]:
    """``range(n)`` cut into ``parts`` contiguous pieces whose sizes differ by at most one (no empty ones)."""
    parts = max(1, min(int(parts), n)) if n > 0 else 0
    return [tuple(int(i) for i in chunk) for chunk in np.array_split(np.arange(n), parts) if len(chunk)] if parts else []


_DEFAULT_GROUP_NAMES = ("shallow", "intermediate", "deep")
_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:[-\u2013:]\s*(\d+))?\s*$")


def _parse_indices(text: str, where: str) -> list[int]:
    out: list[int] = []
    for piece in text.split("+"):
        m = _RANGE_RE.match(piece)
        if not m:
            raise ReportError(
                f"block groups: cannot read {piece.strip()!r} in {where!r}; write a block index or an "
                "inclusive range like '0-9', several joined with '+' (e.g. 'shallow=0-9,mid=10-19,deep=20-29')"
            )
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ReportError(f"block groups: range {piece.strip()!r} in {where!r} runs backwards; write '{b}-{a}'")
        out.extend(range(a, b + 1))
    return out


def parse_block_groups(text: str) -> list[tuple[str | None, list[int]]]:
    """Parse ``'shallow=0-9,mid=10-19,deep=20-29'`` (names optional: ``'0-9,10-19,20-29'``).

    Returns ``(name or None, indices)`` pairs; ranges are inclusive and may be joined with ``+``
    (``'ends=0-2+27-29'``). A bare group count (``'4'``) is handled by :func:`resolve_block_groups`.
    """
    groups = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, spec = part.partition("=")
        if not sep:
            name, spec = None, part
        else:
            name = name.strip() or None
        groups.append((name, _parse_indices(spec, part.strip())))
    return groups


def resolve_block_groups(block_groups: Any, num_blocks: int) -> list[Group]:
    """Normalise the ``block_groups`` argument of the report to a list of :class:`Group`.

    Accepted: ``None`` (thirds: shallow, intermediate, deep), an ``int`` n (n equal contiguous groups),
    a mapping ``name -> block indices``, a sequence of index sequences (named by their span), or a string
    ``'shallow=0-9,mid=10-19,deep=20-29'`` / ``'0-9,10-19,20-29'`` / ``'4'`` (the CLI's form).
    """
    if isinstance(block_groups, str):
        text = block_groups.strip()
        if text.isdigit():
            block_groups = int(text)
        else:
            block_groups = parse_block_groups(text)
            if not block_groups:
                raise ReportError("block groups: empty string; give e.g. '0-9,10-19,20-29' or a group count like '3'")
    if block_groups is None:
        chunks = split_evenly(num_blocks, 3)
        names = _DEFAULT_GROUP_NAMES if len(chunks) == 3 else tuple(span_label(c) for c in chunks)
        return [Group(n, c) for n, c in zip(names, chunks)]
    if isinstance(block_groups, (bool, np.bool_)):
        raise ReportError(f"block groups: got {block_groups!r}; pass None, a group count, or lists of block indices")
    if isinstance(block_groups, (int, np.integer)):
        n = int(block_groups)
        if n < 1:
            raise ReportError(f"block groups: the group count must be >= 1, got {n}")
        return [Group(span_label(c), c) for c in split_evenly(num_blocks, n)]
    if isinstance(block_groups, Mapping):
        pairs: Iterable = [(str(k), v) for k, v in block_groups.items()]
    else:
        pairs = []
        for item in block_groups:
            if (
                isinstance(item, tuple)
                and len(item) == 2
                and (item[0] is None or isinstance(item[0], str))
                and not isinstance(item[1], (int, np.integer))
            ):
                pairs.append(item)
            else:
                pairs.append((None, item))
    groups: list[Group] = []
    for name, indices in pairs:
        try:
            idx = [int(i) for i in np.asarray(list(indices)).ravel()]
        except (TypeError, ValueError):
            raise ReportError(
                f"block groups: group {name or len(groups)} must be a list of block indices, got {indices!r}"
            ) from None
        if not idx:
            raise ReportError(f"block groups: group {name or len(groups)} is empty; give it at least one block")
        bad = [i for i in idx if not 0 <= i < num_blocks]
        if bad:
            raise ReportError(
                f"block groups: group {name or span_label(idx)!r} names block(s) {bad} but the statistics have "
                f"{num_blocks} blocks (0..{num_blocks - 1}); fix the group or omit block_groups for thirds"
            )
        idx = sorted(dict.fromkeys(idx))
        groups.append(Group(name if name else span_label(idx), tuple(idx)))
    if not groups:
        raise ReportError("block groups: no group given; pass None for thirds or at least one list of blocks")
    return groups


def block_kind_spans(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    """``[(label, blocks), ...]``: contiguous runs of blocks of one kind, for a model with several kinds.

    ``model`` is a model description or its dict (``stats.model``, ``schedule.model``); labels come from the
    family's adapter (``block_kind_names``, e.g. ``dual`` -> ``dual-stream``), else the kind itself. Empty
    when the model records no kinds or only one.
    """
    if model is None:
        return []
    get = model.get if isinstance(model, Mapping) else lambda key, default=None: getattr(model, key, default)
    kinds = [str(k) for k in (get("block_kinds", None) or ())]
    if len(set(kinds)) < 2:
        return []
    names: Mapping = {}
    try:
        from .. import archs

        names = archs.get(str(get("family", ""))).block_kind_names
    except AsymRnRError:
        pass
    spans: list[tuple[str, list[int]]] = []
    for b, kind in enumerate(kinds):
        label = str(names.get(kind, kind))
        if spans and spans[-1][0] == label and spans[-1][1][-1] == b - 1:
            spans[-1][1].append(b)
        else:
            spans.append((label, [b]))
    return [(label, tuple(idx)) for label, idx in spans]


def block_kinds_text(model: Any) -> str | None:
    """``dual-stream: blocks 0–19 · single-stream: blocks 20–59`` (``None`` for one kind of block)."""
    spans = block_kind_spans(model)
    return " · ".join(f"{label}: {span_label(idx)}" for label, idx in spans) if spans else None


def block_axis_title(model: Any) -> str:
    """Title of a block axis: ``block``, with the kinds' spans when the model has several kinds."""
    spans = block_kind_spans(model)
    if not spans:
        return "block"
    parts = ", ".join(f"{label} {idx[0]}–{idx[-1]}" if len(idx) > 1 else f"{label} {idx[0]}" for label, idx in spans)
    return f"block ({parts})"


def expert_spans(transformers: Sequence[str] | None, step_transformer: Sequence[int] | None) -> list[tuple[str, int, int]]:
    """Contiguous runs of steps of each transformer component, ``[(name, first, last), ...]``; empty for a
    pipeline with one transformer (Wan 2.2 has two experts: ``transformer`` first, ``transformer_2`` after)."""
    if not transformers or step_transformer is None or len(set(step_transformer)) < 2:
        return []
    spans: list[tuple[str, int, int]] = []
    for k, idx in enumerate(step_transformer):
        name = transformers[idx]
        if spans and spans[-1][0] == name and spans[-1][2] == k - 1:
            spans[-1] = (name, spans[-1][1], k)
        else:
            spans.append((name, k, k))
    return spans


def expert_spans_text(spans: Sequence[tuple[str, int, int]]) -> str | None:
    return " \u00b7 ".join(f"{name}: steps {a}-{b}" for name, a, b in spans) or None


def step_groups(num_steps: int, max_groups: int) -> list[Group]:
    """Contiguous step groups (at most ``max_groups``), named ``steps 0-4``."""
    return [Group(span_label(c, "steps"), c) for c in split_evenly(num_steps, max_groups)]


def recompute_steps(num_steps: int, cache_steps: int) -> list[int]:
    """Steps at which the matching cache recomputes: ``k % cache_steps == 0``."""
    return [k for k in range(int(num_steps)) if vocab.is_recompute_step(k, cache_steps)]


# --------------------------------------------------------------------------------------------------
# Figure style (kept small: each figure embeds its own layout)
# --------------------------------------------------------------------------------------------------

FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif", size=12, color="#222")
GROUP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
FEATURE_COLORS = {"h": "#7f7f7f", "q": "#1f77b4", "k": "#2ca02c", "v": "#d62728"}
HEATMAP_COLORSCALE = "Viridis"
RATE_COLORSCALE = [[0.0, "#f7f7f7"], [1e-6, "#deebf7"], [0.5, "#6baed6"], [1.0, "#08306b"]]


def base_layout(**kwargs: Any) -> dict:
    layout = dict(
        template="none",
        font=FONT,
        paper_bgcolor="white",
        plot_bgcolor="white",
        margin=dict(l=60, r=30, t=80, b=50),
        hoverlabel=dict(font=dict(family=FONT["family"], size=12)),
    )
    layout.update(kwargs)
    return layout


def int_dtick(n: int, max_ticks: int = 12) -> int:
    """Tick spacing for an integer axis of ``n`` cells: 1, 2, 5, 10, 20, 50, ... with at most ``max_ticks``."""
    step = 1
    while n / step > max_ticks:
        for mult in (2, 5, 10):
            if n / (step * mult) <= max_ticks or mult == 10:
                step *= mult
                break
    return step


def index_axis(n: int, **kwargs: Any) -> dict:
    """Axis settings for cells 0..n-1 (blocks, steps): integer ticks, cell edges at -0.5 and n - 0.5."""
    return dict(range=[-0.5, n - 0.5], tick0=0, dtick=int_dtick(n), showgrid=False, zeroline=False, **kwargs)


def missing_notes(missing: dict, labels: dict) -> list[str]:
    """Notes for ``{(variant, feature): why}``, one per feature when every variant misses it for one reason."""
    by_feature: dict = {}
    for (variant, feature), why in missing.items():
        by_feature.setdefault(feature, []).append((variant, why))
    notes = []
    for feature, items in by_feature.items():
        name = FEATURE_LABELS.get(feature, feature)
        if len(items) == len(labels) and len({w for _, w in items}) == 1:
            notes.append(f"{name}: {items[0][1]}.")
        else:
            notes += [f"{name} ({labels.get(v, v)}): {w}." for v, w in items]
    return notes


def rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def f32(a: Any) -> np.ndarray:
    """Float32 copy for figures: plotly encodes numpy arrays as compact typed arrays; NaN stays NaN."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def note_figure(notes: Any) -> Any:
    """A small empty figure that shows why a section has nothing to plot."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(**base_layout(height=200))
    fig.add_annotation(text="; ".join(notes), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig
