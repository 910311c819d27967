"""Tiny Wan pipelines with random weights: Wan 2.1 T2V, Wan 2.2 T2V A14B (two experts), Wan 2.1 I2V.

=================  ============================  =====================================================
name               pipeline                      what is special
=================  ============================  =====================================================
``wan2.1-t2v``     ``WanPipeline``               one ``transformer``
``wan2.2-t2v``     ``WanPipeline``               ``transformer`` (high noise) and ``transformer_2``
                                                 (low noise), switched at ``boundary_ratio`` 0.875
``wan2.1-i2v``     ``WanImageToVideoPipeline``   CLIP image encoder + processor; the transformer takes
                                                 ``2 * z_dim + 4`` channels and cross-attends to the
                                                 image tokens (``add_k_proj``/``add_v_proj``) too
=================  ============================  =====================================================

All generate by default 64 x 80 px, 9 frames: 3 latent frames of 8 x 10, i.e. a token grid of 3 x 4 x 5
(patch ``(1, 2, 2)``), with 512 text tokens (the pipelines' default; Wan 2.1 I2V's attention *requires* 512,
it splits image from text context as ``context[:, :-512]``). Two steps with CFG run each transformer twice
per step (``cond`` then ``uncond``, batch 1 each). At 2 steps the Wan 2.2 default runs ``transformer`` at
step 0 (t = 999) and ``transformer_2`` at step 1 (t = 750 < 875).

The text encoder is a tiny ``UMT5EncoderModel`` (as the real umt5-xxl), the tokenizer the tiny sentencepiece
``T5Tokenizer`` of :mod:`asymrnr.models.tiny`, the scheduler the real models' ``UniPCMultistepScheduler``
config (flow prediction, flow sigmas) with the real flow shifts. ``WanImageToVideoPipeline`` calls
``ftfy.fix_text`` on every prompt, so the I2V pipeline needs ``ftfy`` installed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._common import (
    TinyDefaults,
    build_clip_image_processor,
    build_clip_vision_encoder,
    build_t5_encoder,
    build_t5_tokenizer,
    load_tiny_family,
    seeded,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import WanImageToVideoPipeline, WanPipeline

WAN_TEXT_LEN = 512  # the pipelines' max_sequence_length; hard-coded in WanAttnProcessor for I2V
TEXT_DIM = 32
Z_DIM = 4
CLIP_HIDDEN = 32
CLIP_IMAGE_SIZE = 32
CLIP_PATCH = 8  # (32 / 8) ** 2 + 1 = 17 image tokens (real: 257)

WAN_T2V = TinyDefaults(
    family="wan2.1-t2v",
    pipeline_class="WanPipeline",
    height=64,
    width=80,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=5.0,
    max_sequence_length=WAN_TEXT_LEN,
    latent_grid=(3, 4, 5),
    text_len=WAN_TEXT_LEN,
)
WAN22_T2V = TinyDefaults(
    family="wan2.2-t2v",
    pipeline_class="WanPipeline",
    height=64,
    width=80,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=4.0,
    max_sequence_length=WAN_TEXT_LEN,
    latent_grid=(3, 4, 5),
    text_len=WAN_TEXT_LEN,
    extra=(("guidance_scale_2", 3.0),),
)
WAN_I2V = TinyDefaults(
    family="wan2.1-i2v",
    pipeline_class="WanImageToVideoPipeline",
    height=64,
    width=80,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=5.0,
    max_sequence_length=WAN_TEXT_LEN,
    latent_grid=(3, 4, 5),
    text_len=WAN_TEXT_LEN,
    needs_image=True,
)

_SEED_OFFSET = {"transformer": 0, "vae": 1, "text_encoder": 2, "transformer_2": 3, "image_encoder": 4}


def tiny_wan_transformer_config(kind: str = "t2v") -> dict[str, Any]:
    """``WanTransformer3DModel`` kwargs: 2 blocks, 2 heads of 16 (RoPE split t/h/w = 8/4/4; real 44/42/42)."""
    cfg: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=Z_DIM,
        out_channels=Z_DIM,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )
    if kind == "i2v":  # Wan 2.1 I2V: noise + 4 mask channels + image latents; CLIP image tokens
        cfg.update(in_channels=2 * Z_DIM + 4, image_dim=CLIP_HIDDEN, added_kv_proj_dim=32)
    elif kind != "t2v":
        raise ValueError(f"kind must be 't2v' or 'i2v', got {kind!r}")
    return cfg


def tiny_wan_vae_config() -> dict[str, Any]:
    """``AutoencoderKLWan`` kwargs: the real layout (8x spatial, 4x temporal) with 8 base channels, z_dim 4."""
    return dict(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        latents_mean=[-0.25, 0.1, 0.4, -0.05],
        latents_std=[1.8, 1.2, 2.3, 1.5],
    )


def tiny_wan_scheduler_config(flow_shift: float = 3.0) -> dict[str, Any]:
    """The real Wan ``UniPCMultistepScheduler`` config (flow shift 3.0 at 480p, 5.0 at 720p)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=2,
        prediction_type="flow_prediction",
        thresholding=False,
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        timestep_spacing="linspace",
        final_sigmas_type="zero",
    )


