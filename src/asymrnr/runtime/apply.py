"""apply / remove: put AsymRnR on a pipeline or transformer of any supported family, and take it off in one call.

``apply`` replaces the processor of every self-attention site of every transformer component (Wan 2.2 has
two) by the family's AsymRnR processor and registers one :class:`~asymrnr.runtime.hook.AsymRnRHook` per
component in diffusers' ``HookRegistry``. ``remove`` puts the original processors back and removes the
hooks; nothing else is touched, so the model computes exactly what it computed before. The profiler uses
the same installation (an owner refcount lets a schedule and the profiler coexist).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from .. import archs, vocab
from ..distributed import check_context_parallel
from ..errors import AsymRnRError, ScheduleMismatchError
from .context import Runtime, check_sampler
from .hook import AsymRnRHook, find_hook, register, unregister

logger = logging.getLogger(__name__)

_FUSED_HINT = ("If you fused the projections, call transformer.unfuse_qkv_projections() before asymrnr.apply; if "
               "another library replaced the processors, remove it first")


def unwrap(transformer: Any) -> Any:
    """The real module behind a torch.compile wrapper (hooks and processors live there)."""
    return getattr(transformer, "_orig_mod", transformer)


def is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "scheduler") and hasattr(obj, "components")


def components(pipe_or_transformer: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """``(pipeline or None, [(component name, transformer module), ...])`` of a pipeline or a bare transformer."""
    if is_pipeline(pipe_or_transformer):
        pipe = pipe_or_transformer
        adapter = archs.adapter_for(pipe)
        found = [(name, unwrap(getattr(pipe, name))) for name in adapter.components
                 if getattr(pipe, name, None) is not None]
        if not found:
            raise TypeError(f"{type(pipe).__name__} has no transformer (pipe.transformer is None)")
        return pipe, found
    if hasattr(pipe_or_transformer, "config") and hasattr(pipe_or_transformer, "forward"):
        return None, [("transformer", unwrap(pipe_or_transformer))]
    raise TypeError(
        f"expected a diffusers video pipeline or transformer, got {type(pipe_or_transformer).__name__}; pass the "
        "pipeline (or pipeline.transformer)"
    )


def runtimes(pipe_or_transformer: Any) -> dict[str, Runtime]:
    """The installed runtime of every transformer component (empty when asymrnr is not applied)."""
    _, comps = components(pipe_or_transformer)
    out = {}
    for name, module in comps:
        hook = find_hook(module)
        if hook is not None:
            out[name] = hook.runtime
    return out


def installed(pipe_or_transformer: Any) -> Runtime | None:
    """The runtime of the first transformer component, or ``None``."""
    found = runtimes(pipe_or_transformer)
    return next(iter(found.values()), None)


def _install_one(adapter, module: Any, name: str, pipe: Any, owner: str) -> Runtime:
    hook = find_hook(module)
    if hook is None:
        sites = adapter.sites(module)
        originals = {}
        for site in sites:
            proc = site.module.processor
            while getattr(getattr(proc, "runtime", None), "detached", False):  # a stale processor of ours
                proc = proc.original
            kind = type(proc).__name__
            if kind not in adapter.supported_processors:
                raise ScheduleMismatchError(
                    f"{name}.{site.path} uses {kind}; asymrnr's {adapter.family} adapter replaces "
                    f"{', '.join(adapter.supported_processors)} only. {_FUSED_HINT}"
                )
            originals[site.processor_name] = proc
        runtime = Runtime(adapter, module, name, sites, pipe)
        for site in sites:
            proc = adapter.make_processor(site, runtime, originals[site.processor_name])
            site.module.processor = proc
            runtime.processors[site.processor_name] = proc
        hook = AsymRnRHook(runtime, originals)
        register(module, hook)
    elif pipe is not None:
        hook.runtime._pipe = weakref.ref(pipe)
    hook.owners.add(owner)
    return hook.runtime


def install(pipe_or_transformer: Any, owner: str) -> list[Runtime]:
    """Install processors and hooks on every transformer component (once each) and register ``owner``."""
    pipe, comps = components(pipe_or_transformer)
    done = []
    try:
        for name, module in comps:
            adapter = archs.adapter_for(module)
            done.append((name, module, _install_one(adapter, module, name, pipe, owner)))
    except BaseException:
        for _, module, _ in done:
            _uninstall_one(module, owner)
        raise
    return [rt for _, _, rt in done]


def _uninstall_one(module: Any, owner: str) -> None:
    hook = find_hook(module)
    if hook is None:
        return
    hook.owners.discard(owner)
    if hook.owners:
        return
    for site in hook.runtime.sites:
        site.module.processor = hook.originals[site.processor_name]
    unregister(module)
    hook.runtime.end_generation()
    hook.runtime.detached = True


def uninstall(pipe_or_transformer: Any, owner: str) -> None:
    """Unregister ``owner``; when nobody needs the runtime any more, restore the model exactly."""
    _, comps = components(pipe_or_transformer)
    for _, module in comps:
        _uninstall_one(module, owner)


def check_schedule_fits(schedule: Any, module: Any, component: str = "transformer") -> None:
    """Raise :class:`ScheduleMismatchError` naming both values when the schedule was made for another model."""
    adapter = archs.adapter_for(module)
    have = adapter.describe(module)
    want = schedule.model
    rerun = "re-run `asymrnr-calibrate` for this model (or pass the schedule made for it)"
    if want.family != have.family:
        raise ScheduleMismatchError(
            f"schedule {schedule.tag} was calibrated for a {want.family} model ({want.transformer_class}), but this "
            f"is a {have.family} model ({have.transformer_class}); {rerun}"
        )
    checks = [
        ("transformer class", want.transformer_class, have.transformer_class),
        ("blocks", want.num_blocks, have.num_blocks),
        ("attention heads", want.num_heads, have.num_heads),
        ("head dim", want.head_dim, have.head_dim),
        ("patch size (t, h, w)", tuple(want.patch_size), tuple(have.patch_size)),
        ("rotary embeddings", want.rope, have.rope),
        ("block kinds", want.kinds(), have.kinds()),
    ]
    if want.text_layout != "none" or have.text_layout != "none":
        checks.append(("text layout", want.text_layout, have.text_layout))
    for what, schedule_value, model_value in checks:
        if schedule_value != model_value:
            raise ScheduleMismatchError(
                f"schedule {schedule.tag} was calibrated for {what} = {schedule_value}, this {component} has "
                f"{what} = {model_value}; {rerun}"
            )


def apply(pipe_or_transformer: Any, schedule: Any = None, *, resample_steps: bool | None = None,
          strict_sampler: bool = True, **uniform: Any) -> Runtime:
    """Run ``schedule`` on every generation of a pipeline or transformer until :func:`remove`.

    Applying again replaces the previous schedule. The schedule must fit the model (family, blocks, heads,
    head dim, patching, RoPE) and the pipeline's sampler (scheduler class and the settings that change its
    timesteps); a generation with another number of inference steps is an error unless
    ``resample_steps=True``, which maps every step of the new sampler to the schedule step with the nearest
    timestep. ``strict_sampler=False`` turns a sampler mismatch into a warning.

    Without a schedule, keyword rates build a uniform one for the pipeline's next call:
    ``apply(pipe, q=0.5, kv=0.5)`` (see :func:`asymrnr.uniform`; the other keywords go to
    :func:`asymrnr.runtime.uniform.uniform_schedule`). Its rates are the same at every step, so it is applied
    with ``resample_steps=True`` unless told otherwise: any step count runs.

    Returns:
        The runtime of the (first) transformer component: its ``match_log`` and ``call`` are useful for
        logs and tests.
    """
    from ..schedule_format import Schedule

    if schedule is None and uniform:
        from .uniform import uniform_schedule

        schedule = uniform_schedule(pipe_or_transformer, **uniform)
        if resample_steps is None:
            resample_steps = True
    elif uniform:
        raise TypeError(f"apply() got rates {sorted(uniform)} together with a schedule; pass one or the other")
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"expected an asymrnr.Schedule, got {type(schedule).__name__}; load one with asymrnr.load_schedule(path), "
            "or pass rates: asymrnr.apply(pipe, q=0.5, kv=0.5)"
        )
    resample_steps = bool(resample_steps)
    pipe, comps = components(pipe_or_transformer)
    wanted = set(schedule.sampler.transformers)
    for name, module in comps:
        check_schedule_fits(schedule, module, name)
        check_context_parallel(archs.adapter_for(module), module, name)
    if pipe is not None:
        present = {name for name, _ in comps}
        missing = wanted - present
        if missing:
            raise ScheduleMismatchError(
                f"schedule {schedule.tag} runs {', '.join(sorted(wanted))}, but this pipeline has no "
                f"{', '.join(sorted(missing))}; load the pipeline the schedule was calibrated with"
            )
        check_sampler(schedule, pipe.scheduler, strict=strict_sampler, resample=True)
    rts = install(pipe_or_transformer, owner="schedule")
    for rt in rts:
        rt.set_schedule(schedule, resample_steps=resample_steps, strict_sampler=strict_sampler)
    if all(r == 0.0 for f in vocab.SCHEDULE_FEATURES for row in schedule.rates[f] for r in row):
        logger.warning("schedule %s reduces nothing: generation will not be faster", schedule.tag)
    logger.info("applied schedule %s (%d blocks, %d steps) to %s", schedule.tag, schedule.num_blocks,
                schedule.num_steps, ", ".join(rt.component for rt in rts))
    return rts[0]


def remove(pipe_or_transformer: Any) -> None:
    """Take the schedule off; restores the original attention processors and removes the hooks.

    A profiler still recording keeps its observation hooks until its ``with`` block ends.
    """
    try:
        found = runtimes(pipe_or_transformer)
    except AsymRnRError:
        return
    for rt in found.values():
        rt.set_schedule(None)
    uninstall(pipe_or_transformer, owner="schedule")


__all__ = ["apply", "remove", "install", "uninstall", "installed", "runtimes", "components", "check_schedule_fits",
           "unwrap"]
