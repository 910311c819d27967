"""Compatibility name of :mod:`asymrnr.formats.schedule` (the schedule file format).

``from asymrnr.schedule_format import Schedule, load_schedule, ModelDescription, ...`` keeps working;
new code imports from :mod:`asymrnr.formats.schedule` (the file) and :mod:`asymrnr.formats.descriptions`
(the model, sampler and matching records).
"""

from __future__ import annotations

from .formats.schedule import *  # noqa: F401,F403
from .formats.schedule import __all__ as _schedule_all

__all__ = list(_schedule_all)
