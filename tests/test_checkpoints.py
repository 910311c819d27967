"""Custom checkpoints: ``--model-path DIR`` without a preset (the folder as it is), and a preset given with a
folder that is not its model (another pipeline, family or architecture), refused before anything loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

import asymrnr
from asymrnr.cli import calibrate_command, main
from asymrnr.errors import AsymRnRError
from asymrnr.models import loading, tiny
from asymrnr.models.presets import load_pipeline
from asymrnr.profiler import load_stats
from asymrnr.testing import TINY_FAMILIES


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model."""
    import asymrnr.models.presets as presets

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(presets, "load_pipeline", refuse)


def tiny_folder(family: str):
    """The saved folder of a tiny family pipeline (built once per session under $ASYMRNR_CACHE)."""
    from asymrnr.testing._common import default_cache_root

    TINY_FAMILIES[family].load()
    return default_cache_root() / f"tiny-{family}-v1"


def one_line_error(res, *fragments: str) -> None:
    assert res.exit_code != 0, res.output
    for fragment in fragments:
        assert fragment in res.output, res.output
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("Error")]) == 1, res.output


def fake_folder(path, pipeline_class, transformer_class, config=None):
    """A pipeline folder of JSON files only (enough for every check made before loading)."""
    path.mkdir(parents=True)
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1", "scheduler": ["diffusers", "X"]}
    if transformer_class is not None:
        index["transformer"] = ["diffusers", transformer_class]
        (path / "transformer").mkdir()
        (path / "transformer" / "config.json").write_text(json.dumps({"_class_name": transformer_class, **(config or {})}))
    (path / "model_index.json").write_text(json.dumps(index))
    return path


# ------------------------------------------------------------------------------------------- no preset


def test_folder_without_preset_calibrates_with_the_defaults_of_its_architecture(tmp_path):
    folder = tmp_path / "my-i2v-finetune"
    shutil.copytree(tiny_folder("cogvideox-i2v"), folder)
    out = tmp_path / "out"
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(folder), "--num-prompts", "1", "--steps", "2",
                                                 "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # the folder's architecture is the embedded tiny I2V preset's: its settings (64x80, float32) are taken
    assert "CogVideoXImageToVideoPipeline with a CogVideoXTransformer3DModel (cogvideox, 2 blocks" in res.output
    assert "generation defaults of tiny-cogvideox-i2v (same architecture)" in res.output
    assert "conditioning images: synthetic" in res.output
    stats = load_stats(out / "stats.h5")
    assert stats.generation["pipeline_class"] == "CogVideoXImageToVideoPipeline"
    assert (stats.generation["height"], stats.generation["width"]) == (64, 80)
    assert stats.model["num_blocks"] == 2
    schedule = asymrnr.load_schedule(out / "schedule.json")
    assert f"--model-path {folder}" in schedule.provenance["notes"] and "--model " not in schedule.provenance["notes"]
    # --resume on the same folder keeps the run (the folder's own facts are compared, not a preset's)
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(folder), "--num-prompts", "1", "--steps", "2",
                                                 "--out", str(out), "--resume"], catch_exceptions=False)
    assert res.exit_code == 0 and "1 of 1 run(s) already in" in res.output, res.output


@pytest.fixture(scope="module")
def one_block_wan(tmp_path_factory):
    """A Wan 2.1 T2V folder with one block: an architecture no preset has."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from asymrnr.models.loading import quiet_progress_bars
    from asymrnr.testing.tiny_wan import build_tiny_wan_pipeline, tiny_wan_transformer_config

    pipe = build_tiny_wan_pipeline()
    torch.manual_seed(0)
    parts = {**pipe.components, "transformer": WanTransformer3DModel(**{**tiny_wan_transformer_config(), "num_layers": 1})}
    folder = tmp_path_factory.mktemp("custom") / "wan-1-block"
    with quiet_progress_bars():
        WanPipeline(**parts).save_pretrained(folder)
    return folder


def test_folder_of_another_architecture_takes_its_familys_model_card_settings(one_block_wan, tmp_path, monkeypatch):
    """A Wan folder whose architecture is no preset's: the Wan 2.1 T2V model card's settings, overridden
    by the options; the default output folder is named after the folder."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(one_block_wan), "--num-prompts", "1", "--steps",
                                                 "2", "--height", "64", "--width", "80", "--frames", "9",
                                                 "--dtype", "float32"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "(wan, 1 block, 2 heads x 16); generation defaults of wan2.1-t2v-1.3b," in res.output
    stats = load_stats(tmp_path / "runs" / "wan-1-block" / "stats.h5")
    assert stats.generation["pipeline_class"] == "WanPipeline" and stats.generation["guidance_scale"] == 5.0
    assert stats.branches == ("cond", "uncond") and stats.model["num_blocks"] == 1


