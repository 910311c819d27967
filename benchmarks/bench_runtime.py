"""Runtime speed benchmark: attention level at the real CogVideoX grid, and a whole scaled transformer.

Speed is always a ratio against the dense baseline measured in the same run (these machines are noisy).

    python benchmarks/bench_runtime.py                 # both parts, writes the runtime section of BENCHMARKS.md
    python benchmarks/bench_runtime.py --part attention
    python benchmarks/bench_runtime.py --device cuda --shape 5b   # on a GPU: full-size 5B transformer, bf16
    python benchmarks/bench_runtime.py --shape tiny --no-write    # seconds: the same code at a toy size

Attention level: one attention call (text 226 + video 13 x 30 x 45 tokens, 2 heads x 64, after RoPE) dense
against AsymRnR's reduce -> SDPA -> restore with the library's own matching code, matching every call
(s=1) or once per 4 calls (s=4).

Model level: the "third grid" model of the field notes (30 blocks, 4 heads x 64, text dim 4096, time dim
512, 160x240 pixels x 49 frames -> 13 x 10 x 15 tokens, 226 text tokens), a whole transformer call averaged
over 8 denoising steps with a uniform (0.5, 0.5) schedule and s=4, against the speedup the FLOPs model
predicts. Peak memory is measured in separate processes (peak RSS on CPU, max_memory_allocated on CUDA).
The transformer gets the 3D RoPE tables the pipeline passes (``image_rotary_emb``), and its random weights are
allocated directly on the device in its dtype (:func:`asymrnr.testing.fullsize.build_transformer`), so a 5B
model is ready in seconds. On CUDA, times come from CUDA events (the host waits once per generation) and
attention runs in bf16; "CPU time" columns then repeat wall time (host CPU time says nothing there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from asymrnr.matching import (  # noqa: E402
    compute_matching,
    gather_tokens,
    make_partition,
    make_reduction,
    matching_features,
    take_tokens,
    with_prefix,
)

TEXT = 226
_DEFAULT_THREADS = torch.get_num_threads()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timing:
    """Median wall time and median process CPU time of repeated calls.

    On a shared CPU, wall time absorbs other processes' load; process CPU time (all threads) does not, so
    both are reported. On CUDA only wall (GPU) time is meaningful, and ``cpu`` repeats it.
    """

    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def __add__(self, other: "Timing") -> "Timing":
        return Timing(self.wall + other.wall, self.cpu + other.cpu)

    def __truediv__(self, k: float) -> "Timing":
        return Timing(self.wall / k, self.cpu / k)


def _median_time(fn, device: str, repeats: int, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.startswith("cuda"):  # CUDA events around each call; the host waits once, at the end
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        wall = statistics.median(s.elapsed_time(e) / 1000.0 for s, e in events)
        return Timing(wall, wall)
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu0)
    return Timing(statistics.median(walls), statistics.median(cpus))


# ---------------------------------------------------------------------------------------------- attention
ATTENTION_GRID = (13, 30, 45)
TINY_ATTENTION_GRID = (3, 6, 8)


def attention_benchmark(device: str, repeats: int, heads: int = 2, head_dim: int = 64, dtype=None,
                        grid=ATTENTION_GRID) -> list[dict]:
    """Rows of dense vs reduced attention at ``grid`` (+ 226 text tokens); bf16 on CUDA, float32 on CPU."""
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    n = math.prod(grid)
    g = torch.Generator().manual_seed(0)
    # CogVideoX's layout: projections are [B, S, heads, D], viewed as [B, heads, S, D].
    q, k, v = (torch.randn(1, TEXT + n, heads, head_dim, generator=g).to(device, dtype).transpose(1, 2) for _ in range(3))
    part_q = make_partition(grid, (2, 2, 2), 1).to(device)
    part_kv = make_partition(grid, (2, 2, 2), 2).to(device)

    def dense():
        return F.scaled_dot_product_attention(q, k, v)

    def match(part, x, n_r):
        """Once per cache window: matching and the derived index tensors (as the runtime caches them)."""
        vid = x[:, :, TEXT:]
        m = compute_matching(matching_features(vid, part.src_idx, "joint"), matching_features(vid, part.dst_idx, "joint"), "euclidean")
        red = make_reduction(part, m, n_r)
        return with_prefix(red.keep_idx, TEXT), with_prefix(red.restore_idx, TEXT)

    def reduced(keep_q, restore_q, keep_kv):
        """Every call: one gather per tensor, SDPA on the reduced lengths, one gather to restore."""
        out = F.scaled_dot_product_attention(take_tokens(q, keep_q), take_tokens(k, keep_kv), take_tokens(v, keep_kv))
        return take_tokens(out, restore_q)

    rows = []
    dense_times = [_median_time(dense, device, repeats)]
    for rq, rkv in ((0.3, 0.3), (0.5, 0.5), (0.7, 0.5)):
        n_q, n_kv = int(rq * n), int(rkv * n)
        t_match = _median_time(lambda: (match(part_q, q, n_q), match(part_kv, v, n_kv)), device, repeats)
        (keep_q, restore_q), (keep_kv, _) = match(part_q, q, n_q), match(part_kv, v, n_kv)
        t_red = _median_time(lambda: reduced(keep_q, restore_q, keep_kv), device, repeats)
        dense_times.append(_median_time(dense, device, repeats))  # interleaved: noise hits both alike
        base = (dense_times[-1] + dense_times[-2]) / 2
        ideal = 1.0 / ((1 - rq) * (1 - rkv))
        for s in (1, 4):
            t = t_red + t_match / s
            rows.append(dict(q=rq, kv=rkv, s=s, dense_s=base.wall, asymrnr_s=t.wall, speedup=base.wall / t.wall,
                             cpu_speedup=base.cpu / t.cpu, ideal=ideal, matching_share=(t_match.cpu / s) / t.cpu))
    return rows


# ------------------------------------------------------------------------------------------------ model
THIRD_GRID = dict(num_layers=30, num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
                  time_embed_dim=512, text_embed_dim=4096, sample_height=30, sample_width=20, sample_frames=49,
                  patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TEXT,
                  use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
FULL_5B = dict(num_layers=42, num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
               time_embed_dim=512, text_embed_dim=4096, sample_height=60, sample_width=90, sample_frames=49,
               patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TEXT,
               use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
TINY_MODEL = dict(THIRD_GRID, num_layers=2, num_attention_heads=2, attention_head_dim=16, time_embed_dim=16,
                  text_embed_dim=32, sample_height=10, sample_width=12, sample_frames=17)
#: Wan 2.1 at the third grid's token count: 30 blocks, 4 heads x 64, Wan's FFN ratio (about 2.7x, as the 14B
#: model's 13824 / 5120), 160 x 240 px x 49 frames -> latents 13 x 20 x 30 -> 13 x 10 x 15 tokens (patch
#: (1, 2, 2)); text (512 tokens) by cross-attention, which is never reduced.
WAN_THIRD = dict(num_layers=30, num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
                 ffn_dim=704, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2), cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads")
SHAPES = {"third": THIRD_GRID, "5b": FULL_5B, "tiny": TINY_MODEL, "wan-third": WAN_THIRD}


def _spec(shape: str):
    """The shape as a :class:`~asymrnr.testing.fullsize.FullSizeModel` (batch-1 inputs with 226 text tokens)."""
    from dataclasses import replace

    from asymrnr.testing.fullsize import FULL_SIZE

    cfg = SHAPES[shape]
    if shape == "wan-third":
        return replace(FULL_SIZE["wan2.1-t2v-14b"], name=f"bench-{shape}", config=cfg, latent=(13, 20, 30),
                       grid=(13, 10, 15))
    frames = (cfg["sample_frames"] - 1) // cfg["temporal_compression_ratio"] + 1
    latent = (frames, cfg["sample_height"], cfg["sample_width"])
    grid = (frames, latent[1] // cfg["patch_size"], latent[2] // cfg["patch_size"])
    return replace(FULL_SIZE["cogvideox-5b"], name=f"bench-{shape}", config=cfg, latent=latent, grid=grid,
                   channels=cfg["in_channels"], text_len=TEXT, text_dim=cfg["text_embed_dim"])


def _measure(mode: str, device: str, shape: str, repeats: int) -> dict:
    """Time (and measure memory of) dense or scheduled transformer calls: ``repeats`` generations of 8 steps
    after one warm-up generation."""
    import resource

    import asymrnr
    from asymrnr import Schedule
    from asymrnr.testing.fullsize import build_transformer, call, make_inputs

    spec = _spec(shape)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_transformer(spec, device, dtype, seed=0)
    inputs = make_inputs(spec, model, batch=1)
    steps = [999 - i * 125 for i in range(8)]
    schedule = Schedule.uniform(model, len(steps), q=0.5, kv=0.5, cache_steps=4, latent_grid=spec.grid)
    if mode == "asymrnr":
        asymrnr.apply(model, schedule)

    def generation():
        for t in steps:
            call(model, inputs, t)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    generation()  # warm-up: allocator, partitions, first-call costs
    times, cpu_times = [], []
    if device.startswith("cuda"):  # CUDA events around each generation; the host waits once, at the end
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            generation()
            end.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) / 1000.0 / len(steps) for s, e in events]
        cpu_times = list(times)
    else:
        for _ in range(repeats):
            start, cpu0 = time.perf_counter(), time.process_time()
            generation()
            times.append((time.perf_counter() - start) / len(steps))
            cpu_times.append((time.process_time() - cpu0) / len(steps))
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if mode == "asymrnr":
        asymrnr.remove(model)
    return dict(mode=mode, per_step_s=times, per_step_cpu_s=cpu_times, peak_bytes=peak, rss_before=rss_before * 1024)


def _model_child(args) -> None:
    """Run in a subprocess: :func:`_measure`, printed as JSON."""
    print(json.dumps(_measure(args.mode, args.device, args.shape, args.repeats)))


# glibc raises its mmap threshold after large frees, after which freed tensors stay in the heap and peak
# RSS reflects fragmentation as much as live tensors. Pinning the threshold makes every tensor above 64 KiB
# its own mapping, returned on free, so peak RSS follows peak live memory. Applied to dense and AsymRnR alike.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _run_child(mode: str, device: str, shape: str, repeats: int, pinned_malloc: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--device", device, "--shape", shape, "--repeats", str(repeats)]
    if torch.get_num_threads() != _DEFAULT_THREADS:
        cmd += ["--threads", str(torch.get_num_threads())]
    env = {**os.environ, **PINNED_MALLOC} if pinned_malloc else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def model_benchmark(device: str, shape: str, repeats: int, rounds: int = 2) -> dict:
    """Dense vs AsymRnR at ``shape``: ``rounds`` interleaved pairs of processes (in-process for ``tiny``)."""
    import diffusers

    from asymrnr import Schedule
    from asymrnr.flops import schedule_flops

    spec = _spec(shape)
    with torch.device("meta"):
        meta = getattr(diffusers, spec.class_name)(**spec.config)
    schedule = Schedule.uniform(meta, 8, q=0.5, kv=0.5, cache_steps=4, latent_grid=spec.grid)
    predicted = schedule_flops(schedule, batch=1).predicted_speedup
    in_process = shape == "tiny"  # seconds, for tests: no process start-ups (its memory figures mean nothing)
    run = ((lambda mode: _measure(mode, device, shape, repeats)) if in_process
           else (lambda mode: _run_child(mode, device, shape, repeats)))
    # Interleave dense and AsymRnR processes so that machine noise hits both alike.
    dense, fast = [], []
    for _ in range(rounds):
        dense.append(run("dense"))
        fast.append(run("asymrnr"))
    pinned = {}
    if not device.startswith("cuda") and not in_process:  # one extra generation each, for memory only
        pinned = {mode: _run_child(mode, device, shape, 1, pinned_malloc=True)["peak_bytes"] for mode in ("dense", "asymrnr")}
    t_dense = statistics.median([t for r in dense for t in r["per_step_s"]])
    t_fast = statistics.median([t for r in fast for t in r["per_step_s"]])
    measured = t_dense / t_fast
    c_dense = statistics.median([t for r in dense for t in r["per_step_cpu_s"]])
    c_fast = statistics.median([t for r in fast for t in r["per_step_cpu_s"]])
    peak_dense = max(r["peak_bytes"] for r in dense)
    peak_fast = max(r["peak_bytes"] for r in fast)
    return dict(shape=shape, device=device, dense_step_s=t_dense, asymrnr_step_s=t_fast, measured=measured,
                measured_cpu=c_dense / c_fast,
                predicted=predicted, fraction=measured / predicted, peak_dense=peak_dense, peak_asymrnr=peak_fast,
                peak_ratio=peak_fast / peak_dense,
                pinned_ratio=(pinned["asymrnr"] / pinned["dense"]) if pinned else None,
                pinned_dense=pinned.get("dense"), pinned_asymrnr=pinned.get("asymrnr"))


# ----------------------------------------------------------------------------------------------- output
def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def format_attention(rows: list[dict]) -> str:
    lines = ["| q | kv | cache s | dense wall (s) | AsymRnR wall (s) | speedup (wall) | speedup (CPU time) | ideal 1/((1-q)(1-kv)) | matching share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['q']} | {r['kv']} | {r['s']} | {r['dense_s']:.3f} | {r['asymrnr_s']:.3f} | "
                     f"**{r['speedup']:.2f}x** | {r['cpu_speedup']:.2f}x | {r['ideal']:.2f}x | {r['matching_share']:.0%} |")
    return "\n".join(lines)


def format_model(m: dict) -> str:
    mib = 1024 * 1024
    return "\n".join([
        "| shape | dense step (s) | AsymRnR step (s) | measured speedup (wall) | (CPU time) | FLOPs-predicted | measured / predicted | peak dense (MiB) | peak AsymRnR (MiB) | peak ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {m['shape']} | {m['dense_step_s']:.3f} | {m['asymrnr_step_s']:.3f} | **{m['measured']:.3f}x** | {m['measured_cpu']:.3f}x | {m['predicted']:.3f}x | "
        f"{m['fraction']:.0%} | {m['peak_dense'] / mib:.0f} | {m['peak_asymrnr'] / mib:.0f} | {m['peak_ratio']:.3f} |",
    ] + ([
        "",
        f"Peak RSS with glibc's mmap threshold pinned (freed tensors return to the OS; see PINNED_MALLOC): dense "
        f"{m['pinned_dense'] / mib:.0f} MiB, AsymRnR {m['pinned_asymrnr'] / mib:.0f} MiB, ratio {m['pinned_ratio']:.3f}.",
    ] if m.get("pinned_ratio") else []))


def write_section(text: str, marker: str) -> None:
    """Replace (or add) the section between ``<!-- marker -->`` lines of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    begin, end = f"<!-- {marker} begin -->", f"<!-- {marker} end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n\nEvery speed is a ratio against the dense baseline measured in the same run.\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


