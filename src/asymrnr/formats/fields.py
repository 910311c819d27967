"""Validation driven by dataclass fields (standard library only).

A format dataclass declares each field with :func:`spec` (its kind and bounds). :func:`validate_fields`
checks and normalises every field of an instance in ``__post_init__``; :func:`check_keys` checks a parsed
JSON object's keys against the fields before construction. Every error is a
:class:`~asymrnr.errors.ScheduleFormatError` (or the error class the caller passes) naming the key path
(``model.latent_grid[1]``) and the fix.

Every integer has an upper bound, so a hostile file (a 5,000-digit number, ``stride`` 10^20) is refused
at load with its key path instead of being accepted and crashed on later.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import reprlib
from dataclasses import MISSING, dataclass
from typing import Any, Mapping

from ..errors import ScheduleFormatError

#: Default upper bound of an integer field (well above any real model, far below anything hostile).
MAX_INT = 1 << 40
_KEY = "asymrnr"


@dataclass(frozen=True)
class FieldSpec:
    """How one field is checked.

    kind: ``int``, ``float``, ``bool``, ``str``, ``ints`` / ``floats`` / ``strs`` (a sequence of those),
        ``json`` (a JSON object, copied).
    length: exact length of a sequence kind (``None``: any).
    minimum / maximum: bounds of a number or of each element of a number sequence.
    choices: allowed values of a ``str`` (or of each element of ``strs``).
    nullable: ``None`` (JSON null) is allowed.
    """

    kind: str
    length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    doc: str = ""


def spec(kind: str, *, default: Any = MISSING, length=None, minimum=None, maximum=None, choices=None,
         nullable=False, doc: str = "") -> Any:
    """A dataclass field checked by :func:`validate_fields`."""
    if kind in ("int", "ints") and maximum is None:
        maximum = MAX_INT
    meta = {_KEY: FieldSpec(kind, length, minimum, maximum, tuple(choices) if choices else None, nullable, doc)}
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


#: Integer literals longer than this are not converted by :func:`parse_json_int`.
MAX_INT_DIGITS = 4000


class OversizedInt(int):
    """Stands in for an integer literal of more than :data:`MAX_INT_DIGITS` digits in a parsed file.

    Python refuses to convert literals past 4,300 digits (``json.loads`` raises a bare ``ValueError``);
    parsing with ``parse_int=parse_json_int`` keeps such a value instead, as a number beyond every bound,
    so that validation refuses it with its key path. :func:`got` shows it by its number of digits.
    """

    digits: int

    def __new__(cls, literal: str) -> "OversizedInt":
        huge = 10**MAX_INT_DIGITS
        obj = super().__new__(cls, -huge if literal.startswith("-") else huge)
        obj.digits = len(literal.lstrip("-"))
        return obj

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"

    __str__ = __repr__


def parse_json_int(literal: str) -> int:
    """``parse_int`` hook of ``json.loads``: ``int``, or an :class:`OversizedInt` for a huge literal."""
    return int(literal) if len(literal) <= MAX_INT_DIGITS else OversizedInt(literal)


def type_name(value: Any) -> str:
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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 6, 60, 60


def got(value: Any) -> str:
    """``got 12 (integer)``, shortened for long values.

    Containers are shown only to a few levels and entries (a hostile file's 10^6-entry or 900-level value
    must not be rendered whole), huge integers by their number of digits (``repr`` of one with more than
    4,300 digits raises).
    """
    if isinstance(value, OversizedInt):
        text = f"an integer of {value.digits} digits"
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) > 10**30:
        text = f"an integer of about {int(abs(int(value)).bit_length() * 0.30103) + 1} digits"
    else:
        try:
            text = _REPR.repr(value) if isinstance(value, (list, tuple, dict)) else repr(value)
        except Exception:  # exotic objects, or nesting deeper than the recursion limit
            text = f"<{type(value).__name__}>"
        if len(text) > 60:
            text = text[:57] + "..."
    return f"got {text} ({type_name(value)})"


def nonfinite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")


def as_sequence(value: Any, where: str, error=ScheduleFormatError) -> list:
    """Lists, tuples and array-likes (anything with ``tolist``) as a python list."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, str)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise error(f"{where} must be an array, {got(value)}")
    return list(value)


