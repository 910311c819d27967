"""Every GPU measurement in one run, under 8 minutes on an H200; writes a markdown section for BENCHMARKS.md.

    python benchmarks/gpu_all.py                          # CUDA: writes benchmarks/results/gpu.md
    python benchmarks/gpu_all.py --device cpu --tiny      # seconds: the same code at toy sizes, float32

Parts, each with its own time guard (seconds, ``--budget-*``) inside an overall budget (``--budget``):

1. ``runtime``: ``benchmarks/bench_runtime.py --device cuda --shape 5b`` (attention level at the real
   CogVideoX grid in bf16, and the full-size 5B transformer at batch 1 in separate processes), one round of
   interleaved dense / AsymRnR processes, killed at its guard.
2. one part per full-size transformer (:data:`asymrnr.testing.fullsize.FULL_SIZE`: CogVideoX-5B and Wan 2.1
   T2V 14B), random weights in bf16 at the 480p token grid with batch 2 (CFG): a warm-up call dense and
   one with AsymRnR, then rounds of one dense generation and one AsymRnR generation (uniform q = kv = 0.5,
   cache_steps 4, ``--steps`` steps), interleaved so that machine noise hits both alike. Step times come
   from CUDA events; peak memory is ``torch.cuda.max_memory_allocated`` per generation. A new round starts
   only while the last round's duration still fits before the part's guard.

The table reports per model: dense and AsymRnR step time (median over rounds of the mean step of a
generation), measured speedup, the FLOPs model's prediction
(:func:`asymrnr.flops.schedule_flops` ``(schedule, batch=2).predicted_speedup``), measured / predicted, and
peak memory dense vs AsymRnR.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402


DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.md"
RATE = 0.5
CACHE_STEPS = 4
BATCH = 2  # CFG: conditional and unconditional in one call
#: seconds per part (the runtime benchmark, then each model): 430 s, inside the overall 450 s budget
PART_BUDGETS = {"runtime": 200.0, "cogvideox-5b": 80.0, "wan2.1-t2v-14b": 150.0}


@dataclass
class ModelResult:
    name: str
    description: str
    grid: tuple[int, int, int]
    dtype: str
    steps: int
    dense_step_s: float
    asymrnr_step_s: float
    predicted: float
    peak_dense: int | None
    peak_asymrnr: int | None
    rounds: int
    build_s: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> float:
        return self.dense_step_s / self.asymrnr_step_s


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_model(name: str, device: torch.device, tiny: bool, steps: int, max_rounds: int,
                  deadline: float) -> ModelResult:
    """Dense vs uniform AsymRnR on one transformer (see the module docstring); stops rounds at ``deadline``
    (``time.monotonic()``), always after at least one round."""
    import asymrnr
    from asymrnr.flops import schedule_flops
    from asymrnr.testing.fullsize import (build_transformer, call, full_size_model, generation_times, make_inputs,
                                          peak_memory, reset_peak_memory, schedule_for, timesteps)

    began = time.monotonic()
    spec = full_size_model(name, tiny=tiny)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_transformer(spec, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.monotonic() - began
    inputs = make_inputs(spec, model, batch=BATCH)
    ts = timesteps(steps)
    schedule = schedule_for(spec, model, steps, q=RATE, kv=RATE, cache_steps=CACHE_STEPS)
    predicted = schedule_flops(schedule, batch=BATCH).predicted_speedup

    def scheduled(fn):
        runtime = asymrnr.apply(model, schedule)  # a fresh runtime: each generation starts with its matching
        try:
            result = fn()
        finally:
            asymrnr.remove(model)
        if not runtime.match_log:
            raise RuntimeError(f"{name}: the AsymRnR generation computed no matching; the schedule did not run")
        return result

    call(model, inputs, ts[0])  # warm-up: kernels, allocator (excluded)
    scheduled(lambda: call(model, inputs, ts[0]))  # warm-up of the reduced path (excluded)
    dense, fast, peaks_dense, peaks_fast = [], [], [], []
    while len(dense) < max_rounds:
        round_start = time.monotonic()
        reset_peak_memory(device)
        times, out = generation_times(model, inputs, ts)
        peaks_dense.append(peak_memory(device))
        dense.append(sum(times) / steps)
        reset_peak_memory(device)
        times, out_fast = scheduled(lambda: generation_times(model, inputs, ts))
        peaks_fast.append(peak_memory(device))
        fast.append(sum(times) / steps)
        if not (torch.isfinite(out).all() and torch.isfinite(out_fast).all()):
            raise RuntimeError(f"{name}: a non-finite output (dense or AsymRnR)")
        took = time.monotonic() - round_start
        if time.monotonic() + took > deadline:
            break
    notes = [] if len(dense) == max_rounds else [f"{len(dense)} of {max_rounds} rounds (time guard)"]
    result = ModelResult(
        name=name, description=spec.description, grid=spec.grid, dtype=str(dtype).replace("torch.", ""),
        steps=steps, dense_step_s=statistics.median(dense), asymrnr_step_s=statistics.median(fast),
        predicted=predicted, peak_dense=max(peaks_dense) if peaks_dense[0] is not None else None,
        peak_asymrnr=max(peaks_fast) if peaks_fast[0] is not None else None, rounds=len(dense),
        build_s=build_s, seconds=time.monotonic() - began, notes=notes)
    del model, inputs, out, out_fast
    _free(device)
    return result


def run_runtime_benchmark(device: str, tiny: bool, timeout: float) -> tuple[list[str], float]:
    """``bench_runtime.py``'s tables and verdicts as markdown lines, and the seconds it took.

    Full size: in a subprocess killed at ``timeout`` (its model part starts processes of its own, for
    memory). ``tiny``: in this process (seconds; no process start-up), without a guard.
    """
    argv = ["--device", device, "--shape", "tiny" if tiny else "5b", "--repeats", "2", "--rounds", "1", "--no-write"]
    if device == "cpu":
        argv += ["--threads", str(torch.get_num_threads())]
    shown = "python benchmarks/bench_runtime.py " + " ".join(argv)
    began = time.monotonic()
    if tiny:
        import contextlib
        import importlib.util
        import io

        spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "benchmarks" / "bench_runtime.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            module.main(argv)
        stdout = buffer.getvalue()
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_runtime.py"), *argv]
        src = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": src})
        except subprocess.TimeoutExpired:
            return [f"`{shown}`: stopped at its time guard of {timeout:.0f} s; no figures."], time.monotonic() - began
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            return [f"`{shown}` failed (exit {proc.returncode}):", "", "```", tail, "```"], time.monotonic() - began
        stdout = proc.stdout
    took = time.monotonic() - began
    lines, previous_table = [f"Command: `{shown}` ({took:.0f} s)", ""], False
    for line in stdout.splitlines():
        is_table = line.startswith("|")
        if not is_table and previous_table:
            lines.append("")
        if is_table or line.startswith("Target"):
            lines.append(line)
            if not is_table:
                lines.append("")
        previous_table = is_table
    return lines, took


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2 ** 30:.1f}"


def format_models(results: list[ModelResult]) -> list[str]:
    lines = ["| model | token grid | dtype | dense step (s) | AsymRnR step (s) | measured speedup | FLOPs-predicted | "
             "measured / predicted | peak dense (GiB) | peak AsymRnR (GiB) | peak ratio | rounds | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = "n/a" if r.peak_dense is None else f"{r.peak_asymrnr / r.peak_dense:.3f}"
        lines.append(f"| {r.name} | {' x '.join(map(str, r.grid))} | {r.dtype} | {r.dense_step_s:.3f} | "
                     f"{r.asymrnr_step_s:.3f} | **{r.measured:.2f}x** | {r.predicted:.2f}x | "
                     f"{r.measured / r.predicted:.0%} | {_gib(r.peak_dense)} | {_gib(r.peak_asymrnr)} | {ratio} | "
                     f"{r.rounds} | {'; '.join(r.notes) or ''} |")
    return lines


def _machine(device: torch.device) -> str:
    import diffusers

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    return f"{name}, torch {torch.__version__}, diffusers {diffusers.__version__}"


def _budget_dest(part: str) -> str:
    return "budget_" + "".join(c if c.isalnum() else "_" for c in part)


@torch.no_grad()  # not set_grad_enabled(False): tests call main() in-process
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and grids, float32 (tests, CPU)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file (default {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per generation (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="most dense/AsymRnR generation pairs per model")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="overall seconds (default 450: with start-up, under 8 minutes)")
    parser.add_argument("--skip-runtime", action="store_true", help="only the full-size transformers")
    for part, seconds in PART_BUDGETS.items():
        parser.add_argument(f"--budget-{part}", dest=_budget_dest(part), type=float, default=seconds,
                            help=f"seconds (default {seconds:.0f})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; on a CPU run --device cpu --tiny")
    if device.type != "cuda" and not args.tiny:
        parser.error("full-size models need a GPU; on a CPU pass --tiny")
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from asymrnr._io import atomic_write_text, check_output_path
    from asymrnr.errors import AsymRnRError
    from asymrnr.testing.fullsize import FULL_SIZE

    try:  # before any measurement: a bad --out fails now, not after minutes of GPU time
        out = check_output_path(args.out, option="--out")
    except AsymRnRError as exc:
        parser.error(str(exc))
    began = time.monotonic()
    end = began + args.budget
    budgets = {part: getattr(args, _budget_dest(part)) for part in PART_BUDGETS}
    command = "python benchmarks/gpu_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = [f"## GPU measurements ({args.device}: {_machine(device)})", "",
           f"Command: `{command.strip()}`. Random weights; every speed is a ratio against the dense baseline "
           "measured in the same run.", ""]
    if not args.skip_runtime:
        print(f"[gpu_all] runtime benchmark (guard {budgets['runtime']:.0f} s) ...", flush=True)
        lines, took = run_runtime_benchmark(args.device, args.tiny, min(budgets["runtime"], end - time.monotonic()))
        doc += [f"### bench_runtime.py --shape {'tiny' if args.tiny else '5b'} (batch 1, 8 steps)", ""] + lines
        print(f"[gpu_all] runtime benchmark done in {took:.0f} s", flush=True)
    results, skipped = [], []
    for name in FULL_SIZE:
        left = end - time.monotonic()
        if left < 0.25 * budgets[name]:
            skipped.append(f"{name}: skipped, {left:.0f} s left of the overall budget")
            continue
        print(f"[gpu_all] {name} (guard {budgets[name]:.0f} s) ...", flush=True)
        deadline = time.monotonic() + min(budgets[name], left)
        r = measure_model(name, device, args.tiny, args.steps, args.rounds, deadline)
        print(f"[gpu_all] {name}: dense {r.dense_step_s:.3f} s/step, AsymRnR {r.asymrnr_step_s:.3f} s/step, "
              f"{r.measured:.2f}x (predicted {r.predicted:.2f}x), {r.seconds:.0f} s", flush=True)
        results.append(r)
    dtype = "bf16" if device.type == "cuda" else "float32"
    doc += [f"### Transformers dense vs AsymRnR: {dtype}, batch {BATCH} (CFG), uniform (q, kv) = ({RATE}, {RATE}), "
            f"cache_steps {CACHE_STEPS}, {args.steps} steps per generation, warm-up excluded, interleaved", ""]
    doc += [f"- {r.name}: {r.description}; built in {r.build_s:.1f} s" for r in results] + [""]
    doc += format_models(results) + [""]
    if skipped:
        doc += [f"- {s}" for s in skipped] + [""]
    doc += [f"Total: {time.monotonic() - began:.0f} s."]
    text = "\n".join(doc).rstrip() + "\n"
    atomic_write_text(out, [text])
    print(text)
    print(f"[gpu_all] wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
