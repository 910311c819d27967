"""Analytic checker of generated micro videos: does the video show the prompted colour, shape and motion?

For each palette colour, a pixel belongs to it when its RGB distance to the colour is below ``threshold``
and it is saturated (backgrounds are low-saturation greys). The predicted colour is the one with the most
such pixels over the video. Its mask gives, per frame, the object's area and centroid; the trajectory is
classified from the centroid displacement and the area growth between the first and last frames:
``left`` / ``right`` / ``up`` / ``down`` (displacement above ``move_px`` along the dominant axis), ``grow``
(area ratio above ``grow_ratio``), else ``still`` (a turning object stays in place, so ``turns`` prompts
expect ``still``). The shape is read from the fill ratio of the mask in its bounding box (square ~1,
circle ~0.8, triangle ~0.5) on the first frames, where no object is rotated yet.

A video is *correct* when colour and trajectory match the prompt (the benchmark's criterion); the shape is
reported separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from asymrnr.micro import data as D

_PALETTE_NAMES = tuple(D.COLOURS)
_PALETTE = np.asarray([D.COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class CheckResult:
    colour: str | None
    trajectory: str | None
    shape: str | None
    dx: float
    dy: float
    area_ratio: float
    pixels: int

    def to_dict(self) -> dict:
        return asdict(self)


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes of a grammar prompt: colour, shape, motion, trajectory, background, camera."""
    words = prompt.replace(",", " ").split()
    if len(words) < 4 or words[0] != "a":
        raise ValueError(f"not a micro prompt: {prompt!r}")
    colour, shape = words[1], words[2]
    motion = next(m for m, phrase in D.MOTIONS.items() if f" {phrase} " in f" {prompt} ")
    bg = words[words.index("background") - 1]
    cam = words[-1] if "pans" in words else None
    return {"colour": colour, "shape": shape, "motion": motion, "trajectory": D.TRAJECTORY[motion],
            "background": bg, "camera": cam}


def _as_float_video(video) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4:
        raise ValueError(f"expected a video [F, H, W, 3], got shape {v.shape}")
    if v.shape[-1] != 3 and v.shape[1] == 3:  # [F, 3, H, W]
        v = v.transpose(0, 2, 3, 1)
    v = v.astype(np.float32)
    if v.max() > 1.5:
        v = v / 255.0
    return v


def colour_masks(video: np.ndarray, threshold: float = 0.32) -> np.ndarray:
    """Boolean masks ``[K, F, H, W]`` of each palette colour."""
    v = _as_float_video(video)
    sat = v.max(-1) - v.min(-1)
    d = np.linalg.norm(v[None] - _PALETTE[:, None, None, None, :], axis=-1)  # [K, F, H, W]
    nearest = d.argmin(0)
    masks = (d < threshold) & (sat[None] > 0.35) & (nearest[None] == np.arange(len(_PALETTE))[:, None, None, None])
    return masks


def check_video(video, *, threshold: float = 0.32, move_px: float | None = None, grow_ratio: float = 1.6,
                min_pixels: int | None = None) -> CheckResult:
    """Classify the colour, trajectory and shape of the object in ``video`` (``[F, H, W, 3]``, 0-1 or 0-255).

    ``move_px`` (default 8) and ``min_pixels`` (default 6) are for 48 px videos; by default they scale with
    the video's shorter side (linearly and quadratically), as the scenes of :class:`~asymrnr.micro.data.VideoSpec` do.
    """
    v = _as_float_video(video)
    k = min(v.shape[1], v.shape[2]) / 48.0
    move_px = 8.0 * k if move_px is None else move_px
    min_pixels = int(round(6 * k * k)) if min_pixels is None else min_pixels
    masks = colour_masks(v, threshold)
    counts = masks.reshape(len(_PALETTE), -1).sum(1)
    k = int(counts.argmax())
    if counts[k] < min_pixels * v.shape[0]:
        return CheckResult(None, None, None, 0.0, 0.0, 1.0, int(counts[k]))
    m = masks[k]  # [F, H, W]
    # keep the largest blob's colour only: frames where the object is (nearly) absent are skipped
    areas = m.reshape(m.shape[0], -1).sum(1).astype(np.float64)
    ok = areas >= min_pixels
    ys, xs = np.mgrid[: v.shape[1], : v.shape[2]]
    cx = np.where(ok, (m * xs).reshape(m.shape[0], -1).sum(1) / np.maximum(areas, 1), np.nan)
    cy = np.where(ok, (m * ys).reshape(m.shape[0], -1).sum(1) / np.maximum(areas, 1), np.nan)
    idx = np.flatnonzero(ok)
    if len(idx) < 2:
        return CheckResult(_PALETTE_NAMES[k], None, None, 0.0, 0.0, 1.0, int(counts[k]))
    n = max(1, len(idx) // 4)
    first, last = idx[:n], idx[-n:]
    dx = float(np.mean(cx[last]) - np.mean(cx[first]))
    dy = float(np.mean(cy[last]) - np.mean(cy[first]))
    ratio = float(np.mean(areas[last]) / max(np.mean(areas[first]), 1.0))
    if max(abs(dx), abs(dy)) > move_px:
        traj = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    elif ratio > grow_ratio:
        traj = "grow"
    else:
        traj = "still"
    # shape from the fill ratio of the bounding box, on the first valid frame
    fills = []
    for f in first:
        yy, xx = np.nonzero(m[f])
        box = (yy.max() - yy.min() + 1) * (xx.max() - xx.min() + 1)
        fills.append(len(yy) / box)
    fill = float(np.median(fills))
    shape = "square" if fill > 0.88 else ("circle" if fill > 0.66 else "triangle")
    return CheckResult(_PALETTE_NAMES[k], traj, shape, dx, dy, ratio, int(counts[k]))


def score(video, prompt: str, **kw) -> dict:
    """Check ``video`` against ``prompt``: the checker's reading and booleans ``colour_ok``, ``motion_ok``,
    ``shape_ok``, ``correct`` (colour and motion)."""
    want = parse_prompt(prompt)
    got = check_video(video, **kw)
    colour_ok = got.colour == want["colour"]
    motion_ok = got.trajectory == want["trajectory"]
    return {**got.to_dict(), "colour_ok": colour_ok, "motion_ok": motion_ok, "shape_ok": got.shape == want["shape"],
            "correct": bool(colour_ok and motion_ok)}


__all__ = ["CheckResult", "parse_prompt", "colour_masks", "check_video", "score"]
