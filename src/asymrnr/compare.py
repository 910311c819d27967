"""Measure what a schedule gains on a pipeline: the same prompts and seeds dense and reduced, timed and scored.

:func:`compare` generates every prompt dense and with every *variant* (an AsymRnR schedule, or a diffusers
step cache such as FirstBlockCache) and records, per prompt and repeat:

* the wall time of the whole pipeline call, and the time spent inside the transformer (torch forward hooks
  around every transformer component: ``time.perf_counter`` and ``time.process_time`` on the CPU, CUDA
  events on a GPU, read once after the call so the hot path never syncs);
* the peak memory (CUDA ``max_memory_allocated`` on a GPU; the process's peak resident set on Linux, reset
  before each call through ``/proc/self/clear_refs``; ``None`` where neither is available);
* quality against the dense generation of the same prompt and seed: PSNR and SSIM of every decoded frame,
  cosine similarity and relative L2 of the final latents (captured by ``callback_on_step_end``).

Runs are paired: for every prompt and repeat the dense and variant generations run back to back, in an order
that alternates between repeats, so that a CPU whose speed drifts (other processes, turbo) affects both
sides alike; the measured speedup is the ratio of the summed times. One warm-up generation per
configuration runs first and is not counted. The FLOPs prediction of a schedule
(:func:`asymrnr.flops.schedule_flops`) is recorded next to the measurement, and :func:`speedup_verdict`
says plainly when the measurement falls short of it.

:class:`CompareResult` is plain data (``to_dict`` / ``from_dict``; the ``compare.json`` of ``asymrnr
compare``). :class:`SampleWriter` writes side-by-side videos (dense | variant) and keeps the frame strips
that :func:`asymrnr.report.write_compare_page` shows.
"""

from __future__ import annotations

import base64
import inspect
import io
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import AsymRnRError, ScheduleMismatchError
from .quality import latent_similarity, psnr_frames, ssim_frames

logger = logging.getLogger(__name__)

FORMAT_NAME = "asymrnr-compare"
FORMAT_VERSION = 1

#: Diffusers step caches that ``--cache`` names: ``NAME:THRESHOLD``.
CACHE_KINDS = {"fbc": ("FirstBlockCacheConfig", "threshold")}


class CompareError(AsymRnRError, ValueError):
    """Bad input to a comparison (a cache spec, a variant that cannot run on this pipeline)."""


# -------------------------------------------------------------------------------------------- variants


@dataclass
class Variant:
    """One configuration to compare with dense: an AsymRnR ``schedule``, or a diffusers ``cache`` spec."""

    name: str
    schedule: Any = None  # asymrnr.Schedule
    cache: str | None = None  # e.g. "fbc:0.1"
    source: str | None = None  # where it came from (a schedule file), for the page

    @property
    def kind(self) -> str:
        return "schedule" if self.schedule is not None else "cache"

    @property
    def predicted_speedup(self) -> float | None:
        """The schedule's FLOPs speedup of the transformer over a whole generation (``None`` for a cache)."""
        if self.schedule is None:
            return None
        from .flops import schedule_flops

        return float(schedule_flops(self.schedule).predicted_speedup)


def parse_cache(spec: str):
    """A diffusers cache config from ``"fbc:0.1"`` (FirstBlockCache, threshold 0.1). Raises CompareError."""
    name, _, value = str(spec).partition(":")
    kinds = ", ".join(f"{k}:THRESHOLD ({cls})" for k, (cls, _) in CACHE_KINDS.items())
    if name not in CACHE_KINDS:
        raise CompareError(f"unknown cache {spec!r}; use one of: {kinds}, e.g. fbc:0.1")
    try:
        threshold = float(value)
    except ValueError:
        raise CompareError(f"cache {spec!r}: {value!r} is not a number; write e.g. {name}:0.1") from None
    if not (math.isfinite(threshold) and threshold > 0):
        raise CompareError(f"cache {spec!r}: the threshold must be a positive number, e.g. {name}:0.1")
    import diffusers

    cls_name, arg = CACHE_KINDS[name]
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise CompareError(f"cache {spec!r} needs diffusers.{cls_name}, which this diffusers "
                           f"({diffusers.__version__}) lacks; upgrade diffusers or leave out --cache")
    return cls(**{arg: threshold})


