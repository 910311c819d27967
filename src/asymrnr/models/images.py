"""Conditioning images for image-to-video calibration: read from a folder, or drawn deterministically.

* :func:`read_images`: every non-hidden file of a folder, sorted by name, one per prompt; a file that is
  not a readable image is refused, naming it.
* :func:`synthetic_image`: when no folder is given, each prompt gets a picture drawn from its seed and text
  (a smooth two-colour gradient with three coloured shapes, one blurred): the same prompt and seed always
  give the same picture, on any machine, so ``--resume`` and reruns see what the first run saw.
* :func:`fit_image`: centre-crop to the generation's aspect ratio, then resize to its size (the pipelines
  would otherwise stretch the picture to the requested size).

Importing this module is cheap (numpy and PIL are imported when called).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from asymrnr.errors import AsymRnRError


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The files of ``folder`` a calibration pairs with its prompts: every regular, non-hidden file, sorted
    by name (sub-folders and names starting with ``.`` are skipped)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        why = "does not exist" if not path.exists() else "is not a folder"
        raise AsymRnRError(f"--images {str(path)!r} {why}; pass a folder with one image per prompt")
    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise AsymRnRError(f"cannot list --images {str(path)!r}: {err}") from None
    return [p for p in entries if not p.name.startswith(".") and p.is_file()]


def open_image(path: Path):
    """The RGB picture in ``path`` (fully decoded now), or AsymRnRError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise AsymRnRError(
            f"cannot read {str(path)!r} as an image ({detail}); --images takes a folder holding only pictures "
            "(PNG, JPEG, WebP, ...), one per prompt"
        ) from None


def read_images(folder: str | os.PathLike, num_prompts: int, *, num_file_prompts: int | None = None) -> list[Path]:
    """The image files of ``folder`` paired with ``num_prompts`` prompts, checked readable.

    The folder must hold one image per prompt used, or one per prompt of the prompts file
    (``num_file_prompts``, when ``--num-prompts`` uses only the first ones: then the first images are
    taken). Raises AsymRnRError naming both counts, or the file that cannot be read."""
    files = image_files(folder)
    if len(files) != num_prompts and (num_file_prompts is None or len(files) != num_file_prompts):
        file_note = (f" (or {num_file_prompts}, one per prompt of the prompt set)"
                     if num_file_prompts not in (None, num_prompts) else "")
        raise AsymRnRError(
            f"--images {str(folder)!r} holds {len(files)} file(s) but {num_prompts} prompt(s) are used: give exactly "
            f"{num_prompts}{file_note} images, paired with the prompts by sorted file name"
        )
    files = files[:num_prompts]
    for f in files:
        open_image(f).close()
    return files


def _rng(seed: int, prompt: str):
    import numpy as np

    digest = hashlib.sha256(f"asymrnr-image\0{int(seed)}\0{prompt}".encode("utf-8", "surrogatepass")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def synthetic_image(height: int, width: int, seed: int, prompt: str = ""):
    """A deterministic RGB picture of ``height x width`` for a prompt and seed (PIL image).

    A smooth gradient between two colours at a random angle, a rectangle, a disc and a blurred blob in
    other colours, at positions and sizes drawn from a generator seeded by ``sha256(seed, prompt)``."""
    import numpy as np
    from PIL import Image

    rng = _rng(seed, prompt)
    h, w = int(height), int(width)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y /= max(h - 1, 1)
    x /= max(w - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    img = c0 + ramp[..., None] * (c1 - c0)
    # a rectangle
    rh, rw = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)
    ry, rx = rng.uniform(0, 1 - rh), rng.uniform(0, 1 - rw)
    inside = (y >= ry) & (y < ry + rh) & (x >= rx) & (x < rx + rw)
    img[inside] = rng.uniform(0, 255, size=3)
    # a disc (round in pixels)
    r = rng.uniform(0.08, 0.2) * min(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    disc = (y * (h - 1) - cy) ** 2 + (x * (w - 1) - cx) ** 2 <= r * r
    img[disc] = rng.uniform(0, 255, size=3)
    # a soft blob
    by, bx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15)
    weight = np.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * s * s))[..., None]
    img = img * (1 - weight) + rng.uniform(0, 255, size=3) * weight
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def fit_image(image: Any, height: int, width: int):
    """``image`` centre-cropped to the aspect ratio ``width : height`` and resized to ``width x height``."""
    from PIL import Image

    img = image.convert("RGB")
    w, h = img.size
    target = width / height
    if w / h > target:  # too wide: crop the sides
        new_w = max(1, round(h * target))
        left = (w - new_w) // 2
        img = img.crop((left, 0, left + new_w, h))
    elif w / h < target:  # too tall: crop top and bottom
        new_h = max(1, round(w / target))
        top = (h - new_h) // 2
        img = img.crop((0, top, w, top + new_h))
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return img


__all__ = ["image_files", "open_image", "read_images", "synthetic_image", "fit_image"]
