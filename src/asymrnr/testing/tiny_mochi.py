"""Tiny Mochi-1 (T2V) pipeline with random weights.

``MochiPipeline`` with a tiny ``MochiTransformer3DModel`` (2 blocks, 2 heads of 16; asymmetric streams as the
real model: 32 video channels, 16 text channels), a tiny ``AutoencoderKLMochi`` with the real compression
(8x spatial, 6x temporal: ``MochiPipeline`` hard-codes both, and a patch of 2), a tiny ``T5EncoderModel``
and the sentencepiece ``T5Tokenizer`` of :mod:`asymrnr.models.tiny`.

The default generation is 64 x 80 px, 13 frames: 3 latent frames of 8 x 10, i.e. a token grid of 3 x 4 x 5,
and 32 text tokens (right-padded; Mochi's attention drops the padded ones per sample). CFG is batched
(one transformer call of batch 2 per step), but the attention runs one sample at a time.

``MochiTransformer3DModel`` creates its learned RoPE frequencies (``pos_frequencies``) as zeros, which makes
RoPE the identity; the tiny model fills them with seeded random values so that RoPE does something.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._common import TinyDefaults, build_t5_encoder, build_t5_tokenizer, load_tiny_family, seeded

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import MochiPipeline

TEXT_DIM = 32  # T5 d_model (real: 4096); the caption pooler uses 8 heads, so a multiple of 8
TEXT_LEN = 32  # real default max_sequence_length: 256
LATENT_CHANNELS = 12  # as the real model: MochiPipeline hard-codes 12 when it decodes

MOCHI_T2V = TinyDefaults(
    family="mochi-1",
    pipeline_class="MochiPipeline",
    height=64,
    width=80,
    num_frames=13,
    num_inference_steps=2,
    guidance_scale=4.5,
    max_sequence_length=TEXT_LEN,
    latent_grid=(3, 4, 5),
    text_len=TEXT_LEN,
)

_SEED_OFFSET = {"transformer": 0, "vae": 1, "text_encoder": 2}


def tiny_mochi_transformer_config() -> dict[str, Any]:
    return dict(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        pooled_projection_dim=16,  # the text stream's width (real: 1536 next to 3072 video channels)
        in_channels=LATENT_CHANNELS,
        qk_norm="rms_norm",
        text_embed_dim=TEXT_DIM,
        time_embed_dim=16,
        activation_fn="swiglu",
        max_sequence_length=TEXT_LEN,
    )


def tiny_mochi_vae_config() -> dict[str, Any]:
    """``AutoencoderKLMochi`` kwargs: real layout and latent statistics; 32 channels (its group norms use 32
    groups), one layer per block."""
    return dict(
        in_channels=15,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=(1, 1, 1, 1, 1),
        temporal_expansions=(1, 2, 3),
        spatial_expansions=(2, 2, 2),
        add_attention_block=(False, True, True, True, True),
        scaling_factor=1.0,
    )


def tiny_mochi_scheduler_config() -> dict[str, Any]:
    """The real Mochi scheduler config; the pipeline passes its own sigmas (linear-quadratic schedule)."""
    return dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, invert_sigmas=True)


def build_tiny_mochi_transformer(seed: int = 0):
    import torch
    from diffusers import MochiTransformer3DModel

    with seeded(seed + _SEED_OFFSET["transformer"]):
        model = MochiTransformer3DModel(**tiny_mochi_transformer_config())
        with torch.no_grad():  # zeros at init would make RoPE the identity
            model.pos_frequencies.normal_(0.0, 0.5)
    return model.eval()


def build_tiny_mochi_pipeline(seed: int = 0) -> MochiPipeline:
    """A whole tiny ``MochiPipeline``, in memory, float32 on CPU; no file is read."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

    tokenizer = build_t5_tokenizer(TEXT_LEN)
    with seeded(seed + _SEED_OFFSET["vae"]):
        vae = AutoencoderKLMochi(**tiny_mochi_vae_config()).eval()
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**tiny_mochi_scheduler_config()),
        vae=vae,
        text_encoder=build_t5_encoder(len(tokenizer), TEXT_DIM, seed + _SEED_OFFSET["text_encoder"]),
        tokenizer=tokenizer,
        transformer=build_tiny_mochi_transformer(seed),
    )


def load_tiny_mochi_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                             root: str | os.PathLike | None = None) -> MochiPipeline:
    """The tiny Mochi pipeline, saved once under the asymrnr cache and loaded with ``from_pretrained``."""
    return load_tiny_family(MOCHI_T2V.family, MOCHI_T2V.pipeline_class, build_tiny_mochi_pipeline, seed=seed,
                            root=root, torch_dtype=torch_dtype)


__all__ = [
    "MOCHI_T2V",
    "tiny_mochi_transformer_config",
    "tiny_mochi_vae_config",
    "tiny_mochi_scheduler_config",
    "build_tiny_mochi_transformer",
    "build_tiny_mochi_pipeline",
    "load_tiny_mochi_pipeline",
]
