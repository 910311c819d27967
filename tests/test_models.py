"""asymrnr.models: tiny offline CogVideoX models/pipelines, the on-disk cache, presets and loading."""

import json
import os
import shutil
import socket
import string

import numpy as np
import pytest
import torch

from asymrnr.errors import AsymRnRError, ModelNotFoundError
from asymrnr.models import tiny
from asymrnr.models.presets import MODEL_PRESETS, get_preset, load_pipeline

PROMPT = "A red fox runs across a snowy field at sunset."


def _generate(pipe, prompt=PROMPT, seed=0, output_type="latent", steps=2, **kwargs):
    with torch.no_grad():
        return pipe(
            prompt,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type=output_type,
            **kwargs,
        ).frames


# ------------------------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("style", tiny.TINY_STYLES)
def test_tiny_size_grid(style):
    size = tiny.tiny_size(style)
    assert size.latent_grid == (3, 4, 5)  # odd / even / odd edges like the real 13 x 30 x 45
    assert size.text_len == 226
    assert (size.height, size.width) == (64, 80)
    if style == "1.5":
        assert (size.num_frames, size.latent_frames) == (17, 6)  # 5 latent frames padded to 6
    else:
        assert (size.num_frames, size.latent_frames) == (9, 3)


def test_unknown_style_is_rejected():
    with pytest.raises(AsymRnRError, match="2b, 5b, 1.5"):
        tiny.tiny_transformer_config("7b")


@pytest.mark.parametrize("style", tiny.TINY_STYLES)
def test_transformer_forward_each_style(style, tiny_transformer_factory):
    model = tiny_transformer_factory(style)
    cfg = model.config
    assert cfg.use_rotary_positional_embeddings == (style != "2b")
    assert cfg.patch_size_t == (2 if style == "1.5" else None)
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim) == (2, 2, 16)

    size = tiny.tiny_size(style)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, size.latent_frames, cfg.in_channels, size.height // 8, size.width // 8, generator=g)
    text = torch.randn(2, size.text_len, cfg.text_embed_dim, generator=g)
    timestep = torch.tensor([500, 500])
    rotary = None
    if cfg.use_rotary_positional_embeddings:
        pipe = tiny.build_tiny_pipeline(style)
        rotary = pipe._prepare_rotary_positional_embeddings(size.height, size.width, size.latent_frames, "cpu")

    seen = {}

    def grab(module, args, kwargs):
        seen["video"] = kwargs["hidden_states"].shape[1]
        seen["text"] = kwargs["encoder_hidden_states"].shape[1]

    handle = model.transformer_blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(latents, text, timestep, image_rotary_emb=rotary).sample
            out_other_text = model(latents, text + 1.0, timestep, image_rotary_emb=rotary).sample
            out_no_rope = model(latents, text, timestep).sample if rotary is not None else None
    finally:
        handle.remove()

    assert out.shape == latents.shape
    assert torch.isfinite(out).all()
    assert seen == {"video": int(np.prod(size.latent_grid)), "text": 226}
    assert (out - out_other_text).abs().max() > 1e-4  # the text reaches the video tokens
    if out_no_rope is not None:
        assert (out - out_no_rope).abs().max() > 1e-4  # RoPE is applied


def test_2b_style_needs_the_full_text_length(tiny_transformer_factory):
    latents = torch.randn(1, 3, 4, 8, 10)
    short_text = torch.randn(1, 16, 32)
    with pytest.raises(RuntimeError):  # sin-cos table covers exactly max_text_seq_length text positions
        tiny_transformer_factory("2b")(latents, short_text, torch.tensor([10]))
    out = tiny_transformer_factory("5b")(latents, short_text, torch.tensor([10])).sample  # RoPE: any length
    assert out.shape == latents.shape


