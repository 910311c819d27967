#!/usr/bin/env python
"""Quality of AsymRnR schedules on the trained micro models, at matched predicted FLOPs, with intervals (CPU).

    python benchmarks/quality/run.py --variant micro-cogvideox --seeds 4 --out benchmarks/quality/results/micro-cogvideox
    python benchmarks/quality/run.py --variant micro-cogvideox-large --seeds 4 --timing 3 \\
        --budgets 1.1,1.2,1.3,1.4 --out benchmarks/quality/results/micro-cogvideox-large

For the 32 held-out prompts (never trained on) x ``--seeds`` seeds (``1000 + 100 r + i``), every
configuration generates the same videos (one batched pipeline call per seed, CFG on, the preset's steps and
guidance) and is scored against the dense generation of the same prompt and seed: PSNR and SSIM (mean over
frames), and the analytic checker (colour and motion right). Means come with 95 % bootstrap intervals over
prompts, and the differences the paper claims (calibrated vs uniform AsymRnR vs ToMe at each budget, per
head vs joint, redrawn vs fixed partitions) with paired intervals (`stats.py`).

Configurations (`configs.py`), each solved by bisection to every predicted FLOPs budget of ``--budgets``:
the calibrated schedule (the planner's default policy; profiled on ``--calib-prompts`` *training* prompts),
uniform AsymRnR (q = kv), ToMe / SymRnR (uniform h), the calibrated schedule with joint matching and with a
fixed partition; paper Table 2 (Q only, V only; uniform and scheduled); Table 4 (cache steps 1-5) and
Table 5 (metric, reduction op) at the middle budget. Also the predicted saving of attention FLOPs.
``--groups ...,caches`` adds diffusers' FirstBlockCache alone, calibrated AsymRnR alone and both at matched
cost, in two phases (the cache's cost is known only once it ran; ``caches.py``); its rows record both the
predicted and the realised FLOPs speedup.

``--timing R``: measured speed. Before each configuration, dense and the configuration generate the first
seed's batch alternately R times (paired: the CPU's speed drifts by tens of percent within minutes); the
measured speedup is the median of the R paired ratios of wall time.

Writes ``results.json`` (every video's scores), ``table.md``, ``figure.html`` (plotly, offline; plotly.js
beside it) and the calibration's ``stats.h5`` into ``--out``, and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import caches as K  # noqa: E402
import configs as C  # noqa: E402
import stats as S  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="micro-cogvideox")
    ap.add_argument("--model-path", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--calib-prompts", type=int, default=8)
    ap.add_argument("--budgets", default="1.03,1.06,1.09,1.12", help="predicted FLOPs speedups, comma-separated")
    ap.add_argument("--groups", default="main,table2,table4,table5")
    ap.add_argument("--only", default=None, help="run only configurations whose name contains one of these (comma)")
    ap.add_argument("--timing", type=int, default=0, help="paired timing repeats per configuration (0: none)")
    ap.add_argument("--batch", type=int, default=None, help="prompts per pipeline call (default: all)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import asymrnr
    from asymrnr.flops import schedule_flops
    from asymrnr.micro import data as D
    from asymrnr.micro.evaluate import checker_accuracy, generate, heldout_prompts, heldout_seeds
    from asymrnr.micro.model import VARIANTS, call_kwargs, default_weights_dir, load_micro_pipeline
    from asymrnr.micro.quality import psnr_frames, ssim_frames
    from asymrnr.profiler import load_stats

    spec = VARIANTS[args.variant]
    out = args.out or Path("benchmarks/quality/results") / args.variant
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_micro_pipeline(args.model_path or default_weights_dir(args.variant))
    pipe.set_progress_bar_config(disable=True)
    settings = call_kwargs(spec)
    steps = settings["num_inference_steps"]
    prompts = heldout_prompts(args.num_prompts)
    seed_sets = [heldout_seeds(len(prompts), r) for r in range(args.seeds)]
    budgets = [float(b) for b in args.budgets.split(",")]
    t_start = time.time()

    # ---- calibration on training prompts (never the held-out ones), one batched call
    train, _ = D.split_prompts()
    rng = np.random.default_rng(7)
    calib = [D.make_prompt(*train[i]) for i in rng.choice(len(train), args.calib_prompts, replace=False)]
    stats_path = out / "stats.h5"
    t0 = time.perf_counter()
    with asymrnr.profile(pipe, stats_path, mode="w"), torch.no_grad():
        pipe(calib, generator=[torch.Generator().manual_seed(i) for i in range(len(calib))], output_type="latent",
             **settings)
    profile_s = time.perf_counter() - t0
    stats = load_stats(stats_path)

    configs = C.build(pipe, stats, steps, budgets, set(args.groups.split(",")))
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        configs = [c for c in configs if c.name == "dense" or any(w in c.name for w in wanted)]
    print(f"{len(configs)} configurations; calibration {profile_s:.1f} s", flush=True)

    def run(config, seeds, recorder=None):
        if config.schedule is not None:
            asymrnr.apply(pipe, config.schedule)
        if config.cache is not None:
            pipe.transformer.enable_cache(config.cache)
        try:
            t = time.perf_counter()
            with recorder if recorder is not None else contextlib.nullcontext():
                videos = generate(pipe, prompts, seeds, settings, batch=args.batch)
            return videos, time.perf_counter() - t
        finally:
            if config.cache is not None:
                pipe.transformer.disable_cache()
            if config.schedule is not None:
                asymrnr.remove(pipe)

    from asymrnr import archs

    last_site = archs.adapter_for(pipe).sites(pipe.transformer)[-1].module

    dense_cfg = configs[0]
    reference = [run(dense_cfg, s)[0] for s in seed_sets]
    rows, scores = [], {}
    # Each finished configuration is appended to partial.jsonl, so that an interrupted run (or one that adds
    # groups) resumes: a configuration is skipped when a line with its name and schedule tag was written under
    # the same prompts, seeds and timing repeats.
    partial = out / "partial.jsonl"
    signature = {"variant": args.variant, "prompts": prompts, "seeds": seed_sets, "timing": args.timing,
                 "calibration_prompts": calib}
    done: dict[tuple, dict] = {}
    if partial.exists():
        for text in partial.read_text().splitlines():
            try:
                entry = json.loads(text)
            except json.JSONDecodeError:  # a line cut short by an interrupt
                continue
            if entry.get("signature") == signature:
                done[(entry["row"]["config"], entry["row"]["tag"])] = entry
        print(f"resuming: {len(done)} configuration(s) already in {partial}", flush=True)
    def evaluate(cfg):
        key = (cfg.name, None if cfg.schedule is None else cfg.schedule.tag)
        if key in done and cfg is not dense_cfg:
            rows.append(done[key]["row"])
            scores[cfg.name] = done[key]["scores"]
            print(line(rows[-1]) + "  (from partial.jsonl)", flush=True)
            return
        same = next((r for r in rows if cfg.schedule is not None and cfg.cache is None and r.get("cache") is None
                     and r["tag"] == cfg.schedule.tag), None)
        if same is not None:  # the same schedule under another name (e.g. Table 5's euclidean row): same videos
            rows.append({**same, "config": cfg.name, "group": cfg.group, "method": cfg.method, "budget": cfg.budget,
                         **cfg.extra})
            scores[cfg.name] = scores[same["config"]]
            print(line(rows[-1]) + f"  (same schedule as {same['config']})", flush=True)
            return
        psnr = np.zeros((len(prompts), args.seeds))
        ssim = np.zeros_like(psnr)
        correct = np.zeros_like(psnr)
        walls = []
        # with a step cache: which steps ran the whole transformer, for its realised FLOPs (caches.py)
        recorder = K.ComputedSteps(pipe.transformer, last_site, steps) if cfg.cache is not None else None
        for r, seeds in enumerate(seed_sets):
            videos, wall = (reference[r], float("nan")) if cfg is dense_cfg else run(cfg, seeds, recorder)
            walls.append(wall)
            psnr[:, r] = psnr_frames(videos, reference[r]).mean(-1)
            ssim[:, r] = ssim_frames(videos, reference[r]).mean(-1)
            correct[:, r] = [x["correct"] for x in checker_accuracy(videos, prompts)["readings"]]
        ratios = []
        for _ in range(args.timing if cfg is not dense_cfg else 0):
            _, td = run(dense_cfg, seed_sets[0])
            _, tc = run(cfg, seed_sets[0])
            ratios.append(td / tc)
        rep = schedule_flops(cfg.schedule) if cfg.schedule is not None else None
        row = {
            "config": cfg.name, "group": cfg.group, "method": cfg.method, "budget": cfg.budget,
            "reached": cfg.reached, "tag": None if cfg.schedule is None else cfg.schedule.tag,
            "predicted_speedup": 1.0 if rep is None else rep.predicted_speedup,
            "attention_saved": 0.0 if rep is None else 1 - rep.components_reduced["attention"] / rep.components_dense["attention"],
            "measured_speedup": float(np.median(ratios)) if ratios else None,
            "measured_ratios": ratios,
            "psnr": S.bootstrap_mean(np.minimum(psnr, 100.0)) if cfg is not dense_cfg else None,
            "ssim": S.bootstrap_mean(ssim),
            "accuracy": S.bootstrap_mean(correct),
            "wall_s": walls, **cfg.extra,
        }
        if cfg.schedule is not None:
            sch = cfg.schedule
            row.update(mean_q=sch.mean_rate("q"), mean_kv=sch.mean_rate("kv"), mean_h=sch.mean_rate("h"),
                       metric=sch.matching.metric, reduce_op=sch.matching.reduce_op,
                       cache_steps=sch.matching.cache_steps, granularity=sch.matching.granularity,
                       partition=sch.matching.partition)
        if cfg.group == "caches":
            # predicted: what the configuration was solved for (FBC alone: known only once run, so its realised
            # cost); realised: the FLOPs of the steps that actually ran (FBC skips decided during generation)
            computed = recorder.fraction() if recorder is not None else None
            flops_of = cfg.schedule if cfg.schedule is not None else dense_cost_schedule
            realised = K.speedup(flops_of, computed, dense_cost_schedule)
            row.update(computed_steps=computed, realised_speedup=realised,
                       skipped_steps=None if computed is None else float(steps - sum(computed)))
            if cfg.schedule is None:
                row["predicted_speedup"] = realised
            elif "combined_predicted_speedup" in cfg.extra:
                row["predicted_speedup"] = cfg.extra["combined_predicted_speedup"]
        rows.append(row)
        scores[cfg.name] = {"psnr": psnr.tolist(), "ssim": ssim.tolist(), "correct": correct.tolist()}
        print(line(row), flush=True)
        if cfg is not dense_cfg:
            with partial.open("a") as f:
                f.write(json.dumps({"signature": signature, "row": row, "scores": scores[cfg.name]}) + "\n")

    groups = set(args.groups.split(","))
    dense_cost_schedule = C.dense_like(C.calibrated(stats, 1.05)[0]) if "caches" in groups else None
    for cfg in configs:
        evaluate(cfg)
    if "caches" in groups:  # phase 2: solved to the cost the FBC rows realised
        followups = C.cache_followups(stats, rows)
        if args.only:
            followups = [c for c in followups if any(w in c.name for w in wanted)]
        print(f"{len(followups)} configurations matched to FirstBlockCache's realised cost", flush=True)
        for cfg in followups:
            evaluate(cfg)

    comparisons = compare(rows, scores, budgets)
    command = "python benchmarks/quality/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"{args.variant}: {len(prompts)} held-out prompts x {args.seeds} seeds, {steps} DPM steps, guidance "
        f"{settings['guidance_scale']}, {spec.height}x{spec.width} px, {spec.num_frames} frames; CPU, "
        f"{args.threads} thread(s); calibration: {len(calib)} training prompts ({profile_s:.1f} s); "
        f"wall time {(time.time() - t_start) / 60:.1f} min"
    )
    text = (f"Command: `{command}`\n\n{header}\n\n{table(rows)}\n\n{comparison_table(comparisons)}\n"
            f"{cache_table(rows, steps)}")
    print("\n" + text)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(
        {"command": command, "header": header, "prompts": prompts, "seeds": seed_sets, "calibration_prompts": calib,
         "settings": settings, "rows": rows, "scores": scores, "comparisons": comparisons}, indent=1) + "\n")
    figure(rows, out / "figure.html", args.variant)
    return 0


def line(r: dict) -> str:
    psnr = "ref" if r["psnr"] is None else S.fmt(r["psnr"])
    meas = "" if r["measured_speedup"] is None else f"  measured {r['measured_speedup']:.3f}x"
    return (f"{r['config']:38s} pred {r['predicted_speedup']:.3f}x{meas}  PSNR {psnr}  SSIM {S.fmt(r['ssim'], 4)}  "
            f"acc {S.fmt(r['accuracy'], 1, 100)}%")


def table(rows: list[dict]) -> str:
    out = ["| configuration | mean q / kv / h | predicted speedup | attention FLOPs saved | measured speedup | "
           "PSNR (dB) [95% CI] | SSIM [95% CI] | checker acc. % [95% CI] |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rates = "-" if "mean_q" not in r else f"{r['mean_q']:.2f} / {r['mean_kv']:.2f} / {r['mean_h']:.2f}"
        psnr = "ref" if r["psnr"] is None else S.fmt(r["psnr"])
        meas = "-" if r["measured_speedup"] is None else f"{r['measured_speedup']:.3f}x"
        miss = "" if r["reached"] else " (budget not reached)"
        out.append(f"| {r['config']}{miss} | {rates} | {r['predicted_speedup']:.3f}x | {100 * r['attention_saved']:.0f}% | "
                   f"{meas} | {psnr} | {S.fmt(r['ssim'], 4)} | {S.fmt(r['accuracy'], 1, 100)} |")
    return "\n".join(out)


def cache_table(rows: list[dict], steps: int) -> str:
    """The caches group: FirstBlockCache alone, calibrated AsymRnR alone and both, predicted and realised cost."""
    rows = [r for r in rows if r["group"] == "caches"]
    if not rows:
        return ""
    out = ["", "Caches group (FirstBlockCache = FBC; predicted: the cost a row was solved for, realised: the FLOPs of "
           "the steps that ran; FBC alone is known only once run, so its two agree):", "",
           "| configuration | matched to | FBC steps computed | mean q / kv | predicted speedup | realised speedup | "
           "PSNR (dB) [95% CI] | SSIM [95% CI] | checker acc. % [95% CI] |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        computed = "-" if r.get("computed_steps") is None else f"{sum(r['computed_steps']):.1f} / {steps}"
        rates = "-" if "mean_q" not in r else f"{r['mean_q']:.2f} / {r['mean_kv']:.2f}"
        miss = "" if r["reached"] else " (budget not reached)"
        out.append(f"| {r['config']}{miss} | {r.get('matched_to', '-')} | {computed} | {rates} | {r['predicted_speedup']:.3f}x | "
                   f"{r['realised_speedup']:.3f}x | {S.fmt(r['psnr'])} | {S.fmt(r['ssim'], 4)} | "
                   f"{S.fmt(r['accuracy'], 1, 100)} |")
    return "\n".join(out) + "\n"


#: (a, b) pairs compared at every budget: the paper's claims and our defaults.
PAIRS = (("calibrated", "uniform q=kv"), ("calibrated", "ToMe h"), ("calibrated", "calibrated joint"),
         ("calibrated", "calibrated fixed partition"), ("T2 Q schedule", "T2 Q uniform"),
         ("T2 V schedule", "T2 V uniform"))


def compare(rows: list[dict], scores: dict, budgets: list[float]) -> list[dict]:
    out = []
    names = {r["config"] for r in rows}
    for b in budgets:
        for a, c in PAIRS:
            na, nc = f"{a} @{b:g}", f"{c} @{b:g}"
            if na not in names or nc not in names:
                continue
            entry = {"budget": b, "a": na, "b": nc}
            for metric in ("psnr", "ssim", "correct"):
                entry[metric] = S.bootstrap_diff(np.minimum(np.asarray(scores[na][metric]), 100.0),
                                                 np.minimum(np.asarray(scores[nc][metric]), 100.0))
            out.append(entry)
    return out


def comparison_table(comparisons: list[dict]) -> str:
    if not comparisons:
        return ""
    out = ["Paired differences (a - b) over prompts, 95 % bootstrap intervals; * = significant (interval excludes 0):",
           "", "| budget | a | b | PSNR diff (dB) | SSIM diff | accuracy diff (points) |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        cells = []
        for metric, digits, scale in (("psnr", 2, 1), ("ssim", 4, 1), ("correct", 1, 100)):
            d, lo, hi, sig = c[metric]
            cells.append(f"{d * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{' *' if sig else ''}")
        out.append(f"| {c['budget']:g}x | {c['a'].rsplit(' @', 1)[0]} | {c['b'].rsplit(' @', 1)[0]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def figure(rows: list[dict], path: Path, variant: str) -> None:
    """PSNR and checker accuracy against predicted speedup, one line per method, with 95 % intervals."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("PSNR vs dense (dB)", "checker accuracy (%)"))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["group"] in ("main", "table2"))
               if m != "dense"]
    for i, m in enumerate(methods):
        pts = sorted((r for r in rows if r["method"] == m and r["group"] in ("main", "table2")),
                     key=lambda r: r["predicted_speedup"])
        x = [r["predicted_speedup"] for r in pts]
        for col, key, scale in ((1, "psnr", 1.0), (2, "accuracy", 100.0)):
            y = [r[key][0] * scale for r in pts]
            err_hi = [(r[key][2] - r[key][0]) * scale for r in pts]
            err_lo = [(r[key][0] - r[key][1]) * scale for r in pts]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=m, legendgroup=m, showlegend=col == 1,
                                     error_y=dict(type="data", symmetric=False, array=err_hi, arrayminus=err_lo)),
                          row=1, col=col)
    dense = next(r for r in rows if r["config"] == "dense")
    fig.add_hline(y=dense["accuracy"][0] * 100, line_dash="dot", annotation_text="dense", row=1, col=2)
    fig.update_xaxes(title_text="predicted FLOPs speedup")
    fig.update_layout(title=f"AsymRnR on {variant}: quality at matched predicted FLOPs (95 % bootstrap intervals "
                            "over prompts)", height=520, width=1200)
    fig.write_html(path, include_plotlyjs="directory", full_html=True)


if __name__ == "__main__":
    raise SystemExit(main())
