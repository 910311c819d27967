"""The micro-cogvideox model: procedural data, fixed codec, checker, metrics, and the shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymrnr.micro import data as D
from asymrnr.micro.checker import check_video, parse_prompt, score
from asymrnr.micro.quality import psnr_frames, ssim_frames


def test_prompt_grammar_and_split():
    train, held = D.split_prompts()
    assert len(held) == 32 and not set(held) & set(train)
    assert len(train) + len(held) == len(D.all_attribute_tuples())
    assert {h[0] for h in held} == set(D.COLOURS)  # balanced over colours
    p = D.make_prompt("purple", "triangle", "turn", "checkered", "right")
    assert p == "a purple triangle turns around over a checkered background, the camera pans right"
    got = parse_prompt(p)
    assert got == {"colour": "purple", "shape": "triangle", "motion": "turn", "trajectory": "still",
                   "background": "checkered", "camera": "right"}
    assert parse_prompt(D.make_prompt("red", "circle", "grow", "smooth"))["camera"] is None


def test_render_is_deterministic():
    a, _ = D.render_batch(D.all_attribute_tuples()[:3], seed=5)
    b, _ = D.render_batch(D.all_attribute_tuples()[:3], seed=5)
    assert a.shape == (3, D.NUM_FRAMES, D.HEIGHT, D.WIDTH, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("motion", list(D.MOTIONS))
def test_checker_reads_known_videos(motion):
    """Every motion, every colour, random shapes/backgrounds/cameras: the ground truth is read right."""
    rng = np.random.default_rng(hash(motion) % 1000)
    attrs = []
    for colour in D.COLOURS:
        shape = "square" if motion == "turn" else D.SHAPES[int(rng.integers(3))]
        attrs.append((colour, shape, motion, D.BACKGROUNDS[int(rng.integers(4))], D.CAMERAS[int(rng.integers(3))]))
    videos, scenes = D.render_batch(attrs, seed=11)
    for video, scene in zip(videos, scenes):
        r = score(video, scene.prompt)
        assert r["correct"], (scene.prompt, r)
        assert r["colour"] == scene.colour and r["trajectory"] == scene.trajectory
    # uint8 videos are accepted too
    r = score((videos[0] * 255).round().astype(np.uint8), scenes[0].prompt)
    assert r["correct"]


def test_checker_shapes_and_wrong_prompts():
    attrs = [(c, s, "still", "striped", None) for c, s in zip(("red", "blue", "green"), D.SHAPES)]
    videos, scenes = D.render_batch(attrs, seed=3)
    for video, scene in zip(videos, scenes):
        assert check_video(video).shape == scene.shape
    # a red square video does not pass as a blue one, nor as moving
    assert not score(videos[0], "a blue square stays still over a striped background")["correct"]
    assert not score(videos[0], "a red square moves left over a striped background")["correct"]


def test_checker_on_empty_and_swapped_videos():
    bg = np.full((D.NUM_FRAMES, D.HEIGHT, D.WIDTH, 3), 0.4, np.float32)
    r = check_video(bg)
    assert r.colour is None and r.trajectory is None
    v, (scene,) = D.render_batch([("yellow", "circle", "right", "grainy", "left")], seed=2)
    reversed_video = v[0][::-1]
    assert check_video(reversed_video).trajectory == "left"


def test_codec_roundtrip_shapes():
    from asymrnr.micro.codec import PixelCodec

    codec = PixelCodec()
    v, _ = D.render_batch([("red", "square", "still", "smooth", None)], seed=1)
    x = torch.from_numpy(v).permute(0, 4, 1, 2, 3) * 2 - 1
    z = codec.encode(x).latent_dist.sample()
    assert z.shape == (1, 12, 4, D.HEIGHT // 4, D.WIDTH // 4)
    y = codec.decode(z).sample
    assert y.shape == x.shape
    # a still object over a still background survives the codec up to 2 x 2 pooling
    pooled = torch.nn.functional.avg_pool2d(x[0].permute(1, 0, 2, 3), 2)
    up = torch.nn.functional.interpolate(pooled, scale_factor=2, mode="nearest").permute(1, 0, 2, 3)
    torch.testing.assert_close(y[0], up, atol=1e-5, rtol=0)


def test_psnr_ssim():
    v, _ = D.render_batch([("red", "square", "right", "striped", None)], seed=1)
    assert np.all(psnr_frames(v, v) == 100.0)
    np.testing.assert_allclose(ssim_frames(v[0, :2], v[0, :2]), 1.0, atol=1e-9)
    noisy = np.clip(v + np.random.default_rng(0).normal(0, 0.05, v.shape), 0, 1)
    p = psnr_frames(noisy, v)
    assert p.shape == (1, D.NUM_FRAMES) and np.all((p > 24) & (p < 28))
    assert np.all(ssim_frames(noisy[0, :2], v[0, :2]) < 0.95)


def test_micro_pipeline_loads_offline_and_generates(monkeypatch):
    from diffusers import CogVideoXPipeline

    from asymrnr.micro.codec import PixelCodec
    from asymrnr.micro.model import call_kwargs, default_weights_dir, load_micro_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (default_weights_dir() / "model_index.json").is_file(), "the micro-cogvideox weights must ship"
    pipe = load_micro_pipeline()
    assert isinstance(pipe, CogVideoXPipeline) and isinstance(pipe.vae, PixelCodec)
    assert pipe.transformer.config.use_rotary_positional_embeddings
    pipe.set_progress_bar_config(disable=True)
    kw = {**call_kwargs(), "num_inference_steps": 2}
    out = pipe("a red square moves right over a striped background", generator=torch.Generator().manual_seed(0),
               output_type="np", **kw).frames
    out = np.asarray(out)
    assert out.shape == (1, D.NUM_FRAMES, D.HEIGHT, D.WIDTH, 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_micro_tokenizer_has_one_token_per_grammar_word():
    from asymrnr.micro.model import MICRO_TEXT_LEN, build_micro_tokenizer

    tok = build_micro_tokenizer()
    p = D.make_prompt("purple", "triangle", "turn", "checkered", "right")
    assert tok.tokenize(p)[:4] == ["\u2581a", "\u2581purple", "\u2581triangle", "\u2581turns"]
    longest = max(len(tok(D.make_prompt(*a)).input_ids) for a in D.all_attribute_tuples())
    assert longest <= MICRO_TEXT_LEN
    assert len(tok.tokenize("a fox jumps")) > 3  # unknown words fall back to characters
