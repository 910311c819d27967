"""Command line: ``asymrnr-calibrate`` and the ``asymrnr`` group (calibrate, profile, plan, inspect, report,
compare).

Commands are thin: check every input they can before any expensive work (loading a model, generating),
call the library, and turn user errors into one-line ``click`` errors that say the fix. Progress bars live
here, not in the library. Text that comes from files or arguments (prompts, notes, tags, paths) is printed
through :func:`terminal_safe`, so that it cannot move the cursor, clear the screen or fake colours.
The CLI names no model family: what it says about a model comes from :mod:`asymrnr.models.presets`
and :mod:`asymrnr.archs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import click

from ._io import check_output_path, exclusive_temp, folder_lock
from .errors import AsymRnRError
from .models.presets import MODEL_PRESETS, preset_names

logger = logging.getLogger("asymrnr")

#: Largest seed: seeds are stored as signed 64-bit integers.
MAX_SEED = 2**63 - 1
#: What ``calibrate`` writes into ``--out`` (plus ``schedule-<tag>.json``).
STATS_NAME, SCHEDULE_NAME, REPORT_NAME = "stats.h5", "schedule.json", "report.html"
TAGGED_SCHEDULE_GLOB = "schedule-*.json"
LOCK_NAME = ".asymrnr.lock"
STAGING_PREFIX = ".asymrnr-staging-"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_PRODUCERS = "`asymrnr-calibrate` or `asymrnr profile`"
#: A real model for the help texts' examples (from the presets: this module names no model).
_EXAMPLE = next((name for name, p in MODEL_PRESETS.items() if not p.embedded), preset_names()[0])

# ---------------------------------------------------------------------------------------- terminal text

# C0 and C1 controls (tab kept), DEL, line/paragraph separators, bidirectional overrides and isolates,
# and lone surrogates (undecodable bytes of file names).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# What a prompt may not hold: C0 and C1 controls but tab, DEL, and line/paragraph separators.
_PROMPT_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: Any, *, multiline: bool = False) -> str:
    """``text`` with every character that a terminal would act on escaped (``\\x1b``, ``\\u202e``, ...).

    Tabs stay; newlines stay when ``multiline`` (each line is escaped on its own)."""
    text = str(text)
    if multiline:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)


def _echo(text: Any = "", *, err: bool = False) -> None:
    """``click.echo`` for any text that may hold file-derived content: control characters escaped."""
    click.echo(terminal_safe(text, multiline=True), err=err)


def _one_line(message: Any) -> str:
    return terminal_safe(" ".join(str(message).split()))


def _user_errors(fn):
    """Turn our errors (and the OS's, for bad paths) into one-line click errors, printed terminal-safe."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException as err:
            err.message = _one_line(err.message)
            raise
        except (AsymRnRError, OSError, UnicodeDecodeError) as err:
            raise click.ClickException(_one_line(err)) from err

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# -------------------------------------------------------------------------------------------- prompts


def read_prompts(path: str | None, num_prompts: int | None, default: str | None = None) -> list[str]:
    """Prompts from a file (one a line; blank lines and '#' comments skipped), or the shipped default set
    (``default``: a file under asymrnr/data, e.g. a preset's own prompts; else data/prompts.txt).

    A prompt holding a NUL or another control character (tabs are fine) is refused, naming its line."""
    if path is None:
        text = resources.files("asymrnr").joinpath(f"data/{default or 'prompts.txt'}").read_text(encoding="utf-8")
        origin = "the default prompt set"
    else:
        p = Path(path)
        if not p.is_file():
            why = "no such file" if not p.exists() else "not a regular file"
            raise click.ClickException(f"cannot read the prompts file {p}: {why}; pass --prompts FILE with one prompt a line")
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise click.ClickException(f"cannot read the prompts file {p}: {err}; it must be UTF-8 text, one prompt a line")
        origin = str(p)
    prompts = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        bad = _PROMPT_FORBIDDEN.search(line)
        if bad:
            raise click.ClickException(
                f"{origin}, line {number}: the prompt holds the control character {_escape(bad)} (U+{ord(bad.group()):04X}); "
                "write each prompt as one line of plain text (tabs are allowed)"
            )
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.append(line)
    if not prompts:
        raise click.ClickException(f"{origin} holds no prompts; write one prompt a line (lines starting with # are comments)")
    if num_prompts is not None:
        prompts = prompts[:num_prompts]
    return prompts


# -------------------------------------------------------------------------------------------- options


def _positive(name: str):
    def check(ctx, param, value):
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be positive, got {value}", param_hint=f"--{name}")
        return value

    return check


def _known_model(ctx, param, value):
    if value is None:
        return value
    from .models.presets import get_preset

    try:
        get_preset(value)
    except AsymRnRError as err:
        raise click.BadParameter(str(err), param_hint="--model") from None
    return value


def _seed_in_range(ctx, param, value):
    if value is not None and not 0 <= value <= MAX_SEED:
        raise click.BadParameter(f"must lie in [0, 2**63 - 1], got {value}", param_hint="--seed")
    return value


def _guidance_ok(ctx, param, value):
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(
            f"must be a finite number >= 0 (e.g. 6.0; 1.0 or less turns classifier-free guidance off), got {value}",
            param_hint="--guidance",
        )
    return value


def _target_ok(ctx, param, value):
    if value is not None and not (math.isfinite(value) and value > 1.0):
        raise click.BadParameter(f"must be a speedup above 1.0, e.g. 1.3; got {value}", param_hint="--target-speedup")
    return value


def _apply_options(fn, options):
    for option in reversed(options):
        fn = option(fn)
    return fn


def generation_options(fn):
    """Options shared by every command that generates (``calibrate``, ``asymrnr-calibrate``, ``profile``)."""
    return _apply_options(fn, [
        click.option("--model", "model_name", default=None, callback=_known_model,
                     help=f"Model preset: {', '.join(preset_names())} (optional with --model-path)."),
        click.option("--model-path", type=click.Path(file_okay=False), default=None,
                     help="Local diffusers pipeline folder (with model_index.json) instead of the Hugging Face cache. "
                          "With --model it must be that preset's model; without, the folder is used as it is "
                          "(pipeline from its model_index.json, generation defaults of its family)."),
        click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
                     help="Text file with one prompt a line (default: the prompts shipped with asymrnr for the model)."),
        click.option("--images", "images_dir", type=click.Path(file_okay=False), default=None,
                     help="Image-to-video models: a folder with one conditioning image per prompt, paired by sorted "
                          "file name (default: a synthetic picture per prompt, drawn from its seed)."),
        click.option("--num-prompts", type=int, default=None, callback=_positive("num-prompts"),
                     help="Use only the first N prompts (default: 4 for real models, 2 for embedded ones)."),
        click.option("--seed", type=int, default=0, show_default=True, callback=_seed_in_range,
                     help="Seed of the first prompt; prompt i uses seed + i (all within [0, 2**63 - 1])."),
        click.option("--steps", type=int, default=None, callback=_positive("steps"), help="Inference steps (default: the model card's)."),
        click.option("--height", type=int, default=None, callback=_positive("height"), help="Video height in pixels."),
        click.option("--width", type=int, default=None, callback=_positive("width"), help="Video width in pixels."),
        click.option("--frames", type=int, default=None, callback=_positive("frames"), help="Number of video frames."),
        click.option("--guidance", type=float, default=None, callback=_guidance_ok, help="Classifier-free guidance scale (>= 0)."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None, help="Weights dtype."),
        click.option("--device", default=None, help="Device, e.g. cuda, cuda:1 or cpu (default: cuda if available)."),
        click.option("--verbose", "-v", is_flag=True, help="Log what the library does."),
    ])


