"""Tiny CogVideoX models and pipelines with random weights, built fully offline.

Three styles mirror the three real CogVideoX families at a toy size:

=======  ==========================  ==================  ==========================================
style    positional encoding         temporal patch      scheduler (as in the real model cards)
=======  ==========================  ==================  ==========================================
``2b``   3D sin-cos (no RoPE)        none                ``CogVideoXDDIMScheduler``, snr shift 3.0
``5b``   3D RoPE                     none                ``CogVideoXDPMScheduler``, snr shift 1.0
``1.5``  3D RoPE ("slice" grid)      ``patch_size_t=2``  ``CogVideoXDPMScheduler``, snr shift 1.0
=======  ==========================  ==================  ==========================================

Every style generates, at its default size, a token grid of 3 frames x 4 rows x 5 columns (odd, even,
odd edges, like the real 13 x 30 x 45 grid) next to 226 text tokens (the real prompt length, and the
pipeline's default ``max_sequence_length``, so that a plain ``pipe(prompt)`` works for every style,
including ``2b`` whose sin-cos table needs the prompt length to equal ``max_text_seq_length``).
The ``1.5`` style defaults to 17 frames: 5 latent frames, which the pipeline pads to 6 (a multiple of
``patch_size_t``), i.e. 3 token frames; this exercises the padding path the real 81-frame model takes.

Smaller or (for ``2b``/``5b``) larger sizes work too. The ``1.5`` style's RoPE uses diffusers' "slice"
grid bounded by the transformer's sample size, so its token grid can be at most 4 x 5 tokens per frame
(64 x 80 px), as the real 1.5 model is bounded by 150 x 150 tokens.

Note: with ``output_type="latent"`` the ``1.5`` pipeline returns the padded latents (6 frames here);
diffusers drops the padding frame only before decoding.

All weights come from seeded generators: the same ``(style, seed)`` always gives the same model. The
tokenizer is a unigram sentencepiece model trained here, in-process, on our own sentences.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asymrnr.testing._common import default_cache_root, ensure_cached_pipeline_dir
from asymrnr.testing._common import seeded as _seeded

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

logger = logging.getLogger(__name__)

TINY_STYLES: tuple[str, ...] = ("2b", "5b", "1.5")
#: Bump when anything that changes the built weights or files changes: it names the cache folder.
TINY_FORMAT_VERSION = 1
#: Text tokens the tiny models are made for (the real models' and the pipeline's default).
TINY_TEXT_LEN = 226
#: Spatial and temporal compression of the tiny VAE (the real ones: 8 and 4).
TINY_VAE_SCALE_SPATIAL = 8
TINY_VAE_SCALE_TEMPORAL = 4

_COMMON_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=16,
    text_embed_dim=32,
    sample_height=8,  # latent pixels: 8 // patch 2 = 4 token rows
    sample_width=10,  # latent pixels: 10 // patch 2 = 5 token columns
    sample_frames=9,  # video frames: (9 - 1) // 4 + 1 = 3 latent frames
    patch_size=2,
    temporal_compression_ratio=TINY_VAE_SCALE_TEMPORAL,
    max_text_seq_length=TINY_TEXT_LEN,
    use_learned_positional_embeddings=False,
)

_STYLE_TRANSFORMER: dict[str, dict[str, Any]] = {
    "2b": dict(use_rotary_positional_embeddings=False),
    "5b": dict(use_rotary_positional_embeddings=True),
    # CogVideoX 1.5: temporal patch of 2, no patch bias, RoPE on a "slice" grid bounded by the sample size.
    "1.5": dict(
        use_rotary_positional_embeddings=True,
        patch_size_t=2,
        patch_bias=False,
        sample_frames=17,  # 5 latent frames, padded to 6 by the pipeline -> 3 token frames
    ),
}

# Component seeds are offsets from the user's seed, so that every component is reproducible on its own
# (the pipeline's transformer equals build_tiny_transformer(style, seed)).
_SEED_OFFSET = {"transformer": 0, "vae": 1, "text_encoder": 2}


@dataclass(frozen=True)
class TinySize:
    """Default generation size of a tiny style and the token grid it gives."""

    height: int  # pixels
    width: int  # pixels
    num_frames: int  # video frames
    latent_frames: int  # latent frames the transformer sees (after the 1.5 padding)
    latent_grid: tuple[int, int, int]  # token grid (frames, height, width) after patchify
    text_len: int

    def call_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``pipe(...)`` at this size."""
        return {"height": self.height, "width": self.width, "num_frames": self.num_frames}


def _check_style(style: str) -> str:
    if style not in TINY_STYLES:
        from asymrnr.errors import AsymRnRError

        raise AsymRnRError(
            f"unknown tiny model style {style!r}; use one of: {', '.join(TINY_STYLES)}"
        )
    return style


