"""Section 1: what was profiled (model, generation settings, runs, prompts) and the schedule's headline.

The summary is a table, not a figure: ``_get_summary_info`` returns rows of plain strings and
``_summary_html`` renders them (escaped).
"""

from __future__ import annotations

import html
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ._common import FEATURE_LABELS, block_kinds_text, empty_reason, expert_spans, expert_spans_text, timesteps_differ
from .. import vocab


@dataclass
class SummaryInfo:
    rows: list = field(default_factory=list)  # (label, text)
    runs: list = field(default_factory=list)  # (run index, prompt, seed)
    schedule_rows: list = field(default_factory=list)  # (label, text); empty without a schedule
    notes: list = field(default_factory=list)
    schedule_notes: list = field(default_factory=list)


def _fmt(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):g}"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            return "\u00d7".join(str(int(v)) for v in value) if 1 < len(value) <= 4 else ", ".join(map(str, value))
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _describe(d: Mapping, parts: list[tuple[str, str]]) -> str:
    """Known keys first with their phrasing (``{}`` is the value), then every other key as ``key value``."""
    d = dict(d or {})
    out = []
    for key, phrase in parts:
        if key in d:
            out.append(phrase.format(_fmt(d.pop(key))))
    out += [f"{k} {_fmt(v)}" for k, v in d.items() if v not in (None, "", [], {})]
    return " \u00b7 ".join(out) if out else "\u2013"


def _flops_text(x: float) -> str:
    return f"{x / 1e15:.3f} \u00d7 10\u00b9\u2075"


