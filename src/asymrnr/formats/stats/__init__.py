"""The statistics file (``stats.h5``, format ``asymrnr-stats`` version 2): the only h5py user in asymrnr.

- :mod:`.spec`: names, constants, array specs, axes and metadata rules (numpy only, no h5py);
- :mod:`.writer`: :class:`StatsWriter`;
- :mod:`.reader`: :func:`load_stats`, :func:`describe_stats`, and the reader of every format version.

The layout, semantics, versions and safety rules are in ``docs/stats-format.md``. The names of
:mod:`.spec` are available here at once; the writer and reader (and h5py) load on first use.
"""

from __future__ import annotations

from .spec import *  # noqa: F403
from .spec import __all__ as _spec_all

_LAZY = {
    "StatsWriter": "writer",
    "load_stats": "reader",
    "describe_stats": "reader",
    "READERS": "reader",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asymrnr.formats.stats' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [*_spec_all, *_LAZY]
