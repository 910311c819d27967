"""Model presets: a name for each supported model, its family, weights, architecture facts and default
generation settings. Plain data: the CLI reads everything it says about a model from here and from
:mod:`asymrnr.archs` (the family's rules), and names no model itself.

Importing this module is cheap (no torch, no diffusers); :func:`load_pipeline` imports them.
Weights are never downloaded: real models come from ``--model-path`` or from the local Hugging Face
cache; ``tiny-cogvideox`` is built here (random weights) and needs nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from asymrnr.errors import AsymRnRError, ModelNotFoundError
from asymrnr.models.tiny import TINY_TEXT_LEN, tiny_size, tiny_transformer_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str  # the asymrnr.archs family (``asymrnr.archs.get(family)``): generation rules, descriptions
    hub_id: str | None  # None: embedded (built locally, no weights to fetch)
    pipeline_class: str  # a diffusers pipeline class name
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    dtype: str  # "float32" | "float16" | "bfloat16"
    description: str
    alt_hub_ids: tuple[str, ...] = ()  # other names of the same repository (the THUDM models moved to zai-org)
    tiny_style: str | None = None  # for embedded presets: the tiny style they build
    max_sequence_length: int = 226
    # for embedded presets with shipped weights: their folder under asymrnr/data (loaded by from_pretrained)
    weights_dir: str | None = None
    # default calibration prompts, a file under asymrnr/data (None: data/prompts.txt)
    prompts_file: str | None = None
    # facts of the transformer, as a statistics or schedule file records them in ``model`` (num_blocks,
    # num_heads, head_dim, patch_size_t, rope): files made on another model are refused by comparing them
    architecture: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # embedded presets of asymrnr.testing: the tiny family they load (``asymrnr.testing.TINY_FAMILIES``)
    tiny_family: str | None = None
    # further keyword arguments of the pipeline call (Wan 2.2: guidance_scale_2)
    extra_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def embedded(self) -> bool:
        return self.hub_id is None

    @property
    def hub_ids(self) -> tuple[str, ...]:
        return ((self.hub_id,) if self.hub_id else ()) + self.alt_hub_ids

    def call_kwargs(self) -> dict[str, Any]:
        """Default keyword arguments for ``pipe(prompt, ...)``."""
        return {
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_sequence_length,
            **dict(self.extra_kwargs),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alt_hub_ids"] = list(self.alt_hub_ids)
        d["architecture"] = dict(self.architecture)
        d["extra_kwargs"] = dict(self.extra_kwargs)
        return d


def _architecture(num_blocks: int, num_heads: int, head_dim: int, patch_size_t: int, rope: bool) -> dict[str, Any]:
    return dict(num_blocks=num_blocks, num_heads=num_heads, head_dim=head_dim, patch_size_t=patch_size_t, rope=rope)


_TINY = tiny_size("5b")
_TINY_CONFIG = tiny_transformer_config("5b")


def _wan(name, hub_id, height, width, steps, guidance, blocks, heads, description, **extra) -> ModelPreset:
    return ModelPreset(
        name=name, family="wan", hub_id=hub_id, pipeline_class="WanPipeline", height=height, width=width,
        num_frames=81, num_inference_steps=steps, guidance_scale=guidance, dtype="bfloat16", max_sequence_length=512,
        architecture=_architecture(num_blocks=blocks, num_heads=heads, head_dim=128, patch_size_t=1, rope=True),
        description=description, **extra,
    )


def _tiny(name: str, tiny_family: str, family: str, description: str, *, steps: int = 4,
          architecture: Mapping[str, Any] | None = None) -> ModelPreset:
    """An embedded preset of a tiny family of :mod:`asymrnr.testing` (random weights, built offline)."""
    from asymrnr.testing import tiny_family as get_tiny

    d = get_tiny(tiny_family).defaults
    return ModelPreset(
        name=name, family=family, hub_id=None, pipeline_class=d.pipeline_class, height=d.height, width=d.width,
        num_frames=d.num_frames, num_inference_steps=steps, guidance_scale=d.guidance_scale, dtype="float32",
        max_sequence_length=d.max_sequence_length, tiny_family=tiny_family, extra_kwargs=dict(d.extra),
        architecture=dict(architecture or _architecture(num_blocks=2, num_heads=2, head_dim=16, patch_size_t=1,
                                                        rope=True)),
        description=(f"embedded tiny {description} with random weights (2 blocks, 2 heads x 16), built offline; "
                     f"{d.height}x{d.width}, {d.num_frames} frames = {' x '.join(map(str, d.latent_grid))} tokens; "
                     "for tests and demos, its videos are noise"),
    )

MODEL_PRESETS: Mapping[str, ModelPreset] = MappingProxyType(
    {
        p.name: p
        for p in (
            ModelPreset(
                name="cogvideox-2b",
                family="cogvideox",
                hub_id="THUDM/CogVideoX-2b",
                alt_hub_ids=("zai-org/CogVideoX-2b",),
                pipeline_class="CogVideoXPipeline",
                height=480,
                width=720,
                num_frames=49,
                num_inference_steps=50,
                guidance_scale=6.0,
                dtype="float16",
                architecture=_architecture(num_blocks=30, num_heads=30, head_dim=64, patch_size_t=1, rope=False),
                description=(
                    "CogVideoX-2B text-to-video: 30 blocks, 30 heads x 64, 3D sin-cos positions, DDIM; "
                    "480x720, 49 frames = 13 x 30 x 45 tokens + 226 text tokens"
                ),
            ),
            ModelPreset(
                name="cogvideox-5b",
                family="cogvideox",
                hub_id="THUDM/CogVideoX-5b",
                alt_hub_ids=("zai-org/CogVideoX-5b",),
                pipeline_class="CogVideoXPipeline",
                height=480,
                width=720,
                num_frames=49,
                num_inference_steps=50,
                guidance_scale=6.0,
                dtype="bfloat16",
                architecture=_architecture(num_blocks=42, num_heads=48, head_dim=64, patch_size_t=1, rope=True),
                description=(
                    "CogVideoX-5B text-to-video: 42 blocks, 48 heads x 64, 3D RoPE, DPM; "
                    "480x720, 49 frames = 13 x 30 x 45 tokens + 226 text tokens"
                ),
            ),
            ModelPreset(
                name="cogvideox1.5-5b",
                family="cogvideox",
                hub_id="THUDM/CogVideoX1.5-5B",
                alt_hub_ids=("zai-org/CogVideoX1.5-5B",),
                pipeline_class="CogVideoXPipeline",
                height=768,
                width=1360,
                num_frames=81,
                num_inference_steps=50,
                guidance_scale=6.0,
                dtype="bfloat16",
                architecture=_architecture(num_blocks=42, num_heads=48, head_dim=64, patch_size_t=2, rope=True),
                description=(
                    "CogVideoX1.5-5B text-to-video: 42 blocks, 48 heads x 64, 3D RoPE, temporal patch 2, DPM; "
                    "768x1360, 81 frames = 11 x 48 x 85 tokens + 226 text tokens"
                ),
            ),
            ModelPreset(
                name="cogvideox-5b-i2v",
                family="cogvideox",
                hub_id="THUDM/CogVideoX-5b-I2V",
                alt_hub_ids=("zai-org/CogVideoX-5b-I2V",),
                pipeline_class="CogVideoXImageToVideoPipeline",
                height=480,
                width=720,
                num_frames=49,
                num_inference_steps=50,
                guidance_scale=6.0,
                dtype="bfloat16",
                architecture=_architecture(num_blocks=42, num_heads=48, head_dim=64, patch_size_t=1, rope=True),
                extra_kwargs={"use_dynamic_cfg": True},
                description=(
                    "CogVideoX-5B image-to-video: 42 blocks, 48 heads x 64, 3D RoPE and learned positional "
                    "embeddings (480x720 only), image latents concatenated in channels, DDIM, dynamic CFG; "
                    "480x720, 49 frames = 13 x 30 x 45 tokens + 226 text tokens; one conditioning image per prompt"
                ),
            ),
            ModelPreset(
                name="micro-cogvideox",
                family="cogvideox",
                hub_id=None,
                pipeline_class="CogVideoXPipeline",
                height=48,
                width=48,
                num_frames=13,
                num_inference_steps=20,
                guidance_scale=5.0,
                dtype="float32",
                max_sequence_length=16,
                weights_dir="micro-cogvideox",
                prompts_file="micro-cogvideox/calibration-prompts.txt",
                architecture=_architecture(num_blocks=6, num_heads=4, head_dim=32, patch_size_t=1, rope=True),
                description=(
                    "embedded micro CogVideoX-5B-style DiT trained on procedural videos of coloured shapes "
                    "(6 blocks, 4 heads x 32, 3D RoPE, DPM; scripts/train_micro.py), shipped weights; "
                    "48x48, 13 frames = 4 x 6 x 6 tokens + 16 text tokens; its videos show the prompted "
                    "shape, colour and motion"
                ),
            ),
            ModelPreset(
                name="micro-cogvideox-large",
                family="cogvideox",
                hub_id=None,
                pipeline_class="CogVideoXPipeline",
                height=64,
                width=96,
                num_frames=25,
                num_inference_steps=20,
                guidance_scale=5.0,
                dtype="float32",
                max_sequence_length=16,
                weights_dir="micro-cogvideox-large",
                prompts_file="micro-cogvideox-large/calibration-prompts.txt",
                architecture=_architecture(num_blocks=6, num_heads=4, head_dim=32, patch_size_t=1, rope=True),
                description=(
                    "embedded micro CogVideoX-5B-style DiT at a larger grid, where attention is about half of "
                    "the transformer's FLOPs (6 blocks, 4 heads x 32, 3D RoPE, DPM), fine-tuned from "
                    "micro-cogvideox; 64x96, 25 frames = 7 x 8 x 12 tokens + 16 text tokens; still in "
                    "training (its training.json says how far): for benchmarks, not the README's first run"
                ),
            ),
            ModelPreset(
                name="tiny-cogvideox",
                family="cogvideox",
                hub_id=None,
                pipeline_class="CogVideoXPipeline",
                height=_TINY.height,
                width=_TINY.width,
                num_frames=_TINY.num_frames,
                num_inference_steps=8,
                guidance_scale=6.0,
                dtype="float32",
                tiny_style="5b",
                max_sequence_length=TINY_TEXT_LEN,
                architecture=_architecture(
                    num_blocks=_TINY_CONFIG["num_layers"],
                    num_heads=_TINY_CONFIG["num_attention_heads"],
                    head_dim=_TINY_CONFIG["attention_head_dim"],
                    patch_size_t=_TINY_CONFIG.get("patch_size_t") or 1,
                    rope=_TINY_CONFIG["use_rotary_positional_embeddings"],
                ),
                description=(
                    "embedded tiny CogVideoX-5B-style pipeline with random weights (2 blocks, 2 heads x 16, RoPE), "
                    f"built offline; {_TINY.height}x{_TINY.width}, {_TINY.num_frames} frames = "
                    f"{' x '.join(map(str, _TINY.latent_grid))} tokens + {_TINY.text_len} text tokens; "
                    "for tests and demos, its videos are noise"
                ),
            ),
            _wan("wan2.1-t2v-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 480, 832, 50, 5.0, 30, 12,
                 "Wan 2.1 text-to-video 1.3B: 30 blocks, 12 heads x 128, 3D RoPE, UniPC flow (shift 3); 480x832, "
                 "81 frames = 21 x 30 x 52 tokens; text by cross-attention (512 tokens)"),
            _wan("wan2.1-t2v-14b", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 720, 1280, 50, 5.0, 40, 40,
                 "Wan 2.1 text-to-video 14B: 40 blocks, 40 heads x 128, 3D RoPE, UniPC flow (shift 5 at 720p); "
                 "720x1280, 81 frames = 21 x 45 x 80 tokens; text by cross-attention (512 tokens)"),
            _wan("wan2.2-t2v-a14b", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", 720, 1280, 40, 4.0, 40, 40,
                 "Wan 2.2 text-to-video A14B: two 14B experts (transformer for high noise, transformer_2 below "
                 "boundary_ratio 0.875), each 40 blocks, 40 heads x 128; 720x1280, 81 frames = 21 x 45 x 80 "
                 "tokens; guidance 4.0 / 3.0; one schedule covers both experts",
                 extra_kwargs={"guidance_scale_2": 3.0}),
            replace(
                _wan("wan2.1-i2v-14b-480p", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 480, 832, 50, 5.0, 40, 40,
                     "Wan 2.1 image-to-video 14B at 480p: 40 blocks, 40 heads x 128, 3D RoPE, UniPC flow (shift 3); "
                     "480x832, 81 frames = 21 x 30 x 52 tokens; cross-attention to 257 CLIP image + 512 text "
                     "tokens, self-attention unchanged; one conditioning image per prompt (centre-cropped to "
                     "the generation's aspect)"),
                pipeline_class="WanImageToVideoPipeline",
            ),
            ModelPreset(
                name="hunyuanvideo",
                family="hunyuanvideo",
                hub_id="hunyuanvideo-community/HunyuanVideo",
                pipeline_class="HunyuanVideoPipeline",
                height=720,
                width=1280,
                num_frames=129,
                num_inference_steps=50,
                guidance_scale=6.0,
                dtype="bfloat16",
                max_sequence_length=256,
                architecture=_architecture(num_blocks=60, num_heads=24, head_dim=128, patch_size_t=1, rope=True),
                description=(
                    "HunyuanVideo text-to-video: 20 dual-stream + 40 single-stream blocks (60 sites), 24 heads x 128, "
                    "3D RoPE, guidance-distilled (embedded guidance 6.0, no true CFG), FlowMatch Euler (shift 7); "
                    "720x1280, 129 frames = 33 x 45 x 80 tokens + 256 text tokens (last, padding masked); "
                    "the model card runs the transformer in bf16 and the rest in fp16"
                ),
            ),
            _tiny("tiny-wan", "wan2.1-t2v", "wan", "Wan 2.1-style pipeline"),
            _tiny("tiny-wan2.2", "wan2.2-t2v", "wan", "Wan 2.2-style two-expert pipeline"),
            _tiny("tiny-hunyuanvideo", "hunyuanvideo", "hunyuanvideo",
                  "HunyuanVideo-style guidance-distilled pipeline (2 blocks of each kind: dual- and single-stream)",
                  architecture=_architecture(num_blocks=4, num_heads=2, head_dim=16, patch_size_t=1, rope=True)),
            ModelPreset(
                name="ltx-video", family="ltx", hub_id="Lightricks/LTX-Video", pipeline_class="LTXPipeline",
                height=480, width=704, num_frames=161, num_inference_steps=50, guidance_scale=3.0, dtype="bfloat16",
                max_sequence_length=128,
                architecture=_architecture(num_blocks=28, num_heads=32, head_dim=64, patch_size_t=1, rope=True),
                description=("LTX-Video text-to-video (0.9.x): 28 blocks, 32 heads x 64, RoPE over the whole inner "
                             "dim, FlowMatch Euler with dynamic shift (shift_terminal 0.1); 480x704, 161 frames = "
                             "21 x 15 x 22 tokens; text by cross-attention (128 tokens)"),
            ),
            ModelPreset(
                name="mochi-1", family="mochi", hub_id="genmo/mochi-1-preview", pipeline_class="MochiPipeline",
                height=480, width=848, num_frames=79, num_inference_steps=64, guidance_scale=4.5, dtype="bfloat16",
                max_sequence_length=256,
                architecture=_architecture(num_blocks=48, num_heads=24, head_dim=128, patch_size_t=1, rope=True),
                description=("Mochi-1 preview text-to-video: 48 blocks, 24 heads x 128, joint attention with the "
                             "valid text tokens last (up to 256), learned RoPE, FlowMatch Euler (inverted sigmas, "
                             "linear-quadratic); 480x848, 79 frames = 14 x 30 x 53 tokens (the model card asks for 84 "
                             "frames: the same 14 latent frames, decoded to 79)"),
            ),
            _tiny("tiny-ltx-video", "ltx-video", "ltx", "LTX-Video-style pipeline"),
            _tiny("tiny-mochi", "mochi-1", "mochi", "Mochi-1-style pipeline"),
            _tiny("tiny-cogvideox-i2v", "cogvideox-i2v", "cogvideox",
                  "CogVideoX-5B-I2V-style image-to-video pipeline (learned positional embeddings: 64x80 only)"),
            _tiny("tiny-wan-i2v", "wan2.1-i2v", "wan",
                  "Wan 2.1 I2V-style image-to-video pipeline (CLIP image encoder, 17 image tokens)"),
        )
    }
)


def preset_names() -> tuple[str, ...]:
    """Names of every preset, in the order they are listed."""
    return tuple(MODEL_PRESETS)


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; an unknown name raises AsymRnRError listing the known ones."""
    try:
        return MODEL_PRESETS[name]
    except (KeyError, TypeError):
        raise AsymRnRError(
            f"unknown model {name!r}; known models: {', '.join(MODEL_PRESETS)} (or pass --model-path DIR)"
        ) from None


