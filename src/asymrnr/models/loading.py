"""Finding and loading diffusers pipeline folders without ever touching the network.

Every failure is turned into :class:`asymrnr.errors.ModelNotFoundError` (or another
:class:`~asymrnr.errors.AsymRnRError`) whose one-line message says what is missing and how to fix it;
no raw huggingface_hub / OSError traceback escapes.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from asymrnr.errors import AsymRnRError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


@contextmanager
def quiet_progress_bars():
    """Hide diffusers' and transformers' loading/saving progress bars inside the block, then restore.

    Library code shows no progress bars (only ``asymrnr.cli`` does). The switches are process-global.
    """
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    d_on, t_on = d_logging.is_progress_bar_enabled(), t_logging.is_progress_bar_enabled()
    d_logging.disable_progress_bar()
    t_logging.disable_progress_bar()
    try:
        yield
    finally:
        if d_on:
            d_logging.enable_progress_bar()
        if t_on:
            t_logging.enable_progress_bar()


def dtype_kwargs(torch_dtype: torch.dtype | None) -> dict[str, Any]:
    """The ``from_pretrained`` keyword for a dtype: ``dtype`` in diffusers releases that deprecate
    ``torch_dtype`` (0.42 warns about it), ``torch_dtype`` in older ones."""
    if torch_dtype is None:
        return {}
    try:
        from diffusers.utils import deprecation_utils

        new_style = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:  # pragma: no cover
        new_style = False
    return {"dtype" if new_style else "torch_dtype": torch_dtype}


def resolve_dtype(dtype: Any) -> torch.dtype:
    """A ``torch.dtype`` from a dtype or a name (``float32``/``fp32``, ``float16``/``fp16``, ``bfloat16``/``bf16``)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise AsymRnRError(
            f"unknown dtype {dtype!r}; use one of: float32, float16, bfloat16 (or fp32, fp16, bf16)"
        )
    return getattr(torch, _DTYPE_ALIASES[key])


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment *now* (huggingface_hub reads it once,
    at import): ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``, ``XDG_CACHE_HOME/huggingface/hub``,
    else ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def find_cached_snapshot(hub_ids: Iterable[str], cache_dir: str | os.PathLike | None = None) -> tuple[str, Path] | None:
    """``(hub_id, snapshot folder)`` of the first id whose pipeline is in the local cache, else ``None``.

    Uses ``huggingface_hub.snapshot_download(..., local_files_only=True)``: no network request is made.
    A snapshot without ``model_index.json`` does not count.
    """
    from huggingface_hub import snapshot_download

    cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache_dir()
    for hub_id in hub_ids:
        try:
            path = Path(snapshot_download(hub_id, cache_dir=str(cache), local_files_only=True))
        except Exception as err:  # LocalEntryNotFoundError, invalid repo ids, broken caches: all "not here"
            logger.debug("%s is not in the local Hugging Face cache %s: %s", hub_id, cache, err)
            continue
        if (path / "model_index.json").is_file():
            return hub_id, path
        logger.debug("cached snapshot %s of %s has no model_index.json", path, hub_id)
    return None


def _suggest_pipeline_dirs(path: Path, limit: int = 3) -> list[Path]:
    """Pipeline folders just below ``path`` (a parent folder, or a hub cache / repo folder was given)."""
    patterns = ("*/model_index.json", "snapshots/*/model_index.json", "models--*/snapshots/*/model_index.json")
    found: list[Path] = []
    for pattern in patterns:
        try:
            found.extend(p.parent for p in sorted(path.glob(pattern)))
        except OSError:
            continue
        if len(found) >= limit:
            break
    return found[:limit]


def check_pipeline_dir(model_path: str | os.PathLike, *, hub_id: str | None = None) -> Path:
    """Return ``model_path`` as a Path if it is a diffusers pipeline folder, else raise ModelNotFoundError."""
    path = Path(model_path).expanduser()
    how = "pass --model-path the folder that holds model_index.json (a diffusers pipeline folder"
    how += f", e.g. the snapshot folder that `hf download {hub_id}` prints)" if hub_id else ")"
    if not path.exists():
        raise ModelNotFoundError(f"model path {str(path)!r} does not exist; {how}")
    if not path.is_dir():
        raise ModelNotFoundError(f"model path {str(path)!r} is a file, not a folder; {how}")
    if not (path / "model_index.json").is_file():
        hint = ""
        suggestions = _suggest_pipeline_dirs(path)
        if suggestions:
            hint = " (found pipeline folders below it: " + ", ".join(repr(str(s)) for s in suggestions) + ")"
        raise ModelNotFoundError(
            f"model path {str(path)!r} has no model_index.json, so it is not a diffusers pipeline folder{hint}; {how}"
        )
    return path


def load_pipeline_dir(
    path: str | os.PathLike,
    pipeline_class: str,
    *,
    torch_dtype: torch.dtype | None = None,
    what: str | None = None,
):
    """``<pipeline_class>.from_pretrained(path, local_files_only=True)`` with failures turned into
    ModelNotFoundError. ``what`` names the source in messages (default: the path)."""
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if cls is None:
        raise AsymRnRError(
            f"pipeline class {pipeline_class!r} is not in diffusers {diffusers.__version__}; upgrade diffusers"
        )
    what = what or repr(str(path))
    kwargs: dict[str, Any] = {"local_files_only": True, **dtype_kwargs(torch_dtype)}
    logger.info("loading %s from %s", pipeline_class, path)
    try:
        with quiet_progress_bars():
            return cls.from_pretrained(str(path), **kwargs)
    except Exception as err:
        logger.debug("loading %s failed", path, exc_info=True)
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelNotFoundError(
            f"could not load {pipeline_class} from {what}: {type(err).__name__}: {detail}; the folder is incomplete "
            "or not a CogVideoX pipeline: download it again (or copy the whole folder) and retry"
        ) from None


__all__ = [
    "quiet_progress_bars",
    "dtype_kwargs",
    "resolve_dtype",
    "hf_hub_cache_dir",
    "find_cached_snapshot",
    "check_pipeline_dir",
    "load_pipeline_dir",
]
