"""Tiny LTX-Video (T2V) pipeline with random weights.

``LTXPipeline`` with a tiny ``LTXVideoTransformer3DModel`` (2 blocks, 2 heads of 16, patch 1 x 1 as the real
model), a tiny ``AutoencoderKLLTXVideo`` with the real compression (32x spatial: a 4 x 4 pixel patch and
three 2x downsamplings; 8x temporal), a tiny ``T5EncoderModel`` and the sentencepiece ``T5Tokenizer`` of
:mod:`asymrnr.models.tiny`, and the real ``FlowMatchEulerDiscreteScheduler`` config (dynamic shifting,
``shift_terminal=0.1``; the pipeline computes ``mu`` from the video sequence length).

The default generation is 128 x 160 px, 17 frames: 3 latent frames of 4 x 5, i.e. a token grid of
3 x 4 x 5 (the pipeline packs the latents to ``[B, 60, C]`` before the transformer) and 128 text tokens
(the pipeline's default ``max_sequence_length``). CFG is batched: one transformer call of batch 2 per step.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._common import TinyDefaults, build_t5_encoder, build_t5_tokenizer, load_tiny_family, seeded

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import LTXPipeline

TEXT_DIM = 32  # T5 d_model (real: 4096)
LATENT_CHANNELS = 8  # real: 128
TEXT_LEN = 128

LTX_T2V = TinyDefaults(
    family="ltx-video",
    pipeline_class="LTXPipeline",
    height=128,
    width=160,
    num_frames=17,
    num_inference_steps=2,  # the real scheduler config needs at least 2 (shift_terminal stretches to 0.1)
    guidance_scale=3.0,
    max_sequence_length=TEXT_LEN,
    latent_grid=(3, 4, 5),
    text_len=TEXT_LEN,
    extra=(("frame_rate", 25),),
)

_SEED_OFFSET = {"transformer": 0, "vae": 1, "text_encoder": 2}


def tiny_ltx_transformer_config() -> dict[str, Any]:
    """``LTXVideoTransformer3DModel`` kwargs. Its RoPE covers the whole inner dim (32): 32 // 6 = 5 frequencies
    per axis, interleaved, with 32 % 6 = 2 leading pass-through channels (real: 2048 -> 341 per axis, 2)."""
    return dict(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=2,
        activation_fn="gelu-approximate",
        qk_norm="rms_norm_across_heads",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=TEXT_DIM,
        attention_bias=True,
        attention_out_bias=True,
    )


def tiny_ltx_vae_config() -> dict[str, Any]:
    """``AutoencoderKLLTXVideo`` kwargs: the real 0.9.0 layout with 8 channels and one layer per block."""
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        resnet_norm_eps=1e-6,
        scaling_factor=1.0,
        encoder_causal=True,
        decoder_causal=False,
    )


def tiny_ltx_scheduler_config() -> dict[str, Any]:
    """The real LTX-Video scheduler: flow matching with resolution-dependent (dynamic) shift, terminal 0.1."""
    return dict(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def build_tiny_ltx_transformer(seed: int = 0):
    from diffusers import LTXVideoTransformer3DModel

    with seeded(seed + _SEED_OFFSET["transformer"]):
        model = LTXVideoTransformer3DModel(**tiny_ltx_transformer_config())
    return model.eval()


def build_tiny_ltx_pipeline(seed: int = 0) -> LTXPipeline:
    """A whole tiny ``LTXPipeline``, in memory, float32 on CPU; no file is read."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline

    tokenizer = build_t5_tokenizer(TEXT_LEN)
    with seeded(seed + _SEED_OFFSET["vae"]):
        vae = AutoencoderKLLTXVideo(**tiny_ltx_vae_config()).eval()
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**tiny_ltx_scheduler_config()),
        vae=vae,
        text_encoder=build_t5_encoder(len(tokenizer), TEXT_DIM, seed + _SEED_OFFSET["text_encoder"]),
        tokenizer=tokenizer,
        transformer=build_tiny_ltx_transformer(seed),
    )


def load_tiny_ltx_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                           root: str | os.PathLike | None = None) -> LTXPipeline:
    """The tiny LTX-Video pipeline, saved once under the asymrnr cache and loaded with ``from_pretrained``."""
    return load_tiny_family(LTX_T2V.family, LTX_T2V.pipeline_class, build_tiny_ltx_pipeline, seed=seed, root=root,
                            torch_dtype=torch_dtype)


__all__ = [
    "LTX_T2V",
    "tiny_ltx_transformer_config",
    "tiny_ltx_vae_config",
    "tiny_ltx_scheduler_config",
    "build_tiny_ltx_transformer",
    "build_tiny_ltx_pipeline",
    "load_tiny_ltx_pipeline",
]
