"""Video quality against a reference: per-frame PSNR and SSIM, and the similarity of final latents.

Family-free and torch-free (numpy and scipy); used by ``asymrnr compare`` and the micro models' quality
benchmark (:mod:`asymrnr.micro.quality` re-exports the frame metrics).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def psnr_frames(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0,
                max_db: float | None = 100.0) -> np.ndarray:
    """PSNR in dB of every frame of ``[..., F, H, W, C]`` arrays in ``[0, data_range]``.

    Identical frames give ``max_db`` (100 dB by default, so that means stay finite), or ``inf`` with
    ``max_db=None``."""
    v = np.asarray(video, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    mse = ((v - r) ** 2).mean(axis=(-3, -2, -1))
    if max_db is None:
        with np.errstate(divide="ignore"):
            return np.where(mse > 0, 10.0 * np.log10(data_range**2 / np.where(mse > 0, mse, 1.0)), np.inf)
    out = 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-10))
    return np.minimum(out, max_db)


def ssim_frame(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """SSIM of one ``[H, W, C]`` frame pair (Gaussian window, sigma 1.5; channels averaged)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(a.shape[-1]):
        x = a[..., ch].astype(np.float64)
        y = b[..., ch].astype(np.float64)
        mx, my = gaussian_filter(x, sigma), gaussian_filter(y, sigma)
        sxx = gaussian_filter(x * x, sigma) - mx * mx
        syy = gaussian_filter(y * y, sigma) - my * my
        sxy = gaussian_filter(x * y, sigma) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def ssim_frames(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """SSIM of every frame of ``[..., F, H, W, C]`` arrays."""
    v = np.asarray(video)
    r = np.asarray(reference)
    flat_v = v.reshape(-1, *v.shape[-3:])
    flat_r = r.reshape(-1, *r.shape[-3:])
    out = np.array([ssim_frame(x, y, data_range) for x, y in zip(flat_v, flat_r)])
    return out.reshape(v.shape[:-3])


def latent_similarity(latents: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``(cosine similarity, relative L2 error)`` of two latents of any equal shape, flattened, in float64.

    Relative L2 is ``||latents - reference|| / ||reference||``; identical latents give ``(1.0, 0.0)``
    exactly."""
    a = np.asarray(latents, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"latents of shape {np.shape(latents)} and {np.shape(reference)} cannot be compared")
    if np.array_equal(a, b):
        return 1.0, 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")
    rel = float(np.linalg.norm(a - b) / nb) if nb > 0 else float("inf")
    return cos, rel


__all__ = ["psnr_frames", "ssim_frame", "ssim_frames", "latent_similarity"]
