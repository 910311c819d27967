"""The schedule file: which fraction of video tokens to drop, per feature, block and denoising step.

This module owns the JSON schedule format (spec: ``docs/schedule-format.md``). It imports neither torch
nor diffusers (nor numpy), so that reading a schedule is cheap and works anywhere; the only heavy import
happens lazily inside :meth:`Schedule.uniform`, which needs a live transformer.

Layout of a file (version 1)::

    {"format": "asymrnr-schedule", "version": 1, "tag": "...",
     "model": {...}, "sampler": {...}, "matching": {...},
     "rates": {"q": [[...], ...], "kv": [[...], ...], "h": [[...], ...]},   # [num_blocks][num_steps]
     "provenance": {"tool_version": "...", "created": "...Z", "notes": "...", ...}}

Every validation error is a :class:`~asymrnr.errors.ScheduleFormatError` whose message names the key
path (``rates.q[3][7]``) and says how to fix it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import numbers
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from ._io import atomic_write_text
from .errors import ScheduleFormatError, ScheduleMismatchError

logger = logging.getLogger(__name__)

FORMAT_NAME = "asymrnr-schedule"
FORMAT_VERSION = 1
#: Versions this release can read (older ones are upgraded on load once there are any).
READABLE_VERSIONS = (1,)

SCHEDULE_FEATURES = ("q", "kv", "h")
METRICS = ("euclidean", "cosine", "dot", "random")
REDUCE_OPS = ("discard", "mean")
GRANULARITIES = ("joint", "head")

ROOT_KEYS = ("format", "version", "tag", "model", "sampler", "matching", "rates", "provenance")
MODEL_KEYS = (
    "transformer_class",
    "num_blocks",
    "num_heads",
    "head_dim",
    "patch_size",
    "patch_size_t",
    "rope",
    "latent_grid",
    "text_len",
    "ffn_dim",
    "text_first",
)
SAMPLER_KEYS = ("scheduler_class", "num_steps", "timesteps")
MATCHING_KEYS = ("metric", "stride", "cache_steps", "reduce_op", "granularity", "seed")

_FIX_RESAVE = "re-save the schedule with asymrnr or re-run `asymrnr-calibrate`"


class ScheduleNotFoundError(ScheduleFormatError, FileNotFoundError):
    """The schedule file does not exist (also a FileNotFoundError, for ``except OSError`` callers)."""


# --------------------------------------------------------------------------------------------------
# Validation helpers. ``where`` is the key path of the value, e.g. "model.num_heads".
# --------------------------------------------------------------------------------------------------


def _fail(message: str) -> None:
    raise ScheduleFormatError(message)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {text} ({_type_name(value)})"


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        _fail(f"{where} must be a JSON object, {_got(value)}; {_FIX_RESAVE}")
    return value


def _check_keys(d: Mapping, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    prefix = f"{where}." if where else ""
    for key in required:
        if key not in d:
            _fail(
                f"missing key '{prefix}{key}' (a version {FORMAT_VERSION} schedule needs "
                f"{', '.join(required)} in {where or 'the root object'}); add it or {_FIX_RESAVE}"
            )
    allowed = set(required) | set(optional)
    for key in d:
        if key not in allowed:
            _fail(
                f"unknown key '{prefix}{key}'; {where or 'the root object'} of a version {FORMAT_VERSION} "
                f"schedule holds only {', '.join((*required, *optional))}: fix the spelling or remove it "
                "(if the file was written by a newer asymrnr, upgrade asymrnr)"
            )


def _int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(f"{where} must be an integer, {_got(value)}; write it as a JSON number without quotes or decimals")
    value = int(value)
    if minimum is not None and value < minimum:
        _fail(f"{where} must be >= {minimum}, got {value}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"{where} must be true or false, {_got(value)}")
    return value


def _str(value: Any, where: str, *, allowed: tuple[str, ...] | None = None, what: str = "") -> str:
    if not isinstance(value, str):
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        _fail(f"{where} must be a string, {_got(value)}{hint}")
    if allowed is not None and value not in allowed:
        _fail(f"unknown {what or where} {value!r} at {where}; allowed: {', '.join(allowed)}")
    if allowed is None and not value:
        _fail(f"{where} must be a non-empty string")
    return value


def _real(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(f"{where} must be a number, {_got(value)}")
    value = float(value)
    if not math.isfinite(value):
        _fail(f"{where} is {_nonfinite_name(value)}; it must be a finite number")
    return value


def _nonfinite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")


def _as_sequence(value: Any, where: str) -> list:
    """Lists, tuples and array-likes (anything with ``tolist``, e.g. numpy arrays) as a python list."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, str)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        _fail(f"{where} must be an array, {_got(value)}")
    return list(value)


