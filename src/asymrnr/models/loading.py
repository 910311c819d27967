"""Finding and loading diffusers pipeline folders without ever touching the network.

Every failure is turned into :class:`asymrnr.errors.ModelNotFoundError` (or another
:class:`~asymrnr.errors.AsymRnRError`) whose one-line message says what is missing and how to fix it;
no raw huggingface_hub / OSError traceback escapes.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Mapping

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
            f"or not a {pipeline_class} folder: download it again (or copy the whole folder) and retry"
        ) from None


# ------------------------------------------------------------------------------ pipeline folders, read as JSON

#: The architecture facts a preset records (``ModelPreset.architecture``) and a folder is compared on.
ARCHITECTURE_KEYS = ("num_blocks", "num_heads", "head_dim", "patch_size_t", "rope")


def pipeline_task(pipeline_class: str) -> str:
    """What a diffusers video pipeline generates from, told by its class name (diffusers' naming):
    ``image-to-video``, ``video-to-video``, ``control`` (a control video) or ``text-to-video``."""
    if "ImageToVideo" in pipeline_class:
        return "image-to-video"
    if "VideoToVideo" in pipeline_class:
        return "video-to-video"
    if "Control" in pipeline_class:
        return "control"
    return "text-to-video"


@dataclass(frozen=True)
class PipelineFolder:
    """What a diffusers pipeline folder says about itself, read from ``model_index.json`` and the
    transformer's ``config.json`` (no weights are read).

    Attributes:
        path: the folder.
        pipeline_class: ``_class_name`` of ``model_index.json``.
        transformer_component: the component holding the (first) transformer, ``transformer`` or
            ``transformer_2`` (``None``: the folder lists none).
        transformer_class: its class name as ``model_index.json`` lists it.
        transformer_config: its ``config.json`` (keys starting with ``_`` dropped).
    """

    path: Path
    pipeline_class: str
    transformer_component: str | None
    transformer_class: str | None
    transformer_config: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def task(self) -> str:
        return pipeline_task(self.pipeline_class)

    @property
    def label(self) -> str:
        """A short name for messages and default output folders: the folder's name, or for a Hugging Face
        cache snapshot (``models--org--name/snapshots/<revision>``) the repository's name."""
        path = self.path.resolve()
        if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
            return path.parent.parent.name.split("--")[-1] or path.name
        return path.name or "model"

    def config_file(self) -> Path:
        return self.path / (self.transformer_component or "transformer") / "config.json"


def _read_json(path: Path, what: str, fix: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelNotFoundError(f"{what} {str(path)!r} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelNotFoundError(f"cannot read {what} {str(path)!r}: {err}; {fix}") from None
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ModelNotFoundError(f"{what} {str(path)!r} is not valid JSON ({err}); {fix}") from None
    if not isinstance(doc, dict):
        raise ModelNotFoundError(f"{what} {str(path)!r} holds a {type(doc).__name__}, not a JSON object; {fix}")
    return doc


def read_pipeline_folder(model_path: str | os.PathLike, *, hub_id: str | None = None) -> PipelineFolder:
    """The :class:`PipelineFolder` of ``model_path``, read from JSON only (fast, no torch).

    Raises ModelNotFoundError when the folder is not a diffusers pipeline folder or its JSON files are
    missing or damaged (the message says which file and how to fix it)."""
    path = check_pipeline_dir(model_path, hub_id=hub_id)
    fix = "the folder is incomplete or damaged: download it again (or copy the whole folder) and retry"
    index = _read_json(path / "model_index.json", "the pipeline index", fix)
    pipeline_class = index.get("_class_name")
    if not isinstance(pipeline_class, str) or not pipeline_class:
        raise ModelNotFoundError(
            f"{str(path / 'model_index.json')!r} names no pipeline class (_class_name); {fix}"
        )
    component, transformer_class = None, None
    for name in ("transformer", "transformer_2"):  # Wan 2.2 may ship its low-noise expert alone
        entry = index.get(name)
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str) and entry[1]:
            component, transformer_class = name, entry[1]
            break
    config: dict[str, Any] = {}
    if component is not None:
        raw = _read_json(path / component / "config.json", f"the {component} config", fix)
        config = {k: v for k, v in raw.items() if not k.startswith("_")}
    return PipelineFolder(path, pipeline_class, component, transformer_class, MappingProxyType(config))


def supported_pipeline_classes() -> tuple[str, ...]:
    """Every diffusers pipeline class some registered adapter serves."""
    from asymrnr import archs

    return tuple(dict.fromkeys(c for a in archs.all_adapters() for c in a.pipeline_classes))


def transformer_config(folder: PipelineFolder):
    """The folder's transformer config as the loaded model would have it (its class's defaults for the
    keys ``config.json`` leaves out), with attribute and item access. Needs diffusers (not the weights)."""
    import inspect

    import diffusers
    from diffusers.configuration_utils import FrozenDict

    merged: dict[str, Any] = {}
    cls = getattr(diffusers, folder.transformer_class or "", None)
    if cls is not None:
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.default is not param.empty and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                merged[name] = param.default
    merged.update(folder.transformer_config)
    return FrozenDict(merged)


def folder_description(folder: PipelineFolder):
    """``(adapter, ModelDescription or None)`` of the folder's transformer, from its config alone.

    Raises AsymRnRError, listing what is supported, when the pipeline or transformer class is not one
    asymrnr serves. The description is ``None`` when the family's adapter cannot describe a model from its
    config alone (then the loaded transformer is checked instead)."""
    from asymrnr import archs

    where = str(folder.path)
    if folder.transformer_class is None:
        raise AsymRnRError(
            f"{where} holds a {folder.pipeline_class} without a transformer (model_index.json lists no "
            f"'transformer'); asymrnr accelerates the video transformers {', '.join(archs.supported_classes())}"
        )
    if folder.transformer_class not in archs.supported_classes():
        raise AsymRnRError(
            f"{where}: its transformer is a {folder.transformer_class}, which asymrnr does not support; "
            f"supported transformers: {', '.join(archs.supported_classes())}"
        )
    adapter = archs.adapter_for(folder.transformer_class)
    if folder.pipeline_class not in supported_pipeline_classes():
        raise AsymRnRError(
            f"{where} holds a {folder.pipeline_class} (model_index.json), which asymrnr does not know; supported "
            f"pipelines: {', '.join(supported_pipeline_classes())}"
        )
    if folder.pipeline_class not in adapter.pipeline_classes:
        raise AsymRnRError(
            f"{where} holds a {folder.pipeline_class} with a {folder.transformer_class} transformer, a pairing "
            f"asymrnr does not know; {adapter.family} pipelines: {', '.join(adapter.pipeline_classes)}"
        )
    stand_in = type(folder.transformer_class, (), {"config": transformer_config(folder)})()
    try:
        description = adapter.describe(stand_in)
    except Exception as err:  # an adapter that needs the modules themselves: check the loaded model instead
        logger.info("cannot describe %s from its config alone (%s: %s)", folder.config_file(), type(err).__name__, err)
        description = None
    return adapter, description


def description_facts(description) -> dict[str, Any]:
    """A model description as the facts presets and files record (``patch_size_t`` beside ``patch_size``)."""
    facts = description.to_dict()
    facts["patch_size_t"] = int(description.patch_size[0])
    return facts


def _presets_with(pipeline_class: str, facts: Mapping[str, Any] | None = None) -> list[str]:
    """Presets of ``pipeline_class`` (with ``facts``: only those whose architecture is exactly that)."""
    from asymrnr.models.presets import MODEL_PRESETS

    return [p.name for p in MODEL_PRESETS.values() if p.pipeline_class == pipeline_class
            and (facts is None or (p.architecture and all(facts.get(k) == v for k, v in p.architecture.items())))]


def check_folder_fits(folder: PipelineFolder, preset, *, adapter=None, description=None,
                      architecture: bool = True) -> None:
    """Refuse a folder that is not the preset's model: another pipeline (task), another family, or (with
    ``architecture``) other architecture facts than ``preset.architecture``. The message names the
    differing fact with both values and the fix."""
    where = str(folder.path)
    leave_out = "or leave out --model to calibrate the folder as it is (its model_index.json and configs say what it is)"
    if folder.pipeline_class != preset.pipeline_class:
        others = _presets_with(folder.pipeline_class)
        suggest = (f"pass --model {others[0]}" + (f" (or {', '.join(others[1:])})" if others[1:] else "") + ", "
                   if others else "pass a preset of that pipeline, ")
        raise AsymRnRError(
            f"{where} holds a {folder.pipeline_class} ({folder.task}), but the preset {preset.name} is a "
            f"{preset.pipeline_class} ({pipeline_task(preset.pipeline_class)}): loading it as one would fail; "
            f"{suggest}{leave_out}"
        )
    if adapter is None:
        adapter, description = folder_description(folder)
    if adapter.family != preset.family:
        raise AsymRnRError(
            f"{where}: its transformer {folder.transformer_class} is a {adapter.family} model, but the preset "
            f"{preset.name} is a {preset.family} model; {leave_out}"
        )
    if architecture and description is not None:
        facts = description_facts(description)
        check_facts(facts, preset, f"{where} ({folder.config_file().relative_to(folder.path)})",
                    matching=_presets_with(folder.pipeline_class, facts))


def check_facts(facts: Mapping[str, Any], preset, where: str, *, matching: Iterable[str] = ()) -> None:
    """Refuse a transformer whose facts differ from ``preset.architecture`` (names the fact, both values;
    ``matching``: presets that would fit, suggested)."""
    for key, want in preset.architecture.items():
        have = facts.get(key)
        if have is None:
            continue
        if isinstance(have, (list, tuple)):
            have = tuple(have)
        if have != (tuple(want) if isinstance(want, (list, tuple)) else want):
            matching = list(matching)
            fit = f"pass --model {' or '.join(matching)} (its architecture)" if matching else \
                "pass the preset that matches it"
            raise AsymRnRError(
                f"{where} describes a transformer with {key} = {have}, but {preset.name} has {key} = {want}: the "
                f"folder is not {preset.name}; {fit}, or leave out --model to calibrate the folder as it is (its "
                "own architecture, generation defaults of its family)"
            )


def folder_preset(folder: PipelineFolder, *, adapter=None, description=None):
    """``(preset, base)``: a preset for a folder given without one, and the preset whose generation
    defaults it takes.

    ``base`` is, among the presets of the folder's pipeline class, the one whose architecture is the
    folder's, else the first real model's (its model card's settings), else the first of the family. The
    returned preset is ``base`` with the folder's name, pipeline class and architecture facts."""
    import dataclasses

    from asymrnr.models.presets import MODEL_PRESETS

    if adapter is None:
        adapter, description = folder_description(folder)
    facts = description_facts(description) if description is not None else {}
    family = [p for p in MODEL_PRESETS.values() if p.family == adapter.family]
    same = [p for p in family if p.pipeline_class == folder.pipeline_class]
    exact = [p for p in same if p.architecture and facts and all(facts.get(k) == v for k, v in p.architecture.items())]
    same_task = [p for p in family if pipeline_task(p.pipeline_class) == folder.task]
    for candidates in (exact, [p for p in same if not p.embedded], same, [p for p in same_task if not p.embedded],
                       same_task, [p for p in family if not p.embedded], family):
        if candidates:
            base = candidates[0]
            break
    else:
        raise AsymRnRError(
            f"no model preset of the {adapter.family} family gives generation defaults for {folder.path}; "
            "upgrade asymrnr"
        )
    architecture = {k: facts[k] for k in ARCHITECTURE_KEYS if k in facts}
    description_text = (
        f"custom checkpoint {folder.path}: {folder.pipeline_class} with a {folder.transformer_class}"
        + (f" ({architecture['num_blocks']} blocks, {architecture['num_heads']} heads x {architecture['head_dim']})"
           if architecture else "")
        + f"; generation defaults of {base.name}"
    )
    preset = dataclasses.replace(
        base, name=folder.label, hub_id=None, alt_hub_ids=(), pipeline_class=folder.pipeline_class,
        weights_dir=None, tiny_style=None, tiny_family=None, architecture=MappingProxyType(architecture),
        description=description_text,
    )
    return preset, base


__all__ = [
    "PipelineFolder",
    "read_pipeline_folder",
    "pipeline_task",
    "supported_pipeline_classes",
    "folder_description",
    "check_folder_fits",
    "check_facts",
    "description_facts",
    "transformer_config",
    "folder_preset",
    "ARCHITECTURE_KEYS",
    "quiet_progress_bars",
    "dtype_kwargs",
    "resolve_dtype",
    "hf_hub_cache_dir",
    "find_cached_snapshot",
    "check_pipeline_dir",
    "load_pipeline_dir",
]