def variant_name(schedule: Any = None, cache: str | None = None) -> str:
    """A file-name-safe name: ``schedule-<tag>`` or ``cache-fbc-0.1``."""
    raw = f"schedule-{schedule.tag}" if schedule is not None else f"cache-{cache}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "variant"


def make_variants(schedules: Sequence[Any] = (), caches: Sequence[str] = (),
                  sources: Sequence[str | None] | None = None) -> list[Variant]:
    """Variants of ``schedules`` (``sources``: their files) and cache specs; a repeated one is refused."""
    out: list[Variant] = []
    sources = list(sources) if sources is not None else [None] * len(schedules)
    for schedule, source in zip(schedules, sources):
        out.append(Variant(variant_name(schedule=schedule), schedule=schedule, source=source))
    for spec in caches:
        parse_cache(spec)
        out.append(Variant(variant_name(cache=spec), cache=spec, source=spec))
    seen: dict[str, Variant] = {}
    for v in out:
        if v.name in seen:
            what = f"schedule {v.schedule.tag}" if v.schedule is not None else f"cache {v.cache}"
            raise CompareError(f"{what} is given twice ({seen[v.name].source} and {v.source}); pass each once")
        seen[v.name] = v
    if not out:
        raise CompareError("nothing to compare with dense: pass at least one schedule (or a cache spec)")
    return out


def check_variants(pipe, variants: Sequence[Variant], num_inference_steps: int | None) -> None:
    """Before generating: every schedule fits the pipeline (model and sampler: the runtime's own checks, by
    applying and removing it) and runs ``num_inference_steps``; every cache can be enabled."""
    from .runtime.apply import apply, components, remove, runtimes

    if runtimes(pipe):  # dense would not be dense
        raise CompareError("asymrnr is already applied to this pipeline (a schedule or a profiler): call "
                           "asymrnr.remove(pipe) first; compare applies each schedule itself")
    for name, module in components(pipe)[1]:
        if getattr(module, "is_cache_enabled", False):
            raise CompareError(f"a diffusers cache is enabled on {name}: call pipe.{name}.disable_cache() first "
                               "(compare enables each --cache itself)")
    for v in variants:
        if v.schedule is not None:
            steps = v.schedule.num_steps
            if num_inference_steps is not None and int(num_inference_steps) != steps:
                raise ScheduleMismatchError(
                    f"schedule {v.schedule.tag} was calibrated for {steps} steps, but the comparison runs "
                    f"{num_inference_steps}; pass --steps {steps} (or compare a schedule planned for "
                    f"{num_inference_steps} steps)"
                )
            apply(pipe, v.schedule)  # raises ScheduleMismatchError naming both values
            remove(pipe)
        else:
            config = parse_cache(v.cache)
            for name, module in components(pipe)[1]:
                if not hasattr(module, "enable_cache"):
                    raise CompareError(f"{type(module).__name__} ({name}) has no diffusers cache support "
                                       f"(enable_cache); leave out --cache {v.cache}")
            del config


class _Configured:
    """``with _Configured(pipe, variant):`` the variant is on the pipeline (``None``: dense)."""

    def __init__(self, pipe, variant: Variant | None):
        self.pipe, self.variant = pipe, variant

    def __enter__(self):
        from .runtime.apply import apply, components

        v = self.variant
        if v is not None and v.schedule is not None:
            apply(self.pipe, v.schedule)
        elif v is not None:
            for _, module in components(self.pipe)[1]:
                module.enable_cache(parse_cache(v.cache))
        return self

    def __exit__(self, *exc):
        from .runtime.apply import components, remove

        v = self.variant
        if v is not None and v.schedule is not None:
            remove(self.pipe)
        elif v is not None:
            for _, module in components(self.pipe)[1]:
                module.disable_cache()
        return False


