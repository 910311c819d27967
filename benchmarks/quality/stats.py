"""Means with 95 % bootstrap intervals over prompts, and paired differences between configurations.

Each configuration is scored per video (prompt x seed). A prompt's score is the mean over its seeds; the
interval resamples the prompts (the unit the claim is about: "on prompts like these"), 2,000 times, with a
fixed generator, and reports the 2.5 / 97.5 percentiles of the mean. A difference between two
configurations is resampled the same way, paired by prompt; it is *significant* when its interval
excludes 0.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def per_prompt(values: np.ndarray) -> np.ndarray:
    """``[prompts, seeds]`` -> ``[prompts]`` (mean over seeds)."""
    return np.asarray(values, dtype=np.float64).mean(axis=1)


def bootstrap_mean(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the mean over prompts of ``values [prompts, seeds]``."""
    p = per_prompt(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(RESAMPLES, len(p)))
    means = p[idx].mean(axis=1)
    return float(p.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_diff(a: np.ndarray, b: np.ndarray, seed: int = 1) -> tuple[float, float, float, bool]:
    """Paired difference ``mean(a) - mean(b)`` over prompts: ``(diff, lo, hi, significant)``."""
    d = per_prompt(a) - per_prompt(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(RESAMPLES, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
    return float(d.mean()), lo, hi, bool(lo > 0 or hi < 0)


def fmt(m: tuple[float, float, float], digits: int = 2, scale: float = 1.0) -> str:
    mean, lo, hi = (x * scale for x in m)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
