"""What a schedule or a statistics file was made for: model, sampler and matching (standard library only).

These three records appear in both file formats (the schedule's JSON, the statistics' HDF5 attributes),
so they live here, once. Each is a frozen dataclass validated field by field
(:mod:`asymrnr.formats.fields`); ``from_dict`` checks the keys, the constructor checks the values.
``upgrade_*_v1`` turn the version-1 records (one family only: an int ``patch_size`` plus ``patch_size_t``,
``text_first``) into these.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .. import vocab
from ..errors import ScheduleFormatError
from .fields import check_int, check_keys, got, json_copy, spec, to_json, validate_fields

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Block kind of every site of a family with one kind of self-attention block.
DEFAULT_BLOCK_KIND = "block"


@dataclass(frozen=True)
class ModelDescription:
    """The transformer's shape facts (see :mod:`asymrnr.archs`: each family's adapter makes these).

    ``num_blocks`` counts self-attention *sites* (one per block for every family we know; one family's
    dual- and single-stream blocks are sites of two kinds, named in ``block_kinds``). ``text_len`` counts
    the text tokens *inside* self-attention (0 for Wan and LTX, whose text goes through a separate
    cross-attention of ``cross_len`` context tokens).
    """

    family: str = spec("str", doc="the adapter's family name (asymrnr.archs.families())")
    transformer_class: str = spec("str", doc="the diffusers transformer class name")
    num_blocks: int = spec("int", minimum=1, maximum=100_000)
    num_heads: int = spec("int", minimum=1, maximum=100_000)
    head_dim: int = spec("int", minimum=1, maximum=100_000)
    patch_size: tuple = spec("ints", length=3, minimum=1, maximum=1024, doc="(frames, height, width) patch")
    rope: bool = spec("bool")
    latent_grid: tuple = spec("ints", length=3, minimum=1, maximum=1_000_000, doc="token grid it was made at")
    text_len: int = spec("int", minimum=0, maximum=1_000_000)
    text_layout: str = spec("str", choices=vocab.TEXT_LAYOUTS)
    ffn_dim: int = spec("int", minimum=1, maximum=10_000_000)
    cross_len: int = spec("int", default=0, minimum=0, maximum=1_000_000)
    block_kinds: tuple = spec("strs", default=(), doc="kind of every site; empty: all the family's one kind")

    def __post_init__(self) -> None:
        validate_fields(self, "model")
        if not _SLUG.match(self.family):
            raise ScheduleFormatError(
                f"model.family {self.family!r} is not a family name (lower-case letters, digits, '.', '_', '-')"
            )
        if self.block_kinds and len(self.block_kinds) != self.num_blocks:
            raise ScheduleFormatError(
                f"model.block_kinds has {len(self.block_kinds)} entries but model.num_blocks is {self.num_blocks}; "
                "give one kind per block, or none"
            )
        if (self.text_layout == "none") != (self.text_len == 0):
            raise ScheduleFormatError(
                f"model.text_layout is {self.text_layout!r} but model.text_len is {self.text_len}; text_layout "
                "'none' goes with text_len 0 (and 'first' / 'last' with text tokens)"
            )

    # ---- derived ------------------------------------------------------------------------------------
    @property
    def num_video_tokens(self) -> int:
        f, h, w = self.latent_grid
        return f * h * w

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def patch_size_t(self) -> int:
        return self.patch_size[0]

    @property
    def spatial_patch(self) -> int:
        return self.patch_size[1]

    @property
    def text_first(self) -> bool:
        return self.text_layout == "first"

    def kinds(self) -> tuple[str, ...]:
        """The kind of every site (``block_kinds``, or the one default kind)."""
        return self.block_kinds or (DEFAULT_BLOCK_KIND,) * self.num_blocks

    def architecture(self) -> dict:
        """The facts two models must share for a schedule of one to run on the other (not the grid)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("latent_grid", "text_len", "cross_len")}

    def to_dict(self) -> dict:
        return to_json(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "model", version: int = 2, fix: str = "") -> "ModelDescription":
        d = check_keys(d, cls, where, version=version, fix=fix or "re-save the file with asymrnr")
        return cls(**d)


