"""``asymrnr.profile``: record what a schedule would act on, during real generations.

Inside ``with asymrnr.profile(pipe, "stats.h5"):`` every generation of ``pipe`` is observed at every
self-attention site of every transformer component and every step: the attention input H and Q, K
(after norm and RoPE) and V of the video tokens, for every sample of the batch and every CFG branch. For
each (sample, branch, block, feature) the profiler matches tokens with the runtime's own partition (same
stride and seeded destinations) and reduces, on the device, the similarity of every source to its best
destination (Euclidean and cosine), the token norms and the step-to-step stability of the matching into
one small vector. Once per transformer call those vectors go to the host; when the generation ends (the
pipeline resets diffusers' stateful hooks at the end of every call) each prompt of the batch is appended
to the HDF5 file as its own run (:mod:`asymrnr.profiler.stats_format` owns the file). Leaving the block
removes every hook.

The CFG branch comes from the pipeline's ``cache_context``: ``cond_uncond`` is one batched call (the
uncond half first), ``cond`` / ``uncond`` are separate calls. A pipeline of a separate-CFG family that
calls its transformer without any ``cache_context`` (a video-to-video pipeline of diffusers 0.42 does) makes
its calls of one step in the order cond, then uncond: they are recorded as such.

Steps the pipeline does not run (video to video with ``strength < 1``: the last ``int(N * strength)`` of
its ``N`` timesteps) are simply not recorded: a run holds the steps that were run, with their timesteps,
and a schedule planned from such statistics covers those steps (see :func:`asymrnr.runtime.context.check_sampler`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import vocab
from ..archs.base import sampler_config
from ..matching import best_matches_euclidean_and_cosine, matching_features
from ..runtime.apply import components, install, uninstall
from ..runtime.context import DEFAULT_BRANCH, Runtime
from . import stats_format as sf

logger = logging.getLogger(__name__)

_FEATURES = vocab.STAT_FEATURES  # ("h", "q", "k", "v")
_NQ = len(sf.QUANTILE_LEVELS)
_NR = len(sf.RATE_LEVELS)
_NB = len(sf.NORM_BIN_EDGES) - 1
# Layout of the per-(sample, block, feature) statistics vector.
_SIM_LEN = 1 + _NQ + _NR  # mean, quantiles, rate curve
_OFF_EU, _OFF_COS = 0, _SIM_LEN
_OFF_NQ = 2 * _SIM_LEN
_OFF_NH = _OFF_NQ + _NQ
_OFF_ST = _OFF_NH + _NB
_VEC_LEN = _OFF_ST + 2


class Profiler:
    """Collects statistics of every generation run by ``pipe`` while active. Use :func:`profile`.

    Args:
        pipe: a diffusers video pipeline of a supported family.
        path: the HDF5 file to write.
        mode: ``"a"`` appends runs to an existing compatible file, ``"w"`` overwrites it.
        stride, seed, granularity, partition: the partition and matching layout; default to the applied
            schedule's (so the statistics describe what that schedule acts on), else the paper's defaults.
    """

    def __init__(self, pipe: Any, path: str | Path, *, mode: str = "a", stride=None, seed=None, granularity=None,
                 partition=None):
        pipe_, _ = components(pipe)
        if pipe_ is None:
            raise TypeError("asymrnr.profile needs a pipeline (it reads the sampler and prompts); pass the pipeline")
        if mode not in ("a", "w"):
            raise ValueError(f"profile mode={mode!r} does not exist; use 'a' (append runs) or 'w' (overwrite)")
        if granularity is not None and granularity not in vocab.GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; use one of {', '.join(vocab.GRANULARITIES)}")
        if partition is not None and partition not in vocab.PARTITION_MODES:
            raise ValueError(f"unknown partition {partition!r}; use one of {', '.join(vocab.PARTITION_MODES)}")
        self.pipe = pipe
        self.path = Path(path)
        self.mode = mode
        self._stride = tuple(stride) if stride is not None else None
        self._seed = seed
        self._granularity = granularity
        self._partition = partition
        self._writer: sf.StatsWriter | None = None
        self._runtimes: list[Runtime] = []
        self._patched: dict[str, Any] = {}
        self.completed_runs = 0
        self._prompts: list[str] = []
        self._seeds: list[int] = []
        # guidance scale as the call asked for it (read when the prompts are encoded: pipelines with dynamic
        # CFG change pipe._guidance_scale step by step)
        self._guidance: float | None = None
        self._reset_generation()

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Profiler":
        self._runtimes = install(self.pipe, owner="profiler")
        for rt in self._runtimes:
            rt.observers.append(self._observe)
            rt.call_listeners.append(self._after_call)
            rt.end_listeners.append(self._end_generation)
        self._patch_pipeline()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._steps:
                logger.warning("discarding an incomplete generation (%d steps recorded)", len(self._steps))
        finally:
            self._unpatch_pipeline()
            for rt in self._runtimes:
                for listeners, fn in ((rt.observers, self._observe), (rt.call_listeners, self._after_call),
                                      (rt.end_listeners, self._end_generation)):
                    if fn in listeners:
                        listeners.remove(fn)
            if self._runtimes:
                uninstall(self.pipe, owner="profiler")
            self._runtimes = []
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _patch_pipeline(self) -> None:
        """Wrap two instance methods to learn each generation's prompts and seeds (restored on exit)."""
        pipe = self.pipe
        for name, wrapper in (("encode_prompt", self._wrap_encode_prompt), ("prepare_latents", self._wrap_prepare_latents)):
            original = getattr(pipe, name, None)
            if original is not None:
                self._patched[name] = pipe.__dict__.get(name)
                setattr(pipe, name, wrapper(original))

    def _unpatch_pipeline(self) -> None:
        for name, previous in self._patched.items():
            if previous is None:
                self.pipe.__dict__.pop(name, None)
            else:
                setattr(self.pipe, name, previous)
        self._patched.clear()

    def _wrap_encode_prompt(self, original):
        def encode_prompt(*args, **kwargs):
            prompt = kwargs.get("prompt", args[0] if args else "")
            per_prompt = int(kwargs.get("num_videos_per_prompt", 1) or 1)
            prompts = [prompt] if isinstance(prompt, str) or prompt is None else list(prompt)
            self._prompts = [str(p or "") for p in prompts for _ in range(per_prompt)]
            guidance = getattr(self.pipe, "_guidance_scale", None)
            self._guidance = float(guidance) if isinstance(guidance, (int, float)) else None
            return original(*args, **kwargs)

        return encode_prompt

    def _wrap_prepare_latents(self, original):
        def prepare_latents(*args, **kwargs):
            generator = kwargs.get("generator")
            if generator is None:
                generator = next((a for a in args if isinstance(a, (torch.Generator, list))), None)
            gens = generator if isinstance(generator, list) else [generator]
            self._seeds = [int(g.initial_seed()) if isinstance(g, torch.Generator) else -1 for g in gens]
            return original(*args, **kwargs)

        return prepare_latents

    # ------------------------------------------------------------------------------------ recording
    def _reset_generation(self) -> None:
        # gen_step -> {"timestep", "component", "branches": {branch: [P, blocks, F, V] array}}
        self._steps: dict[int, dict] = {}
        self._call_buf: torch.Tensor | None = None  # [batch, blocks, F, V] of the call in flight
        self._prev: dict[tuple, tuple] = {}  # (branch, block, group) -> (partitions, dst, sim) of the last step
        self._text_len: int | None = None
        self._grid: tuple[int, int, int] | None = None
        self._first_rt: Runtime | None = None
        self._call_key: tuple | None = None  # (runtime, generation, call) whose branch is _call_branch
        self._call_branch = DEFAULT_BRANCH
        self._bare_calls: dict[tuple[str, int], int] = {}  # (component, step) -> calls without a cache context

    def _branch(self, rt: Runtime) -> str:
        """The CFG branch of the call in flight. Calls outside any ``cache_context`` of a family whose CFG
        runs as separate calls are, within one step, cond then uncond (a video-to-video pipeline does so)."""
        key = (id(rt), rt.generation, rt.calls)
        if key != self._call_key:
            call = rt.call
            branch = call.branch
            if branch == DEFAULT_BRANCH and rt.adapter.cfg_mode == "separate" and self._cfg_on():
                seen = self._bare_calls.get((rt.component, call.gen_step), 0)
                self._bare_calls[(rt.component, call.gen_step)] = seen + 1
                if seen >= 2:
                    raise ValueError(
                        f"{type(self.pipe).__name__} called {rt.component} more than twice in one step outside any "
                        "cache_context; asymrnr.profile cannot tell which CFG branch each call is"
                    )
                branch = ("cond", "uncond")[seen]
            self._call_key, self._call_branch = key, branch
        return self._call_branch

    def _cfg_on(self) -> bool:
        cfg = getattr(self.pipe, "do_classifier_free_guidance", None)
        if cfg is None:
            cfg = (getattr(self.pipe, "_guidance_scale", 1.0) or 1.0) > 1.0
        return bool(cfg)

    def _layout(self, rt: Runtime) -> tuple[tuple[int, int, int], int, str, str]:
        m = rt.matching
        stride = self._stride or tuple(m.stride)
        seed = m.seed if self._seed is None else int(self._seed)
        gran = self._granularity or m.granularity
        # Without a schedule the statistics use one fixed partition per (block, feature): the similarity
        # distributions do not depend on the draw, and the step-to-step stability needs the same destinations.
        part = self._partition or (m.partition if rt.schedule is not None else "fixed")
        return tuple(stride), int(seed), gran, part

    def _observe(self, block: int, feats: dict[str, torch.Tensor], rt: Runtime) -> None:
        """Reduce one site's features to statistics for every sample, on the device, batched over features."""
        call = rt.call
        if call is None:
            return
        batch = feats["h"].shape[0]
        device = feats["h"].device
        nf = len(_FEATURES)
        if self._call_buf is None or self._call_buf.device != device or self._call_buf.shape[0] != batch \
                or self._call_buf.shape[1] != rt.num_blocks:
            self._call_buf = torch.full((batch, rt.num_blocks, nf, _VEC_LEN), float("nan"), device=device)
        stride, seed, gran, mode = self._layout(rt)
        grid = call.grid
        n = math.prod(grid)
        edges, qlev = self._constants(device)

        # Features whose matching inputs have the same shape (all four when matched jointly; Q, K, V per head)
        # are matched together: one batched matmul per metric and group.
        groups: dict[tuple, list] = {}
        tokens = []  # per feature [B, N, C'] for the norms
        for fi, name in enumerate(_FEATURES):
            x = feats[name].float()  # [B, N, C] or [B, heads, N, D]
            part = rt.partition(block, name, device, stride=stride, seed=seed, mode=mode)
            if part.num_dst == 0:
                raise ValueError(f"the token grid {grid} has no full stride window {stride}: profile with a smaller stride")
            src = matching_features(x, part.src_idx, gran)  # [B * g, Ns, C]
            dst = matching_features(x, part.dst_idx, gran)
            groups.setdefault(tuple(src.shape[1:]), []).append((fi, src, dst, part))
            tokens.append(x if x.dim() == 3 else x.transpose(1, 2).reshape(batch, n, -1))

        vec = torch.empty((nf, batch, _VEC_LEN), device=device)
        for shape, members in groups.items():
            e_sim, e_dst, c_sim, _ = best_matches_euclidean_and_cosine(torch.cat([m[1] for m in members]),
                                                                       torch.cat([m[2] for m in members]))
            # Rows are ordered (feature, sample[, head]); fold heads into the source axis: [k * B, Ns * g].
            rows = len(members) * batch
            e_sim, e_dst, c_sim = (t.reshape(rows, -1) for t in (e_sim, e_dst, c_sim))
            vg = torch.empty((rows, _VEC_LEN), device=device)
            vg[:, _OFF_EU : _OFF_EU + _SIM_LEN] = _sim_stats(e_sim, n, qlev)
            vg[:, _OFF_COS : _OFF_COS + _SIM_LEN] = _sim_stats(c_sim, n, qlev)
            # Stability: the matching against the previous step's, on the same destinations (NaN when the
            # partitions changed: at the first step, and where partitions are redrawn per cache window).
            key = (self._branch(rt), block, shape)
            parts = tuple(m[3] for m in members)
            prev = self._prev.get(key)
            if prev is not None and all(a is b for a, b in zip(prev[0], parts)) and prev[1].shape == e_dst.shape:
                vg[:, _OFF_ST] = (prev[1] == e_dst).float().mean(-1)
                vg[:, _OFF_ST + 1] = _corr(prev[2], e_sim)
            else:
                vg[:, _OFF_ST : _OFF_ST + 2] = float("nan")
            self._prev[key] = (parts, e_dst, e_sim)
            for j, member in enumerate(members):
                vec[member[0]] = vg[j * batch : (j + 1) * batch]

        rows = nf * batch
        vec = vec.view(rows, _VEC_LEN)
        norms = torch.cat(tokens).norm(dim=-1)  # [F * B, N]
        vec[:, _OFF_NQ : _OFF_NQ + _NQ] = torch.quantile(norms, qlev, dim=-1).transpose(0, 1)
        bins = torch.bucketize(norms.clamp(edges[0], edges[-1]), edges, right=True).clamp(1, _NB) - 1
        bins = bins + torch.arange(rows, device=device).unsqueeze(1) * _NB
        vec[:, _OFF_NH : _OFF_NH + _NB] = torch.bincount(bins.flatten(), minlength=rows * _NB).view(rows, _NB).float()
        self._call_buf[:, block] = vec.view(nf, batch, _VEC_LEN).transpose(0, 1)

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Histogram edges and quantile levels on ``device``, built once."""
        cached = getattr(self, "_const", None)
        if cached is None or cached[0].device != device:
            edges = torch.tensor(np.asarray(sf.NORM_BIN_EDGES, dtype=np.float32), device=device)
            qlev = torch.tensor(np.asarray(sf.QUANTILE_LEVELS, dtype=np.float32), device=device)
            self._const = cached = (edges, qlev)
        return cached

    def _branch_rows(self, rt: Runtime, batch: int) -> list[tuple[str, slice]]:
        """Which rows of this call's batch are which CFG branch (each slice holds one row per prompt)."""
        branch = self._branch(rt)
        if branch in ("cond", "uncond"):
            return [(branch, slice(0, batch))]
        cfg = getattr(self.pipe, "do_classifier_free_guidance", None)
        if cfg is None:
            cfg = getattr(self.pipe, "_guidance_scale", 1.0) > 1.0
        if (branch == "cond_uncond" or bool(cfg)) and batch % 2 == 0 and batch >= 2 and \
                (branch == "cond_uncond" or bool(cfg)):
            half = batch // 2  # batched CFG: the uncond half comes first
            return [("cond", slice(half, batch)), ("uncond", slice(0, half))]
        return [("cond", slice(0, batch))]

    def _after_call(self, rt: Runtime) -> None:
        """Once per transformer call: one host copy of the call's statistics."""
        call = rt.call
        if self._call_buf is None or call is None:
            return
        host = self._call_buf.cpu().numpy().copy()
        self._call_buf = None
        entry = self._steps.setdefault(call.gen_step, {"timestep": call.timestep, "component": rt.component,
                                                       "branches": {}})
        for branch, rows in self._branch_rows(rt, host.shape[0]):
            entry["branches"][branch] = host[rows]
        if self._first_rt is None:
            self._first_rt = rt
            self._text_len = call.text_len
            self._grid = call.grid

    def _end_generation(self, rt: Runtime) -> None:
        """The pipeline finished a generation: write one run per prompt of its batch."""
        if not self._steps:
            return
        steps = sorted(self._steps)
        try:
            if steps != list(range(len(steps))):
                logger.warning("discarding a generation whose steps %s are not consecutive from 0", steps)
                return
            branch_sets = {tuple(sorted(self._steps[k]["branches"])) for k in steps}
            if len(branch_sets) != 1:
                logger.warning("discarding a generation whose CFG branches change between steps: %s", branch_sets)
                return
            branches = ("cond", "uncond") if "uncond" in next(iter(branch_sets)) else ("cond",)
            # [Br, S, P, B, F, V] -> [P, Br, S, B, F, V]
            arr = np.stack([np.stack([self._steps[k]["branches"][b] for k in steps]) for b in branches])
            arr = arr.transpose(2, 0, 1, 3, 4, 5)
            timesteps = np.asarray([self._steps[k]["timestep"] for k in steps], dtype=np.float64)
            step_components = [self._steps[k]["component"] for k in steps]
            if self._writer is None:
                self._writer = self._open_writer(branches, timesteps, step_components)
            for i in range(arr.shape[0]):
                self._write_run(arr[i], timesteps, i)
        finally:
            self._reset_generation()

    def _write_run(self, steps: np.ndarray, timesteps: np.ndarray, sample: int) -> None:
        prompt = self._prompts[sample] if sample < len(self._prompts) else (self._prompts[0] if self._prompts else "")
        seed = self._seeds[sample] if sample < len(self._seeds) else (self._seeds[0] if self._seeds else -1)
        run = sf.RunStats(
            prompt=str(prompt),
            seed=int(seed),
            timesteps=timesteps,
            sim_mean={m: steps[..., off] for m, off in (("euclidean", _OFF_EU), ("cosine", _OFF_COS))},
            sim_quantiles={m: steps[..., off + 1 : off + 1 + _NQ] for m, off in (("euclidean", _OFF_EU), ("cosine", _OFF_COS))},
            sim_rate_curve={
                m: steps[..., off + 1 + _NQ : off + _SIM_LEN] for m, off in (("euclidean", _OFF_EU), ("cosine", _OFF_COS))
            },
            norm_quantiles=steps[..., _OFF_NQ : _OFF_NQ + _NQ],
            norm_hist=np.rint(steps[..., _OFF_NH : _OFF_NH + _NB]).astype(np.int64),
            stability_same_dst=steps[..., _OFF_ST],
            stability_corr=steps[..., _OFF_ST + 1],
        )
        self._writer.write_run(run)
        self.completed_runs += 1
        logger.info("profiled run %d (%d steps) into %s", self.completed_runs, len(timesteps), self.path)

    def _open_writer(self, branches: tuple[str, ...], timesteps: np.ndarray, step_components: list[str]) -> sf.StatsWriter:
        pipe = self.pipe
        rt = self._first_rt
        grid = self._grid
        stride, seed, gran, mode = self._layout(rt)
        model = rt.adapter.describe(rt.module, latent_grid=grid, text_len=self._text_len)
        names = tuple(dict.fromkeys(step_components))
        generation = {
            **rt.adapter.generation_size(pipe, rt.module, grid),
            "num_steps": len(timesteps),
            "guidance_scale": float(self._guidance if self._guidance is not None
                                    else getattr(pipe, "_guidance_scale", 1.0) or 1.0),
            "scheduler_class": type(pipe.scheduler).__name__,
            "pipeline_class": type(pipe).__name__,
            "transformers": list(names),
            "step_transformer": None if len(names) == 1 else [names.index(c) for c in step_components],
            "scheduler_config": sampler_config(pipe.scheduler),
        }
        matching = {"stride": list(stride), "seed": seed, "granularity": gran, "partition": mode}
        schedule = rt.schedule
        return sf.StatsWriter(
            self.path,
            model=model,
            generation=generation,
            matching=matching,
            branches=branches,
            profiled_schedule=schedule.tag if schedule is not None else None,
            mode=self.mode,
        )