# ---------------------------------------------------------------------------------------------- timing


class TransformerTimer:
    """Time every forward of the transformer components (all of them together).

    CPU: wall (``perf_counter``) and process time (``process_time``: CPU seconds of every thread of this
    process, which other processes on the machine do not inflate) from the first pre-forward hook to the
    last forward hook of each call. CUDA: an event pair per call, read after the generation (one sync).
    Register it after everything else that hooks the transformer (it prepends its pre-hook and appends
    its post-hook, so it encloses them).
    """

    def __init__(self, modules: Sequence[Any], cuda: bool, device: Any = None):
        self.modules, self.cuda, self.device = list(modules), cuda, device
        self.handles: list = []
        self._depth = 0
        self._start: tuple[float, float] | None = None
        self._events: list = []
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.calls = 0

    def _pre(self, module, args, kwargs=None):
        self._depth += 1
        if self._depth > 1:
            return
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            self._events.append([ev, None])
        else:
            self._start = (time.perf_counter(), time.process_time())

    def _post(self, module, args, *rest):
        self._depth -= 1
        if self._depth > 0:
            return
        self.calls += 1
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            self._events[-1][1] = ev
        elif self._start is not None:
            wall, cpu = self._start
            self.wall_s += time.perf_counter() - wall
            self.cpu_s += time.process_time() - cpu
            self._start = None

    def __enter__(self):
        import torch

        # eager even under torch.compile: host clocks and event records are no graph ops
        pre, post = torch.compiler.disable(self._pre), torch.compiler.disable(self._post)
        for m in self.modules:
            self.handles.append(m.register_forward_pre_hook(pre, prepend=True))
            self.handles.append(m.register_forward_hook(post, always_call=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

    def finish(self) -> tuple[float, float | None]:
        """``(transformer seconds, transformer CPU seconds or None on CUDA)``; syncs once on CUDA."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.wall_s = sum(a.elapsed_time(b) for a, b in self._events if b is not None) / 1000.0
            return self.wall_s, None
        return self.wall_s, self.cpu_s


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); ``False`` where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_kind(device: Any) -> str | None:
    """What ``peak_memory_bytes`` measures on ``device``: CUDA allocations, the process's peak RSS, or
    ``None`` (not measured)."""
    if str(device).startswith("cuda"):
        return "cuda_max_memory_allocated"
    if _reset_peak_rss() and _peak_rss() is not None:
        return "process_peak_rss"
    return None


# ------------------------------------------------------------------------------------------ results


@dataclass
class Timing:
    """One generation: seconds of the pipeline call and of the transformer in it, and peak memory."""

    wall_s: float
    cpu_s: float | None
    transformer_s: float
    transformer_cpu_s: float | None
    transformer_calls: int
    peak_memory_bytes: int | None


@dataclass
class Quality:
    """One prompt of a variant against dense: per-frame PSNR (dB; ``inf`` where identical) and SSIM, and
    the final latents' cosine similarity and relative L2 (``None`` when the pipeline gave no latents)."""

    psnr_db: list[float]
    ssim: list[float]
    latent_cosine: float | None
    latent_rel_l2: float | None

    @property
    def mean_psnr(self) -> float:
        """PSNR of the whole video's mean squared error would differ; this is the mean of the frames'
        PSNR (``inf`` only when every frame is identical)."""
        return float(np.mean(self.psnr_db)) if self.psnr_db else float("nan")

    @property
    def min_psnr(self) -> float:
        return float(np.min(self.psnr_db)) if self.psnr_db else float("nan")

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim)) if self.ssim else float("nan")


