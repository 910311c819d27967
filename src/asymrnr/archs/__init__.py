"""Architecture adapters: one module per family of video transformers, and the registry that finds them.

    adapter = asymrnr.archs.adapter_for(pipe.transformer)   # by class, along the class hierarchy
    adapter = asymrnr.archs.get("wan")                       # by family name (as written in files)

Adding a family is one new module here (a subclass of :class:`~asymrnr.archs.base.ArchAdapter`, listed in
``_MODULES``) plus its preset lines in :mod:`asymrnr.models.presets`. See ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import AsymRnRError
from .base import ArchAdapter, class_name

#: Adapter modules, imported on first use (each is torch-free at import).
_MODULES = ("cogvideox", "wan", "hunyuanvideo", "ltx", "mochi")
#: The one family version-1 schedule and statistics files described (they predate ``model.family``).
VERSION_1_FAMILY = "cogvideox"
_ADAPTERS: dict[str, ArchAdapter] = {}


def _load() -> dict[str, ArchAdapter]:
    if not _ADAPTERS:
        for name in _MODULES:
            module = importlib.import_module(f"{__name__}.{name}")
            adapter = module.ADAPTER
            _ADAPTERS[adapter.family] = adapter
    return _ADAPTERS


def families() -> tuple[str, ...]:
    """Family names of every registered adapter."""
    return tuple(_load())


def all_adapters() -> tuple[ArchAdapter, ...]:
    return tuple(_load().values())


def get(family: str) -> ArchAdapter:
    """The adapter of ``family`` (as written in a schedule or statistics file)."""
    adapters = _load()
    try:
        return adapters[family]
    except (KeyError, TypeError):
        raise AsymRnRError(
            f"unknown model family {family!r}; this asymrnr knows {', '.join(adapters)} (a file from a newer "
            "asymrnr may name a newer family: upgrade asymrnr)"
        ) from None


def supported_classes() -> tuple[str, ...]:
    return tuple(c for a in _load().values() for c in a.transformer_classes)


def adapter_for(obj: Any) -> ArchAdapter:
    """The adapter serving a transformer (or a pipeline's ``transformer``, or a class name)."""
    adapters = _load().values()
    if isinstance(obj, str):
        for a in adapters:
            if a.serves_class_name(obj):
                return a
        name = obj
    else:
        transformer = obj
        if getattr(obj, "transformer", None) is not None and hasattr(obj, "scheduler"):
            transformer = obj.transformer
        elif hasattr(obj, "scheduler") and getattr(obj, "transformer_2", None) is not None:
            transformer = obj.transformer_2
        for a in adapters:
            if a.serves(transformer):
                return a
        name = class_name(transformer)
    raise AsymRnRError(
        f"asymrnr does not support {name} yet; supported transformers: {', '.join(supported_classes())}"
    )


__all__ = ["ArchAdapter", "families", "all_adapters", "get", "adapter_for", "supported_classes"]