def build_tiny_wan_transformer(seed: int = 0, kind: str = "t2v", component: str = "transformer"):
    from diffusers import WanTransformer3DModel

    with seeded(seed + _SEED_OFFSET[component]):
        model = WanTransformer3DModel(**tiny_wan_transformer_config(kind))
    return model.eval()


def _text_vae_scheduler(seed: int, flow_shift: float = 3.0) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

    tokenizer = build_t5_tokenizer(WAN_TEXT_LEN)
    text_encoder = build_t5_encoder(len(tokenizer), TEXT_DIM, seed + _SEED_OFFSET["text_encoder"], umt5=True)
    with seeded(seed + _SEED_OFFSET["vae"]):
        vae = AutoencoderKLWan(**tiny_wan_vae_config()).eval()
    scheduler = UniPCMultistepScheduler(**tiny_wan_scheduler_config(flow_shift))
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler)


def build_tiny_wan_pipeline(seed: int = 0) -> WanPipeline:
    """Wan 2.1 T2V (1.3B / 14B style): ``WanPipeline`` with one tiny transformer, in memory, float32 on CPU."""
    from diffusers import WanPipeline

    return WanPipeline(transformer=build_tiny_wan_transformer(seed), **_text_vae_scheduler(seed))


def build_tiny_wan22_pipeline(seed: int = 0) -> WanPipeline:
    """Wan 2.2 T2V A14B style: two experts of one architecture, ``boundary_ratio=0.875``.

    The flow shift is 3.0 (not the real model's 12.0) so that two steps already run both experts:
    t = 999 (``transformer``), then 750 (``transformer_2``); at shift 12 the second step is t = 923.
    """
    from diffusers import WanPipeline

    return WanPipeline(
        transformer=build_tiny_wan_transformer(seed),
        transformer_2=build_tiny_wan_transformer(seed, component="transformer_2"),
        boundary_ratio=0.875,
        **_text_vae_scheduler(seed, flow_shift=3.0),
    )


def build_tiny_wan_i2v_pipeline(seed: int = 0) -> WanImageToVideoPipeline:
    """Wan 2.1 I2V (14B 480p style): ``WanImageToVideoPipeline`` with a tiny CLIP vision encoder (17 tokens)."""
    from diffusers import WanImageToVideoPipeline

    image_encoder = build_clip_vision_encoder(CLIP_HIDDEN, CLIP_IMAGE_SIZE, CLIP_PATCH, seed + _SEED_OFFSET["image_encoder"])
    return WanImageToVideoPipeline(
        transformer=build_tiny_wan_transformer(seed, kind="i2v"),
        image_encoder=image_encoder,
        image_processor=build_clip_image_processor(CLIP_IMAGE_SIZE),
        **_text_vae_scheduler(seed),
    )


def load_tiny_wan_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                           root: str | os.PathLike | None = None) -> WanPipeline:
    """The tiny Wan 2.1 T2V pipeline, saved once under the asymrnr cache and loaded with ``from_pretrained``."""
    return load_tiny_family(WAN_T2V.family, WAN_T2V.pipeline_class, build_tiny_wan_pipeline, seed=seed, root=root,
                            torch_dtype=torch_dtype)


def load_tiny_wan22_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                             root: str | os.PathLike | None = None) -> WanPipeline:
    """The tiny Wan 2.2 T2V A14B-style pipeline (two experts), loaded with ``from_pretrained``."""
    return load_tiny_family(WAN22_T2V.family, WAN22_T2V.pipeline_class, build_tiny_wan22_pipeline, seed=seed,
                            root=root, torch_dtype=torch_dtype)


def load_tiny_wan_i2v_pipeline(torch_dtype: torch.dtype | None = None, *, seed: int = 0,
                               root: str | os.PathLike | None = None) -> WanImageToVideoPipeline:
    """The tiny Wan 2.1 I2V pipeline, loaded with ``from_pretrained``."""
    return load_tiny_family(WAN_I2V.family, WAN_I2V.pipeline_class, build_tiny_wan_i2v_pipeline, seed=seed,
                            root=root, torch_dtype=torch_dtype)


__all__ = [
    "WAN_T2V",
    "WAN22_T2V",
    "WAN_I2V",
    "WAN_TEXT_LEN",
    "tiny_wan_transformer_config",
    "tiny_wan_vae_config",
    "tiny_wan_scheduler_config",
    "build_tiny_wan_transformer",
    "build_tiny_wan_pipeline",
    "build_tiny_wan22_pipeline",
    "build_tiny_wan_i2v_pipeline",
    "load_tiny_wan_pipeline",
    "load_tiny_wan22_pipeline",
    "load_tiny_wan_i2v_pipeline",
]