def _sim_stats(sim: torch.Tensor, n_tokens: int, qlev: torch.Tensor) -> torch.Tensor:
    """``[K, 1 + Q + R]`` per row of ``sim [K, Ns]``: mean, quantiles, and the rate curve (the similarity of
    the n_r-th best match for each rate of ``RATE_LEVELS``; NaN where n_r is 0 or exceeds the sources)."""
    ns = sim.shape[-1]
    sorted_desc = torch.sort(sim, dim=-1, descending=True).values
    rate_idx = [int(r * n_tokens) - 1 for r in sf.RATE_LEVELS]
    valid = torch.tensor([0 <= i < ns for i in rate_idx], device=sim.device)
    cols = torch.tensor([i if 0 <= i < ns else 0 for i in rate_idx], device=sim.device)
    curve = torch.where(valid, sorted_desc.index_select(-1, cols), torch.full((), float("nan"), device=sim.device))
    quant = torch.quantile(sim, qlev, dim=-1).transpose(0, 1)
    return torch.cat([sim.mean(-1, keepdim=True), quant, curve], dim=-1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``[K, M]`` tensors, on the device (1 for identical constant rows)."""
    da = a - a.mean(-1, keepdim=True)
    db = b - b.mean(-1, keepdim=True)
    denom = (da.pow(2).sum(-1) * db.pow(2).sum(-1)).sqrt()
    same = (a - b).abs().amax(-1) == 0
    nan = torch.full_like(denom, float("nan"))
    return torch.where(denom > 0, (da * db).sum(-1) / denom.clamp_min(1e-30), torch.where(same, torch.ones_like(nan), nan))


def profile(pipe: Any, path: str | Path, *, mode: str = "a", **layout: Any) -> Profiler:
    """Record the statistics of every generation run inside the ``with`` block into ``path``.

    Example::

        with asymrnr.profile(pipe, "stats.h5") as profiler:
            for prompt in prompts:
                pipe(prompt, num_inference_steps=50)
    """
    return Profiler(pipe, path, mode=mode, **layout)
