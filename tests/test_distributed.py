"""asymrnr on several processes: the runtime under diffusers' context parallelism (2 gloo ranks on the CPU),
calibration and profile spread over ranks (rank 0 writes; a failed rank loses nothing; --resume completes),
and ``asymrnr merge``.

Two test-only shims make diffusers 0.42's context parallelism run on a CPU-only build (never in the library):
``enable_parallelism`` computes ``rank % torch.accelerator.device_count()`` (0 on CPU), and ring attention
needs the native backend to return the log-sum-exp, which ``aten._scaled_dot_product_flash_attention_for_cpu``
gives on the CPU. Multi-process tests spawn 2 processes (torch.multiprocessing); each imports torch and
diffusers, about 30 s on this machine: one Ulysses test runs by default, the rest are marked slow.
"""

from __future__ import annotations

import os
import socket
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr import Schedule, distributed
from asymrnr.cli import calibrate_command, main, read_prompts
from asymrnr.distributed import RankContext, RankFailed, gather_rounds, restrict, shard_bounds
from asymrnr.errors import AsymRnRError, StatsFormatError
from asymrnr.matching import make_partition
from asymrnr.profiler import load_stats
from asymrnr.runtime import runtimes
from test_stats_format import make_run, write_file

GRID = (4, 6, 6)  # tiny Wan token grid of the CP tests: 144 tokens, 72 (two frames) per rank of 2
TINY = ["--model", "tiny-cogvideox", "--steps", "4"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ test-only shims


def cpu_shims() -> None:
    """diffusers 0.42's context parallelism on a CPU-only torch (tests only; see the module docstring)."""
    torch.accelerator.device_count = lambda: 1  # enable_parallelism: rank % device_count()
    from diffusers.models import attention_dispatch as ad

    def native_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                          enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
        if return_lse:  # ring attention merges the ranks' partial outputs by their log-sum-exp
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[:2]
            return out.permute(0, 2, 1, 3), lse.permute(0, 2, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return out.permute(0, 2, 1, 3)

    ad._native_attention_forward_op = native_forward_op


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, world: int = 2) -> None:
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


def join_group(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- context parallelism, 2 ranks


def tiny_call(family: str = "wan", seed: int = 0):
    """A tiny Wan (or LTX-Video) transformer and ``run()``: one call at the token grid GRID, a generation each."""
    g = torch.Generator().manual_seed(seed)
    if family == "wan":
        from asymrnr.testing.tiny_wan import build_tiny_wan_transformer

        model = build_tiny_wan_transformer(seed)
        inputs = dict(hidden_states=torch.randn(1, 4, GRID[0], 2 * GRID[1], 2 * GRID[2], generator=g),
                      encoder_hidden_states=torch.randn(1, 8, 32, generator=g))
    else:  # packed tokens; no text mask: diffusers' own LTX CP cross-attention fails on CPU with one
        from asymrnr.testing.tiny_ltx import LATENT_CHANNELS, TEXT_DIM, build_tiny_ltx_transformer

        model = build_tiny_ltx_transformer(seed)
        inputs = dict(hidden_states=torch.randn(1, GRID[0] * GRID[1] * GRID[2], LATENT_CHANNELS, generator=g),
                      encoder_hidden_states=torch.randn(1, 8, TEXT_DIM, generator=g), encoder_attention_mask=None,
                      num_frames=GRID[0], height=GRID[1], width=GRID[2])
    t = torch.tensor([500.0])

    def run():
        for rt in runtimes(model).values():
            rt.end_generation()  # every call is its own generation: no matching reused across calls
        with torch.no_grad():  # clone: diffusers' final gather may hand back a collective still in flight
            return model(**inputs, timestep=t, return_dict=False)[0].clone()

    return model, run


def tiny_wan_call(seed: int = 0):
    return tiny_call("wan", seed)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _cp_worker(rank, world, port, mode, order, rates, out_file, family):
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    from asymrnr.distributed import simulate_context_parallel
    from asymrnr.testing.recorder import record_attention

    join_group(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cpu_shims()
        model, run = tiny_call(family)
        schedule = Schedule.uniform(model, 1, q=rates[0], kv=rates[1], latent_grid=GRID)
        zero = Schedule.uniform(model, 1, latent_grid=GRID)
        dense = run()
        asymrnr.apply(model, schedule)
        single = run()
        with simulate_context_parallel(model, world):
            simulated = run()
        config = (ContextParallelConfig(ulysses_degree=world) if mode == "ulysses"
                  else ContextParallelConfig(ring_degree=world))
        if order == "after":  # enable_parallelism on a transformer asymrnr is applied to
            model.enable_parallelism(config=config)
        else:  # apply to a transformer that is already parallelised
            asymrnr.remove(model)
            model.enable_parallelism(config=config)
            asymrnr.apply(model, schedule)
        with record_attention(model, probe_text=False) as rec:
            cp = run()
        shard = runtimes(model)["transformer"].call.shard
        lengths = sorted({(c.q_len, c.k_len) for c in rec.calls if c.site.endswith("attn1")})
        asymrnr.apply(model, zero)
        cp_zero = run()
        rt = runtimes(model)["transformer"]
        rt.observers.append(lambda *a: None)  # what asymrnr.profile installs
        try:
            run()
            refusal = None
        except AsymRnRError as err:
            refusal = str(err)
        rt.observers.clear()
        asymrnr.remove(model)
        cp_dense = run()
        if rank == 0:
            torch.save(dict(dense=dense, single=single, simulated=simulated, cp=cp, cp_zero=cp_zero, cp_dense=cp_dense,
                            shard=(shard.rank, shard.world, shard.bounds), lengths=lengths, refusal=refusal), out_file)
    finally:
        dist.destroy_process_group()


def check_cp(tmp_path, mode, order, rates=(0.5, 0.5), family="wan"):
    out_file = tmp_path / "cp.pt"
    spawn(_cp_worker, mode, order, rates, str(out_file), family)
    r = torch.load(out_file, weights_only=False)  # written by the test's own worker
    n_local = GRID[0] * GRID[1] * GRID[2] // 2
    assert r["shard"] == (0, 2, ((0, n_local), (n_local, n_local)))
    # each rank attends its reduced shard: the same counts on both ranks (72 - 36 queries, 72 - 36 keys)
    assert r["lengths"] == [(n_local - int(rates[0] * 2 * n_local) // 2, n_local - int(rates[1] * 2 * n_local) // 2)]
    # the sharded reduction is the simulated one, up to the ring's merge order
    torch.testing.assert_close(r["cp"], r["simulated"], rtol=0, atol=1e-5)
    # quality: within 1.25x of single-process AsymRnR's distance to dense
    d_single, d_cp = relative(r["single"], r["dense"]), relative(r["cp"], r["dense"])
    assert 0 < d_cp <= 1.25 * d_single, (d_cp, d_single)
    # zero rates: exactly the parallel dense model
    assert torch.equal(r["cp_zero"], r["cp_dense"])
    torch.testing.assert_close(r["cp_dense"], r["dense"], rtol=0, atol=1e-5)
    assert r["refusal"] is not None and "context parallelism" in r["refusal"] and "torchrun" in r["refusal"]


def test_ulysses_two_ranks_apply_then_parallelise(tmp_path):
    check_cp(tmp_path, "ulysses", "after")


@pytest.mark.slow
def test_ring_two_ranks_parallelise_then_apply(tmp_path):
    check_cp(tmp_path, "ring", "before", rates=(0.6, 0.7))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_ltx_two_ranks(tmp_path, mode):
    check_cp(tmp_path, mode, "after", rates=(0.5, 0.4), family="ltx")


# ------------------------------------------------------------------------------ one process, no collectives


def test_shard_bounds_follow_diffusers():
    assert shard_bounds(144, 2) == ((0, 72), (72, 72))
    assert shard_bounds(10, 4, uneven=True) == ((0, 3), (3, 3), (6, 2), (8, 2))  # tensor_split
    with pytest.raises(AsymRnRError, match="not a multiple of 4"):
        shard_bounds(10, 4)


def test_restrict_keeps_global_roles_with_local_indices():
    part = make_partition((5, 8, 10), (2, 2, 2), seed=3)  # 400 tokens; shards cut through frame 2
    shard = distributed.Shard(1, 2, shard_bounds(400, 2))
    local = restrict(part, shard)
    assert local.num_tokens == 200 and local.start == 200
    assert torch.equal(local.dst_idx + 200, part.dst_idx[part.dst_idx >= 200])
    assert torch.equal(local.src_idx + 200, part.src_idx[part.src_idx >= 200])
    assert torch.equal(local.random_scores, part.random_scores[part.src_idx >= 200])
    assert sum(local.dst_counts) == part.num_dst and sum(local.src_counts) == part.num_src
    assert local.dst_counts == restrict(part, shard, 0).dst_counts  # every rank knows every count
    assert distributed.local_count(101, local, 2, across=True) == 50
    assert distributed.local_count(400, local, 2, across=True) == min(local.src_counts)  # clamped, and logged
    empty = distributed.ShardPartition(part.grid, part.stride, part.dst_idx[:0], part.src_idx, part.random_scores,
                                       length=200, src_counts=(190, 200), dst_counts=(10, 0))
    assert distributed.local_count(50, empty, 2, across=False) == 0  # a shard without destinations
    assert distributed.local_count(50, empty, 2, across=True) == 25  # ... matches those of the other rank


def test_simulated_sharding_with_one_rank_is_single_process_asymrnr():
    model, run = tiny_wan_call(seed=1)
    asymrnr.apply(model, Schedule.uniform(model, 1, q=0.5, kv=0.4, latent_grid=GRID))
    try:
        single = run()
        with distributed.simulate_context_parallel(model, 1):
            assert torch.equal(run(), single)
        with distributed.simulate_context_parallel(model, 2):
            two = run()
        with distributed.simulate_context_parallel(model, 2, destinations="local"):
            local = run()
        assert torch.equal(run(), single)  # the switch leaves nothing behind
    finally:
        asymrnr.remove(model)
    assert not torch.equal(two, single) and not torch.equal(local, two)


def test_families_without_a_cp_plan_refuse_a_parallelised_transformer(tiny_transformer_factory):
    model = tiny_transformer_factory("5b")
    schedule = Schedule.uniform(model, 2, q=0.3, latent_grid=(3, 5, 6))
    model._parallel_config = types.SimpleNamespace(context_parallel_config=object())  # as enable_parallelism sets
    try:
        with pytest.raises(AsymRnRError, match="context-parallel plan"):
            asymrnr.apply(model, schedule)
        assert not runtimes(model)
    finally:
        model._parallel_config = None
    # parallelised after apply: refused at the next call, before any attention runs
    from helpers import call, tiny_inputs

    asymrnr.apply(model, schedule)
    try:
        model._parallel_config = types.SimpleNamespace(context_parallel_config=object())
        with pytest.raises(AsymRnRError, match="cogvideox attention would see only its own rank's tokens"):
            call(model, *tiny_inputs("5b"), 500)
    finally:
        model._parallel_config = None
        asymrnr.remove(model)


def test_gather_rounds_on_one_process_reports_what_is_missing():
    got = []
    ctx = RankContext()
    assert gather_rounds(ctx, [0, 1, 2], lambda i: i * 10, lambda i, v: got.append((i, v))) == [0, 1, 2]
    assert got == [(0, 0), (1, 10), (2, 20)]

    def fail_on_one(i):
        if i == 1:
            raise RuntimeError("out of memory")
        return i

    got.clear()
    with pytest.raises(RankFailed) as info:
        gather_rounds(ctx, [0, 1, 2], fail_on_one, lambda i, v: got.append(i))
    assert got == [0] and info.value.done == [0] and info.value.missing == [1, 2]
    assert "rank 0 failed on prompt 1: RuntimeError: out of memory" in str(info.value)


def test_rank_device():
    four = RankContext(rank=3, world=4, local_rank=1)
    assert distributed.rank_device("cpu", four) == "cpu"
    with pytest.raises(AsymRnRError, match="pass --device cuda"):
        distributed.rank_device("cuda:1", four)
    assert distributed.rank_device("cpu", RankContext()) == "cpu"


# ----------------------------------------------------------------------------------------------- merge


def stats_file(path, prompts_seeds, **kw):
    rng = np.random.default_rng(len(prompts_seeds) + sum(s for _, s in prompts_seeds))
    return write_file(path, [make_run(rng, prompt=p, seed=s) for p, s in prompts_seeds], **kw)


def test_merge_keeps_every_run_once_in_input_order(tmp_path):
    a = stats_file(tmp_path / "a.h5", [("a cat", 0), ("a dog", 1)])
    b = stats_file(tmp_path / "b.h5", [("a dog", 1), ("a fox", 2), ("a cat", 5)])
    res = CliRunner().invoke(main, ["merge", str(a), str(b), "-o", str(tmp_path / "m.h5")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "left out 1 run(s)" in res.output and "merged 4 run(s)" in res.output
    merged, sa, sb = load_stats(tmp_path / "m.h5"), load_stats(a), load_stats(b)
    assert list(zip(merged.prompts, merged.seeds.tolist())) == [("a cat", 0), ("a dog", 1), ("a fox", 2), ("a cat", 5)]
    np.testing.assert_array_equal(merged.norm_hist[:2], sa.norm_hist)
    np.testing.assert_array_equal(merged.sim_mean["euclidean"][2:], sb.sim_mean["euclidean"][1:])
    assert merged.generation == sa.generation and merged.model == sa.model and merged.matching == sa.matching
    # the output is not overwritten without asking, and is never one of the inputs
    res = CliRunner().invoke(main, ["merge", str(a), str(b), "-o", str(tmp_path / "m.h5")])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = CliRunner().invoke(main, ["merge", str(a), str(b), "-o", str(a), "--overwrite"])
    assert res.exit_code != 0 and "input" in res.output


@pytest.mark.parametrize("override, key", [
    (dict(generation={"height": 96, "width": 128, "num_frames": 13, "num_steps": 5, "guidance_scale": 7.5,
                      "scheduler_class": "CogVideoXDDIMScheduler"}), "generation.guidance_scale"),
    (dict(matching={"stride": (1, 2, 2), "seed": 0, "granularity": "joint"}), "matching.stride"),
    (dict(branches=("cond",)), "branches"),
])
def test_merge_refuses_files_that_differ_naming_the_key(tmp_path, override, key):
    from asymrnr.formats.stats.merge import merge_stats

    a = stats_file(tmp_path / "a.h5", [("a cat", 0)])
    rng = np.random.default_rng(0)
    branches = override.get("branches", ("cond", "uncond"))
    b = write_file(tmp_path / "b.h5", [make_run(rng, branches=branches, prompt="a dog", seed=1)], **override)
    with pytest.raises(StatsFormatError, match=key.replace(".", r"\.")) as info:
        merge_stats([a, b], tmp_path / "m.h5")
    assert "a.h5" in str(info.value) and "b.h5" in str(info.value)
    assert not (tmp_path / "m.h5").exists()
    res = CliRunner().invoke(main, ["merge", str(a), str(b), "-o", str(tmp_path / "m.h5")])
    assert res.exit_code != 0 and key in res.output and "Traceback" not in res.output


def test_merge_refuses_other_models(tmp_path):
    from test_stats_format import MODEL

    from asymrnr.formats.stats.merge import merge_stats

    a = stats_file(tmp_path / "a.h5", [("a cat", 0)])
    b = stats_file(tmp_path / "b.h5", [("a dog", 1)], model={**MODEL, "num_heads": 4})
    with pytest.raises(StatsFormatError, match=r"model\.num_heads differs"):
        merge_stats([a, b], tmp_path / "m.h5")


# ----------------------------------------------------------------------- an interrupted calibration, resumed


def test_an_interrupted_calibration_keeps_its_runs_and_resume_completes_them(tmp_path, monkeypatch):
    import asymrnr.profiler.sharded as sharded

    out = tmp_path / "out"
    real = sharded.profile_one
    calls = []

    def interrupted(pipe, prompt, seed, settings, folder):
        calls.append(seed)
        if seed == 1:
            raise KeyboardInterrupt
        return real(pipe, prompt, seed, settings, folder)

    monkeypatch.setattr(sharded, "profile_one", interrupted)
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "3", "--out", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, (KeyboardInterrupt, SystemExit))
    assert "1 run(s) profiled now are kept" in res.output and "prompt 1 (seed 1)" in res.output
    assert "--resume" in res.output and calls == [0, 1]
    partial = load_stats(out / "stats.partial.h5")
    assert partial.prompts == read_prompts(None, 1) and not (out / "stats.h5").exists()

    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "3", "--out", str(out)])
    assert res.exit_code != 0 and "stats.partial.h5" in res.output and "--resume" in res.output  # not discarded

    monkeypatch.setattr(sharded, "profile_one", real)
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "3", "--resume", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "1 of 3 run(s) already in" in res.output and "2 to profile" in res.output
    stats = load_stats(out / "stats.h5")
    assert stats.prompts == read_prompts(None, 3) and stats.seeds.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(stats.sim_mean["euclidean"][:1], partial.sim_mean["euclidean"])
    assert not (out / "stats.partial.h5").exists() and (out / "schedule.json").exists()


# ------------------------------------------------------------------------------ calibration on 2 ranks


def _calibrate_worker(rank, world, port, out, prompts, fail_on):
    """One rank of ``asymrnr calibrate`` as torchrun starts it (RANK, WORLD_SIZE, MASTER_ADDR in the env)."""
    import asymrnr.profiler.sharded as sharded
    from asymrnr.cli import run_calibrate

    join_group(rank, world, port)
    if fail_on is not None and rank == fail_on[0]:
        real = sharded.profile_one

        def failing(pipe, prompt, seed, settings, folder):
            if seed == fail_on[1]:
                raise RuntimeError("CUDA out of memory (injected)")
            return real(pipe, prompt, seed, settings, folder)

        sharded.profile_one = failing
    args = dict(model_name="tiny-wan", model_path=None, prompts_file=None, num_prompts=prompts, seed=0, steps=3,
                height=None, width=None, frames=None, guidance=None, dtype=None, device="cpu", cache_steps=2,
                budget_preset="base", target_speedup=None, out_dir=str(out), verbose=False)
    try:
        run_calibrate.__wrapped__(**args)
    except Exception as err:
        Path(f"{out}.rank{rank}.error").write_text(str(err))


def reference_stats(tmp_path, prompts: int):
    """The statistics of one process profiling every prompt in one ``asymrnr.profile`` block."""
    from asymrnr.models.presets import get_preset, load_pipeline

    preset = get_preset("tiny-wan")
    settings = {**preset.call_kwargs(), "num_inference_steps": 3}
    pipe = load_pipeline("tiny-wan", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path / "reference.h5"
    with asymrnr.profile(pipe, path, mode="w"):
        for i, prompt in enumerate(read_prompts(None, prompts, default=preset.prompts_file)):
            pipe(prompt, generator=torch.Generator().manual_seed(i), output_type="latent", **settings)
    return load_stats(path)


def assert_same_stats(a, b):
    assert a.prompts == b.prompts and a.seeds.tolist() == b.seeds.tolist()
    assert a.model == b.model and a.generation == b.generation and a.matching == b.matching
    for name in ("timesteps", "norm_quantiles", "norm_hist", "stability_same_dst", "stability_corr"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("sim_mean", "sim_quantiles", "sim_rate_curve"):
        for metric in getattr(a, name):
            np.testing.assert_array_equal(getattr(a, name)[metric], getattr(b, name)[metric], err_msg=name)


@pytest.mark.slow
def test_calibration_on_two_ranks_equals_one_process(tmp_path):
    out = tmp_path / "out"
    spawn(_calibrate_worker, str(out), 3, None)
    assert not list(tmp_path.glob("*.error"))
    stats = load_stats(out / "stats.h5")
    assert_same_stats(stats, reference_stats(tmp_path, 3))
    from asymrnr.planner import plan_schedule

    planned = plan_schedule(load_stats(tmp_path / "reference.h5"), preset="base", cache_steps=2).schedule
    schedule = asymrnr.load_schedule(out / "schedule.json")
    assert schedule.rates == planned.rates and schedule.matching == planned.matching
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.html", "schedule.json", f"schedule-{schedule.tag}.json", "stats.h5"])


@pytest.mark.slow
def test_a_failed_rank_loses_no_completed_run_and_resume_completes(tmp_path):
    out = tmp_path / "out"
    spawn(_calibrate_worker, str(out), 4, (1, 3))  # rank 1 fails on prompt 3 (its second)
    message = (tmp_path / "out.rank0.error").read_text()
    assert "rank 1 failed on prompt 3" in message and "CUDA out of memory" in message
    assert "prompt 3 (seed 3)" in message and "--resume" in message
    assert "rank 1" in (tmp_path / "out.rank1.error").read_text()
    partial = load_stats(out / "stats.partial.h5")
    assert partial.seeds.tolist() == [0, 1, 2] and not (out / "stats.h5").exists()

    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-wan", "--steps", "3", "--num-prompts", "4",
                                                 "--cache-steps", "2", "--device", "cpu", "--resume", "--out",
                                                 str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "3 of 4 run(s) already in" in res.output and "1 to profile" in res.output
    assert_same_stats(load_stats(out / "stats.h5"), reference_stats(tmp_path, 4))
    assert not (out / "stats.partial.h5").exists()


def test_an_interrupted_profile_keeps_its_runs_and_resume_completes_them(tmp_path, monkeypatch):
    import asymrnr.profiler.sharded as sharded

    target = tmp_path / "stats.h5"
    real = sharded.profile_one

    def failing(pipe, prompt, seed, settings, folder):
        if seed == 1:
            raise RuntimeError("disk on fire")
        return real(pipe, prompt, seed, settings, folder)

    monkeypatch.setattr(sharded, "profile_one", failing)
    args = ["profile", *TINY, "--num-prompts", "2", "-o", str(target)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "rank 0 failed on prompt 1: RuntimeError: disk on fire" in res.output
    assert "prompt 1 (seed 1)" in res.output and "Traceback" not in res.output
    assert not target.exists() and load_stats(tmp_path / "stats.partial.h5").seeds.tolist() == [0]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "--resume" in res.output
    monkeypatch.setattr(sharded, "profile_one", real)
    res = CliRunner().invoke(main, [*args, "--resume"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert load_stats(target).seeds.tolist() == [0, 1] and not (tmp_path / "stats.partial.h5").exists()
