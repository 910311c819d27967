"""Tiny random-weight pipelines of every video family diffusers serves, for tests; fully offline.

One module per family builds a whole diffusers pipeline at a toy size with seeded random weights
(``build_tiny_<name>_pipeline(seed=0)``, in memory) and loads it the way users load real models
(``load_tiny_<name>_pipeline(torch_dtype=None)``: saved once under the asymrnr cache folder, ``$ASYMRNR_CACHE``,
then ``<Pipeline>.from_pretrained``). Each family's default call (size, frames, steps, guidance, text length)
and the token layout it gives are one :class:`TinyDefaults`; :data:`TINY_FAMILIES` lists them all:

=================  ===================================  ========================================================
name               pipeline                             module
=================  ===================================  ========================================================
``wan2.1-t2v``     ``WanPipeline``                      :mod:`~asymrnr.testing.tiny_wan`
``wan2.2-t2v``     ``WanPipeline`` (two experts)        :mod:`~asymrnr.testing.tiny_wan`
``wan2.1-i2v``     ``WanImageToVideoPipeline``          :mod:`~asymrnr.testing.tiny_wan` (needs ``ftfy``)
``hunyuanvideo``   ``HunyuanVideoPipeline``             :mod:`~asymrnr.testing.tiny_hunyuan`
``ltx-video``      ``LTXPipeline``                      :mod:`~asymrnr.testing.tiny_ltx`
``mochi-1``        ``MochiPipeline``                    :mod:`~asymrnr.testing.tiny_mochi`
``cogvideox-i2v``  ``CogVideoXImageToVideoPipeline``    :mod:`~asymrnr.testing.tiny_cogvideox_i2v`
=================  ===================================  ========================================================

CogVideoX text-to-video (2B, 5B, 1.5 styles) stays in :mod:`asymrnr.models.tiny`.
:mod:`asymrnr.testing.recorder` records every attention call of a pipeline run (shapes, masks, token layout,
CFG batching), as the tests use it. :mod:`asymrnr.testing.fullsize` builds random-weight transformers at
full size (CogVideoX-5B, Wan 2.1 T2V 14B) in seconds, with their 480p inputs, for the GPU tests and
``benchmarks/gpu_all.py`` (and tiny variants of the same path for CPU).

Importing this package is cheap (no torch, no diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ._common import TinyDefaults, default_cache_root, tiny_image
from .tiny_cogvideox_i2v import COGVIDEOX_I2V, build_tiny_cogvideox_i2v_pipeline, load_tiny_cogvideox_i2v_pipeline
from .tiny_hunyuan import HUNYUAN_T2V, TINY_HUNYUAN_PROMPT_TEMPLATE, build_tiny_hunyuan_pipeline, load_tiny_hunyuan_pipeline
from .tiny_ltx import LTX_T2V, build_tiny_ltx_pipeline, load_tiny_ltx_pipeline
from .tiny_mochi import MOCHI_T2V, build_tiny_mochi_pipeline, load_tiny_mochi_pipeline
from .tiny_wan import (
    WAN22_T2V,
    WAN_I2V,
    WAN_T2V,
    build_tiny_wan22_pipeline,
    build_tiny_wan_i2v_pipeline,
    build_tiny_wan_pipeline,
    load_tiny_wan22_pipeline,
    load_tiny_wan_i2v_pipeline,
    load_tiny_wan_pipeline,
)


@dataclass(frozen=True)
class TinyFamily:
    """One tiny family: its default call, its in-memory builder and its cached loader."""

    defaults: TinyDefaults
    build: Callable[..., Any]  # build(seed=0) -> pipeline
    load: Callable[..., Any]  # load(torch_dtype=None, *, seed=0, root=None) -> pipeline

    @property
    def name(self) -> str:
        return self.defaults.family


TINY_FAMILIES: dict[str, TinyFamily] = {
    f.name: f
    for f in (
        TinyFamily(WAN_T2V, build_tiny_wan_pipeline, load_tiny_wan_pipeline),
        TinyFamily(WAN22_T2V, build_tiny_wan22_pipeline, load_tiny_wan22_pipeline),
        TinyFamily(WAN_I2V, build_tiny_wan_i2v_pipeline, load_tiny_wan_i2v_pipeline),
        TinyFamily(HUNYUAN_T2V, build_tiny_hunyuan_pipeline, load_tiny_hunyuan_pipeline),
        TinyFamily(LTX_T2V, build_tiny_ltx_pipeline, load_tiny_ltx_pipeline),
        TinyFamily(MOCHI_T2V, build_tiny_mochi_pipeline, load_tiny_mochi_pipeline),
        TinyFamily(COGVIDEOX_I2V, build_tiny_cogvideox_i2v_pipeline, load_tiny_cogvideox_i2v_pipeline),
    )
}


def tiny_family(name: str) -> TinyFamily:
    """The tiny family called ``name`` (see :data:`TINY_FAMILIES`)."""
    try:
        return TINY_FAMILIES[name]
    except KeyError:
        from asymrnr.errors import AsymRnRError

        raise AsymRnRError(f"unknown tiny family {name!r}; use one of: {', '.join(TINY_FAMILIES)}") from None


__all__ = [
    "TinyDefaults",
    "TinyFamily",
    "TINY_FAMILIES",
    "tiny_family",
    "tiny_image",
    "default_cache_root",
    "TINY_HUNYUAN_PROMPT_TEMPLATE",
    "WAN_T2V",
    "WAN22_T2V",
    "WAN_I2V",
    "HUNYUAN_T2V",
    "LTX_T2V",
    "MOCHI_T2V",
    "COGVIDEOX_I2V",
    "build_tiny_wan_pipeline",
    "build_tiny_wan22_pipeline",
    "build_tiny_wan_i2v_pipeline",
    "build_tiny_hunyuan_pipeline",
    "build_tiny_ltx_pipeline",
    "build_tiny_mochi_pipeline",
    "build_tiny_cogvideox_i2v_pipeline",
    "load_tiny_wan_pipeline",
    "load_tiny_wan22_pipeline",
    "load_tiny_wan_i2v_pipeline",
    "load_tiny_hunyuan_pipeline",
    "load_tiny_ltx_pipeline",
    "load_tiny_mochi_pipeline",
    "load_tiny_cogvideox_i2v_pipeline",
]