def _int_triple(value: Any, where: str, *, minimum: int) -> tuple[int, int, int]:
    items = _as_sequence(value, where)
    if len(items) != 3:
        _fail(f"{where} must hold 3 integers (frames, height, width), got {len(items)} entries: {items!r}")
    return tuple(_int(v, f"{where}[{i}]", minimum=minimum) for i, v in enumerate(items))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------------------


from .formats.descriptions import MatchingSettings, ModelDescription, SamplerDescription  # noqa: E402  (temporary: v2)


# --------------------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------------------


def _check_feature(feature: Any, where: str = "feature") -> str:
    if feature not in SCHEDULE_FEATURES:
        _fail(f"unknown {where} {feature!r}; schedule features are {', '.join(SCHEDULE_FEATURES)}")
    return feature


def _validated_rate_table(value: Any, where: str, num_blocks: int, num_steps: int) -> tuple:
    rows = _as_sequence(value, where)
    if len(rows) != num_blocks:
        _fail(
            f"{where} has {len(rows)} rows but model.num_blocks is {num_blocks}; rates are "
            f"[num_blocks][num_steps] = [{num_blocks}][{num_steps}]: {_FIX_RESAVE} for this model"
        )
    table = []
    for b, row in enumerate(rows):
        cells = _as_sequence(row, f"{where}[{b}]")
        if len(cells) != num_steps:
            _fail(
                f"{where}[{b}] (block {b}) has {len(cells)} entries but sampler.num_steps is {num_steps}; "
                f"give one rate per denoising step"
            )
        out = []
        for s, r in enumerate(cells):
            cell = f"{where}[{b}][{s}]"
            if isinstance(r, bool) or not isinstance(r, numbers.Real):
                _fail(f"{cell} (block {b}, step {s}) must be a number in [0, 1), {_got(r)}")
            r = float(r)
            if not math.isfinite(r):
                _fail(
                    f"{cell} (block {b}, step {s}) is {_nonfinite_name(r)}; a rate must be a finite number in "
                    "[0, 1) (0 = no reduction)"
                )
            if not 0.0 <= r < 1.0:
                _fail(
                    f"{cell} (block {b}, step {s}) = {r!r} is outside [0, 1); a rate is the fraction of all "
                    "video tokens dropped: use a value in [0, 1) (0 = no reduction; the runtime also rejects "
                    "rates above N_src/N_video, 0.862 at stride (2, 2, 2) on the 13x30x45 CogVideoX grid)"
                )
            out.append(r)
        table.append(tuple(out))
    return tuple(table)


def _validated_rates(rates: Any, num_blocks: int, num_steps: int, where: str = "rates") -> dict:
    rates = _mapping(rates, where)
    for key in SCHEDULE_FEATURES:
        if key not in rates:
            _fail(
                f"missing key '{where}.{key}'; rates must hold {', '.join(SCHEDULE_FEATURES)} "
                "(use all zeros for a feature that is not reduced)"
            )
    for key in rates:
        if key not in SCHEDULE_FEATURES:
            _fail(f"unknown key '{where}.{key}'; schedule features are {', '.join(SCHEDULE_FEATURES)}")
    out = {f: _validated_rate_table(rates[f], f"{where}.{f}", num_blocks, num_steps) for f in SCHEDULE_FEATURES}
    _check_exclusive(out, where)
    return out


