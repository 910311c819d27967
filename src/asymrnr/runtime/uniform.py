"""One line, no calibration: the same rates in every block and step, built for the pipeline's next call.

``asymrnr.uniform(pipe, q=0.5, kv=0.5)`` (or ``asymrnr.apply(pipe, q=0.5, kv=0.5)``) is the first thing to
try: nothing is profiled, nothing is read from disk. What the user does not pass comes from the pipeline:

* **steps**: the ``num_inference_steps`` default of the pipeline's ``__call__`` (50 for most video
  pipelines; 50 for a bare transformer). The schedule is applied with ``resample_steps=True``, so a
  generation with any other step count runs too (each step maps to the schedule step with the nearest
  timestep; every step has the same rates, so nothing is lost).
* **grid**: the token grid of the pipeline's default size (its ``height``/``width``/``num_frames``
  defaults, else the transformer's sample size, as the family adapter describes it), or of the size given.
  It decides the rate ceiling (``N_src / N_video``): a rate above it is refused here, before any
  generation, with the ceiling in the message. A generation at another size is checked again at its
  first transformer call (the ceiling moves a little with the grid).

A calibrated schedule (``asymrnr calibrate``) spends the same FLOPs where the model is most redundant and
keeps quality better at the same predicted speed; see ``benchmarks/quality/RESULTS.md``.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from typing import Any

from .. import archs, vocab
from ..archs.base import config_of
from ..errors import AsymRnRError, RateError

logger = logging.getLogger(__name__)

#: Steps recorded for a bare transformer (no pipeline, so no sampler to ask); any step count still runs.
BARE_TRANSFORMER_STEPS = 50
#: ``provenance.source`` of the schedules built here.
ONE_LINE_SOURCE = "asymrnr.uniform"
#: Pipeline attributes holding the VAE's spatial / temporal factors, by the names diffusers' video pipelines use.
_VAE_SPATIAL_ATTRS = ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_spatial_scale_factor")
_VAE_TEMPORAL_ATTRS = ("vae_scale_factor_temporal", "vae_temporal_compression_ratio", "vae_temporal_scale_factor")


def check_rate(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1)``, or a :class:`RateError` naming ``name`` and the fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RateError(f"{name} must be a number in [0, 1) (the fraction of video tokens dropped), got "
                        f"{type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise RateError(f"{name} is {value}; a rate must be a finite number in [0, 1) (0 = no reduction)")
    if value < 0.0:
        raise RateError(f"{name}={value!r} is negative; a rate is the fraction of video tokens dropped: use a value "
                        "in [0, 1) (0 = no reduction)")
    if value >= 1.0:
        raise RateError(f"{name}={value!r} is not below 1; a rate is the fraction of video tokens dropped: use a value "
                        "in [0, 1) (0.5 drops half; the ceiling is about 0.87 at the default stride)")
    return value


def default_steps(pipe: Any) -> int:
    """The ``num_inference_steps`` default of ``pipe.__call__`` (:data:`BARE_TRANSFORMER_STEPS` without one)."""
    if pipe is None:
        return BARE_TRANSFORMER_STEPS
    param = _call_parameters(pipe).get("num_inference_steps")
    default = getattr(param, "default", inspect.Parameter.empty)
    if isinstance(default, int) and not isinstance(default, bool) and default >= 1:
        return default
    return BARE_TRANSFORMER_STEPS


def _call_parameters(pipe: Any) -> dict:
    try:
        return dict(inspect.signature(type(pipe).__call__).parameters)
    except (TypeError, ValueError):
        return {}


def _first_attr(obj: Any, names: tuple[str, ...], fallback: int) -> int:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return fallback


def generation_grid(adapter: Any, pipe: Any, transformer: Any, *, height: int | None = None,
                    width: int | None = None, num_frames: int | None = None) -> tuple[int, int, int]:
    """Token grid ``(frames, rows, columns)`` of a generation of ``height x width``, ``num_frames`` (pixels).

    What is not given comes from the pipeline's ``__call__`` defaults, else from the size the family adapter
    describes by default (the transformer's sample size, or the model card's).
    """
    default_grid = tuple(adapter.describe(transformer).latent_grid)
    if pipe is None:
        if height is None and width is None and num_frames is None:
            return default_grid
        raise AsymRnRError("height/width/num_frames need a pipeline (its VAE factors turn pixels into tokens); pass "
                           "the pipeline, or latent_grid=(frames, rows, columns) in tokens for a bare transformer")
    params = _call_parameters(pipe)
    fallback = adapter.generation_size(pipe, transformer, default_grid)
    size = {}
    for name, given in (("height", height), ("width", width), ("num_frames", num_frames)):
        if given is None:
            default = getattr(params.get(name), "default", None)
            given = default if isinstance(default, int) and not isinstance(default, bool) else fallback[name]
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise AsymRnRError(f"{name} must be a positive integer (pixels / frames), got {given!r}")
        size[name] = given
    if height is None and width is None and num_frames is None and all(
            getattr(params.get(n), "default", None) is None for n in ("height", "width", "num_frames")):
        return default_grid  # the pipeline derives its size from the transformer, as the adapter does
    config = config_of(transformer)
    rules = adapter.generation_rules(dict(config))
    spatial = _first_attr(pipe, _VAE_SPATIAL_ATTRS, rules.vae_spatial)
    temporal = _first_attr(pipe, _VAE_TEMPORAL_ATTRS, rules.vae_temporal)
    grid = adapter.token_grid(config, size["height"], size["width"], size["num_frames"], spatial, temporal)
    if min(grid) < 1:
        raise AsymRnRError(f"a {size['height']}x{size['width']} generation of {size['num_frames']} frames has "
                           f"the token grid {grid}: too small for this model; use a larger size")
    return tuple(int(g) for g in grid)


def uniform_schedule(pipe_or_transformer: Any, *, q: float = 0.0, kv: float = 0.0, h: float = 0.0,
                     num_inference_steps: int | None = None, height: int | None = None, width: int | None = None,
                     num_frames: int | None = None, latent_grid=None, text_len: int | None = None,
                     cache_steps: int = vocab.DEFAULT_CACHE_STEPS, stride=vocab.DEFAULT_STRIDE,
                     metric: str = vocab.DEFAULT_METRIC, granularity: str = vocab.DEFAULT_GRANULARITY,
                     reduce_op: str = "discard", seed: int = 0, partition: str = vocab.DEFAULT_PARTITION_MODE):
    """A :class:`~asymrnr.Schedule` with rates ``q``, ``kv`` (AsymRnR) or ``h`` (SymRnR) in every block and step.

    Args:
        pipe_or_transformer: a diffusers video pipeline (its sampler is recorded) or a bare transformer.
        q, kv, h: fractions of all video tokens dropped, in ``[0, ceiling]``; ``h`` excludes ``q``/``kv``.
        num_inference_steps: steps recorded in the schedule (default: the pipeline's ``__call__`` default).
            Applied through :func:`asymrnr.apply` / :func:`asymrnr.uniform`, any step count runs.
        height, width, num_frames: the generation size in pixels (default: the pipeline's), or
        latent_grid: the token grid ``(frames, rows, columns)`` directly. Either decides the rate ceiling.
        text_len: text tokens per call (default: the family's default prompt length), for the FLOPs model.
        cache_steps, stride, metric, granularity, reduce_op, seed, partition: matching settings
            (:class:`~asymrnr.formats.descriptions.MatchingSettings`).

    Raises:
        RateError: a rate that is not a finite number in ``[0, 1)``, above the ceiling of ``stride`` on the
            grid, or ``h`` together with ``q``/``kv`` -- before anything is generated.
    """
    from ..formats.schedule import Schedule
    from .apply import components

    rates = {name: check_rate(name, value) for name, value in (("q", q), ("kv", kv), ("h", h))}
    clash = vocab.exclusive_violation(rates["h"], rates["q"], rates["kv"])
    if clash is not None:
        raise RateError(f"h={rates['h']!r} together with {clash}={rates[clash]!r}: a uniform schedule runs either "
                        "SymRnR (h) or AsymRnR (q/kv) in every cell, not both; set h=0 or q=kv=0")
    pipe, comps = components(pipe_or_transformer)
    transformer = comps[0][1]
    adapter = archs.adapter_for(transformer)
    if latent_grid is not None:
        if any(v is not None for v in (height, width, num_frames)):
            raise AsymRnRError("pass either latent_grid (tokens) or height/width/num_frames (pixels), not both")
        grid = tuple(int(g) for g in latent_grid)
        if len(grid) != 3 or min(grid) < 1:
            raise AsymRnRError(f"latent_grid must be three positive token counts (frames, rows, columns), got "
                               f"{tuple(latent_grid)!r}")
    else:
        grid = generation_grid(adapter, pipe, transformer, height=height, width=width, num_frames=num_frames)
    stride_t = tuple(int(s) for s in stride)
    ceiling = vocab.rate_ceiling(grid, stride_t)
    for name, value in rates.items():
        if value > ceiling + 1e-12:
            raise RateError(
                f"{name}={value:g} exceeds the ceiling {ceiling:.4f} of stride {stride_t} on the token grid {grid} "
                f"(one destination per full stride window is kept, so at most {ceiling:.1%} of the video tokens can "
                f"be dropped); use {name} <= {math.floor(ceiling * 1000) / 1000:g}, or a larger stride"
            )
    steps = default_steps(pipe) if num_inference_steps is None else num_inference_steps
    rate_text = ", ".join(f"{k}={v:g}" for k, v in rates.items() if v) or "nothing"
    schedule = Schedule.uniform(
        pipe_or_transformer, steps, q=rates["q"], kv=rates["kv"], h=rates["h"], cache_steps=cache_steps,
        metric=metric, stride=stride_t, reduce_op=reduce_op, granularity=granularity, seed=seed,
        partition=partition, latent_grid=grid, text_len=text_len,
        notes=f"uniform: {rate_text} in every block and step (no calibration)",
    )
    # marks the one-line schedule: the runtime then does not warn that a generation runs at another size than
    # the "calibrated" one (nothing was calibrated), and a sampler mismatch says to apply it again
    schedule.provenance["source"] = ONE_LINE_SOURCE
    logger.info("uniform schedule %s: %s, %d steps, token grid %s (ceiling %.4f)", schedule.tag, rate_text, steps,
                grid, ceiling)
    return schedule


def uniform(pipe_or_transformer: Any, *, q: float = 0.0, kv: float = 0.0, h: float = 0.0,
            strict_sampler: bool = True, **options: Any):
    """Apply a uniform schedule to ``pipe_or_transformer`` in one line; returns the runtime.

    ``asymrnr.uniform(pipe, q=0.5, kv=0.5)`` is ``asymrnr.apply(pipe, q=0.5, kv=0.5)``: the schedule is built
    by :func:`uniform_schedule` (``options`` go there: ``num_inference_steps``, ``height``/``width``/
    ``num_frames`` or ``latent_grid``, matching settings) and applied with ``resample_steps=True``, so any
    step count runs. ``asymrnr.remove(pipe)`` takes it off. The returned
    :class:`~asymrnr.runtime.context.Runtime` holds the schedule (``runtime.schedule``, e.g. to
    ``.save()`` it) and the per-call state.
    """
    from .apply import apply

    return apply(pipe_or_transformer, q=q, kv=kv, h=h, strict_sampler=strict_sampler, **options)


__all__ = ["ONE_LINE_SOURCE", "uniform", "uniform_schedule", "generation_grid", "default_steps", "check_rate", "RateError",
           "BARE_TRANSFORMER_STEPS"]
