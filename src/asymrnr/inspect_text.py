"""Plain-text summaries of schedules (what ``asymrnr inspect`` prints). Torch-free.

``schedule_summary(schedule)`` returns the text; ``schedule_warnings(schedule)`` returns only the
warnings, for callers (CLI, report page, tests) that act on them.
"""

from __future__ import annotations

import numpy as np

from .flops import FlopsReport, rate_ceiling, schedule_flops
from . import vocab

#: Below this predicted FLOPs speedup a schedule is reported as not worth running.
MIN_USEFUL_SPEEDUP = 1.02
NOT_FASTER = "this schedule will not make generation measurably faster"
FEATURE_LABELS = {"q": "Q", "kv": "K/V", "h": "H (SymRnR)"}
BLOCK_GROUPS = ("shallow", "intermediate", "deep")
NUM_STEP_RANGES = 5


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``parts`` contiguous, non-empty (start, stop) ranges."""
    parts = max(1, min(parts, n))
    return [(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(n), parts) if a.size]


def _tables(schedule) -> dict[str, np.ndarray]:
    return {f: np.asarray(schedule.rates[f], dtype=np.float64) for f in vocab.SCHEDULE_FEATURES}


def group_means(rates: np.ndarray, groups: int = 3, step_ranges: int = NUM_STEP_RANGES) -> tuple[list, list, np.ndarray]:
    """Mean rate per (block group, step range): ``(block ranges, step ranges, [G, R] means)``."""
    b_ranges = _ranges(rates.shape[0], groups)
    s_ranges = _ranges(rates.shape[1], step_ranges)
    means = np.array([[rates[b0:b1, s0:s1].mean() for s0, s1 in s_ranges] for b0, b1 in b_ranges])
    return b_ranges, s_ranges, means


def _warnings(schedule, report: FlopsReport, tables: dict) -> list[str]:
    out = []
    if not any(float(t.max(initial=0.0)) > 0.0 for t in tables.values()):
        out.append(f"the schedule reduces nothing (every rate is 0): {NOT_FASTER}")
    elif report.predicted_speedup < MIN_USEFUL_SPEEDUP:
        slower = " (matching and gather overheads exceed the savings: it is slower)" if report.predicted_speedup < 1.0 else ""
        out.append(
            f"predicted FLOPs speedup {report.predicted_speedup:.3f}x is under {MIN_USEFUL_SPEEDUP:.2f}x{slower}: "
            f"{NOT_FASTER}; raise the rates or the share of reduced cells"
        )
    planner = schedule.provenance.get("planner") if isinstance(schedule.provenance, dict) else None
    if isinstance(planner, dict) and planner.get("target_speedup") and planner.get("reached") is False:
        out.append(
            f"planned for a target speedup of {planner['target_speedup']:.3f}x, which was not reached "
            f"(predicted {report.predicted_speedup:.3f}x)"
        )
    return out


def schedule_warnings(schedule) -> list[str]:
    """Problems worth telling the user about (empty when none)."""
    return _warnings(schedule, schedule_flops(schedule), _tables(schedule))


def _fmt_flops(x: float) -> str:
    return f"{x / 1e15:.3f}e15" if x >= 1e13 else f"{x:.4g}"


def _provenance_versions(prov: dict) -> str:
    """``asymrnr 0.1.0, torch 2.13.0, diffusers 0.42.1; model org/model-name (bfloat16); ...`` from the
    provenance keys that are present (empty when none is)."""
    parts = []
    tools = [f"{name} {prov[key]}" for name, key in (("asymrnr", "tool_version"), ("torch", "torch_version"),
                                                      ("diffusers", "diffusers_version")) if prov.get(key)]
    if tools:
        parts.append(", ".join(tools))
    if prov.get("model_id") or prov.get("dtype"):
        model = str(prov.get("model_id") or "unnamed model")
        parts.append(f"model {model}" + (f" ({prov['dtype']})" if prov.get("dtype") else ""))
    upgraded = prov.get("upgraded_from")
    if isinstance(upgraded, dict) and upgraded.get("version") is not None:
        was = f", tagged {upgraded['tag']} there" if upgraded.get("tag") else ""
        parts.append(f"read from a version {upgraded['version']} file{was}")
    return "; ".join(parts)


def schedule_summary(schedule) -> str:
    """A human-readable summary: identity, model, sampler, matching, rates by block group and step range,
    predicted FLOPs and speedup, and warnings."""
    m, smp, mt = schedule.model, schedule.sampler, schedule.matching
    tables = _tables(schedule)
    report = schedule_flops(schedule)
    grid = tuple(m.latent_grid)
    n_video = int(np.prod(grid))
    lines = [f"schedule {schedule.tag}"]
    lines.append(
        f"  model     {m.transformer_class}: {m.num_blocks} blocks, {m.num_heads} heads x {m.head_dim}, token grid "
        f"{'x'.join(map(str, grid))} ({n_video} video tokens), text {m.text_len}, ffn {m.ffn_dim}, "
        f"RoPE {'yes' if m.rope else 'no'}"
    )
    ts = ""
    if smp.timesteps:
        ts = f", timesteps {smp.timesteps[0]:g} .. {smp.timesteps[-1]:g}"
    lines.append(f"  sampler   {smp.scheduler_class or 'unspecified'}, {smp.num_steps} steps{ts}")
    lines.append(
        f"  matching  {mt.metric}, stride {tuple(mt.stride)}, cache {mt.cache_steps} steps, {mt.reduce_op}, "
        f"{mt.granularity}, seed {mt.seed}; rate ceiling {rate_ceiling(grid, mt.stride):.3f}"
    )
    prov = schedule.provenance if isinstance(schedule.provenance, dict) else {}
    origin = [str(prov.get("source", "unknown source"))]
    planner = prov.get("planner")
    if isinstance(planner, dict):
        if planner.get("preset"):
            origin.append(f"preset {planner['preset']}")
        if planner.get("target_speedup"):
            origin.append(f"target {planner['target_speedup']:.3f}x")
        if planner.get("strength") is not None:
            origin.append(f"strength {planner['strength']:.3f}")
    if prov.get("created"):
        origin.append(f"created {prov['created']}")
    lines.append(f"  origin    {', '.join(origin)}")
    versions = _provenance_versions(prov)
    if versions:
        lines.append(f"  versions  {versions}")
    if prov.get("notes"):
        lines.append(f"  notes     {prov['notes']}")

    lines.append("")
    lines.append("mean rate over all (block, step) cells, share of cells reduced, largest rate:")
    for f, t in tables.items():
        lines.append(
            f"  {FEATURE_LABELS[f]:<11} {t.mean():.3f}   {np.mean(t > 0):5.0%}   max {t.max(initial=0.0):.3f}"
        )

    for f, t in tables.items():
        if not t.any():
            continue
        b_ranges, s_ranges, means = group_means(t)
        names = BLOCK_GROUPS if len(b_ranges) == 3 else tuple(f"group {i}" for i in range(len(b_ranges)))
        header_cells = [f"{s0}-{s1 - 1}" if s1 - s0 > 1 else f"{s0}" for s0, s1 in s_ranges]
        label_w = max(len(f"{n} ({b0}-{b1 - 1})") for n, (b0, b1) in zip(names, b_ranges)) + 2
        lines.append("")
        lines.append(f"{FEATURE_LABELS[f]} mean rate by block group (rows) and steps (columns):")
        lines.append(" " * (label_w + 2) + "".join(f"{h:>8}" for h in header_cells))
        for name, (b0, b1), row in zip(names, b_ranges, means):
            label = f"{name} ({b0}-{b1 - 1})"
            lines.append(f"  {label:<{label_w}}" + "".join(f"{v:8.3f}" for v in row))

    lines.append("")
    saved = report.saved_fraction
    lines.append(
        f"FLOPs per generation ({smp.num_steps} steps, batch {report.batch} with CFG): dense "
        f"{_fmt_flops(report.dense_total)}, scheduled {_fmt_flops(report.reduced_total)} ({-saved:+.1%})"
    )
    lines.append(
        f"predicted speedup {report.predicted_speedup:.3f}x (FLOPs ratio; measured latency gains are smaller); "
        f"attention is {report.attention_share:.1%} of the dense FLOPs, matching costs "
        f"{report.components_reduced['matching'] / report.dense_total:.2%} ({report.matchings} matchings)"
    )
    warns = _warnings(schedule, report, tables)
    if warns:
        lines.append("")
        lines.append("WARNINGS:")
        lines.extend(f"  - {w}" for w in warns)
    return "\n".join(lines)


__all__ = ["MIN_USEFUL_SPEEDUP", "NOT_FASTER", "group_means", "schedule_summary", "schedule_warnings"]
