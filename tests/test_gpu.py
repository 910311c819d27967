"""Full-size random-weight CogVideoX-5B and Wan 2.1 14B transformers in bf16 on CUDA, dense vs AsymRnR.

The ``gpu`` cases (excluded from the default run; ``pytest -m gpu tests/test_gpu.py -s`` on a CUDA machine)
build each transformer at full size (every block, every head), run two denoising steps at the real 480p
token grid with batch 2 (CFG) dense and with a uniform (0.5, 0.5) schedule, check the outputs are finite and
every self-attention call has the scheduled lengths, and print step times (CUDA events) and peak memory.
The ``tiny`` cases run the very same code on CPU with the tiny variants, so it is tested everywhere.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch

import asymrnr
from asymrnr.flops import schedule_flops
from asymrnr.testing.fullsize import (
    FULL_SIZE,
    build_transformer,
    call,
    full_size_model,
    generation_times,
    make_inputs,
    peak_memory,
    reset_peak_memory,
    schedule_for,
    timesteps,
)
from asymrnr.testing.recorder import record_attention

NO_CUDA = not torch.cuda.is_available()
STEPS = 2
BATCH = 2  # CFG: conditional and unconditional in one call
RATE = 0.5

CASES = [
    *(pytest.param(name, "cuda", id=f"{name}-full-cuda",
                   marks=[pytest.mark.gpu, pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")])
      for name in FULL_SIZE),
    *(pytest.param(name, "cpu", id=f"{name}-tiny-cpu") for name in FULL_SIZE),
]


@pytest.mark.parametrize("name, device", CASES)
def test_transformer_dense_vs_asymrnr(name, device):
    full = device == "cuda"
    if not full:
        torch.set_num_threads(1)
    spec = full_size_model(name, tiny=not full)
    dtype = torch.bfloat16 if full else torch.float32
    start = time.perf_counter()
    model = build_transformer(spec, device, dtype)
    if full:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    assert build_s < 120, f"building {name} took {build_s:.0f} s"
    if full:  # really the full-size model: every block and head
        assert model.config.num_layers == spec.num_layers >= 40
        assert sum(p.numel() for p in model.parameters()) > 5e9
    inputs = make_inputs(spec, model, batch=BATCH)
    steps = timesteps(STEPS)

    call(model, inputs, steps[0])  # warm-up: kernels, allocator
    reset_peak_memory(device)
    dense_times, dense_out = generation_times(model, inputs, steps)
    dense_peak = peak_memory(device)

    schedule = schedule_for(spec, model, STEPS, q=RATE, kv=RATE, cache_steps=4)

    def scheduled(fn):
        runtime = asymrnr.apply(model, schedule)  # a fresh runtime: the generation starts with its matching
        try:
            return fn(), runtime
        finally:
            asymrnr.remove(model)

    with record_attention(model, probe_text=False) as rec:  # also the AsymRnR warm-up
        scheduled(lambda: call(model, inputs, steps[0]))
    reset_peak_memory(device)
    (fast_times, fast_out), runtime = scheduled(lambda: generation_times(model, inputs, steps))
    fast_peak = peak_memory(device)
    # the timed generation computed its matchings (at step 0, cache window of 4) for q and kv of every block
    assert {step for step, _, _ in runtime.match_log} == {0}
    assert len({(block, feature) for _, block, feature in runtime.match_log}) == 2 * spec.num_layers

    assert torch.isfinite(dense_out).all() and torch.isfinite(fast_out).all()
    assert dense_out.shape == fast_out.shape == inputs["hidden_states"].shape
    assert not torch.equal(dense_out, fast_out)  # the reduction really ran
    n = spec.video_tokens
    text = spec.text_len if spec.joint_text else 0
    self_attn = [c for c in rec.calls if c.site.endswith("attn1")]
    assert len(self_attn) == spec.num_layers
    assert {(c.batch, c.q_len, c.k_len) for c in self_attn} == {(BATCH, text + n - int(RATE * n), text + n - int(RATE * n))}

    dense_step, fast_step = sum(dense_times) / STEPS, sum(fast_times) / STEPS
    predicted = schedule_flops(schedule, batch=BATCH).predicted_speedup
    mib = 2 ** 20
    peaks = (f"peak {dense_peak / mib:.0f} MiB dense, {fast_peak / mib:.0f} MiB AsymRnR"
             if dense_peak is not None else "peak memory: CUDA only")
    print(f"\n{spec.description} [{device}, {dtype}, batch {BATCH}, built in {build_s:.1f} s]: dense "
          f"{dense_step:.3f} s/step, AsymRnR (q=kv={RATE}) {fast_step:.3f} s/step, speedup "
          f"{dense_step / fast_step:.2f}x (FLOPs-predicted {predicted:.2f}x); {peaks}")


def test_gpu_all_runs_end_to_end_on_cpu_tiny(tmp_path, monkeypatch):
    """benchmarks/gpu_all.py --device cpu --tiny: every part runs and the markdown table is written; a part
    whose time guard is spent stops after one round and says so."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_all.py"
    spec = importlib.util.spec_from_file_location("gpu_all", path)
    gpu_all = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_all", gpu_all)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_all)
    out = tmp_path / "results" / "gpu.md"
    written = gpu_all.main(["--device", "cpu", "--tiny", "--threads", "1", "--steps", "2", "--rounds", "2",
                            "--budget-wan2.1-t2v-14b", "0", "--out", str(out)])
    assert written == out and out.is_file()
    text = out.read_text()
    assert "| tiny |" in text  # bench_runtime's model table
    assert "| 0.5 | 0.5 | 4 |" in text  # and its attention table
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for name in FULL_SIZE:
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert cells[5].startswith("**") and float(cells[6].rstrip("x")) > 1.0  # measured; the FLOPs prediction
    assert "| 2 |  |" in rows["cogvideox-5b"]  # both rounds ran
    assert "1 of 2 rounds (time guard)" in rows["wan2.1-t2v-14b"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["gpu.md"]  # nothing else written there


def test_bf16_features_are_matched_in_float32():
    """A GPU runs the model, and so the matching features, in bf16: the best destinations must be those of
    the same features compared in float32, even with the large shared offset hidden states have (in a bf16
    matmul about half of them differ)."""
    from asymrnr.matching import best_matches

    torch.manual_seed(0)
    c, ns, nd = 512, 400, 60
    offset = 10.0 * torch.randn(1, 1, c)
    dst = (offset + torch.randn(1, nd, c)).bfloat16()
    src = (offset + torch.randn(1, ns, c)).bfloat16()
    sim16, dst16 = best_matches(src, dst)
    sim32, dst32 = best_matches(src.float(), dst.float())
    assert torch.equal(dst16, dst32)
    assert torch.equal(sim16, sim32) and sim16.dtype == torch.float32


def test_tf32_switch_is_restored():
    """The matching's TF32 switch for CUDA float32 matmuls is scoped: the user's setting (legacy or new torch
    API) is back after it, and reading it by the legacy API still works (torch refuses mixed-API states)."""
    from asymrnr.matching import _tf32_matmul

    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")

    def flag():
        return matmul.fp32_precision if new_api else matmul.allow_tf32

    for user in (None, True, False):
        if user is not None:
            matmul.allow_tf32 = user
        try:
            before = flag()
            with _tf32_matmul():
                assert flag() in ("tf32", True)
            assert flag() == before
            assert matmul.allow_tf32 == bool(user)  # the legacy read does not raise
        finally:
            matmul.allow_tf32 = False
