"""``asymrnr.profile``: record what a schedule would act on, during real generations.

Inside ``with asymrnr.profile(pipe, "stats.h5"):`` every generation of ``pipe`` is observed at every
attention block and step: the attention input H and Q, K (after norm and RoPE) and V of the video
tokens, for each CFG branch separately. For each (branch, block, feature) the profiler matches tokens with
the runtime's own partition (same stride and seeded destinations) and reduces, on the device, the
similarity of every source to its best destination (Euclidean and cosine), the token norms and the
step-to-step stability of the matching into one small vector. Once per step those vectors go to the host;
once per completed generation they are appended to the HDF5 file and flushed
(:mod:`asymrnr.profiler.stats_format` owns the file). Leaving the block removes every hook.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arch import describe_transformer, temporal_patch_size
from ..matching import best_matches_euclidean_and_cosine, matching_features
from ..runtime.apply import _module, _split, install, uninstall
from ..runtime.state import RuntimeContext
from . import stats_format as sf

logger = logging.getLogger(__name__)

_FEATURES = sf.STAT_FEATURES  # ("h", "q", "k", "v")
_PARTITION_KEY = {"h": "h", "q": "q", "k": "kv", "v": "kv"}  # the runtime partition each feature uses
_NQ = len(sf.QUANTILE_LEVELS)
_NR = len(sf.RATE_LEVELS)
_NB = len(sf.NORM_BIN_EDGES) - 1
# Layout of the per-(branch, block, feature) statistics vector.
_SIM_LEN = 1 + _NQ + _NR  # mean, quantiles, rate curve
_OFF_EU, _OFF_COS = 0, _SIM_LEN
_OFF_NQ = 2 * _SIM_LEN
_OFF_NH = _OFF_NQ + _NQ
_OFF_ST = _OFF_NH + _NB
_VEC_LEN = _OFF_ST + 2


class Profiler:
    """Collects statistics of every generation run by ``pipe`` while active. Use :func:`profile`.

    Args:
        pipe: a diffusers CogVideoX pipeline.
        path: the HDF5 file to write.
        mode: ``"a"`` appends runs to an existing compatible file, ``"w"`` overwrites it.
        stride, seed, granularity: the partition and matching layout; default to the applied schedule's
            (so the statistics describe what that schedule acts on), else (2, 2, 2), 0 and ``joint``.
    """

    def __init__(self, pipe: Any, path: str | Path, *, mode: str = "a", stride=None, seed=None, granularity=None):
        transformer, scheduler = _split(pipe)
        if scheduler is None:
            raise TypeError("asymrnr.profile needs a pipeline (it reads the sampler and prompts); pass the pipeline")
        self.pipe = pipe
        self.transformer = _module(transformer)
        self.path = Path(path)
        self.mode = mode
        self._stride = stride
        self._seed = seed
        self._granularity = granularity
        self._writer: sf.StatsWriter | None = None
        self._runtime = None
        self._post_handle = None
        self._patched: dict[str, Any] = {}
        self.completed_runs = 0
        self._reset_run()

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Profiler":
        self._runtime = install(self.pipe, owner="profiler")
        ctx = self._runtime.context
        ctx.observers.append(self._observe)
        self._post_handle = self.transformer.register_forward_hook(self._after_call)
        self._patch_pipeline()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._run_steps and not self._run_done:
                logger.warning("discarding an incomplete generation (%d steps recorded)", len(self._run_steps))
        finally:
            self._unpatch_pipeline()
            if self._post_handle is not None:
                self._post_handle.remove()
            if self._runtime is not None:
                if self._observe in self._runtime.context.observers:
                    self._runtime.context.observers.remove(self._observe)
                uninstall(self.pipe, owner="profiler")
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _patch_pipeline(self) -> None:
        """Wrap two instance methods to learn each generation's prompt and seed (restored on exit)."""
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
            self._prompt = prompt if isinstance(prompt, str) else (prompt[0] if prompt else "")
            return original(*args, **kwargs)

        return encode_prompt

    def _wrap_prepare_latents(self, original):
        def prepare_latents(*args, **kwargs):
            generator = kwargs.get("generator")
            if generator is None:
                generator = next((a for a in args if isinstance(a, (torch.Generator, list))), None)
            if isinstance(generator, list):
                generator = generator[0] if generator else None
            self._seed_of_run = int(generator.initial_seed()) if isinstance(generator, torch.Generator) else -1
            return original(*args, **kwargs)

        return prepare_latents

    # ------------------------------------------------------------------------------------ recording
    def _reset_run(self) -> None:
        self._run_steps: list[np.ndarray] = []  # per step: [Br, B, F, _VEC_LEN]
        self._run_timesteps: list[float] = []
        self._run_done = False
        self._step_buf: torch.Tensor | None = None
        self._prev: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block -> previous step's (dst, sim)
        self._prompt = getattr(self, "_prompt", "")
        self._seed_of_run = getattr(self, "_seed_of_run", -1)

    def _matching_layout(self, ctx: RuntimeContext) -> tuple[tuple[int, int, int], int, str]:
        sched = ctx.schedule
        stride = self._stride or (tuple(sched.matching.stride) if sched is not None else (2, 2, 2))
        seed = self._seed if self._seed is not None else (sched.matching.seed if sched is not None else 0)
        gran = self._granularity or (sched.matching.granularity if sched is not None else "joint")
        return tuple(stride), int(seed), gran

    def _branches(self, batch: int) -> list[tuple[str, int]]:
        """(branch name, sample index) pairs; CogVideoX puts the uncond half of a CFG batch first."""
        if self._cfg(batch):
            return [("cond", batch // 2), ("uncond", 0)]
        return [("cond", 0)]

    def _cfg(self, batch: int) -> bool:
        cfg = getattr(self.pipe, "do_classifier_free_guidance", None)
        if cfg is None:
            cfg = getattr(self.pipe, "_guidance_scale", 1.0) > 1.0
        return bool(cfg) and batch % 2 == 0

    def _observe(self, block: int, feats: dict[str, torch.Tensor], ctx: RuntimeContext) -> None:
        """Reduce one block's features to statistics, on the device, batched over features and branches.

        Every (feature, branch) pair has the same number of sources and destinations (they depend only on
        the grid and stride), so all pairs are matched by one batched matmul per metric and summarised by
        batched sorts and quantiles: a handful of kernels per block instead of dozens of small ones.
        """
        call = ctx.call
        if call is None:
            return
        if call.new_generation and block == 0:
            self._reset_run()
        batch = feats["h"].shape[0]
        branches = self._branches(batch)
        device = feats["h"].device
        nb, nf = len(branches), len(_FEATURES)
        if self._step_buf is None or self._step_buf.device != device or self._step_buf.shape[0] != nb:
            self._step_buf = torch.full((nb, ctx.num_blocks, nf, _VEC_LEN), float("nan"), device=device)
        stride, seed, gran = self._matching_layout(ctx)
        grid = call.grid
        n = math.prod(grid)
        edges, qlev = self._constants(device)
        samples = torch.tensor([sample for _, sample in branches], device=device)

        srcs, dsts, tokens = [], [], []  # one entry per feature: [Br * g, Ns, C], [Br * g, Nd, C], [Br, N, C']
        for name in _FEATURES:
            x = feats[name].index_select(0, samples).float()  # [Br, N, C] or [Br, heads, N, D]
            # The runtime's own partition (its cache too), unless the caller overrode stride or seed.
            part = ctx.partition(grid, block, _PARTITION_KEY[name], device, stride=stride, seed=seed)
            srcs.append(matching_features(x, part.src_idx, gran))
            dsts.append(matching_features(x, part.dst_idx, gran))
            tokens.append(x if x.dim() == 3 else x.transpose(1, 2).reshape(nb, n, -1))
        if len({t.shape[1:] for t in srcs}) == 1:  # joint granularity: every feature has the same width
            e_sim, e_dst, c_sim, _ = best_matches_euclidean_and_cosine(torch.cat(srcs), torch.cat(dsts))
        else:  # per-head matching: widths differ between H and Q/K/V
            parts = [best_matches_euclidean_and_cosine(a, b) for a, b in zip(srcs, dsts)]
            e_sim, e_dst, c_sim = (torch.cat([p[i] for p in parts]) for i in (0, 1, 2))
        # Rows are ordered (feature, branch[, head]); fold heads into the source axis: [F * Br, Ns * g].
        rows = nf * nb
        e_sim, e_dst, c_sim = (t.reshape(rows, -1) for t in (e_sim, e_dst, c_sim))

        vec = torch.empty((rows, _VEC_LEN), device=device)
        vec[:, _OFF_EU : _OFF_EU + _SIM_LEN] = _sim_stats(e_sim, n, qlev)
        vec[:, _OFF_COS : _OFF_COS + _SIM_LEN] = _sim_stats(c_sim, n, qlev)
        norms = torch.cat(tokens).norm(dim=-1)  # [F * Br, N]
        vec[:, _OFF_NQ : _OFF_NQ + _NQ] = torch.quantile(norms, qlev, dim=-1).transpose(0, 1)
        bins = torch.bucketize(norms.clamp(edges[0], edges[-1]), edges, right=True).clamp(1, _NB) - 1
        bins = bins + torch.arange(rows, device=device).unsqueeze(1) * _NB
        vec[:, _OFF_NH : _OFF_NH + _NB] = torch.bincount(bins.flatten(), minlength=rows * _NB).view(rows, _NB).float()
        prev = self._prev.get(block)
        if prev is not None and prev[0].shape == e_dst.shape:
            vec[:, _OFF_ST] = (prev[0] == e_dst).float().mean(-1)
            vec[:, _OFF_ST + 1] = _corr(prev[1], e_sim)
        else:
            vec[:, _OFF_ST : _OFF_ST + 2] = float("nan")
        self._prev[block] = (e_dst, e_sim)
        self._step_buf[:, block] = vec.view(nf, nb, _VEC_LEN).transpose(0, 1)

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Histogram edges and quantile levels on ``device``, built once."""
        cached = getattr(self, "_const", None)
        if cached is None or cached[0].device != device:
            edges = torch.tensor(np.asarray(sf.NORM_BIN_EDGES, dtype=np.float32), device=device)
            qlev = torch.tensor(np.asarray(sf.QUANTILE_LEVELS, dtype=np.float32), device=device)
            self._const = cached = (edges, qlev)
        return cached

    def _after_call(self, module: Any, args: tuple, output: Any) -> None:
        """Once per step: one host copy of the step's statistics; a finished generation goes to the file."""
        ctx = self._runtime.context
        if self._step_buf is None or ctx.call is None:
            return
        self._run_steps.append(self._step_buf.cpu().numpy().copy())
        self._run_timesteps.append(ctx.call.timestep)
        self._step_buf = None
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        num_steps = len(timesteps) if timesteps is not None else 0
        if num_steps and len(self._run_steps) == num_steps:
            self._write_run(ctx, module, args)
            self._run_done = True

    def _write_run(self, ctx: RuntimeContext, module: Any, args: tuple) -> None:
        steps = np.stack(self._run_steps, axis=1)  # [Br, S, B, F, V]
        branches = ("cond", "uncond") if steps.shape[0] == 2 else ("cond",)
        run = sf.RunStats(
            prompt=str(self._prompt or ""),
            seed=int(self._seed_of_run),
            timesteps=np.asarray(self._run_timesteps, dtype=np.float64),
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
        if self._writer is None:
            self._writer = self._open_writer(ctx, branches)
        self._writer.write_run(run)
        self.completed_runs += 1
        logger.info("profiled run %d (%d steps) into %s", self.completed_runs, steps.shape[1], self.path)

    def _open_writer(self, ctx: RuntimeContext, branches: tuple[str, ...]) -> sf.StatsWriter:
        pipe = self.pipe
        grid = ctx.call.grid
        stride, seed, gran = self._matching_layout(ctx)
        model = describe_transformer(self.transformer, latent_grid=grid, text_len=self._text_len())
        vae_s = int(getattr(pipe, "vae_scale_factor_spatial", 8))
        vae_t = int(getattr(pipe, "vae_scale_factor_temporal", 4))
        cfg = self.transformer.config
        latent_frames = grid[0] * temporal_patch_size(cfg)
        generation = {
            "height": grid[1] * int(cfg.patch_size) * vae_s,
            "width": grid[2] * int(cfg.patch_size) * vae_s,
            "num_frames": (latent_frames - 1) * vae_t + 1,
            "num_steps": len(self._run_steps),
            "guidance_scale": float(getattr(pipe, "_guidance_scale", 1.0) or 1.0),
            "scheduler_class": type(pipe.scheduler).__name__,
            "pipeline_class": type(pipe).__name__,
        }
        matching = {"stride": list(stride), "seed": seed, "granularity": gran}
        schedule = ctx.schedule
        return sf.StatsWriter(
            self.path,
            model=model,
            generation=generation,
            matching=matching,
            branches=branches,
            profiled_schedule=schedule.tag if schedule is not None else None,
            mode=self.mode,
        )

    def _text_len(self) -> int:
        return int(getattr(self.transformer.config, "max_text_seq_length", 226))


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
