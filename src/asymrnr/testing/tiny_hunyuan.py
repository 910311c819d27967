"""Tiny HunyuanVideo (T2V) pipeline with random weights.

``HunyuanVideoPipeline`` with a tiny ``HunyuanVideoTransformer3DModel`` (2 dual-stream + 2 single-stream
blocks, 2 heads of 16, RoPE axes 4/6/6, guidance-distilled: ``guidance_embeds=True``), a tiny
``AutoencoderKLHunyuanVideo`` (8x spatial, 4x temporal), a tiny Llama text encoder (``LlamaModel``; the
pipeline reads its third-to-last hidden states) with a BPE ``LlamaTokenizer`` trained here, and a tiny
``CLIPTextModel`` (pooled output) with a byte-level ``CLIPTokenizer``.

The default generation is 64 x 80 px, 9 frames: a token grid of 3 x 4 x 5 (patch 2, temporal patch 1) next
to 64 text tokens (right-padded; the transformer masks the padding with a boolean key mask).

HunyuanVideo's default prompt template is a Llama-3 chat prompt whose first 95 tokens (``crop_start``) are
cut off the encoded text; our tokenizer counts that prefix differently, so the tiny pipeline must be called
with :data:`TINY_HUNYUAN_PROMPT_TEMPLATE` (it is in :data:`HUNYUAN_T2V`'s call kwargs) whose ``crop_start``
is the length of its own prefix in our tokenizer (checked by the tests).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._common import (
    TinyDefaults,
    build_clip_text_encoder,
    build_clip_tokenizer,
    build_llama_encoder,
    build_llama_tokenizer,
    load_tiny_family,
    seeded,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import HunyuanVideoPipeline

TEXT_DIM = 32  # Llama hidden size (real: 4096)
POOLED_DIM = 32  # CLIP text hidden size (real: 768)
TEXT_LEN = 64  # max_sequence_length (real default: 256)

#: The real template's wording (Llama-3 chat markers, single tokens in our tokenizer) with a shorter system
#: prompt. ``crop_start`` = tokens before the user's prompt: ``<s>`` + the prefix up to ``\n\n`` after the
#: user header (the real template: 95).
TINY_HUNYUAN_PROMPT_TEMPLATE: dict[str, Any] = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video: the main content, colours, "
        "motion and camera.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 49,
}

HUNYUAN_T2V = TinyDefaults(
    family="hunyuanvideo",
    pipeline_class="HunyuanVideoPipeline",
    height=64,
    width=80,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=6.0,  # embedded guidance (guidance-distilled); true CFG is off (true_cfg_scale=1)
    max_sequence_length=TEXT_LEN,
    latent_grid=(3, 4, 5),
    text_len=TEXT_LEN,
    extra=(("prompt_template", TINY_HUNYUAN_PROMPT_TEMPLATE),),
)

_SEED_OFFSET = {"transformer": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3}


def tiny_hunyuan_transformer_config() -> dict[str, Any]:
    return dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_single_layers=2,
        num_refiner_layers=1,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM,
        rope_theta=256.0,
        rope_axes_dim=(4, 6, 6),  # sums to the head dim (real: 16, 56, 56 for 128)
    )


def tiny_hunyuan_vae_config() -> dict[str, Any]:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def tiny_hunyuan_scheduler_config() -> dict[str, Any]:
    """The real HunyuanVideo scheduler: ``FlowMatchEulerDiscreteScheduler`` with a static shift of 7."""
    return dict(num_train_timesteps=1000, shift=7.0, use_dynamic_shifting=False)


def hunyuan_prompt_crop_start(tokenizer, template: dict[str, Any] | None = None) -> int:
    """Tokens of ``template`` before the prompt (with ``<s>``): the ``crop_start`` it needs in ``tokenizer``."""
    template = template or TINY_HUNYUAN_PROMPT_TEMPLATE
    prefix = template["template"].split("{}")[0]
    return len(tokenizer(prefix).input_ids)


def build_tiny_hunyuan_transformer(seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    with seeded(seed + _SEED_OFFSET["transformer"]):
        model = HunyuanVideoTransformer3DModel(**tiny_hunyuan_transformer_config())
    return model.eval()


def build_tiny_hunyuan_pipeline(seed: int = 0) -> HunyuanVideoPipeline:
    """A whole tiny ``HunyuanVideoPipeline``, in memory, float32 on CPU; no file is read."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    tokenizer = build_llama_tokenizer()
    crop = hunyuan_prompt_crop_start(tokenizer)
    if crop != TINY_HUNYUAN_PROMPT_TEMPLATE["crop_start"]:  # the template and the tokenizer drifted apart
        raise RuntimeError(f"tiny HunyuanVideo template prefix is {crop} tokens, crop_start says "
                           f"{TINY_HUNYUAN_PROMPT_TEMPLATE['crop_start']}")
    tokenizer_2 = build_clip_tokenizer()
    with seeded(seed + _SEED_OFFSET["vae"]):
        vae = AutoencoderKLHunyuanVideo(**tiny_hunyuan_vae_config()).eval()
    return HunyuanVideoPipeline(
        text_encoder=build_llama_encoder(tokenizer, TEXT_DIM, seed + _SEED_OFFSET["text_encoder"]),
        tokenizer=tokenizer,
        transformer=build_tiny_hunyuan_transformer(seed),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**tiny_hunyuan_scheduler_config()),
        text_encoder_2=build_clip_text_encoder(tokenizer_2, POOLED_DIM, seed + _SEED_OFFSET["text_encoder_2"]),
        tokenizer_2=tokenizer_2,
    )


def load_tiny_hunyuan_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                               root: str | os.PathLike | None = None) -> HunyuanVideoPipeline:
    """The tiny HunyuanVideo pipeline, saved once under the asymrnr cache and loaded with ``from_pretrained``."""
    return load_tiny_family(HUNYUAN_T2V.family, HUNYUAN_T2V.pipeline_class, build_tiny_hunyuan_pipeline, seed=seed,
                            root=root, torch_dtype=torch_dtype)


__all__ = [
    "HUNYUAN_T2V",
    "TINY_HUNYUAN_PROMPT_TEMPLATE",
    "hunyuan_prompt_crop_start",
    "tiny_hunyuan_transformer_config",
    "tiny_hunyuan_vae_config",
    "tiny_hunyuan_scheduler_config",
    "build_tiny_hunyuan_transformer",
    "build_tiny_hunyuan_pipeline",
    "load_tiny_hunyuan_pipeline",
]
