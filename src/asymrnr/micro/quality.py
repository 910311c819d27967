"""Frame metrics for the quality benchmark: per-frame PSNR and SSIM against a reference video.

They live in the family-free :mod:`asymrnr.quality` (``asymrnr compare`` uses them too); re-exported here."""

from __future__ import annotations

from asymrnr.quality import psnr_frames, ssim_frame, ssim_frames

__all__ = ["psnr_frames", "ssim_frame", "ssim_frames"]