def _check_exclusive(rates: Mapping, where: str = "rates") -> None:
    h, q, kv = rates["h"], rates["q"], rates["kv"]
    for b, row in enumerate(h):
        for s, hr in enumerate(row):
            if hr > 0.0:
                for name, table in (("q", q), ("kv", kv)):
                    if table[b][s] > 0.0:
                        _fail(
                            f"{where}.h[{b}][{s}] = {hr!r} and {where}.{name}[{b}][{s}] = {table[b][s]!r} are both "
                            f"non-zero (block {b}, step {s}); a (block, step) cell runs either SymRnR (h) or "
                            "AsymRnR (q/kv), not both: set one of them to 0"
                        )


def _new_provenance(notes: str = "", **extra: Any) -> dict:
    from . import __version__

    prov = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notes": notes,
    }
    prov.update(extra)
    return prov


def _validated_provenance(prov: Any, where: str = "provenance") -> dict:
    prov = _mapping(prov, where)
    for key in prov:
        if not isinstance(key, str):
            _fail(f"{where} keys must be strings, {_got(key)}")
    for key in ("tool_version", "created", "notes"):
        if key in prov and not isinstance(prov[key], str):
            _fail(f"{where}.{key} must be a string, {_got(prov[key])}")
    try:
        json.dumps(prov, allow_nan=False)
    except (TypeError, ValueError) as exc:
        _fail(f"{where} must hold only JSON values (strings, numbers, lists, objects): {exc}")
    return copy.deepcopy(dict(prov))


# --------------------------------------------------------------------------------------------------
# Tag
# --------------------------------------------------------------------------------------------------


def _model_slug(transformer_class: str) -> str:
    name = transformer_class.lower()
    slug = re.sub(r"transformer.*$", "", name)
    slug = re.sub(r"[^a-z0-9]+", "", slug) or re.sub(r"[^a-z0-9]+", "", name)
    return slug[:16] or "model"