def calibrate_options(fn):
    """Options of ``asymrnr-calibrate`` and ``asymrnr calibrate``: generation, planning and the output folder."""
    fn = _apply_options(fn, [
        click.option("--cache-steps", type=int, default=4, show_default=True, callback=_positive("cache-steps"),
                     help="Matching cache: recompute the matching every N steps."),
        click.option("--preset", "budget_preset", type=click.Choice(["base", "fast"]), default="base", show_default=True,
                     help="Named budget of the planned schedule (ignored with --target-speedup)."),
        click.option("--target-speedup", type=float, default=None, callback=_target_ok,
                     help="Plan for this FLOPs speedup instead of a preset, e.g. 1.3."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                     help="Output folder (default: runs/<model>)."),
        click.option("--overwrite", is_flag=True,
                     help="--out already holds results: start over (they are replaced only once the new set is complete)."),
        click.option("--resume", is_flag=True,
                     help="--out already holds results: keep the runs in its stats.h5 whose prompt and seed match, "
                          "profile only the missing prompts, then plan and write schedule and report again."),
    ])
    return generation_options(fn)


# ------------------------------------------------------------------------------------------ early checks


@dataclass
class GenerationJob:
    """What to generate, checked before anything is loaded."""

    preset: Any  # ModelPreset (for a folder given without --model: one made for it)
    model_path: str | None
    prompts_file: str | None
    prompts: list[str]
    seeds: list[int]
    settings: dict  # keyword arguments of pipe(prompt=..., ...)
    dtype: str | None
    device: str | None
    task: str = "text-to-video"  # or "image-to-video": one conditioning image per prompt
    images: list | None = None  # image files, one per prompt (image-to-video; None: synthetic pictures)
    images_dir: str | None = None
    custom: bool = False  # --model-path without --model
    defaults_from: str | None = None  # the preset whose generation defaults a custom folder takes
    folder: Any = None  # asymrnr.models.loading.PipelineFolder of --model-path
    environment: dict | None = None  # the loaded model and software (schedule provenance); set once loaded

    def runs(self) -> list[tuple[str, int]]:
        return list(zip(self.prompts, self.seeds))

    def call_kwargs(self, i: int) -> dict:
        """Keyword arguments of the pipeline call for prompt ``i`` (its conditioning image included)."""
        kwargs = dict(self.settings)
        if self.task == "image-to-video":
            from .models.images import fit_image, open_image, synthetic_image

            height, width = kwargs["height"], kwargs["width"]
            if self.images is not None:
                kwargs["image"] = fit_image(open_image(self.images[i]), height, width)
            else:
                kwargs["image"] = synthetic_image(height, width, self.seeds[i], self.prompts[i])
        return kwargs

    def command(self) -> str:
        """The options that name the model and its inputs, for provenance notes."""
        parts = []
        if not self.custom:
            parts.append(f"--model {self.preset.name}")
        if self.model_path is not None:
            parts.append(f"--model-path {self.model_path}")
        if self.task == "image-to-video":
            parts.append(f"--images {self.images_dir}" if self.images_dir else "(synthetic images)")
        return " ".join(parts)


def prepare_job(model_name, model_path, prompts_file, num_prompts, seed, steps, height, width, frames, guidance,
                dtype, device, images_dir=None) -> GenerationJob:
    """Check everything about a generation that needs no model weights: which model (a preset, a folder
    that must match it, or a folder alone), sizes for the family, prompts, seeds, conditioning images.
    Raises click errors that say the fix."""
    from . import archs
    from .models import loading
    from .models.presets import get_preset

    if model_name is None and model_path is None:
        raise click.UsageError(
            f"pass --model NAME (one of: {', '.join(preset_names())}) or --model-path DIR (a diffusers pipeline "
            "folder), or both"
        )
    folder = config = base = None
    preset = get_preset(model_name) if model_name is not None else None
    if model_path is not None:
        folder = loading.read_pipeline_folder(model_path, hub_id=preset.hub_id if preset is not None else None)
        adapter, description = loading.folder_description(folder)
        if preset is None:
            preset, base = loading.folder_preset(folder, adapter=adapter, description=description)
        else:
            loading.check_folder_fits(folder, preset, adapter=adapter, description=description)
        config = dict(loading.transformer_config(folder))
    elif not preset.embedded:
        config = _cached_config(preset)
    task = loading.pipeline_task(preset.pipeline_class)
    if task not in ("text-to-video", "image-to-video"):
        what = f"{folder.path} holds" if folder is not None else f"{preset.name} is"
        raise AsymRnRError(
            f"{what} a {preset.pipeline_class} ({task}): the command line calibrates text-to-video and image-to-video "
            f"pipelines, which it drives from prompts (and images); profile a {task} pipeline from Python, with "
            "`with asymrnr.profile(pipe, 'stats.h5'):` around your own calls, then plan: `asymrnr plan stats.h5`"
        )
    settings = preset.call_kwargs()
    for key, value in (("num_inference_steps", steps), ("height", height), ("width", width), ("num_frames", frames),
                       ("guidance_scale", guidance)):
        if value is not None:
            settings[key] = value
    rules = archs.get(preset.family).generation_rules(config)
    if rules.fixed_size is not None and height is None and width is None:
        settings["height"], settings["width"] = rules.fixed_size
    problem = rules.check(settings["height"], settings["width"], settings["num_frames"])
    if problem:
        raise click.BadParameter(f"{problem} ({preset.name})", param_hint="--height/--width/--frames")
    embedded = (base or preset).embedded
    prompts = read_prompts(prompts_file, num_prompts or (2 if embedded else 4), default=preset.prompts_file)
    if seed + len(prompts) - 1 > MAX_SEED:
        raise click.BadParameter(
            f"prompt i uses seed + i, so with {len(prompts)} prompts --seed must be at most {MAX_SEED - len(prompts) + 1} "
            f"(seeds lie in [0, 2**63 - 1]); got {seed}",
            param_hint="--seed",
        )
    images = None
    if images_dir is not None:
        if task != "image-to-video":
            raise click.BadParameter(
                f"{preset.name} is a {task} model ({preset.pipeline_class}): it takes no conditioning images; leave "
                "out --images", param_hint="--images")
        from .models.images import read_images

        in_file = len(read_prompts(prompts_file, None, default=preset.prompts_file))
        images = read_images(images_dir, len(prompts), num_file_prompts=in_file)
    return GenerationJob(preset, model_path, prompts_file, prompts, [seed + i for i in range(len(prompts))],
                         settings, dtype, device, task=task, images=images, images_dir=images_dir,
                         custom=model_name is None, defaults_from=base.name if base is not None else None,
                         folder=folder)