def _get_summary_info(stats: Any, schedule: Any = None, flops: tuple | None = None) -> SummaryInfo:
    info = SummaryInfo()
    model = dict(stats.model or {})
    kinds = block_kinds_text(model)
    model.pop("block_kinds", None)  # shown as its own row, by span
    if "rope" in model:
        model["rope"] = "RoPE" if model["rope"] else "no RoPE"
    info.rows.append(("model", _describe(model, [
        ("transformer_class", "{}"), ("num_blocks", "{} blocks"), ("num_heads", "{} heads"), ("head_dim", "head dim {}"),
        ("latent_grid", "latent token grid {}"), ("text_len", "{} text tokens"), ("rope", "{}"),
    ])))
    if kinds:
        info.rows.append(("block kinds", kinds))
    gen = dict(stats.generation or {})
    if "height" in gen and "width" in gen:
        gen["size"] = f"{_fmt(gen.pop('height'))}\u00d7{_fmt(gen.pop('width'))} px"
    info.rows.append(("generation", _describe(gen, [
        ("size", "{}"), ("num_frames", "{} frames"), ("num_steps", "{} steps"), ("guidance_scale", "guidance {}"),
        ("scheduler_class", "{}"),
    ])))
    info.rows.append(("matching (profiled)", _describe(stats.matching, [("stride", "stride {}"), ("seed", "seed {}"),
                                                                         ("granularity", "{} granularity")])))
    info.rows.append(("branches", ", ".join(stats.branches) or "\u2013"))
    info.rows.append(("features, metrics", f"{', '.join(FEATURE_LABELS.get(f, f) for f in stats.features)}; "
                                           f"{', '.join(stats.metrics)}"))
    info.rows.append(("runs", f"{stats.num_runs} ({len(set(stats.prompts))} distinct prompts)"))
    if empty_reason(stats) is None:
        info.rows.append(("blocks \u00d7 steps", f"{stats.num_blocks} \u00d7 {stats.num_steps}"))
    if stats.profiled_schedule:
        info.rows.append(("profiled with schedule", str(stats.profiled_schedule)))
    info.rows.append(("statistics", f"format v{stats.format_version}, asymrnr {stats.tool_version}"
                                    + (f", {stats.path}" if getattr(stats, "path", None) else "")))
    seeds = np.asarray(stats.seeds).tolist() if stats.seeds is not None else []
    for r, prompt in enumerate(stats.prompts):
        info.runs.append((r, str(prompt), seeds[r] if r < len(seeds) else None))
    reason = empty_reason(stats)
    if reason is not None:
        info.notes.append(f"Nothing to plot: {reason}.")
    elif timesteps_differ(stats):
        info.notes.append("The runs do not share the same timesteps; per-step values average different timesteps.")
    if stats.profiled_schedule:
        info.notes.append(
            f"The statistics were recorded while schedule {stats.profiled_schedule} was active: they describe the "
            "reduced model, not the dense one."
        )
    if schedule is None:
        info.schedule_notes.append("No schedule given: pass one (--schedule schedule.json) to see its rates and predicted savings.")
        return info
    if flops is None:
        from ._schedule import compute_flops

        flops = compute_flops(schedule)
    fl, err = flops
    m = schedule.matching
    info.schedule_rows += [
        ("tag", schedule.tag),
        ("made for", f"{schedule.model.transformer_class} \u00b7 {schedule.num_blocks} blocks \u00b7 latent token grid "
                     f"{_fmt(schedule.model.latent_grid)} \u00b7 {schedule.num_steps} steps"
                     + (f" \u00b7 {schedule.sampler.scheduler_class}" if schedule.sampler.scheduler_class else "")
                     + (f" \u00b7 {block_kinds_text(schedule.model)}" if block_kinds_text(schedule.model) else "")),
        ("matching", f"{m.metric} \u00b7 stride {_fmt(m.stride)} \u00b7 cache every {m.cache_steps} steps \u00b7 "
                     f"{m.reduce_op} \u00b7 {m.granularity} matching \u00b7 partition {m.partition} \u00b7 seed {m.seed}"),
        ("mean rates", " \u00b7 ".join(f"{FEATURE_LABELS[f]} {schedule.mean_rate(f):.3f}" for f in vocab.SCHEDULE_FEATURES)),
    ]
    experts = expert_spans_text(expert_spans(schedule.sampler.transformers, schedule.sampler.step_transformer))
    if experts:
        info.schedule_rows += [("transformers", experts)]
    if fl is not None:
        info.schedule_rows += [
            ("predicted FLOPs", f"{_flops_text(fl.reduced_total)} (dense {_flops_text(fl.dense_total)}; batch {fl.batch}, "
                                f"{fl.saved_fraction:.1%} saved)"),
            ("predicted speedup", f"{fl.predicted_speedup:.3f}\u00d7 (FLOPs ratio, not a measured latency)"),
        ]
    else:
        info.schedule_notes.append(f"Predicted FLOPs not available: {err}.")
    prov = dict(schedule.provenance or {})
    if prov:
        info.schedule_rows.append(("provenance", _describe(prov, [("created", "created {}"), ("tool_version", "asymrnr {}")])))
    if empty_reason(stats) is None and (schedule.num_blocks, schedule.num_steps) != (stats.num_blocks, stats.num_steps):
        info.schedule_notes.append(
            f"The schedule ({schedule.num_blocks} blocks \u00d7 {schedule.num_steps} steps) does not match the statistics "
            f"({stats.num_blocks} \u00d7 {stats.num_steps})."
        )
    if stats.profiled_schedule and stats.profiled_schedule == schedule.tag:
        info.schedule_notes.append("This is the schedule that was active while profiling.")
    return info


def _table(rows: list) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _summary_html(info: SummaryInfo) -> str:
    parts = [_table(info.rows)]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in info.notes]
    if info.runs:
        rows = "".join(
            f"<tr><td>{r}</td><td>{html.escape(p)}</td><td>{html.escape(_fmt(s))}</td></tr>" for r, p, s in info.runs
        )
        parts.append(f'<details{" open" if len(info.runs) <= 8 else ""}><summary>prompts ({len(info.runs)} runs)</summary>'
                     f'<table class="runs"><tr><th>run</th><th>prompt</th><th>seed</th></tr>{rows}</table></details>')
    parts.append("<h3>Schedule</h3>")
    if info.schedule_rows:
        parts.append(_table(info.schedule_rows))
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in info.schedule_notes]
    return "\n".join(parts)
