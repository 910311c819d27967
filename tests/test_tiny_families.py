"""Tiny random-weight pipelines of every video family (asymrnr.testing) and the attention layout they record.

Each family's pipeline is built offline, saved under the session's ASYMRNR_CACHE, loaded back with
``from_pretrained`` and run for 2 steps on CPU while :func:`asymrnr.testing.recorder.record_attention`
records every attention call. The expectations below are the facts docs/families.md states.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import pytest
import torch

from asymrnr.testing import TINY_FAMILIES, tiny_family
from asymrnr.testing.recorder import VIA_DISPATCH, VIA_SDPA, record_attention

PROMPT = "A red fox runs through the snow."
FAMILIES = list(TINY_FAMILIES)


@dataclass(frozen=True)
class Site:
    """Expected layout of one kind of attention site (``pattern`` matches the module path)."""

    pattern: str
    via: str
    text: str  # AttentionCall.text_layout
    mask: str = "none"  # AttentionCall.mask_kind
    self_attention: bool = True  # a site a schedule reduces


@dataclass(frozen=True)
class Expect:
    sites: tuple[Site, ...]
    cfg: str  # "separate" (one forward per branch, batch 1) | "batched" (one forward of batch 2) | "none"
    contexts: tuple[str, ...]  # cache_context names, per step, in order
    components: tuple[str, ...] = ("transformer",)  # per step
    cache_kwargs: tuple[str, ...] = ()
    forward_inputs: dict = field(default_factory=dict)  # name -> expected shape of a tensor input (batch 1)


EXPECT: dict[str, Expect] = {
    "wan2.1-t2v": Expect(
        sites=(Site(r"blocks\.\d+\.attn1", VIA_DISPATCH, "none"),
               Site(r"blocks\.\d+\.attn2", VIA_DISPATCH, "cross", self_attention=False)),
        cfg="separate", contexts=("cond", "uncond"), cache_kwargs=("num_inference_steps", "sigma", "step_index"),
        forward_inputs={"hidden_states": (1, 4, 3, 8, 10), "encoder_hidden_states": (1, 512, 32)},
    ),
    "wan2.2-t2v": Expect(
        sites=(Site(r"blocks\.\d+\.attn1", VIA_DISPATCH, "none"),
               Site(r"blocks\.\d+\.attn2", VIA_DISPATCH, "cross", self_attention=False)),
        cfg="separate", contexts=("cond", "uncond"), components=("transformer", "transformer_2"),
        cache_kwargs=("num_inference_steps", "sigma", "step_index"),
        forward_inputs={"hidden_states": (1, 4, 3, 8, 10), "encoder_hidden_states": (1, 512, 32)},
    ),
    "wan2.1-i2v": Expect(
        sites=(Site(r"blocks\.\d+\.attn1", VIA_DISPATCH, "none"),
               Site(r"blocks\.\d+\.attn2", VIA_DISPATCH, "cross", self_attention=False)),
        cfg="separate", contexts=("cond", "uncond"),
        forward_inputs={"hidden_states": (1, 12, 3, 8, 10), "encoder_hidden_states": (1, 512, 32),
                        "encoder_hidden_states_image": (1, 17, 32)},
    ),
    "hunyuanvideo": Expect(
        sites=(Site(r"transformer_blocks\.\d+\.attn", VIA_DISPATCH, "last", "bool"),
               Site(r"single_transformer_blocks\.\d+\.attn", VIA_DISPATCH, "last", "bool"),
               Site(r"context_embedder\.token_refiner\.refiner_blocks\.\d+\.attn", VIA_SDPA, "none", "bool",
                    self_attention=False)),
        cfg="none", contexts=("cond",),
        forward_inputs={"hidden_states": (1, 4, 3, 8, 10), "encoder_hidden_states": (1, 64, 32),
                        "encoder_attention_mask": (1, 64), "pooled_projections": (1, 32), "guidance": (1,)},
    ),
    "ltx-video": Expect(
        sites=(Site(r"transformer_blocks\.\d+\.attn1", VIA_DISPATCH, "none"),
               Site(r"transformer_blocks\.\d+\.attn2", VIA_DISPATCH, "cross", "additive", self_attention=False)),
        cfg="batched", contexts=("cond_uncond",),
        forward_inputs={"hidden_states": (2, 60, 8), "encoder_hidden_states": (2, 128, 32),
                        "encoder_attention_mask": (2, 128)},
    ),
    "mochi-1": Expect(
        sites=(Site(r"transformer_blocks\.\d+\.attn1", VIA_SDPA, "last"),
               Site(r"time_embed\.pooler", VIA_SDPA, "other", "bool", self_attention=False)),
        cfg="batched", contexts=("cond_uncond",),
        forward_inputs={"hidden_states": (2, 12, 3, 8, 10), "encoder_hidden_states": (2, 32, 32),
                        "encoder_attention_mask": (2, 32)},
    ),
    "cogvideox-i2v": Expect(
        sites=(Site(r"transformer_blocks\.\d+\.attn1", VIA_SDPA, "first"),),
        cfg="batched", contexts=("cond_uncond",),
        forward_inputs={"hidden_states": (2, 3, 8, 8, 10), "encoder_hidden_states": (2, 226, 32)},
    ),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are all per-op overhead: one thread runs them ~10x faster than two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Run:
    pipe: object
    latents: torch.Tensor
    log: object
    seconds: float


def _generate(pipe, name: str, **overrides):
    d = tiny_family(name).defaults
    kwargs = d.call_kwargs(output_type="latent", generator=torch.Generator().manual_seed(0))
    kwargs.update(overrides)
    return pipe(prompt=PROMPT, **kwargs)


@pytest.fixture(scope="session")
def loaded():
    """``loaded(name)``: the family's tiny pipeline through from_pretrained (built into the session cache once)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny_family(name).load()
        return cache[name]

    return get


