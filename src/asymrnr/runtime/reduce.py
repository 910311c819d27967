"""The family-free core of AsymRnR: reduce Q and K/V, attend, restore (paper Eq. 3); and SymRnR's ``h``.

Every family's processor (in :mod:`asymrnr.archs`) computes Q, K and V exactly as upstream does, after norm
and RoPE, and hands them to :func:`attend` with the token layout of its sequence (text ``first``, ``last``
or ``none``) and the tensor layout it attends in (``heads_dim=1``: ``[B, heads, S, D]`` as SDPA takes;
``heads_dim=2``: ``[B, S, heads, D]`` as ``dispatch_attention_fn`` takes). Text tokens are never dropped.

Under ``torch.compile`` these functions run eagerly (``torch.compiler.disable``): the plans, the matching
cache and its "recompute or reuse" decision are host state that changes from step to step, and reading
them inside a graph would recompile it at every cache window. The compiled graphs around them (projections,
norms, RoPE, MLPs) see the same shapes at every step, so they compile once.
"""

from __future__ import annotations

import torch

from ..errors import AsymRnRError
from ..matching import Reduction, compute_matching, make_reduction, matching_features, merge_mean, with_text
from .context import Runtime


def passthrough(rt: Runtime, block: int) -> bool:
    """Whether the site should call the original processor: nothing to do and nobody observing (eager only;
    under compile the reduction core decides, so the graph does not depend on the plan)."""
    if rt.detached:
        return True
    if torch.compiler.is_compiling():
        return False
    return rt.call is None or (rt.plans[block] is None and not rt.observers)