@dataclass
class VariantResult:
    """Timings ``[prompt][repeat]`` of one configuration, and its quality per prompt (empty for dense)."""

    name: str
    kind: str  # "dense", "schedule" or "cache"
    timings: list[list[Timing]]
    quality: list[Quality] = field(default_factory=list)
    schedule_tag: str | None = None
    source: str | None = None
    predicted_speedup: float | None = None
    mean_rates: dict | None = None

    def total(self, key: str) -> float | None:
        values = [getattr(t, key) for row in self.timings for t in row]
        return None if any(v is None for v in values) or not values else float(sum(values))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def speedup_verdict(measured: float | None, predicted: float | None, what: str = "transformer") -> str:
    """One plain sentence: the measured speedup against the prediction, and by how much it falls short."""
    if measured is None:
        return f"no {what} time was measured"
    if predicted is None:
        return f"measured {what} speedup {measured:.3f}x (no FLOPs prediction for this variant)"
    if measured < predicted:
        gap = predicted - measured
        return (f"measured {what} speedup {measured:.3f}x is BELOW the predicted {predicted:.3f}x by {gap:.3f}x "
                f"({gap / predicted:.1%} of the prediction)")
    return f"measured {what} speedup {measured:.3f}x meets the predicted {predicted:.3f}x (+{measured - predicted:.3f}x)"


