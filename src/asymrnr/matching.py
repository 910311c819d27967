"""Bipartite soft matching on 3D windows of the video token grid (paper Sec. 3.1).

The video tokens of a grid ``(F, H, W)`` are split into windows of ``stride = (sf, sh, sw)``. Each *full*
window contributes one random *destination*; every other token is a *source*, including the leftover
edge tokens that do not fill a window (at a seeded offset per axis, split before and after the windows) (paper Table 6 and the reference count one destination per full
window: 11.28 % of the tokens at 13x30x45, stride (2, 2, 2)). Each source is matched to its most similar
destination; reducing by ``n_r`` drops the ``n_r`` sources with the best match, and restoration copies a
dropped token's output from its destination.

Everything here is pure torch. Shapes depend only on the grid, the stride and ``n_r`` (which the schedule
fixes), never on the data, so nothing syncs with the host and ``torch.compile`` sees static shapes.

Notation: ``G`` is the matching batch (``B`` when all heads are matched jointly, ``B * heads`` per head),
``N`` video tokens, ``Nd`` destinations, ``Ns = N - Nd`` sources, ``C`` the matched feature width.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import vocab

METRICS = vocab.METRICS

# Upper bound on the bytes of one chunk of the [G, rows, Nd] similarity matrix. The full matrix is
# memory-bound (field notes: chunking halves the matching time at the real 13x30x45 grid); a chunk that
# stays in cache lets the min/max reduction read what the matmul just wrote.
# Measured best on this CPU: ~128 rows per thread at the real 13x30x45 grid (1.25 MiB per thread).
_CHUNK_BYTES_PER_THREAD = 5 * 256 * 1024


@dataclass(frozen=True)
class Partition:
    """Destination/source split of a token grid.

    Attributes:
        grid: token grid ``(F, H, W)``.
        stride: window stride ``(sf, sh, sw)``.
        dst_idx: ``[Nd]`` int64, flat video-token indices of the destinations, ascending.
        src_idx: ``[Ns]`` int64, flat indices of the sources, ascending.
        random_scores: ``[Ns]`` float32 in [0, 1), fixed per partition; the "random" metric's similarity.
        origin: where the full windows start on each axis (tokens before it and after the last window are
            sources only).
    """

    grid: tuple[int, int, int]
    stride: tuple[int, int, int]
    dst_idx: torch.Tensor
    src_idx: torch.Tensor
    random_scores: torch.Tensor
    origin: tuple[int, int, int] = (0, 0, 0)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_dst(self) -> int:
        return int(self.dst_idx.numel())

    @property
    def num_src(self) -> int:
        return int(self.src_idx.numel())

    @property
    def max_rate(self) -> float:
        """The largest reducible fraction of video tokens, ``Ns / N`` (0 without destinations)."""
        return self.num_src / self.num_tokens if self.num_dst else 0.0

    def to(self, device: torch.device | str) -> "Partition":
        return Partition(
            self.grid,
            self.stride,
            self.dst_idx.to(device),
            self.src_idx.to(device),
            self.random_scores.to(device),
            self.origin,
        )


def num_windows(grid: tuple[int, int, int], stride: tuple[int, int, int]) -> int:
    """Number of full windows, which equals the number of destinations."""
    return vocab.num_destinations(grid, stride)


def rate_ceiling(grid: tuple[int, int, int], stride: tuple[int, int, int]) -> float:
    """Largest allowed rate ``Ns / N`` for a grid and stride."""
    return vocab.rate_ceiling(grid, stride)


_FEATURE_CODE = {"h": 1, "q": 2, "kv": 3, "k": 3, "v": 3}


def partition_seed(seed: int, block: int, feature: str, window: int | None = None) -> int:
    """Deterministic seed of the partition of one (block, feature[, cache window]); the same on every machine,
    every prompt and every rank. ``window=None`` is the fixed partition of the whole generation."""
    code = _FEATURE_CODE.get(feature, 7)
    base = int(seed) * 1_000_003 + int(block) * 1_009 + code * 101
    if window is not None:
        base += (int(window) + 1) * 7_919_317
    return base % (2**63 - 1)


def make_partition(grid: tuple[int, int, int], stride: tuple[int, int, int], seed: int) -> Partition:
    """Choose one random destination per full 3D window, deterministically from ``seed`` (on the CPU).

    Args:
        grid: token grid ``(F, H, W)``; video tokens are flattened frame-major, then row, then column.
        stride: window size per axis; the ``g % s`` tokens left over on an axis (split before and after the
            full windows at a seeded offset) are sources only.
        seed: seeds a CPU ``torch.Generator``, so the partition is identical on any machine.
    """
    grid = tuple(int(g) for g in grid)
    stride = tuple(int(s) for s in stride)
    if any(g < 1 for g in grid):
        raise ValueError(f"token grid must be positive, got {grid}")
    if any(s < 1 for s in stride):
        raise ValueError(f"window stride must be >= 1 on every axis, got {stride}")
    gf, gh, gw = grid
    sf, sh, sw = stride
    nf, nh, nw = vocab.window_counts(grid, stride)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    # Where the full windows start on each axis: a seeded share of the leftover (g % s) goes before them, the
    # rest after, as in the reference; redrawn with the partition, so every edge token is sometimes inside a
    # window over a generation.
    start = [int(torch.randint(0, g % st + 1, (1,), generator=gen)) for g, st in zip(grid, stride)]
    n_win = nf * nh * nw
    size = sf * sh * sw
    offset = torch.randint(0, size, (n_win,), generator=gen)
    of = offset // (sh * sw)
    oh = (offset % (sh * sw)) // sw
    ow = offset % sw
    f = (torch.arange(nf).view(nf, 1, 1) * sf + start[0]).expand(nf, nh, nw).reshape(-1) + of
    h = (torch.arange(nh).view(1, nh, 1) * sh + start[1]).expand(nf, nh, nw).reshape(-1) + oh
    w = (torch.arange(nw).view(1, 1, nw) * sw + start[2]).expand(nf, nh, nw).reshape(-1) + ow
    dst = torch.sort((f * gh + h) * gw + w).values

    is_dst = torch.zeros(gf * gh * gw, dtype=torch.bool)
    is_dst[dst] = True
    src = torch.nonzero(~is_dst).flatten()
    random_scores = torch.rand(src.shape, generator=gen, dtype=torch.float32)
    return Partition(grid, stride, dst, src, random_scores, tuple(start))


# On CUDA the chunk is bounded by memory, not cache: a cache-sized chunk would be thousands of tiny kernel
# launches per matching at the full-size grids (48 heads, 62k sources).
_CUDA_CHUNK_BYTES = 256 << 20


def _chunk_rows(groups: int, num_dst: int, num_src: int, device: torch.device | None = None) -> int:
    if device is not None and device.type != "cpu":
        return int(max(64, min(num_src, _CUDA_CHUNK_BYTES // max(1, groups * num_dst * 4))))
    # get_num_threads() is not traceable: under torch.compile the chunking is fixed at the 2-thread size.
    threads = 2 if torch.compiler.is_compiling() else torch.get_num_threads()
    budget = _CHUNK_BYTES_PER_THREAD * max(1, threads)
    rows = budget // max(1, groups * num_dst * 4)
    return int(max(64, min(num_src, rows)))


#: 16-bit float dtypes whose similarities best_matches computes in float32.
_HALF_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def _tf32_matmul():
    """Let CUDA float32 matmuls use TF32 tensor cores inside the block (restored after).

    For features that were bf16 or fp16, TF32 loses nothing: their 8- and 11-bit significands fit TF32's 11
    bits exactly, products and sums are accumulated in float32, and the result is float32. Full float32
    on a GPU's CUDA cores would be about ten times slower than the bf16 matmul it replaces (at a 5B model's
    480p grid, a large share of a step whenever the matching is recomputed). Only the setting's own API is
    used and its value restored exactly: torch refuses states mixed from its legacy and new TF32 APIs.
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        saved = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
        return
    saved = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = saved


