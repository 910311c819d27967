"""Pieces shared by the tiny random-weight pipelines: seeding, the on-disk cache, tokenizers, text encoders.

Nothing here reads a file it did not write or touches the network: tokenizers are trained in-process on our
own sentences (:data:`asymrnr.models.tiny._CORPUS`), models are built from configs with seeded weights.

Importing this module is cheap (no torch, no transformers); the builders import them when called.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: Written last into a cache folder before it is renamed into place.
MARKER_FILE = "asymrnr_tiny.json"
#: Bump when anything that changes the weights or files of the tiny family pipelines changes.
TINY_FAMILIES_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------ seeding


@contextmanager
def seeded(seed: int):
    """Seed torch's CPU generator inside the block and restore the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


# ----------------------------------------------------------------------------------------- on-disk cache


def default_cache_root() -> Path:
    """``$ASYMRNR_CACHE`` if set, else ``$XDG_CACHE_HOME/asymrnr`` (``~/.cache/asymrnr``)."""
    env = os.environ.get("ASYMRNR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "asymrnr"


def remove_stale_temps(root: Path, name: str, max_age_s: float = 3600.0) -> None:
    """Best effort: delete temp folders of builds that were interrupted more than an hour ago."""
    now = time.time()
    for tmp in root.glob(f".{name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def is_complete(path: Path, marker: Mapping[str, Any]) -> bool:
    """Whether ``path`` is a finished build whose marker equals ``marker``."""
    try:
        found = json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return found == dict(marker) and (path / "model_index.json").is_file()


def ensure_cached_pipeline_dir(
    name: str,
    marker: Mapping[str, Any],
    build: Callable[[], Any],
    root: str | os.PathLike | None = None,
    *,
    what: str = "tiny pipeline",
) -> Path:
    """Build a pipeline once with ``build()`` and save it as ``root/name`` (default root :func:`default_cache_root`).

    The folder is written atomically: the pipeline is saved into a temporary sibling folder that is then
    renamed into place, so an interrupted build never leaves a half-written folder under the final name.
    Concurrent builders are safe: the loser of the rename discards its copy. ``marker`` (JSON) is written last;
    a folder whose marker differs (another seed, format or library version) is rebuilt. Returns the folder.
    """
    root = Path(root).expanduser() if root is not None else default_cache_root()
    final = root / name
    if is_complete(final, marker):
        return final

    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        logger.info("building %s into %s", what, final)
        pipe = build()
        from asymrnr.models.loading import quiet_progress_bars

        with quiet_progress_bars():
            pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER_FILE).write_text(json.dumps(dict(marker), indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if is_complete(final, marker):
                logger.debug("another process finished %s first; using its copy", final)
            elif final.exists():
                # A folder that is not one of our complete builds sits in the way: move it aside, then retry.
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                os.rename(final, trash / "old")
                os.rename(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose initialisers decide the random weights (part of a cache marker)."""
    import diffusers
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


# --------------------------------------------------------------------------------- per-family descriptions


@dataclass(frozen=True)
class TinyDefaults:
    """The default call of one tiny family pipeline, and the token layout that call gives.

    ``call_kwargs()`` is what ``pipe(prompt, **kwargs)`` takes; ``extra`` holds the family's own keywords
    (``guidance_scale_2``, ``prompt_template``, ``frame_rate``, ...). ``latent_grid`` is the token grid
    (frames, rows, columns) after patchify, ``text_len`` the number of text tokens the transformer gets
    (padded; ``0`` when none is given to it).
    """

    family: str
    pipeline_class: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    latent_grid: tuple[int, int, int]
    text_len: int
    extra: tuple[tuple[str, Any], ...] = ()
    needs_image: bool = False

    @property
    def num_video_tokens(self) -> int:
        f, h, w = self.latent_grid
        return f * h * w

    def call_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``pipe(prompt, ...)`` (an ``image`` too for image-to-video families)."""
        kwargs: dict[str, Any] = {
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_sequence_length,
            **copy.deepcopy(dict(self.extra)),  # a fresh copy: pipelines may keep or change what they get
        }
        if self.needs_image:
            kwargs["image"] = tiny_image(self.height, self.width)
        kwargs.update(overrides)
        return kwargs


def tiny_image(height: int, width: int):
    """A deterministic RGB test picture (colour gradients and a square) as a ``PIL.Image``."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = (230, 40, 40)
    return Image.fromarray(rgb.astype(np.uint8))  # H x W x 3 uint8: RGB


def pipeline_marker(family: str, seed: int) -> dict[str, Any]:
    return {"family": family, "seed": int(seed), "format_version": TINY_FAMILIES_FORMAT_VERSION, **library_versions()}


def pipeline_dir_name(family: str, seed: int) -> str:
    name = f"tiny-{family}-v{TINY_FAMILIES_FORMAT_VERSION}"
    return name if seed == 0 else f"{name}-seed{seed}"


def ensure_tiny_family_dir(family: str, build: Callable[[int], Any], *, seed: int = 0,
                           root: str | os.PathLike | None = None) -> Path:
    """The cache folder of the tiny ``family`` pipeline for ``seed`` (built with ``build(seed)`` once)."""
    return ensure_cached_pipeline_dir(
        pipeline_dir_name(family, seed), pipeline_marker(family, seed), lambda: build(seed), root,
        what=f"tiny {family} pipeline (seed {seed})",
    )


def load_tiny_family(family: str, pipeline_class: str, build: Callable[[int], Any], *, seed: int = 0,
                     root: str | os.PathLike | None = None, torch_dtype: torch.dtype | None = None):
    """Load the tiny ``family`` pipeline through ``<pipeline_class>.from_pretrained`` (building it on first use)."""
    from asymrnr.models.loading import load_pipeline_dir

    path = ensure_tiny_family_dir(family, build, seed=seed, root=root)
    pipe = load_pipeline_dir(path, pipeline_class, torch_dtype=torch_dtype, what=f"the tiny pipeline cache {path}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------- tokenizers

#: Llama-3-style chat markers, single tokens in the tiny Llama tokenizer (as in HunyuanVideo's template).
LLAMA_CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_LLAMA_VOCAB_SIZE = 600
_ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-_/&%+=*#@"


def build_t5_tokenizer(model_max_length: int):
    """The tiny sentencepiece ``T5Tokenizer`` of :mod:`asymrnr.models.tiny` with another ``model_max_length``."""
    from asymrnr.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.model_max_length = int(model_max_length)  # saved into tokenizer_config.json
    return tok


def build_llama_tokenizer(model_max_length: int = 1024):
    """A byte-fallback BPE ``LlamaTokenizer`` trained here on our sentences (about 600 tokens).

    ``<s>`` is added in front, ``<pad>`` pads on the right (HunyuanVideo's transformer assumes the valid text
    tokens come first), and the Llama-3 chat markers of HunyuanVideo's prompt template are single tokens.
    Bytes outside the training alphabet (newlines) fall back to ``<0xNN>`` tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    from asymrnr.models.tiny import _CORPUS

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=_LLAMA_VOCAB_SIZE,
        special_tokens=specials + byte_tokens,
        initial_alphabet=["\u2581", *_ASCII],
        show_progress=False,
    )
    bpe.train_from_iterator(list(_CORPUS), trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = LlamaTokenizer(
        vocab=bpe.get_vocab(),
        merges=merges,
        pad_token="<pad>",
        padding_side="right",
        add_bos_token=True,
        add_eos_token=False,
        additional_special_tokens=list(LLAMA_CHAT_TOKENS),
        model_max_length=int(model_max_length),
    )
    if len(tok) < 300:
        raise RuntimeError(f"tiny Llama tokenizer has only {len(tok)} tokens; LlamaTokenizer ignored the vocabulary")
    return tok


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: one printable character per byte, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_clip_tokenizer(model_max_length: int = 77):
    """A byte-level ``CLIPTokenizer`` without merges: every byte of a word is a token (``</w>`` on the last).

    Its vocabulary is the first 512 entries of the real CLIP vocabulary's layout (256 bytes, the same with
    ``</w>``) plus ``<|startoftext|>`` and ``<|endoftext|>`` (also the pad token).
    """
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=int(model_max_length))


# ------------------------------------------------------------------------------------------ text encoders


def build_t5_encoder(vocab_size: int, d_model: int, seed: int, *, umt5: bool = False):
    """A tiny ``T5EncoderModel`` (or ``UMT5EncoderModel``), T5 v1.1 style: gated-gelu, untied head."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    cfg_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = cfg_cls(
        vocab_size=vocab_size,
        d_model=d_model,
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
    with seeded(seed):
        model = model_cls(config)
    return model.eval()


def build_llama_encoder(tokenizer, hidden_size: int, seed: int):
    """A tiny ``LlamaModel`` (3 layers: HunyuanVideo reads the hidden states of the third layer from the end)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with seeded(seed):
        model = LlamaModel(config)
    return model.eval()


def build_clip_text_encoder(tokenizer, hidden_size: int, seed: int):
    """A tiny ``CLIPTextModel`` whose pooled output (at the ``<|endoftext|>`` token) has ``hidden_size`` features."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with seeded(seed):
        model = CLIPTextModel(config)
    return model.eval()


def build_clip_vision_encoder(hidden_size: int, image_size: int, patch_size: int, seed: int):
    """A tiny ``CLIPVisionModel``: ``(image_size // patch_size) ** 2 + 1`` tokens of ``hidden_size`` features."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    with seeded(seed):
        model = CLIPVisionModel(config)
    return model.eval()


def build_clip_image_processor(image_size: int):
    """A CLIP image processor (resize shortest edge, centre crop, CLIP mean/std) at ``image_size`` pixels.

    The PIL backend (``CLIPImageProcessorPil``), which is what ``CLIPImageProcessor`` falls back to without
    torchvision, so that the tiny pipelines preprocess images the same way with or without torchvision.
    """
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
    )


__all__ = [
    "MARKER_FILE",
    "TINY_FAMILIES_FORMAT_VERSION",
    "TinyDefaults",
    "seeded",
    "default_cache_root",
    "remove_stale_temps",
    "is_complete",
    "ensure_cached_pipeline_dir",
    "ensure_tiny_family_dir",
    "load_tiny_family",
    "library_versions",
    "tiny_image",
    "build_t5_tokenizer",
    "build_llama_tokenizer",
    "build_clip_tokenizer",
    "build_t5_encoder",
    "build_llama_encoder",
    "build_clip_text_encoder",
    "build_clip_vision_encoder",
    "build_clip_image_processor",
]