def test_folder_of_a_preset_architecture_takes_that_presets_settings(no_model, tmp_path):
    from asymrnr.cli import prepare_job

    job = prepare_job(None, str(tiny_folder("wan2.1-t2v")), None, None, 0, None, None, None, None, None, None, None)
    assert job.custom and job.defaults_from == "tiny-wan" and job.settings["height"] == 64
    assert job.preset.name == "tiny-wan2.1-t2v-v1" and job.preset.pipeline_class == "WanPipeline"


def test_folder_without_preset_default_sizes_are_checked_before_loading(no_model, tmp_path):
    # the Wan 2.1 T2V card's 480x832 and 81 frames are valid; a wrong option is still refused early
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(tiny_folder("wan2.1-t2v")), "--frames", "10",
                                                 "--out", str(tmp_path / "out")])
    one_line_error(res, "4k+1")


def test_load_pipeline_reads_the_pipeline_class_from_the_folder():
    pipe = load_pipeline(model_path=tiny_folder("wan2.1-i2v"))
    assert type(pipe).__name__ == "WanImageToVideoPipeline" and pipe.transformer.dtype == torch.float32


def test_model_or_model_path_is_required(tmp_path):
    res = CliRunner().invoke(calibrate_command, ["--out", str(tmp_path / "o")])
    one_line_error(res, "pass --model NAME", "--model-path DIR")


# ------------------------------------------------------------------------------ preset with another folder


@pytest.mark.parametrize(
    "preset, folder, facts",
    [
        ("cogvideox-5b", "cogvideox-5b", ["num_blocks = 2", "cogvideox-5b has num_blocks = 42"]),
        ("tiny-cogvideox", "cogvideox-2b", ["rope = False", "tiny-cogvideox has rope = True"]),
        ("wan2.1-t2v-1.3b", "wan2.1-t2v", ["num_blocks = 2", "wan2.1-t2v-1.3b has num_blocks = 30"]),
    ],
)
def test_preset_with_a_folder_of_another_architecture_is_refused(preset, folder, facts, no_model, tmp_path):
    path = tiny.ensure_tiny_pipeline_dir(folder[len("cogvideox-"):]) if folder.startswith("cogvideox") else tiny_folder(folder)
    out = tmp_path / "out"
    res = CliRunner().invoke(calibrate_command, ["--model", preset, "--model-path", str(path), "--out", str(out)])
    one_line_error(res, *facts, "transformer/config.json", "leave out --model")
    assert not out.exists()


def test_matching_preset_is_suggested(no_model, tmp_path):
    res = CliRunner().invoke(calibrate_command, ["--model", "cogvideox-5b-i2v", "--model-path",
                                                 str(tiny_folder("cogvideox-i2v")), "--out", str(tmp_path / "o")])
    one_line_error(res, "num_blocks = 2", "pass --model tiny-cogvideox-i2v (its architecture)")


@pytest.mark.parametrize(
    "preset, family, pipeline",
    [
        ("tiny-cogvideox", "cogvideox-i2v", "CogVideoXImageToVideoPipeline"),
        ("cogvideox-5b", "cogvideox-i2v", "CogVideoXImageToVideoPipeline"),
        ("wan2.1-t2v-14b", "wan2.1-i2v", "WanImageToVideoPipeline"),
    ],
)
def test_image_to_video_folder_under_a_text_to_video_preset_is_refused(preset, family, pipeline, no_model, tmp_path):
    res = CliRunner().invoke(calibrate_command, ["--model", preset, "--model-path", str(tiny_folder(family)),
                                                 "--out", str(tmp_path / "o")])
    one_line_error(res, f"holds a {pipeline} (image-to-video)", f"the preset {preset} is a",
                   "(text-to-video)", "leave out --model")


def test_load_pipeline_refuses_a_folder_of_another_pipeline():
    with pytest.raises(AsymRnRError, match=r"holds a CogVideoXImageToVideoPipeline \(image-to-video\).*tiny-cogvideox"):
        load_pipeline("tiny-cogvideox", model_path=tiny_folder("cogvideox-i2v"))


