"""Profiler overhead: a profiled generation against the same generation unprofiled, in one run.

    python benchmarks/bench_profiler.py            # writes the profiler section of BENCHMARKS.md

The model is the "third grid" transformer of the field notes (30 blocks, 4 heads x 64, 160x240 pixels x 49
frames -> 13 x 10 x 15 tokens, 226 text tokens) inside a real CogVideoXPipeline (tiny VAE and text encoder:
prompt embeddings are passed in, latents are returned, so only the transformer is timed), with
classifier-free guidance, for a few DPM steps. Target: profiled <= 1.5x unprofiled. Also reports the file
size per run and per (step, block).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runtime import THIRD_GRID, TEXT, _machine, write_section  # noqa: E402


def build_pipeline():
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from asymrnr.models.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline("5b")
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**THIRD_GRID).eval()
    pipe = CogVideoXPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=tiny.vae,
                             transformer=transformer, scheduler=tiny.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    import asymrnr

    pipe = build_pipeline()
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, TEXT, 4096, generator=g)
    negative = torch.randn(1, TEXT, 4096, generator=g)
    kwargs = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, height=240, width=160, num_frames=49,
                  num_inference_steps=args.steps, guidance_scale=6.0, output_type="latent")

    def generate(seed):
        pipe(generator=torch.Generator().manual_seed(seed), **kwargs)

    generate(0)  # warm-up
    plain, profiled = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stats.h5"
        for r in range(args.repeats):  # interleaved, so machine noise hits both alike
            start = time.perf_counter()
            generate(r)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            with asymrnr.profile(pipe, path):
                generate(r)
            profiled.append(time.perf_counter() - start)
        size = path.stat().st_size
        runs = asymrnr.profiler.load_stats(path).num_runs
    t_plain, t_prof = statistics.median(plain), statistics.median(profiled)
    blocks = THIRD_GRID["num_layers"]
    per_run = size / runs
    table = "\n".join([
        "| generation | unprofiled (s) | profiled (s) | overhead | file per run | per (step, block) |",
        "|---|---|---|---|---|---|",
        f"| third grid, CFG, {args.steps} steps | {t_plain:.2f} | {t_prof:.2f} | **{t_prof / t_plain:.3f}x** | "
        f"{per_run / 1024:.1f} KiB | {per_run / (args.steps * blocks):.0f} B |",
    ])
    verdict = f"Target: profiled <= 1.5x unprofiled (measured {t_prof / t_plain:.3f}x)."
    print(table)
    print(verdict)
    if not args.no_write:
        command = "python benchmarks/bench_profiler.py " + " ".join(sys.argv[1:])
        write_section("\n".join([f"## Profiler overhead (cpu: {_machine('cpu')})", "", f"Command: `{command.strip()}`", "",
                                 table, "", verdict]), "profiler-cpu")


if __name__ == "__main__":
    main()
