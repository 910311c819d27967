"""Tiny CogVideoX image-to-video (CogVideoX-5B-I2V style) pipeline with random weights.

``CogVideoXImageToVideoPipeline`` built from the pieces of :mod:`asymrnr.models.tiny` (its ``5b`` style: 3D
RoPE, ``CogVideoXDPMScheduler``, the same tiny VAE, T5 encoder and tokenizer), with the transformer changes
of the real 5B-I2V model: twice the input channels (noise latents + image latents, concatenated on the
channel axis of ``[B, F, C, H, W]``) and learned positional embeddings on top of RoPE, which pin the
resolution to the transformer's sample size (64 x 80 px here, 480 x 720 for the real model) and the prompt
length to ``max_text_seq_length`` (226).

The default generation is 64 x 80 px, 9 frames: a token grid of 3 x 4 x 5 after 226 text tokens (text
first). CFG is batched: one transformer call of batch 2 per step.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._common import TinyDefaults, load_tiny_family, seeded

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import CogVideoXImageToVideoPipeline

COGVIDEOX_I2V = TinyDefaults(
    family="cogvideox-i2v",
    pipeline_class="CogVideoXImageToVideoPipeline",
    height=64,
    width=80,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=6.0,
    max_sequence_length=226,
    latent_grid=(3, 4, 5),
    text_len=226,
    needs_image=True,
)

_SEED_OFFSET = {"transformer": 0, "vae": 1, "text_encoder": 2}


def tiny_cogvideox_i2v_transformer_config() -> dict[str, Any]:
    from asymrnr.models.tiny import tiny_transformer_config

    cfg = tiny_transformer_config("5b")
    cfg.update(in_channels=2 * cfg["out_channels"], use_learned_positional_embeddings=True)
    return cfg


def build_tiny_cogvideox_i2v_transformer(seed: int = 0):
    from diffusers import CogVideoXTransformer3DModel

    with seeded(seed + _SEED_OFFSET["transformer"]):
        model = CogVideoXTransformer3DModel(**tiny_cogvideox_i2v_transformer_config())
    return model.eval()


def build_tiny_cogvideox_i2v_pipeline(seed: int = 0) -> CogVideoXImageToVideoPipeline:
    """A whole tiny ``CogVideoXImageToVideoPipeline``, in memory, float32 on CPU; no file is read."""
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXImageToVideoPipeline

    from asymrnr.models.tiny import build_tiny_text_encoder, build_tiny_tokenizer, tiny_scheduler_config, tiny_vae_config

    tokenizer = build_tiny_tokenizer()
    with seeded(seed + _SEED_OFFSET["vae"]):
        vae = AutoencoderKLCogVideoX(**tiny_vae_config("5b")).eval()
    sched_cfg = tiny_scheduler_config("5b")
    scheduler = getattr(diffusers, sched_cfg.pop("_class_name"))(**sched_cfg)
    return CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=build_tiny_text_encoder(len(tokenizer), seed=seed),
        vae=vae,
        transformer=build_tiny_cogvideox_i2v_transformer(seed),
        scheduler=scheduler,
    )


def load_tiny_cogvideox_i2v_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                                     root: str | os.PathLike | None = None) -> CogVideoXImageToVideoPipeline:
    """The tiny CogVideoX I2V pipeline, saved once under the asymrnr cache and loaded with ``from_pretrained``."""
    return load_tiny_family(COGVIDEOX_I2V.family, COGVIDEOX_I2V.pipeline_class, build_tiny_cogvideox_i2v_pipeline,
                            seed=seed, root=root, torch_dtype=torch_dtype)


__all__ = [
    "COGVIDEOX_I2V",
    "tiny_cogvideox_i2v_transformer_config",
    "build_tiny_cogvideox_i2v_transformer",
    "build_tiny_cogvideox_i2v_pipeline",
    "load_tiny_cogvideox_i2v_pipeline",
]
