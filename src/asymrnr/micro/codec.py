"""A fixed, parameter-free video codec standing in for the CogVideoX VAE of the micro model.

Encode: keep frames ``0, 4, 8, ...`` (temporal factor 4, CogVideoX's ``(F - 1) // 4 + 1`` latent frames),
average-pool 2 x 2 pixels, then pixel-unshuffle 2 x 2: ``[B, 3, F, H, W]`` in ``[-1, 1]`` becomes
``[B, 12, (F - 1) // 4 + 1, H / 4, W / 4]`` (spatial factor 4). Decode: the inverse pixel-shuffle, nearest
2 x upsampling, and linear interpolation between latent frames (frame 0 is latent frame 0; frames
``4k - 3 .. 4k`` blend latent frames ``k - 1`` and ``k``).

It exposes what ``CogVideoXPipeline`` reads from its VAE: ``config.block_out_channels`` (3 entries: spatial
scale 4), ``config.temporal_compression_ratio``, ``config.scaling_factor``, ``decode(z).sample`` and
``encode(x).latent_dist.sample()``. Being a diffusers ``ModelMixin``, a pipeline saves it with the
``library`` ``asymrnr.micro.codec`` in ``model_index.json`` and ``from_pretrained`` imports it from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass
class CodecDecoderOutput(BaseOutput):
    sample: torch.Tensor


class _Deterministic:
    """A stand-in for ``DiagonalGaussianDistribution`` with zero variance."""

    def __init__(self, z: torch.Tensor):
        self.mean = z

    def sample(self, generator=None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class CodecEncoderOutput(BaseOutput):
    latent_dist: _Deterministic


class PixelCodec(ModelMixin, ConfigMixin):
    """Deterministic pool + pixel-unshuffle codec (no learned weights)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 12,
        pool: int = 2,
        unshuffle: int = 2,
        temporal_compression_ratio: int = 4,
        block_out_channels: tuple = (1, 1, 1),  # only its length matters: 2 ** (len - 1) = spatial scale
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        if latent_channels != in_channels * unshuffle * unshuffle:
            raise ValueError("latent_channels must be in_channels * unshuffle ** 2")
        if 2 ** (len(block_out_channels) - 1) != pool * unshuffle:
            raise ValueError("len(block_out_channels) must give the spatial scale pool * unshuffle")
        # one buffer so that the module has a dtype/device and a non-empty state dict
        self.register_buffer("unit", torch.ones(1), persistent=True)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """``[B, C, F, H, W]`` video in ``[-1, 1]`` -> latents ``[B, C * u^2, F', H / s, W / s]`` (unscaled)."""
        z = self.encode_keyframes(x[:, :, :: self.config.temporal_compression_ratio])
        out = _Deterministic(z)
        return CodecEncoderOutput(latent_dist=out) if return_dict else (out,)

    def encode_keyframes(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial part of :meth:`encode` on frames already chosen (``x[:, :, ::4]`` of a video)."""
        cfg = self.config
        b, c, fl, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * fl, c, h, w)
        x = F.avg_pool2d(x, cfg.pool)
        x = F.pixel_unshuffle(x, cfg.unshuffle)
        return x.reshape(b, fl, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Latents ``[B, C', F', h, w]`` (unscaled) -> video ``[B, C, (F' - 1) * r + 1, H, W]``."""
        cfg = self.config
        b, cz, fl, h, w = z.shape
        x = z.permute(0, 2, 1, 3, 4).reshape(b * fl, cz, h, w)
        x = F.pixel_shuffle(x, cfg.unshuffle)
        x = F.interpolate(x, scale_factor=cfg.pool, mode="nearest")
        x = x.reshape(b, fl, *x.shape[1:])  # [B, F', C, H, W]
        r = cfg.temporal_compression_ratio
        frames = [x[:, 0]]
        for k in range(1, fl):
            for j in range(1, r + 1):
                a = j / r
                frames.append((1 - a) * x[:, k - 1] + a * x[:, k])
        video = torch.stack(frames, dim=2)  # [B, C, F, H, W]
        return CodecDecoderOutput(sample=video) if return_dict else (video,)

    def forward(self, x: torch.Tensor):
        return self.decode(self.encode(x).latent_dist.mode()).sample


__all__ = ["PixelCodec"]
