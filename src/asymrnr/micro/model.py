"""The micro CogVideoX pipeline: a small trained 5B-style DiT (3D RoPE, DPM) over our procedural videos.

Components: a word-level ``T5Tokenizer`` over the prompt grammar and a frozen, random one-layer T5 encoder
(d_model 32; built here, deterministic), the fixed :class:`~asymrnr.micro.codec.PixelCodec` as VAE, ``CogVideoXDPMScheduler`` as in CogVideoX-5B, and a
``CogVideoXTransformer3DModel`` trained by ``scripts/train_micro.py``. The trained pipeline ships in
``asymrnr/data/micro-cogvideox`` and loads through ``CogVideoXPipeline.from_pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asymrnr.micro import data as D

MICRO_TEXT_LEN = 16  # the longest prompt of the grammar is 14 word tokens + </s>
MICRO_NUM_STEPS = 20
MICRO_GUIDANCE = 5.0
LATENT_CHANNELS = 12
SPATIAL_SCALE = 4

def transformer_config(spec: D.VideoSpec = D.SMALL) -> dict[str, Any]:
    """The micro transformer's config for videos of ``spec``: 6 blocks, 4 heads x 32, 3D RoPE.

    Only the ``sample_*`` sizes depend on ``spec`` (they set the RoPE base grid); the weights do not, so
    the small model's weights load into the large one."""
    return dict(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        time_embed_dim=64,
        text_embed_dim=32,  # the tiny T5's d_model
        num_layers=6,
        sample_height=spec.height // SPATIAL_SCALE,  # latent pixels (2 per token row)
        sample_width=spec.width // SPATIAL_SCALE,
        sample_frames=spec.num_frames,  # (F - 1) / 4 + 1 latent frames
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=MICRO_TEXT_LEN,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )


TRANSFORMER_CONFIG: dict[str, Any] = transformer_config(D.SMALL)

#: Shipped micro models: preset name -> the size of its videos (its folder under ``asymrnr/data`` has the name).
VARIANTS: dict[str, D.VideoSpec] = {"micro-cogvideox": D.SMALL, "micro-cogvideox-large": D.LARGE}


def default_weights_dir(variant: str = "micro-cogvideox") -> Path:
    """The shipped pipeline folder of ``variant`` (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "data" / variant


def call_kwargs(spec: D.VideoSpec = D.SMALL) -> dict[str, Any]:
    """Keyword arguments of ``pipe(prompt, ...)`` for ``spec`` videos at the micro models' settings."""
    return dict(
        height=spec.height, width=spec.width, num_frames=spec.num_frames, num_inference_steps=MICRO_NUM_STEPS,
        guidance_scale=MICRO_GUIDANCE, max_sequence_length=MICRO_TEXT_LEN,
    )


def _grammar_corpus() -> list[str]:
    return [D.make_prompt(*a) for a in D.all_attribute_tuples()] + [
        "letters: a b c d e f g h i j k l m n o p q r s t u v w x y z , . ; : ! ? ' - 0 1 2 3 4 5 6 7 8 9"
    ]


def build_micro_tokenizer():
    """A ``T5Tokenizer`` over a unigram vocabulary written here: every word of the prompt grammar is one piece
    (score -1), with single characters (score -10) as a fallback, so that a prompt is a short sequence of
    word tokens. Ids follow T5: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2."""
    from transformers import T5Tokenizer

    words = sorted({w for text in _grammar_corpus()[:-1] for w in text.replace(",", " ,").split()})
    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.;:!?'-"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words if w != ","] + [(",", -1.0)]
    vocab += [(c, -10.0) for c in chars if c != ","] + [("\u2581" + c, -10.5) for c in chars]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MICRO_TEXT_LEN)
    if len(tok) < 40:
        raise RuntimeError(f"micro tokenizer has only {len(tok)} tokens; T5Tokenizer ignored the vocabulary")
    return tok


def build_micro_text_encoder(vocab_size: int, seed: int = 0):
    """A frozen random one-layer T5 encoder (d_model 32): word features with a little context."""
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        model = T5EncoderModel(config)
    return model.eval()


def build_untrained_pipeline(seed: int = 0, transformer_overrides: dict | None = None, scaling_factor: float = 1.0,
                             spec: D.VideoSpec = D.SMALL):
    """A micro pipeline for ``spec`` videos with a freshly initialised transformer (float32, CPU)."""
    import torch
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    from asymrnr.micro.codec import PixelCodec
    from asymrnr.models.tiny import tiny_scheduler_config

    tokenizer = build_micro_tokenizer()
    text_encoder = build_micro_text_encoder(len(tokenizer), seed=0)
    cfg = {**transformer_config(spec), **(transformer_overrides or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**cfg)
    vae = PixelCodec(scaling_factor=scaling_factor)
    sched = tiny_scheduler_config("5b")
    sched.pop("_class_name")
    scheduler = CogVideoXDPMScheduler(**sched)
    return CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def load_micro_pipeline(path: str | os.PathLike | None = None, torch_dtype=None):
    """``CogVideoXPipeline.from_pretrained`` of the shipped (or given) micro pipeline folder, offline."""
    import asymrnr.micro.codec  # noqa: F401  diffusers loads a custom component's library only once imported
    from asymrnr.errors import ModelNotFoundError
    from asymrnr.models.loading import load_pipeline_dir

    path = Path(path) if path is not None else default_weights_dir()
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"the micro-cogvideox weights are missing from {str(path)!r}; reinstall asymrnr, or train them with "
            "`python scripts/train_micro.py`"
        )
    return load_pipeline_dir(path, "CogVideoXPipeline", torch_dtype=torch_dtype, what=f"the micro pipeline {path}")


__all__ = [
    "MICRO_TEXT_LEN", "MICRO_NUM_STEPS", "MICRO_GUIDANCE", "TRANSFORMER_CONFIG", "VARIANTS", "transformer_config",
    "default_weights_dir",
    "call_kwargs", "build_untrained_pipeline", "load_micro_pipeline", "build_micro_tokenizer", "build_micro_text_encoder",
]