@pytest.fixture(scope="session")
def runs(loaded):
    """``runs(name)``: one recorded 2-step generation of the family (latents), shared by the layout tests."""
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            pipe = loaded(name)
            with record_attention(pipe) as log:
                t0 = time.perf_counter()
                out = _generate(pipe, name)
                seconds = time.perf_counter() - t0
            cache[name] = Run(pipe, out.frames, log, seconds)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------ build, load, run


@pytest.mark.parametrize("name", FAMILIES)
def test_generates_two_steps_offline(runs, name):
    d = tiny_family(name).defaults
    run = runs(name)
    assert type(run.pipe).__name__ == d.pipeline_class
    assert torch.isfinite(run.latents).all()
    num_forwards = len(run.log.forwards)
    assert num_forwards == 2 * len(EXPECT[name].contexts)


def test_np_output_decodes_frames(loaded):
    pipe = loaded("ltx-video")
    d = tiny_family("ltx-video").defaults
    frames = _generate(pipe, "ltx-video", output_type="np").frames
    assert frames.shape == (1, d.num_frames, d.height, d.width, 3)
    assert frames.dtype.kind == "f" and (frames >= 0).all() and (frames <= 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "ltx-video"])
def test_np_output_every_family(loaded, name):
    import numpy as np

    d = tiny_family(name).defaults
    frames = np.asarray(_generate(loaded(name), name, output_type="np").frames)
    assert frames.shape == (1, d.num_frames, d.height, d.width, 3)
    assert np.isfinite(frames).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_weights(name):
    family = tiny_family(name)
    a, b, c = family.build(0), family.build(0), family.build(1)
    for comp, module in a.components.items():
        if isinstance(module, torch.nn.Module):
            sa, sb = module.state_dict(), getattr(b, comp).state_dict()
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name}.{comp} differs between two builds"
        elif hasattr(module, "get_vocab"):
            assert module.get_vocab() == getattr(b, comp).get_vocab()
    ta, tc = a.transformer.state_dict(), c.transformer.state_dict()
    assert any(not torch.equal(ta[k], tc[k]) for k in ta), "seed 1 gave the same transformer as seed 0"


@pytest.mark.parametrize("name", FAMILIES)
def test_loaded_pipeline_equals_built_one(loaded, name):
    built, pipe = tiny_family(name).build(0), loaded(name)
    for comp, module in built.components.items():
        if isinstance(module, torch.nn.Module):
            sa, sb = module.state_dict(), getattr(pipe, comp).state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name}.{comp} changed through save/load"
        elif module is not None:
            assert type(getattr(pipe, comp)).__name__ == type(module).__name__