def _cached_config(preset) -> dict | None:
    """The transformer config of the preset's snapshot in the local Hugging Face cache (JSON only), so that a
    size its config forbids is refused before minutes of loading; ``None`` when there is none (loading says)."""
    from .models import loading

    try:
        found = loading.find_cached_snapshot(preset.hub_ids)
        if found is None:
            return None
        folder = loading.read_pipeline_folder(found[1])
        return dict(loading.transformer_config(folder)) if folder.transformer_class else None
    except (AsymRnRError, OSError, ImportError) as err:
        logger.info("cannot read the cached config of %s: %s", preset.name, err)
        return None


def _announce(job: GenerationJob) -> None:
    """Say what a folder given without a preset was taken for, and where the conditioning images come from."""
    if job.custom:
        arch = job.preset.architecture
        blocks = f"{arch['num_blocks']} block" + ("s" if arch.get("num_blocks") != 1 else "") if arch else ""
        shape = f", {blocks}, {arch['num_heads']} heads x {arch['head_dim']}" if arch else ""
        same = " (same architecture)" if arch and dict(arch) == dict(MODEL_PRESETS[job.defaults_from].architecture) else ""
        _echo(f"{job.model_path}: {job.preset.pipeline_class} with a {job.folder.transformer_class} "
              f"({job.preset.family}{shape}); generation defaults of {job.defaults_from}{same}, "
              "override them with --steps/--height/--width/--frames/--guidance/--dtype")
    if job.task == "image-to-video":
        if job.images is not None:
            _echo(f"conditioning images: {len(job.images)} from {job.images_dir}, paired with the prompts by sorted file "
                  f"name ({job.images[0].name} ... {job.images[-1].name}), centre-cropped to "
                  f"{job.settings['height']}x{job.settings['width']}")
        else:
            _echo("conditioning images: synthetic (one per prompt, drawn from its seed and text); pass --images DIR "
                  "for pictures like the ones you will animate")


def _resolve_device(job: GenerationJob) -> None:
    """Pick and check the device (imports torch; no model is loaded)."""
    import torch

    from .models.presets import check_device

    if job.device is None:
        job.device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(job.device)


def _model_fact(model: dict, key: str) -> Any:
    if key in model:
        return model[key]
    patch = model.get("patch_size")
    if key == "patch_size_t" and isinstance(patch, (list, tuple)) and len(patch) == 3:
        return patch[0]  # newer files record the (frames, height, width) patch
    return None


def _check_architecture(model: dict, preset, where: str, fix: str, made: str = "was profiled on") -> None:
    """Refuse a file whose ``model`` facts differ from ``preset``'s (names the key and both values; ``made``
    says how the file relates to its model)."""
    want = {"family": preset.family, **preset.architecture}
    for key, value in want.items():
        have = _model_fact(model, key)
        if key == "family" and have is None:
            continue  # older files do not record it
        if have != value:
            raise AsymRnRError(
                f"{where} {made} a model with {key} = {have}, but {preset.name} has {key} = {value}; {fix}"
            )


def _check_same_generation(stats, job: GenerationJob, where: str, fix: str) -> None:
    """Refuse to add runs of ``job`` to ``stats`` made with other generation settings or another model."""
    gen = stats.generation or {}
    settings = job.settings
    asked = {
        "height": settings["height"], "width": settings["width"], "num_frames": settings["num_frames"],
        "num_steps": settings["num_inference_steps"],
        "guidance_scale": float(settings["guidance_scale"] or 1.0),
    }
    for key, want in asked.items():
        have = gen.get(key)
        if have is None:
            continue
        same = math.isclose(float(have), float(want), rel_tol=1e-9) if key == "guidance_scale" else int(have) == int(want)
        if not same:
            raise AsymRnRError(
                f"{where} holds runs made with {key} = {have}, but this run asks for {want}; pass the same settings "
                f"(see `asymrnr inspect {where}`), or {fix}"
            )
    _check_architecture(stats.model or {}, job.preset, where, fix)


# ------------------------------------------------------------------------------------------ file kinds