def test_transformer_is_seeded_and_leaves_global_rng_alone(tiny_transformer_factory):
    state = torch.get_rng_state()
    a = tiny_transformer_factory("5b", seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = tiny_transformer_factory("5b", seed=3).state_dict()
    c = tiny_transformer_factory("5b", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert len(tiny_transformer_factory("5b", num_layers=3).transformer_blocks) == 3


# -------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_has_a_real_vocabulary(tiny_pipeline):
    tok = tiny_pipeline.tokenizer  # loaded from disk
    assert type(tok).__name__ == "T5Tokenizer"
    assert len(tok) > 200  # the field-note trap: a vocab_file= constructor gives 4 tokens
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(PROMPT).input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids
    assert len(ids) < len(PROMPT) / 1.5  # multi-character pieces, not only letters
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT
    # every printable ASCII character is known
    ascii_ids = tok(" ".join(string.ascii_letters + string.digits + ",.;:!?'\"()-_/&%+=*#@")).input_ids
    assert tok.unk_token_id not in ascii_ids
    padded = tok(PROMPT, padding="max_length", max_length=226, truncation=True).input_ids
    assert len(padded) == 226 and padded[-1] == tok.pad_token_id


def test_tokenizer_training_is_deterministic():
    a, b = tiny.build_tiny_tokenizer(), tiny.build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert a(PROMPT).input_ids == b(PROMPT).input_ids


# --------------------------------------------------------------------------------------------- pipeline


def test_tiny_pipeline_generates_deterministically(tiny_pipeline):
    a = _generate(tiny_pipeline, seed=0)
    b = _generate(tiny_pipeline, seed=0)
    assert a.shape == (1, 3, 4, 8, 10)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, _generate(tiny_pipeline, seed=1))
    assert not torch.allclose(a, _generate(tiny_pipeline, prompt="Two blue spheres roll on a beach.", seed=0))


def test_tiny_pipeline_decodes_video(tiny_pipeline):
    video = _generate(tiny_pipeline, output_type="np")
    assert isinstance(video, np.ndarray)
    assert video.shape == (1, 9, 64, 80, 3)
    assert np.isfinite(video).all()
    assert video.min() >= 0.0 and video.max() <= 1.0 and video.std() > 1e-3


@pytest.mark.parametrize(
    "style, scheduler, latent_frames, frames",
    [
        ("2b", "CogVideoXDDIMScheduler", 3, 9),
        ("5b", "CogVideoXDPMScheduler", 3, 9),
        ("1.5", "CogVideoXDPMScheduler", 6, 17),
    ],
)
def test_each_style_pipeline_generates(style, scheduler, latent_frames, frames):
    pipe = tiny.build_tiny_pipeline(style)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == scheduler
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.snr_shift_scale == (3.0 if style == "2b" else 1.0)
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    latents = _generate(pipe)  # default size, default max_sequence_length (226)
    assert latents.shape == (1, latent_frames, 4, 8, 10)  # "latent" output keeps the 1.5 padding frame
    video = _generate(pipe, output_type="np")
    assert video.shape == (1, frames, 64, 80, 3)


def test_saved_pipeline_matches_in_memory_build(tiny_pipeline):
    built = tiny.build_tiny_pipeline("5b")
    built.set_progress_bar_config(disable=True)
    for name in ("transformer", "vae", "text_encoder"):
        a, b = getattr(built, name).state_dict(), getattr(tiny_pipeline, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(built.scheduler.config) == public(tiny_pipeline.scheduler.config)
    torch.testing.assert_close(_generate(built), _generate(tiny_pipeline), atol=1e-6, rtol=0)


def test_pipeline_transformer_equals_standalone_transformer(tiny_pipeline, tiny_transformer_factory):
    a = tiny_transformer_factory("5b").state_dict()
    b = tiny_pipeline.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------------------------------- the cache


def test_cache_dir_defaults_to_asymrnr_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ASYMRNR_CACHE", str(tmp_path))
    path = tiny.ensure_tiny_pipeline_dir("2b")
    assert path == tmp_path / "tiny-cogvideox-2b-v1"
    assert (path / "model_index.json").is_file()
    assert json.loads((path / "asymrnr_tiny.json").read_text())["style"] == "2b"
    assert sorted(os.listdir(tmp_path)) == ["tiny-cogvideox-2b-v1"]  # no temp folder left


def test_cache_dir_is_built_once(monkeypatch, tmp_path):
    path = tiny.ensure_tiny_pipeline_dir("5b", tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the cache folder is complete")

    monkeypatch.setattr(tiny, "build_tiny_pipeline", fail)
    assert tiny.ensure_tiny_pipeline_dir("5b", tmp_path) == path


def test_interrupted_build_leaves_no_folder(monkeypatch, tmp_path):
    from diffusers import CogVideoXPipeline

    original = CogVideoXPipeline.save_pretrained

    def save_then_die(self, save_directory, *args, **kwargs):
        original(self, save_directory, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(CogVideoXPipeline, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tiny.ensure_tiny_pipeline_dir("5b", tmp_path)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(CogVideoXPipeline, "save_pretrained", original)
    assert (tiny.ensure_tiny_pipeline_dir("5b", tmp_path) / "model_index.json").is_file()


def test_half_written_folder_is_replaced(tmp_path):
    final = tmp_path / "tiny-cogvideox-5b-v1"
    final.mkdir()
    (final / "model_index.json").write_text("{}")  # no completion marker: not one of our builds
    path = tiny.ensure_tiny_pipeline_dir("5b", tmp_path)
    assert path == final and (path / "asymrnr_tiny.json").is_file() and (path / "transformer").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["tiny-cogvideox-5b-v1"]
    assert type(tiny.load_tiny_pipeline("5b", root=tmp_path).transformer).__name__ == "CogVideoXTransformer3DModel"


# ---------------------------------------------------------------------------------------------- presets


def test_preset_facts():
    assert {"cogvideox-2b", "cogvideox-5b", "cogvideox1.5-5b", "micro-cogvideox", "tiny-cogvideox", "wan2.1-t2v-1.3b",
            "wan2.1-t2v-14b", "wan2.2-t2v-a14b", "tiny-wan", "tiny-wan2.2"} <= set(MODEL_PRESETS)
    facts = {
        name: (p.hub_id, p.pipeline_class, p.height, p.width, p.num_frames, p.num_inference_steps,
               p.guidance_scale, p.dtype)
        for name, p in MODEL_PRESETS.items()
    }
    assert facts["cogvideox-2b"] == ("THUDM/CogVideoX-2b", "CogVideoXPipeline", 480, 720, 49, 50, 6.0, "float16")
    assert facts["cogvideox-5b"] == ("THUDM/CogVideoX-5b", "CogVideoXPipeline", 480, 720, 49, 50, 6.0, "bfloat16")
    assert facts["cogvideox1.5-5b"] == (
        "THUDM/CogVideoX1.5-5B", "CogVideoXPipeline", 768, 1360, 81, 50, 6.0, "bfloat16"
    )
    assert facts["wan2.1-t2v-1.3b"] == ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", 480, 832, 81, 50, 5.0, "bfloat16")
    assert facts["wan2.1-t2v-14b"] == ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanPipeline", 720, 1280, 81, 50, 5.0, "bfloat16")
    assert facts["wan2.2-t2v-a14b"] == ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "WanPipeline", 720, 1280, 81, 40, 4.0, "bfloat16")
    assert get_preset("wan2.2-t2v-a14b").call_kwargs()["guidance_scale_2"] == 3.0
    t = get_preset("tiny-cogvideox")
    assert t.embedded and t.hub_id is None and t.dtype == "float32" and t.guidance_scale == 6.0
    size = tiny.tiny_size(t.tiny_style)
    assert (t.height, t.width, t.num_frames) == (size.height, size.width, size.num_frames)


def test_unknown_preset_lists_known_names():
    with pytest.raises(AsymRnRError) as info:
        get_preset("cogvideox-7b")
    msg = str(info.value)
    assert "\n" not in msg and "'cogvideox-7b'" in msg
    for name in MODEL_PRESETS:
        assert name in msg


def test_bad_dtype_is_a_user_error():
    with pytest.raises(AsymRnRError, match="float32, float16, bfloat16"):
        load_pipeline("tiny-cogvideox", dtype="int7")


def test_load_tiny_preset(asymrnr_cache_dir):
    pipe = load_pipeline("tiny-cogvideox")
    assert type(pipe).__name__ == "CogVideoXPipeline"
    assert pipe.transformer.dtype == torch.float32
    assert pipe.transformer.config.use_rotary_positional_embeddings
    assert (asymrnr_cache_dir / "tiny-cogvideox-5b-v1" / "model_index.json").is_file()
    assert load_pipeline("tiny-cogvideox", dtype="bf16").transformer.dtype == torch.bfloat16


def test_missing_model_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline("cogvideox-5b", model_path=missing)
    msg = str(info.value)
    assert str(missing) in msg and "does not exist" in msg and "model_index.json" in msg


def test_model_path_without_model_index_suggests_subfolder(tmp_path):
    shutil.copytree(tiny.ensure_tiny_pipeline_dir("5b"), tmp_path / "CogVideoX-5b")
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline("cogvideox-5b", model_path=tmp_path)
    msg = str(info.value)
    assert "no model_index.json" in msg and str(tmp_path / "CogVideoX-5b") in msg and "\n" not in msg


def test_model_path_loads_a_pipeline_folder():
    pipe = load_pipeline("cogvideox-5b", model_path=tiny.ensure_tiny_pipeline_dir("5b"), dtype="float32")
    assert type(pipe).__name__ == "CogVideoXPipeline" and pipe.transformer.dtype == torch.float32


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.mark.parametrize("name", ["cogvideox-2b", "cogvideox-5b", "cogvideox1.5-5b"])
def test_real_preset_without_cache_explains_the_fix(name, empty_hf_cache, no_network):
    hub_id = get_preset(name).hub_id
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(name)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"weights of {hub_id}" in msg and "not in the local Hugging Face cache" in msg
    assert str(empty_hf_cache) in msg and "unreachable" in msg
    assert f"download {hub_id}" in msg and "--model-path" in msg
    assert info.value.__cause__ is None


def _fake_cached_snapshot(cache, hub_id):
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny.ensure_tiny_pipeline_dir("5b"), repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_real_preset_loads_from_local_hf_cache_under_new_org_name(empty_hf_cache, no_network):
    _fake_cached_snapshot(empty_hf_cache, "zai-org/CogVideoX-5b")  # THUDM/... moved to zai-org/...
    pipe = load_pipeline("cogvideox-5b", dtype="float32")
    assert type(pipe).__name__ == "CogVideoXPipeline"


def test_incomplete_cached_snapshot_is_a_model_not_found_error(empty_hf_cache, no_network):
    snapshot = _fake_cached_snapshot(empty_hf_cache, "THUDM/CogVideoX-2b")
    shutil.rmtree(snapshot / "transformer")
    with pytest.raises(ModelNotFoundError, match="could not load CogVideoXPipeline from the cached snapshot") as info:
        load_pipeline("cogvideox-2b", dtype="float32")
    assert "\n" not in str(info.value)


def test_presets_module_is_torch_free_to_import():
    import subprocess
    import sys

    code = "import sys, asymrnr.models.presets; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