def tiny_transformer_config(style: str, num_layers: int = 2) -> dict[str, Any]:
    """Constructor kwargs of ``CogVideoXTransformer3DModel`` for a tiny model of ``style``."""
    _check_style(style)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return {**_COMMON_TRANSFORMER, **_STYLE_TRANSFORMER[style], "num_layers": int(num_layers)}


def tiny_size(style: str) -> TinySize:
    """Default pipeline call size of ``style`` and its token grid (computed from the configs)."""
    cfg = tiny_transformer_config(style)
    p, p_t = cfg["patch_size"], cfg.get("patch_size_t") or 1
    num_frames = cfg["sample_frames"]
    latent_frames = (num_frames - 1) // TINY_VAE_SCALE_TEMPORAL + 1
    latent_frames += (-latent_frames) % p_t  # the pipeline pads to a multiple of patch_size_t
    grid = (latent_frames // p_t, cfg["sample_height"] // p, cfg["sample_width"] // p)
    return TinySize(
        height=cfg["sample_height"] * TINY_VAE_SCALE_SPATIAL,
        width=cfg["sample_width"] * TINY_VAE_SCALE_SPATIAL,
        num_frames=num_frames,
        latent_frames=latent_frames,
        latent_grid=grid,
        text_len=cfg["max_text_seq_length"],
    )


def build_tiny_transformer(style: str = "5b", seed: int = 0, num_layers: int = 2) -> CogVideoXTransformer3DModel:
    """A randomly initialised tiny ``CogVideoXTransformer3DModel`` (float32, eval mode, CPU)."""
    from diffusers import CogVideoXTransformer3DModel

    cfg = tiny_transformer_config(style, num_layers=num_layers)
    with _seeded(seed + _SEED_OFFSET["transformer"]):
        model = CogVideoXTransformer3DModel(**cfg)
    return model.eval()


def tiny_vae_config(style: str) -> dict[str, Any]:
    """Constructor kwargs of the tiny ``AutoencoderKLCogVideoX`` (4 blocks: 8x spatial, 4x temporal)."""
    _check_style(style)
    size = tiny_size(style)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=_COMMON_TRANSFORMER["in_channels"],
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=TINY_VAE_SCALE_TEMPORAL,
        sample_height=size.height,
        sample_width=size.width,
        # the real models' latent scaling factors (2B: 1.15258426, 5B and 1.5: 0.7)
        scaling_factor=1.15258426 if style == "2b" else 0.7,
    )


def tiny_scheduler_config(style: str) -> dict[str, Any]:
    """Scheduler class name and config as in the real model cards (v-prediction, zero-SNR, trailing)."""
    _check_style(style)
    return dict(
        _class_name="CogVideoXDDIMScheduler" if style == "2b" else "CogVideoXDPMScheduler",
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        snr_shift_scale=3.0 if style == "2b" else 1.0,
    )


# Our own sentences for the tokenizer: shapes, colours, motion, animals, vehicles, landscapes.
_CORPUS: tuple[str, ...] = (
    "A red cube spins slowly on a wooden table.",
    "Two blue spheres roll across a sandy beach at sunset.",
    "A green triangle floats above a calm lake.",
    "A yellow circle bounces between white walls.",
    "Orange and purple squares slide past each other.",
    "A golden ring rotates in front of a black background.",
    "A small brown dog runs through tall green grass.",
    "A grey cat jumps onto the windowsill and looks outside.",
    "A herd of horses gallops across an open field.",
    "A white rabbit hops through fresh snow in the forest.",
    "A flock of birds flies over the sea in the morning light.",
    "A panda eats bamboo while sitting under a tree.",
    "An elephant walks slowly along a dusty river bank.",
    "A red fox trots through autumn leaves.",
    "Colourful fish swim around a coral reef.",
    "A yellow car drives along a winding coastal road.",
    "A blue train crosses a stone bridge over a valley.",
    "A sailing boat moves across the harbour on a windy day.",
    "An old bicycle leans against a brick wall in the rain.",
    "A silver airplane takes off from a busy airport.",
    "A red bus stops at a crowded street corner at night.",
    "A tractor ploughs a wide field under grey clouds.",
    "The camera pans over snowy mountains under a clear sky.",
    "Waves crash against dark rocks on a rugged coast.",
    "A waterfall pours into a green pool in the jungle.",
    "Fog drifts through a pine forest at dawn.",
    "The sun sets behind rolling hills covered in flowers.",
    "A desert road stretches to the horizon in the heat.",
    "City lights flicker as the camera zooms out slowly.",
    "Clouds move quickly over a quiet village.",
    "A river winds through a deep canyon of red stone.",
    "Leaves fall gently from a tall maple tree.",
    "A hot air balloon rises above green farmland.",
    "The camera follows a runner along a sandy path.",
    "A spinning top wobbles and falls onto the floor.",
    "Raindrops ripple on the surface of a small pond.",
    "A lighthouse shines its beam across the stormy sea.",
    "An astronaut in a white suit walks on a grey moon.",
    "A paper boat drifts down a narrow stream after rain.",
    "A kite with a long tail dances in the blue sky.",
    "Slow motion, close up, high detail, cinematic lighting, 4k, 8 fps.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and marks: , . ; : ! ? ' \" ( ) - _ / & % + = * # @",
    "Letters: A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "letters: a b c d e f g h i j k l m n o p q r s t u v w x y z",
)
_TOKENIZER_VOCAB_SIZE = 320


