"""Runtime: apply a schedule during generation, removable in one call (diffusers hooks + per-family processors)."""

from .apply import apply, installed, remove, runtimes
from .context import BlockPlan, Runtime, RuntimeContext
from .hook import HOOK_NAME, AsymRnRHook

__all__ = ["apply", "remove", "installed", "runtimes", "BlockPlan", "Runtime", "RuntimeContext", "HOOK_NAME",
           "AsymRnRHook"]
