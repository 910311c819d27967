"""asymrnr: Asymmetric Reduction and Restoration for video diffusion transformers.

Public API (imported lazily so that reading a schedule needs neither torch nor diffusers)::

    import asymrnr
    schedule = asymrnr.load_schedule("schedule.json")
    asymrnr.apply(pipe, schedule)
    video = pipe(prompt).frames
    asymrnr.remove(pipe)

    asymrnr.uniform(pipe, q=0.5, kv=0.5)   # no calibration: the same rates everywhere
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_schedule": ("asymrnr.schedule_format", "load_schedule"),
    "Schedule": ("asymrnr.schedule_format", "Schedule"),
    "apply": ("asymrnr.runtime", "apply"),
    "remove": ("asymrnr.runtime", "remove"),
    "uniform": ("asymrnr.runtime.uniform", "uniform"),
    "profile": ("asymrnr.profiler", "profile"),
    "AsymRnRError": ("asymrnr.errors", "AsymRnRError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asymrnr' has no attribute {name!r}")