def best_matches(
    src: torch.Tensor,
    dst: torch.Tensor,
    metric: str = "euclidean",
    *,
    random_scores: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every source, the most similar destination and that similarity.

    Args:
        src: ``[G, Ns, C]`` source features (float16/bfloat16 are compared in float32).
        dst: ``[G, Nd, C]`` destination features.
        metric: ``euclidean`` (similarity = minus the distance), ``cosine``, ``dot`` or ``random``.
        random_scores: ``[Ns]`` similarities used by the ``random`` metric.
        chunk_rows: sources per chunk of the similarity matrix (default: keep a chunk under 32 MiB).

    Returns:
        ``(best_sim [G, Ns] float32, best_dst [G, Ns] int64)``, ``best_dst`` indexing ``dst``'s dim 1.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown matching metric {metric!r}; use one of {', '.join(METRICS)}")
    g, ns, _ = src.shape
    nd = dst.shape[1]
    if metric == "random":
        if random_scores is None:
            raise ValueError("the random metric needs the partition's random_scores")
        # A fixed pseudo-random destination per source and a fixed drop order: content-blind matching.
        ar = torch.arange(ns, device=src.device)
        best_dst = ((ar * 7919 + 13) % nd).unsqueeze(0).expand(g, ns).contiguous()
        best_sim = random_scores.to(src.device, torch.float32).unsqueeze(0).expand(g, ns).contiguous()
        return best_sim, best_dst

    # Matching only picks indices and orders sources: no gradient flows through it (and the chunks below write
    # into preallocated outputs, which autograd refuses when a transformer runs with grad enabled).
    src, dst = src.detach(), dst.detach()
    half = src.dtype in _HALF_DTYPES or dst.dtype in _HALF_DTYPES
    if half:
        # Similarities in float32: in bf16 (8-bit mantissa) ||d||^2 - 2 s.d of hidden states with a large
        # shared offset cancels to a handful of representable values, so near destinations tie and the argmin
        # is close to arbitrary (half the best destinations differ at an offset of 10 sigma). The profiler
        # measures in float32 too. On CUDA the matmul uses TF32 (see _tf32_matmul): exact for 16-bit
        # inputs (Euclidean, dot; cosine's unit vectors are rounded to TF32's 11 bits, still finer than bf16).
        src, dst = src.float(), dst.float()
    if metric == "cosine":
        src = F.normalize(src, dim=-1)
        dst = F.normalize(dst, dim=-1)
    dst_t = dst.transpose(1, 2).contiguous()  # [G, C, Nd]
    rows = min(ns, chunk_rows or _chunk_rows(g, nd, ns, src.device))
    # Each chunk writes its row minimum straight into the outputs and reuses one similarity buffer: per chunk
    # only the matmul and the reduction run (each a parallel region; on a loaded CPU every region costs a
    # thread wake-up), and the element-wise finish runs once over all sources. Bit-identical to finishing
    # chunk by chunk (element-wise ops; the matmul per row does not depend on the chunk).
    best_val = torch.empty((g, ns), dtype=src.dtype, device=src.device)
    best_dst = torch.empty((g, ns), dtype=torch.long, device=src.device)
    buf = torch.empty((g, rows, nd), dtype=torch.result_type(src, dst), device=src.device)
    dst_sq = dst.pow(2).sum(-1).unsqueeze(1) if metric == "euclidean" else None  # [G, 1, Nd]
    if half and src.is_cuda and not torch.compiler.is_compiling():  # (no context manager in traced code)
        with _tf32_matmul():
            _best_in_chunks(src, dst_t, dst_sq, rows, buf, best_val, best_dst)
    else:
        _best_in_chunks(src, dst_t, dst_sq, rows, buf, best_val, best_dst)
    if metric == "euclidean":
        d2 = best_val.float() + src.float().pow(2).sum(-1)
        return -torch.sqrt(torch.clamp(d2, min=0.0)), best_dst
    return best_val.float(), best_dst


def _best_in_chunks(src, dst_t, dst_sq, rows, buf, best_val, best_dst) -> None:
    """Fill ``best_val``/``best_dst`` ``[G, Ns]`` chunk by chunk: the minimum of ``||d||^2 - 2 s.d`` over
    destinations when ``dst_sq [G, 1, Nd]`` is given (Euclidean), else the maximum of ``s.d``."""
    ns = src.shape[1]
    for start in range(0, ns, rows):
        stop = min(ns, start + rows)
        s = src[:, start:stop]
        out = buf[:, : stop - start]
        if dst_sq is not None:
            # argmin ||s - d||^2 = argmin (||d||^2 - 2 s.d): one fused matmul-add per chunk; ||s||^2 is added
            # back only for the winners.
            torch.baddbmm(dst_sq, s, dst_t, beta=1.0, alpha=-2.0, out=out)
            torch.min(out, dim=-1, out=(best_val[:, start:stop], best_dst[:, start:stop]))
        else:
            torch.bmm(s, dst_t, out=out)
            torch.max(out, dim=-1, out=(best_val[:, start:stop], best_dst[:, start:stop]))


@dataclass
class Matching:
    """A computed matching, sorted so that any reduction count can be read off it without recomputing.

    Attributes:
        order: ``[G, Ns]`` int64, source *slots* (indices into ``partition.src_idx``) by descending similarity.
        order_dst: ``[G, Ns]`` int64, the matched destination slot of each sorted source.
        sorted_sim: ``[G, Ns]`` float32, the similarity of each sorted source.
    """

    order: torch.Tensor
    order_dst: torch.Tensor
    sorted_sim: torch.Tensor


def compute_matching(
    src: torch.Tensor,
    dst: torch.Tensor,
    metric: str,
    *,
    random_scores: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> Matching:
    """Match ``src [G, Ns, C]`` to ``dst [G, Nd, C]`` and sort sources by match quality."""
    best_sim, best_dst = best_matches(src, dst, metric, random_scores=random_scores, chunk_rows=chunk_rows)
    sorted_sim, order = torch.sort(best_sim, dim=1, descending=True, stable=True)
    return Matching(order=order, order_dst=torch.gather(best_dst, 1, order), sorted_sim=sorted_sim)


@dataclass
class Reduction:
    """Index tensors of one reduction by ``n_r`` tokens.

    The reduced sequence is ``[destinations (Nd) | kept sources (Ns - n_r)]``; destinations come first so
    that a dropped source restores from slot ``order_dst`` directly.

    Attributes:
        keep_idx: ``[G, N - n_r]`` flat video-token indices of the kept tokens.
        restore_idx: ``[G, N]`` for every video token, its slot in the reduced sequence.
        drop_idx: ``[G, n_r]`` flat indices of the dropped sources.
        drop_dst: ``[G, n_r]`` destination slot each dropped source merges into.
        num_dst: ``Nd``.
    """

    keep_idx: torch.Tensor
    restore_idx: torch.Tensor
    drop_idx: torch.Tensor
    drop_dst: torch.Tensor
    num_dst: int


def make_reduction(partition: Partition, matching: Matching, n_r: int) -> Reduction:
    """Index tensors that drop the ``n_r`` best-matched sources (``0 < n_r <= Ns``)."""
    g = matching.order.shape[0]
    n = partition.num_tokens
    nd = partition.num_dst
    src_idx = partition.src_idx
    dropped_slots = matching.order[:, :n_r]
    kept_slots = matching.order[:, n_r:]
    keep_idx = torch.cat([partition.dst_idx.unsqueeze(0).expand(g, nd), src_idx[kept_slots]], dim=1)
    drop_idx = src_idx[dropped_slots]
    drop_dst = matching.order_dst[:, :n_r]
    restore_idx = torch.empty((g, n), dtype=torch.long, device=keep_idx.device)
    slots = torch.arange(n - n_r, device=keep_idx.device).unsqueeze(0).expand(g, n - n_r)
    restore_idx.scatter_(1, keep_idx, slots)
    restore_idx.scatter_(1, drop_idx, drop_dst)
    return Reduction(keep_idx, restore_idx, drop_idx, drop_dst, nd)


def with_text(idx: torch.Tensor, text_len: int, text_layout: str, num_video: int) -> torch.Tensor:
    """Index into a joint sequence whose text tokens are kept as they are.

    Args:
        idx: ``[G, M]`` indices into the video part: tokens kept (reduction) or, for restoration, each video
            token's slot in the reduced video part (``M = N``).
        text_len: text tokens of the sequence; ``text_layout``: ``first`` (``[text | video]``), ``last``
            (``[video | text]``) or ``none``.
        num_video: length of the video part the *result* indexes into: ``N`` for a reduction, the reduced
            length ``N - n_r`` for a restoration.

    Returns:
        ``[G, text_len + M]``: one gather over the whole sequence both keeps the text and reduces (or restores)
        the video, with no concatenation of tensors.
    """
    if text_layout == "none" or text_len == 0:
        return idx
    text = torch.arange(text_len, device=idx.device, dtype=idx.dtype).unsqueeze(0).expand(idx.shape[0], text_len)
    if text_layout == "first":
        return torch.cat([text, idx + text_len], dim=1)
    if text_layout == "last":
        return torch.cat([idx, text + num_video], dim=1)
    raise ValueError(f"unknown text layout {text_layout!r}; use first, last or none")


def with_prefix(idx: torch.Tensor, prefix: int) -> torch.Tensor:
    """:func:`with_text` for a sequence that starts with ``prefix`` text tokens."""
    return with_text(idx, prefix, "first", 0)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens along the sequence dim.

    Args:
        x: ``[B, N, C]`` or ``[B, heads, N, D]``.
        idx: ``[B, M]`` (the same tokens for every head) or ``[B * heads, M]`` (per head; 4D ``x`` only).

    Returns:
        ``[B, M, C]`` or ``[B, heads, M, D]``.
    """
    if x.dim() == 3:
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    b, heads, _, d = x.shape
    if idx.shape[0] == b:
        index = idx.view(b, 1, -1, 1).expand(b, heads, idx.shape[1], d)
    else:
        index = idx.view(b, heads, -1, 1).expand(b, heads, idx.shape[1], d)
    return torch.gather(x, 2, index)


def take_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """:func:`gather_tokens` for ``x [B, heads, S, D]`` and one index per sample (``idx [B, M]``), as whole-row
    copies: ``index_select`` over rows of the layout ``x`` is stored in.

    Q/K/V projected per token are ``[B, S, heads, D]`` tensors viewed as ``[B, heads, S, D]``; selecting token rows
    of ``heads * D`` contiguous values is a plain memory copy, faster than an element-wise ``gather`` with an
    expanded index. Falls back to :func:`gather_tokens` for per-head indices or other layouts.
    """
    b, heads, s, d = x.shape
    if idx.shape[0] != b:
        return gather_tokens(x, idx)
    m = idx.shape[1]
    xt = x.transpose(1, 2)
    if xt.is_contiguous():  # memory order [B, S, heads, D]
        rows = (idx + torch.arange(b, device=idx.device).unsqueeze(1) * s).reshape(-1)
        return xt.reshape(b * s, heads * d).index_select(0, rows).view(b, m, heads, d).transpose(1, 2)
    if x.is_contiguous():  # memory order [B, heads, S, D]
        base = (torch.arange(b, device=idx.device).view(b, 1, 1) * heads + torch.arange(heads, device=idx.device).view(1, heads, 1)) * s
        rows = (base + idx.view(b, 1, m)).reshape(-1)
        return x.reshape(b * heads * s, d).index_select(0, rows).view(b, heads, m, d)
    return gather_tokens(x, idx)


def merge_mean(x: torch.Tensor, red: Reduction) -> torch.Tensor:
    """Reduce by averaging each dropped source into its destination (ToMe's ``mean``).

    Args:
        x: ``[B, N, C]`` or ``[B, heads, N, D]`` video features.

    Returns:
        The reduced features, destinations averaged with the sources merged into them.
    """
    kept = gather_tokens(x, red.keep_idx)
    dropped = gather_tokens(x, red.drop_idx)
    seq_dim = 1 if x.dim() == 3 else 2
    dst = kept.narrow(seq_dim, 0, red.num_dst)
    g = red.drop_dst.shape[0]
    counts = torch.ones((g, red.num_dst), dtype=x.dtype, device=x.device)
    counts = counts.scatter_add(1, red.drop_dst, torch.ones_like(red.drop_dst, dtype=x.dtype))
    if x.dim() == 3:
        index = red.drop_dst.unsqueeze(-1).expand_as(dropped)
        summed = dst.scatter_add(1, index, dropped)
        merged = summed / counts.unsqueeze(-1)
    else:
        b, heads = x.shape[:2]
        per_sample = 1 if g == b else heads  # joint: one matching shared by all heads; else one per head
        index = red.drop_dst.view(b, per_sample, -1, 1).expand_as(dropped)
        summed = dst.scatter_add(2, index, dropped)
        merged = summed / counts.view(b, per_sample, -1, 1)
    return torch.cat([merged, kept.narrow(seq_dim, red.num_dst, kept.shape[seq_dim] - red.num_dst)], dim=seq_dim)


def matching_features(x: torch.Tensor, idx: torch.Tensor, granularity: str) -> torch.Tensor:
    """Features of the tokens ``idx [M]`` laid out for matching.

    Args:
        x: ``[B, N, C]`` (attention input) or ``[B, heads, N, D]`` (Q/K/V after RoPE).
        granularity: ``joint`` matches on all heads together (``[B, M, heads * D]``); ``head`` matches each
            head separately (``[B * heads, M, D]``).
    """
    if x.dim() == 3:
        return x.index_select(1, idx)
    b, heads, _, d = x.shape
    if granularity == "joint":
        return x.transpose(1, 2).index_select(1, idx).reshape(b, idx.numel(), heads * d)
    if granularity == "head":
        return x.index_select(2, idx).reshape(b * heads, idx.numel(), d)
    raise ValueError(f"unknown matching granularity {granularity!r}; use 'joint' or 'head'")


def best_matches_euclidean_and_cosine(
    src: torch.Tensor, dst: torch.Tensor, *, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best Euclidean and best cosine match of every source (profiler use).

    Two passes over each chunk of the similarity matrix per metric (a fused matmul-add and a min; a matmul
    of unit vectors and a max), squared norms computed once.

    Args:
        src: ``[G, Ns, C]``; dst: ``[G, Nd, C]``.

    Returns:
        ``(euclid_sim, euclid_dst, cosine_sim, cosine_dst)``, each ``[G, Ns]``; ``euclid_sim`` is minus the
        distance, as in :func:`best_matches`.
    """
    g, ns, _ = src.shape
    nd = dst.shape[1]
    src_sq = src.pow(2).sum(-1)  # [G, Ns]
    dst_sq = dst.pow(2).sum(-1)  # [G, Nd]
    dst_t = dst.transpose(1, 2).contiguous()
    dst_unit_t = (dst * dst_sq.clamp_min(1e-24).rsqrt().unsqueeze(-1)).transpose(1, 2).contiguous()
    src_unit = src * src_sq.clamp_min(1e-24).rsqrt().unsqueeze(-1)
    dst_sq = dst_sq.unsqueeze(1)
    # Larger chunks than the runtime's: the profiler's many small batched matrices are op-count bound.
    rows = chunk_rows or max(_chunk_rows(g, nd, ns, src.device), (32 << 20) // max(1, g * nd * 4))
    e_sims, e_idx, c_sims, c_idx = [], [], [], []
    for start in range(0, ns, rows):
        stop = start + rows
        val, idx = torch.min(torch.baddbmm(dst_sq, src[:, start:stop], dst_t, beta=1.0, alpha=-2.0), dim=-1)
        e_sims.append(-torch.sqrt(torch.clamp(val + src_sq[:, start:stop], min=0.0)))
        e_idx.append(idx)
        val, idx = torch.max(torch.bmm(src_unit[:, start:stop], dst_unit_t), dim=-1)
        c_sims.append(val)
        c_idx.append(idx)
    return torch.cat(e_sims, 1), torch.cat(e_idx, 1), torch.cat(c_sims, 1), torch.cat(c_idx, 1)
