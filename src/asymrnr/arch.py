"""Per-architecture facts: what a transformer looks like to a schedule.

This is the one module that knows how CogVideoX lays out its joint sequence (text tokens first, video
tokens flattened frame-major after patchify). It reads only ``transformer.config`` so it stays cheap; torch
is imported by callers, not here.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ScheduleMismatchError

SUPPORTED_TRANSFORMERS = ("CogVideoXTransformer3DModel",)


def _config(transformer: Any) -> Any:
    config = getattr(transformer, "config", None)
    if config is None:
        raise TypeError(
            f"expected a diffusers transformer with a .config, got {type(transformer).__name__}; "
            "pass the pipeline or pipeline.transformer"
        )
    return config


def transformer_class_name(transformer: Any) -> str:
    """The class name of the transformer, seen through torch.compile's OptimizedModule wrapper."""
    inner = getattr(transformer, "_orig_mod", transformer)
    return type(inner).__name__


def check_supported(transformer: Any) -> None:
    name = transformer_class_name(transformer)
    if name not in SUPPORTED_TRANSFORMERS:
        raise ScheduleMismatchError(
            f"asymrnr does not support {name} yet; supported transformers: {', '.join(SUPPORTED_TRANSFORMERS)}"
        )


def temporal_patch_size(transformer_or_config: Any) -> int:
    """The temporal patch size of a CogVideoX transformer (1 when it has none: 2B and 5B)."""
    cfg = getattr(transformer_or_config, "config", transformer_or_config)
    return int(getattr(cfg, "patch_size_t", None) or 1)


def latent_frames_from_video_frames(num_frames: int, temporal_compression_ratio: int) -> int:
    """Latent frames the CogVideoX VAE produces for ``num_frames`` video frames."""
    return (num_frames - 1) // temporal_compression_ratio + 1


def token_grid(
    patch_size: int,
    patch_size_t: int,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
) -> tuple[int, int, int]:
    """Token grid ``(frames, height, width)`` after patchify of a latent of the given shape.

    CogVideoX 1.5 (``patch_size_t=2``) pads the latent frames up to a multiple of ``patch_size_t``.
    """
    frames = math.ceil(latent_frames / max(patch_size_t, 1))
    return (frames, latent_height // patch_size, latent_width // patch_size)


def describe_transformer(transformer: Any, *, latent_grid=None, text_len: int | None = None):
    """Build the :class:`~asymrnr.schedule_format.ModelDescription` of a CogVideoX transformer.

    ``latent_grid`` is the token grid ``(frames, height, width)`` the description is made at; by default
    the grid of the config's sample size. ``text_len`` defaults to ``max_text_seq_length``.
    """
    from .schedule_format import ModelDescription

    check_supported(transformer)
    cfg = _config(transformer)
    patch_size = int(cfg.patch_size)
    patch_size_t = temporal_patch_size(cfg)
    if latent_grid is None:
        latent_frames = latent_frames_from_video_frames(int(cfg.sample_frames), int(cfg.temporal_compression_ratio))
        latent_grid = token_grid(patch_size, patch_size_t, latent_frames, int(cfg.sample_height), int(cfg.sample_width))
    num_heads = int(cfg.num_attention_heads)
    head_dim = int(cfg.attention_head_dim)
    inner = num_heads * head_dim
    # CogVideoX blocks use FeedForward(dim, inner_dim=ff_inner_dim) with ff_inner_dim defaulting to 4 * dim.
    ffn_dim = int(getattr(cfg, "ff_inner_dim", None) or 4 * inner)
    return ModelDescription(
        transformer_class=transformer_class_name(transformer),
        num_blocks=int(cfg.num_layers),
        num_heads=num_heads,
        head_dim=head_dim,
        patch_size=patch_size,
        patch_size_t=patch_size_t,
        rope=bool(cfg.use_rotary_positional_embeddings),
        latent_grid=tuple(int(g) for g in latent_grid),
        text_len=int(text_len if text_len is not None else cfg.max_text_seq_length),
        ffn_dim=ffn_dim,
        text_first=True,
    )


def grid_from_latents(transformer: Any, hidden_states_shape) -> tuple[int, int, int]:
    """Token grid of one transformer call from the latent ``hidden_states`` shape ``[B, F, C, H, W]``."""
    cfg = _config(transformer)
    _, frames, _, height, width = hidden_states_shape
    return token_grid(int(cfg.patch_size), temporal_patch_size(cfg), int(frames), int(height), int(width))


def attention_modules(transformer: Any) -> list[tuple[str, Any]]:
    """The self-attention modules of the transformer blocks, in block order, as (processor name, module)."""
    inner = getattr(transformer, "_orig_mod", transformer)
    blocks = getattr(inner, "transformer_blocks", None)
    if blocks is None:
        raise ScheduleMismatchError(f"{type(inner).__name__} has no transformer_blocks; it is not a CogVideoX transformer")
    return [(f"transformer_blocks.{i}.attn1.processor", block.attn1) for i, block in enumerate(blocks)]
