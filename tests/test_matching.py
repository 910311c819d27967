"""Partition and bipartite matching: exact answers on small grids."""

import math

import pytest
import torch

from asymrnr.matching import (
    best_matches,
    compute_matching,
    gather_tokens,
    make_partition,
    make_reduction,
    matching_features,
    merge_mean,
    num_windows,
    rate_ceiling,
    take_tokens,
)


@pytest.mark.parametrize("grid", [(3, 5, 7), (2, 4, 4), (1, 1, 1), (13, 10, 15)])
def test_partition_one_destination_per_window_and_covers_all(grid):
    stride = (2, 2, 2)
    part = make_partition(grid, stride, seed=3)
    n = math.prod(grid)
    both = torch.cat([part.dst_idx, part.src_idx]).sort().values
    assert torch.equal(both, torch.arange(n))
    assert part.num_dst == num_windows(grid, stride)
    f, h, w = grid
    idx = part.dst_idx
    of, oh, ow = part.origin
    assert all(0 <= o <= g % 2 for o, g in zip(part.origin, grid))  # a seeded share of the leftover goes first
    wf, wh, ww = (idx // (h * w) - of) // 2, ((idx // w) % h - oh) // 2, (idx % w - ow) // 2
    for pos, count in ((wf, f // 2), (wh, h // 2), (ww, w // 2)):
        assert bool(((pos >= 0) & (pos < count)).all())  # destinations only inside full windows
    window_ids = (wf * (h // 2) + wh) * (w // 2) + ww
    assert window_ids.unique().numel() == part.num_dst  # exactly one destination per full window


def test_partition_is_seeded_and_deterministic():
    a = make_partition((5, 6, 7), (2, 2, 2), seed=11)
    b = make_partition((5, 6, 7), (2, 2, 2), seed=11)
    c = make_partition((5, 6, 7), (2, 2, 2), seed=12)
    assert torch.equal(a.dst_idx, b.dst_idx)
    assert not torch.equal(a.dst_idx, c.dst_idx)


def test_rate_ceiling_at_real_grid():
    assert rate_ceiling((13, 30, 45), (2, 2, 2)) == pytest.approx(1 - 6 * 15 * 22 / 17550)
    assert rate_ceiling((13, 30, 45), (2, 2, 2)) == pytest.approx(15570 / 17550)  # 0.887: full windows only


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "dot"])
def test_best_matches_equals_brute_force(metric):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 300, 24, generator=g)
    dst = torch.randn(2, 40, 24, generator=g)
    sim, idx = best_matches(src, dst, metric, chunk_rows=64)
    if metric == "euclidean":
        full = -torch.cdist(src.double(), dst.double())
    elif metric == "cosine":
        full = torch.nn.functional.normalize(src, dim=-1).double() @ torch.nn.functional.normalize(dst, dim=-1).double().transpose(1, 2)
    else:
        full = src.double() @ dst.double().transpose(1, 2)
    ref_sim, ref_idx = full.max(dim=-1)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(sim.double(), ref_sim, atol=1e-4)
    # Chunking does not change the answer.
    sim2, idx2 = best_matches(src, dst, metric, chunk_rows=1000)
    assert torch.equal(idx, idx2)


def test_duplicates_are_dropped_first_and_restore_from_their_destination():
    grid = (2, 4, 4)
    part = make_partition(grid, (2, 2, 2), seed=0)
    x = torch.randn(1, 32, 8)
    # Make 5 sources exact copies of destination 0: they must be the 5 best matches.
    dup = part.src_idx[:5]
    x[0, dup] = x[0, part.dst_idx[0]].clone()
    m = compute_matching(matching_features(x, part.src_idx, "joint"), matching_features(x, part.dst_idx, "joint"), "euclidean")
    red = make_reduction(part, m, 5)
    assert set(red.drop_idx[0].tolist()) == set(dup.tolist())
    assert torch.all(red.drop_dst == 0)
    kept = gather_tokens(x, red.keep_idx)
    assert kept.shape == (1, 27, 8)
    restored = gather_tokens(kept, red.restore_idx)
    assert torch.equal(restored, x)  # duplicates restore exactly, everything else is kept


def test_restore_index_maps_kept_tokens_to_themselves():
    part = make_partition((3, 5, 5), (2, 2, 2), seed=1)
    x = torch.randn(2, 75, 6)
    m = compute_matching(matching_features(x, part.src_idx, "joint"), matching_features(x, part.dst_idx, "joint"), "euclidean")
    red = make_reduction(part, m, 20)
    kept = gather_tokens(x, red.keep_idx)
    restored = gather_tokens(kept, red.restore_idx)
    for b in range(2):
        keep = red.keep_idx[b]
        assert torch.equal(restored[b, keep], x[b, keep])
        drop = red.drop_idx[b]
        dst_tokens = part.dst_idx[red.drop_dst[b]]
        assert torch.equal(restored[b, drop], x[b, dst_tokens])


def test_per_head_granularity_gathers_different_tokens_per_head():
    part = make_partition((2, 4, 4), (2, 2, 2), seed=0)
    x = torch.randn(1, 2, 32, 8)  # [B, heads, N, D]
    feats = matching_features(x, part.src_idx, "head")
    assert feats.shape == (2, part.num_src, 8)
    m = compute_matching(feats, matching_features(x, part.dst_idx, "head"), "euclidean")
    red = make_reduction(part, m, 6)
    out = gather_tokens(x, red.keep_idx)
    assert out.shape == (1, 2, 26, 8)
    assert torch.equal(out[0, 1], x[0, 1, red.keep_idx[1]])


def test_merge_mean_averages_into_destination():
    part = make_partition((2, 2, 2), (2, 2, 2), seed=0)  # one window: 1 destination, 7 sources
    x = torch.randn(1, 8, 4)
    m = compute_matching(matching_features(x, part.src_idx, "joint"), matching_features(x, part.dst_idx, "joint"), "euclidean")
    red = make_reduction(part, m, 3)
    merged = merge_mean(x, red)
    expected_dst = (x[0, part.dst_idx[0]] + x[0, red.drop_idx[0]].sum(0)) / 4
    assert torch.allclose(merged[0, 0], expected_dst, atol=1e-6)
    assert merged.shape == (1, 5, 4)
    merged4 = merge_mean(x.unsqueeze(1).expand(1, 2, 8, 4).contiguous(), red)
    assert torch.allclose(merged4[0, 1, 0], expected_dst, atol=1e-6)


def test_random_metric_is_content_blind():
    part = make_partition((2, 4, 4), (2, 2, 2), seed=0)
    a = torch.randn(1, 32, 4)
    b = torch.randn(1, 32, 4)
    ma = compute_matching(matching_features(a, part.src_idx, "joint"), matching_features(a, part.dst_idx, "joint"), "random", random_scores=part.random_scores)
    mb = compute_matching(matching_features(b, part.src_idx, "joint"), matching_features(b, part.dst_idx, "joint"), "random", random_scores=part.random_scores)
    assert torch.equal(ma.order, mb.order)


@pytest.mark.parametrize("layout", ["bshd", "bhsd", "strided"])
def test_take_tokens_equals_gather_in_every_layout(layout):
    g = torch.Generator().manual_seed(0)
    if layout == "bshd":
        x = torch.randn(2, 50, 3, 4, generator=g).transpose(1, 2)
    elif layout == "bhsd":
        x = torch.randn(2, 3, 50, 4, generator=g)
    else:
        x = torch.randn(2, 3, 100, 4, generator=g)[:, :, ::2]
    idx = torch.stack([torch.randperm(50, generator=g)[:20] for _ in range(2)])
    assert torch.equal(take_tokens(x, idx), gather_tokens(x, idx))
    per_head = torch.stack([torch.randperm(50, generator=g)[:20] for _ in range(6)])
    assert torch.equal(take_tokens(x, per_head), gather_tokens(x, per_head))