def _percent(x: float) -> int:
    return int(math.floor(x * 100.0 + 0.5))


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """Per-(feature, block, step) reduction rates for one model and sampler.

    ``rates[feature][block][step]`` is the fraction of **all video tokens** dropped for that feature
    (``n_r = floor(r * N_video)``); features are ``q``, ``kv`` (AsymRnR) and ``h`` (SymRnR). Steps are
    0-based transformer-call indices into ``sampler.timesteps``. Construction validates everything and
    normalises rates (nested lists or numpy arrays) to tuples of tuples of python floats.
    """

    model: ModelDescription
    sampler: SamplerDescription
    matching: MatchingSettings
    rates: dict
    provenance: dict = field(default_factory=_new_provenance)

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelDescription), ("sampler", SamplerDescription), ("matching", MatchingSettings)):
            if not isinstance(getattr(self, name), cls):
                _fail(f"Schedule.{name} must be a {cls.__name__}, {_got(getattr(self, name))}")
        self.rates = _validated_rates(self.rates, self.model.num_blocks, self.sampler.num_steps)
        self.provenance = _validated_provenance(self.provenance)

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
                f"block {block} is out of range: the schedule has {self.model.num_blocks} blocks (0..{self.model.num_blocks - 1})"
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

        ``{model}-L{blocks}-q{mean q %}-kv{mean kv %}[-h{mean h %}]-s{cache_steps}-n{num_steps}-{hash6}``,
        e.g. ``cogvideox-L30-q18-kv09-s4-n50-1a2b3c``; ``hash6`` is the first 6 hex digits of the SHA-256
        of the canonical JSON of model, sampler, matching and rates. ``-h..`` appears only when some
        ``h`` rate is non-zero.
        """
        content = {
            "model": self.model.to_dict(),
            "sampler": self.sampler.to_dict(),
            "matching": self.matching.to_dict(),
            "rates": self._rates_as_lists(),
        }
        digest = hashlib.sha256(_canonical_json(content).encode("ascii")).hexdigest()[:6]
        parts = [
            self.model.family,
            f"L{self.model.num_blocks}",
            f"q{_percent(self.mean_rate('q')):02d}",
            f"kv{_percent(self.mean_rate('kv')):02d}",
        ]
        if any(r > 0.0 for row in self.rates["h"] for r in row):
            parts.append(f"h{_percent(self.mean_rate('h')):02d}")
        parts += [f"s{self.matching.cache_steps}", f"n{self.sampler.num_steps}", digest]
        return "-".join(parts)

    # ---- conversion --------------------------------------------------------------------------------

    def _rates_as_lists(self) -> dict:
        return {f: [list(row) for row in self.rates[f]] for f in SCHEDULE_FEATURES}

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tag": self.tag,
            "model": self.model.to_dict(),
            "sampler": self.sampler.to_dict(),
            "matching": self.matching.to_dict(),
            "rates": self._rates_as_lists(),
            "provenance": copy.deepcopy(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Schedule":
        """Validate a parsed schedule document (see ``docs/schedule-format.md``) and build the Schedule."""
        if not isinstance(d, Mapping):
            _fail(f"not an asymrnr schedule: the root must be a JSON object, {_got(d)}")
        if "format" not in d:
            _fail(
                f"not an asymrnr schedule: root key 'format' is missing (expected \"format\": \"{FORMAT_NAME}\"); "
                "pass a schedule file written by asymrnr"
            )
        if d["format"] != FORMAT_NAME:
            hint = " (that is a statistics file: plan a schedule from it with the planner)" if d["format"] == "asymrnr-stats" else ""
            _fail(
                f"not an asymrnr schedule: format is {d['format']!r}, expected {FORMAT_NAME!r}{hint}; "
                "pass a schedule file written by asymrnr"
            )
        if "version" not in d:
            _fail(f"missing key 'version' (expected \"version\": {FORMAT_VERSION}); {_FIX_RESAVE}")
        version = d["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            _fail(f"version must be an integer, {_got(version)}; {_FIX_RESAVE}")
        if version not in READABLE_VERSIONS:
            from . import __version__

            _fail(
                f"unsupported schedule version {version}: this asymrnr ({__version__}) reads schedule "
                f"version(s) {', '.join(map(str, READABLE_VERSIONS))}; upgrade asymrnr "
                "(pip install -U asymrnr) to read it"
            )
        _check_keys(d, "", ("format", "version", "model", "sampler", "matching", "rates"), ("tag", "provenance"))
        model = ModelDescription.from_dict(d["model"], where="model")
        sampler = SamplerDescription.from_dict(d["sampler"], where="sampler")
        matching = MatchingSettings.from_dict(d["matching"], where="matching")
        provenance = _validated_provenance(d.get("provenance", {}))
        schedule = cls(model=model, sampler=sampler, matching=matching, rates=d["rates"], provenance=provenance)
        if "tag" in d:
            stored = d["tag"]
            if not isinstance(stored, str):
                _fail(f"tag must be a string, {_got(stored)}; {_FIX_RESAVE}")
            if stored != schedule.tag:
                logger.warning(
                    "schedule tag %r does not match its content (recomputed %r): the rates or settings were "
                    "edited after saving; using %r",
                    stored,
                    schedule.tag,
                    schedule.tag,
                )
        return schedule

    # ---- files -------------------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write the schedule as JSON, atomically (temporary file in the same folder + ``os.replace``).

        A crash mid-write leaves the previous file (if any) untouched and no temporary file behind.
        Returns the path written.
        """
        path = Path(path)
        doc = self.to_dict()
        path = atomic_write_text(path, _iter_json(doc))
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
            provenance=_new_provenance(notes),
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
        cache_steps: int = 4,
        *,
        metric: str = "euclidean",
        stride=(2, 2, 2),
        reduce_op: str = "discard",
        granularity: str = "head",
        seed: int = 0,
        partition: str = "window",
        latent_grid=None,
        text_len: int | None = None,
        notes: str = "",
    ) -> "Schedule":
        """The same rates in every block and step, for a diffusers pipeline or a bare transformer.

        With a pipeline (it has ``.transformer`` and ``.scheduler``) the sampler's timesteps for
        ``num_steps`` are recorded (from a copy of the scheduler); with a bare transformer the sampler is
        unspecified (``scheduler_class`` and ``timesteps`` null; steps count transformer calls).
        """
        from . import archs

        rates = {}
        for name, value in (("q", q), ("kv", kv), ("h", h)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                _fail(f"Schedule.uniform: {name} must be a finite number in [0, 1), {_got(value)}")
            if not 0.0 <= float(value) < 1.0:
                _fail(
                    f"Schedule.uniform: {name}={float(value)!r} is outside [0, 1); a rate is the fraction of all "
                    "video tokens dropped (0 = no reduction)"
                )
            rates[name] = float(value)
        if rates["h"] > 0.0 and (rates["q"] > 0.0 or rates["kv"] > 0.0):
            _fail(
                f"Schedule.uniform: h={rates['h']!r} together with q={rates['q']!r}, kv={rates['kv']!r}; a (block, "
                "step) cell runs either SymRnR (h) or AsymRnR (q/kv), not both: set h=0 or q=kv=0"
            )
        num_steps = _int(num_steps, "num_steps", minimum=1)

        adapter = archs.adapter_for(pipe_or_transformer)
        if hasattr(pipe_or_transformer, "scheduler") and hasattr(pipe_or_transformer, "components"):
            transformer = pipe_or_transformer.transformer or pipe_or_transformer.transformer_2
            sampler = adapter.describe_sampler(pipe_or_transformer, num_steps)
        else:
            transformer = pipe_or_transformer
            sampler = SamplerDescription(None, num_steps, None)
        model = adapter.describe(transformer, latent_grid=latent_grid, text_len=text_len)
        matching = MatchingSettings(metric=metric, stride=stride, cache_steps=cache_steps, reduce_op=reduce_op,
                                    granularity=granularity, seed=seed, partition=partition)
        table = lambda r: ((r,) * num_steps,) * model.num_blocks  # noqa: E731
        return cls(
            model=model,
            sampler=sampler,
            matching=matching,
            rates={f: table(r) for f, r in rates.items()},
            provenance=_new_provenance(notes, source="uniform"),
        )


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


def _reject_duplicate_keys(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            _fail(f"duplicate key {key!r} in a JSON object; keep only one of them")
        out[key] = value
    return out


def load_schedule(path) -> Schedule:
    """Read and validate a schedule file (``str`` or ``Path``). Raises ScheduleFormatError on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked in '{path.absolute()}')"
        raise ScheduleNotFoundError(
            f"schedule file not found: '{path}'{where}; check the path, or create a "
            "schedule with `asymrnr-calibrate` or Schedule.uniform(...).save(path)"
        ) from None
    except IsADirectoryError:
        raise ScheduleFormatError(f"'{path}' is a directory, not a schedule file; pass the path of the .json file") from None
    except OSError as exc:
        raise ScheduleFormatError(f"cannot read schedule file '{path}': {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise ScheduleFormatError(
            f"schedule file '{path}' is corrupt or truncated (not UTF-8 text: {exc.reason} at byte {exc.start}); "
            f"{_FIX_RESAVE}"
        ) from None
    except json.JSONDecodeError as exc:
        raise ScheduleFormatError(
            f"schedule file '{path}' is corrupt or truncated (invalid JSON at line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg}); {_FIX_RESAVE}"
        ) from None
    except ScheduleFormatError as exc:
        raise ScheduleFormatError(f"schedule file '{path}': {exc}") from None
    except RecursionError:
        raise ScheduleFormatError(f"schedule file '{path}' is corrupt (JSON nested too deeply); {_FIX_RESAVE}") from None
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
    "SCHEDULE_FEATURES",
    "METRICS",
    "REDUCE_OPS",
    "GRANULARITIES",
    "ModelDescription",
    "SamplerDescription",
    "MatchingSettings",
    "Schedule",
    "ScheduleNotFoundError",
    "load_schedule",
]