@torch.no_grad()  # not set_grad_enabled(False): tests call main() in-process
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["attention", "model", "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="third",
                        help="third: the field notes' third grid; 5b: full-size CogVideoX-5B (bf16 on CUDA); tiny: seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved dense/AsymRnR process pairs (model part)")
    parser.add_argument("--child", choices=["dense", "asymrnr"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        args.mode = args.child
        _model_child(args)
        return
    command = "python benchmarks/bench_runtime.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sections = [f"## Runtime ({args.device}: {_machine(args.device)}, {torch.get_num_threads()} threads)", "",
                f"Command: `{command.strip()}`", ""]
    if args.part in ("attention", "all"):
        grid = TINY_ATTENTION_GRID if args.shape == "tiny" else ATTENTION_GRID
        rows = attention_benchmark(args.device, args.repeats, grid=grid)
        table = format_attention(rows)
        print(table)
        dtype = "bf16" if args.device.startswith("cuda") else "float32"
        sections += [f"### Attention level: {' x '.join(map(str, grid))} video + 226 text tokens, 2 heads x 64, {dtype}",
                     "", table, ""]
        at = {(r["q"], r["kv"], r["s"]): r for r in rows}
        r4, r1 = at[(0.5, 0.5, 4)], at[(0.5, 0.5, 1)]
        verdict = (f"Target at (0.5, 0.5): >= 3.0x with s=4 (measured {r4['speedup']:.2f}x wall, {r4['cpu_speedup']:.2f}x "
                   f"CPU time) and >= 2.5x with s=1 (measured {r1['speedup']:.2f}x wall, {r1['cpu_speedup']:.2f}x CPU time).")
        print(verdict)
        sections += [verdict, ""]
    if args.part in ("model", "all"):
        m = model_benchmark(args.device, args.shape, args.repeats, args.rounds)
        table = format_model(m)
        print(table)
        title = {"third": "third grid (30 blocks, 4 heads x 64, 13 x 10 x 15 tokens)",
                 "5b": "full-size CogVideoX-5B (42 blocks, 48 heads x 64, 13 x 30 x 45 tokens)",
                 "tiny": "tiny (2 blocks, 2 heads x 16, 5 x 5 x 6 tokens)",
                 "wan-third": "Wan 2.1 at the third grid (30 blocks, 4 heads x 64, FFN 704, 13 x 10 x 15 tokens, 512 "
                              "text tokens by cross-attention)"}[args.shape]
        title += ", bf16" if args.device.startswith("cuda") else ", float32"
        verdict = (f"Targets: measured speedup >= 90% of the FLOPs prediction (measured {m['fraction']:.0%} wall, "
                   f"{m['measured_cpu'] / m['predicted']:.0%} CPU time); "
                   f"peak memory <= 1.10x dense (measured {m['peak_ratio']:.3f}x with the default allocator"
                   + (f", {m['pinned_ratio']:.3f}x with the mmap threshold pinned)." if m.get("pinned_ratio") else ")."))
        print(verdict)
        sections += [f"### Model level: {title}, uniform (q, kv) = (0.5, 0.5), s = 4, mean of 8 steps, batch 1", "",
                     table, "", verdict, ""]
    if not args.no_write:
        write_section("\n".join(sections).rstrip(), f"runtime-{args.device.split(':')[0]}-{args.shape}")


if __name__ == "__main__":
    main()
