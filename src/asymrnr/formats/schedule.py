"""The schedule file: which fraction of video tokens to drop, per feature, block and denoising step.

This module owns the JSON schedule format (spec: ``docs/schedule-format.md``). It imports neither torch
nor diffusers (nor numpy): reading a schedule is cheap and works anywhere. The heavy imports happen
lazily inside :meth:`Schedule.uniform` and :func:`environment_provenance`, which need a live model.

Layout of a file (version 2)::

    {"format": "asymrnr-schedule", "version": 2, "tag": "...",
     "model": {...}, "sampler": {...}, "matching": {...},          # asymrnr.formats.descriptions
     "rates": {"q": [[...], ...], "kv": [[...], ...], "h": [[...], ...]},   # [num_blocks][num_steps]
     "provenance": {"tool_version": "...", "created": "...Z", "notes": "...", ...}}

Reading dispatches on ``version`` through :data:`READERS`; version 1 files (one family only) are upgraded
in memory. Saving always writes :data:`FORMAT_VERSION`. The records are validated field by field by
their dataclasses (:mod:`asymrnr.formats.fields`), once, when they are built; every error is a
:class:`~asymrnr.errors.ScheduleFormatError` whose message names the key path (``rates.q[3][7]``) and
the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import vocab
from .._io import atomic_write_text
from ..errors import ScheduleFormatError, ScheduleMismatchError
from .descriptions import (
    V1_MATCHING_KEYS,
    V1_MODEL_KEYS,
    MatchingSettings,
    ModelDescription,
    SamplerDescription,
    upgrade_matching_v1,
    upgrade_model_v1,
)
from .fields import (
    FieldSpec,
    as_sequence,
    check_int,
    check_key_names,
    got,
    nonfinite_name,
    parse_json_int,
    validate_fields,
)

logger = logging.getLogger(__name__)

FORMAT_NAME = "asymrnr-schedule"
#: The version this release writes.
FORMAT_VERSION = 2
#: A schedule file larger than this is refused before it is read (a real one is a few hundred KiB).
MAX_FILE_BYTES = 64 * 1024 * 1024

SCHEDULE_FEATURES = vocab.SCHEDULE_FEATURES
METRICS = vocab.METRICS
REDUCE_OPS = vocab.REDUCE_OPS
GRANULARITIES = vocab.GRANULARITIES
PARTITION_MODES = vocab.PARTITION_MODES

ROOT_KEYS = ("format", "version", "tag", "model", "sampler", "matching", "rates", "provenance")
_REQUIRED_ROOT = ("format", "version", "model", "sampler", "matching", "rates")
_OPTIONAL_ROOT = ("tag", "provenance")
#: Version-1 sampler keys (version 2 added ``config``, ``transformers``, ``step_transformer``).
V1_SAMPLER_KEYS = ("scheduler_class", "num_steps", "timesteps")
#: Provenance keys asymrnr writes; each is a string when present (the ``_NULLABLE`` ones may be null).
PROVENANCE_STRING_KEYS = ("tool_version", "created", "notes", "model_id", "dtype", "torch_version",
                          "diffusers_version")
_PROVENANCE_NULLABLE = ("model_id", "dtype", "torch_version", "diffusers_version")

_FIX_RESAVE = "re-save the schedule with asymrnr or re-run `asymrnr-calibrate`"


class ScheduleNotFoundError(ScheduleFormatError, FileNotFoundError):
    """The schedule file does not exist (also a FileNotFoundError, for ``except OSError`` callers)."""


def _fail(message: str) -> None:
    raise ScheduleFormatError(message)


# --------------------------------------------------------------------------------------------------
# Rates and provenance
# --------------------------------------------------------------------------------------------------


def _check_feature(feature: Any, where: str = "feature") -> str:
    if not isinstance(feature, str) or feature not in SCHEDULE_FEATURES:
        _fail(f"unknown {where} {feature!r}; schedule features are {', '.join(SCHEDULE_FEATURES)}")
    return feature


def _validated_rate_table(value: Any, where: str, num_blocks: int, num_steps: int) -> tuple:
    rows = as_sequence(value, where)
    if len(rows) != num_blocks:
        _fail(
            f"{where} has {len(rows)} rows but model.num_blocks is {num_blocks}; rates are "
            f"[num_blocks][num_steps] = [{num_blocks}][{num_steps}]: {_FIX_RESAVE} for this model"
        )
    table = []
    for b, row in enumerate(rows):
        cells = as_sequence(row, f"{where}[{b}]")
        if len(cells) != num_steps:
            _fail(
                f"{where}[{b}] (block {b}) has {len(cells)} entries but sampler.num_steps is {num_steps}; "
                "give one rate per denoising step"
            )
        out = []
        for s, r in enumerate(cells):
            if isinstance(r, bool) or not isinstance(r, numbers.Real):
                _fail(f"{where}[{b}][{s}] (block {b}, step {s}) must be a number in [0, 1), {got(r)}")
            try:
                r = float(r)
            except OverflowError:
                _fail(f"{where}[{b}][{s}] (block {b}, step {s}) must be a number in [0, 1), {got(r)}")
            if not math.isfinite(r):
                _fail(
                    f"{where}[{b}][{s}] (block {b}, step {s}) is {nonfinite_name(r)}; a rate must be a finite "
                    "number in [0, 1) (0 = no reduction)"
                )
            if not 0.0 <= r < 1.0:
                _fail(
                    f"{where}[{b}][{s}] (block {b}, step {s}) = {r!r} is outside [0, 1); a rate is the fraction of "
                    "all video tokens dropped: use a value in [0, 1) (0 = no reduction; the runtime also rejects "
                    "rates above N_src/N_video, 0.887 at stride (2, 2, 2) on a 13x30x45 grid)"
                )
            out.append(r)
        table.append(tuple(out))
    return tuple(table)


def _validated_rates(rates: Any, num_blocks: int, num_steps: int, where: str = "rates") -> dict:
    if not isinstance(rates, Mapping):
        _fail(f"{where} must be a JSON object, {got(rates)}; {_FIX_RESAVE}")
    for key in SCHEDULE_FEATURES:
        if key not in rates:
            _fail(
                f"missing key '{where}.{key}'; rates must hold {', '.join(SCHEDULE_FEATURES)} "
                "(use all zeros for a feature that is not reduced)"
            )
    for key in rates:
        if key not in SCHEDULE_FEATURES:
            _fail(f"unknown key '{where}.{str(key)[:60]}'; schedule features are {', '.join(SCHEDULE_FEATURES)}")
    out = {f: _validated_rate_table(rates[f], f"{where}.{f}", num_blocks, num_steps) for f in SCHEDULE_FEATURES}
    for b, (h_row, q_row, kv_row) in enumerate(zip(out["h"], out["q"], out["kv"])):
        for s, (h, q, kv) in enumerate(zip(h_row, q_row, kv_row)):
            clash = vocab.exclusive_violation(h, q, kv)
            if clash is not None:
                _fail(
                    f"{where}.h[{b}][{s}] = {h!r} and {where}.{clash}[{b}][{s}] = {out[clash][b][s]!r} are both "
                    f"non-zero (block {b}, step {s}); a (block, step) cell runs either SymRnR (h) or AsymRnR "
                    "(q/kv), not both: set one of them to 0"
                )
    return out


def new_provenance(notes: str = "", **extra: Any) -> dict:
    """``{"tool_version", "created", "notes", **extra}`` for a schedule made now."""
    from .. import __version__

    prov = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notes": notes,
    }
    prov.update(extra)
    return prov


def _check_provenance_keys(prov: Mapping, where: str = "provenance") -> None:
    for key in PROVENANCE_STRING_KEYS:
        if key in prov:
            value = prov[key]
            if value is None and key in _PROVENANCE_NULLABLE:
                continue
            if not isinstance(value, str):
                null = " or null" if key in _PROVENANCE_NULLABLE else ""
                _fail(f"{where}.{key} must be a string{null}, {got(value)}")


def _components(pipe_or_transformer: Any) -> tuple[Any, Any]:
    """``(pipeline or None, transformer)``; a pipeline has a ``scheduler`` and a transformer component."""
    obj = pipe_or_transformer
    if hasattr(obj, "scheduler") and (hasattr(obj, "transformer") or hasattr(obj, "transformer_2")):
        transformer = getattr(obj, "transformer", None)
        if transformer is None:
            transformer = getattr(obj, "transformer_2", None)
        if transformer is None:
            raise ScheduleMismatchError("the pipeline has no transformer (pipe.transformer is None)")
        return obj, transformer
    return None, obj


def _name_or_path(obj: Any) -> str | None:
    inner = getattr(obj, "_orig_mod", obj)
    config = getattr(inner, "config", None)
    candidates = []
    if isinstance(config, Mapping):
        candidates.append(config.get("_name_or_path"))
    candidates += [getattr(config, "_name_or_path", None), getattr(inner, "name_or_path", None)]
    for value in candidates:
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
    return None


def _parameter_dtype(transformer: Any) -> str | None:
    """The dtype holding most of the transformer's floating-point parameters, e.g. ``bfloat16``."""
    inner = getattr(transformer, "_orig_mod", transformer)
    parameters = getattr(inner, "parameters", None)
    if not callable(parameters):
        return None
    counts: dict[str, int] = {}
    try:
        for p in parameters():
            if getattr(p.dtype, "is_floating_point", False):
                name = str(p.dtype).removeprefix("torch.")
                counts[name] = counts.get(name, 0) + int(p.numel())
    except Exception:  # pragma: no cover - exotic modules
        return None
    return max(counts, key=counts.get) if counts else None