def test_preset_of_another_family_is_refused(no_model, tmp_path):
    folder = fake_folder(tmp_path / "f", "CogVideoXPipeline", "WanTransformer3DModel", {"num_layers": 2})
    res = CliRunner().invoke(calibrate_command, ["--model", "tiny-cogvideox", "--model-path", str(folder),
                                                 "--out", str(tmp_path / "o")])
    one_line_error(res, "WanTransformer3DModel", "a CogVideoXPipeline with a WanTransformer3DModel transformer")


# -------------------------------------------------------------------------------- unknown or incomplete


def test_unknown_pipeline_class_lists_the_supported_ones(no_model, tmp_path):
    folder = fake_folder(tmp_path / "f", "SkyReelsV2Pipeline", "CogVideoXTransformer3DModel")
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(folder), "--out", str(tmp_path / "o")])
    one_line_error(res, "SkyReelsV2Pipeline", "supported pipelines:", "CogVideoXImageToVideoPipeline",
                   "WanImageToVideoPipeline")


def test_unknown_transformer_class_lists_the_supported_ones(no_model, tmp_path):
    folder = fake_folder(tmp_path / "f", "FluxPipeline", "FluxTransformer2DModel")
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(folder), "--out", str(tmp_path / "o")])
    one_line_error(res, "FluxTransformer2DModel", "supported transformers:", "CogVideoXTransformer3DModel",
                   "WanTransformer3DModel")


def test_folder_without_a_transformer_config_is_refused(no_model, tmp_path):
    folder = fake_folder(tmp_path / "f", "WanPipeline", "WanTransformer3DModel")
    (folder / "transformer" / "config.json").unlink()
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(folder), "--out", str(tmp_path / "o")])
    one_line_error(res, "transformer config", "is missing", "download it again")


def test_damaged_model_index_is_refused(no_model, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model_index.json").write_text("{not json")
    res = CliRunner().invoke(calibrate_command, ["--model-path", str(folder), "--out", str(tmp_path / "o")])
    one_line_error(res, "model_index.json", "not valid JSON")


def test_video_to_video_folder_is_refused_by_the_cli_with_the_api_way(no_model, tmp_path):
    folder = fake_folder(tmp_path / "f", "CogVideoXVideoToVideoPipeline", "CogVideoXTransformer3DModel",
                         {"num_layers": 2})
    for command in (calibrate_command, main):
        args = ["--model-path", str(folder), "--out", str(tmp_path / "o")]
        res = CliRunner().invoke(command, args if command is calibrate_command else ["profile", *args[:2]])
        one_line_error(res, "CogVideoXVideoToVideoPipeline (video-to-video)", "asymrnr.profile(pipe")


def test_folder_facts_are_read_without_weights(tmp_path):
    folder = fake_folder(tmp_path / "f", "CogVideoXImageToVideoPipeline", "CogVideoXTransformer3DModel",
                         {"num_layers": 42, "num_attention_heads": 48, "use_rotary_positional_embeddings": True,
                          "use_learned_positional_embeddings": True, "in_channels": 32})
    info = loading.read_pipeline_folder(folder)
    assert info.task == "image-to-video" and info.transformer_component == "transformer"
    adapter, description = loading.folder_description(info)
    assert adapter.family == "cogvideox"
    facts = loading.description_facts(description)
    # head_dim 64 and patch_size_t 1 come from the class defaults, not the file
    assert {k: facts[k] for k in loading.ARCHITECTURE_KEYS} == \
        {"num_blocks": 42, "num_heads": 48, "head_dim": 64, "patch_size_t": 1, "rope": True}
    preset, base = loading.folder_preset(info, adapter=adapter, description=description)
    assert base.name == "cogvideox-5b-i2v" and preset.name == "f"
    # learned positional embeddings: 480x720 only (default: the sample size)
    rules = adapter.generation_rules(dict(loading.transformer_config(info)))
    assert rules.fixed_size == (480, 720) and "480x720 only" in rules.check(512, 768, 49)


def test_snapshot_folders_are_named_after_their_repository(tmp_path):
    snap = fake_folder(tmp_path / "models--zai-org--CogVideoX-5b" / "snapshots" / "0123abcd", "CogVideoXPipeline",
                       "CogVideoXTransformer3DModel")
    assert loading.read_pipeline_folder(snap).label == "CogVideoX-5b"
