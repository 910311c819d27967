"""Write tests/data/schedule_v2_golden.json: a schedule of format version 2, kept as test data.

The file must keep loading, with the same values and tag, in every future asymrnr
(tests/test_schedule_format.py checks it against the values below, written out again there on purpose).
Do not regenerate it when the format changes: add a new golden file for the new version instead.

    PYTHONPATH=src python tests/data/make_golden_schedule.py [OUT_DIR]   # default: next to this script

It describes 4 of the 40 blocks of Wan 2.2 T2V A14B, whose two experts share one architecture, over 6
UniPC steps: the timesteps are those diffusers 0.42.1's ``UniPCMultistepScheduler(prediction_type=
"flow_prediction", use_flow_sigmas=True, flow_shift=12.0)`` gives for 6 steps, and ``step_transformer``
follows the pipeline's ``boundary_ratio`` 0.875 (``transformer`` while ``t >= 875``, ``transformer_2``
after). It exercises every version-2 key: ``family``, the 3-tuple ``patch_size``, ``text_layout``
``none`` with ``cross_len``, ``sampler.config`` / ``transformers`` / ``step_transformer``,
``matching.partition``, ``h`` next to ``q``/``kv`` (never in one cell), and the environment provenance.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asymrnr.formats.descriptions import MatchingSettings, ModelDescription, SamplerDescription
from asymrnr.formats.schedule import Schedule

GOLDEN_NAME = "schedule_v2_golden.json"

MODEL = ModelDescription(
    family="wan",
    transformer_class="WanTransformer3DModel",
    num_blocks=4,
    num_heads=40,
    head_dim=128,
    patch_size=(1, 2, 2),
    rope=True,
    latent_grid=(21, 30, 52),
    text_len=0,
    text_layout="none",
    ffn_dim=13824,
    cross_len=512,
)
SAMPLER = SamplerDescription(
    scheduler_class="UniPCMultistepScheduler",
    num_steps=6,
    timesteps=(999.0, 983.0, 960.0, 923.0, 857.0, 707.0),
    config={
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 12.0,
        "solver_order": 2,
        "solver_type": "bh2",
        "timestep_spacing": "linspace",
        "final_sigmas_type": "zero",
    },
    transformers=("transformer", "transformer_2"),
    step_transformer=(0, 0, 0, 0, 1, 1),
)
MATCHING = MatchingSettings(
    metric="cosine", stride=(1, 2, 2), cache_steps=2, reduce_op="discard", granularity="head", seed=3,
    partition="window",
)
RATES = {
    "q": [
        [0.6, 0.6, 0.5, 0.5, 0.0, 0.0],
        [0.3, 0.3, 0.0, 0.0, 0.2, 0.2],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.25, 0.25, 0.0, 0.0],
    ],
    "kv": [
        [0.4, 0.4, 0.4, 0.4, 0.0, 0.0],
        [0.2, 0.2, 0.1, 0.1, 0.1, 0.1],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.35, 0.35, 0.0, 0.0],
    ],
    "h": [
        [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.35, 0.35, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ],
}
PROVENANCE = {
    "tool_version": "0.1.0",
    "created": "2026-06-01T12:00:00Z",
    "notes": "Golden example of schedule format version 2 (4 of Wan 2.2 A14B's 40 blocks, 6 UniPC steps, two "
             "experts). It must keep loading in every later asymrnr release: never edit it.",
    "source": "hand-written",
    "model_id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "dtype": "bfloat16",
    "torch_version": "2.13.0",
    "diffusers_version": "0.42.1",
}


def golden_schedule() -> Schedule:
    return Schedule(MODEL, SAMPLER, MATCHING, RATES, PROVENANCE)


def main(out_dir: Path) -> Path:
    return golden_schedule().save(out_dir / GOLDEN_NAME)


if __name__ == "__main__":
    written = main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print(f"wrote {written} ({written.stat().st_size} bytes)")
