#!/usr/bin/env python
"""Quality benchmark of AsymRnR schedules on the trained micro-cogvideox model (CPU).

    python benchmarks/quality/run.py --threads 2 --out benchmarks/quality/results

For 32 held-out prompts (never trained on) and fixed seeds (1000 + i), every configuration generates the
same 32 videos (one batched pipeline call, CFG on, the preset's steps and guidance) and is compared with the
unaccelerated (dense) generation: per-frame PSNR and SSIM (mean over frames and prompts), the analytic
checker's accuracy (colour and trajectory right), the measured wall-time speed ratio against dense and the
FLOPs-predicted speedup of :func:`asymrnr.flops.schedule_flops`.

Configurations: dense; the calibrated schedules ``base`` and ``fast`` (profiled on 4 *training* prompts);
ToMe-style uniform ``h`` and AsymRnR uniform ``q`` = ``kv``, each solved to the predicted FLOPs of ``base``
and of ``fast``; Table 5 ablations (similarity euclidean / cosine / dot / random; reduction discard / mean)
on the ``base`` rates; Table 4 ablations (cache steps 1-5), each replanned to ``base``'s predicted speedup.
Writes ``results.json``, ``table.md`` and the videos' checker readings into ``--out``, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def solve_uniform(pipe, steps: int, target: float, kind: str, cache_steps: int = 4):
    """The uniform schedule (``h`` = r, or ``q`` = ``kv`` = r) whose predicted speedup is ``target``."""
    from asymrnr.flops import rate_ceiling, schedule_flops
    from asymrnr.schedule_format import Schedule

    def make(r):
        kw = {"h": r} if kind == "h" else {"q": r, "kv": r}
        return Schedule.uniform(pipe, steps, cache_steps=cache_steps, **kw)

    grid = make(0.0).model.latent_grid
    lo, hi = 0.0, rate_ceiling(grid) - 1e-4
    if schedule_flops(make(hi)).predicted_speedup < target:
        return make(hi), False
    for _ in range(40):
        mid = (lo + hi) / 2
        if schedule_flops(make(mid)).predicted_speedup < target:
            lo = mid
        else:
            hi = mid
    return make(hi), True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", type=Path, default=None, help="micro pipeline folder (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--calib-prompts", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/quality/results"))
    ap.add_argument("--only", default=None, help="comma-separated config names to run (dense always runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import asymrnr
    from asymrnr.flops import schedule_flops
    from asymrnr.micro import data as D
    from asymrnr.micro.checker import score
    from asymrnr.micro.model import call_kwargs, load_micro_pipeline
    from asymrnr.micro.quality import psnr_frames, ssim_frames
    from asymrnr.planner import plan_schedule
    from asymrnr.profiler import load_stats

    args.out.mkdir(parents=True, exist_ok=True)
    pipe = load_micro_pipeline(args.model_path)
    pipe.set_progress_bar_config(disable=True)
    settings = call_kwargs()
    steps = settings["num_inference_steps"]
    train, heldout = D.split_prompts()
    prompts = [D.make_prompt(*a) for a in heldout[: args.num_prompts]]
    seeds = [1000 + i for i in range(len(prompts))]

    def generate(schedule=None):
        if schedule is not None:
            asymrnr.apply(pipe, schedule)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        t0 = time.perf_counter()
        with torch.no_grad():
            frames = pipe(prompts, generator=gens, output_type="np", **settings).frames
        wall = time.perf_counter() - t0
        if schedule is not None:
            asymrnr.remove(pipe)
        return np.asarray(frames, dtype=np.float32), wall

    # ---- calibration on training prompts (never the held-out ones)
    rng = np.random.default_rng(7)
    calib = [D.make_prompt(*train[i]) for i in rng.choice(len(train), args.calib_prompts, replace=False)]
    stats_path = args.out / "stats.h5"
    t0 = time.perf_counter()
    with asymrnr.profile(pipe, stats_path, mode="w"):
        for i, p in enumerate(calib):
            pipe(p, generator=torch.Generator().manual_seed(i), output_type="latent", **settings)
    profile_s = time.perf_counter() - t0
    stats = load_stats(stats_path)
    base = plan_schedule(stats, preset="base").schedule
    fast = plan_schedule(stats, preset="fast").schedule
    sp_base = schedule_flops(base).predicted_speedup
    sp_fast = schedule_flops(fast).predicted_speedup
    base.save(args.out / "schedule-base.json")
    fast.save(args.out / "schedule-fast.json")

    def with_matching(s, **kw):
        return dataclasses.replace(s, matching=dataclasses.replace(s.matching, **kw))

    configs: list[tuple[str, str, object]] = [("dense", "main", None)]
    configs += [("asymrnr base (calibrated)", "main", base), ("asymrnr fast (calibrated)", "main", fast)]
    for tag, target in (("base", sp_base), ("fast", sp_fast)):
        configs.append((f"ToMe uniform h @{tag}", "main", solve_uniform(pipe, steps, target, "h")[0]))
        configs.append((f"asymrnr uniform q=kv @{tag}", "main", solve_uniform(pipe, steps, target, "qkv")[0]))
    for metric in ("cosine", "dot", "random"):
        configs.append((f"T5 similarity {metric}", "table5", with_matching(base, metric=metric)))
    configs.append(("T5 reduction mean", "table5", with_matching(base, reduce_op="mean")))
    for s in (1, 2, 3, 5):
        sch = plan_schedule(stats, preset=None, target_speedup=sp_base, cache_steps=s).schedule
        configs.append((f"T4 cache steps {s}", "table4", sch))
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        configs = [c for c in configs if c[0] == "dense" or c[0] in wanted]

    rows = []
    ref = None
    dense_walls = []
    readings = {}
    for name, group, sch in configs:
        frames, wall = generate(sch)
        if ref is None:
            ref = frames
        if name == "dense":
            dense_walls.append(wall)
        checks = [score(frames[i], prompts[i]) for i in range(len(prompts))]
        readings[name] = checks
        psnr = psnr_frames(frames, ref)
        ssim = ssim_frames(frames, ref)
        rep = schedule_flops(sch) if sch is not None else None
        row = {
            "config": name, "group": group,
            "tag": None if sch is None else sch.tag,
            "predicted_speedup": 1.0 if rep is None else round(rep.predicted_speedup, 4),
            "wall_s": round(wall, 2),
            "psnr": float(np.mean(psnr)) if sch is not None else float("inf"),
            "ssim": float(np.mean(ssim)),
            "accuracy": float(np.mean([c["correct"] for c in checks])),
            "colour_acc": float(np.mean([c["colour_ok"] for c in checks])),
            "motion_acc": float(np.mean([c["motion_ok"] for c in checks])),
            "shape_acc": float(np.mean([c["shape_ok"] for c in checks])),
        }
        if sch is not None:
            row.update(mean_q=round(sch.mean_rate("q"), 4), mean_kv=round(sch.mean_rate("kv"), 4),
                       mean_h=round(sch.mean_rate("h"), 4), metric=sch.matching.metric,
                       reduce_op=sch.matching.reduce_op, cache_steps=sch.matching.cache_steps)
        rows.append(row)
        print(f"{name:32s} pred {row['predicted_speedup']:.3f}x  wall {wall:6.1f}s  PSNR {row['psnr']:6.2f}  "
              f"SSIM {row['ssim']:.4f}  acc {row['accuracy']:.3f}", flush=True)
    # dense timed again at the end: the measured ratio uses the mean of both dense runs
    _, wall2 = generate(None)
    dense_walls.append(wall2)
    dense_wall = float(np.mean(dense_walls))
    for row in rows:
        row["measured_speedup"] = round(dense_wall / row["wall_s"], 3) if row["config"] != "dense" else round(
            dense_wall / dense_wall, 3)

    command = "python benchmarks/quality/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = format_table(rows)
    header = (
        f"micro-cogvideox, {len(prompts)} held-out prompts x seeds 1000+i, {steps} DPM steps, guidance "
        f"{settings['guidance_scale']}, {settings['height']}x{settings['width']} px, {settings['num_frames']} frames "
        f"(4 x 6 x 6 tokens + {settings['max_sequence_length']} text), batch {len(prompts)} x CFG 2, CPU "
        f"{args.threads} thread(s); calibration: {len(calib)} training prompts, profiled in {profile_s:.1f} s; "
        f"dense wall {dense_walls[0]:.1f} s / {dense_walls[1]:.1f} s (start / end)"
    )
    text = f"Command: `{command}`\n\n{header}\n\n{table}\n"
    print("\n" + text)
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"command": command, "prompts": prompts, "seeds": seeds, "calibration_prompts": calib,
         "settings": settings, "dense_walls": dense_walls, "rows": rows, "readings": readings}, indent=1) + "\n")
    return 0


def format_table(rows) -> str:
    lines = [
        "| configuration | mean q / kv / h | metric, op, s | predicted speedup | measured speedup | PSNR (dB) | SSIM | checker acc. | colour / motion / shape |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rates = "-" if r["config"] == "dense" else f"{r['mean_q']:.2f} / {r['mean_kv']:.2f} / {r['mean_h']:.2f}"
        match = "-" if r["config"] == "dense" else f"{r['metric']}, {r['reduce_op']}, {r['cache_steps']}"
        psnr = "ref" if r["config"] == "dense" else f"{r['psnr']:.2f}"
        lines.append(
            f"| {r['config']} | {rates} | {match} | {r['predicted_speedup']:.3f}x | {r['measured_speedup']:.3f}x | "
            f"{psnr} | {r['ssim']:.4f} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r['colour_acc']:.0f} / {100 * r['motion_acc']:.0f} / {100 * r['shape_acc']:.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
