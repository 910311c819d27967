"""torch.compile benchmark: compiled dense against compiled AsymRnR on the third-grid model, and compile time.

    python benchmarks/bench_compile.py --threads 1            # prints the table, writes the section of BENCHMARKS.md
    python benchmarks/bench_compile.py --device cuda --shape 5b

Each mode runs in its own process (fresh dynamo and inductor caches): eager dense, compiled dense, eager
AsymRnR and compiled AsymRnR (uniform q = kv = 0.5, cache steps 4, the defaults: per-head matching, partition
redrawn per cache window). A "generation" is 8 denoising steps (two cache windows). Reported: the first
generation's wall time (with compiling), the median per-step time of the following ones, the number of
graphs dynamo compiled, and whether any recompile happened after the first cache window. Speed ratios are
against dense in the same mode (eager vs eager, compiled vs compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runtime import FULL_5B, TEXT, THIRD_GRID, _sync, write_section  # noqa: E402

MODES = ("eager-dense", "compiled-dense", "eager-asymrnr", "compiled-asymrnr")


def child(args) -> None:
    from diffusers import CogVideoXTransformer3DModel
    from torch._dynamo.utils import counters

    import asymrnr
    from asymrnr import Schedule

    cfg = FULL_5B if args.shape == "5b" else THIRD_GRID
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(**cfg).to(args.device, dtype).eval()
    frames = (cfg["sample_frames"] - 1) // 4 + 1
    x = torch.randn(1, frames, 16, cfg["sample_height"], cfg["sample_width"], device=args.device, dtype=dtype)
    e = torch.randn(1, TEXT, 4096, device=args.device, dtype=dtype)
    steps = [999 - i * 125 for i in range(8)]
    if args.mode.endswith("asymrnr"):
        asymrnr.apply(model, Schedule.uniform(model, len(steps), q=0.5, kv=0.5, cache_steps=4))
    run = torch.compile(model) if args.mode.startswith("compiled") else model

    def generation() -> list[float]:
        per_step = []
        for t in steps:
            ts = torch.full((1,), t, device=args.device)
            _sync(args.device)
            start = time.perf_counter()
            with torch.no_grad():
                run(hidden_states=x, encoder_hidden_states=e, timestep=ts, return_dict=False)
            _sync(args.device)
            per_step.append(time.perf_counter() - start)
        return per_step

    counters.clear()
    first = generation()
    graphs_after_first_window = counters["stats"]["unique_graphs"]
    later = [generation() for _ in range(args.repeats)]
    print(json.dumps(dict(
        mode=args.mode, first_generation_s=sum(first), first_window_graphs=graphs_after_first_window,
        graphs=counters["stats"]["unique_graphs"], recompiles=sum(counters["recompiles"].values()),
        per_step_s=statistics.median(s for g in later for s in g),
    )))


def run_child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--device", args.device, "--shape", args.shape,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="third", choices=("third", "5b"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", default=None, choices=MODES)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(dataclass_args(args, args.child))
        return
    rows = {mode: run_child(mode, args) for mode in MODES}
    for mode in MODES:
        print(mode, rows[mode], flush=True)
    lines = [
        f"Command: `python benchmarks/bench_compile.py --threads {args.threads}` ({platform.processor() or platform.machine()}, "
        f"{args.device}, {args.threads} thread(s), torch {torch.__version__}); {args.shape} model, 8 steps per generation, "
        "uniform q = kv = 0.5, cache steps 4; per-step time is the median over "
        f"{args.repeats} generations after the first.",
        "",
        "| mode | first generation (with compile) | per step | speedup vs dense, same mode | graphs (after window 1 / total) | recompiles |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        r = rows[mode]
        dense = rows[mode.split("-")[0] + "-dense"]
        lines.append(f"| {mode} | {r['first_generation_s']:.1f} s | {r['per_step_s'] * 1000:.0f} ms | "
                     f"{dense['per_step_s'] / r['per_step_s']:.3f}x | {r['first_window_graphs']} / {r['graphs']} | "
                     f"{r['recompiles']} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text, "compile")


def dataclass_args(args, mode):
    args.mode = mode
    return args


if __name__ == "__main__":
    main()
