"""The CLI end to end on the embedded tiny model, with click's CliRunner, then reloading what it wrote."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr.cli import calibrate_command, main, read_prompts
from asymrnr.profiler import load_stats


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    result = CliRunner().invoke(
        calibrate_command,
        ["--model", "tiny-cogvideox", "--num-prompts", "2", "--steps", "4", "--out", str(out)],
        catch_exceptions=False,
    )
    return out, result


def test_calibrate_end_to_end(calibrated):
    out, result = calibrated
    assert result.exit_code == 0, result.output
    assert (out / "stats.h5").is_file() and (out / "schedule.json").is_file()
    schedule = asymrnr.load_schedule(out / "schedule.json")
    assert (out / f"schedule-{schedule.tag}.json").is_file()
    assert "predicted speedup" in result.output and str(out / "stats.h5") in result.output
    stats = load_stats(out / "stats.h5")
    assert stats.num_runs == 2 and stats.num_steps == 4
    assert stats.prompts == read_prompts(None, 2)
    assert schedule.num_steps == 4 and schedule.sampler.scheduler_class == "CogVideoXDPMScheduler"
    np.testing.assert_allclose(schedule.sampler.timesteps, stats.timesteps[0])
    # the model and software it was profiled with travel with the schedule
    import diffusers
    import torch

    prov = schedule.provenance
    assert prov["torch_version"] == torch.__version__ and prov["diffusers_version"] == diffusers.__version__
    assert prov["dtype"] == "float32" and prov["source"] == "planner"


def test_calibrated_schedule_applies_to_the_same_pipeline(calibrated, tiny_pipeline):
    out, _ = calibrated
    schedule = asymrnr.load_schedule(out / "schedule.json")
    asymrnr.apply(tiny_pipeline, schedule)
    try:
        video = tiny_pipeline("a green triangle", num_inference_steps=4, output_type="latent",
                              generator=torch.Generator().manual_seed(0)).frames
        assert torch.isfinite(video).all()
    finally:
        asymrnr.remove(tiny_pipeline)


def test_plan_and_inspect_on_calibrated_files(calibrated, tmp_path):
    out, _ = calibrated
    runner = CliRunner()
    target = tmp_path / "fast.json"
    res = runner.invoke(main, ["plan", str(out / "stats.h5"), "--preset", "fast", "-o", str(target)])
    assert res.exit_code == 0, res.output
    fast = asymrnr.load_schedule(target)
    base = asymrnr.load_schedule(out / "schedule.json")
    assert fast.mean_rate("kv") >= base.mean_rate("kv")
    res = runner.invoke(main, ["inspect", str(target)])
    assert res.exit_code == 0 and fast.tag in res.output and "speedup" in res.output
    res = runner.invoke(main, ["inspect", str(out / "stats.h5")])
    assert res.exit_code == 0 and "runs" in res.output.lower()


def test_inspect_warns_on_a_schedule_that_reduces_nothing(tiny_pipeline, tmp_path):
    path = asymrnr.Schedule.uniform(tiny_pipeline, 4).save(tmp_path / "zero.json")
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0
    assert "warning" in res.output.lower()


def test_every_command_has_help():
    runner = CliRunner()
    for args in ([], ["calibrate"], ["profile"], ["plan"], ["inspect"], ["report"]):
        res = runner.invoke(main, [*args, "--help"])
        assert res.exit_code == 0 and len(res.output) > 100, args
    res = runner.invoke(calibrate_command, ["--help"])
    assert res.exit_code == 0 and "--target-speedup" in res.output
    for name, command in main.commands.items():
        assert command.help, name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "cogvideox-7b"], "cogvideox-5b"),
        (["--model", "tiny-cogvideox", "--steps", "-3"], "must be positive"),
        (["--model", "tiny-cogvideox", "--prompts", "/nonexistent/prompts.txt"], "prompts"),
        (["--model", "tiny-cogvideox", "--frames", "10"], "4k+1"),
        (["--model", "tiny-cogvideox", "--target-speedup", "0.5"], "above 1.0"),
        (["--model", "cogvideox-5b", "--model-path", "/nonexistent/weights"], "/nonexistent/weights"),
    ],
)
def test_bad_options_give_one_line_errors(args, message, tmp_path):
    res = CliRunner().invoke(calibrate_command, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    error_lines = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_unreadable_prompt_file(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-cogvideox", "--prompts", str(bad), "--out", str(tmp_path)])
    assert res.exit_code != 0 and "UTF-8" in res.output


def test_plan_refuses_stats_of_another_model(calibrated, tmp_path):
    out, _ = calibrated
    res = CliRunner().invoke(main, ["plan", str(out / "stats.h5"), "--model", "cogvideox-5b", "-o", str(tmp_path / "s.json")])
    assert res.exit_code != 0
    assert "num_blocks = 2" in res.output and "cogvideox-5b has num_blocks = 42" in res.output
    assert not (tmp_path / "s.json").exists()


def test_plan_on_a_file_that_is_not_stats(tmp_path):
    bogus = tmp_path / "stats.h5"
    bogus.write_text("not hdf5")
    res = CliRunner().invoke(main, ["plan", str(bogus)])
    assert res.exit_code != 0 and "Traceback" not in res.output and str(bogus) in res.output


def test_default_prompt_set_is_varied():
    prompts = read_prompts(None, None)
    assert len(prompts) >= 16 and len(set(prompts)) == len(prompts)
    text = " ".join(prompts).lower()
    for word in ("woman", "retriever", "car", "mountain", "camera", "slow", "fast"):
        assert word in text


def test_calibrate_on_the_trained_micro_model(tmp_path):
    res = CliRunner().invoke(
        calibrate_command,
        ["--model", "micro-cogvideox", "--num-prompts", "1", "--steps", "4", "--out", str(tmp_path)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    stats = load_stats(tmp_path / "stats.h5")
    assert stats.model["num_blocks"] == 6 and stats.model["latent_grid"] == [4, 6, 6]
    assert stats.prompts[0] == read_prompts(None, 1, default="micro-cogvideox/calibration-prompts.txt")[0]
    asymrnr.load_schedule(tmp_path / "schedule.json")