def test_cache_folder_is_built_once_and_marked(asymrnr_cache_dir, loaded, monkeypatch):
    from asymrnr.testing import tiny_ltx
    from asymrnr.testing._common import MARKER_FILE, library_versions

    loaded("ltx-video")
    path = asymrnr_cache_dir / "tiny-ltx-video-v1"
    marker = json.loads((path / MARKER_FILE).read_text())
    assert marker == {"family": "ltx-video", "seed": 0, "format_version": 1, **library_versions()}
    assert (path / "model_index.json").is_file() and (path / "transformer").is_dir()

    def fail(seed=0):
        raise AssertionError("rebuilt although the cache folder is complete")

    monkeypatch.setattr(tiny_ltx, "build_tiny_ltx_pipeline", fail)
    pipe = tiny_ltx.load_tiny_ltx_pipeline(torch_dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16


def test_seeded_builds_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    tiny_family("mochi-1").build(0)
    assert torch.equal(state, torch.random.get_rng_state())


# ------------------------------------------------------------------------------------ recorded layout


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_sites_and_layout(runs, name):
    d, expect, log = tiny_family(name).defaults, EXPECT[name], runs(name).log
    n_video = d.num_video_tokens
    seen = {c.site for c in log.calls}
    for site in expect.sites:
        calls = log.at(site.pattern)
        assert calls, f"{name}: no call at {site.pattern}"
        for c in calls:
            assert (c.via, c.text_layout, c.mask_kind) == (site.via, site.text, site.mask), (name, c)
            assert c.layout == ("BSHD" if site.via == VIA_DISPATCH else "BHSD")
            if site.self_attention:
                assert c.hidden_len == n_video, (name, c)
                assert c.q_len == c.k_len == n_video + c.text_tokens, (name, c)
        seen -= {c.site for c in calls}
    assert not seen, f"{name}: attention calls at unexpected sites {sorted(seen)}"
    # every self-attention site of every block ran in every forward
    num_blocks = {len(log.at(s.pattern)) // len(log.forwards) for s in expect.sites if s.self_attention}
    assert all(n >= 2 for n in num_blocks), (name, num_blocks)


@pytest.mark.parametrize("name", FAMILIES)
def test_cfg_mode_and_cache_contexts(runs, name):
    expect, log = EXPECT[name], runs(name).log
    per_step = len(expect.contexts)
    contexts = [f.context for f in log.forwards]
    assert contexts == list(expect.contexts) * 2
    batch = 2 if expect.cfg == "batched" else 1
    assert {f.batch for f in log.forwards} == {batch}
    step_components = [log.forwards[i * per_step].component for i in range(2)]
    assert step_components == (list(expect.components) if len(expect.components) == 2 else ["transformer"] * 2)
    for f in log.forwards:
        assert tuple(sorted(f.context_kwargs)) == expect.cache_kwargs
        for arg, shape in expect.forward_inputs.items():
            assert f.inputs[arg][0] == "tensor" and f.inputs[arg][1][1:] == shape[1:], (name, arg, f.inputs[arg])
            assert f.inputs[arg][1][0] == batch


def test_hunyuan_text_is_right_padded_and_masked(runs):
    from asymrnr.testing.tiny_hunyuan import HUNYUAN_T2V

    log = runs("hunyuanvideo").log
    forward = log.forwards[0]
    assert forward.inputs["encoder_attention_mask"][2] == "torch.float32"  # the pipeline's 0/1 mask
    for c in log.at(r"(single_)?transformer_blocks\.\d+\.attn"):
        assert c.mask_shape == (1, 1, 1, HUNYUAN_T2V.num_video_tokens + HUNYUAN_T2V.text_len)
        assert c.text_tokens == HUNYUAN_T2V.text_len  # padded text stays in the sequence (masked out)
    refiner = log.at(r"context_embedder.*")
    assert all(c.mask_shape == (1, 2, 64, 64) for c in refiner)


def test_hunyuan_prompt_template_crop_matches_tokenizer(loaded):
    from asymrnr.testing.tiny_hunyuan import TINY_HUNYUAN_PROMPT_TEMPLATE, hunyuan_prompt_crop_start

    pipe = loaded("hunyuanvideo")
    crop = TINY_HUNYUAN_PROMPT_TEMPLATE["crop_start"]
    assert hunyuan_prompt_crop_start(pipe.tokenizer) == crop
    tok = pipe.tokenizer
    ids = tok(TINY_HUNYUAN_PROMPT_TEMPLATE["template"].format(PROMPT)).input_ids
    prefix = tok(TINY_HUNYUAN_PROMPT_TEMPLATE["template"].split("{}")[0]).input_ids
    assert ids[:crop] == prefix  # the cut falls exactly before the prompt
    assert tok.decode(ids[crop:], skip_special_tokens=True).strip() == PROMPT
    assert tok.padding_side == "right"


def test_hunyuan_true_cfg_runs_two_calls(loaded):
    pipe = loaded("hunyuanvideo")
    with record_attention(pipe) as log:
        out = _generate(pipe, "hunyuanvideo", negative_prompt="blurry", true_cfg_scale=2.0)
    assert torch.isfinite(out.frames).all()
    assert [f.context for f in log.forwards] == ["cond", "uncond"] * 2
    assert {f.batch for f in log.forwards} == {1}


def test_wan22_switches_expert_at_boundary(runs):
    log = runs("wan2.2-t2v").log
    assert [(f.component, f.context) for f in log.forwards] == [
        ("transformer", "cond"), ("transformer", "uncond"), ("transformer_2", "cond"), ("transformer_2", "uncond")]
    timesteps = [f.inputs["timestep"][3][0] for f in log.forwards]
    boundary = runs("wan2.2-t2v").pipe.config.boundary_ratio * 1000
    assert timesteps[0] >= boundary > timesteps[2]
    assert {c.component for c in log.calls} == {"transformer", "transformer_2"}


def test_wan_i2v_cross_attends_image_then_text(runs):
    log = runs("wan2.1-i2v").log
    cross = log.at(r"blocks\.0\.attn2")
    assert [c.k_len for c in cross[:2]] == [17, 512]  # image tokens first, then the 512 text tokens
    assert all(c.context_len == 17 + 512 for c in cross)


def test_ltx_tokens_arrive_packed_with_grid_arguments(runs):
    forward = runs("ltx-video").log.forwards[0]
    assert forward.inputs["hidden_states"][1] == (2, 60, 8)
    assert (forward.inputs["num_frames"], forward.inputs["height"], forward.inputs["width"]) == (3, 4, 5)
    assert forward.inputs["encoder_attention_mask"][2] == "torch.bool"
    assert forward.inputs["rope_interpolation_scale"] == (8 / 25, 32, 32)


def test_mochi_attends_per_sample_without_padding(runs, loaded):
    log = runs("mochi-1").log
    tok = loaded("mochi-1").tokenizer
    n_neg, n_pos = len(tok("").input_ids), len(tok(PROMPT).input_ids)
    calls = log.at(r"transformer_blocks\.0\.attn1")
    assert all(c.batch == 1 for c in calls)
    # per forward: sample 0 (uncond, "") then sample 1 (cond), each with only its valid text tokens
    assert [(c.call_in_module, c.text_tokens) for c in calls[:2]] == [(0, n_neg), (1, n_pos)]
    assert all(c.mask_shape is None for c in calls)
    # the transformer gets Mochi's reversed timesteps (0 = pure noise)
    assert log.forwards[0].inputs["timestep"][3] == [0.0, 0.0]


def test_cogvideox_i2v_layout(runs):
    forward = runs("cogvideox-i2v").log.forwards[0]
    assert forward.inputs["hidden_states"][1] == (2, 3, 8, 8, 10)  # [B, F, C, H, W]: noise + image channels
    cos, sin = forward.inputs["image_rotary_emb"]  # RoPE tables come from the pipeline
    assert cos[1] == sin[1] == (60, 16)


def test_recorder_restores_everything(loaded):
    import torch.nn.functional as F
    from diffusers.models import attention_dispatch
    from diffusers.models.transformers import transformer_wan

    pipe = loaded("wan2.1-t2v")
    sdpa, dispatch = F.scaled_dot_product_attention, attention_dispatch.dispatch_attention_fn
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(pipe) as log:
            assert transformer_wan.dispatch_attention_fn is not dispatch
            pipe.transformer(**_wan_inputs())
            raise RuntimeError("boom")
    assert log.calls and {c.site for c in log.calls} >= {"blocks.0.attn1", "blocks.1.attn2"}
    assert F.scaled_dot_product_attention is sdpa
    assert transformer_wan.dispatch_attention_fn is dispatch
    assert "cache_context" not in vars(pipe.transformer)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in pipe.transformer.modules())


def _wan_inputs():
    return dict(hidden_states=torch.randn(1, 4, 3, 8, 10), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 512, 32), return_dict=False)


def test_unknown_family_is_refused():
    from asymrnr.errors import AsymRnRError

    with pytest.raises(AsymRnRError, match="unknown tiny family 'wan3'.*wan2.1-t2v"):
        tiny_family("wan3")


def test_layout_rows_name_each_distinct_layout_once(runs):
    rows = runs("cogvideox-i2v").log.layouts()
    assert len(rows) == 1 and rows[0]["site"] == "transformer_blocks.{i}.attn1" and rows[0]["count"] == 4
    assert re.fullmatch(r"transformer_blocks\.\{i\}\.attn1", rows[0]["site"])