# --------------------------------------------------------------------------------------------------
# Token selection along the sequence, for both tensor layouts
# --------------------------------------------------------------------------------------------------


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens of ``x`` (logical ``[B, H, S, D]``) by ``idx`` ``[B, M]`` (every head alike) or
    ``[B * H, M]`` (per head), as whole-row copies (``index_select``) in the memory order ``x`` has.

    Returns ``[B, H, M, D]``.
    """
    b, h, s, d = x.shape
    per_head = idx.shape[0] != b
    m = idx.shape[1]
    dev = idx.device
    if x.transpose(1, 2).is_contiguous():  # memory order [B, S, H, D]
        if not per_head:
            rows = (idx + torch.arange(b, device=dev).unsqueeze(1) * s).reshape(-1)
            return x.transpose(1, 2).reshape(b * s, h * d).index_select(0, rows).view(b, m, h, d).transpose(1, 2)
        tok = idx.view(b, h, m) + torch.arange(b, device=dev).view(b, 1, 1) * s
        rows = (tok * h + torch.arange(h, device=dev).view(1, h, 1)).reshape(-1)
        return x.transpose(1, 2).reshape(b * s * h, d).index_select(0, rows).view(b, h, m, d)
    if x.is_contiguous():  # memory order [B, H, S, D]
        base = (torch.arange(b, device=dev).view(b, 1, 1) * h + torch.arange(h, device=dev).view(1, h, 1)) * s
        rows = (base + idx.view(b, 1 if not per_head else h, m)).reshape(-1)
        return x.reshape(b * h * s, d).index_select(0, rows).view(b, h, m, d)
    index = idx.view(b, 1 if not per_head else h, m, 1).expand(b, h, m, d)
    return torch.gather(x, 2, index)


def select_seq(x: torch.Tensor, idx: torch.Tensor, heads_dim: int) -> torch.Tensor:
    """:func:`take_rows` for ``x`` in either layout (``heads_dim`` 1: ``[B, H, S, D]``; 2: ``[B, S, H, D]``)."""
    if heads_dim == 1:
        return take_rows(x, idx)
    return take_rows(x.transpose(1, 2), idx).transpose(1, 2)


def video_part(x: torch.Tensor, start: int, num_video: int, heads_dim: int) -> torch.Tensor:
    """The video tokens of ``x`` as a logical ``[B, H, N, D]`` view."""
    if heads_dim == 1:
        return x[:, :, start:start + num_video]
    return x[:, start:start + num_video].transpose(1, 2)


def _join(x: torch.Tensor, video: torch.Tensor, text_len: int, text_layout: str, heads_dim: int) -> torch.Tensor:
    """``x`` with its video part replaced by ``video`` (logical ``[B, H, M, D]``), text kept in place."""
    video = video if heads_dim == 1 else video.transpose(1, 2)
    seq = 2 if heads_dim == 1 else 1
    if text_layout == "none" or text_len == 0:
        return video
    text = x.narrow(seq, 0, text_len) if text_layout == "first" else x.narrow(seq, x.shape[seq] - text_len, text_len)
    parts = [text, video] if text_layout == "first" else [video, text]
    return torch.cat(parts, dim=seq)


# --------------------------------------------------------------------------------------------------
# Matching (cached per Eq. 4) and the index tensors derived from it
# --------------------------------------------------------------------------------------------------


def reduction(rt: Runtime, block: int, feature: str, feats: torch.Tensor, n_r: int, *, text_len: int = 0,
              text_layout: str = "none"):
    """Matching of ``feats`` (``[B, N, C]`` or logical ``[B, H, N, D]`` video tokens) and its index tensors.

    The matching is computed at the first call of a cache window (per CFG branch, block and feature) and
    reused for the rest of the window; its index tensors are derived once per ``n_r``.

    Under context parallelism (:mod:`asymrnr.distributed`) ``feats`` is this rank's shard, reduced by the
    global partition restricted to it, ``n_r`` is the shard's own count (:func:`local_tokens`), and Q's and
    K/V's sources match the destinations of every shard (:func:`across_shards`). Simulated, ``feats`` is the
    whole video and every shard is reduced on its own, side by side.

    Returns:
        ``(reduction, keep [G, T + N - n_r], restore [G, T + N])``: the last two index the whole sequence
        (text kept), so reduction and restoration are one gather each.
    """
    call = rt.call
    settings = rt.matching
    batch = feats.shape[0]
    shard = call.shard
    simulated = shard is not None and shard.simulated
    across = across_shards(rt, feature, text_layout)
    entry = rt.cache.get(call.branch, block, feature, call.window, batch)
    part = rt.partition(block, feature, feats.device, shard=None if simulated else shard)
    if entry is None:
        granularity = "joint" if feats.dim() == 3 else settings.granularity
        if simulated:
            matching = _dist().simulated_matching(part, shard, feats, granularity, settings.metric, across)
        elif across:
            matching = _dist().match_across(part, shard, feats, granularity, settings.metric)
        else:
            src = matching_features(feats, part.src_idx, granularity)
            dst = matching_features(feats, part.dst_idx, granularity)
            matching = compute_matching(src, dst, settings.metric, random_scores=part.random_scores)
        entry = rt.cache.put(call.branch, block, feature, call.window, batch, matching)
        rt.match_log.append((call.gen_step, block, feature))
    key = (n_r, text_len, text_layout)
    derived = entry.derived.get(key)
    if derived is None:
        n = part.num_tokens
        if simulated:
            red = _dist().simulated_reduction(part, shard, entry.matching, n_r)
        elif across:
            red = _dist().reduction_across(part, entry.matching, n_r)
        else:
            red = make_reduction(part, entry.matching, n_r)
        derived = (red, with_text(red.keep_idx, text_len, text_layout, n),
                   with_text(red.restore_idx, text_len, text_layout, red.keep_idx.shape[1]))
        entry.derived[key] = derived
    return derived


def _dist():
    """:mod:`asymrnr.distributed`, imported when context parallelism is in use."""
    from .. import distributed

    return distributed


def across_shards(rt: Runtime, feature: str, text_layout: str = "none") -> bool:
    """Whether, under context parallelism, ``feature``'s sources match destinations of every rank's shard: Q
    and K/V with the ``discard`` reduction (docs/distributed.md: it keeps CP at single-process quality);
    SymRnR's ``h`` and the ``mean`` merge stay within the shard."""
    shard = rt.call.shard if rt.call is not None else None
    if shard is None or feature not in ("q", "kv") or rt.matching.reduce_op != "discard" or text_layout == "last":
        return False
    return not shard.simulated or rt.simulate_shards[1] == "global"


def local_tokens(rt: Runtime, block: int, feature: str, n: int, num_video: int, device,
                 text_layout: str = "none") -> int:
    """The count of video tokens to drop in this call for the plan's ``n``: ``n`` itself, or under context
    parallelism (real or simulated) each shard's share, the same on every rank
    (:func:`asymrnr.distributed.local_count`). ``num_video``: the video tokens this site holds."""
    shard = rt.call.shard if rt.call is not None else None
    if shard is None or not n:
        return n
    if not shard.simulated and num_video != shard.length:
        raise AsymRnRError(
            f"{rt.component} block {block}: this rank holds {num_video} video tokens, but context parallelism over "
            f"{shard.world} ranks gives it {shard.length} of {sum(length for _, length in shard.bounds)}; "
            "asymrnr shards the sequence as diffusers' plan does (contiguous, in rank order)"
        )
    if shard.simulated and rt.matching.reduce_op == "mean":
        raise AsymRnRError("simulate_context_parallel supports reduce_op 'discard' only")
    part = rt.partition(block, feature, device, shard=None if shard.simulated else shard)
    local = _dist().restrict(part, shard, 0) if shard.simulated else part
    count = _dist().local_count(n, local, shard.world, across=across_shards(rt, feature, text_layout))
    if count < n // shard.world:
        _dist().warn_clamped(rt.call.grid, block, feature, n, count, shard.world, local)
    return count


