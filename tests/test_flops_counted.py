"""The FLOPs model of CogVideoX and Wan against a count of the multiply-adds of one real forward
(``torch.utils.flop_counter.FlopCounterMode``), dense and reduced. (HunyuanVideo, LTX and Mochi are checked
in their own test files.)"""

from __future__ import annotations

import pytest
import torch

import asymrnr
from asymrnr import Schedule, archs
from asymrnr.flops import rates_flops


def count(transformer, kwargs, blocks_name: str) -> tuple[float, float]:
    """Total FLOPs of one forward and the transformer blocks' share (SDPA through the math kernel, so that
    the counter sees its matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(**kwargs)
    per_module = counter.get_flop_counts()
    blocks = sum(sum(v.values()) for k, v in per_module.items() if k.split(".")[-2:-1] == [blocks_name])
    return counter.get_total_flops(), blocks


def check(transformer, kwargs, blocks_name, grid, text, batch, rates, exact_dense=True):
    adapter = archs.adapter_for(transformer)
    model = adapter.describe(transformer, latent_grid=grid, text_len=text)
    report = rates_flops(model, cache_steps=1, batch=batch, num_steps=1, **rates)
    if rates:
        asymrnr.apply(transformer, Schedule.uniform(transformer, 1, latent_grid=grid, text_len=text, **rates))
    try:
        total, blocks = count(transformer, kwargs, blocks_name)
    finally:
        asymrnr.remove(transformer)
    # gathers are index copies (no FLOPs for the counter); AdaLN modulation linears are not modelled
    modelled = report.reduced_total - report.components_reduced["gather"]
    assert blocks == pytest.approx(modelled, rel=0.01)  # measured: within 0.6 %
    return total, blocks, report


RATES = [{}, {"q": 0.5, "kv": 0.3}, {"h": 0.4}]


@pytest.mark.parametrize("rates", RATES, ids=["dense", "q-kv", "h"])
def test_cogvideox_flops_model_matches_a_flop_count(rates):
    from helpers import tiny_inputs, tiny_transformer

    torch.manual_seed(0)
    model = tiny_transformer("5b")
    x, e = tiny_inputs("5b", batch=2)
    kwargs = dict(hidden_states=x, encoder_hidden_states=e, timestep=torch.full((2,), 500.0), return_dict=False)
    grid, text = (5, 5, 6), e.shape[1]
    total, blocks, report = check(model, kwargs, "transformer_blocks", grid, text, 2, rates)
    assert total == pytest.approx(report.reduced_total, rel=0.05)  # + patch embedding, time embedding, out (2.4-3.1 %)


@pytest.mark.parametrize("rates", RATES, ids=["dense", "q-kv", "h"])
def test_wan_flops_model_matches_a_flop_count(rates):
    from asymrnr.testing.tiny_wan import build_tiny_wan_transformer

    torch.manual_seed(0)
    model = build_tiny_wan_transformer().eval()
    grid, text, batch = (3, 4, 5), 16, 1
    cfg = model.config
    x = torch.randn(batch, cfg.in_channels, grid[0], grid[1] * 2, grid[2] * 2)
    e = torch.randn(batch, text, cfg.text_dim)
    kwargs = dict(hidden_states=x, encoder_hidden_states=e, timestep=torch.full((batch,), 500.0), return_dict=False)
    total, blocks, report = check(model, kwargs, "blocks", grid, text, batch, rates)
    assert total == pytest.approx(report.reduced_total, rel=0.10)  # the tiny model's embeddings: 5.4-6.7 %