def _train_sentencepiece_vocab() -> list[tuple[str, float]]:
    """Train a unigram sentencepiece model in memory; return its ``(piece, score)`` list.

    Ids follow T5: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, no BOS.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS),
        model_writer=model,
        model_type="unigram",
        vocab_size=_TOKENIZER_VOCAB_SIZE,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]


def build_tiny_tokenizer():
    """A ``T5Tokenizer`` over a vocabulary trained here (a few hundred pieces).

    transformers 5.x: ``T5Tokenizer`` is backed by the *tokenizers* library and takes the vocabulary as
    ``vocab=[(piece, score), ...]``; a ``vocab_file=`` argument is silently ignored (4-token vocabulary).
    """
    from transformers import T5Tokenizer

    vocab = _train_sentencepiece_vocab()
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=TINY_TEXT_LEN)
    if len(tok) < 100:  # guards against a constructor change that drops the vocabulary
        raise RuntimeError(f"tiny tokenizer has only {len(tok)} tokens; T5Tokenizer ignored the vocabulary")
    return tok


def build_tiny_text_encoder(vocab_size: int, seed: int = 0):
    """A tiny ``T5EncoderModel`` (T5 v1.1 style: gated-gelu, untied head) with d_model = text_embed_dim."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=_COMMON_TRANSFORMER["text_embed_dim"],
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed + _SEED_OFFSET["text_encoder"]):
        model = T5EncoderModel(config)
    return model.eval()


def build_tiny_pipeline(style: str = "5b", seed: int = 0) -> CogVideoXPipeline:
    """A whole ``CogVideoXPipeline`` with random weights, in memory, float32 on CPU; no file is read."""
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline

    _check_style(style)
    tokenizer = build_tiny_tokenizer()
    text_encoder = build_tiny_text_encoder(len(tokenizer), seed=seed)
    transformer = build_tiny_transformer(style, seed=seed)
    with _seeded(seed + _SEED_OFFSET["vae"]):
        vae = AutoencoderKLCogVideoX(**tiny_vae_config(style)).eval()
    sched_cfg = tiny_scheduler_config(style)
    scheduler = getattr(diffusers, sched_cfg.pop("_class_name"))(**sched_cfg)
    return CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


# ----------------------------------------------------------------------------------------- on-disk cache


def tiny_pipeline_dir_name(style: str) -> str:
    return f"tiny-cogvideox-{_check_style(style)}-v{TINY_FORMAT_VERSION}"


def _marker(style: str, seed: int) -> dict[str, Any]:
    return {"style": style, "seed": seed, "format_version": TINY_FORMAT_VERSION}


def ensure_tiny_pipeline_dir(style: str = "5b", root: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """Build the tiny pipeline once and save it under ``root`` (default :func:`default_cache_root`).

    The folder is written atomically: the pipeline is saved into a temporary sibling folder that is then
    renamed into place, so an interrupted build never leaves a half-written folder under the final name.
    Concurrent builders are safe: the loser of the rename discards its copy. Returns the folder.
    """
    _check_style(style)
    name = tiny_pipeline_dir_name(style) if seed == 0 else f"{tiny_pipeline_dir_name(style)}-seed{seed}"
    return ensure_cached_pipeline_dir(
        name, _marker(style, seed), lambda: build_tiny_pipeline(style, seed=seed), root,
        what=f"tiny CogVideoX pipeline (style {style}, seed {seed})",
    )


def load_tiny_pipeline(
    style: str = "5b",
    *,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    torch_dtype: torch.dtype | None = None,
) -> CogVideoXPipeline:
    """Load the tiny pipeline through ``CogVideoXPipeline.from_pretrained`` (building it on first use)."""
    from asymrnr.models.loading import load_pipeline_dir

    path = ensure_tiny_pipeline_dir(style, root, seed=seed)
    return load_pipeline_dir(path, "CogVideoXPipeline", torch_dtype=torch_dtype, what=f"the tiny pipeline cache {path}")


__all__ = [
    "TINY_STYLES",
    "TINY_FORMAT_VERSION",
    "TINY_TEXT_LEN",
    "TinySize",
    "tiny_size",
    "tiny_transformer_config",
    "tiny_vae_config",
    "tiny_scheduler_config",
    "build_tiny_transformer",
    "build_tiny_tokenizer",
    "build_tiny_text_encoder",
    "build_tiny_pipeline",
    "default_cache_root",
    "tiny_pipeline_dir_name",
    "ensure_tiny_pipeline_dir",
    "load_tiny_pipeline",
]
