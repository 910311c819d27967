"""The ``compare.html`` page of ``asymrnr compare``: measured against predicted speedup, quality per prompt,
frame strips dense vs reduced. One self-contained offline file (the report's page machinery: plotly.js and
the images inlined).

Input is plain data: a :class:`asymrnr.compare.CompareResult` and the strips of a
:class:`asymrnr.compare.SampleWriter` (``{variant name: {prompt index: {"frames", "dense", "reduced"}}}``
with PNG data URIs).
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .._io import atomic_write_text
from ._common import GROUP_COLORS, base_layout
from ._page import _figure_html, _guard, _notes_html, _section, page_html

logger = logging.getLogger(__name__)

#: Section ids, in page order, with their headings.
COMPARE_SECTIONS = (
    ("compare-summary", "Summary"),
    ("compare-speed", "Measured and predicted speedup"),
    ("compare-quality", "Quality against dense, per prompt"),
    ("compare-frames", "Frames: dense and reduced"),
)

EXTRA_CSS = """
p.verdict { font-weight: 600; margin: 6px 0; }
p.verdict.below { background: #fdecea; border-left: 4px solid #d9534f; padding: 6px 10px; }
p.verdict.meets { background: #e8f5e9; border-left: 4px solid #4caf50; padding: 6px 10px; }
.strip { display: grid; grid-auto-flow: column; gap: 4px; justify-content: start; align-items: center; }
.strip img { image-rendering: pixelated; border: 1px solid var(--line); }
.strip span { color: var(--muted); font-size: 12px; text-align: center; }
"""

LEADS = {
    "compare-speed": (
        "Speedup = dense time / variant time, summed over every prompt and repeat (dense and variant runs were "
        "interleaved, so drift affects both). 'Transformer' times only the transformer's forward calls; "
        "'generation' the whole pipeline call (text encoder and VAE included). The prediction is the FLOPs "
        "model's ratio for the transformer (asymrnr.flops), which ignores memory traffic and kernel overheads."
    ),
    "compare-quality": (
        "PSNR and SSIM of the decoded frames against the dense video of the same prompt and seed (mean over "
        "frames; the dots are the frames), and the cosine similarity of the final latents. Identical videos have "
        "an infinite PSNR, drawn at the top of the axis and marked."
    ),
    "compare-frames": "Evenly spaced frames of the first prompts: dense on the top row, the variant below.",
}


def _fmt(x: Any, spec: str = ".3f", unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "\u221e" + unit
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:{spec}}{unit}"


def _bytes(n: Any) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _summary(result: Any) -> str:
    rows = []
    for v in result.variants:
        s = result.summary(v)
        cls = "below" if s["shortfall"] is not None else "meets"
        rows.append(f'<p class="verdict {cls}">{html.escape(v.name)}: {html.escape(s["verdict"])}.</p>')
        if v.kind == "cache" and s["identical_frames"]:
            rows.append(_notes_html([f"{v.name} gave the dense video exactly: the cache skipped nothing at this "
                                     "threshold; try a higher one."]))
    head = ("<tr><th>variant</th><th>predicted</th><th>transformer</th><th>transformer CPU</th><th>generation</th>"
            "<th>PSNR mean / min</th><th>SSIM</th><th>latent cos</th><th>latent rel. L2</th><th>peak memory</th></tr>")
    body = []
    dense_peak = max((t.peak_memory_bytes for row in result.dense.timings for t in row
                      if t.peak_memory_bytes is not None), default=None)
    body.append(f"<tr><td>dense</td><td>1.000x</td><td>1.000x</td><td>1.000x</td><td>1.000x</td><td></td><td></td>"
                f"<td></td><td></td><td>{_bytes(dense_peak)}</td></tr>")
    for v in result.variants:
        s = result.summary(v)
        cells = [v.name, _fmt(s["predicted_speedup"], ".3f", "x"), _fmt(s["transformer_speedup"], ".3f", "x"),
                 _fmt(s["transformer_cpu_speedup"], ".3f", "x"), _fmt(s["generation_speedup"], ".3f", "x"),
                 f'{_fmt(s["mean_psnr_db"], ".2f")} / {_fmt(s["min_psnr_db"], ".2f")} dB', _fmt(s["mean_ssim"], ".4f"),
                 _fmt(s["mean_latent_cosine"], ".5f"), _fmt(s["mean_latent_rel_l2"], ".4f"),
                 _bytes(s["peak_memory_bytes"])]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    memory = {"cuda_max_memory_allocated": "CUDA max_memory_allocated during the call",
              "process_peak_rss": "peak resident memory of the whole process during the call (weights included)",
              None: "not measured on this platform (n/a)"}.get(result.memory, str(result.memory))
    timer = ("CUDA events around every transformer forward" if result.timer == "cuda-events" else
             "perf_counter (wall) and process_time (CPU seconds of all threads) around every transformer forward")
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    info = result.info or {}
    facts = [
        ("model", info.get("model", info.get("pipeline_class", "?"))),
        ("device", f"{result.device}" + (f" ({info['gpu']})" if info.get("gpu") else "")
         + (f", {info['threads']} CPU thread(s)" if info.get("threads") else "")),
        ("prompts", f"{len(result.prompts)} (seeds {', '.join(map(str, result.seeds))})"),
        ("repeats", f"{result.repeats} timed per prompt and configuration"
                    + (", after one warm-up generation each (not counted)" if result.warmup else ", no warm-up")),
        ("settings", settings),
        ("timing", timer),
        ("peak memory", memory),
    ]
    kv = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    prompts = "".join(f"<tr><td>{i}</td><td>{s}</td><td>{html.escape(p)}</td></tr>"
                      for i, (p, s) in enumerate(zip(result.prompts, result.seeds)))
    return ("".join(rows) + f'<table class="runs">{head}{"".join(body)}</table>'
            f'<table class="kv">{kv}</table><details><summary>Prompts</summary><table class="runs">'
            f"<tr><th>#</th><th>seed</th><th>prompt</th></tr>{prompts}</table></details>")


def _speed_figure(result: Any) -> go.Figure:
    names = [v.name for v in result.variants]
    summaries = [result.summary(v) for v in result.variants]
    fig = go.Figure()
    series = [("predicted (FLOPs)", "predicted_speedup", "#999999"),
              ("transformer (measured)", "transformer_speedup", "#2b7bba"),
              ("generation (measured)", "generation_speedup", "#f28e2b")]
    if result.timer == "cpu":
        series.insert(2, ("transformer CPU time (measured)", "transformer_cpu_speedup", "#76b7b2"))
    for label, key, color in series:
        ys = [s[key] for s in summaries]
        fig.add_bar(name=label, x=names, y=ys, marker_color=color,
                    text=[_fmt(y, ".3f", "x") for y in ys], textposition="outside")
    for v in result.variants:  # the paired ratios of every prompt and repeat
        d = result.dense
        pairs = [a.transformer_s / b.transformer_s for ra, rb in zip(d.timings, v.timings) for a, b in zip(ra, rb)
                 if b.transformer_s > 0]
        fig.add_scatter(x=[v.name] * len(pairs), y=pairs, mode="markers", name="transformer, per run",
                        marker=dict(color="#1b4f72", size=6, symbol="diamond"), showlegend=v is result.variants[0])
    fig.add_hline(y=1.0, line_dash="dot", line_color="#666")
    fig.update_layout(**base_layout(barmode="group", height=420, margin=dict(l=60, r=30, t=50, b=60),
                                    legend=dict(orientation="h", y=1.12)))
    fig.update_yaxes(title_text="speedup over dense (x)", showgrid=True, gridcolor="#eee", rangemode="tozero")
    return fig


def _quality_figure(result: Any) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("PSNR (dB)", "SSIM", "latent cosine similarity"))
    prompts = [f"prompt {i}" for i in range(len(result.prompts))]
    finite = [x for v in result.variants for q in v.quality for x in q.psnr_db if math.isfinite(x)]
    top = (max(finite) if finite else 40.0) + 5.0
    for n, v in enumerate(result.variants):
        color = GROUP_COLORS[n % len(GROUP_COLORS)]
        means = [q.mean_psnr for q in v.quality]
        shown = [m if math.isfinite(m) else top for m in means]
        fig.add_scatter(row=1, col=1, x=prompts, y=shown, mode="lines+markers+text", name=v.name, legendgroup=v.name,
                        line=dict(color=color), text=["identical (\u221e)" if not math.isfinite(m) else "" for m in means],
                        textposition="top center",
                        hovertext=[f"{v.name}, {p}: mean {_fmt(m, '.2f')} dB, min {_fmt(q.min_psnr, '.2f')} dB"
                                   for p, m, q in zip(prompts, means, v.quality)], hoverinfo="text")
        xs, ys = [], []
        for p, q in zip(prompts, v.quality):
            for x in q.psnr_db:
                xs.append(p)
                ys.append(x if math.isfinite(x) else top)
        fig.add_scatter(row=1, col=1, x=xs, y=ys, mode="markers", legendgroup=v.name, showlegend=False,
                        marker=dict(color=color, size=4, opacity=0.5), hoverinfo="skip")
        fig.add_scatter(row=1, col=2, x=prompts, y=[q.mean_ssim for q in v.quality], mode="lines+markers",
                        legendgroup=v.name, showlegend=False, line=dict(color=color))
        fig.add_scatter(row=1, col=3, x=prompts, y=[q.latent_cosine for q in v.quality], mode="lines+markers",
                        legendgroup=v.name, showlegend=False, line=dict(color=color))
    fig.update_layout(**base_layout(height=420, margin=dict(l=60, r=30, t=50, b=60),
                                    legend=dict(orientation="h", y=-0.2)))
    fig.update_yaxes(showgrid=True, gridcolor="#eee")
    return fig


def _frames(result: Any, strips: Mapping | None) -> str:
    if not strips:
        return _notes_html(["No frames were kept (compare ran without a SampleWriter)."])
    out = []
    for v in result.variants:
        for prompt, strip in sorted((strips.get(v.name) or {}).items()):
            label = html.escape(result.prompts[prompt]) if prompt < len(result.prompts) else ""
            # one grid column per frame, filled top to bottom: frame number, dense, reduced
            cells = "".join(
                f'<span>frame {k}</span><img alt="dense frame {k}" src="{d}">'
                f'<img alt="{html.escape(v.name)} frame {k}" src="{r}">'
                for k, d, r in zip(strip["frames"], strip["dense"], strip["reduced"]))
            out.append(f"<h3>{html.escape(v.name)}, prompt {prompt}: {label}</h3>"
                       f'<div class="strip" style="grid-template-rows: auto auto auto">{cells}</div>')
    return "".join(out) or _notes_html(["No frames were kept."])


def compare_html(result: Any, strips: Mapping | None = None, *, title: str | None = None) -> str:
    """The whole comparison page as one self-contained HTML string (see :func:`write_compare_page`)."""
    model = (result.info or {}).get("model") or (result.info or {}).get("pipeline_class", "model")
    title = title or f"AsymRnR comparison: {model}"
    builders = {
        "compare-summary": lambda: _summary(result),
        "compare-speed": lambda: f'<div class="figure">{_figure_html(_speed_figure(result), "fig-compare-speed")}</div>',
        "compare-quality": lambda: f'<div class="figure">{_figure_html(_quality_figure(result), "fig-compare-quality")}</div>',
        "compare-frames": lambda: _frames(result, strips),
    }
    sections = [_section(sid, i, heading, _guard(sid, builders[sid]), LEADS.get(sid))
                for i, (sid, heading) in enumerate(COMPARE_SECTIONS, start=1)]
    return page_html(title, COMPARE_SECTIONS, sections, extra_css=EXTRA_CSS)


def write_compare_page(result: Any, path, strips: Mapping | None = None, *, title: str | None = None) -> Path:
    """Write ``compare.html`` atomically: the summary with a plain verdict per variant (it says when the
    measured speedup is below the prediction, and by how much), the speedup and quality figures, and the
    frame strips (PNG data URIs). Returns the path."""
    text = compare_html(result, strips, title=title)
    path = atomic_write_text(path, [text])
    logger.info("wrote comparison page %s (%.1f MB)", path, len(text.encode("utf-8")) / 1e6)
    return path
