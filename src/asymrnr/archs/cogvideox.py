"""CogVideoX (2B, 5B, 1.5; text-to-video, image-to-video, video-to-video).

Facts (diffusers ``transformer_cogvideox.py`` / ``attention_processor.CogVideoXAttnProcessor2_0``):

* ``transformer_blocks[i].attn1`` is joint self-attention over ``[text | video]``: text FIRST, shared
  ``to_q``/``to_k``/``to_v``, per-head ``norm_q``/``norm_k``, RoPE (5B, 1.5) on the video part only, then
  plain ``F.scaled_dot_product_attention`` (not ``dispatch_attention_fn``: ``set_attention_backend`` has no
  effect on CogVideoX upstream, so none here either). The processor returns ``(video, text)``.
* The transformer takes latents ``hidden_states [B, F, C, H, W]``; patchify is ``(patch_size_t or 1, p, p)``
  (1.5 pads the latent frames to a multiple of ``patch_size_t``), flattened frame-major.
* CFG is batched: one call per step inside ``cache_context("cond_uncond")``, uncond half first.
* VAE: 8x spatial, 4x temporal; valid generations are ``16 * k`` pixels and ``4k + 1`` frames.
* Image-to-video (``CogVideoXImageToVideoPipeline``): the transformer takes the noise and image latents
  concatenated on the channel axis of ``[B, F, C, H, W]`` (the grid is unchanged) and the RoPE tables from
  the pipeline, so the processor is the same. 5B-I2V's learned positional embeddings pin the size to the
  transformer's sample size (:meth:`CogVideoXAdapter.generation_rules` says so before generating).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..formats.descriptions import ModelDescription
from .base import ArchAdapter, AsymRnRProcessor, BlockTerms, class_name, config_of, GenerationRules, Site


class CogVideoXAdapter(ArchAdapter):
    family = "cogvideox"
    transformer_classes = ("CogVideoXTransformer3DModel",)
    pipeline_classes = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline",
                        "CogVideoXFunControlPipeline")
    text_layout = "first"
    cfg_mode = "batched"
    components = ("transformer",)
    supported_processors = ("CogVideoXAttnProcessor2_0",)

    # ---- facts -----------------------------------------------------------------------------------------
    def patch_size(self, config: Any) -> tuple[int, int, int]:
        p = int(config.patch_size)
        return (int(getattr(config, "patch_size_t", None) or 1), p, p)

    def describe(self, transformer: Any, *, latent_grid=None, text_len: int | None = None) -> ModelDescription:
        cfg = config_of(transformer)
        patch = self.patch_size(cfg)
        if latent_grid is None:
            latent_frames = (int(cfg.sample_frames) - 1) // int(cfg.temporal_compression_ratio) + 1
            latent_grid = (math.ceil(latent_frames / patch[0]), int(cfg.sample_height) // patch[1],
                           int(cfg.sample_width) // patch[2])
        inner = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
        text = int(text_len if text_len is not None else cfg.max_text_seq_length)
        return ModelDescription(
            family=self.family,
            transformer_class=class_name(transformer),
            num_blocks=int(cfg.num_layers),
            num_heads=int(cfg.num_attention_heads),
            head_dim=int(cfg.attention_head_dim),
            patch_size=patch,
            rope=bool(cfg.use_rotary_positional_embeddings),
            latent_grid=tuple(int(g) for g in latent_grid),
            text_len=text,
            text_layout="first" if text else "none",
            # blocks use FeedForward(dim, inner_dim=ff_inner_dim), ff_inner_dim defaulting to 4 * dim
            ffn_dim=int(getattr(cfg, "ff_inner_dim", None) or 4 * inner),
        )

    def block_terms(self, model: ModelDescription, kind: str) -> BlockTerms:
        c = model.inner_dim
        s = model.text_len + model.num_video_tokens
        return BlockTerms(self_tokens=s, proj_per_token=4 * 2 * c * c, fixed={"mlp": 2 * 2 * s * c * model.ffn_dim})

    def generation_rules(self, config: Mapping[str, Any] | None = None) -> GenerationRules:
        """``config``: the transformer's config, when known. CogVideoX-5B-I2V's learned positional embeddings
        (``use_learned_positional_embeddings``) pin height and width to its sample size (the patch embedding
        raises on any other), so its rules carry that fixed size."""
        fixed = None
        config = config or {}
        if config.get("use_learned_positional_embeddings") and config.get("sample_height") and config.get("sample_width"):
            fixed = (int(config["sample_height"]) * 8, int(config["sample_width"]) * 8)
        return GenerationRules(vae_spatial=8, vae_temporal=4, size_multiple=16, frames_step=4, frames_offset=1,
                               fixed_size=fixed)

    # ---- runtime ---------------------------------------------------------------------------------------
    def sites(self, transformer: Any) -> list[Site]:
        inner = getattr(transformer, "_orig_mod", transformer)
        return [Site(i, "block", f"transformer_blocks.{i}.attn1", block.attn1)
                for i, block in enumerate(inner.transformer_blocks)]

    def call_grid(self, transformer: Any, inputs: Mapping[str, Any]) -> tuple[int, int, int]:
        cfg = config_of(transformer)
        pt, ph, pw = self.patch_size(cfg)
        _, frames, _, height, width = inputs["hidden_states"].shape
        return (math.ceil(int(frames) / pt), int(height) // ph, int(width) // pw)

    def make_processor(self, site: Site, runtime: Any, original: Any) -> Any:
        return CogVideoXAsymRnRProcessor(site, runtime, original)


class CogVideoXAsymRnRProcessor(AsymRnRProcessor):
    """AsymRnR in place of ``CogVideoXAttnProcessor2_0`` at one site.

    The projections, ``norm_q``/``norm_k`` and RoPE are upstream's, step for step; the attention in between
    goes through :func:`asymrnr.runtime.reduce.attend` (reduce Q and K/V, attend, restore). A site with
    nothing to do this step (and nobody observing) calls the original processor: a zero schedule is
    bit-identical to the unpatched model.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from ..runtime import reduce as R

        rt = self.runtime
        if R.passthrough(rt, self.site.index):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        text_len = encoder_hidden_states.size(1)
        batch = hidden_states.size(0)
        video_input = hidden_states

        # SymRnR (h): fewer video tokens through projections and attention alike; the rotary tables follow.
        hidden_states, rope, restore_h = R.reduce_input(rt, self.site.index, hidden_states, image_rotary_emb,
                                                         gather_rope=_gather_rope)
        hidden_states = torch_cat([encoder_hidden_states, hidden_states], dim=1)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, hidden_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if rope is not None:
            if restore_h is None:
                from diffusers.models.embeddings import apply_rotary_emb

                query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], rope)
                if not attn.is_cross_attention:
                    key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], rope)
            else:  # per-sample tables gathered at the kept positions
                query = torch_cat([query[:, :, :text_len], _rotate(query[:, :, text_len:], *rope)], dim=2)
                key = torch_cat([key[:, :, :text_len], _rotate(key[:, :, text_len:], *rope)], dim=2)

        out = R.attend(rt, self.site.index, query, key, value, text_len=text_len, text_layout="first",
                       heads_dim=1, attend_fn=_sdpa, attn_mask=attention_mask, observed_input=video_input,
                       restore_h=restore_h)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        text_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        if restore_h is not None:
            video_out = R.restore_input(video_out, restore_h)
        return video_out, text_out


def torch_cat(tensors, dim):
    import torch

    return torch.cat(tensors, dim=dim)


def _sdpa(query, key, value, attn_mask=None):
    """Upstream CogVideoX attends with plain SDPA on ``[B, heads, S, D]``."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)


def _gather_rope(rope, keep_idx):
    """CogVideoX's rotary tables ``(cos, sin) [N, D]`` at the kept positions: ``[B, 1, N - n_h, D]`` each."""
    cos, sin = rope
    return (cos[keep_idx].unsqueeze(1), sin[keep_idx].unsqueeze(1))


def _rotate(x, cos, sin):
    """CogVideoX's rotary embedding (interleaved pairs) with per-sample tables ``[B, 1, M, D]``."""
    import torch

    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


ADAPTER = CogVideoXAdapter()
