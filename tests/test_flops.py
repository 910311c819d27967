"""FLOPs model: hand-computed counts on a tiny shape, cache amortisation, validation, and the paper's
CogVideoX-2B numbers (Table 1 dense 12.000e15, Table 4 V-only r=0.3)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from asymrnr.errors import ScheduleFormatError, ScheduleMismatchError
from asymrnr.flops import (
    num_windows,
    rate_ceiling,
    rates_flops,
    schedule_flops,
    transformer_flops,
)
from asymrnr.schedule_format import MatchingSettings, ModelDescription, SamplerDescription, Schedule

# Tiny shape: 2 blocks, 2 heads x 4 (C = 8), grid 3x5x6 (N = 90), 10 text tokens (S = 100), ffn 32.
TINY = ModelDescription(
    family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=2, num_heads=2, head_dim=4,
    patch_size=(1, 2, 2), rope=False, latent_grid=(3, 5, 6), text_len=10, text_layout="first", ffn_dim=32,
)
# Dense, per block and per sample:
PROJ = 4 * 2 * 100 * 8 * 8  # 51_200
ATTN = 2 * 2 * 2 * 100 * 100 * 4  # 320_000
MLP = 2 * 2 * 100 * 8 * 32  # 102_400
CELL = PROJ + ATTN + MLP  # 473_600
# Matching at stride (2,2,2): destinations only in full windows, Nd = 1*2*3 = 6, Ns = 84.
MATCH = 2 * 84 * 6 * 8 + 3 * 84 * 6 + 2 * 90 * 8  # 8_064 + 1_512 + 1_440 = 11_016

CVX2B = ModelDescription(
    family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=30, num_heads=30, head_dim=64,
    patch_size=(1, 2, 2), rope=False, latent_grid=(13, 30, 45), text_len=226, text_layout="first", ffn_dim=7680,
)


def test_windows_and_ceiling_hand_computed():
    # One destination per FULL window (paper Table 6, reference code); the edge slab holds sources only.
    assert num_windows((3, 5, 6), (2, 2, 2)) == 6
    assert rate_ceiling((3, 5, 6)) == pytest.approx(84 / 90)
    # CogVideoX at 480x720x49: 6 x 15 x 22 full windows, 11.28 % destinations (Table 6).
    assert num_windows((13, 30, 45), (2, 2, 2)) == 1980
    assert rate_ceiling((13, 30, 45)) == pytest.approx(15570 / 17550)
    assert num_windows((4, 4, 4), (2, 2, 2)) == 8
    assert num_windows((1, 3, 3), (2, 2, 2)) == 0 and rate_ceiling((1, 3, 3)) == 0.0


def test_windows_agree_with_the_matching_partition():
    matching = pytest.importorskip("asymrnr.matching")
    for grid, stride in [((3, 5, 6), (2, 2, 2)), ((13, 30, 45), (2, 2, 2)), ((5, 7, 9), (1, 2, 3))]:
        assert num_windows(grid, stride) == matching.num_windows(grid, stride)
        assert rate_ceiling(grid, stride) == pytest.approx(matching.rate_ceiling(grid, stride))
        part = matching.make_partition(grid, stride, seed=0)
        assert part.num_dst == num_windows(grid, stride)


def test_dense_call_hand_computed():
    assert transformer_flops(TINY, batch=1) == 2 * CELL
    assert transformer_flops(TINY) == 2 * 2 * CELL  # CFG batch of 2
    rep = rates_flops(TINY, num_steps=3)
    assert rep.dense_total == rep.reduced_total == 3 * 2 * 2 * CELL
    assert rep.predicted_speedup == 1.0
    assert rep.attention_share == pytest.approx(ATTN / CELL)
    assert rep.matchings == 0


def test_q_reduction_hand_computed():
    q = np.zeros((2, 3))
    q[0, 0] = 0.5  # n_q = 45 -> Sq = 55
    rep = rates_flops(TINY, q=q, cache_steps=2, batch=2)
    cell = PROJ + 2 * 2 * 2 * 55 * 100 * 4 + MLP + MATCH + (45 * 8 + 90 * 8)  # gather kept Q + restore
    assert cell == 341_696
    assert rep.reduced_total == pytest.approx(3 * 2 * 2 * CELL - 2 * (CELL - cell), rel=1e-12)
    assert rep.per_block_reduced[1] == pytest.approx(3 * 2 * CELL)
    assert rep.per_block_reduced[0] == pytest.approx(2 * (2 * CELL + cell))
    assert rep.per_step_reduced[0] == pytest.approx(2 * (CELL + cell))
    assert rep.per_step_reduced[1] == pytest.approx(2 * 2 * CELL)
    assert rep.matchings == 1
    assert rep.components_reduced["matching"] == pytest.approx(2 * MATCH)


def test_kv_and_h_reduction_hand_computed():
    kv = np.full((2, 1), 0.3)  # floor(27.0) = 27 -> Skv = 73
    rep = rates_flops(TINY, kv=kv, cache_steps=1, batch=1)
    cell = PROJ + 2 * 2 * 2 * 100 * 73 * 4 + MLP + MATCH + 2 * 63 * 8
    assert rep.reduced_total == pytest.approx(2 * cell)

    h = np.full((2, 1), 0.2)  # n_h = 18 -> 82 tokens through projections and attention, MLP untouched
    rep = rates_flops(TINY, h=h, cache_steps=1, batch=1)
    cell = 4 * 2 * 82 * 8 * 8 + 2 * 2 * 2 * 82 * 82 * 4 + MLP + MATCH + (72 * 8 + 90 * 8)
    assert rep.reduced_total == pytest.approx(2 * cell)


def test_token_counts_use_floor():
    # 0.333 * 90 = 29.97 -> 29 tokens dropped, not 30.
    rep = rates_flops(TINY, kv=np.full((2, 1), 0.333), cache_steps=1, batch=1)
    attn = 2 * 2 * 2 * 100 * (100 - 29) * 4
    assert rep.components_reduced["attention"] == pytest.approx(2 * attn)


def test_matching_charged_once_per_cache_window_at_first_reduced_step():
    q = np.zeros((2, 7))
    q[0, :] = 0.2  # windows of 3: steps 0-2, 3-5, 6 -> 3 matchings
    q[1, 4:6] = 0.2  # only steps 4, 5 of window 1 -> one matching, charged at step 4
    rep = rates_flops(TINY, q=q, cache_steps=3, batch=1)
    assert rep.matchings == 4
    per_step_match = rep.per_step_reduced - rates_flops(TINY, q=q, cache_steps=10**6, batch=1).per_step_reduced
    # With an infinite cache only step 0 (block 0) and step 4 (block 1) match; with cache 3, steps 3 and 6 add one each.
    expected = np.zeros(7)
    expected[[3, 6]] = MATCH
    assert per_step_match == pytest.approx(expected)
    every = rates_flops(TINY, q=q, cache_steps=1, batch=1)
    assert every.matchings == int((q > 0).sum())
    assert every.reduced_total > rep.reduced_total


def test_transformer_flops_per_call_with_rates():
    rates = {"q": [0.5, 0.0], "kv": [0.3, 0.3]}
    full = transformer_flops(TINY, batch=1, rates=rates)
    reuse = transformer_flops(TINY, batch=1, rates=rates, step=1, cache_steps=4)
    recompute = transformer_flops(TINY, batch=1, rates=rates, step=4, cache_steps=4)
    assert full == recompute
    assert full - reuse == pytest.approx(3 * MATCH)  # q in block 0, kv in blocks 0 and 1
    table = {"kv": np.array([[0.0, 0.3], [0.0, 0.3]])}
    assert transformer_flops(TINY, rates=table, step=0) == transformer_flops(TINY)
    with pytest.raises(ValueError, match="step="):
        transformer_flops(TINY, rates=table)


def test_validation_errors():
    ceiling = rate_ceiling((3, 5, 6))
    with pytest.raises(ScheduleMismatchError, match="ceiling"):
        rates_flops(TINY, kv=np.full((2, 2), ceiling + 0.01))
    rates_flops(TINY, kv=np.full((2, 2), ceiling))  # exactly at the ceiling is allowed
    with pytest.raises(ScheduleFormatError, match="SymRnR"):
        rates_flops(TINY, q=np.full((2, 2), 0.1), h=np.full((2, 2), 0.1))
    with pytest.raises(ScheduleMismatchError, match="shape"):
        rates_flops(TINY, q=np.zeros((3, 2)), kv=np.zeros((2, 2)))
    with pytest.raises(ScheduleFormatError, match="negative"):
        rates_flops(TINY, q=np.full((2, 2), -0.1))
    with pytest.raises(ScheduleFormatError, match="NaN"):
        rates_flops(TINY, q=np.full((2, 2), np.nan))


def _schedule(model, q, kv, cache_steps=4):
    b, s = np.shape(q)
    return Schedule(
        model=model,
        sampler=SamplerDescription("CogVideoXDDIMScheduler", s, None),
        matching=MatchingSettings(cache_steps=cache_steps),
        rates={"q": q, "kv": kv, "h": np.zeros((b, s))},
        provenance={},
    )


def test_schedule_flops_matches_rates_flops_and_breakdowns_add_up():
    rng = np.random.default_rng(0)
    q = np.round(rng.uniform(0, 0.5, (2, 6)) * (rng.random((2, 6)) > 0.5), 3)
    kv = np.round(rng.uniform(0, 0.7, (2, 6)), 3)
    rep = schedule_flops(_schedule(TINY, q, kv, cache_steps=2))
    ref = rates_flops(TINY, q=q, kv=kv, cache_steps=2)
    assert rep.reduced_total == ref.reduced_total
    assert rep.per_block_reduced.sum() == pytest.approx(rep.reduced_total)
    assert rep.per_step_reduced.sum() == pytest.approx(rep.reduced_total)
    assert sum(rep.components_reduced.values()) == pytest.approx(rep.reduced_total)
    assert rep.per_step_dense == pytest.approx(np.full(6, transformer_flops(TINY)))
    assert 1.0 < rep.predicted_speedup == pytest.approx(rep.dense_total / rep.reduced_total)
    d = rep.to_dict()
    assert d["per_block_dense"] == rep.per_block_dense.tolist()


def test_cogvideox_2b_dense_matches_paper_table_1():
    dense = transformer_flops(CVX2B) * 50  # 50 DDIM steps, CFG batch of 2
    assert dense == pytest.approx(12.000e15, rel=1e-3)  # paper: 12.000e15; ours 11.998e15
    assert rates_flops(CVX2B, num_steps=50).attention_share == pytest.approx(0.607, abs=0.005)


def test_cogvideox_5b_dense_matches_paper_table_1():
    cvx5b = ModelDescription(
        family="cogvideox", transformer_class="CogVideoXTransformer3DModel", num_blocks=42, num_heads=48, head_dim=64,
        patch_size=(1, 2, 2), rope=True, latent_grid=(13, 30, 45), text_len=226, text_layout="first", ffn_dim=4 * 3072,
    )
    assert transformer_flops(cvx5b) * 50 == pytest.approx(33.220e15, rel=1e-3)  # ours 33.218e15


def test_cogvideox_2b_v_only_matches_paper_table_4():
    # V (K/V) reduced at r = 0.3 everywhere, no schedule (paper Table 4).
    paper = {1: 10.161e15, 2: 9.968e15, 3: 9.943e15, 4: 9.917e15, 5: 9.909e15}
    ours = {s: rates_flops(CVX2B, kv=np.full((30, 50), 0.3), cache_steps=s).reduced_total for s in paper}
    for s in paper:
        assert ours[s] == pytest.approx(paper[s], rel=0.015)
    assert all(ours[a] > ours[b] for a, b in zip(range(1, 5), range(2, 6)))  # caching longer is cheaper
    assert ours[4] == pytest.approx(9.917e15, rel=0.005)


def test_rates_flops_is_fast():
    rng = np.random.default_rng(0)
    q, kv = rng.uniform(0, 0.5, (30, 50)), rng.uniform(0, 0.8, (30, 50))
    rates_flops(CVX2B, q=q, kv=kv)
    t0 = time.perf_counter()
    for _ in range(20):
        rates_flops(CVX2B, q=q, kv=kv)
    assert (time.perf_counter() - t0) / 20 < 0.02