def check_int(value: Any, where: str, *, minimum=None, maximum=MAX_INT, error=ScheduleFormatError) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{where} must be an integer, {got(value)}; write it as a JSON number without quotes or decimals")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{where} must be >= {int(minimum)}, {got(value)}")
    if maximum is not None and value > maximum:
        raise error(f"{where} must be <= {int(maximum)}, {got(value)}; no real model comes near it: the file is corrupt")
    return value


def check_float(value: Any, where: str, *, minimum=None, maximum=None, error=ScheduleFormatError) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{where} must be a number, {got(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise error(f"{where} is too large to be a number, {got(value)}") from None
    if not math.isfinite(value):
        raise error(f"{where} is {nonfinite_name(value)}; it must be a finite number")
    if minimum is not None and value < minimum:
        raise error(f"{where} must be >= {minimum:g}, {got(value)}")
    if maximum is not None and value > maximum:
        raise error(f"{where} must be <= {maximum:g}, {got(value)}")
    return value


def check_str(value: Any, where: str, *, choices=None, what: str = "", error=ScheduleFormatError) -> str:
    if not isinstance(value, str):
        hint = f"; allowed: {', '.join(choices)}" if choices else ""
        raise error(f"{where} must be a string, {got(value)}{hint}")
    if choices is not None and value not in choices:
        raise error(f"unknown {what or where} {value!r} at {where}; allowed: {', '.join(choices)}")
    if choices is None and not value:
        raise error(f"{where} must be a non-empty string")
    if len(value) > 10_000:
        raise error(f"{where} is {len(value)} characters long; at most 10,000 are allowed")
    return value


def check_value(value: Any, fs: FieldSpec, where: str, error=ScheduleFormatError) -> Any:
    """Check one value against its field spec; returns the normalised value (tuples for sequences)."""
    if value is None:
        if fs.nullable:
            return None
        raise error(f"{where} must not be null")
    kind = fs.kind
    if kind == "int":
        return check_int(value, where, minimum=fs.minimum, maximum=fs.maximum, error=error)
    if kind == "float":
        return check_float(value, where, minimum=fs.minimum, maximum=fs.maximum, error=error)
    if kind == "bool":
        if not isinstance(value, bool):
            raise error(f"{where} must be true or false, {got(value)}")
        return value
    if kind == "str":
        return check_str(value, where, choices=fs.choices, what=where.rsplit(".", 1)[-1], error=error)
    if kind == "json":
        if not isinstance(value, Mapping):
            raise error(f"{where} must be a JSON object, {got(value)}")
        return json_copy(value, where, error)
    if kind in ("ints", "floats", "strs"):
        items = as_sequence(value, where, error)
        if fs.length is not None and len(items) != fs.length:
            noun = {"ints": "integers", "floats": "numbers", "strs": "strings"}[kind]
            raise error(f"{where} must hold {fs.length} {noun}, got {len(items)} entries: {got(items)}")
        one = FieldSpec(kind[:-1], minimum=fs.minimum, maximum=fs.maximum, choices=fs.choices)
        return tuple(check_value(v, one, f"{where}[{i}]", error) for i, v in enumerate(items))
    raise AssertionError(f"unknown field kind {kind!r}")


#: Deepest nesting of a free JSON value (``provenance``, ``sampler.config``).
MAX_JSON_DEPTH = 32


def json_copy(value: Any, where: str, error=ScheduleFormatError, depth: int = 0, root: str | None = None) -> Any:
    """A deep copy of a JSON value (objects with string keys, arrays, strings, finite numbers, booleans, null).

    Integers must stay below 10^18 in magnitude, floats must be finite, nesting at most
    :data:`MAX_JSON_DEPTH` levels deep; every error names the key path.
    """
    root = where if root is None else root
    if depth > MAX_JSON_DEPTH:
        raise error(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep (in {root}); flatten it")
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise error(f"{where} keys must be strings, {got(k)}")
            out[k] = json_copy(v, f"{where}.{k}", error, depth + 1, root)
        return out
    if isinstance(value, (list, tuple)):
        return [json_copy(v, f"{where}[{i}]", error, depth + 1, root) for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        if isinstance(value, str) and len(value) > 100_000:
            raise error(f"{where} is a string of {len(value)} characters; at most 100,000 are allowed")
        return value
    if isinstance(value, numbers.Integral):
        if abs(int(value)) >= 10**18:
            raise error(f"{where} is {got(value)[4:]}; integers here must stay below 10^18")
        return int(value)
    if isinstance(value, numbers.Real):
        return check_float(value, where, error=error)
    raise error(
        f"{root} must hold only JSON values (strings, numbers, lists, objects, true/false, null): {where} is "
        f"{got(value)[4:]}"
    )


def field_specs(cls) -> list[tuple[str, FieldSpec, bool]]:
    """``(name, spec, required)`` of every checked field of a dataclass, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        fs = f.metadata.get(_KEY)
        if fs is not None:
            out.append((f.name, fs, f.default is MISSING and f.default_factory is MISSING))
    return out


def validate_fields(obj: Any, where: str, error=ScheduleFormatError) -> None:
    """Check and normalise every spec'd field of a frozen dataclass instance in place."""
    for name, fs, _ in field_specs(type(obj)):
        value = check_value(getattr(obj, name), fs, f"{where}.{name}" if where else name, error)
        object.__setattr__(obj, name, value)


def check_keys(d: Any, cls, where: str, *, version: int, fix: str, error=ScheduleFormatError,
               extra_optional: tuple[str, ...] = ()) -> Mapping:
    """``d`` is a JSON object holding every required field of ``cls`` and no unknown key."""
    specs = field_specs(cls)
    required = tuple(n for n, _, req in specs if req)
    optional = tuple(n for n, _, req in specs if not req) + tuple(extra_optional)
    return check_key_names(d, where, required, optional, version=version, fix=fix, error=error)


def check_key_names(d: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = (), *, version: int,
                    fix: str, error=ScheduleFormatError) -> Mapping:
    """``d`` is a JSON object holding every key of ``required``, and no key outside ``required + optional``."""
    if not isinstance(d, Mapping):
        raise error(f"{where or 'the root'} must be a JSON object, {got(d)}; {fix}")
    allowed = set(required) | set(optional)
    prefix = f"{where}." if where else ""
    for key in required:
        if key not in d:
            raise error(
                f"missing key '{prefix}{key}' (a version {version} file needs {', '.join(required)} in "
                f"{where or 'the root object'}); add it or {fix}"
            )
    for key in d:
        if key not in allowed:
            raise error(
                f"unknown key '{prefix}{str(key)[:60]}'; {where or 'the root object'} of a version {version} file "
                f"holds "
                f"only {', '.join(sorted(allowed))}: fix the spelling or remove it (if the file was written by a "
                "newer asymrnr, upgrade asymrnr)"
            )
    return d


def to_json(obj: Any) -> dict:
    """A spec'd dataclass as a JSON-ready dict (tuples become lists)."""
    out = {}
    for name, _, _ in field_specs(type(obj)):
        out[name] = _plain(getattr(obj, name))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


__all__ = [
    "MAX_INT", "MAX_INT_DIGITS", "OversizedInt", "parse_json_int", "FieldSpec", "spec", "type_name", "got",
    "nonfinite_name", "as_sequence", "check_int",
    "check_float", "check_str", "check_value", "json_copy", "MAX_JSON_DEPTH", "field_specs", "validate_fields",
    "check_keys", "check_key_names", "to_json",
]