# --------------------------------------------------------------------------------------------------
# SymRnR (h): the attention input
# --------------------------------------------------------------------------------------------------


@torch.compiler.disable
def reduce_input(rt: Runtime, block: int, hidden_states: torch.Tensor, rope, *, gather_rope):
    """SymRnR: drop ``n_h`` video tokens of the attention input ``[B, N, C]`` (video only).

    Returns ``(hidden_states, rope, restore)``; ``rope`` gathered at the kept positions by the family's
    ``gather_rope(rope, keep_idx [B, N - n_h])``; ``restore`` is ``None`` when nothing was reduced.
    """
    plan = rt.plans[block] if rt.call is not None else None
    n_h = local_tokens(rt, block, "h", plan.n_h, hidden_states.shape[1], hidden_states.device) if plan else 0
    if not n_h:
        return hidden_states, rope, None
    red, _, _ = reduction(rt, block, "h", hidden_states, n_h)
    if rt.matching.reduce_op == "mean":
        reduced = merge_mean(hidden_states, red)
    else:
        reduced = _rows3(hidden_states, red.keep_idx)
    if rope is not None:
        rope = gather_rope(rope, red.keep_idx)
    return reduced, rope, red


def _rows3(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Tokens ``idx [B, M]`` of ``x [B, N, C]``."""
    b, n, c = x.shape
    if x.is_contiguous():
        rows = (idx + torch.arange(b, device=idx.device).unsqueeze(1) * n).reshape(-1)
        return x.reshape(b * n, c).index_select(0, rows).view(b, idx.shape[1], c)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, c))


def input_mask(attn_mask: torch.Tensor | None, red: Reduction | None, *, text_len: int, text_layout: str,
               num_video: int) -> torch.Tensor | None:
    """The attention mask of a sequence whose video part SymRnR reduced (:func:`reduce_input`): key columns
    (and query rows, when the mask has them) at the kept tokens, text columns untouched.

    ``num_video`` is the video length *before* the reduction; ``None`` (no mask or no reduction) passes.
    """
    if attn_mask is None or red is None:
        return attn_mask
    keep = with_text(red.keep_idx, text_len, text_layout, num_video)
    return _mask_cols(_mask_rows(attn_mask, keep), keep)


@torch.compiler.disable
def restore_input(video_out: torch.Tensor, red: Reduction) -> torch.Tensor:
    """Back to full length after SymRnR: every dropped token takes its destination's output."""
    return _rows3(video_out, red.restore_idx)


# --------------------------------------------------------------------------------------------------
# AsymRnR: reduce Q and K/V, attend, restore
# --------------------------------------------------------------------------------------------------


@torch.compiler.disable
def attend(rt: Runtime, block: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
           text_len: int, text_layout: str, heads_dim: int, attend_fn, attn_mask=None,
           observed_input: torch.Tensor | None = None, restore_h: Reduction | None = None) -> torch.Tensor:
    """Attention of one site with the current plan: Q and K/V reduced separately (K and V by one matching on
    V), attention on the reduced sequences, then every dropped query takes its destination's output.

    Args:
        query, key, value: ``[B, H, S, D]`` (``heads_dim=1``) or ``[B, S, H, D]`` (``heads_dim=2``), after norm
            and RoPE; ``S = text_len + N``.
        attend_fn: ``attend_fn(q, k, v, attn_mask=...)`` -> output in the same layout (the family's SDPA or
            ``dispatch_attention_fn`` call).
        attn_mask: ``None``, or a mask over keys broadcastable to ``[B, H, S_q, S_kv]`` (boolean or additive):
            its key columns (and query rows, when it has them) follow the reduction.
        observed_input: the video tokens of the attention input before any reduction, ``[B, N, C]`` (for
            observers).
        restore_h: the SymRnR reduction of this call (observers then see full-length features).
    """
    seq = 2 if heads_dim == 1 else 1
    num_video = query.shape[seq] - text_len
    start = text_len if text_layout == "first" else 0
    if rt.observers:
        _notify(rt, block, query, key, value, observed_input, start, num_video, heads_dim, restore_h)
    plan = rt.plans[block] if rt.call is not None else None
    n_q = plan.n_q if plan is not None else 0
    n_kv = plan.n_kv if plan is not None else 0
    if rt.call is not None and rt.call.shard is not None:  # context parallelism: this shard's share
        full = num_video if restore_h is None else restore_h.restore_idx.shape[1]
        n_q = local_tokens(rt, block, "q", n_q, full, query.device, text_layout)
        n_kv = local_tokens(rt, block, "kv", n_kv, full, query.device, text_layout)
    if not (n_q or n_kv):
        return attend_fn(query, key, value, attn_mask=attn_mask)

    mean = rt.matching.reduce_op == "mean"
    restore_q = None
    if n_q:
        red_q, keep_q, restore_q = reduction(rt, block, "q", video_part(query, start, num_video, heads_dim), n_q,
                                             text_len=text_len, text_layout=text_layout)
        if mean:
            query = _join(query, merge_mean(video_part(query, start, num_video, heads_dim), red_q), text_len,
                          text_layout, heads_dim)
        else:
            query = select_seq(query, keep_q, heads_dim)
        attn_mask = _mask_rows(attn_mask, keep_q)
    if n_kv:
        red_kv, keep_kv, _ = reduction(rt, block, "kv", video_part(value, start, num_video, heads_dim), n_kv,
                                       text_len=text_len, text_layout=text_layout)
        if mean:
            key = _join(key, merge_mean(video_part(key, start, num_video, heads_dim), red_kv), text_len, text_layout,
                        heads_dim)
            value = _join(value, merge_mean(video_part(value, start, num_video, heads_dim), red_kv), text_len,
                          text_layout, heads_dim)
        else:
            key = select_seq(key, keep_kv, heads_dim)
            value = select_seq(value, keep_kv, heads_dim)
        attn_mask = _mask_cols(attn_mask, keep_kv)
    out = attend_fn(query, key, value, attn_mask=attn_mask)
    if restore_q is not None:
        if rt.call.shard is not None and not rt.call.shard.simulated and across_shards(rt, "q", text_layout):
            out = _dist().destination_pool(out, red_q, rt.call.shard, seq, start)  # destinations of every rank
        out = select_seq(out, restore_q, heads_dim)
    return out


def _mask_cols(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    """Key columns of a mask ``[B, 1|H, 1|S_q, S_kv]`` (or ``[B, S_kv]``) at the kept keys ``[B | B*H, M]``."""
    if mask is None or mask.shape[-1] == 1:
        return mask
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    b = mask.shape[0]
    heads = keep.shape[0] // b
    idx = keep.view(b, heads, 1, -1)
    if heads > 1 and mask.shape[1] == 1:
        mask = mask.expand(b, heads, *mask.shape[2:])
    return torch.gather(mask, 3, idx.expand(b, mask.shape[1] if heads == 1 else heads, mask.shape[2], idx.shape[-1]))


def _mask_rows(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    """Query rows of a mask ``[B, 1|H, S_q, S_kv]`` at the kept queries (masks without rows pass)."""
    if mask is None or mask.dim() != 4 or mask.shape[2] == 1:
        return mask
    b = mask.shape[0]
    heads = keep.shape[0] // b
    idx = keep.view(b, heads, -1, 1)
    if heads > 1 and mask.shape[1] == 1:
        mask = mask.expand(b, heads, *mask.shape[2:])
    return torch.gather(mask, 2, idx.expand(b, mask.shape[1] if heads == 1 else heads, idx.shape[2], mask.shape[3]))


def _notify(rt, block, query, key, value, observed_input, start, num_video, heads_dim, restore_h) -> None:
    """Hand observers the video features of this call at full length: H ``[B, N, C]``, Q/K/V ``[B, H, N, D]``."""
    q, k, v = (video_part(t, start, num_video, heads_dim) for t in (query, key, value))
    if restore_h is not None:
        q, k, v = (take_rows(t, restore_h.restore_idx) for t in (q, k, v))
    feats = {"h": observed_input, "q": q, "k": k, "v": v}
    for observer in list(rt.observers):
        observer(block, feats, rt)


__all__ = ["passthrough", "take_rows", "select_seq", "video_part", "reduction", "across_shards", "local_tokens",
           "reduce_input", "input_mask", "restore_input", "attend"]
