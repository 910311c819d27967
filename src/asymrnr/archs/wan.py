"""Wan 2.1 / 2.2 (text-to-video, image-to-video).

Facts (diffusers ``transformer_wan.py``, ``pipeline_wan.py``):

* ``blocks[i].attn1`` is self-attention over the video tokens only (no text in it); ``blocks[i].attn2`` is
  cross-attention to the text (and, for I2V, image) context and is never reduced.
* ``WanAttnProcessor``: ``to_q/to_k/to_v`` (or the fused ``to_qkv``), ``norm_q``/``norm_k`` over all heads,
  heads split to ``[B, S, heads, D]``, RoPE (interleaved pairs, tables ``[1, N, 1, D]``) on Q and K, then
  ``dispatch_attention_fn`` (which honours ``set_attention_backend`` and context parallelism).
* The transformer takes ``hidden_states [B, C, F, H, W]``; patchify ``config.patch_size`` = ``(1, 2, 2)``,
  flattened frame-major.
* CFG runs as separate calls (``cache_context("cond")`` then ``"uncond"``), batch 1 each; the pipeline
  passes ``step_index`` in the cache context.
* Wan 2.2 A14B has two experts: ``transformer`` runs while ``t >= boundary_ratio * num_train_timesteps``,
  ``transformer_2`` after. Both have the same architecture, so one schedule table covers both, with
  ``sampler.step_transformer`` saying which expert runs each step.
* VAE: 8x spatial (16x for Wan 2.2 TI2V-5B), 4x temporal; ``4k + 1`` frames.
* Image-to-video (``WanImageToVideoPipeline``, Wan 2.1 I2V): self-attention is unchanged; ``attn2`` also
  attends to the CLIP image tokens (``encoder_hidden_states_image``, 257), which the FLOPs model counts in
  ``cross_len`` (``describe(text_len=...)`` takes the whole context of a call: text + image tokens).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..formats.descriptions import ModelDescription
from .base import ArchAdapter, BlockTerms, class_name, config_of, DispatchingProcessor, GenerationRules, Site

#: Text context tokens of the Wan pipelines (``max_sequence_length``) and CLIP image tokens of Wan 2.1 I2V.
WAN_TEXT_LEN = 512
WAN_IMAGE_TOKENS = 257


class WanAdapter(ArchAdapter):
    family = "wan"
    transformer_classes = ("WanTransformer3DModel",)
    pipeline_classes = ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline")
    text_layout = "none"
    cfg_mode = "separate"
    components = ("transformer", "transformer_2")
    supported_processors = ("WanAttnProcessor", "WanAttnProcessor2_0")
    context_parallel = True  # diffusers' _cp_plan shards the video tokens; attention via dispatch_attention_fn

    # ---- facts -----------------------------------------------------------------------------------------
    def patch_size(self, config: Any) -> tuple[int, int, int]:
        return tuple(int(p) for p in config.patch_size)  # type: ignore[return-value]

    def describe(self, transformer: Any, *, latent_grid=None, text_len: int | None = None) -> ModelDescription:
        cfg = config_of(transformer)
        if latent_grid is None:  # 480x832, 81 frames: 21 x 30 x 52 tokens
            latent_grid = (21, 30, 52)
        if text_len is not None:  # the context of a call, as call_text_len counts it (text + image tokens)
            cross = int(text_len)
        else:
            cross = WAN_TEXT_LEN
            if getattr(cfg, "added_kv_proj_dim", None) is not None:  # Wan 2.1 I2V: CLIP image tokens too
                cross += WAN_IMAGE_TOKENS
        return ModelDescription(
            family=self.family,
            transformer_class=class_name(transformer),
            num_blocks=int(cfg.num_layers),
            num_heads=int(cfg.num_attention_heads),
            head_dim=int(cfg.attention_head_dim),
            patch_size=self.patch_size(cfg),
            rope=True,
            latent_grid=tuple(int(g) for g in latent_grid),
            text_len=0,
            text_layout="none",
            ffn_dim=int(cfg.ffn_dim),
            cross_len=cross,
        )

    def block_terms(self, model: ModelDescription, kind: str) -> BlockTerms:
        c, n, lc = model.inner_dim, model.num_video_tokens, model.cross_len
        cross = (
            2 * 2 * n * c * c  # to_q, to_out on the video tokens
            + 2 * 2 * lc * c * c  # to_k, to_v on the context
            + 2 * 2 * model.num_heads * n * lc * model.head_dim  # QK^T and AV against the context
        )
        return BlockTerms(self_tokens=n, proj_per_token=4 * 2 * c * c,
                          fixed={"cross_attention": cross, "mlp": 2 * 2 * n * c * model.ffn_dim})

    def call_text_len(self, inputs: Mapping[str, Any]) -> int:
        """The cross-attention context of one call, as :meth:`describe` takes ``text_len``: the text tokens,
        plus the image tokens Wan 2.1 I2V passes as ``encoder_hidden_states_image`` (257 real, 17 tiny)."""
        n = super().call_text_len(inputs)
        image = inputs.get("encoder_hidden_states_image")
        if image is not None and hasattr(image, "shape"):
            n += int(image.shape[1])
        return n

    def generation_rules(self, config: Mapping[str, Any] | None = None) -> GenerationRules:
        spatial = int((config or {}).get("vae_spatial", 8))
        return GenerationRules(vae_spatial=spatial, vae_temporal=4, size_multiple=spatial * 2, frames_step=4,
                               frames_offset=1)

    def step_components(self, pipe: Any, timesteps, scheduler) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
        ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
        has_second = getattr(pipe, "transformer_2", None) is not None
        if pipe.transformer is None and has_second:
            return ("transformer_2",), None
        if ratio is None or not has_second:
            return ("transformer",), None
        boundary = float(ratio) * float(scheduler.config.num_train_timesteps)
        return ("transformer", "transformer_2"), tuple(0 if t >= boundary else 1 for t in timesteps)

    # ---- runtime ---------------------------------------------------------------------------------------
    def sites(self, transformer: Any) -> list[Site]:
        inner = getattr(transformer, "_orig_mod", transformer)
        return [Site(i, "block", f"blocks.{i}.attn1", block.attn1) for i, block in enumerate(inner.blocks)]

    def call_grid(self, transformer: Any, inputs: Mapping[str, Any]) -> tuple[int, int, int]:
        pt, ph, pw = self.patch_size(config_of(transformer))
        _, _, frames, height, width = inputs["hidden_states"].shape
        return (int(frames) // pt, int(height) // ph, int(width) // pw)

    def make_processor(self, site: Site, runtime: Any, original: Any) -> Any:
        return WanAsymRnRProcessor(site, runtime, original)


class WanAsymRnRProcessor(DispatchingProcessor):
    """AsymRnR in place of ``WanAttnProcessor`` at a self-attention site (``attn1``).

    Projections (fused or not), ``norm_q``/``norm_k`` and RoPE are upstream's; attention goes through
    ``dispatch_attention_fn`` with the backend the user set (``set_attention_backend``) and the parallel
    config, via :func:`asymrnr.runtime.reduce.attend`. ``_attention_backend`` / ``_parallel_config`` are
    forwarded to the original processor, which runs untouched when the site does nothing this step.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        from ..runtime import reduce as R

        rt = self.runtime
        if encoder_hidden_states is not None or R.passthrough(rt, self.site.index):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

        video_input = hidden_states
        hidden_states, rope, restore_h = R.reduce_input(rt, self.site.index, hidden_states, rotary_emb,
                                                         gather_rope=_gather_rope)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rope is not None:
            query = _apply_rotary_emb(query, *rope)
            key = _apply_rotary_emb(key, *rope)


        out = R.attend(rt, self.site.index, query, key, value, text_len=0, text_layout="none", heads_dim=2,
                       attend_fn=self.dispatch, attn_mask=attention_mask, observed_input=video_input,
                       restore_h=restore_h)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if restore_h is not None:
            out = R.restore_input(out, restore_h)
        return out


def _apply_rotary_emb(x, freqs_cos, freqs_sin):
    """Wan's rotary embedding on ``[B, S, heads, D]`` (interleaved pairs), as upstream computes it."""
    import torch

    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _gather_rope(rope, keep_idx):
    """Wan's rotary tables ``(cos, sin) [1, N, 1, D]`` at the kept positions: ``[B, N - n_h, 1, D]`` each."""
    cos, sin = rope
    return (cos[0][keep_idx], sin[0][keep_idx])


ADAPTER = WanAdapter()
