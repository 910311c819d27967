"""The AsymRnR attention processor for CogVideoX (joint text + video self-attention, text first).

When the current (block, step) reduces nothing and nobody observes, the call goes to the original
``CogVideoXAttnProcessor2_0`` untouched, so a zero schedule is bit-identical to the unpatched model.
Otherwise the same computation runs with, as the schedule says:

* ``q``: the video queries reduced after norm_q and RoPE; the output of each dropped query is restored from
  its matched destination (paper Eq. 3).
* ``kv``: keys and values reduced together with one matching computed on V.
* ``h``: SymRnR/ToMe-style reduction of the attention input before the projections (the rotary tables are
  gathered at the kept positions, so it also runs on RoPE models), restored after ``to_out``.

Text tokens are never dropped. All index tensors come from :mod:`asymrnr.matching`; counts are Python
ints fixed by the schedule, so nothing here syncs with the host.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..matching import (
    Reduction,
    compute_matching,
    gather_tokens,
    make_reduction,
    matching_features,
    merge_mean,
    take_tokens,
    with_prefix,
)
from .state import RuntimeContext


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """CogVideoX's rotary embedding (interleaved pairs) with per-sample tables.

    Args:
        x: ``[B, heads, M, D]``.
        cos, sin: ``[B, 1, M, D]`` (or broadcastable).
    """
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class AsymRnRAttnProcessor:
    """Drop-in processor for a CogVideoX ``Attention`` module of one block.

    Args:
        block_index: index of the block in ``transformer.transformer_blocks``.
        context: the :class:`RuntimeContext` shared by all blocks of the transformer.
        original: the processor it replaces; called as-is when this block does nothing this step.
    """

    def __init__(self, block_index: int, context: RuntimeContext, original: Any):
        self.block_index = block_index
        self.context = context
        self.original = original

    # ------------------------------------------------------------------------------------- matching
    def _reduction(self, feature: str, feats: torch.Tensor, n_r: int, batch: int, text_len: int):
        """Matching (cached per Eq. 4) of ``feats`` (``[B, N, C]`` or ``[B, heads, N, D]``) and its indices.

        Returns:
            ``(reduction, keep_full [G, T + N - n_r], restore_full [G, T + N])``: the last two index the whole
            joint sequence (text first), so reduction and restoration are one gather each.
        """
        ctx = self.context
        grid = ctx.call.grid
        settings = ctx.schedule.matching
        entry = ctx.cached_matching(self.block_index, feature, batch)
        part = ctx.partition(grid, self.block_index, feature, feats.device)
        if entry is None:
            granularity = "joint" if feats.dim() == 3 else settings.granularity
            src = matching_features(feats, part.src_idx, granularity)
            dst = matching_features(feats, part.dst_idx, granularity)
            matching = compute_matching(src, dst, settings.metric, random_scores=part.random_scores)
            entry = ctx.store_matching(self.block_index, feature, batch, matching)
        key = (n_r, text_len)
        derived = entry.derived.get(key)
        if derived is None:
            red = make_reduction(part, entry.matching, n_r)
            derived = (red, with_prefix(red.keep_idx, text_len), with_prefix(red.restore_idx, text_len))
            entry.derived[key] = derived
        return derived

    def _reduce(self, x: torch.Tensor, red: Reduction) -> torch.Tensor:
        if self.context.schedule.matching.reduce_op == "mean":
            return merge_mean(x, red)
        return gather_tokens(x, red.keep_idx)

    # -------------------------------------------------------------------------------------- forward
    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        ctx = self.context
        plan = ctx.plan_for_block(self.block_index) if ctx.call is not None else None
        if plan is None and not ctx.observers:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None and plan is not None:
            raise NotImplementedError("asymrnr cannot reduce tokens of an attention call with an attention_mask")
        return self._forward(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, plan)

    def _forward(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, plan):
        ctx = self.context
        text_len = encoder_hidden_states.size(1)
        batch, num_video, _ = hidden_states.shape
        n_q = plan.n_q if plan else 0
        n_kv = plan.n_kv if plan else 0
        n_h = plan.n_h if plan else 0
        observed: dict[str, torch.Tensor] = {}
        if ctx.observers:
            observed["h"] = hidden_states

        # SymRnR on the attention input: fewer tokens through projections and attention alike.
        red_h = None
        rope = image_rotary_emb
        if n_h:
            red_h, _, _ = self._reduction("h", hidden_states, n_h, batch, 0)
            hidden_states = self._reduce(hidden_states, red_h)
            if image_rotary_emb is not None:
                cos, sin = image_rotary_emb
                keep = red_h.keep_idx  # [B, N - n_h]
                rope = (cos[keep].unsqueeze(1), sin[keep].unsqueeze(1))

        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        seq_len = hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
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
            if red_h is None:
                from diffusers.models.embeddings import apply_rotary_emb

                query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], rope)
                if not attn.is_cross_attention:
                    key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], rope)
            else:
                query = torch.cat([query[:, :, :text_len], _rotate(query[:, :, text_len:], *rope)], dim=2)
                key = torch.cat([key[:, :, :text_len], _rotate(key[:, :, text_len:], *rope)], dim=2)

        if ctx.observers:
            q_vid, k_vid, v_vid = query[:, :, text_len:], key[:, :, text_len:], value[:, :, text_len:]
            if red_h is not None:  # observers always see full-length sequences
                q_vid, k_vid, v_vid = (gather_tokens(t, red_h.restore_idx) for t in (q_vid, k_vid, v_vid))
            observed.update(q=q_vid, k=k_vid, v=v_vid)
            for observer in ctx.observers:
                observer(self.block_index, observed, ctx)

        # AsymRnR: Q and K/V reduced separately, after norm and RoPE, video tokens only. With ``discard`` one
        # gather over the joint sequence keeps the text and drops the matched video tokens.
        mean = ctx.schedule is not None and ctx.schedule.matching.reduce_op == "mean"
        restore_q = None
        if n_q:
            red_q, keep_q, restore_q = self._reduction("q", query[:, :, text_len:], n_q, batch, text_len)
            if mean:
                query = torch.cat([query[:, :, :text_len], merge_mean(query[:, :, text_len:], red_q)], dim=2)
            else:
                query = take_tokens(query, keep_q)
        if n_kv:
            # K and V share the matching computed on V.
            red_kv, keep_kv, _ = self._reduction("kv", value[:, :, text_len:], n_kv, batch, text_len)
            if mean:
                key = torch.cat([key[:, :, :text_len], merge_mean(key[:, :, text_len:], red_kv)], dim=2)
                value = torch.cat([value[:, :, :text_len], merge_mean(value[:, :, text_len:], red_kv)], dim=2)
            else:
                key = take_tokens(key, keep_kv)
                value = take_tokens(value, keep_kv)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

        if restore_q is not None:  # restoration: every dropped query takes its destination's output
            out = take_tokens(out, restore_q)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        text_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        if red_h is not None:
            video_out = gather_tokens(video_out, red_h.restore_idx)
        return video_out, text_out