@dataclass(frozen=True)
class SamplerDescription:
    """The denoising loop a schedule indexes: step ``k`` is the k-th denoising step (0-based).

    ``config`` holds the scheduler settings that change the timesteps or the noise levels (a schedule is
    refused on a sampler whose settings differ). ``transformers`` names the pipeline's transformer
    components (Wan 2.2: ``transformer`` and ``transformer_2``) and ``step_transformer`` which of them runs
    each step (``None``: the first one runs every step).
    """

    scheduler_class: str | None = spec("str", nullable=True)
    num_steps: int = spec("int", minimum=1, maximum=100_000)
    timesteps: tuple | None = spec("floats", nullable=True)
    config: dict = spec("json", default={})
    transformers: tuple = spec("strs", default=("transformer",))
    step_transformer: tuple | None = spec("ints", default=None, nullable=True, minimum=0, maximum=64)

    def __post_init__(self) -> None:
        validate_fields(self, "sampler")
        if self.timesteps is not None and len(self.timesteps) != self.num_steps:
            raise ScheduleFormatError(
                f"sampler.timesteps has {len(self.timesteps)} entries but sampler.num_steps is {self.num_steps}; "
                "they must agree (one timestep per denoising step), or set sampler.timesteps to null"
            )
        if not self.transformers or len(set(self.transformers)) != len(self.transformers):
            raise ScheduleFormatError(f"sampler.transformers must name each transformer component once, got {self.transformers}")
        if self.step_transformer is not None:
            if len(self.step_transformer) != self.num_steps:
                raise ScheduleFormatError(
                    f"sampler.step_transformer has {len(self.step_transformer)} entries but sampler.num_steps is "
                    f"{self.num_steps}; give the transformer of every step"
                )
            bad = [i for i in self.step_transformer if i >= len(self.transformers)]
            if bad:
                raise ScheduleFormatError(
                    f"sampler.step_transformer holds {bad[0]}, but sampler.transformers has only "
                    f"{len(self.transformers)} entries ({', '.join(self.transformers)})"
                )

    def transformer_of_step(self, step: int) -> str:
        idx = 0 if self.step_transformer is None else self.step_transformer[step]
        return self.transformers[idx]

    def steps_of(self, transformer: str) -> tuple[int, ...]:
        """The steps ``transformer`` runs."""
        return tuple(k for k in range(self.num_steps) if self.transformer_of_step(k) == transformer)

    def to_dict(self) -> dict:
        return to_json(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "sampler", version: int = 2, fix: str = "") -> "SamplerDescription":
        d = check_keys(d, cls, where, version=version, fix=fix or "re-save the file with asymrnr")
        return cls(**d)


@dataclass(frozen=True)
class MatchingSettings:
    """How tokens are matched: similarity metric, 3D destination stride, partition, cache, reduction."""

    metric: str = spec("str", default=vocab.DEFAULT_METRIC, choices=vocab.METRICS)
    stride: tuple = spec("ints", default=vocab.DEFAULT_STRIDE, length=3, minimum=1, maximum=1024)
    cache_steps: int = spec("int", default=vocab.DEFAULT_CACHE_STEPS, minimum=1, maximum=100_000)
    reduce_op: str = spec("str", default="discard", choices=vocab.REDUCE_OPS)
    granularity: str = spec("str", default=vocab.DEFAULT_GRANULARITY, choices=vocab.GRANULARITIES)
    seed: int = spec("int", default=0, minimum=0, maximum=(1 << 63) - 1)
    partition: str = spec("str", default=vocab.DEFAULT_PARTITION_MODE, choices=vocab.PARTITION_MODES)

    def __post_init__(self) -> None:
        validate_fields(self, "matching")

    def to_dict(self) -> dict:
        return to_json(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "matching", version: int = 2, fix: str = "") -> "MatchingSettings":
        d = check_keys(d, cls, where, version=version, fix=fix or "re-save the file with asymrnr")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Version 1 records (one family only: archs.VERSION_1_FAMILY) -> version 2
# --------------------------------------------------------------------------------------------------

V1_MODEL_KEYS = ("transformer_class", "num_blocks", "num_heads", "head_dim", "patch_size", "patch_size_t", "rope",
                 "latent_grid", "text_len", "ffn_dim", "text_first")
V1_MATCHING_KEYS = ("metric", "stride", "cache_steps", "reduce_op", "granularity", "seed")


def upgrade_model_v1(d: Any, where: str = "model") -> dict:
    """A version-1 model record as a version-2 one (the v1 format described one family only)."""
    if not isinstance(d, Mapping):
        raise ScheduleFormatError(f"{where} must be a JSON object, got {type(d).__name__}")
    out = dict(d)
    spatial = out.pop("patch_size", None)
    temporal = out.pop("patch_size_t", None)
    text_first = out.pop("text_first", True)
    # checked here, under their version-1 key paths (the version-2 check would name model.patch_size[1])
    spatial = check_int(spatial, f"{where}.patch_size (a version 1 file's spatial patch)", minimum=1, maximum=1024)
    temporal = check_int(temporal, f"{where}.patch_size_t (a version 1 file's temporal patch)", minimum=1, maximum=1024)
    if not isinstance(text_first, bool):
        raise ScheduleFormatError(f"{where}.text_first must be true or false, {got(text_first)}")
    out["patch_size"] = [temporal, spatial, spatial]
    from ..archs import VERSION_1_FAMILY  # the family is a fact of the adapters, not of the format

    out["family"] = VERSION_1_FAMILY
    text_len = out.get("text_len")
    out["text_layout"] = ("first" if text_first else "last") if text_len else "none"
    return out


def upgrade_matching_v1(d: Any) -> dict:
    """Version-1 matching settings: one fixed partition per (block, feature)."""
    if not isinstance(d, Mapping):
        return d
    return {**d, "partition": "fixed"}


def replace(obj, **changes):
    """``dataclasses.replace`` for these records (validates the result)."""
    return dataclasses.replace(obj, **changes)


__all__ = [
    "ModelDescription", "SamplerDescription", "MatchingSettings", "DEFAULT_BLOCK_KIND", "V1_MODEL_KEYS",
    "V1_MATCHING_KEYS", "upgrade_model_v1", "upgrade_matching_v1", "json_copy",
]