def _not_cached_message(preset: ModelPreset, cache_dir: os.PathLike) -> str:
    hub_id = preset.hub_id
    others = f" (nor under {', '.join(preset.alt_hub_ids)})" if preset.alt_hub_ids else ""
    return (
        f"the weights of {hub_id} (model {preset.name!r}) are not in the local Hugging Face cache "
        f"{str(cache_dir)!r}{others}, and the hub is unreachable from here (asymrnr never downloads weights); "
        f"on a machine with network run `hf download {hub_id}` (older huggingface_hub: "
        f"`huggingface-cli download {hub_id}`), then copy its cache folder here (set HF_HOME or HF_HUB_CACHE "
        f"if it is not the default) or copy the downloaded folder and pass --model-path DIR"
    )


def check_device(device: Any) -> None:
    """Raise AsymRnRError, with the fix, for a device name torch does not know or that is not here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise AsymRnRError(f"invalid device {device!r}: {err}; use e.g. 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AsymRnRError(f"device {device!r} was requested but CUDA is not available here; use --device cpu")


def load_pipeline(
    name: str | None = None,
    *,
    model_path: str | os.PathLike | None = None,
    dtype: Any = None,
    device: Any = "cpu",
):
    """Load the pipeline of preset ``name``, or of the folder ``model_path``, without any network access.

    - ``model_path``: a diffusers pipeline folder (holding ``model_index.json``); it overrides the preset's
      weights (the preset still gives the default settings). The folder must hold the preset's pipeline
      class and model family (an image-to-video folder under a text-to-video preset is refused, it would
      fail inside diffusers). The command line also refuses a folder whose architecture differs from the
      preset's (:func:`asymrnr.models.loading.check_folder_fits`).
    - ``name=None`` with ``model_path``: the folder as it is: the pipeline class from its
      ``model_index.json``, the family from its transformer class (unknown classes are refused, listing the
      supported ones), ``dtype`` defaulting to that of the preset whose generation defaults it takes.
    - embedded presets (``tiny-cogvideox``): built locally and cached (:func:`asymrnr.models.tiny.load_tiny_pipeline`).
    - otherwise the local Hugging Face cache only.

    ``dtype`` defaults to the preset's. Raises ModelNotFoundError with a how-to-fix message when the
    weights are not available, AsymRnRError for a bad name, folder, dtype or device.
    """
    from asymrnr.models import loading

    if name is None:
        if model_path is None:
            raise AsymRnRError("load_pipeline needs a preset name or model_path (a diffusers pipeline folder)")
        folder = loading.read_pipeline_folder(model_path)
        adapter, description = loading.folder_description(folder)
        _, base = loading.folder_preset(folder, adapter=adapter, description=description)
        torch_dtype = loading.resolve_dtype(dtype if dtype is not None else base.dtype)
        check_device(device)
        return loading.load_pipeline_dir(folder.path, folder.pipeline_class, torch_dtype=torch_dtype).to(device)

    preset = get_preset(name)
    torch_dtype = loading.resolve_dtype(dtype if dtype is not None else preset.dtype)
    check_device(device)

    if model_path is not None:
        folder = loading.read_pipeline_folder(model_path, hub_id=preset.hub_id)
        loading.check_folder_fits(folder, preset, architecture=False)
        pipe = loading.load_pipeline_dir(folder.path, preset.pipeline_class, torch_dtype=torch_dtype)
    elif preset.weights_dir is not None:
        from asymrnr.micro.model import load_micro_pipeline

        pipe = load_micro_pipeline(Path(__file__).resolve().parent.parent / "data" / preset.weights_dir,
                                   torch_dtype=torch_dtype)
    elif preset.tiny_family is not None:
        from asymrnr.testing import tiny_family

        pipe = tiny_family(preset.tiny_family).load(torch_dtype=torch_dtype)
    elif preset.embedded:
        from asymrnr.models.tiny import load_tiny_pipeline

        pipe = load_tiny_pipeline(preset.tiny_style or "5b", torch_dtype=torch_dtype)
    else:
        cache_dir = loading.hf_hub_cache_dir()
        found = loading.find_cached_snapshot(preset.hub_ids, cache_dir)
        if found is None:
            raise ModelNotFoundError(_not_cached_message(preset, cache_dir))
        hub_id, path = found
        pipe = loading.load_pipeline_dir(
            path, preset.pipeline_class, torch_dtype=torch_dtype, what=f"the cached snapshot of {hub_id} ({path})"
        )
    return pipe.to(device)


__all__ = ["ModelPreset", "MODEL_PRESETS", "preset_names", "get_preset", "check_device", "load_pipeline"]
