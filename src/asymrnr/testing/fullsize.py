"""Random-weight transformers at full size (CogVideoX-5B, Wan 2.1 T2V 14B) and their 480p inputs, for GPU checks.

Each :class:`FullSizeModel` is the diffusers transformer class and config of a real model, the token grid
and text length of a 480p generation, and a tiny variant with the same code path (few layers, small grid,
for CPU tests). :func:`build_transformer` makes the weights without running the classes' own initialisers:
parameters are created on the ``meta`` device (buffers such as Wan's RoPE tables are computed as usual),
then allocated on the target device in the target dtype and filled with small random values (normal,
std 0.02; norm scales 1, biases 0). A 14B model is ready on a GPU in seconds and never exists in float32.

Importing this module is cheap (no torch, no diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

#: std of the random weights: small enough that 40+ random blocks stay finite in bf16.
WEIGHT_STD = 0.02


@dataclass(frozen=True)
class FullSizeModel:
    """One transformer: class, config and the latent/text shapes of a generation.

    ``latent`` is ``(frames, height, width)`` of the VAE latents; ``grid`` the resulting token grid
    ``(frames, rows, columns)`` after patching; ``text_len`` x ``text_dim`` the text embeddings.
    """

    name: str  # the preset name (asymrnr.models.presets)
    class_name: str  # a diffusers transformer class
    config: Mapping[str, Any] = field(hash=False)
    latent: tuple[int, int, int]
    grid: tuple[int, int, int]
    channels: int
    text_len: int
    text_dim: int
    joint_text: bool  # text tokens join the self-attention sequence (CogVideoX) or come by cross-attention (Wan)
    description: str = ""

    @property
    def num_layers(self) -> int:
        return int(self.config["num_layers"])

    @property
    def video_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


_COGVIDEOX_5B = dict(num_layers=42, num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                     time_embed_dim=512, text_embed_dim=4096, sample_height=60, sample_width=90, sample_frames=49,
                     patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                     use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
_WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

FULL_SIZE: dict[str, FullSizeModel] = {
    "cogvideox-5b": FullSizeModel(
        name="cogvideox-5b", class_name="CogVideoXTransformer3DModel", config=_COGVIDEOX_5B,
        latent=(13, 60, 90), grid=(13, 30, 45), channels=16, text_len=226, text_dim=4096, joint_text=True,
        description="CogVideoX-5B: 42 blocks, 48 heads x 64, RoPE; 480x720, 49 frames = 13 x 30 x 45 tokens + 226 text"),
    "wan2.1-t2v-14b": FullSizeModel(
        name="wan2.1-t2v-14b", class_name="WanTransformer3DModel", config=_WAN_14B,
        latent=(21, 60, 104), grid=(21, 30, 52), channels=16, text_len=512, text_dim=4096, joint_text=False,
        description="Wan 2.1 T2V 14B: 40 blocks, 40 heads x 128, ffn 13824; 480x832, 81 frames = 21 x 30 x 52 tokens"),
}

TINY: dict[str, FullSizeModel] = {
    "cogvideox-5b": replace(
        FULL_SIZE["cogvideox-5b"],
        config=dict(_COGVIDEOX_5B, num_layers=2, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                    out_channels=4, time_embed_dim=16, text_embed_dim=32, sample_height=10, sample_width=12,
                    sample_frames=17, max_text_seq_length=16),
        latent=(5, 10, 12), grid=(5, 5, 6), channels=4, text_len=16, text_dim=32,
        description="tiny CogVideoX-5B-style: 2 blocks, 2 heads x 16, RoPE; 5 x 5 x 6 tokens + 16 text"),
    "wan2.1-t2v-14b": replace(
        FULL_SIZE["wan2.1-t2v-14b"],
        config=dict(_WAN_14B, num_layers=2, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                    out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, rope_max_seq_len=32),
        latent=(3, 8, 10), grid=(3, 4, 5), channels=4, text_len=16, text_dim=32,
        description="tiny Wan 2.1-style: 2 blocks, 2 heads x 16; 3 x 4 x 5 tokens, 16 text tokens"),
}


def full_size_model(name: str, tiny: bool = False) -> FullSizeModel:
    """The full-size (or ``tiny``) model called ``name`` (a key of :data:`FULL_SIZE`)."""
    table = TINY if tiny else FULL_SIZE
    if name not in table:
        raise KeyError(f"no full-size model {name!r}; choose one of {', '.join(table)}")
    return table[name]


def build_transformer(spec: FullSizeModel, device: Any = "cpu", dtype: Any = None, seed: int = 0):
    """A random-weight ``spec.class_name`` on ``device`` in ``dtype`` (default float32), in eval mode.

    Parameters are made on ``meta`` and then allocated once, directly in ``dtype`` on ``device``; buffers
    keep the values and dtypes the class computes (as ``from_pretrained`` leaves them) and move to ``device``.
    """
    import diffusers
    import torch
    from accelerate import init_empty_weights

    dtype = dtype or torch.float32
    device = torch.device(device)
    with init_empty_weights(include_buffers=False):
        model = getattr(diffusers, spec.class_name)(**spec.config)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            value = torch.empty(param.shape, device=device, dtype=dtype)
            if param.ndim == 1 and name == "weight":
                value.fill_(1.0)  # norm scales
            elif name == "bias":
                value.zero_()
            else:
                value.normal_(0.0, WEIGHT_STD, generator=gen)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        for name, buf in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buf.to(device)
    return model.eval()


def make_inputs(spec: FullSizeModel, model: Any, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """The transformer's keyword arguments for one call at ``spec``'s size (all but ``timestep``).

    CogVideoX: latents ``[B, F, C, H, W]``, text ``[B, 226, 4096]`` and the 3D RoPE tables the pipeline
    passes (``image_rotary_emb``, ``[N, head_dim]`` cos and sin). Wan: latents ``[B, C, F, H, W]``, text
    ``[B, 512, 4096]`` (the transformer builds its RoPE itself).
    """
    import torch

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    f, h, w = spec.latent
    text = torch.randn(batch, spec.text_len, spec.text_dim, generator=gen, device=device, dtype=dtype)
    if spec.joint_text:
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        x = torch.randn(batch, f, spec.channels, h, w, generator=gen, device=device, dtype=dtype)
        cfg = model.config
        p = cfg.patch_size
        crops = get_resize_crop_region_for_grid((h // p, w // p), cfg.sample_width // p, cfg.sample_height // p)
        rope = get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=crops,
                                       grid_size=(h // p, w // p), temporal_size=f, device=device)
        return dict(hidden_states=x, encoder_hidden_states=text, image_rotary_emb=rope)
    x = torch.randn(batch, spec.channels, f, h, w, generator=gen, device=device, dtype=dtype)
    return dict(hidden_states=x, encoder_hidden_states=text)


def timesteps(num_steps: int) -> list[int]:
    """Decreasing timesteps of one generation of ``num_steps`` transformer calls (each call one step)."""
    return [999 - i * (1000 // max(num_steps, 1)) for i in range(num_steps)]


def call(model: Any, inputs: Mapping[str, Any], t: int):
    """One transformer call at timestep ``t`` (batch from the inputs); returns the output tensor."""
    import torch

    x = inputs["hidden_states"]
    ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    with torch.no_grad():
        return model(timestep=ts, return_dict=False, **inputs)[0]


def generation_times(model: Any, inputs: Mapping[str, Any], steps: list[int]) -> tuple[list[float], Any]:
    """Run one generation (a call per timestep in ``steps``); returns (seconds per call, last output).

    On CUDA each call is timed with a pair of CUDA events recorded on the current stream, and the host
    waits once, after the last call, so timing adds no sync between calls. On CPU: wall time per call.
    """
    import time

    import torch

    x = inputs["hidden_states"]
    if x.device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in steps]
        out = None
        for (start, end), t in zip(events, steps):
            start.record()
            out = call(model, inputs, t)
            end.record()
        torch.cuda.synchronize(x.device)
        return [start.elapsed_time(end) / 1000.0 for start, end in events], out
    times, out = [], None
    for t in steps:
        start = time.perf_counter()
        out = call(model, inputs, t)
        times.append(time.perf_counter() - start)
    return times, out


def reset_peak_memory(device: Any) -> None:
    """Start a peak-memory measurement on ``device`` (CUDA only; a no-op elsewhere)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> int | None:
    """Bytes of peak allocated memory on ``device`` since :func:`reset_peak_memory` (``None`` off CUDA)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def schedule_for(spec: FullSizeModel, model: Any, num_steps: int, q: float = 0.5, kv: float = 0.5,
                 cache_steps: int = 4):
    """A uniform (``q``, ``kv``) schedule of ``num_steps`` steps for ``model`` at ``spec``'s token grid."""
    from ..runtime.uniform import uniform_schedule

    return uniform_schedule(model, q=q, kv=kv, num_inference_steps=num_steps, latent_grid=spec.grid,
                            text_len=spec.text_len, cache_steps=cache_steps)


__all__ = ["FULL_SIZE", "TINY", "FullSizeModel", "WEIGHT_STD", "build_transformer", "call", "full_size_model",
           "generation_times", "make_inputs", "peak_memory", "reset_peak_memory", "schedule_for", "timesteps"]
