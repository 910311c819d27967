"""User-facing errors. Every message names the offending key or value and the fix."""


class AsymRnRError(Exception):
    """Base class of every error asymrnr raises for bad input or a mismatch."""


class ScheduleFormatError(AsymRnRError, ValueError):
    """A schedule file is corrupt, of an unknown version, or holds invalid values."""


class ScheduleMismatchError(AsymRnRError, ValueError):
    """A schedule does not fit the model, grid or sampler it is applied to."""


class RateError(AsymRnRError, ValueError):
    """A reduction rate given in code (``asymrnr.uniform(pipe, q=...)``) is not a number in ``[0, ceiling]``."""


class StatsFormatError(AsymRnRError, ValueError):
    """A statistics file is corrupt, truncated, of an unknown version, or not ours."""


class ModelNotFoundError(AsymRnRError):
    """A model preset's weights are not available locally."""
