"""LTX-Video (text-to-video).

Facts (diffusers ``transformer_ltx.py``, ``pipeline_ltx.py``; see ``docs/families.md``):

* ``transformer_blocks[i].attn1`` is self-attention over the video tokens only; ``attn2`` is cross-attention
  to the text (with the prompt mask) and is never reduced. Both are ``LTXAttention`` with
  ``LTXVideoAttnProcessor``; ``LTXAttention.forward`` drops keywords its processor does not name, so the
  replacement names the same parameters.
* ``LTXVideoAttnProcessor``: ``to_q/to_k/to_v`` (bias), ``norm_q``/``norm_k`` (RMSNorm over all heads), then
  RoPE **before the heads are split**, on ``[B, S, H*D]`` (interleaved pairs over the whole inner dim; tables
  ``(cos, sin)`` each ``[B, N, H*D]``), then ``dispatch_attention_fn`` on ``[B, S, H, D]``.
* Tokens arrive packed, ``hidden_states [B, N, C]``; the grid comes from the call's ``num_frames``, ``height``
  and ``width`` arguments (latent sizes, frame-major; patch 1 x 1 x 1 in every released checkpoint).
* CFG is batched: one call of batch 2 per step (``[uncond, cond]``) in ``cache_context("cond_uncond")``.
* Sampler: ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting; the pipeline passes its own sigmas and
  ``mu`` computed from the latent token count, so the timesteps depend on the generation's size.
  With the real ``shift_terminal`` one step fails inside the pipeline (``IndexError``): use 2 or more.
* VAE: 32x spatial, 8x temporal; ``8k + 1`` frames, height and width multiples of 32.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..errors import AsymRnRError
from ..formats.descriptions import ModelDescription
from .base import ArchAdapter, BlockTerms, class_name, config_of, DispatchingProcessor, GenerationRules, Site

#: Text tokens of the LTX pipeline (``max_sequence_length``), attended by the cross-attention.
LTX_TEXT_LEN = 128
#: Token grid of the model card's generation: 480 x 704, 161 frames.
LTX_DEFAULT_GRID = (21, 15, 22)


class LTXAdapter(ArchAdapter):
    family = "ltx"
    transformer_classes = ("LTXVideoTransformer3DModel",)
    pipeline_classes = ("LTXPipeline", "LTXImageToVideoPipeline")  # not LTXConditionPipeline: video_coords only
    text_layout = "none"
    cfg_mode = "batched"
    components = ("transformer",)
    supported_processors = ("LTXVideoAttnProcessor",)
    context_parallel = True  # diffusers' _cp_plan shards the packed video tokens; attention via dispatch_attention_fn

    # ---- facts -----------------------------------------------------------------------------------------
    def patch_size(self, config: Any) -> tuple[int, int, int]:
        p = int(config.patch_size)
        return (int(config.patch_size_t), p, p)

    def describe(self, transformer: Any, *, latent_grid=None, text_len: int | None = None) -> ModelDescription:
        cfg = config_of(transformer)
        grid = LTX_DEFAULT_GRID if latent_grid is None else latent_grid
        heads, head_dim = int(cfg.num_attention_heads), int(cfg.attention_head_dim)
        return ModelDescription(
            family=self.family,
            transformer_class=class_name(transformer),
            num_blocks=int(cfg.num_layers),
            num_heads=heads,
            head_dim=head_dim,
            patch_size=self.patch_size(cfg),
            rope=True,
            latent_grid=tuple(int(g) for g in grid),
            text_len=0,
            text_layout="none",
            ffn_dim=4 * heads * head_dim,  # FeedForward(dim, mult=4), gelu-tanh
            cross_len=int(text_len if text_len is not None else LTX_TEXT_LEN),
        )

    def block_terms(self, model: ModelDescription, kind: str) -> BlockTerms:
        c, n, lc = model.inner_dim, model.num_video_tokens, model.cross_len
        cross = (
            2 * 2 * n * c * c  # to_q, to_out on the video tokens
            + 2 * 2 * lc * c * c  # to_k, to_v on the (caption-projected) text
            + 2 * 2 * model.num_heads * n * lc * model.head_dim  # QK^T and AV against the text
        )
        return BlockTerms(self_tokens=n, proj_per_token=4 * 2 * c * c,
                          fixed={"cross_attention": cross, "mlp": 2 * 2 * n * c * model.ffn_dim})

    def generation_rules(self, config: Mapping[str, Any] | None = None) -> GenerationRules:
        return GenerationRules(vae_spatial=32, vae_temporal=8, size_multiple=32, frames_step=8, frames_offset=1)

    def generation_size(self, pipe: Any, transformer: Any, grid) -> dict:
        pt, ph, pw = self.patch_size(config_of(transformer))
        vs = int(getattr(pipe, "vae_spatial_compression_ratio", 32))
        vt = int(getattr(pipe, "vae_temporal_compression_ratio", 8))
        return {"height": grid[1] * ph * vs, "width": grid[2] * pw * vs, "num_frames": (grid[0] * pt - 1) * vt + 1}

    def set_timesteps(self, pipe: Any, scheduler: Any, num_steps: int, latent_grid=None) -> None:
        """As ``LTXPipeline`` does: sigmas ``linspace(1, 1/n, n)`` and ``mu`` from the latent token count of
        ``latent_grid`` (default: the model card's 480 x 704, 161 frames)."""
        import numpy as np
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

        grid = LTX_DEFAULT_GRID if latent_grid is None else tuple(int(g) for g in latent_grid)
        transformer = getattr(pipe, "transformer", None)
        patch = self.patch_size(config_of(transformer)) if transformer is not None else (1, 1, 1)
        if num_steps < 2 and getattr(scheduler.config, "shift_terminal", None):
            raise AsymRnRError(
                f"LTX-Video runs at least 2 denoising steps with this scheduler (shift_terminal="
                f"{scheduler.config.shift_terminal}): diffusers' LTXPipeline fails with one step; use 2 or more"
            )
        # the pipeline's video_sequence_length counts latent positions (tokens x patch)
        seq_len = math.prod(g * p for g, p in zip(grid, patch))
        cfg = scheduler.config
        mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        retrieve_timesteps(scheduler, num_steps, None, None, sigmas=sigmas, mu=mu)

    # ---- runtime ---------------------------------------------------------------------------------------
    def sites(self, transformer: Any) -> list[Site]:
        inner = getattr(transformer, "_orig_mod", transformer)
        return [Site(i, "block", f"transformer_blocks.{i}.attn1", block.attn1)
                for i, block in enumerate(inner.transformer_blocks)]

    def call_grid(self, transformer: Any, inputs: Mapping[str, Any]) -> tuple[int, int, int]:
        """From ``num_frames``, ``height``, ``width`` (latent sizes, as the pipeline passes them), checked
        against the packed token count."""
        pt, ph, pw = self.patch_size(config_of(transformer))
        sizes = [inputs.get(k) for k in ("num_frames", "height", "width")]
        tokens = int(inputs["hidden_states"].shape[1])
        if any(s is None for s in sizes):
            raise AsymRnRError(
                "this LTX-Video transformer call gives no num_frames/height/width (video_coords only), so asymrnr "
                f"cannot tell the token grid of its {tokens} packed tokens; pass num_frames, height and width "
                "(latent sizes) as LTXPipeline does"
            )
        frames, height, width = (int(s) for s in sizes)
        grid = (frames // pt, height // ph, width // pw)
        if math.prod(grid) != tokens:
            raise AsymRnRError(
                f"LTX-Video call with num_frames={frames}, height={height}, width={width} (token grid {grid}, "
                f"{math.prod(grid)} tokens) but hidden_states holds {tokens} tokens; asymrnr reduces video tokens "
                "by their grid position and needs the two to agree"
            )
        return grid

    def make_processor(self, site: Site, runtime: Any, original: Any) -> Any:
        return LTXAsymRnRProcessor(site, runtime, original)


class LTXAsymRnRProcessor(DispatchingProcessor):
    """AsymRnR in place of ``LTXVideoAttnProcessor`` at a self-attention site (``attn1``).

    Projections, ``norm_q``/``norm_k`` and RoPE (on ``[B, S, H*D]``, before the heads are split) are
    upstream's; attention goes through ``dispatch_attention_fn`` with the user's backend and parallel config
    via :func:`asymrnr.runtime.reduce.attend`. The original processor runs untouched when the site does
    nothing this step (or is given a cross-attention context).
    """

    # LTXAttention.forward keeps only the keywords named here: the same parameters as upstream's processor.
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        from ..runtime import reduce as R

        rt = self.runtime
        index = self.site.index
        if encoder_hidden_states is not None or R.passthrough(rt, index):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        batch, seq_len, _ = hidden_states.shape
        if attention_mask is not None:  # not given by upstream to attn1; kept (gathered) if a caller does
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        video_input = hidden_states
        hidden_states, rope, restore_h = R.reduce_input(rt, index, hidden_states, image_rotary_emb,
                                                         gather_rope=_gather_rope)
        if restore_h is not None and attention_mask is not None:
            attention_mask = R._mask_cols(R._mask_rows(attention_mask, restore_h.keep_idx), restore_h.keep_idx)
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if rope is not None:
            query = apply_rotary_emb(query, rope)
            key = apply_rotary_emb(key, rope)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))


        out = R.attend(rt, index, query, key, value, text_len=0, text_layout="none", heads_dim=2,
                       attend_fn=self.dispatch, attn_mask=attention_mask, observed_input=video_input,
                       restore_h=restore_h)
        out = out.flatten(2, 3).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if restore_h is not None:
            out = R.restore_input(out, restore_h)
        return out


def _gather_rope(rope, keep_idx):
    """LTX's rotary tables ``(cos, sin) [B | 1, N, H*D]`` at the kept positions ``[B, M]``: ``[B, M, H*D]``."""
    import torch

    cos, sin = rope
    b, m = keep_idx.shape
    if cos.shape[0] != b:
        cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)
    idx = keep_idx.unsqueeze(-1).expand(b, m, cos.shape[-1])
    return torch.gather(cos, 1, idx), torch.gather(sin, 1, idx)


ADAPTER = LTXAdapter()
