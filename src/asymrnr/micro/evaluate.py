"""Generate the micro models' held-out prompts and read the videos with the checker.

The held-out prompts (never trained on) are :func:`asymrnr.micro.data.split_prompts`'s, generated with seeds
``1000 + 100 * r + i`` for prompt ``i`` and repeat ``r`` (repeat 0 is the seed the quality benchmark always
used), in one batched pipeline call per repeat.
"""

from __future__ import annotations

import numpy as np

from asymrnr.micro import data as D


def heldout_prompts(num_prompts: int = 32) -> list[str]:
    _, heldout = D.split_prompts()
    return [D.make_prompt(*a) for a in heldout[:num_prompts]]


def heldout_seeds(num_prompts: int, repeat: int = 0) -> list[int]:
    return [1000 + 100 * repeat + i for i in range(num_prompts)]


def generate(pipe, prompts: list[str], seeds: list[int], settings: dict, batch: int | None = None) -> np.ndarray:
    """Videos ``float32 [P, F, H, W, 3]`` in ``[0, 1]`` of ``prompts`` with one generator per prompt."""
    import torch

    batch = batch or len(prompts)
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
            frames = pipe(prompts[i:i + batch], generator=gens, output_type="np", **settings).frames
            out.append(np.asarray(frames, dtype=np.float32))
    return np.concatenate(out)


def checker_accuracy(videos: np.ndarray, prompts: list[str]) -> dict:
    """Share of videos the checker reads right (colour and motion), with the per-prompt readings."""
    from asymrnr.micro.checker import score

    readings = [score(v, p) for v, p in zip(videos, prompts)]
    return {
        "accuracy": float(np.mean([r["correct"] for r in readings])),
        "colour": float(np.mean([r["colour_ok"] for r in readings])),
        "motion": float(np.mean([r["motion_ok"] for r in readings])),
        "misses": [(p, r["colour"], r["trajectory"]) for p, r in zip(prompts, readings) if not r["correct"]],
        "readings": readings,
    }


__all__ = ["heldout_prompts", "heldout_seeds", "generate", "checker_accuracy"]
