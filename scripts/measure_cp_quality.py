"""What context parallelism costs AsymRnR in quality, measured in one process (docs/distributed.md).

Under context parallelism every rank reduces its own shard of the video tokens (the global partition restricted
to the shard, equal counts per rank). ``asymrnr.distributed.simulate_context_parallel`` reproduces that
reduction exactly in one process (tests/test_distributed.py checks it against two real gloo ranks), so the
cost can be measured on one CPU: the distance of the output from the dense output, for

* ``single``: single-process AsymRnR (global top-n over all tokens);
* ``cp-local``: context parallelism as the runtime runs it (sources match destinations of their own shard);
* ``cp-global``: sources match destinations of every shard (an all-gather of destinations, plus one of the
  destinations' outputs for Q's restoration): what matching across ranks would buy.

Usage::

    PYTHONPATH=src python scripts/measure_cp_quality.py wan     # tiny random Wan transformers, one call
    PYTHONPATH=src python scripts/measure_cp_quality.py micro   # the trained micro model, whole generations
"""

from __future__ import annotations

import statistics
import sys

import torch

import asymrnr
from asymrnr import Schedule
from asymrnr.distributed import simulate_context_parallel
from asymrnr.runtime import runtimes


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def fresh(pipe) -> None:
    for rt in runtimes(pipe).values():
        rt.end_generation()


def measure(run, pipe, schedule, worlds) -> dict:
    dense = run()
    asymrnr.apply(pipe, schedule)
    try:
        fresh(pipe)
        out = {"single": rel(run(), dense)}
        for world in worlds:
            for dest in ("local", "global"):
                with simulate_context_parallel(pipe, world, destinations=dest):
                    fresh(pipe)
                    out[f"w{world}-{dest}"] = rel(run(), dense)
    finally:
        asymrnr.remove(pipe)
    return out


def summarise(title: str, rows: list[dict]) -> None:
    keys = [k for k in rows[0] if k != "single"]
    print(f"\n{title}: {len(rows)} cases; distance to dense, mean (ratio to single-process: mean, worst)")
    print(f"  single      {statistics.mean(r['single'] for r in rows):.4f}")
    for k in keys:
        ratios = [r[k] / r["single"] for r in rows]
        print(f"  {k:<11} {statistics.mean(r[k] for r in rows):.4f}  ratio mean {statistics.mean(ratios):.3f} "
              f"worst {max(ratios):.3f}")


def wan() -> None:
    from asymrnr.testing.tiny_wan import build_tiny_wan_transformer

    for latent in ((4, 12, 12), (5, 16, 20)):  # grids (4, 6, 6): shards align with frames; (5, 8, 10): they do not
        rows = []
        for seed in range(6):
            model = build_tiny_wan_transformer(seed)
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(1, 4, *latent, generator=g)
            e = torch.randn(1, 8, 32, generator=g)
            t = torch.tensor([500.0])
            grid = (latent[0], latent[1] // 2, latent[2] // 2)

            def run():
                with torch.no_grad():
                    return model(hidden_states=x, encoder_hidden_states=e, timestep=t, return_dict=False)[0]

            for q, kv in ((0.5, 0.5), (0.6, 0.7), (0.3, 0.8)):
                rows.append(measure(run, model, Schedule.uniform(model, 1, q=q, kv=kv, latent_grid=grid), (2, 4)))
        summarise(f"tiny Wan (random weights), token grid {grid}", rows)


def micro(num_prompts: int = 4, steps_seen=(0, 5, 10, 15, 19)) -> None:
    """The trained micro model: the transformer's output on the inputs of real denoising steps (a whole
    generation drifts to another trajectory, which says nothing about one reduced call)."""
    from asymrnr.micro.evaluate import heldout_prompts, heldout_seeds
    from asymrnr.models.presets import get_preset, load_pipeline

    preset = get_preset("micro-cogvideox")
    pipe = load_pipeline("micro-cogvideox", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    settings = preset.call_kwargs()
    steps = settings["num_inference_steps"]
    model = pipe.transformer
    captured = []

    def grab(module, args, kwargs):
        captured.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for prompt, seed in zip(heldout_prompts(num_prompts), heldout_seeds(num_prompts)):
            start = len(captured)
            with torch.no_grad():
                pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **settings)
            keep = [captured[start + k] for k in steps_seen]
            del captured[start:]
            captured.extend(keep)
    finally:
        handle.remove()
    rows = []
    for q, kv in ((0.5, 0.5), (0.6, 0.7), (0.3, 0.8)):
        schedule = Schedule.uniform(model, 1, q=q, kv=kv, latent_grid=(4, 6, 6))
        for kwargs in captured:
            def run():
                with torch.no_grad():
                    return model(**{**kwargs, "timestep": kwargs["timestep"]})[0]

            rows.append(measure(run, model, schedule, (2, 4)))
    summarise(f"micro CogVideoX (trained), transformer output at steps {steps_seen} of {steps}", rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    which = sys.argv[1] if len(sys.argv) > 1 else "wan"
    {"wan": wan, "micro": micro}[which]()
