"""Runtime: apply a schedule during generation, removable in one call."""

from .apply import apply, remove, installed
from .processor import AsymRnRAttnProcessor
from .state import BlockPlan, RuntimeContext

__all__ = ["apply", "remove", "installed", "AsymRnRAttnProcessor", "BlockPlan", "RuntimeContext"]
