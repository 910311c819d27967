"""Procedural videos for the micro video DiT: one coloured shape over a textured background.

Every video is described by a :class:`Scene` (the prompt's attributes plus the free, seeded layout
parameters) and rendered deterministically by :func:`render` to ``float32 [F, H, W, 3]`` in ``[0, 1]``.

Prompt grammar (all of it): ``"a {colour} {shape} {motion} over a {background} background"`` optionally
followed by ``", the camera pans left|right"``. A camera pan moves only the background; the object's motion
is what the viewer sees in the frame. Circles never "turn" (it would be invisible).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class VideoSpec:
    """Size of the procedural videos: ``height`` x ``width`` pixels, ``num_frames`` frames.

    Layout lengths (object size, travel, texture period, pan) are defined for 48 px and scale with
    :attr:`scale` (the shorter side over 48), so that a larger spec shows the same scenes in more pixels.
    """

    height: int
    width: int
    num_frames: int

    @property
    def scale(self) -> float:
        return min(self.height, self.width) / 48.0


#: The small micro model's videos (4 x 6 x 6 tokens) and the large one's (7 x 8 x 12 tokens).
SMALL = VideoSpec(48, 48, 13)
LARGE = VideoSpec(64, 96, 25)

HEIGHT = SMALL.height
WIDTH = SMALL.width
NUM_FRAMES = SMALL.num_frames

#: Saturated object colours (RGB in [0, 1]); backgrounds are low-saturation greys, so colour is a cue.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.80, 0.15),
    "blue": (0.15, 0.30, 0.98),
    "yellow": (0.96, 0.88, 0.10),
    "cyan": (0.10, 0.85, 0.92),
    "purple": (0.68, 0.15, 0.92),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
#: motion word -> phrase in the prompt
MOTIONS: dict[str, str] = {
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "turn": "turns around",
    "grow": "grows",
    "still": "stays still",
}
BACKGROUNDS: tuple[str, ...] = ("striped", "checkered", "grainy", "smooth")
CAMERAS: tuple[str | None, ...] = (None, "left", "right")

#: What the object's trajectory looks like for each motion (``turn`` stays in place).
TRAJECTORY: dict[str, str] = {
    "left": "left", "right": "right", "up": "up", "down": "down", "turn": "still", "grow": "grow", "still": "still",
}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    motion: str
    background: str
    camera: str | None = None
    # free layout parameters (not in the prompt)
    x0: float = 24.0  # start centre, pixels
    y0: float = 24.0
    size: float = 7.0  # half-size (radius), pixels
    travel: float = 20.0  # pixels moved over the clip
    bg_level: float = 0.35
    bg_contrast: float = 0.12
    bg_period: float = 8.0
    bg_angle: float = 0.0
    bg_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bg_seed: int = 0
    turn_total: float = math.pi / 2  # radians over the clip
    pan_total: float = 16.0  # pixels of background shift over the clip

    @property
    def prompt(self) -> str:
        return make_prompt(self.colour, self.shape, self.motion, self.background, self.camera)

    @property
    def trajectory(self) -> str:
        return TRAJECTORY[self.motion]


def make_prompt(colour: str, shape: str, motion: str, background: str, camera: str | None = None) -> str:
    text = f"a {colour} {shape} {MOTIONS[motion]} over a {background} background"
    if camera:
        text += f", the camera pans {camera}"
    return text


def all_attribute_tuples() -> list[tuple[str, str, str, str, str | None]]:
    """Every valid (colour, shape, motion, background, camera) of the grammar, in a fixed order."""
    out = []
    for c, s, m, b, cam in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS, CAMERAS):
        if s == "circle" and m == "turn":
            continue
        out.append((c, s, m, b, cam))
    return out


def split_prompts(num_heldout: int = 32, seed: int = 1234) -> tuple[list[tuple], list[tuple]]:
    """``(train, heldout)`` attribute tuples. Held-out prompts are never trained on; they are balanced over
    colours and trajectories (a fixed, seeded choice)."""
    tuples = all_attribute_tuples()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tuples))
    heldout: list[tuple] = []
    counts_c: dict[str, int] = {}
    counts_m: dict[str, int] = {}
    cap_c = math.ceil(num_heldout / len(COLOURS))
    cap_m = math.ceil(num_heldout / len(MOTIONS))
    for i in order:
        t = tuples[int(i)]
        if counts_c.get(t[0], 0) >= cap_c or counts_m.get(t[2], 0) >= cap_m:
            continue
        heldout.append(t)
        counts_c[t[0]] = counts_c.get(t[0], 0) + 1
        counts_m[t[2]] = counts_m.get(t[2], 0) + 1
        if len(heldout) == num_heldout:
            break
    held = set(heldout)
    train = [t for t in tuples if t not in held]
    return train, heldout


def random_scene(attrs: tuple, rng: np.random.Generator, spec: VideoSpec = SMALL) -> Scene:
    """A scene with the given prompt attributes and random (seeded) layout for videos of ``spec``.

    The random draws are the same for every spec (lengths are scaled, not redrawn), so a seed gives the
    same scene in every size."""
    colour, shape, motion, background, camera = attrs
    k = spec.scale
    size = float(rng.uniform(5.5, 8.0)) * k
    travel = float(rng.uniform(16.0, 24.0)) * k
    margin = size + 2.0 * k
    x0 = float(rng.uniform(margin, spec.width - margin))
    y0 = float(rng.uniform(margin, spec.height - margin))
    if motion == "grow":
        size = float(rng.uniform(4.5, 5.5)) * k
        margin = size * 2.2 + 1.0 * k
        x0 = float(rng.uniform(margin, spec.width - margin))
        y0 = float(rng.uniform(margin, spec.height - margin))
    elif motion in ("left", "right"):
        lo, hi = margin, spec.width - margin - travel
        x0 = float(rng.uniform(lo, hi)) if motion == "right" else float(rng.uniform(lo + travel, hi + travel))
    elif motion in ("up", "down"):
        lo, hi = margin, spec.height - margin - travel
        y0 = float(rng.uniform(lo, hi)) if motion == "down" else float(rng.uniform(lo + travel, hi + travel))
    tint = rng.uniform(-0.04, 0.04, size=3)
    return Scene(
        colour=colour, shape=shape, motion=motion, background=background, camera=camera,
        x0=x0, y0=y0, size=size, travel=travel,
        bg_level=float(rng.uniform(0.25, 0.5)), bg_contrast=float(rng.uniform(0.07, 0.14)),
        bg_period=float(rng.uniform(5.0, 12.0)) * k, bg_angle=float(rng.uniform(0, math.pi)),
        bg_tint=(float(tint[0]), float(tint[1]), float(tint[2])), bg_seed=int(rng.integers(0, 2**31 - 1)),
        turn_total=float(rng.uniform(0.5, 1.0) * math.pi), pan_total=float(rng.uniform(10.0, 20.0)) * k,
    )


_SS = 2  # supersampling factor (anti-aliased edges)


def _grid(spec: VideoSpec, ss: int = _SS) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(spec.height * ss) + 0.5) / ss
    xs = (np.arange(spec.width * ss) + 0.5) / ss
    return np.meshgrid(ys, xs, indexing="ij")


def _background(scene: Scene, yy: np.ndarray, xx: np.ndarray, shift: float, spec: VideoSpec = SMALL) -> np.ndarray:
    x = xx + shift  # camera pan: the world moves against the frame
    y = yy
    p, a = scene.bg_period, scene.bg_angle
    if scene.background == "striped":
        u = x * math.cos(a) + y * math.sin(a)
        tex = np.sign(np.sin(2 * math.pi * u / p))
    elif scene.background == "checkered":
        tex = np.sign(np.sin(math.pi * x / (p / 2)) * np.sin(math.pi * y / (p / 2)))
    elif scene.background == "grainy":
        # value noise on a coarse lattice (2 px at 48 px), seeded, sampled at world coordinates
        rng = np.random.default_rng(scene.bg_seed)
        cell = 2.0 * spec.scale
        pad = 32.0 * spec.scale  # room for the largest pan either way
        lat = rng.uniform(-1, 1, size=(int(spec.height / cell) + 4, int((spec.width + 2 * pad) / cell) + 4))
        iy = np.clip((y / cell).astype(int), 0, lat.shape[0] - 1)
        ix = np.clip(((x + pad) / cell).astype(int), 0, lat.shape[1] - 1)
        tex = lat[iy, ix]
    elif scene.background == "smooth":
        u = x * math.cos(a) + y * math.sin(a)
        tex = np.sin(2 * math.pi * u / (4 * p)) * 0.8 + 0.2 * np.sin(2 * math.pi * y / (3 * p))
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    grey = scene.bg_level + scene.bg_contrast * tex
    rgb = grey[..., None] + np.asarray(scene.bg_tint)[None, None, :]
    return rgb


def _shape_mask(shape: str, yy, xx, cx, cy, r, angle) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= r)
    if shape == "circle":
        return u * u + v * v <= (r * 1.12) ** 2  # about the square's area
    if shape == "triangle":
        # upright isosceles triangle, apex up, circumscribed in [-1.3r, 1.3r]
        h = 1.3 * r
        t = (v + h) / (2 * h)  # 0 at the apex (top), 1 at the base (v grows downward)
        return (t >= 0) & (t <= 1) & (np.abs(u) <= t * h)
    raise ValueError(f"unknown shape {shape!r}")


def object_state(scene: Scene, f: int, spec: VideoSpec = SMALL) -> tuple[float, float, float, float]:
    """(cx, cy, radius, angle) of the object in frame ``f`` of a ``spec`` video."""
    s = f / (spec.num_frames - 1)
    cx, cy, r, ang = scene.x0, scene.y0, scene.size, 0.0
    if scene.motion == "left":
        cx -= scene.travel * s
    elif scene.motion == "right":
        cx += scene.travel * s
    elif scene.motion == "up":
        cy -= scene.travel * s
    elif scene.motion == "down":
        cy += scene.travel * s
    elif scene.motion == "grow":
        r = scene.size * (1.0 + 1.2 * s)
    elif scene.motion == "turn":
        ang = scene.turn_total * s
    return cx, cy, r, ang


def render(scene: Scene, frames_idx=None, spec: VideoSpec = SMALL) -> np.ndarray:
    """The ``spec`` video of ``scene``: float32 ``[F, H, W, 3]`` in ``[0, 1]`` (only ``frames_idx`` if given)."""
    yy, xx = _grid(spec)
    colour = np.asarray(COLOURS[scene.colour])
    idx = list(range(spec.num_frames)) if frames_idx is None else list(frames_idx)
    frames = np.empty((len(idx), spec.height, spec.width, 3), dtype=np.float32)
    pan_sign = {None: 0.0, "left": -1.0, "right": 1.0}[scene.camera]
    for i, f in enumerate(idx):
        s = f / (spec.num_frames - 1)
        bg = _background(scene, yy, xx, shift=pan_sign * scene.pan_total * s, spec=spec)
        cx, cy, r, ang = object_state(scene, f, spec)
        m = _shape_mask(scene.shape, yy, xx, cx, cy, r, ang)[..., None]
        img = np.where(m, colour[None, None, :], bg)
        img = img.reshape(spec.height, _SS, spec.width, _SS, 3).mean(axis=(1, 3))
        frames[i] = np.clip(img, 0.0, 1.0)
    return frames


def render_batch(attrs_list, seed: int, frames_idx=None, spec: VideoSpec = SMALL) -> tuple[np.ndarray, list[Scene]]:
    """Render ``len(attrs_list)`` ``spec`` videos with layouts from ``seed``: ``[B, F, H, W, 3]`` and the scenes."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(tuple(a), rng, spec) for a in attrs_list]
    return np.stack([render(s, frames_idx, spec) for s in scenes]), scenes


__all__ = [
    "VideoSpec", "SMALL", "LARGE", "HEIGHT", "WIDTH", "NUM_FRAMES", "COLOURS", "SHAPES", "MOTIONS", "BACKGROUNDS", "CAMERAS", "TRAJECTORY",
    "Scene", "make_prompt", "all_attribute_tuples", "split_prompts", "random_scene", "render", "render_batch",
    "object_state",
]