def file_kind(path: str | os.PathLike) -> str:
    """Which kind of file ``path`` is, by its content: ``stats`` (HDF5), ``schedule`` (JSON whose
    ``format`` is asymrnr-schedule), ``json`` (other or damaged JSON), ``empty`` or ``unknown``.

    A missing path, a folder or something that is not a regular file raises AsymRnRError."""
    from .schedule_format import FORMAT_NAME

    p = Path(path)
    if not p.exists():
        raise AsymRnRError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise AsymRnRError(f"{p} is a folder, not a file; pass the path of a schedule (.json) or statistics (.h5) file")
    if not p.is_file():
        raise AsymRnRError(f"{p} is not a regular file (a device, FIFO or socket); pass a schedule or statistics file")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(4096)
        if not head:
            return "empty"
        offset = 0  # HDF5 puts its signature at 0, 512, 1024, 2048, ... (after a user block)
        while offset < min(size, 1 << 30):
            fh.seek(offset)
            if fh.read(8) == _HDF5_SIGNATURE:
                return "stats"
            offset = 512 if offset == 0 else offset * 2
    if not head.lstrip(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"{"):
        return "unknown"
    if size > 256 * 2**20:
        return "json"
    try:
        doc = json.loads(p.read_bytes().decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return "json"
    return "schedule" if isinstance(doc, dict) and doc.get("format") == FORMAT_NAME else "json"


def _describe_kind(p: Path, kind: str) -> str:
    if kind == "empty":
        return "it is empty (0 bytes)"
    if kind == "json":
        return "it is a JSON file but not an asymrnr schedule"
    with open(p, "rb") as fh:
        head = fh.read(16)
    damaged = ""
    if p.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        damaged = "; if it was written as a statistics file it is damaged or truncated (no HDF5 signature)"
    elif p.suffix.lower() == ".json":
        damaged = "; if it was written as a schedule it is damaged (not JSON text)"
    return f"it is neither HDF5 nor JSON (it starts with {head!r}){damaged}"


def expect_stats(path: str | os.PathLike, command: str) -> Path:
    """Check that ``path`` is a statistics file before ``command`` reads it; else say what it is."""
    p = Path(path)
    kind = file_kind(p)
    if kind == "stats":
        return p
    if kind == "schedule":
        raise AsymRnRError(
            f"{p} is an asymrnr schedule (JSON), not a statistics file; `asymrnr {command}` reads the stats.h5 that "
            f"{_PRODUCERS} wrote (to look at this schedule: `asymrnr inspect {p}`)"
        )
    raise AsymRnRError(
        f"{p} is not an asymrnr statistics file: {_describe_kind(p, kind)}; pass the stats.h5 that {_PRODUCERS} wrote"
    )


def expect_schedule(path: str | os.PathLike, option: str) -> Path:
    """Check that ``path`` can be a schedule before it is read; a statistics file says what to pass instead."""
    p = Path(path)
    kind = file_kind(p)
    if kind in ("schedule", "json"):
        return p  # load_schedule says what is wrong with a JSON file that is not a valid schedule
    if kind == "stats":
        raise AsymRnRError(
            f"{p} is an asymrnr statistics file (HDF5), not a schedule; pass {option} a schedule .json (the "
            f"schedule.json that asymrnr-calibrate wrote, or plan one: `asymrnr plan {p} -o schedule.json`)"
        )
    raise AsymRnRError(f"{p} is not an asymrnr schedule: {_describe_kind(p, kind)}; pass {option} a schedule .json")


# --------------------------------------------------------------------------------------------- profiling


def _profile_into(job: GenerationJob, todo: list[int], receive, ctx=None) -> float:
    """Load the model and profile the prompts ``todo`` (indices into job.prompts), spread over the ranks of
    ``ctx`` (one process by default); rank 0's ``receive(index, run)`` gets every run. Seconds of profiling.

    Raises :class:`asymrnr.distributed.RankFailed` (on every rank) when a rank failed or was interrupted."""
    from .distributed import RankContext, sigterm_interrupts
    from .formats.schedule import environment_provenance
    from .profiler.sharded import agree, profile_prompts

    ctx = ctx or RankContext()
    preset = job.preset
    source = "embedded" if preset.embedded and job.model_path is None else job.model_path or preset.hub_id
    if ctx.is_main:
        ranks = f" (and {ctx.world - 1} more rank(s), each on its own device)" if ctx.distributed else ""
        _echo(f"loading {preset.name} ({source}) on {job.device}{ranks}")
    pipe, error = None, None
    try:
        pipe = _load_pipeline(job)
        pipe.set_progress_bar_config(leave=False, desc="steps", disable=not ctx.is_main)
        job.environment = environment_provenance(pipe)
    except Exception as err:  # noqa: BLE001 - the other ranks must hear of it
        error = err
    agree(ctx, error, "to load the model")
    started = time.perf_counter()
    if not ctx.is_main:
        with sigterm_interrupts():
            profile_prompts(ctx, pipe, job.runs(), job.call_kwargs, todo, receive)
        return time.perf_counter() - started
    with sigterm_interrupts(), click.progressbar(length=len(todo), label="prompts", show_pos=True) as bar:
        def advance(k: int) -> None:
            bar.update(min(ctx.world, len(todo) - k * ctx.world))

        profile_prompts(ctx, pipe, job.runs(), job.call_kwargs, todo, receive, on_round=advance)
    return time.perf_counter() - started


def _load_pipeline(job: GenerationJob):
    """Load the job's pipeline on its device and check it (:func:`_check_loaded`)."""
    from .models.presets import load_pipeline

    if job.custom:
        pipe = load_pipeline(None, model_path=job.model_path, dtype=job.dtype or job.preset.dtype, device=job.device)
    else:
        pipe = load_pipeline(job.preset.name, model_path=job.model_path, dtype=job.dtype, device=job.device)
    _check_loaded(pipe, job)
    return pipe


def _check_loaded(pipe, job: GenerationJob) -> None:
    """Before generating: the loaded transformer's own config allows the size (e.g. learned positional
    embeddings), and a folder given with a preset has the preset's architecture."""
    from . import archs
    from .models.loading import check_facts, description_facts

    adapter = archs.adapter_for(pipe)
    transformer = next(t for t in (getattr(pipe, c, None) for c in adapter.components) if t is not None)
    config = getattr(getattr(transformer, "_orig_mod", transformer), "config", None)
    rules = adapter.generation_rules(dict(config) if config is not None else None)
    s = job.settings
    problem = rules.check(s["height"], s["width"], s["num_frames"])
    if problem:
        raise click.BadParameter(f"{problem} ({job.preset.name})", param_hint="--height/--width/--frames")
    if job.model_path is not None and not job.custom:
        check_facts(description_facts(adapter.describe(transformer)), job.preset, str(job.model_path))


class _Followers:
    """Rank 0 tells the other ranks once what to profile (``("todo", [...])``) or that it stopped
    (``("abort", message)``); the other ranks wait for it before loading anything."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.told = not ctx.distributed

    def tell(self, payload) -> None:
        if self.told:
            return
        from .distributed import all_gather_object

        self.told = True
        all_gather_object(payload, self.ctx)

    def stop(self, err: BaseException) -> None:
        with contextlib.suppress(Exception):
            self.tell(("abort", _one_line(err) or type(err).__name__))


def _follow(job: GenerationJob, ctx) -> dict:
    """A rank other than 0: wait for rank 0's prompts, profile this rank's share of them, send the runs."""
    from .distributed import RankFailed, all_gather_object

    kind, value = all_gather_object(None, ctx)[0]
    if kind == "abort":
        raise AsymRnRError(f"rank 0 stopped before profiling: {value}")
    try:
        _profile_into(job, value, None, ctx)
    except RankFailed as err:
        raise AsymRnRError(f"rank {ctx.rank} stopped: {err}; rank 0 kept the runs completed so far") from None
    return {}


def _stopped_message(collector, partial: Path, err: BaseException, job: GenerationJob, fix: str) -> str:
    """What an interrupted profiling kept, what it misses, and how to complete it."""
    from .distributed import Terminated
    from .profiler.sharded import describe_missing

    missing = collector.todo
    if isinstance(err, Terminated):
        why = "terminated by SIGTERM: under torchrun, another rank failed or the job was stopped"
    else:
        why = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{err}"
    if collector.received or partial.exists():
        kept = f"the {len(collector.received)} run(s) profiled now are kept in {partial}"
    else:
        kept = "no run was completed"
    return (f"profiling stopped ({why}): {kept}; {len(missing)} of {len(job.prompts)} prompt(s) missing: "
            f"{describe_missing(job.runs(), missing)}; {fix}")


def _copy_runs(stats, indices: list[int], source: Path, dest: Path) -> None:
    """Write the runs ``indices`` of ``stats`` (loaded from ``source``) into the new file ``dest``."""
    if indices == list(range(stats.num_runs)):
        shutil.copyfile(source, dest)
        return
    from .formats.stats.merge import FileSettings, run_of, write_runs

    write_runs(dest, FileSettings.of(stats), (run_of(stats, i) for i in indices))


# --------------------------------------------------------------------------------------------- calibrate


def _existing_results(out: Path) -> list[str]:
    names = [n for n in (STATS_NAME, SCHEDULE_NAME, REPORT_NAME) if os.path.lexists(out / n)]
    return names + sorted(p.name for p in out.glob(TAGGED_SCHEDULE_GLOB))


def _prepare_out_dir(out: Path) -> bool:
    """Create ``out`` if needed (returns whether it was created); refuse a file or an unwritable folder."""
    if out.exists() and not out.is_dir():
        raise AsymRnRError(f"--out {out} is a file, not a folder; choose a folder for the results")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AsymRnRError(f"cannot create the --out folder {out}: a file is in the way on that path; choose another --out") from None
    except PermissionError:
        raise AsymRnRError(f"cannot create the --out folder {out}: permission denied; choose a writable --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise AsymRnRError(f"--out {out} is not writable; choose a writable folder (or fix its permissions)")
    return created


def _remove_stale_staging(out: Path) -> None:
    """Staging folders left by a calibration that was killed (we hold the folder's lock: none is in use)."""
    for p in out.glob(STAGING_PREFIX + "*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _move_into_place(staging: Path, out: Path, produced: list[str]) -> None:
    """Move the complete new results from ``staging`` into ``out``; remove old results they replace."""
    for name in produced:
        os.replace(staging / name, out / name)
    stale = [p for p in out.glob(TAGGED_SCHEDULE_GLOB) if p.name not in produced]
    if REPORT_NAME not in produced:
        stale.append(out / REPORT_NAME)
    for p in stale:
        if p.is_file() and not p.is_symlink():  # planned from the replaced statistics
            p.unlink()


def _write_report(stats, path: Path, schedule) -> Path | None:
    try:
        from .report import write_report
    except ImportError:  # the report module is optional at this stage
        logger.info("report module not available; skipping report.html")
        return None
    return write_report(stats, path, schedule=schedule)


@_user_errors
def run_calibrate(model_name, model_path, prompts_file, num_prompts, seed, steps, height, width, frames, guidance,
                  dtype, device, cache_steps, budget_preset, target_speedup, out_dir, verbose, overwrite=False,
                  resume=False, images_dir=None) -> dict:
    """Profile the model on prompts, plan a schedule, write stats, schedule and report. Returns the paths.

    Under torchrun (``WORLD_SIZE`` > 1) the prompts are spread over the ranks; rank 0 alone locks and writes
    ``--out`` (docs/distributed.md)."""
    from .distributed import env_context, process_group, rank_device

    _setup_logging(verbose)
    if overwrite and resume:
        raise click.UsageError("--overwrite and --resume exclude each other: pass one")
    ctx = env_context()
    job = prepare_job(model_name, model_path, prompts_file, num_prompts, seed, steps, height, width, frames, guidance,
                      dtype, device, images_dir)
    out = Path(out_dir or Path("runs") / job.preset.name)
    for name in (STATS_NAME, SCHEDULE_NAME, REPORT_NAME):
        check_output_path(out / name, inputs=[prompts_file])
    if images_dir is not None and out.resolve() == Path(images_dir).expanduser().resolve():
        raise AsymRnRError(f"--out {out} is the --images folder: the results would be read as images next time; "
                           "choose another --out")
    with process_group(ctx):
        if ctx.distributed:
            job.device = rank_device(job.device, ctx)  # cuda:LOCAL_RANK, or the CPU
        _resolve_device(job)
        if not ctx.is_main:
            return _follow(job, ctx)
        _announce(job)
        followers = _Followers(ctx)
        created = False
        try:
            created = _prepare_out_dir(out)
            with folder_lock(out, LOCK_NAME, what="another calibration",
                             fix="wait for it to finish, or choose another --out"):
                return _calibrate_locked(job, out, cache_steps, budget_preset, target_speedup, overwrite, resume,
                                         ctx, followers)
        except BaseException as err:
            followers.stop(err)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if still empty
            raise


def _calibrate_locked(job: GenerationJob, out: Path, cache_steps, budget_preset, target_speedup, overwrite,
                      resume, ctx=None, followers=None) -> dict:
    from .distributed import RankContext, RankFailed
    from .planner import plan_schedule
    from .profiler import load_stats
    from .profiler.sharded import RunCollector, partial_path

    ctx = ctx or RankContext()
    followers = followers or _Followers(ctx)
    _remove_stale_staging(out)
    existing = _existing_results(out)
    partial = partial_path(out / STATS_NAME)
    had_partial = partial.is_file()
    if (existing or had_partial) and not (overwrite or resume):
        held = existing + ([partial.name] if had_partial else [])
        raise AsymRnRError(
            f"{out} already holds asymrnr results ({', '.join(held)}); pass --resume to keep the runs of its "
            "stats.h5 (and of stats.partial.h5, left by an interrupted calibration) whose prompt and seed match "
            "this calibration and profile only the missing prompts, or --overwrite to start over (either way the "
            "old results are replaced only once the new stats, schedule and report are complete), or choose "
            "another --out"
        )
    sources = []
    if resume:
        for where in (out / STATS_NAME, partial):
            if not where.exists():
                continue
            try:
                stats = load_stats(where)
            except AsymRnRError as err:
                raise AsymRnRError(f"cannot resume: {err}; pass --overwrite to start over") from None
            _check_same_generation(stats, job, str(where), "pass --overwrite to start over")
            sources.append(stats)
    collector = RunCollector(job.runs(), sources, partial=partial, append_partial=resume)
    todo = collector.todo
    kept = sorted(collector.kept)
    if resume:
        where = " and ".join(str(p) for p in (out / STATS_NAME, partial) if p.exists()) or str(out / STATS_NAME)
        _echo(f"resuming: {len(kept)} of {len(job.prompts)} run(s) already in {where}, {len(todo)} to profile")
    followers.tell(("todo", todo))

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    profiled = False
    try:
        staged_stats = staging / STATS_NAME
        profile_s = 0.0
        if todo:
            try:
                profile_s = _profile_into(job, todo, collector.receive, ctx)
            except (RankFailed, KeyboardInterrupt) as err:
                collector.close()
                message = _stopped_message(collector, partial, err, job, "run the same command with --resume to "
                                           "profile only the missing prompts")
                if isinstance(err, KeyboardInterrupt):
                    _echo(message, err=True)
                    raise
                raise AsymRnRError(message) from None
            finally:
                collector.close()
        n = len(job.prompts)
        old = sources[0] if sources and sources[0].path == str(out / STATS_NAME) else None
        if not todo and old is not None and old.num_runs == n and all(
                collector.kept[j][0] is old and collector.kept[j][1] == j for j in range(n)):
            _copy_runs(old, list(range(n)), out / STATS_NAME, staged_stats)  # byte for byte
        else:
            collector.write(staged_stats)
        profiled = True

        # where it will be: the report and the schedule name it
        stats = dataclasses.replace(load_stats(staged_stats), path=str(out / STATS_NAME))
        result = plan_schedule(stats, preset=None if target_speedup else budget_preset, target_speedup=target_speedup,
                               cache_steps=cache_steps, notes=f"asymrnr-calibrate {job.command()}")
        schedule = result.schedule
        if job.environment:  # the model and software it was profiled with (not known when every run was resumed)
            schedule = dataclasses.replace(schedule, provenance={**schedule.provenance, **job.environment})
        tagged = f"schedule-{schedule.tag}.json"
        schedule.save(staging / SCHEDULE_NAME)
        schedule.save(staging / tagged)
        produced = [STATS_NAME, tagged, SCHEDULE_NAME]
        if _write_report(stats, staging / REPORT_NAME, schedule) is not None:
            produced.append(REPORT_NAME)
        _move_into_place(staging, out, produced)
        partial.unlink(missing_ok=True)  # every run is in stats.h5 now
    except BaseException:
        if profiled and not had_partial:
            partial.unlink(missing_ok=True)  # its runs were all profiled by this calibration, which failed later
        if existing:
            _echo(f"calibration stopped: the results in {out} were left as they were", err=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    stats_path, schedule_path = out / STATS_NAME, out / SCHEDULE_NAME
    report_path = out / REPORT_NAME if REPORT_NAME in produced else None
    _echo("")
    on = f" on {ctx.world} ranks" if ctx.distributed else ""
    _echo(f"profiled {len(todo)} generation(s) in {profile_s:.1f} s{on}" + (f", kept {len(kept)}" if kept else ""))
    _echo(result.message)
    _echo(f"schedule {schedule.tag}: predicted speedup {result.predicted_speedup:.3f}x (FLOPs model)")
    if not result.reached:
        _echo("warning: the budget could not be reached; the closest schedule was planned", err=True)
    _echo(f"stats:    {stats_path}")
    _echo(f"schedule: {schedule_path} (also {tagged})")
    if report_path is not None:
        _echo(f"report:   {report_path}")
    return {"stats": stats_path, "schedule": schedule_path, "report": report_path, "result": result}


CALIBRATE_HELP = """Profile a model on prompts, plan an AsymRnR schedule and write stats.h5, schedule.json (and
schedule-<tag>.json) and report.html into --out.

Nothing in --out changes until the new stats, schedule and report are all complete (they are made in a
hidden staging folder inside it, then moved into place). A folder that already holds results is refused
unless you pass --overwrite (start over; the old schedule-*.json files go, as they were planned from the
old statistics) or --resume (keep the runs of its stats.h5 whose prompt and seed match, profile only the
missing prompts, plan again). One calibration at a time writes into a folder (it is locked).

Image-to-video models take one conditioning image per prompt from --images DIR (paired by sorted file
name), or draw a synthetic one per prompt. --model-path DIR without --model calibrates a pipeline folder
as it is (its model_index.json names the pipeline; generation defaults of its family).

\b
Examples:
  asymrnr-calibrate --model {model} --target-speedup 1.2 --out runs/{model}
  asymrnr-calibrate --model {i2v} --images pictures/ --prompts prompts.txt
  asymrnr-calibrate --model-path /data/my-finetune --out runs/my-finetune
""".format(model=_EXAMPLE, i2v=next((n for n, p in MODEL_PRESETS.items() if "ImageToVideo" in p.pipeline_class
                                     and not p.embedded), _EXAMPLE))


@click.command("asymrnr-calibrate", context_settings={"help_option_names": ["-h", "--help"]}, help=CALIBRATE_HELP)
@calibrate_options
def calibrate_command(**kwargs):
    run_calibrate(**kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asymrnr")
def main():
    """asymrnr: Asymmetric Reduction and Restoration for video diffusion transformers."""


main.add_command(calibrate_command, name="calibrate")


# ---------------------------------------------------------------------------------------------- profile


@main.command("profile", epilog=f"Example: asymrnr profile --model {_EXAMPLE} --num-prompts 8 -o stats.h5")
@generation_options
@click.option("-o", "--output", "--out", "output", type=click.Path(dir_okay=False), default=STATS_NAME,
              show_default=True, help="The statistics file to write.")
@click.option("--append", is_flag=True, help="Add the runs to an existing statistics file of the same model and settings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file (only once every prompt is profiled).")
@click.option("--resume", is_flag=True,
              help="An interrupted profile left OUTPUT's partial file (stats.partial.h5 for stats.h5): keep its runs "
                   "whose prompt and seed match, profile only the missing prompts.")
@_user_errors
def profile_command(model_name, model_path, prompts_file, images_dir, num_prompts, seed, steps, height, width, frames,
                    guidance, dtype, device, verbose, output, append, overwrite, resume):
    """Profile a model on prompts and write the statistics file only (no planning, no report).

    The file is written next to OUTPUT under a temporary name and moved into place once every prompt is
    profiled; an existing OUTPUT is refused unless --append or --overwrite is given. Runs completed before
    an interruption (Ctrl-C, a failed rank under torchrun) are kept in OUTPUT's partial file; --resume
    completes them. Under torchrun the prompts are spread over the ranks, rank 0 writes.
    Plan from it with `asymrnr plan`.
    """
    from .distributed import env_context, process_group, rank_device
    from .profiler.sharded import partial_path

    _setup_logging(verbose)
    if append and overwrite:
        raise click.UsageError("--append and --overwrite exclude each other: pass one")
    if resume and overwrite:
        raise click.UsageError("--overwrite and --resume exclude each other: pass one")
    ctx = env_context()
    job = prepare_job(model_name, model_path, prompts_file, num_prompts, seed, steps, height, width, frames, guidance,
                      dtype, device, images_dir)
    path = check_output_path(output, inputs=[prompts_file], option="-o")
    partial = partial_path(path)
    if path.exists() and not (append or overwrite):
        raise AsymRnRError(
            f"{path} already exists; pass --append to add these runs to it (same model and settings), --overwrite "
            "to replace it (once every prompt is profiled), or choose another -o"
        )
    if partial.exists() and not (resume or overwrite):
        raise AsymRnRError(
            f"{partial} holds the runs of an interrupted profile of {path.name}; pass --resume to keep those whose "
            "prompt and seed match and profile only the missing prompts, or --overwrite to start over"
        )
    with process_group(ctx):
        if ctx.distributed:
            job.device = rank_device(job.device, ctx)  # cuda:LOCAL_RANK, or the CPU
        _resolve_device(job)
        if not ctx.is_main:
            _follow(job, ctx)
            return
        _announce(job)
        followers = _Followers(ctx)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with folder_lock(path.parent, f".{path.name}.lock", what=f"another asymrnr profile of {path.name}",
                             fix="wait for it to finish, or choose another -o"):
                old, seconds, stats, done = _profile_locked(job, path, partial, append, resume, ctx, followers)
        except BaseException as err:
            followers.stop(err)
            raise
    added = f", added to the {old.num_runs} run(s) it held" if old is not None else ""
    _echo("")
    on = f" on {ctx.world} ranks" if ctx.distributed else ""
    _echo(f"profiled {done} generation(s) in {seconds:.1f} s{on}{added}: {stats.num_runs} run(s) in {path}")
    _echo(f"plan a schedule from it: asymrnr plan {path} --target-speedup 1.3 -o schedule.json")


def _profile_locked(job: GenerationJob, path: Path, partial: Path, append: bool, resume: bool, ctx, followers):
    """Rank 0 of ``asymrnr profile``, holding the lock: ``(old stats or None, seconds, new stats, runs profiled)``."""
    from .distributed import RankFailed
    from .profiler import load_stats
    from .profiler.sharded import RunCollector

    old = None
    if append and path.exists():
        expect_stats(path, "profile --append")
        old = load_stats(path)
        _check_same_generation(old, job, str(path), "write to another -o file")
    sources = []
    if resume and partial.exists():
        sources.append(load_stats(partial))
        _check_same_generation(sources[0], job, str(partial), "pass --overwrite to start over")
        if old is not None:
            from .formats.stats.merge import header_differences

            diffs = header_differences(old, sources[0])
            if diffs:
                raise AsymRnRError(f"{partial} and {path} differ in {diffs[0][0]}; pass --overwrite to start over")
    collector = RunCollector(job.runs(), sources, partial=partial, append_partial=resume)
    todo = collector.todo
    if resume:
        _echo(f"resuming: {len(collector.kept)} of {len(job.prompts)} run(s) already in {partial}, "
              f"{len(todo)} to profile")
    followers.tell(("todo", todo))
    seconds = 0.0
    if todo:
        try:
            seconds = _profile_into(job, todo, collector.receive, ctx)
        except (RankFailed, KeyboardInterrupt) as err:
            collector.close()
            message = _stopped_message(collector, partial, err, job, "run the same command with --resume to "
                                       "profile only the missing prompts")
            if isinstance(err, KeyboardInterrupt):
                _echo(message, err=True)
                raise
            raise AsymRnRError(message) from None
        finally:
            collector.close()
    tmp = exclusive_temp(path, ".partial")
    try:
        if old is not None:
            shutil.copyfile(path, tmp)
        writer = collector.settings.writer(tmp, "a" if old is not None else "w")
        try:
            for run in collector.ordered():
                writer.write_run(run)
        finally:
            writer.close()
        stats = load_stats(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    partial.unlink(missing_ok=True)  # every run is in OUTPUT now
    return old, seconds, stats, len(todo)


# ------------------------------------------------------------------------------------------------ merge


@main.command("merge", epilog="Example: asymrnr merge node1/stats.h5 node2/stats.h5 -o stats.h5")
@click.argument("stats_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The statistics file to write (not one of the inputs).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_user_errors
def merge_command(stats_files, output, overwrite):
    """Merge statistics files made on different machines into one, e.g. to plan from all their runs.

    The files must agree on the model, the generation settings and the matching settings (a differing key
    is named with both values); every run is kept once (the same prompt and seed is the same run: the first
    file's is kept).
    """
    for f in stats_files:
        expect_stats(f, "merge")
    path = check_output_path(output, inputs=list(stats_files), option="-o")
    if path.exists() and not overwrite:
        raise AsymRnRError(f"{path} already exists; pass --overwrite to replace it, or choose another -o")
    from .formats.stats.merge import merge_stats

    result = merge_stats(list(stats_files), path)
    for f, n in zip(stats_files, result.kept):
        _echo(f"{f}: {n} run(s)")
    if result.duplicates:
        _echo(f"left out {len(result.duplicates)} run(s) already present (same prompt and seed)")
    _echo(f"merged {result.num_runs} run(s) into {path}")
    _echo(f"plan a schedule from it: asymrnr plan {path} --target-speedup 1.3 -o schedule.json")


# ------------------------------------------------------------------------------------------------- plan


@main.command("plan")
@click.argument("stats_file", type=click.Path(dir_okay=False))
@click.option("--target-speedup", type=float, default=None, callback=_target_ok, help="FLOPs speedup to plan for, e.g. 1.3.")
@click.option("--preset", "budget_preset", type=click.Choice(["base", "fast"]), default="base", show_default=True,
              help="Named budget (ignored with --target-speedup).")
@click.option("--cache-steps", type=int, default=4, show_default=True, callback=_positive("cache-steps"),
              help="Matching cache steps of the planned schedule.")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True,
              help="Which recorded similarity ranks the cells.")
@click.option("--model", "model_name", default=None, callback=_known_model,
              help="Refuse a stats file that was not made on this model preset.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=SCHEDULE_NAME, show_default=True,
              help="Where to write the schedule (not one of the inputs).")
@_user_errors
def plan_command(stats_file, target_speedup, budget_preset, cache_steps, metric, model_name, output):
    """Plan a schedule from a statistics file, without generating again."""
    expect_stats(stats_file, "plan")
    path = check_output_path(output, inputs=[stats_file], option="-o")
    from .planner import plan_schedule
    from .profiler import load_stats

    stats = load_stats(stats_file)
    if model_name is not None:
        _check_stats_model(stats, model_name)
    result = plan_schedule(stats, preset=None if target_speedup else budget_preset, target_speedup=target_speedup,
                           cache_steps=cache_steps, metric=metric, notes=f"asymrnr plan {stats_file}")
    path = result.schedule.save(path)
    _echo(result.message)
    _echo(f"schedule {result.schedule.tag}: predicted speedup {result.predicted_speedup:.3f}x -> {path}")


def _check_stats_model(stats, model_name: str) -> None:
    from .models.presets import get_preset

    where = getattr(stats, "path", None) or "the statistics file"
    _check_architecture(stats.model or {}, get_preset(model_name), str(where),
                        f"profile {model_name} with `asymrnr-calibrate --model {model_name}`")


# ---------------------------------------------------------------------------------------------- inspect


@main.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@_user_errors
def inspect_command(file):
    """Summarise a schedule or a statistics file: rates, predicted FLOPs and speedup, warnings.

    The kind of file is told by its content (HDF5 statistics or JSON schedule), not by its extension."""
    path = Path(file)
    kind = file_kind(path)
    if kind == "stats":
        from .profiler.stats_format import describe_stats

        _echo(describe_stats(path))
        return
    if kind in ("empty", "unknown"):
        raise AsymRnRError(
            f"{path} is not an asymrnr schedule (JSON) or statistics file (HDF5): {_describe_kind(path, kind)}"
        )
    from .inspect_text import schedule_summary, schedule_warnings
    from .schedule_format import load_schedule

    schedule = load_schedule(path)
    _echo(schedule_summary(schedule))
    for warning in schedule_warnings(schedule):
        _echo(f"warning: {warning}", err=True)


# ----------------------------------------------------------------------------------------------- report


@main.command("report")
@click.argument("stats_file", type=click.Path(dir_okay=False))
@click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False), default=None,
              help="A schedule to draw next to the statistics.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=REPORT_NAME, show_default=True,
              help="The HTML file to write (not one of the inputs).")
@click.option("--block-groups", default=None,
              help='Block groups of the trend plots: "4" (equal groups), "0-9,10-19,20-29" or "shallow=0-9,deep=10-29".')
@_user_errors
def report_command(stats_file, schedule_file, output, block_groups):
    """Write the interactive calibration report: one self-contained offline HTML file."""
    expect_stats(stats_file, "report")
    if schedule_file is not None:
        expect_schedule(schedule_file, "--schedule")
    path = check_output_path(output, inputs=[stats_file, schedule_file], option="-o")
    from .profiler import load_stats
    from .report import write_report
    from .schedule_format import load_schedule

    stats = load_stats(stats_file)
    schedule = load_schedule(schedule_file) if schedule_file else None
    path = write_report(stats, path, schedule=schedule, block_groups=block_groups)
    _echo(f"report: {path}")


# ---------------------------------------------------------------------------------------------- compare

#: What ``compare`` writes into ``--out``.
COMPARE_NAME, COMPARE_PAGE, SAMPLES_DIR = "compare.json", "compare.html", "samples"


@main.command("compare", epilog=f"Example: asymrnr compare --model {_EXAMPLE} --schedule runs/{_EXAMPLE}/schedule.json "
                                f"--num-prompts 2 --repeats 3 --out runs/{_EXAMPLE}/compare")
@generation_options
@click.option("--schedule", "schedule_files", multiple=True, type=click.Path(dir_okay=False),
              help="A schedule to compare with dense (repeat the option to compare several).")
@click.option("--cache", "caches", multiple=True,
              help="Also compare a diffusers step cache alone, e.g. fbc:0.1 (FirstBlockCache, threshold 0.1).")
@click.option("--repeats", type=int, default=1, show_default=True, callback=_positive("repeats"),
              help="Timed generations per prompt and configuration (dense and reduced interleaved).")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="One untimed generation per configuration before timing.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: runs/<model>/compare).")
@click.option("--overwrite", is_flag=True, help="--out already holds a comparison: replace it (once the new one is complete).")
@_user_errors
def compare_command(model_name, model_path, prompts_file, images_dir, num_prompts, seed, steps, height, width, frames,
                    guidance, dtype, device, verbose, schedule_files, caches, repeats, warmup, out_dir, overwrite):
    """Measure what a schedule gains: generate the same prompts and seeds dense and with each schedule, and
    write compare.json (every number), compare.html (measured against predicted speedup, quality per
    prompt, frames dense vs reduced) and side-by-side videos (samples/, dense left) into --out.

    Per prompt it records the wall time of the generation and of the transformer alone (CUDA events on a
    GPU), peak memory, PSNR and SSIM of every frame against dense, and the cosine similarity and relative
    L2 of the final latents. The steps default to the schedules'. Nothing in --out changes until the new
    comparison is complete; a folder that holds one is refused unless --overwrite.
    """
    from .compare import make_variants
    from .distributed import env_context
    from .models.loading import description_facts
    from .schedule_format import load_schedule

    _setup_logging(verbose)
    if not schedule_files and not caches:
        raise click.UsageError("pass --schedule FILE (the schedule.json that asymrnr-calibrate wrote; repeat it to "
                               "compare several), or --cache SPEC")
    if env_context().distributed:
        raise AsymRnRError("asymrnr compare runs in one process (it times generations); run it without torchrun")
    schedules = [load_schedule(expect_schedule(f, "--schedule")) for f in schedule_files]
    variants = make_variants(schedules, caches, sources=list(schedule_files))
    counts = {}
    for f, sch in zip(schedule_files, schedules):
        counts.setdefault(sch.num_steps, f)
    if len(counts) > 1:
        listed = ", ".join(f"{f}: {n}" for n, f in counts.items())
        raise AsymRnRError(f"the schedules were calibrated for different step counts ({listed}); compare schedules "
                           "of one step count per run")
    if counts:
        (planned, first_file), = counts.items()
        if steps is None:
            steps = planned
        elif steps != planned:
            raise click.BadParameter(f"the schedule {first_file} was calibrated for {planned} steps, not {steps}; "
                                     f"leave out --steps (or pass --steps {planned})", param_hint="--steps")
    job = prepare_job(model_name, model_path, prompts_file, num_prompts, seed, steps, height, width, frames, guidance,
                      dtype, device, images_dir)
    for f, sch in zip(schedule_files, schedules):
        _check_architecture(description_facts(sch.model), job.preset, f"the schedule {f}",
                            f"pass a schedule calibrated for it (`asymrnr-calibrate {job.command()}`)",
                            made="was calibrated for")
    out = Path(out_dir or Path("runs") / job.preset.name / "compare")
    inputs = [prompts_file, *schedule_files]
    for name in (COMPARE_NAME, COMPARE_PAGE):
        check_output_path(out / name, inputs=inputs)
    if images_dir is not None and out.resolve() == Path(images_dir).expanduser().resolve():
        raise AsymRnRError(f"--out {out} is the --images folder; choose another --out")
    _resolve_device(job)
    _announce(job)
    created = _prepare_out_dir(out)
    try:
        with folder_lock(out, LOCK_NAME, what="another asymrnr command", fix="wait for it to finish, or choose another --out"):
            result = _compare_locked(job, variants, out, repeats, warmup, overwrite)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        raise
    _echo("")
    for v in result.variants:
        s = result.summary(v)
        gen = s["generation_speedup"]
        _echo(f"{v.name}: {s['verdict']}; whole generation {gen:.3f}x" if gen is not None else f"{v.name}: {s['verdict']}")
        psnr = s["mean_psnr_db"]
        identical = "identical to dense (PSNR inf)" + (
            ": the cache skipped nothing at this threshold, try a higher one" if v.kind == "cache" else "")
        psnr_text = identical if s["identical_frames"] else (
            f"PSNR {psnr:.2f} dB (min {s['min_psnr_db']:.2f})" if psnr is not None else "PSNR n/a")
        cos = s["mean_latent_cosine"]
        _echo(f"  {psnr_text}, SSIM {s['mean_ssim']:.4f}" + (f", latent cosine {cos:.5f}" if cos is not None else ""))
    _echo(f"compare:  {out / COMPARE_NAME}")
    _echo(f"page:     {out / COMPARE_PAGE}")
    _echo(f"videos:   {out / SAMPLES_DIR}/ (dense left, reduced right)")


def _compare_locked(job: GenerationJob, variants, out: Path, repeats: int, warmup: bool, overwrite: bool):
    from .compare import SampleWriter, compare
    from .report import write_compare_page

    _remove_stale_staging(out)
    existing = [n for n in (COMPARE_NAME, COMPARE_PAGE, SAMPLES_DIR) if os.path.lexists(out / n)]
    if existing and not overwrite:
        raise AsymRnRError(f"{out} already holds a comparison ({', '.join(existing)}); pass --overwrite to replace it "
                           "(once the new one is complete), or choose another --out")
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        source = "embedded" if job.preset.embedded and job.model_path is None else job.model_path or job.preset.hub_id
        _echo(f"loading {job.preset.name} ({source}) on {job.device}")
        pipe = _load_pipeline(job)
        pipe.set_progress_bar_config(disable=True)
        writer = SampleWriter(staging / SAMPLES_DIR)
        total = (1 + len(variants)) * (int(warmup) + len(job.prompts) * repeats)
        with click.progressbar(length=total, label="generations", show_pos=True) as bar:
            def progress(done: int, total: int, label: str) -> None:
                bar.update(1)

            result = compare(pipe, variants, job.prompts, job.seeds, job.call_kwargs, repeats=repeats, warmup=warmup,
                             on_video=writer, progress=progress,
                             info={"model": job.preset.name, "command": f"asymrnr compare {job.command()}",
                                   "dtype": job.dtype or job.preset.dtype})
        result.save(staging / COMPARE_NAME)
        write_compare_page(result, staging / COMPARE_PAGE, writer.strips)
        (staging / SAMPLES_DIR).mkdir(exist_ok=True)
        old = out / SAMPLES_DIR
        if os.path.lexists(old):  # replaced only now that the new comparison is complete
            if old.is_dir() and not old.is_symlink():
                os.replace(old, staging / "old-samples")
            else:
                old.unlink()
        os.replace(staging / SAMPLES_DIR, out / SAMPLES_DIR)
        for name in (COMPARE_NAME, COMPARE_PAGE):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def calibrate_main():
    """Entry point of ``asymrnr-calibrate``."""
    calibrate_command()
