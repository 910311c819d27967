"""The diffusers hook that drives the runtime: one per transformer component, in its ``HookRegistry``.

Registered under :data:`HOOK_NAME`, it is listed, reset and removed by diffusers' own machinery:

* Before every transformer call it binds the call's arguments by name (never by position) and calls
  :meth:`~asymrnr.runtime.context.Runtime.begin_call` with the pipeline's ``CacheContext`` (the CFG branch
  and, where the pipeline passes it, the step index), which diffusers' ``cache_context(...)`` delivers to
  the hook's ``StateManager``. It runs eagerly, outside any compiled graph.
* ``reset_state`` (diffusers calls it through ``reset_stateful_hooks`` at the end of every pipeline call)
  ends the generation: the matching cache is dropped and the profiler finishes its run.

Why the per-call work runs in torch forward hooks and not in ``ModelHook.pre_forward``: the registry
replaces ``module.forward``, and ``enable_model_cpu_offload`` re-applies accelerate's hooks after every
pipeline call (``maybe_free_model_hooks``), which restores accelerate's saved ``forward`` and silently drops
the registry's wrapper. torch's own forward hooks live on the module and survive that; the registry entry
(and with it the name, the listing, the reset and the cache context) stays as it is.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .context import Runtime

HOOK_NAME = "asymrnr"


class _ContextOnly(BaseState):
    """The hook keeps no per-branch state in diffusers' StateManager: it only receives the cache context."""

    def reset(self, *args, **kwargs) -> None:
        pass


class AsymRnRHook(ModelHook):
    """Tells the :class:`Runtime` of one transformer which call, branch and step each forward is.

    Attributes:
        runtime: the component's runtime state.
        originals: processor name -> the processor :func:`asymrnr.runtime.apply.install` replaced.
        owners: who needs the hook installed ("schedule", "profiler").
    """

    _is_stateful = True

    def __init__(self, runtime: Runtime, originals: dict[str, Any]):
        super().__init__()
        self.runtime = runtime
        self.originals = originals
        self.owners: set[str] = set()
        # diffusers' cache_context(...) sets its CacheContext on every StateManager of a stateful hook
        self.state_manager = StateManager(_ContextOnly)
        self._signature: inspect.Signature | None = None
        self._handles: list = []

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._signature = inspect.signature(type(module).forward)
        self._handles = [module.register_forward_pre_hook(self._before_call, with_kwargs=True),
                         module.register_forward_hook(self._after_call)]
        return module

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:  # (sic: diffusers' spelling)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return module

    @torch.compiler.disable
    def _before_call(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        inputs = self._signature.bind_partial(module, *args, **kwargs).arguments
        self.runtime.begin_call(inputs, self.state_manager._context)

    @torch.compiler.disable
    def _after_call(self, module: torch.nn.Module, args: tuple, output: Any):
        self.runtime.end_call()

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.runtime.end_generation()
        return module

    def __repr__(self) -> str:
        sched = self.runtime.schedule
        return f"AsymRnRHook({self.runtime.component}, schedule={sched.tag if sched is not None else None}, owners={sorted(self.owners)})"


def find_hook(module: torch.nn.Module) -> AsymRnRHook | None:
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None


def register(module: torch.nn.Module, hook: AsymRnRHook) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)


def unregister(module: torch.nn.Module) -> None:
    """Remove our hook from the module's registry, keeping every hook registered after it working.

    diffusers' ``HookRegistry.remove_hook`` rewires the next hook's ``forward`` to what lay beneath the removed
    one; when that next hook replaced ``forward`` by its own ``new_forward`` (FasterCache's denoiser hook, enabled
    after ``asymrnr.apply``), this silently drops it, and the cache stops firing. Here the next hook's
    ``original_forward`` is rewired instead, so it keeps its ``new_forward``.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or HOOK_NAME not in registry.hooks:
        return
    order, refs = registry._hook_order, registry._fn_refs
    index = order.index(HOOK_NAME)
    above = refs[index + 1] if index + 1 < len(refs) else None
    if above is not None and above.original_forward is not None:
        ours = refs[index]
        above.original_forward = ours.original_forward if ours.original_forward is not None else ours.forward
        hook = registry.hooks.pop(HOOK_NAME)
        order.pop(index)
        refs.pop(index)
        hook.deinitalize_hook(module)
        return
    registry.remove_hook(HOOK_NAME, recurse=False)


__all__ = ["HOOK_NAME", "AsymRnRHook", "find_hook", "register", "unregister"]
