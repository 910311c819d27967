"""Attention-level speed of AsymRnR at each family's real default grid (CPU, one head group).

    python benchmarks/bench_families.py --threads 1         # prints the table, writes its section of BENCHMARKS.md

For every family preset, one self-attention call at the preset's real token grid and text layout (text
first, last or none, with its text length), ``--heads`` heads x the model's head dim: dense attention
against the runtime's own path (``asymrnr.runtime.reduce.attend``: matching on Q and V per head, reduce,
attend, restore) at (q, kv) = (0.5, 0.5), matching every call (s = 1) and reusing it (s = 4, the matching
amortised over 4 calls). The ratio is the dense wall time over the AsymRnR wall time in the same run (medians
of ``--repeats``), against the ideal ``1 / ((1 - q)(1 - kv))`` of the attention core alone.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

FAMILY_PRESETS = ("cogvideox-5b", "wan2.1-t2v-14b", "hunyuanvideo", "ltx-video", "mochi-1")


def family_call(preset_name: str):
    """(family, grid, text_len, text_layout, head_dim) of one self-attention call of ``preset_name``."""
    from asymrnr import archs
    from asymrnr.models.presets import get_preset

    p = get_preset(preset_name)
    adapter = archs.get(p.family)
    rules = adapter.generation_rules()
    grid = real_grid(adapter, p, rules)
    text = p.max_sequence_length if adapter.text_layout != "none" else 0
    return p.family, grid, text, adapter.text_layout, p.architecture["head_dim"]


def real_grid(adapter, preset, rules):
    """The preset's token grid (patch sizes of the real models: (1, 2, 2), LTX (1, 1, 1) over 32x VAE)."""
    from types import SimpleNamespace

    patch = {"ltx": SimpleNamespace(patch_size=1, patch_size_t=1)}.get(preset.family,
                                                                        SimpleNamespace(patch_size=2, patch_size_t=1))
    if preset.family == "wan":
        patch = SimpleNamespace(patch_size=(1, 2, 2))
    return adapter.token_grid(patch, preset.height, preset.width, preset.num_frames, rules.vae_spatial,
                              rules.vae_temporal)


class _Rt:
    """The smallest runtime ``reduce.attend`` needs: one block, a schedule's matching settings, a plan."""

    def __init__(self, grid, q, kv, cache_steps):
        from asymrnr.formats.descriptions import MatchingSettings
        from asymrnr.runtime.context import BlockPlan, CallState, MatchingCache, PartitionCache

        n = math.prod(grid)
        self.matching = MatchingSettings(cache_steps=cache_steps)
        self.plans = [BlockPlan(n_q=int(q * n), n_kv=int(kv * n))]
        self.call = CallState(500.0, "cond", 0, 0, 0, tuple(grid), True)
        self.cache, self.partitions, self.observers, self.match_log = MatchingCache(), PartitionCache(), [], []
        self.detached = False
        self.step = 0

    def partition(self, block, feature, device, **_):
        from asymrnr import vocab

        return self.partitions.get(self.call.grid, self.matching.stride, 0, block, vocab.PARTITION_OF[feature],
                                   self.call.window, device)

    def next_step(self):
        from asymrnr.runtime.context import CallState

        self.step += 1
        window = self.step // self.matching.cache_steps
        self.call = CallState(500.0, "cond", self.step, self.step, window, self.call.grid, False)


def bench(preset: str, heads: int, repeats: int, q=0.5, kv=0.5) -> dict:
    from asymrnr.runtime import reduce as R

    family, grid, text, layout, d = family_call(preset)
    n = math.prod(grid)
    g = torch.Generator().manual_seed(0)
    # [B, S, H, D] memory, viewed as [B, H, S, D] (how the processors hold Q, K, V)
    qkv = [torch.randn(1, text + n, heads, d, generator=g).transpose(1, 2) for _ in range(3)]

    def sdpa(a, b, c, attn_mask=None):
        return F.scaled_dot_product_attention(a, b, c, attn_mask=attn_mask)

    def timed(fn):
        fn()
        walls = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t)
        return statistics.median(walls)

    dense = timed(lambda: sdpa(*qkv))
    out = {"preset": preset, "family": family, "grid": grid, "text": text, "layout": layout, "heads": heads,
           "head_dim": d, "dense_s": dense}
    for s in (1, 4):
        rt = _Rt(grid, q, kv, s)

        def call():
            r = R.attend(rt, 0, *qkv, text_len=text, text_layout=layout, heads_dim=1, attend_fn=sdpa)
            rt.next_step()
            return r

        # s calls per sample: the matching is computed once every s calls, as in a generation
        per_call = timed(lambda: [call() for _ in range(s)]) / s
        out[f"s{s}"] = per_call
    out["ideal"] = 1 / ((1 - q) * (1 - kv))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default=",".join(FAMILY_PRESETS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    rows = []
    for p in args.presets.split(","):
        r = bench(p, args.heads, args.repeats)
        rows.append(r)
        print(r, flush=True)
    lines = [
        f"Command: `python benchmarks/bench_families.py --threads {args.threads} --heads {args.heads}` "
        f"({platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}); "
        "one attention call per family at its real default grid, (q, kv) = (0.5, 0.5), per-head matching.",
        "",
        "| preset | token grid (N) | text tokens (layout) | heads x dim | dense (s) | AsymRnR s=1 (s) | speedup s=1 | "
        "AsymRnR s=4 (s) | speedup s=4 | ideal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = math.prod(r["grid"])
        lines.append(f"| {r['preset']} | {' x '.join(map(str, r['grid']))} ({n:,}) | {r['text']} ({r['layout']}) | "
                     f"{r['heads']} x {r['head_dim']} | {r['dense_s']:.3f} | {r['s1']:.3f} | "
                     f"**{r['dense_s'] / r['s1']:.2f}x** | {r['s4']:.3f} | **{r['dense_s'] / r['s4']:.2f}x** | "
                     f"{r['ideal']:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        from bench_runtime import write_section

        write_section(text, "families")


if __name__ == "__main__":
    main()
