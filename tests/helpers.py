"""Small helpers shared by the runtime tests: tiny transformers of each CogVideoX style and a call recorder."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel

TEXT_LEN = 16


def tiny_transformer(style: str = "5b", seed: int = 0, num_layers: int = 2) -> CogVideoXTransformer3DModel:
    """2B style: no RoPE; 5B: 3D RoPE; 1.5: RoPE and temporal patch size 2."""
    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(
        num_layers=num_layers,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        sample_height=10,
        sample_width=12,
        sample_frames=17,
        patch_size=2,
        patch_size_t=2 if style == "1.5" else None,
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=style != "2b",
        use_learned_positional_embeddings=False,
    )
    return model.eval()


def tiny_inputs(style: str = "5b", batch: int = 1, seed: int = 0):
    """Latents ``[B, F, C, H, W]`` giving a (3 or 4) x 5 x 6 token grid, and text embeddings."""
    g = torch.Generator().manual_seed(seed)
    frames = 6 if style == "1.5" else 5  # 1.5: 6 latent frames / patch_size_t 2 = 3 token frames
    x = torch.randn(batch, frames, 4, 10, 12, generator=g)
    e = torch.randn(batch, TEXT_LEN, 32, generator=g)
    return x, e


def token_count(style: str = "5b") -> int:
    return (3 if style == "1.5" else 5) * 5 * 6


def call(model, x, e, t) -> torch.Tensor:
    with torch.no_grad():
        ts = torch.full((x.shape[0],), float(t))
        return model(hidden_states=x, encoder_hidden_states=e, timestep=ts, return_dict=False)[0]


@contextlib.contextmanager
def record_sdpa():
    """Record the (query, key, value) shapes of every scaled_dot_product_attention call."""
    calls = []
    original = F.scaled_dot_product_attention

    def recorder(q, k, v, *args, **kwargs):
        calls.append({"q": q.detach().clone(), "k_shape": tuple(k.shape), "v_shape": tuple(v.shape)})
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = recorder
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original