def _module_version(name: str) -> str | None:
    import importlib

    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return None


def environment_provenance(pipe_or_transformer: Any) -> dict:
    """What a schedule made from this pipeline or transformer records about it and the software.

    ``{"tool_version", "model_id", "dtype", "torch_version", "diffusers_version"}``: ``model_id`` is the
    pipeline's (else the transformer's) ``config._name_or_path`` / ``name_or_path`` (null for a model
    built in code), ``dtype`` the dtype of most of the transformer's parameters. Merge it into a new
    provenance: ``{**new_provenance(notes, source=...), **environment_provenance(pipe)}``.
    """
    from .. import __version__

    pipe, transformer = _components(pipe_or_transformer)
    model_id = (_name_or_path(pipe) if pipe is not None else None) or _name_or_path(transformer)
    return {
        "tool_version": __version__,
        "model_id": model_id,
        "dtype": _parameter_dtype(transformer),
        "torch_version": _module_version("torch"),
        "diffusers_version": _module_version("diffusers"),
    }


# --------------------------------------------------------------------------------------------------
# Tag
# --------------------------------------------------------------------------------------------------


def _family_slug(family: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", family.lower()).strip("-") or "model"


def _class_slug(transformer_class: str) -> str:
    """The version-1 tag's model part: the class name in lower case without ``Transformer...``."""
    name = transformer_class.lower()
    slug = re.sub(r"transformer.*$", "", name)
    slug = re.sub(r"[^a-z0-9]+", "", slug) or re.sub(r"[^a-z0-9]+", "", name)
    return slug[:16] or "model"


def _percent(x: float) -> int:
    return int(math.floor(x * 100.0 + 0.5))


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _make_tag(name: str, content: dict, rates: Mapping, num_blocks: int, num_steps: int, cache_steps: int) -> str:
    digest = hashlib.sha256(_canonical_json(content).encode("ascii")).hexdigest()[:6]
    cells = num_blocks * num_steps
    mean = {f: math.fsum(r for row in rates[f] for r in row) / cells for f in SCHEDULE_FEATURES}
    parts = [name, f"L{num_blocks}", f"q{_percent(mean['q']):02d}", f"kv{_percent(mean['kv']):02d}"]
    if any(r > 0.0 for row in rates["h"] for r in row):
        parts.append(f"h{_percent(mean['h']):02d}")
    parts += [f"s{cache_steps}", f"n{num_steps}", digest]
    return "-".join(parts)


def _rates_as_lists(rates: Mapping) -> dict:
    return {f: [list(row) for row in rates[f]] for f in SCHEDULE_FEATURES}


def _v1_tag(schedule: "Schedule", text_first: bool) -> str:
    """The tag version 1 gave this content (its model, sampler and matching records as version 1 wrote them)."""
    m, smp = schedule.model, schedule.sampler
    model = {
        "transformer_class": m.transformer_class, "num_blocks": m.num_blocks, "num_heads": m.num_heads,
        "head_dim": m.head_dim, "patch_size": m.patch_size[1], "patch_size_t": m.patch_size[0], "rope": m.rope,
        "latent_grid": list(m.latent_grid), "text_len": m.text_len, "ffn_dim": m.ffn_dim, "text_first": text_first,
    }
    sampler = {"scheduler_class": smp.scheduler_class, "num_steps": smp.num_steps,
               "timesteps": None if smp.timesteps is None else list(smp.timesteps)}
    matching = {k: v for k, v in schedule.matching.to_dict().items() if k in V1_MATCHING_KEYS}
    content = {"model": model, "sampler": sampler, "matching": matching, "rates": _rates_as_lists(schedule.rates)}
    return _make_tag(_class_slug(m.transformer_class), content, schedule.rates, m.num_blocks, smp.num_steps,
                     schedule.matching.cache_steps)


def _check_stored_tag(d: Mapping, computed: str, using: str) -> None:
    """Warn when the stored tag is not ``computed`` (the tag of the file's version); ``using``: the tag now."""
    if "tag" not in d:
        return
    stored = d["tag"]
    if not isinstance(stored, str):
        _fail(f"tag must be a string, {got(stored)}; {_FIX_RESAVE}")
    if stored != computed:
        logger.warning(
            "schedule tag %r does not match its content (recomputed %r): the rates or settings were edited "
            "after saving; using %r",
            stored[:200],
            computed,
            using,
        )


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """Per-(feature, block, step) reduction rates for one model and sampler.

    ``rates[feature][block][step]`` is the fraction of **all video tokens** dropped for that feature
    (``n_r = floor(r * N_video)``); features are ``q``, ``kv`` (AsymRnR) and ``h`` (SymRnR). Steps are
    0-based denoising steps, indices into ``sampler.timesteps``; with ``sampler.step_transformer`` set
    (Wan 2.2's two experts), row ``b`` at step ``k`` applies to block ``b`` of the transformer that runs
    step ``k``. Construction validates everything (once) and normalises rates (nested lists or numpy
    arrays) to tuples of tuples of python floats.
    """

    model: ModelDescription
    sampler: SamplerDescription
    matching: MatchingSettings
    rates: dict
    provenance: dict = dataclasses.field(
        default_factory=new_provenance,
        metadata={"asymrnr": FieldSpec("json", doc="free metadata; never hashed into the tag")},
    )

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelDescription), ("sampler", SamplerDescription), ("matching", MatchingSettings)):
            if not isinstance(getattr(self, name), cls):
                _fail(f"Schedule.{name} must be a {cls.__name__}, {got(getattr(self, name))}")
        self.rates = _validated_rates(self.rates, self.model.num_blocks, self.sampler.num_steps)
        validate_fields(self, "")  # provenance: a JSON object (copied)
        _check_provenance_keys(self.provenance)

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    @property
    def num_steps(self) -> int:
        return self.sampler.num_steps

    def rate(self, feature: str, block: int, step: int) -> float:
        """Rate of ``feature`` at ``block`` and 0-based ``step``."""
        table = self.rates.get(feature) if isinstance(feature, str) else None
        if table is None:
            _check_feature(feature)
        if not 0 <= block < self.model.num_blocks:
            raise ScheduleMismatchError(
                f"block {block} is out of range: the schedule has {self.model.num_blocks} blocks "
                f"(0..{self.model.num_blocks - 1})"
            )
        if not 0 <= step < self.sampler.num_steps:
            raise ScheduleMismatchError(
                f"step {step} is out of range: the schedule has {self.sampler.num_steps} steps "
                f"(0..{self.sampler.num_steps - 1}); make one for this step count with `asymrnr-calibrate` "
                "or Schedule.uniform(...)"
            )
        return table[block][step]

    def mean_rate(self, feature: str) -> float:
        """Mean rate of ``feature`` over all (block, step) cells."""
        _check_feature(feature)
        table = self.rates[feature]
        return math.fsum(r for row in table for r in row) / (self.model.num_blocks * self.sampler.num_steps)

    @property
    def tag(self) -> str:
        """Short canonical tag, deterministic from content (never from provenance); safe in file names.

        ``{family}-L{blocks}-q{mean q %}-kv{mean kv %}[-h{mean h %}]-s{cache_steps}-n{num_steps}-{hash6}``,
        e.g. ``wan-L30-q18-kv09-s4-n50-1a2b3c``; ``hash6`` is the first 6 hex digits of the SHA-256
        of the canonical JSON of model, sampler, matching and rates. ``-h..`` appears only when some
        ``h`` rate is non-zero.
        """
        content = {
            "model": self.model.to_dict(),
            "sampler": self.sampler.to_dict(),
            "matching": self.matching.to_dict(),
            "rates": _rates_as_lists(self.rates),
        }
        return _make_tag(_family_slug(self.model.family), content, self.rates, self.model.num_blocks,
                         self.sampler.num_steps, self.matching.cache_steps)

    # ---- conversion --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The version-2 document (what :meth:`save` writes)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tag": self.tag,
            "model": self.model.to_dict(),
            "sampler": self.sampler.to_dict(),
            "matching": self.matching.to_dict(),
            "rates": _rates_as_lists(self.rates),
            "provenance": copy.deepcopy(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Schedule":
        """Validate a parsed schedule document of any readable version (see ``docs/schedule-format.md``)."""
        if not isinstance(d, Mapping):
            _fail(f"not an asymrnr schedule: the root must be a JSON object, {got(d)}")
        if "format" not in d:
            _fail(
                f"not an asymrnr schedule: root key 'format' is missing (expected \"format\": \"{FORMAT_NAME}\"); "
                "pass a schedule file written by asymrnr"
            )
        if d["format"] != FORMAT_NAME:
            hint = ""
            if d["format"] == "asymrnr-stats":
                hint = " (that is a statistics file: plan a schedule from it with the planner)"
            _fail(
                f"not an asymrnr schedule: format is {got(d['format'])[4:]}, expected {FORMAT_NAME!r}{hint}; "
                "pass a schedule file written by asymrnr"
            )
        if "version" not in d:
            _fail(f"missing key 'version' (expected \"version\": {FORMAT_VERSION}); {_FIX_RESAVE}")
        version = d["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            _fail(f"version must be an integer, {got(version)}; {_FIX_RESAVE}")
        reader = READERS.get(version)
        if reader is None:
            from .. import __version__

            known = ", ".join(map(str, READABLE_VERSIONS))
            if max(READABLE_VERSIONS) < version < 1_000_000:
                _fail(
                    f"unsupported schedule version {_short(version)}: this asymrnr ({__version__}) reads schedule "
                    f"version(s) {known}; the file was written by a newer asymrnr: upgrade asymrnr "
                    "(pip install -U asymrnr) to read it"
                )
            _fail(
                f"unsupported schedule version {_short(version)}: no asymrnr writes it (this one, {__version__}, reads "
                f"version(s) {known}); the file is corrupt: {_FIX_RESAVE}"
            )
        return reader(d)

    # ---- files -------------------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write the schedule as version-2 JSON, atomically (temporary file in the same folder + ``os.replace``).

        A crash mid-write leaves the previous file (if any) untouched and no temporary file behind.
        Returns the path written.
        """
        doc = self.to_dict()
        path = atomic_write_text(Path(path), _iter_json(doc))
        logger.info("saved schedule %s to %s", doc["tag"], path)
        return path

    # ---- constructors ------------------------------------------------------------------------------

    @classmethod
    def zeros(
        cls,
        model: ModelDescription,
        sampler: SamplerDescription,
        matching: MatchingSettings | None = None,
        *,
        notes: str = "",
    ) -> "Schedule":
        """A schedule that reduces nothing (all rates 0)."""
        row = (0.0,) * sampler.num_steps
        table = (row,) * model.num_blocks
        return cls(
            model=model,
            sampler=sampler,
            matching=matching if matching is not None else MatchingSettings(),
            rates={f: table for f in SCHEDULE_FEATURES},
            provenance=new_provenance(notes),
        )

    def with_rates(self, **feature_arrays: Any) -> "Schedule":
        """A copy with the rates of the given features replaced, e.g. ``s.with_rates(q=array)``.

        Arrays are [num_blocks][num_steps] nested lists or numpy arrays; the result is fully validated.
        """
        for feature in feature_arrays:
            _check_feature(feature, "rate feature")
        rates = dict(self.rates)
        rates.update(feature_arrays)
        return dataclasses.replace(self, rates=rates, provenance=copy.deepcopy(self.provenance))

    @classmethod
    def uniform(
        cls,
        pipe_or_transformer: Any,
        num_steps: int,
        q: float = 0.0,
        kv: float = 0.0,
        h: float = 0.0,
        cache_steps: int = vocab.DEFAULT_CACHE_STEPS,
        *,
        metric: str = vocab.DEFAULT_METRIC,
        stride=vocab.DEFAULT_STRIDE,
        reduce_op: str = "discard",
        granularity: str = vocab.DEFAULT_GRANULARITY,
        seed: int = 0,
        partition: str = vocab.DEFAULT_PARTITION_MODE,
        latent_grid=None,
        text_len: int | None = None,
        notes: str = "",
    ) -> "Schedule":
        """The same rates in every block and step, for a diffusers pipeline or a bare transformer.

        The model is described by the family's adapter (:func:`asymrnr.archs.adapter_for`). With a
        pipeline (it has a ``scheduler`` and a ``transformer``) the sampler for ``num_steps`` is recorded
        (timesteps from a copy of the scheduler, its config, and which transformer runs each step); with a
        bare transformer the sampler is unspecified (``scheduler_class`` and ``timesteps`` null; steps
        count transformer calls). The provenance records :func:`environment_provenance`.
        """
        from ..archs import adapter_for

        rates = {}
        for name, value in (("q", q), ("kv", kv), ("h", h)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                _fail(f"Schedule.uniform: {name} must be a finite number in [0, 1), {got(value)}")
            if not 0.0 <= float(value) < 1.0:
                _fail(
                    f"Schedule.uniform: {name}={float(value)!r} is outside [0, 1); a rate is the fraction of all "
                    "video tokens dropped (0 = no reduction)"
                )
            rates[name] = float(value)
        if vocab.exclusive_violation(rates["h"], rates["q"], rates["kv"]) is not None:
            _fail(
                f"Schedule.uniform: h={rates['h']!r} together with q={rates['q']!r}, kv={rates['kv']!r}; a (block, "
                "step) cell runs either SymRnR (h) or AsymRnR (q/kv), not both: set h=0 or q=kv=0"
            )
        num_steps = check_int(num_steps, "num_steps", minimum=1, maximum=100_000)
        matching = MatchingSettings(
            metric=metric, stride=stride, cache_steps=cache_steps, reduce_op=reduce_op, granularity=granularity,
            seed=seed, partition=partition,
        )

        pipe, transformer = _components(pipe_or_transformer)
        adapter = adapter_for(transformer)
        model = adapter.describe(transformer, latent_grid=latent_grid, text_len=text_len)
        if pipe is not None:
            sampler = adapter.describe_sampler(pipe, num_steps, latent_grid=model.latent_grid)
        else:
            sampler = SamplerDescription(None, num_steps, None)
        table = lambda r: ((r,) * num_steps,) * model.num_blocks  # noqa: E731
        provenance = {**new_provenance(notes, source="uniform"), **environment_provenance(pipe_or_transformer)}
        return cls(
            model=model,
            sampler=sampler,
            matching=matching,
            rates={f: table(r) for f, r in rates.items()},
            provenance=provenance,
        )


def _short(value: int) -> str:
    return str(value) if abs(value) < 10**30 else f"<{got(value)[4:].split(' (')[0]}>"


# --------------------------------------------------------------------------------------------------
# Readers, keyed by version
# --------------------------------------------------------------------------------------------------


def read_v2(d: Mapping) -> Schedule:
    """A version-2 document (the layout :meth:`Schedule.to_dict` writes)."""
    check_key_names(d, "", _REQUIRED_ROOT, _OPTIONAL_ROOT, version=2, fix=_FIX_RESAVE)
    schedule = Schedule(
        model=ModelDescription.from_dict(d["model"], fix=_FIX_RESAVE),
        sampler=SamplerDescription.from_dict(d["sampler"], fix=_FIX_RESAVE),
        matching=MatchingSettings.from_dict(d["matching"], fix=_FIX_RESAVE),
        rates=d["rates"],
        provenance=d.get("provenance", {}),
    )
    _check_stored_tag(d, schedule.tag, schedule.tag)
    return schedule


def read_v1(d: Mapping) -> Schedule:
    """A version-1 document (one family only), upgraded in memory.

    ``model``: an int spatial ``patch_size`` plus ``patch_size_t`` become the ``(t, h, w)`` patch,
    ``text_first`` becomes ``text_layout``, ``family`` is ``archs.VERSION_1_FAMILY``; ``matching.partition`` is
    ``fixed`` (version 1's one partition per block and feature); the sampler gets the version-2 defaults
    (no config, one transformer). The stored tag is checked against the version-1 tag of the content;
    ``provenance.upgraded_from`` records ``{"version": 1, "tag": <that tag>}``.
    """
    fix = _FIX_RESAVE
    check_key_names(d, "", _REQUIRED_ROOT, _OPTIONAL_ROOT, version=1, fix=fix)
    model_d = check_key_names(d["model"], "model", V1_MODEL_KEYS, version=1, fix=fix)
    sampler_d = check_key_names(d["sampler"], "sampler", V1_SAMPLER_KEYS, version=1, fix=fix)
    matching_d = check_key_names(d["matching"], "matching", V1_MATCHING_KEYS, version=1, fix=fix)
    model = ModelDescription(**upgrade_model_v1(model_d, "model"))
    sampler = SamplerDescription(**sampler_d)
    matching = MatchingSettings(**upgrade_matching_v1(matching_d))
    schedule = Schedule(model, sampler, matching, d["rates"], d.get("provenance", {}))
    v1_tag = _v1_tag(schedule, model_d["text_first"])
    _check_stored_tag(d, v1_tag, schedule.tag)
    schedule.provenance["upgraded_from"] = {"version": 1, "tag": v1_tag}
    return schedule


#: Reader of every version this release reads.
READERS: dict[int, Callable[[Mapping], Schedule]] = {1: read_v1, 2: read_v2}
READABLE_VERSIONS = tuple(sorted(READERS))


# --------------------------------------------------------------------------------------------------
# JSON text: indented, but each array of scalars (a rates row, a grid, the timesteps) on one line
# --------------------------------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float))


def _iter_json(obj: Any, indent: int = 0) -> Iterator[str]:
    """Yield the JSON text of ``obj`` in chunks (streamed into the file by :meth:`Schedule.save`)."""
    yield from _iter_value(obj, indent)
    yield "\n"


def _iter_value(obj: Any, indent: int) -> Iterator[str]:
    pad = "  " * (indent + 1)
    end = "  " * indent
    if isinstance(obj, Mapping):
        if not obj:
            yield "{}"
            return
        yield "{\n"
        for i, (key, value) in enumerate(obj.items()):
            yield f"{pad}{json.dumps(str(key))}: "
            yield from _iter_value(value, indent + 1)
            yield ",\n" if i < len(obj) - 1 else "\n"
        yield end + "}"
    elif isinstance(obj, (list, tuple)):
        if all(_is_scalar(v) for v in obj):
            yield "[" + ", ".join(json.dumps(v, allow_nan=False) for v in obj) + "]"
            return
        yield "[\n"
        for i, value in enumerate(obj):
            yield pad
            yield from _iter_value(value, indent + 1)
            yield ",\n" if i < len(obj) - 1 else "\n"
        yield end + "]"
    else:
        yield json.dumps(obj, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# Reading a file
# --------------------------------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            near = ", ".join(repr(k[:30]) for k in list(out)[:4])
            _fail(f"duplicate key {key[:60]!r} in a JSON object (next to {near}); keep only one of them")
        out[key] = value
    return out


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_non_regular(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        _fail(f"'{path}' is a directory, not a schedule file; pass the path of the .json file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        _fail(f"'{path}' is {kind}, not a regular file; a schedule is read only from a regular .json file")


def _too_large(path: Path, size: str) -> None:
    _fail(
        f"schedule file '{path}' is {size}, larger than the {MAX_FILE_BYTES // 2**20} MiB a schedule may be "
        "(a real one is at most a few MiB); it is not a schedule or it is corrupt"
    )


def _read_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file of at most :data:`MAX_FILE_BYTES`, checked before reading it."""
    try:
        st = os.stat(path)
        _refuse_non_regular(path, st.st_mode)  # never open a FIFO or a device
        if st.st_size > MAX_FILE_BYTES:
            _too_large(path, f"{st.st_size:,} bytes")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked in '{path.absolute()}')"
        raise ScheduleNotFoundError(
            f"schedule file not found: '{path}'{where}; check the path, or create a "
            "schedule with `asymrnr-calibrate` or Schedule.uniform(...).save(path)"
        ) from None
    except IsADirectoryError:
        raise ScheduleFormatError(
            f"'{path}' is a directory, not a schedule file; pass the path of the .json file"
        ) from None
    except OSError as exc:
        raise ScheduleFormatError(f"cannot read schedule file '{path}': {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fp:
        st = os.fstat(fp.fileno())  # the file opened, not the one stat-ed (it may have been swapped)
        _refuse_non_regular(path, st.st_mode)
        if st.st_size > MAX_FILE_BYTES:
            _too_large(path, f"{st.st_size:,} bytes")
        try:
            raw = fp.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ScheduleFormatError(f"cannot read schedule file '{path}': {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        _too_large(path, "growing while read and past that size")
    return raw


def _parse(raw: bytes, path: Path) -> Any:
    corrupt = f"schedule file '{path}' is corrupt or truncated"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScheduleFormatError(
            f"{corrupt} (not UTF-8 text: {exc.reason} at byte {exc.start}); {_FIX_RESAVE}"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_int=parse_json_int)
    except json.JSONDecodeError as exc:
        raise ScheduleFormatError(
            f"{corrupt} (invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}); {_FIX_RESAVE}"
        ) from None
    except ScheduleFormatError as exc:
        raise ScheduleFormatError(f"schedule file '{path}': {exc}") from None
    except RecursionError:
        raise ScheduleFormatError(
            f"schedule file '{path}' is corrupt (JSON nested too deeply); {_FIX_RESAVE}"
        ) from None
    except ValueError as exc:  # e.g. a number Python refuses to convert
        raise ScheduleFormatError(
            f"schedule file '{path}' is corrupt (unreadable JSON value: {exc}); {_FIX_RESAVE}"
        ) from None


def load_schedule(path) -> Schedule:
    """Read and validate a schedule file (``str`` or ``Path``) of any readable version.

    Raises :class:`~asymrnr.errors.ScheduleFormatError` on any problem (:class:`ScheduleNotFoundError`
    when the file does not exist), naming the file and the key path.
    """
    path = Path(path)
    doc = _parse(_read_bytes(path), path)
    try:
        schedule = Schedule.from_dict(doc)
    except ScheduleFormatError as exc:
        raise ScheduleFormatError(f"schedule file '{path}': {exc}") from None
    logger.debug("loaded schedule %s from %s", schedule.tag, path)
    return schedule


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "READERS",
    "MAX_FILE_BYTES",
    "SCHEDULE_FEATURES",
    "METRICS",
    "REDUCE_OPS",
    "GRANULARITIES",
    "PARTITION_MODES",
    "PROVENANCE_STRING_KEYS",
    "ModelDescription",
    "SamplerDescription",
    "MatchingSettings",
    "Schedule",
    "ScheduleNotFoundError",
    "load_schedule",
    "read_v1",
    "read_v2",
    "new_provenance",
    "environment_provenance",
]
