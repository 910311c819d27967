"""The offline HTML page: every section's figure, plotly.js inlined once, written atomically.

The page needs no network: plotly.js is one ``<script>`` in the head, figures are ``<div>`` s created by
``plotly.io.to_html(..., include_plotlyjs=False)``, the CSS is inline. A section whose data is missing
or partial says so in a note instead of raising.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline as po

from .._io import atomic_write_text
from ._common import CONFIDENCE, empty_reason, resolve_block_groups, span_label
from ._norms import DEFAULT_STEP_GROUPS, _get_norm_info, _get_norm_plot
from ._schedule import _get_rates_plot, _get_savings_plot, _get_schedule_info, compute_flops
from ._similarity import _get_similarity_heatmap_info, _get_similarity_heatmap_plot, _get_trend_info, _get_trend_plot
from ._stability import _get_stability_info, _get_stability_plot
from ._summary import _get_summary_info, _summary_html

logger = logging.getLogger(__name__)

#: Section ids, in page order, with their headings.
SECTIONS = (
    ("summary", "Summary"),
    ("similarity", "Similarity per block and step"),
    ("trends", "Similarity trends per block group"),
    ("norms", "Norm distributions"),
    ("stability", "Step-to-step stability"),
    ("schedule", "Schedule"),
)

PLOTLY_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}

CSS = """
:root { --fg: #222; --muted: #666; --line: #ddd; --accent: #2b7bba; --note-bg: #fff8e1; --note-line: #f0c36d; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: #fafafa; }
main { max-width: 1280px; margin: 0 auto; padding: 0 24px 48px; }
header { max-width: 1280px; margin: 0 auto; padding: 24px 24px 8px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 8px; padding-top: 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: var(--muted); margin: 0; }
nav.toc { max-width: 1280px; margin: 0 auto; padding: 0 24px; }
nav.toc ol { display: flex; flex-wrap: wrap; gap: 4px 20px; margin: 8px 0 16px; padding-left: 20px; }
a { color: var(--accent); }
section { background: white; border: 1px solid var(--line); border-radius: 6px; padding: 16px 20px; margin: 16px 0; }
p.lead { color: var(--muted); margin: 0 0 8px; max-width: 100ch; }
p.note { background: var(--note-bg); border-left: 4px solid var(--note-line); padding: 6px 10px; margin: 6px 0; }
table { border-collapse: collapse; margin: 4px 0 8px; }
table.kv th { text-align: left; font-weight: 600; padding: 3px 16px 3px 0; vertical-align: top; white-space: nowrap; }
table.kv td { padding: 3px 0; }
table.runs td, table.runs th { border-bottom: 1px solid var(--line); padding: 3px 12px 3px 0; text-align: left; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
.figure { margin: 8px 0; }
footer { color: var(--muted); font-size: 12px; max-width: 1280px; margin: 0 auto; padding: 0 24px 24px; }
"""

LEADS = {
    "summary": "What was profiled, and the schedule under review.",
    "similarity": (
        "Mean intra-sequence similarity of each (block, step) cell, averaged over runs and branches, standardized to "
        "[0, 1] per feature and metric by min-max over the cells (paper Figure 5). Bright cells are redundant: they "
        "are where a schedule should reduce. Hover a cell for its timestep and the raw quantiles; the buttons switch "
        "the feature and the similarity metric."
    ),
    "trends": (
        "The standardized similarity over the denoising steps, averaged over the blocks of each group (paper Figure 5); "
        "the band is the {pct}% confidence interval of the mean across runs (Student t)."
    ),
    "norms": (
        "Distribution of the Euclidean norms of the tokens (shared log-spaced histogram) with the 95th percentile "
        "dashed (paper Figure 3). A long tail (V in the paper) is why Euclidean matching beats cosine. Choose a block "
        "in the menu and steps on the slider."
    ),
    "stability": (
        "How much the matching changes from one step to the next (paper Figure 4): the fraction of sources whose best "
        "destination is unchanged, and the correlation of the similarities, averaged over runs and branches. Step 0 "
        "has no previous step and stays empty."
    ),
    "schedule": (
        "Reduction rates per block and step next to the similarity of the feature they reduce (same axes, zoom is "
        "linked), and the predicted FLOPs saved per block."
    ),
}


def _figure_html(fig: go.Figure, div_id: str) -> str:
    height = fig.layout.height or 450
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        config=PLOTLY_CONFIG,
        auto_play=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{int(height)}px",
    )


def _notes_html(notes: list) -> str:
    return "".join(f'<p class="note">{html.escape(str(n))}</p>' for n in notes)


def _section(sid: str, number: int, heading: str, body: str, lead: str | None = None) -> str:
    lead_html = f'<p class="lead">{html.escape(lead)}</p>' if lead else ""
    return f'<section id="{sid}"><h2>{number}. {html.escape(heading)}</h2>{lead_html}{body}</section>'


def _guard(sid: str, build: Callable[[], str]) -> str:
    """Build a section body; an unexpected failure becomes a note on the page (and a logged traceback)."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a diagnostics page should render whatever it can
        logger.exception("report section %r failed", sid)
        return _notes_html([f"This section could not be drawn: {type(exc).__name__}: {exc}"])


def _default_title(stats: Any) -> str:
    model = (stats.model or {}).get("transformer_class", "model")
    name = Path(stats.path).name if getattr(stats, "path", None) else None
    return f"AsymRnR report: {model}" + (f" ({name})" if name else "")


def report_html(
    stats: Any,
    *,
    schedule: Any = None,
    block_groups: Any = None,
    title: str | None = None,
    num_step_groups: int = DEFAULT_STEP_GROUPS,
) -> str:
    """The whole report as one self-contained HTML string (see :func:`write_report`)."""
    if empty_reason(stats) is None:
        resolve_block_groups(block_groups, stats.num_blocks)  # bad user input fails before any work
    title = title or _default_title(stats)
    flops = compute_flops(schedule) if schedule is not None else None
    sim_info = None

    def summary() -> str:
        return _summary_html(_get_summary_info(stats, schedule, flops))

    def figure_section(info, plot, fig_id: str) -> str:
        """The section's notes, then its figure when there is data to draw."""
        body = _notes_html(info.notes)
        if info.available:
            body += f'<div class="figure">{_figure_html(plot(info), fig_id)}</div>'
        return body

    def similarity() -> str:
        nonlocal sim_info
        sim_info = _get_similarity_heatmap_info(stats)
        return figure_section(sim_info, _get_similarity_heatmap_plot, "fig-similarity")

    def trends() -> str:
        info = _get_trend_info(stats, block_groups)
        body = _notes_html(info.notes)
        if info.available:
            groups = "; ".join(g.name if g.name == span_label(g.indices) else f"{g.name} ({span_label(g.indices)})"
                               for g in info.groups)
            body = f'<p class="lead">Block groups: {html.escape(groups)}.</p>' + body
            body += f'<div class="figure">{_figure_html(_get_trend_plot(info), "fig-trends")}</div>'
        return body

    def norms() -> str:
        return figure_section(_get_norm_info(stats, num_step_groups), _get_norm_plot, "fig-norms")

    def stability() -> str:
        return figure_section(_get_stability_info(stats, schedule), _get_stability_plot, "fig-stability")

    def schedule_section() -> str:
        if schedule is None:
            return _notes_html(["No schedule given: pass one (asymrnr report stats.h5 --schedule schedule.json) to "
                                "compare its rates with the similarity and see the predicted savings."])
        use_stats = stats if empty_reason(stats) is None else None
        info = _get_schedule_info(schedule, use_stats, sim_info, flops)
        body = _notes_html(info.notes)
        if info.similarity:
            metric = next(iter(info.similarity.values()))[1]
            caption = (f"Left: standardized {metric} similarity of the feature each rate reduces (Q for q, V for kv, "
                       "H for h); right: the rate, the fraction of all video tokens dropped. ")
        else:
            caption = "The rate of each cell: the fraction of all video tokens dropped. "
        caption += (f"Dashed lines: matching-cache windows of {info.cache_steps} steps (the matching is recomputed at "
                    f"steps k % {info.cache_steps} == 0).")
        body += (f'<h3>Rates</h3><p class="lead">{html.escape(caption)}</p>'
                 f'<div class="figure">{_figure_html(_get_rates_plot(info), "fig-rates")}</div>')
        if info.flops is not None:
            body += (f'<h3>Predicted savings per block</h3><div class="figure">'
                     f'{_figure_html(_get_savings_plot(info), "fig-savings")}</div>')
        return body

    builders = {
        "summary": summary,
        "similarity": similarity,
        "trends": trends,
        "norms": norms,
        "stability": stability,
        "schedule": schedule_section,
    }
    leads = dict(LEADS, trends=LEADS["trends"].format(pct=round(CONFIDENCE * 100)))
    sections = [_section(sid, i, heading, _guard(sid, builders[sid]), leads.get(sid))
                for i, (sid, heading) in enumerate(SECTIONS, start=1)]
    source = f" from {html.escape(str(stats.path))}" if getattr(stats, "path", None) else ""
    return page_html(title, SECTIONS, sections, source=source)


def page_html(title: str, toc: Any, sections: list[str], *, source: str = "", extra_css: str = "") -> str:
    """The page around ``sections`` (HTML strings): head with the CSS and plotly.js inlined, title, table
    of contents of ``toc`` (``(id, heading)`` pairs), footer. ``source`` (HTML) ends the subtitle;
    ``extra_css`` is added to the page's CSS."""
    from .. import __version__

    toc_html = "".join(f'<li><a href="#{sid}">{html.escape(heading)}</a></li>' for sid, heading in toc)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<meta name=\"generator\" content=\"asymrnr {html.escape(__version__)}\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}{extra_css}</style>\n"
        f'<script type="text/javascript">{po.get_plotlyjs()}</script>\n'
        "</head>\n<body>\n"
        f'<header><h1>{html.escape(title)}</h1><p class="sub">Generated {created} by asymrnr {html.escape(__version__)}'
        f"{source}. Self-contained: opens offline.</p></header>\n"
        f'<nav class="toc" aria-label="contents"><ol>{toc_html}</ol></nav>\n'
        "<main>\n" + "\n".join(sections) + "\n</main>\n"
        '<footer>Figures: plotly (inlined). Paper: Sun et al., "AsymRnR: Video Diffusion Transformers Acceleration '
        'with Asymmetric Reduction and Restoration".</footer>\n'
        "</body>\n</html>\n"
    )


def write_report(
    stats: Any,
    path,
    *,
    schedule: Any = None,
    block_groups: Any = None,
    title: str | None = None,
) -> Path:
    """Write the calibration report of ``stats`` (and ``schedule``) as one self-contained HTML file.

    Args:
        stats: a :class:`~asymrnr.profiler.stats_format.StatsData` (``load_stats(path)``).
        path: where to write; parent folders are created. Written atomically (temporary file in the same
            folder, then ``os.replace``): a crash leaves the previous file, if any, untouched.
        schedule: a :class:`~asymrnr.schedule_format.Schedule` to review next to the statistics (rates,
            cache windows, predicted FLOPs); ``None`` leaves those parts out with a note.
        block_groups: blocks averaged together in the trends: ``None`` (thirds: shallow, intermediate,
            deep), a group count, a mapping ``name -> block indices``, lists of block indices, or a string
            such as ``"shallow=0-9,mid=10-19,deep=20-29"``.
        title: page title (default: from the model and the statistics file name).

    Returns:
        The path written. Raises :class:`~asymrnr.report.ReportError` for invalid ``block_groups``.
    """
    text = report_html(stats, schedule=schedule, block_groups=block_groups, title=title)
    path = atomic_write_text(path, [text])
    logger.info("wrote report %s (%.1f MB)", path, len(text.encode("utf-8")) / 1e6)
    return path
