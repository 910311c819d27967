"""Mochi-1 (text-to-video).

Facts (diffusers ``transformer_mochi.py``, ``attention_processor.py:MochiAttnProcessor2_0``,
``pipeline_mochi.py``; see ``docs/families.md``):

* ``transformer_blocks[i].attn1`` (``MochiAttention``, a plain module: no ``set_processor``, and the transformer
  has no ``set_attn_processor``; the runtime sets ``attn1.processor``) is joint attention of the video stream
  and the text stream, **text last**. Video goes through ``to_q/to_k/to_v``, text through its own
  ``add_q_proj/add_k_proj/add_v_proj`` (the text stream is narrower: 1536 next to 3072); per-head RMS norms.
* RoPE on video Q and K only, in ``[B, N, H, D]``: tables ``(cos, sin)`` each ``[N, H, D/2]`` (per head, from
  the learned ``pos_frequencies``), rotating (even, odd) pairs.
* Attention runs **per sample**, with only that sample's valid (unpadded) text tokens, by
  ``F.scaled_dot_product_attention`` on ``[1, H, N + T_b, D]``; text outputs are zero-padded back to ``T``.
* The last block is ``context_pre_only``: no ``to_add_out`` and no text MLP.
* The transformer gets **reversed timesteps** (the scheduler has ``invert_sigmas``: 0 = pure noise); the
  pipeline's ``_current_timestep`` is ``1000 - t``. :meth:`MochiAdapter.call_timestep` flips them back, and
  the schedules record the flipped timesteps, so they fall over a generation as for every other family.
* Hidden states ``[B, C, F, H, W]``, patch 2 spatial only: grid ``(F, H // 2, W // 2)``.
* CFG batched: one call of batch 2 per step (``[uncond, cond]``) in ``cache_context("cond_uncond")``.
* VAE: 8x spatial, 6x temporal (both hard-coded in the pipeline); ``6k + 1`` frames.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..formats.descriptions import DEFAULT_BLOCK_KIND, ModelDescription
from .base import ArchAdapter, AsymRnRProcessor, BlockTerms, class_name, config_of, GenerationRules, Site

#: Token grid of the model card's generation: 480 x 848, 84 frames.
MOCHI_DEFAULT_GRID = (14, 30, 53)
#: Kind of the last block (``context_pre_only``: its text stream stops after the attention's projections).
FINAL_KIND = "final"
#: ``MochiPipeline`` reverses the transformer's timesteps against this (``_current_timestep = 1000 - t``).
MOCHI_TIMESTEP_BASE = 1000.0
#: The pipeline's sigma schedule threshold (``linear_quadratic_schedule(n, 0.025)``).
MOCHI_THRESHOLD_NOISE = 0.025


class MochiAdapter(ArchAdapter):
    family = "mochi"
    transformer_classes = ("MochiTransformer3DModel",)
    pipeline_classes = ("MochiPipeline",)
    text_layout = "last"
    cfg_mode = "batched"
    components = ("transformer",)
    supported_processors = ("MochiAttnProcessor2_0",)
    block_kind_names = {DEFAULT_BLOCK_KIND: "joint", FINAL_KIND: "joint (last, text pre-only)"}

    # ---- facts -----------------------------------------------------------------------------------------
    def patch_size(self, config: Any) -> tuple[int, int, int]:
        p = int(config.patch_size)
        return (1, p, p)

    def describe(self, transformer: Any, *, latent_grid=None, text_len: int | None = None) -> ModelDescription:
        """``text_len``: the valid text tokens in self-attention (Mochi drops the padding; default: the
        config's ``max_sequence_length``, 256)."""
        cfg = config_of(transformer)
        grid = MOCHI_DEFAULT_GRID if latent_grid is None else latent_grid
        heads, head_dim = int(cfg.num_attention_heads), int(cfg.attention_head_dim)
        blocks = int(cfg.num_layers)
        text = int(text_len) if text_len is not None else int(cfg.max_sequence_length)
        return ModelDescription(
            family=self.family,
            transformer_class=class_name(transformer),
            num_blocks=blocks,
            num_heads=heads,
            head_dim=head_dim,
            patch_size=self.patch_size(cfg),
            rope=True,
            latent_grid=tuple(int(g) for g in grid),
            text_len=max(1, text),  # a joint layout counts at least one text token (an empty prompt has 0)
            text_layout="last",
            ffn_dim=(4 * heads * head_dim * 2) // 3,  # SwiGLU inner width of MochiTransformerBlock.ff
            block_kinds=(DEFAULT_BLOCK_KIND,) * (blocks - 1) + (FINAL_KIND,),
        )

    def block_terms(self, model: ModelDescription, kind: str) -> BlockTerms:
        """Per sample, ``N`` video and ``T`` (valid) text tokens; the text stream is half the video width
        (``pooled_projection_dim`` 1536 of 3072 in Mochi-1; the description does not record it)."""
        c, n, t = model.inner_dim, model.num_video_tokens, model.text_len
        ct = c // 2
        video_proj = 4 * 2 * c * c  # to_q, to_k, to_v, to_out
        text_proj = 3 * 2 * ct * c  # add_q_proj, add_k_proj, add_v_proj
        text_mlp = 0
        if kind != FINAL_KIND:
            text_proj += 2 * c * ct  # to_add_out
            text_mlp = 2 * 3 * t * ct * ((4 * ct * 2) // 3)  # ff_context, SwiGLU: in -> 2 x inner, inner -> out
        return BlockTerms(
            self_tokens=n + t,
            proj_per_token=video_proj,  # what a dropped video token saves (SymRnR h)
            fixed={
                "mlp": 2 * 3 * n * c * model.ffn_dim,  # ff, SwiGLU
                # the text tokens' own projections in place of the video ones counted by self_tokens
                "text_stream": t * (text_proj - video_proj) + text_mlp,
            },
        )

    def generation_rules(self, config: Mapping[str, Any] | None = None) -> GenerationRules:
        return GenerationRules(vae_spatial=8, vae_temporal=6, size_multiple=16, frames_step=6, frames_offset=1)

    def generation_size(self, pipe: Any, transformer: Any, grid) -> dict:
        pt, ph, pw = self.patch_size(config_of(transformer))
        vs = int(getattr(pipe, "vae_spatial_scale_factor", 8))
        vt = int(getattr(pipe, "vae_temporal_scale_factor", 6))
        return {"height": grid[1] * ph * vs, "width": grid[2] * pw * vs, "num_frames": (grid[0] * pt - 1) * vt + 1}

    def set_timesteps(self, pipe: Any, scheduler: Any, num_steps: int) -> None:
        """As ``MochiPipeline`` does: the linear-quadratic sigma schedule (threshold 0.025)."""
        import numpy as np
        from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule, retrieve_timesteps

        sigmas = np.array(linear_quadratic_schedule(num_steps, MOCHI_THRESHOLD_NOISE))
        retrieve_timesteps(scheduler, num_steps, None, None, sigmas)

    def call_timestep(self, inputs: Mapping[str, Any]) -> float:
        """``1000 - t``, as the pipeline's ``_current_timestep``: 1000 at pure noise, falling."""
        timestep = inputs.get("timestep")
        if timestep is None:
            return 0.0
        import torch

        return self.sampler_timestep(float(torch.as_tensor(timestep).detach().min()))

    def sampler_timestep(self, t: float) -> float:
        return MOCHI_TIMESTEP_BASE - t

    # ---- runtime ---------------------------------------------------------------------------------------
    def sites(self, transformer: Any) -> list[Site]:
        inner = getattr(transformer, "_orig_mod", transformer)
        blocks = list(inner.transformer_blocks)
        return [Site(i, FINAL_KIND if i == len(blocks) - 1 else DEFAULT_BLOCK_KIND, f"transformer_blocks.{i}.attn1",
                     block.attn1) for i, block in enumerate(blocks)]

    def call_grid(self, transformer: Any, inputs: Mapping[str, Any]) -> tuple[int, int, int]:
        _, ph, pw = self.patch_size(config_of(transformer))
        _, _, frames, height, width = inputs["hidden_states"].shape
        return (int(frames), int(height) // ph, int(width) // pw)

    def call_text_len(self, inputs: Mapping[str, Any]) -> int:
        """The valid text tokens of the call's longest prompt (its attention drops the padding)."""
        mask = inputs.get("encoder_attention_mask")
        if mask is None or not hasattr(mask, "shape"):
            return super().call_text_len(inputs)
        return int(mask.bool().sum(-1).max()) if mask.numel() else 0

    def make_processor(self, site: Site, runtime: Any, original: Any) -> Any:
        return MochiAsymRnRProcessor(site, runtime, original)


class MochiAsymRnRProcessor(AsymRnRProcessor):
    """AsymRnR in place of ``MochiAttnProcessor2_0`` at one site.

    Projections, norms and RoPE are upstream's. The video Q/K/V go through
    :func:`asymrnr.runtime.reduce.attend` as a video-only sequence, batched (one matching per sample, cached
    per CFG branch like every family); its ``attend_fn`` then does what upstream does per sample: appends that
    sample's valid text tokens last (never reduced) to the (reduced) video Q and K/V, runs SDPA, and keeps the
    text rows aside (zero-padded back to ``T``). So text queries attend to the reduced video keys, video
    queries to the reduced video keys and all valid text keys, and the text length may differ per sample. The
    original processor runs untouched when the site does nothing this step.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        import torch
        import torch.nn.functional as F

        from ..runtime import reduce as R

        rt = self.runtime
        index = self.site.index
        if R.passthrough(rt, index):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        video_input = hidden_states
        hidden_states, rope, restore_h = R.reduce_input(rt, index, hidden_states, image_rotary_emb,
                                                         gather_rope=_gather_rope)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_added_q is not None:
            encoder_query = attn.norm_added_q(encoder_query)
        if attn.norm_added_k is not None:
            encoder_key = attn.norm_added_k(encoder_key)

        if rope is not None:
            query = _rotate(query, *rope)
            key = _rotate(key, *rope)

        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        encoder_query, encoder_key, encoder_value = (
            encoder_query.transpose(1, 2), encoder_key.transpose(1, 2), encoder_value.transpose(1, 2))
        batch = query.shape[0]
        text_len = encoder_query.shape[2]
        text_out = []

        def attend_fn(q, k, v, attn_mask=None):
            """Per sample, as upstream: ``[video (reduced) | valid text]``, SDPA, text rows set aside."""
            video_rows, text_rows = [], []
            num_q = q.shape[2]
            for b in range(batch):
                valid = torch.nonzero(attention_mask[b].flatten(), as_tuple=False).flatten()
                sq = torch.cat([q[b:b + 1], encoder_query[b:b + 1, :, valid]], dim=2)
                sk = torch.cat([k[b:b + 1], encoder_key[b:b + 1, :, valid]], dim=2)
                sv = torch.cat([v[b:b + 1], encoder_value[b:b + 1, :, valid]], dim=2)
                out = F.scaled_dot_product_attention(sq, sk, sv, dropout_p=0.0, is_causal=False)
                video_rows.append(out[:, :, :num_q])
                text = out[:, :, num_q:]
                text_rows.append(F.pad(text, (0, 0, 0, text_len - text.shape[2])))
            text_out.append(torch.cat(text_rows, dim=0))
            return torch.cat(video_rows, dim=0)

        video = R.attend(rt, index, query, key, value, text_len=0, text_layout="none", heads_dim=1,
                         attend_fn=attend_fn, observed_input=video_input, restore_h=restore_h)
        hidden_states = video.transpose(1, 2).flatten(2, 3)
        encoder_hidden_states = text_out[-1].transpose(1, 2).flatten(2, 3)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        if restore_h is not None:
            hidden_states = R.restore_input(hidden_states, restore_h)
        return hidden_states, encoder_hidden_states


def _rotate(x, freqs_cos, freqs_sin):
    """Mochi's rotary embedding on ``[B, N, H, D]`` with tables ``[N, H, D/2]`` or ``[B, N, H, D/2]``."""
    import torch

    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _gather_rope(rope, keep_idx):
    """Mochi's rotary tables ``(cos, sin) [N, H, D/2]`` at the kept positions ``[B, M]``: ``[B, M, H, D/2]``."""
    cos, sin = rope
    return cos[keep_idx], sin[keep_idx]


ADAPTER = MochiAdapter()
