"""Interactive calibration report: plotly figures from plain data, one offline HTML page.

Each figure follows three layers (as optuna.visualization does): ``_get_x_info(data)`` returns plain
dataclasses of numpy arrays, ``_get_x_plot(info)`` turns them into a plotly figure and does nothing else,
and the public ``plot_x`` chains the two. :func:`write_report` assembles every section into one
self-contained HTML file (plotly.js inlined once; no network needed to open it); :func:`write_compare_page`
writes the page of ``asymrnr compare``.
"""

from __future__ import annotations

from ._compare import COMPARE_SECTIONS, compare_html, write_compare_page
from ._common import ReportError, parse_block_groups, resolve_block_groups
from ._norms import histogram_percentile, plot_norm_distributions
from ._page import SECTIONS, report_html, write_report
from ._schedule import plot_block_savings, plot_schedule_rates
from ._similarity import plot_similarity_heatmaps, plot_similarity_trends
from ._stability import plot_stability

__all__ = [
    "COMPARE_SECTIONS",
    "compare_html",
    "write_compare_page",
    "ReportError",
    "SECTIONS",
    "histogram_percentile",
    "parse_block_groups",
    "plot_block_savings",
    "plot_norm_distributions",
    "plot_schedule_rates",
    "plot_similarity_heatmaps",
    "plot_similarity_trends",
    "plot_stability",
    "report_html",
    "resolve_block_groups",
    "write_report",
]
