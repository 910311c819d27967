"""asymrnr.vocab: the token-window arithmetic against the paper's numbers, and the small shared rules."""

from __future__ import annotations

import math

import pytest

from asymrnr import vocab

#: The paper's 480x720, 49-frame CogVideoX grid after the VAE and patchify: 13 x 30 x 45 = 17,550 tokens.
PAPER_GRID = (13, 30, 45)

#: Paper Table 6: destination partition stride (t, h, w) -> share of destination tokens r_d (%).
TABLE_6 = {
    (1, 2, 2): 24.44,
    (2, 2, 2): 11.28,
    (3, 2, 2): 7.52,
    (4, 2, 2): 5.64,
    (2, 3, 3): 5.13,
    (2, 4, 4): 2.63,
}


@pytest.mark.parametrize("stride", sorted(TABLE_6))
def test_destination_shares_reproduce_paper_table_6(stride):
    n = math.prod(PAPER_GRID)
    nd = vocab.num_destinations(PAPER_GRID, stride)
    assert round(100 * nd / n, 2) == TABLE_6[stride]
    # One destination per *full* window; the leftover edge slab holds sources only.
    assert nd == math.prod(g // s for g, s in zip(PAPER_GRID, stride))
    # Counting the partial edge windows too would not reproduce the table.
    partial = math.prod(-(-g // s) for g, s in zip(PAPER_GRID, stride))
    if partial != nd:
        assert round(100 * partial / n, 2) != TABLE_6[stride]


def test_default_stride_counts_and_ceiling_on_the_paper_grid():
    assert vocab.DEFAULT_STRIDE == (2, 2, 2)
    assert vocab.window_counts(PAPER_GRID, vocab.DEFAULT_STRIDE) == (6, 15, 22)
    assert vocab.num_destinations(PAPER_GRID, vocab.DEFAULT_STRIDE) == 1980
    assert vocab.rate_ceiling(PAPER_GRID, vocab.DEFAULT_STRIDE) == pytest.approx(15570 / 17550)
    assert round(vocab.rate_ceiling(PAPER_GRID, vocab.DEFAULT_STRIDE), 3) == 0.887


def test_grid_smaller_than_one_window_has_no_destination():
    assert vocab.num_destinations((1, 30, 45), (2, 2, 2)) == 0
    assert vocab.rate_ceiling((1, 30, 45), (2, 2, 2)) == 0.0
    assert vocab.rate_ceiling((1, 30, 45), (1, 2, 2)) == pytest.approx(1 - 15 * 22 / (30 * 45))


def test_cache_windows_follow_the_papers_recompute_rule():
    # Eq. 4 with 0-based steps: the matching is recomputed at steps 0, s, 2s, ... and reused in between.
    assert [vocab.cache_window(k, 4) for k in range(9)] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert [k for k in range(12) if vocab.is_recompute_step(k, 4)] == [0, 4, 8]
    assert all(vocab.is_recompute_step(k, 1) for k in range(5))


def test_symrnr_and_asymrnr_never_share_a_cell():
    assert vocab.exclusive_violation(0.3, 0.2, 0.0) == "q"
    assert vocab.exclusive_violation(0.3, 0.0, 0.2) == "kv"
    assert vocab.exclusive_violation(0.3, 0.0, 0.0) is None
    assert vocab.exclusive_violation(0.0, 0.5, 0.5) is None


def test_defaults_are_the_papers():
    assert vocab.DEFAULT_METRIC == "euclidean"  # Table 5
    assert vocab.DEFAULT_CACHE_STEPS == 4  # Table 4
    assert vocab.DEFAULT_GRANULARITY == "head"  # the reference matches per head
    assert vocab.DEFAULT_PARTITION_MODE == "window"  # the destination choice is redrawn (seeded) per window
    assert vocab.SOURCE_FEATURE["kv"] == "v"  # K and V share V's matching (Sec. 4.3)
