"""Write tests/data/stats_v2_golden.h5: a small stats file of format version 2, kept as test data.

Golden files must keep loading, with the same values, in every future asymrnr (tests/test_stats_format.py
checks them against the closed-form values below, written out again there on purpose). Do not
regenerate one when the format changes: add a new golden file for the new version instead.

- ``stats_v1_golden.h5`` (format version 1, CogVideoX model description of version 1) was written by this
  script's version-1 form (git history) with the same values; it is never regenerated.
- ``stats_v2_golden.h5`` (format version 2) is written by ``main``: a Wan 2.2-style model description (two
  transformers, ``step_transformer`` [0, 0, 1], a scheduler config, matching partition "window").

    PYTHONPATH=src python tests/data/make_golden_stats.py    # writes stats_v2_golden.h5 next to this script

Values (r run, br branch, s step, b block, f feature, i quantile/rate/bin index), all exact in float32:
    base = 1000 r + 100 br + 10 s + b + f / 8
    sim_mean:       euclidean -base,            cosine base / 2048
    sim_quantiles:  euclidean -base - (10 - i), cosine base / 2048 + i / 16
    sim_rate_curve: sim_mean - i / 4 for rate index i < 17, NaN for i >= 17 (0.90, 0.95: past the ceiling)
    norm_quantiles: base / 16 + i
    norm_hist:      (r + 1) * (i % 7) + br + b     (int64 counts)
    stability_same_dst: NaN at step 0, else 0.25 + s / 8 + b / 16 + f / 64
    stability_corr:     NaN at step 0, else 1 - (s / 16 + b / 32 + f / 64 + br / 128 + r / 256)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from asymrnr.profiler.stats_format import (
    QUANTILE_LEVELS,
    RATE_LEVELS,
    STAT_FEATURES,
    STAT_METRICS,
    RunStats,
    StatsWriter,
)

GOLDEN_NAME = "stats_v2_golden.h5"
BRANCHES = ("cond", "uncond")
NUM_STEPS, NUM_BLOCKS = 3, 2
PROMPTS = ("a red fox running through fresh snow", "un chat sur la plage, 猫が海辺を歩く ✓")
SEEDS = (42, 7)
TIMESTEPS = (999.0, 666.0, 333.0)
CEILING_INDEX = 17  # rate levels from index 17 on (0.90, 0.95) are past the ceiling
MODEL = {  # ModelDescription version 2 (asymrnr.formats.descriptions)
    "family": "wan",
    "transformer_class": "WanTransformer3DModel",
    "num_blocks": NUM_BLOCKS,
    "num_heads": 2,
    "head_dim": 8,
    "patch_size": [1, 2, 2],
    "rope": True,
    "latent_grid": [4, 6, 8],
    "text_len": 0,
    "text_layout": "none",
    "ffn_dim": 64,
    "cross_len": 512,
    "block_kinds": [],
}
GENERATION = {
    "height": 96,
    "width": 128,
    "num_frames": 13,
    "num_steps": NUM_STEPS,
    "guidance_scale": 4.0,
    "scheduler_class": "UniPCMultistepScheduler",
    "pipeline_class": "WanPipeline",
    "negative_prompt": "",
    "transformers": ["transformer", "transformer_2"],
    "step_transformer": [0, 0, 1],  # Wan 2.2: the high-noise expert, then the low-noise one
    "scheduler_config": {"flow_shift": 3.0, "prediction_type": "flow_prediction", "use_flow_sigmas": True},
}
MATCHING = {"stride": [2, 2, 2], "seed": 0, "granularity": "joint", "partition": "window"}
TOOL_VERSION = "0.1.0"


def golden_run(r: int) -> RunStats:
    br, s, b, f = np.meshgrid(
        np.arange(len(BRANCHES)), np.arange(NUM_STEPS), np.arange(NUM_BLOCKS), np.arange(len(STAT_FEATURES)),
        indexing="ij",
    )
    base = (1000 * r + 100 * br + 10 * s + b + f / 8).astype(np.float32)
    q = np.arange(len(QUANTILE_LEVELS), dtype=np.float32)
    i = np.arange(len(RATE_LEVELS), dtype=np.float32)
    bins = np.arange(70)
    sim_mean = {"euclidean": -base, "cosine": base / 2048}
    sim_quantiles = {
        "euclidean": -base[..., None] - (10 - q),
        "cosine": base[..., None] / 2048 + q / 16,
    }
    sim_rate_curve = {}
    for m in STAT_METRICS:
        curve = sim_mean[m][..., None] - i / 4
        curve[..., CEILING_INDEX:] = np.nan
        sim_rate_curve[m] = curve.astype(np.float32)
    same = (0.25 + s / 8 + b / 16 + f / 64).astype(np.float32)
    corr = (1 - (s / 16 + b / 32 + f / 64 + br / 128 + r / 256)).astype(np.float32)
    same[:, 0] = np.nan
    corr[:, 0] = np.nan
    return RunStats(
        prompt=PROMPTS[r],
        seed=SEEDS[r],
        timesteps=np.asarray(TIMESTEPS),
        sim_mean={m: v.astype(np.float32) for m, v in sim_mean.items()},
        sim_quantiles={m: v.astype(np.float32) for m, v in sim_quantiles.items()},
        sim_rate_curve=sim_rate_curve,
        norm_quantiles=(base[..., None] / 16 + q).astype(np.float32),
        norm_hist=((r + 1) * (bins % 7) + br[..., None] + b[..., None]).astype(np.int64),
        stability_same_dst=same,
        stability_corr=corr,
    )


def main(out_dir: Path) -> Path:
    path = out_dir / GOLDEN_NAME
    with StatsWriter(
        path,
        model=MODEL,
        generation=GENERATION,
        matching=MATCHING,
        branches=BRANCHES,
        profiled_schedule=None,
        tool_version=TOOL_VERSION,
        mode="w",
    ) as writer:
        for r in range(len(PROMPTS)):
            writer.write_run(golden_run(r))
    return path


if __name__ == "__main__":
    written = main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print(f"wrote {written} ({written.stat().st_size} bytes)")