@dataclass
class CompareResult:
    """Everything :func:`compare` measured (plain data; ``to_dict`` is the ``compare.json`` format)."""

    prompts: list[str]
    seeds: list[int]
    repeats: int
    warmup: bool
    device: str
    timer: str  # "cpu" (perf_counter / process_time) or "cuda-events"
    memory: str | None  # what peak_memory_bytes measures (see memory_kind)
    settings: dict
    dense: VariantResult
    variants: list[VariantResult]
    info: dict = field(default_factory=dict)  # model, dtype, threads, versions, command

    def summary(self, variant: VariantResult) -> dict:
        """Measured speedups (ratios of summed times over every prompt and repeat), the paired ratios of
        the transformer time, the prediction, the verdict, and the mean quality."""
        d = self.dense
        pairs = [_ratio(a.transformer_s, b.transformer_s) for ra, rb in zip(d.timings, variant.timings)
                 for a, b in zip(ra, rb)]
        measured = _ratio(d.total("transformer_s"), variant.total("transformer_s"))
        q = variant.quality
        mean = (lambda xs: float(np.mean(xs)) if xs else None)
        cos = [x.latent_cosine for x in q if x.latent_cosine is not None]
        rel = [x.latent_rel_l2 for x in q if x.latent_rel_l2 is not None]
        shortfall = None
        if measured is not None and variant.predicted_speedup is not None and measured < variant.predicted_speedup:
            shortfall = variant.predicted_speedup - measured
        return {
            "transformer_speedup": measured,
            "transformer_cpu_speedup": _ratio(d.total("transformer_cpu_s"), variant.total("transformer_cpu_s")),
            "generation_speedup": _ratio(d.total("wall_s"), variant.total("wall_s")),
            "paired_transformer_speedups": pairs,
            "predicted_speedup": variant.predicted_speedup,
            "shortfall": shortfall,
            "shortfall_fraction": shortfall / variant.predicted_speedup if shortfall is not None else None,
            "verdict": speedup_verdict(measured, variant.predicted_speedup),
            "identical_frames": bool(q) and all(math.isinf(x) for v in q for x in v.psnr_db),
            "mean_psnr_db": mean([x.mean_psnr for x in q]),
            "min_psnr_db": float(min(x.min_psnr for x in q)) if q else None,
            "mean_ssim": mean([x.mean_ssim for x in q]),
            "mean_latent_cosine": mean(cos),
            "mean_latent_rel_l2": mean(rel),
            "peak_memory_bytes": max((t.peak_memory_bytes for row in variant.timings for t in row
                                      if t.peak_memory_bytes is not None), default=None),
        }

    # ------------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers become ``null`` (a PSNR of ``null`` means identical frames,
        infinite PSNR; :meth:`from_dict` reads it back as ``inf``)."""

        def variant(v: VariantResult) -> dict:
            out = {
                "name": v.name, "kind": v.kind, "schedule_tag": v.schedule_tag, "source": v.source,
                "predicted_speedup": v.predicted_speedup, "mean_rates": v.mean_rates,
                "timings": [[_timing_dict(t) for t in row] for row in v.timings],
                "quality": [_quality_dict(q) for q in v.quality],
            }
            if v.kind != "dense":
                out["summary"] = _json_numbers(self.summary(v))
            return out

        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "prompts": list(self.prompts),
            "seeds": [int(s) for s in self.seeds],
            "repeats": self.repeats,
            "warmup": self.warmup,
            "device": self.device,
            "timer": self.timer,
            "memory": self.memory,
            "settings": _json_numbers(self.settings),
            "info": _json_numbers(self.info),
            "dense": variant(self.dense),
            "variants": [variant(v) for v in self.variants],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "CompareResult":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT_NAME:
            raise CompareError(f"not an {FORMAT_NAME} file (its 'format' is {d.get('format') if isinstance(d, Mapping) else None!r})")
        if d.get("version") != FORMAT_VERSION:
            raise CompareError(f"{FORMAT_NAME} version {d.get('version')!r} is not supported (this asymrnr reads "
                               f"version {FORMAT_VERSION}); upgrade asymrnr")

        def variant(v: Mapping) -> VariantResult:
            return VariantResult(
                name=v["name"], kind=v["kind"], schedule_tag=v.get("schedule_tag"), source=v.get("source"),
                predicted_speedup=v.get("predicted_speedup"), mean_rates=v.get("mean_rates"),
                timings=[[Timing(**t) for t in row] for row in v["timings"]],
                quality=[Quality(psnr_db=[math.inf if x is None else float(x) for x in q["psnr_db"]],
                                 ssim=[float(x) for x in q["ssim"]], latent_cosine=q["latent_cosine"],
                                 latent_rel_l2=q["latent_rel_l2"]) for q in v["quality"]],
            )

        return cls(prompts=list(d["prompts"]), seeds=[int(s) for s in d["seeds"]], repeats=int(d["repeats"]),
                   warmup=bool(d["warmup"]), device=d["device"], timer=d["timer"], memory=d.get("memory"),
                   settings=dict(d["settings"]), info=dict(d.get("info") or {}), dense=variant(d["dense"]),
                   variants=[variant(v) for v in d["variants"]])

    def save(self, path) -> Path:
        """Write ``compare.json`` atomically (strict JSON: no NaN or Infinity)."""
        import json

        from ._io import atomic_write_text

        return atomic_write_text(path, [json.dumps(self.to_dict(), indent=1, allow_nan=False), "\n"])


def load_compare(path) -> CompareResult:
    """Read a ``compare.json``."""
    import json

    return CompareResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _finite(x: Any) -> Any:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _json_numbers(obj: Any) -> Any:
    """Non-finite floats -> None, numpy scalars -> Python, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _json_numbers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_numbers(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    return obj


def _timing_dict(t: Timing) -> dict:
    return {"wall_s": t.wall_s, "cpu_s": t.cpu_s, "transformer_s": t.transformer_s,
            "transformer_cpu_s": t.transformer_cpu_s, "transformer_calls": t.transformer_calls,
            "peak_memory_bytes": t.peak_memory_bytes}


def _quality_dict(q: Quality) -> dict:
    return {"psnr_db": [_finite(x) for x in q.psnr_db], "ssim": [float(x) for x in q.ssim],
            "latent_cosine": _finite(q.latent_cosine) if q.latent_cosine is not None else None,
            "latent_rel_l2": _finite(q.latent_rel_l2) if q.latent_rel_l2 is not None else None}


# -------------------------------------------------------------------------------------------- generating


@dataclass
class _Output:
    frames: np.ndarray  # float32 [F, H, W, C] in [0, 1]
    latents: np.ndarray | None
    timing: Timing


def _takes_callback(pipe) -> bool:
    try:
        return "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


def _generate(pipe, prompt: str, seed: int, kwargs: dict, device: str, memory: str | None) -> _Output:
    """One timed generation (``output_type="np"``, a CPU generator seeded ``seed``)."""
    import torch

    cuda = device.startswith("cuda")

    from .runtime.apply import components

    captured: dict = {}
    call = dict(kwargs)
    call.update(output_type="np", generator=torch.Generator(device="cpu").manual_seed(int(seed)))
    if _takes_callback(pipe):
        def grab(_pipe, _step, _t, tensors):  # keeps a reference: no copy, no sync per step
            captured["latents"] = tensors.get("latents")
            return {}

        call.update(callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["latents"])
    modules = [m for _, m in components(pipe)[1]]
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif memory == "process_peak_rss":
        _reset_peak_rss()
    timer = TransformerTimer(modules, cuda, device if cuda else None)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with torch.no_grad(), timer:
        out = pipe(prompt=prompt, **call)
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    t_wall, t_cpu = timer.finish()
    if cuda:
        peak = int(torch.cuda.max_memory_allocated(device))
    elif memory == "process_peak_rss":
        peak = _peak_rss()
    else:
        peak = None
    frames = np.asarray(out.frames[0], dtype=np.float32)
    latents = captured.get("latents")
    latents = latents.detach().float().cpu().numpy() if latents is not None else None
    timing = Timing(wall_s=wall, cpu_s=None if cuda else cpu, transformer_s=t_wall, transformer_cpu_s=t_cpu,
                    transformer_calls=timer.calls, peak_memory_bytes=peak)
    return _Output(frames, latents, timing)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """``[F, H, W, C]`` floats in [0, 1] -> uint8."""
    return (np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _quality(out: _Output, dense: _Output) -> Quality:
    if out.frames.shape != dense.frames.shape:
        raise CompareError(f"the variant's video has shape {out.frames.shape}, dense's {dense.frames.shape}")
    cos = rel = None
    if out.latents is not None and dense.latents is not None:
        cos, rel = latent_similarity(out.latents, dense.latents)
    return Quality(psnr_db=[float(x) for x in psnr_frames(out.frames, dense.frames, max_db=None)],
                   ssim=[float(x) for x in ssim_frames(out.frames, dense.frames)], latent_cosine=cos,
                   latent_rel_l2=rel)


def compare(
    pipe: Any,
    variants: Sequence[Variant | Any],
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    call_kwargs: Mapping | Callable[[int], Mapping] | None = None,
    *,
    repeats: int = 1,
    warmup: bool = True,
    on_video: Callable[[str, int, np.ndarray, np.ndarray], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    info: Mapping | None = None,
) -> CompareResult:
    """Generate ``prompts`` dense and with every variant; time, measure and score them (module docstring).

    Args:
        pipe: a diffusers video pipeline (on its device; nothing of asymrnr applied).
        variants: :class:`Variant` s, or schedules (each becomes ``Variant(schedule=...)``).
        prompts: the prompts; ``seeds[i]`` is prompt ``i``'s seed (default ``0, 1, ...``).
        call_kwargs: keyword arguments of every pipeline call (``num_inference_steps``, ``height``, ...),
            or a function of the prompt index returning them (e.g. with its conditioning image).
        repeats: timed generations per prompt and configuration (quality is scored on the first).
        warmup: one untimed generation per configuration first (kernels, allocator, caches).
        on_video: ``on_video(variant name, prompt index, dense uint8 [F, H, W, C], variant uint8)`` for the
            first repeat of every prompt and variant (e.g. :class:`SampleWriter`).
        progress: ``progress(done, total, label)`` after every generation.
        info: provenance stored in the result (model name, command, ...).

    Returns:
        :class:`CompareResult`. Raises :class:`~asymrnr.errors.ScheduleMismatchError` (before generating)
        when a schedule does not fit the pipeline or the step count.
    """
    import torch

    variants = [v if isinstance(v, Variant) else Variant(variant_name(schedule=v), schedule=v) for v in variants]
    if not variants:
        raise CompareError("nothing to compare with dense: pass at least one schedule (or cache)")
    if not prompts:
        raise CompareError("no prompts to generate")
    if repeats < 1:
        raise CompareError(f"repeats must be at least 1, got {repeats}")
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    if len(seeds) != len(prompts):
        raise CompareError(f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    kwargs_of = call_kwargs if callable(call_kwargs) else (lambda i, _k=dict(call_kwargs or {}): _k)
    first = dict(kwargs_of(0))
    once = _Once()  # the runtime's per-apply warnings (e.g. "reduces nothing") once, not once per generation
    apply_logger = logging.getLogger("asymrnr.runtime.apply")
    apply_logger.addFilter(once)
    try:
        return _compare(pipe, variants, prompts, seeds, kwargs_of, first, repeats, warmup, on_video, progress, info)
    finally:
        apply_logger.removeFilter(once)


class _Once(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _compare(pipe, variants, prompts, seeds, kwargs_of, first, repeats, warmup, on_video, progress, info):
    import torch

    check_variants(pipe, variants, first.get("num_inference_steps"))

    device = str(getattr(pipe, "device", "cpu"))
    cuda = device.startswith("cuda")
    memory = memory_kind(device)
    configs: list[Variant | None] = [None, *variants]
    total = len(configs) * ((1 if warmup else 0) + len(prompts) * repeats)
    done = 0

    def run(config: Variant | None, i: int) -> _Output:
        nonlocal done
        with _Configured(pipe, config):
            out = _generate(pipe, prompts[i], seeds[i], dict(kwargs_of(i)), device, memory)
        done += 1
        if progress is not None:
            progress(done, total, "dense" if config is None else config.name)
        return out

    if warmup:
        for config in configs:
            run(config, 0)
            logger.info("warm-up of %s done", "dense" if config is None else config.name)
    timings: list[list[list[Timing]]] = [[[] for _ in prompts] for _ in configs]
    quality: list[list[Quality]] = [[] for _ in configs]
    for i in range(len(prompts)):
        for r in range(repeats):
            order = list(range(len(configs))) if r % 2 == 0 else list(reversed(range(len(configs))))
            outs: dict[int, _Output] = {}
            for c in order:
                outs[c] = run(configs[c], i)
                timings[c][i].append(outs[c].timing)
            if r == 0:
                dense = outs[0]
                for c in range(1, len(configs)):
                    quality[c].append(_quality(outs[c], dense))
                    if on_video is not None:
                        on_video(configs[c].name, i, to_uint8(dense.frames), to_uint8(outs[c].frames))
            del outs

    def result(c: int) -> VariantResult:
        v = configs[c]
        if v is None:
            return VariantResult("dense", "dense", timings[0])
        rates = None
        if v.schedule is not None:
            rates = {f: v.schedule.mean_rate(f) for f in ("q", "kv", "h")}
        return VariantResult(v.name, v.kind, timings[c], quality[c],
                             schedule_tag=v.schedule.tag if v.schedule is not None else None, source=v.source,
                             predicted_speedup=v.predicted_speedup, mean_rates=rates)

    settings = {k: v for k, v in first.items() if isinstance(v, (int, float, str, bool)) or v is None}
    base_info = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                 "pipeline_class": type(pipe).__name__}
    try:
        import diffusers

        base_info["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    if cuda:
        base_info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    base_info.update(info or {})
    return CompareResult(prompts=list(prompts), seeds=[int(s) for s in seeds], repeats=int(repeats),
                         warmup=bool(warmup), device=device, timer="cuda-events" if cuda else "cpu", memory=memory,
                         settings=settings, dense=result(0), variants=[result(c) for c in range(1, len(configs))],
                         info=base_info)


# ---------------------------------------------------------------------------------------------- samples

#: Frames of the strip shown on the page, and its thumbnails' height in pixels.
STRIP_FRAMES, STRIP_HEIGHT = 6, 120


def side_by_side(dense: np.ndarray, reduced: np.ndarray, gap: int = 4) -> np.ndarray:
    """``[F, H, 2W + gap, C]`` uint8: dense left, reduced right, a white gap between."""
    f, h, _, c = dense.shape
    sep = np.full((f, h, gap, c), 255, dtype=np.uint8)
    return np.concatenate([dense, sep, reduced], axis=2)


def video_encoder() -> str:
    """``"mp4"`` when diffusers' ``export_to_video`` can encode (imageio with its ffmpeg), else ``"gif"``."""
    import importlib.util

    if importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "mp4"
    return "gif"


def write_video(frames: np.ndarray, path_stem: Path, fps: int = 8) -> Path:
    """Write uint8 ``[F, H, W, 3]`` as ``<stem>.mp4`` (diffusers' export_to_video) or ``<stem>.gif`` (PIL)."""
    if video_encoder() == "mp4":
        from diffusers.utils import export_to_video

        path = path_stem.with_name(path_stem.name + ".mp4")  # not with_suffix: names hold dots (fbc-0.1)
        export_to_video([f.astype(np.float32) / 255.0 for f in frames], str(path), fps=fps)
        return path
    from PIL import Image

    path = path_stem.with_name(path_stem.name + ".gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def frame_strip(dense: np.ndarray, reduced: np.ndarray, frames: int = STRIP_FRAMES,
                height: int = STRIP_HEIGHT) -> dict:
    """Evenly spaced frames of both videos as PNG data URIs (thumbnails ``height`` px high at most)."""
    from PIL import Image

    n = dense.shape[0]
    idx = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(frames, n))})
    h, w = dense.shape[1:3]
    scale = min(1.0, height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))

    def thumb(frame: np.ndarray) -> str:
        img = Image.fromarray(frame).resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
        return _png_data_uri(np.asarray(img))

    return {"frames": idx, "dense": [thumb(dense[k]) for k in idx], "reduced": [thumb(reduced[k]) for k in idx]}


class SampleWriter:
    """An ``on_video`` callback for :func:`compare`: writes ``<folder>/<variant>-p<i>.(mp4|gif)`` (dense |
    variant side by side) and keeps the frame strips of the first ``strip_prompts`` prompts."""

    def __init__(self, folder, fps: int = 8, strip_prompts: int = 2):
        self.folder, self.fps, self.strip_prompts = Path(folder), fps, strip_prompts
        self.videos: dict[str, list[Path]] = {}
        self.strips: dict[str, dict[int, dict]] = {}

    def __call__(self, name: str, prompt: int, dense: np.ndarray, reduced: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = write_video(side_by_side(dense, reduced), self.folder / f"{name}-p{prompt}", self.fps)
        self.videos.setdefault(name, []).append(path)
        if prompt < self.strip_prompts:
            self.strips.setdefault(name, {})[prompt] = frame_strip(dense, reduced)


__all__ = [
    "CompareError", "CompareResult", "Quality", "SampleWriter", "Timing", "TransformerTimer", "Variant",
    "VariantResult", "compare", "check_variants", "frame_strip", "load_compare", "make_variants", "memory_kind",
    "parse_cache", "side_by_side", "speedup_verdict", "variant_name", "video_encoder", "write_video",
]
