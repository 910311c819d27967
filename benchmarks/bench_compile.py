"""torch.compile benchmark: compiled dense against compiled AsymRnR on the third-grid model, and compile time.

    python benchmarks/bench_compile.py --threads 1            # prints the table, writes the section of BENCHMARKS.md
    python benchmarks/bench_compile.py --device cuda --shape 5b

Each mode (eager, compiled) runs in its own process (fresh dynamo and inductor caches) holding two copies of
the same transformer: dense, and with AsymRnR (uniform q = kv = 0.5, cache steps 4, the defaults: per-head
matching, partition redrawn per cache window). A "generation" is 8 denoising steps (two cache windows). The
two are timed alternately (the CPU's speed drifts), and the speedup is the median of the paired ratios.
Reported too: the first generation's wall time (with compiling), the number of graphs dynamo compiled, and
the graphs added after the first generation (0: nothing recompiles).
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

MODES = ("eager", "compiled")


def child(args) -> None:
    """One process per mode: a dense and an AsymRnR copy of the same transformer, timed alternately."""
    from diffusers import CogVideoXTransformer3DModel
    from torch._dynamo.utils import counters

    import asymrnr
    from asymrnr import Schedule

    cfg = FULL_5B if args.shape == "5b" else THIRD_GRID
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    models = {}
    for kind in ("dense", "asymrnr"):
        torch.manual_seed(0)
        models[kind] = CogVideoXTransformer3DModel(**cfg).to(args.device, dtype).eval()
    frames = (cfg["sample_frames"] - 1) // 4 + 1
    x = torch.randn(1, frames, 16, cfg["sample_height"], cfg["sample_width"], device=args.device, dtype=dtype)
    e = torch.randn(1, TEXT, 4096, device=args.device, dtype=dtype)
    steps = [999 - i * 125 for i in range(8)]
    asymrnr.apply(models["asymrnr"], Schedule.uniform(models["asymrnr"], len(steps), q=0.5, kv=0.5, cache_steps=4))
    run = {k: (torch.compile(m) if args.mode == "compiled" else m) for k, m in models.items()}

    def generation(kind) -> float:
        _sync(args.device)
        start = time.perf_counter()
        for t in steps:
            ts = torch.full((1,), t, device=args.device)
            with torch.no_grad():
                run[kind](hidden_states=x, encoder_hidden_states=e, timestep=ts, return_dict=False)
        _sync(args.device)
        return time.perf_counter() - start

    out = {"mode": args.mode}
    for kind in ("dense", "asymrnr"):
        counters.clear()
        out[f"{kind}_first_s"] = generation(kind)  # with compiling
        out[f"{kind}_graphs"] = counters["stats"]["unique_graphs"]
        generation(kind)  # the second generation: nothing may compile any more
        out[f"{kind}_graphs_after"] = counters["stats"]["unique_graphs"]
        out[f"{kind}_recompiles"] = sum(counters["recompiles"].values())
    ratios, dense_s, asym_s = [], [], []
    for _ in range(args.repeats):  # alternate, so that both see the same machine
        d, a = generation("dense"), generation("asymrnr")
        dense_s.append(d / len(steps))
        asym_s.append(a / len(steps))
        ratios.append(d / a)
    out.update(dense_step_s=statistics.median(dense_s), asymrnr_step_s=statistics.median(asym_s),
               speedup=statistics.median(ratios), ratios=ratios)
    print(json.dumps(out))


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
        args.mode = args.child
        child(args)
        return
    rows = {mode: run_child(mode, args) for mode in MODES}
    for mode in MODES:
        print(mode, rows[mode], flush=True)
    lines = [
        f"Command: `python benchmarks/bench_compile.py --threads {args.threads} --repeats {args.repeats}` "
        f"({platform.processor() or platform.machine()}, {args.device}, {args.threads} thread(s), torch {torch.__version__}); "
        f"{args.shape} model (30 blocks), 8 steps per generation, uniform q = kv = 0.5, cache steps 4, per-head matching, "
        "partitions redrawn per cache window. Dense and AsymRnR copies of the same weights are timed alternately in one "
        f"process per mode ({args.repeats} pairs; medians).",
        "",
        "| mode | dense step | AsymRnR step | AsymRnR speedup (paired) | first generation, dense / AsymRnR (with compiling) "
        "| graphs dense / AsymRnR | recompiles after the first generation |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        r = rows[mode]
        lines.append(
            f"| {mode} | {r['dense_step_s'] * 1000:.0f} ms | {r['asymrnr_step_s'] * 1000:.0f} ms | **{r['speedup']:.3f}x** | "
            f"{r['dense_first_s']:.1f} s / {r['asymrnr_first_s']:.1f} s | {r['dense_graphs']} / {r['asymrnr_graphs']} | "
            f"{r['dense_graphs_after'] - r['dense_graphs']} / {r['asymrnr_graphs_after'] - r['asymrnr_graphs']} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text, "compile")


if __name__ == "__main__":
    main()
