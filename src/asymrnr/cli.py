"""Command line: ``asymrnr-calibrate`` and the ``asymrnr`` group (calibrate, plan, inspect, report).

Commands are thin: parse, call the library, and turn user errors into one-line ``click`` errors. Progress
bars live here, not in the library.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from importlib import resources
from pathlib import Path

import click

from .errors import AsymRnRError

logger = logging.getLogger("asymrnr")

PRESET_NAMES_HINT = "cogvideox-2b, cogvideox-5b, cogvideox1.5-5b, micro-cogvideox, tiny-cogvideox"


def _user_errors(fn):
    """Turn our errors (and a few plain ones from bad input) into one-line click errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (AsymRnRError, FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
            raise click.ClickException(" ".join(str(err).split())) from err

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def read_prompts(path: str | None, num_prompts: int | None, default: str | None = None) -> list[str]:
    """Prompts from a file (one a line; blank lines and '#' comments skipped), or the shipped default set
    (``default``: a file under asymrnr/data, e.g. a preset's own prompts; else data/prompts.txt)."""
    if path is None:
        text = resources.files("asymrnr").joinpath(f"data/{default or 'prompts.txt'}").read_text(encoding="utf-8")
        origin = "the default prompt set"
    else:
        p = Path(path)
        if not p.is_file():
            raise click.ClickException(f"cannot read the prompts file {p}: no such file; pass --prompts FILE with one prompt a line")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise click.ClickException(f"cannot read the prompts file {p}: {err}; it must be UTF-8 text, one prompt a line")
        origin = str(p)
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise click.ClickException(f"{origin} holds no prompts; write one prompt a line")
    if num_prompts is not None:
        prompts = prompts[:num_prompts]
    return prompts


def _positive(name: str):
    def check(ctx, param, value):
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be positive, got {value}", param_hint=f"--{name}")
        return value

    return check


def calibrate_options(fn):
    """Options shared by ``asymrnr-calibrate`` and ``asymrnr calibrate``."""
    options = [
        click.option("--model", "model_name", required=True, help=f"Model preset: {PRESET_NAMES_HINT}."),
        click.option("--model-path", type=click.Path(file_okay=False), default=None,
                     help="Local diffusers pipeline folder (with model_index.json) instead of the Hugging Face cache."),
        click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
                     help="Text file with one prompt a line (default: the 20 prompts shipped with asymrnr)."),
        click.option("--num-prompts", type=int, default=None, callback=_positive("num-prompts"),
                     help="Use only the first N prompts (default: 4 for real models, 2 for tiny ones)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first prompt; prompt i uses seed + i."),
        click.option("--steps", type=int, default=None, callback=_positive("steps"), help="Inference steps (default: the model card's)."),
        click.option("--height", type=int, default=None, callback=_positive("height"), help="Video height in pixels."),
        click.option("--width", type=int, default=None, callback=_positive("width"), help="Video width in pixels."),
        click.option("--frames", type=int, default=None, callback=_positive("frames"), help="Number of video frames."),
        click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None, help="Weights dtype."),
        click.option("--device", default=None, help="Device, e.g. cuda, cuda:1 or cpu (default: cuda if available)."),
        click.option("--cache-steps", type=int, default=4, show_default=True, callback=_positive("cache-steps"),
                     help="Matching cache: recompute the matching every N steps."),
        click.option("--preset", "budget_preset", type=click.Choice(["base", "fast"]), default="base", show_default=True,
                     help="Named budget of the planned schedule (ignored with --target-speedup)."),
        click.option("--target-speedup", type=float, default=None, help="Plan for this FLOPs speedup instead of a preset, e.g. 1.3."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                     help="Output folder (default: runs/<model>)."),
        click.option("--verbose", "-v", is_flag=True, help="Log what the library does."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_target(target: float | None) -> None:
    if target is not None and not (target > 1.0 and math.isfinite(target)):
        raise click.BadParameter(f"must be a speedup above 1.0, e.g. 1.3; got {target}", param_hint="--target-speedup")


@_user_errors
def run_calibrate(model_name, model_path, prompts_file, num_prompts, seed, steps, height, width, frames, guidance,
                  dtype, device, cache_steps, budget_preset, target_speedup, out_dir, verbose) -> dict:
    """Profile the model on prompts, plan a schedule, write stats, schedule and report. Returns the paths."""
    _setup_logging(verbose)
    _check_target(target_speedup)
    import torch

    from .models.presets import get_preset, load_pipeline

    preset = get_preset(model_name)
    prompts = read_prompts(prompts_file, num_prompts or (2 if preset.embedded else 4), default=preset.prompts_file)
    settings = preset.call_kwargs()
    for key, value in (("num_inference_steps", steps), ("height", height), ("width", width), ("num_frames", frames),
                       ("guidance_scale", guidance)):
        if value is not None:
            settings[key] = value
    _check_shape(settings)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(out_dir or Path("runs") / model_name)
    out.mkdir(parents=True, exist_ok=True)

    click.echo(f"loading {model_name} ({'embedded' if preset.embedded else model_path or preset.hub_id}) on {device}")
    pipe = load_pipeline(model_name, model_path=model_path, dtype=dtype, device=device)
    pipe.set_progress_bar_config(leave=False, desc="steps")

    import asymrnr
    from .planner import plan_schedule
    from .profiler import load_stats

    stats_path = out / "stats.h5"
    started = time.perf_counter()
    with asymrnr.profile(pipe, stats_path, mode="w"):
        with click.progressbar(list(enumerate(prompts)), label="prompts", show_pos=True) as bar:
            for i, prompt in bar:
                generator = torch.Generator(device="cpu").manual_seed(seed + i)
                pipe(prompt, generator=generator, output_type="latent", **settings)
    profile_s = time.perf_counter() - started

    stats = load_stats(stats_path)
    result = plan_schedule(stats, preset=None if target_speedup else budget_preset, target_speedup=target_speedup,
                           cache_steps=cache_steps, notes=f"asymrnr-calibrate --model {model_name}")
    schedule = result.schedule
    schedule_path = schedule.save(out / "schedule.json")
    tagged_path = schedule.save(out / f"schedule-{schedule.tag}.json")
    report_path = _write_report(stats, out / "report.html", schedule)

    click.echo("")
    click.echo(f"profiled {stats.num_runs} generation(s) in {profile_s:.1f} s")
    click.echo(result.message)
    click.echo(f"schedule {schedule.tag}: predicted speedup {result.predicted_speedup:.3f}x (FLOPs model)")
    if not result.reached:
        click.echo("warning: the budget could not be reached; the closest schedule was planned", err=True)
    click.echo(f"stats:    {stats_path}")
    click.echo(f"schedule: {schedule_path} (also {tagged_path.name})")
    if report_path is not None:
        click.echo(f"report:   {report_path}")
    return {"stats": stats_path, "schedule": schedule_path, "report": report_path, "result": result}


def _check_shape(settings: dict) -> None:
    h, w, f = settings["height"], settings["width"], settings["num_frames"]
    if h % 16 or w % 16:
        raise click.BadParameter(
            f"height and width must be multiples of 16 (VAE 8 x patch 2), got {h}x{w}", param_hint="--height/--width"
        )
    if (f - 1) % 4:
        raise click.BadParameter(f"frames must be 4k+1 (e.g. 9, 49, 81), got {f}", param_hint="--frames")


def _write_report(stats, path: Path, schedule) -> Path | None:
    try:
        from .report import write_report
    except ImportError:  # the report module is optional at this stage
        logger.info("report module not available; skipping report.html")
        return None
    return write_report(stats, path, schedule=schedule)


@click.command("asymrnr-calibrate", context_settings={"help_option_names": ["-h", "--help"]})
@calibrate_options
def calibrate_command(**kwargs):
    """Profile a model on prompts, plan a quantile-based AsymRnR schedule and write stats, schedule and report.

    Example: asymrnr-calibrate --model cogvideox-5b --target-speedup 1.2 --out runs/5b
    """
    run_calibrate(**kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asymrnr")
def main():
    """asymrnr: Asymmetric Reduction and Restoration for video diffusion transformers."""


main.add_command(calibrate_command, name="calibrate")


@main.command("plan")
@click.argument("stats_file", type=click.Path(dir_okay=False))
@click.option("--target-speedup", type=float, default=None, help="FLOPs speedup to plan for, e.g. 1.3.")
@click.option("--preset", "budget_preset", type=click.Choice(["base", "fast"]), default="base", show_default=True,
              help="Named budget (ignored with --target-speedup).")
@click.option("--cache-steps", type=int, default=4, show_default=True, callback=_positive("cache-steps"),
              help="Matching cache steps of the planned schedule.")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True,
              help="Which recorded similarity ranks the cells.")
@click.option("--model", "model_name", default=None, help="Refuse a stats file that was not made on this model preset.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="schedule.json", show_default=True,
              help="Where to write the schedule.")
@_user_errors
def plan_command(stats_file, target_speedup, budget_preset, cache_steps, metric, model_name, output):
    """Plan a schedule from a statistics file, without generating again."""
    _check_target(target_speedup)
    from .planner import plan_schedule
    from .profiler import load_stats

    stats = load_stats(stats_file)
    if model_name is not None:
        _check_stats_model(stats, model_name)
    result = plan_schedule(stats, preset=None if target_speedup else budget_preset, target_speedup=target_speedup,
                           cache_steps=cache_steps, metric=metric, notes=f"asymrnr plan {stats_file}")
    path = result.schedule.save(output)
    click.echo(result.message)
    click.echo(f"schedule {result.schedule.tag}: predicted speedup {result.predicted_speedup:.3f}x -> {path}")


def _check_stats_model(stats, model_name: str) -> None:
    from .models.presets import get_preset

    preset = get_preset(model_name)
    want = expected_architecture(preset)
    have = stats.model
    for key, value in want.items():
        if have.get(key) != value:
            raise AsymRnRError(
                f"{getattr(stats, 'path', None) or 'the statistics file'} was profiled on a model with {key} = {have.get(key)}, but {model_name} has "
                f"{key} = {value}; profile {model_name} with `asymrnr-calibrate --model {model_name}`"
            )


def expected_architecture(preset) -> dict:
    """Architecture facts of a preset's transformer, for checking files made elsewhere."""
    known = {
        "cogvideox-2b": dict(num_blocks=30, num_heads=30, head_dim=64, patch_size_t=1, rope=False),
        "cogvideox-5b": dict(num_blocks=42, num_heads=48, head_dim=64, patch_size_t=1, rope=True),
        "cogvideox1.5-5b": dict(num_blocks=42, num_heads=48, head_dim=64, patch_size_t=2, rope=True),
        "micro-cogvideox": dict(num_blocks=6, num_heads=4, head_dim=32, patch_size_t=1, rope=True),
    }
    if preset.name in known:
        return known[preset.name]
    from .models.tiny import tiny_transformer_config

    cfg = tiny_transformer_config(preset.tiny_style or "5b")
    return dict(num_blocks=cfg["num_layers"], num_heads=cfg["num_attention_heads"], head_dim=cfg["attention_head_dim"],
                patch_size_t=cfg.get("patch_size_t") or 1, rope=cfg["use_rotary_positional_embeddings"])


@main.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@_user_errors
def inspect_command(file):
    """Summarise a schedule (.json) or a statistics file (.h5): rates, predicted FLOPs and speedup, warnings."""
    path = Path(file)
    if not path.is_file():
        raise click.ClickException(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF"):
        from .profiler.stats_format import describe_stats

        click.echo(describe_stats(path))
        return
    from .inspect_text import schedule_summary, schedule_warnings
    from .schedule_format import load_schedule

    schedule = load_schedule(path)
    click.echo(schedule_summary(schedule))
    for warning in schedule_warnings(schedule):
        click.echo(f"warning: {warning}", err=True)


@main.command("report")
@click.argument("stats_file", type=click.Path(dir_okay=False))
@click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False), default=None,
              help="A schedule to draw next to the statistics.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML file to write.")
@click.option("--block-groups", default=None,
              help='Block groups of the trend plots: "4" (equal groups), "0-9,10-19,20-29" or "shallow=0-9,deep=10-29".')
@_user_errors
def report_command(stats_file, schedule_file, output, block_groups):
    """Write the interactive calibration report: one self-contained offline HTML file."""
    from .profiler import load_stats
    from .report import write_report
    from .schedule_format import load_schedule

    stats = load_stats(stats_file)
    schedule = load_schedule(schedule_file) if schedule_file else None
    path = write_report(stats, output, schedule=schedule, block_groups=block_groups)
    click.echo(f"report: {path}")


def calibrate_main():
    """Entry point of ``asymrnr-calibrate``."""
    calibrate_command()
