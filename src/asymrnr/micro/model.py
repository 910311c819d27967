"""The micro CogVideoX pipeline: a small trained 5B-style DiT (3D RoPE, DPM) over our procedural videos.

Components: the tiny T5 text encoder and tokenizer of :mod:`asymrnr.models.tiny` (frozen, random), the
fixed :class:`~asymrnr.micro.codec.PixelCodec` as VAE, ``CogVideoXDPMScheduler`` as in CogVideoX-5B, and a
``CogVideoXTransformer3DModel`` trained by ``scripts/train_micro.py``. The trained pipeline ships in
``asymrnr/data/micro-cogvideox`` and loads through ``CogVideoXPipeline.from_pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asymrnr.micro import data as D

MICRO_TEXT_LEN = 48  # the longest prompt of the grammar is 42 tokens
MICRO_NUM_STEPS = 20
MICRO_GUIDANCE = 5.0
LATENT_CHANNELS = 12
SPATIAL_SCALE = 4

TRANSFORMER_CONFIG: dict[str, Any] = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    time_embed_dim=64,
    text_embed_dim=32,  # the tiny T5's d_model
    num_layers=6,
    sample_height=D.HEIGHT // SPATIAL_SCALE,  # 12 latent px -> 6 token rows
    sample_width=D.WIDTH // SPATIAL_SCALE,
    sample_frames=D.NUM_FRAMES,  # 13 video frames -> 4 latent frames
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=MICRO_TEXT_LEN,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=False,
)


def default_weights_dir() -> Path:
    """The shipped pipeline folder (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "data" / "micro-cogvideox"


def call_kwargs() -> dict[str, Any]:
    return dict(
        height=D.HEIGHT, width=D.WIDTH, num_frames=D.NUM_FRAMES, num_inference_steps=MICRO_NUM_STEPS,
        guidance_scale=MICRO_GUIDANCE, max_sequence_length=MICRO_TEXT_LEN,
    )


def build_untrained_pipeline(seed: int = 0, transformer_overrides: dict | None = None, scaling_factor: float = 1.0):
    """A micro pipeline with a freshly initialised transformer (float32, CPU)."""
    import torch
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    from asymrnr.micro.codec import PixelCodec
    from asymrnr.models.tiny import build_tiny_text_encoder, build_tiny_tokenizer, tiny_scheduler_config

    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = MICRO_TEXT_LEN
    text_encoder = build_tiny_text_encoder(len(tokenizer), seed=0)
    cfg = {**TRANSFORMER_CONFIG, **(transformer_overrides or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**cfg)
    vae = PixelCodec(scaling_factor=scaling_factor)
    sched = tiny_scheduler_config("5b")
    sched.pop("_class_name")
    scheduler = CogVideoXDPMScheduler(**sched)
    return CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def load_micro_pipeline(path: str | os.PathLike | None = None, torch_dtype=None):
    """``CogVideoXPipeline.from_pretrained`` of the shipped (or given) micro pipeline folder, offline."""
    import asymrnr.micro.codec  # noqa: F401  diffusers loads a custom component's library only once imported
    from asymrnr.errors import ModelNotFoundError
    from asymrnr.models.loading import load_pipeline_dir

    path = Path(path) if path is not None else default_weights_dir()
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"the micro-cogvideox weights are missing from {str(path)!r}; reinstall asymrnr, or train them with "
            "`python scripts/train_micro.py`"
        )
    return load_pipeline_dir(path, "CogVideoXPipeline", torch_dtype=torch_dtype, what=f"the micro pipeline {path}")


__all__ = [
    "MICRO_TEXT_LEN", "MICRO_NUM_STEPS", "MICRO_GUIDANCE", "TRANSFORMER_CONFIG", "default_weights_dir",
    "call_kwargs", "build_untrained_pipeline", "load_micro_pipeline",
]
