"""apply / remove: put AsymRnR on a CogVideoX pipeline or transformer, and take it off in one call.

``apply`` swaps the attention processor of every block for an :class:`AsymRnRAttnProcessor` and registers
one forward pre-hook on the transformer that tells the shared :class:`RuntimeContext` which step each call
is. ``remove`` puts the original processors back and removes the hook; nothing else is touched, so the
model computes exactly what it computed before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..arch import attention_modules, check_supported, describe_transformer, grid_from_latents
from ..errors import ScheduleMismatchError
from .processor import AsymRnRAttnProcessor
from .state import RuntimeContext

logger = logging.getLogger(__name__)

# Attribute under which the installed runtime lives on the transformer (one per transformer).
RUNTIME_ATTR = "_asymrnr_runtime"
_SUPPORTED_PROCESSORS = ("CogVideoXAttnProcessor2_0",)


@dataclass
class InstalledRuntime:
    """What ``install`` changed on a transformer, so that ``uninstall`` can undo exactly that."""

    context: RuntimeContext
    original_processors: dict[str, Any]
    hook_handle: Any
    owners: set  # "schedule" and/or "profiler": who needs the processors installed


def _split(pipe_or_transformer: Any) -> tuple[Any, Any]:
    """Return ``(transformer, scheduler or None)`` of a pipeline or a bare transformer."""
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if transformer is not None and hasattr(pipe_or_transformer, "scheduler"):
        return transformer, pipe_or_transformer.scheduler
    if hasattr(pipe_or_transformer, "config") and hasattr(pipe_or_transformer, "forward"):
        return pipe_or_transformer, None
    raise TypeError(
        f"expected a diffusers CogVideoX pipeline or CogVideoXTransformer3DModel, got {type(pipe_or_transformer).__name__}"
    )


def _module(transformer: Any) -> Any:
    """The real module behind a torch.compile wrapper (hooks and processors live there)."""
    return getattr(transformer, "_orig_mod", transformer)


def _pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
    runtime: InstalledRuntime = getattr(module, RUNTIME_ATTR)
    hidden_states = kwargs.get("hidden_states", args[0] if args else None)
    timestep = kwargs.get("timestep", args[2] if len(args) > 2 else None)
    grid = grid_from_latents(module, hidden_states.shape)
    runtime.context.begin_call(timestep, grid, hidden_states.device)


def installed(pipe_or_transformer: Any) -> InstalledRuntime | None:
    transformer, _ = _split(pipe_or_transformer)
    return getattr(_module(transformer), RUNTIME_ATTR, None)


def install(pipe_or_transformer: Any, owner: str) -> InstalledRuntime:
    """Install the processors and the step hook (once per transformer), and register ``owner``."""
    transformer, scheduler = _split(pipe_or_transformer)
    module = _module(transformer)
    check_supported(module)
    runtime = getattr(module, RUNTIME_ATTR, None)
    if runtime is None:
        originals = dict(module.attn_processors)
        attn = attention_modules(module)
        for name, _ in attn:
            kind = type(originals[name]).__name__
            if kind not in _SUPPORTED_PROCESSORS:
                raise ScheduleMismatchError(
                    f"{name} uses {kind}; asymrnr patches {', '.join(_SUPPORTED_PROCESSORS)} only. If you fused "
                    "the projections, call transformer.unfuse_qkv_projections() before asymrnr.apply"
                )
        context = RuntimeContext(len(attn), scheduler=scheduler)
        processors = dict(originals)
        for index, (name, _) in enumerate(attn):
            processors[name] = AsymRnRAttnProcessor(index, context, originals[name])
        module.set_attn_processor(processors)
        handle = module.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        runtime = InstalledRuntime(context, originals, handle, set())
        setattr(module, RUNTIME_ATTR, runtime)
    elif scheduler is not None:
        runtime.context.scheduler = scheduler
    runtime.owners.add(owner)
    return runtime


def uninstall(pipe_or_transformer: Any, owner: str) -> None:
    """Unregister ``owner``; when nobody needs the runtime any more, restore the model exactly."""
    transformer, _ = _split(pipe_or_transformer)
    module = _module(transformer)
    runtime: InstalledRuntime | None = getattr(module, RUNTIME_ATTR, None)
    if runtime is None:
        return
    runtime.owners.discard(owner)
    if runtime.owners:
        return
    module.set_attn_processor(runtime.original_processors)
    runtime.hook_handle.remove()
    runtime.context.reset()
    delattr(module, RUNTIME_ATTR)


def check_schedule_fits(schedule: Any, transformer: Any) -> None:
    """Raise :class:`ScheduleMismatchError` naming both values when the schedule was made for another model."""
    module = _module(transformer)
    have = describe_transformer(module)
    want = schedule.model
    rerun = "re-run `asymrnr-calibrate` for this model (or pass the schedule made for it)"
    checks = [
        ("transformer class", want.transformer_class, have.transformer_class),
        ("blocks", want.num_blocks, have.num_blocks),
        ("attention heads", want.num_heads, have.num_heads),
        ("head dim", want.head_dim, have.head_dim),
        ("patch size", want.patch_size, have.patch_size),
        ("temporal patch size", want.patch_size_t, have.patch_size_t),
        ("rotary embeddings", want.rope, have.rope),
    ]
    for what, schedule_value, model_value in checks:
        if schedule_value != model_value:
            raise ScheduleMismatchError(
                f"schedule {schedule.tag} was calibrated for {what} = {schedule_value}, this transformer has "
                f"{what} = {model_value}; {rerun}"
            )


def apply(pipe_or_transformer: Any, schedule: Any, *, resample_steps: bool = False) -> RuntimeContext:
    """Run ``schedule`` on every generation of a CogVideoX pipeline or transformer until :func:`remove`.

    Applying again replaces the previous schedule. The schedule's model description must match the
    transformer (blocks, heads, head dim, patching, RoPE). A generation with another number of inference
    steps than the schedule's is an error unless ``resample_steps=True``, which maps every step of the new
    sampler to the schedule step with the nearest timestep.

    Returns:
        The runtime context (its ``match_log`` and ``call`` are useful for logging and tests).
    """
    from ..schedule_format import Schedule

    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"expected an asymrnr.Schedule, got {type(schedule).__name__}; load one with asymrnr.load_schedule(path)"
        )
    transformer, _ = _split(pipe_or_transformer)
    check_supported(_module(transformer))
    check_schedule_fits(schedule, transformer)
    runtime = install(pipe_or_transformer, owner="schedule")
    runtime.context.set_schedule(schedule, resample_steps=resample_steps)
    if all(r == 0.0 for f in ("q", "kv", "h") for row in schedule.rates[f] for r in row):
        logger.warning("schedule %s reduces nothing: generation will not be faster", schedule.tag)
    logger.info("applied schedule %s (%d blocks, %d steps)", schedule.tag, schedule.num_blocks, schedule.num_steps)
    return runtime.context


def remove(pipe_or_transformer: Any) -> None:
    """Take the schedule off; restores the original attention processors and removes the hook.

    A profiler still recording keeps its observation hooks until its ``with`` block ends.
    """
    runtime = installed(pipe_or_transformer)
    if runtime is None:
        return
    runtime.context.set_schedule(None)
    uninstall(pipe_or_transformer, owner="schedule")
