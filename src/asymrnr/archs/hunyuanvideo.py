"""HunyuanVideo (text-to-video; ``HunyuanVideoTransformer3DModel``).

Facts (diffusers ``transformer_hunyuan_video.py``, ``pipeline_hunyuan_video.py``; see ``docs/families.md``):

* Two kinds of blocks, both with an ``Attention`` ``attn`` using ``HunyuanVideoAttnProcessor2_0``. Sites in
  forward order: the dual-stream ``transformer_blocks[i].attn`` (kind ``dual``: video through
  ``to_q/to_k/to_v``/``to_out``, text through its own ``add_q_proj/add_k_proj/add_v_proj``/``to_add_out``,
  ``norm_added_q/k``), then the single-stream ``single_transformer_blocks[i].attn`` (kind ``single``: the
  block normalizes ``[video | text]`` together and hands both halves to ``attn``, which concatenates them
  and runs shared ``to_q/to_k/to_v``; ``pre_only``: no ``to_out``, the block's ``proj_out`` fuses the
  attention output with a parallel MLP). The text-only token refiner's attention is not a site.
* Joint attention over ``[video (N) | text (T)]``: text LAST, ``T = max_sequence_length`` (padding kept).
  Heads split to ``[B, S, H, D]``, ``RMSNorm(head_dim)`` per head, RoPE (interleaved pairs, tables
  ``(cos, sin)`` each ``[N, D]``) on the video part of Q and K only, then ``dispatch_attention_fn`` with a
  bool key mask ``[B, 1, 1, N + T]`` (True = attend, False at padded text keys).
* The transformer takes ``hidden_states [B, C, F, H, W]``; patchify ``(patch_size_t, patch_size,
  patch_size)`` = ``(1, 2, 2)``, flattened frame-major.
* CFG: guidance-distilled by default (embedded ``guidance``, one call per step in ``cache_context("cond")``);
  with ``true_cfg_scale > 1`` and a negative prompt a second call per step in ``cache_context("uncond")``.
* Sampler: ``FlowMatchEulerDiscreteScheduler`` (shift 7) with the pipeline's own sigmas
  ``linspace(1, 0, n + 1)[:-1]``.
* VAE: 8x spatial, 4x temporal; ``4k + 1`` frames, height and width multiples of 16.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import AsymRnRError
from ..formats.descriptions import ModelDescription
from .base import ArchAdapter, BlockTerms, class_name, config_of, DispatchingProcessor, GenerationRules, Site

#: Text tokens of the HunyuanVideo pipeline (``max_sequence_length``), padded and masked.
HUNYUAN_TEXT_LEN = 256
#: Token grid of the model card's generation: 720 x 1280, 129 frames.
HUNYUAN_DEFAULT_GRID = (33, 45, 80)
DUAL = "dual"
SINGLE = "single"


class HunyuanVideoAdapter(ArchAdapter):
    family = "hunyuanvideo"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    pipeline_classes = ("HunyuanVideoPipeline",)
    text_layout = "last"
    cfg_mode = "separate"
    components = ("transformer",)
    supported_processors = ("HunyuanVideoAttnProcessor2_0",)
    block_kind_names = {DUAL: "dual-stream", SINGLE: "single-stream"}

    # ---- facts -----------------------------------------------------------------------------------------
    def patch_size(self, config: Any) -> tuple[int, int, int]:
        p = int(config.patch_size)
        return (int(getattr(config, "patch_size_t", None) or 1), p, p)

    def _kinds(self, cfg: Any) -> tuple[str, ...]:
        return (DUAL,) * int(cfg.num_layers) + (SINGLE,) * int(cfg.num_single_layers)

    def describe(self, transformer: Any, *, latent_grid=None, text_len: int | None = None) -> ModelDescription:
        cfg = config_of(transformer)
        if latent_grid is None:
            latent_grid = HUNYUAN_DEFAULT_GRID
        inner = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
        text = int(text_len if text_len is not None else HUNYUAN_TEXT_LEN)
        kinds = self._kinds(cfg)
        return ModelDescription(
            family=self.family,
            transformer_class=class_name(transformer),
            num_blocks=len(kinds),
            num_heads=int(cfg.num_attention_heads),
            head_dim=int(cfg.attention_head_dim),
            patch_size=self.patch_size(cfg),
            rope=True,
            latent_grid=tuple(int(g) for g in latent_grid),
            text_len=text,
            text_layout="last" if text else "none",
            # both kinds: hidden * mlp_ratio (dual: FeedForward(mult=mlp_ratio); single: proj_mlp)
            ffn_dim=int(inner * float(cfg.mlp_ratio)),
            block_kinds=kinds,
        )

    def block_terms(self, model: ModelDescription, kind: str) -> BlockTerms:
        """Per sample, ``S = T + N`` tokens (padded text included: upstream computes it).

        * ``dual``: Q, K, V and output projections for every token (video: ``to_*``/``to_out``; text:
          ``add_*_proj``/``to_add_out``, same sizes), and two feed-forwards (``ff`` on video, ``ff_context`` on
          text), ``c -> ffn -> c`` each.
        * ``single``: Q, K, V projections (shared) for every token; no ``to_out``: the block's
          ``proj_out`` (``c + ffn -> c``) fuses the attention output with the parallel MLP ``proj_mlp``
          (``c -> ffn``), both on every token and after the restoration, so SymRnR's ``h`` does not shrink
          them (fixed terms ``output_projection`` and ``mlp``).

        Not counted, as for every family: the AdaLN modulation linears (per sample, not per token).
        """
        c, f = model.inner_dim, model.ffn_dim
        s = model.text_len + model.num_video_tokens
        if kind == DUAL:
            return BlockTerms(self_tokens=s, proj_per_token=4 * 2 * c * c, fixed={"mlp": 2 * 2 * s * c * f})
        if kind == SINGLE:
            return BlockTerms(self_tokens=s, proj_per_token=3 * 2 * c * c,
                              fixed={"output_projection": 2 * s * c * c, "mlp": 2 * 2 * s * c * f})
        raise AsymRnRError(f"{self.family} has block kinds {DUAL!r} and {SINGLE!r}, not {kind!r}")

    def generation_rules(self, config: Mapping[str, Any] | None = None) -> GenerationRules:
        return GenerationRules(vae_spatial=8, vae_temporal=4, size_multiple=16, frames_step=4, frames_offset=1)

    def set_timesteps(self, pipe: Any, scheduler: Any, num_steps: int) -> None:
        """As ``HunyuanVideoPipeline.__call__``: custom sigmas ``linspace(1, 0, n + 1)[:-1]``."""
        import numpy as np

        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])

    # ---- runtime ---------------------------------------------------------------------------------------
    def sites(self, transformer: Any) -> list[Site]:
        inner = getattr(transformer, "_orig_mod", transformer)
        sites = [(DUAL, f"transformer_blocks.{i}.attn", block.attn) for i, block in enumerate(inner.transformer_blocks)]
        sites += [(SINGLE, f"single_transformer_blocks.{i}.attn", block.attn)
                  for i, block in enumerate(inner.single_transformer_blocks)]
        return [Site(i, kind, path, module) for i, (kind, path, module) in enumerate(sites)]

    def call_grid(self, transformer: Any, inputs: Mapping[str, Any]) -> tuple[int, int, int]:
        pt, ph, pw = self.patch_size(config_of(transformer))
        _, _, frames, height, width = inputs["hidden_states"].shape
        return (int(frames) // pt, int(height) // ph, int(width) // pw)

    def make_processor(self, site: Site, runtime: Any, original: Any) -> Any:
        return HunyuanVideoAsymRnRProcessor(site, runtime, original)


class HunyuanVideoAsymRnRProcessor(DispatchingProcessor):
    """AsymRnR in place of ``HunyuanVideoAttnProcessor2_0`` at one site (dual- or single-stream).

    Q/K/V are computed as upstream computes them (projections, per-head RMSNorm, RoPE on the video part),
    then :func:`asymrnr.runtime.reduce.attend` reduces the video tokens of Q and K/V (text last, never
    reduced), gathers the bool key mask's columns at the kept keys (text columns untouched), attends with
    ``dispatch_attention_fn`` (the user's backend) and restores. SymRnR's ``h`` drops video tokens of the
    attention input before the projections (the rotary tables and the mask columns follow) and restores the
    video output (after ``to_out`` in dual blocks; single blocks have no ``to_out``). A site with nothing to
    do this step calls the original processor: a zero schedule is bit-identical to the unpatched model.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        import torch

        from ..runtime import reduce as R

        rt = self.runtime
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] == 0 or R.passthrough(rt, self.site.index):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        text_len = encoder_hidden_states.shape[1]
        num_video = hidden_states.shape[1]
        video_input = hidden_states
        dual = attn.add_q_proj is not None

        # SymRnR (h): fewer video tokens through projections and attention; rotary tables and mask follow.
        hidden_states, rope, restore_h = R.reduce_input(rt, self.site.index, hidden_states, image_rotary_emb,
                                                         gather_rope=_gather_rope)
        attention_mask = R.input_mask(attention_mask, restore_h, text_len=text_len, text_layout="last",
                                      num_video=num_video)

        # 1. QKV projections (single-stream: one joint sequence through the shared projections)
        if not dual:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 3. RoPE on the video tokens only
        if rope is not None:
            if restore_h is None:
                from diffusers.models.embeddings import apply_rotary_emb

                def rotate(x):
                    return apply_rotary_emb(x, rope, sequence_dim=1)
            else:  # per-sample tables gathered at the kept positions

                def rotate(x):
                    return _rotate(x, *rope)

            if dual:
                query, key = rotate(query), rotate(key)
            else:
                query = torch.cat([rotate(query[:, :-text_len]), query[:, -text_len:]], dim=1)
                key = torch.cat([rotate(key[:, :-text_len]), key[:, -text_len:]], dim=1)

        # 4. Text stream of dual blocks: its own projections and norms, appended (text last)
        if dual:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        # 5. Attention: reduce Q and K/V (mask columns follow the kept keys), attend, restore

        out = R.attend(rt, self.site.index, query, key, value, text_len=text_len, text_layout="last", heads_dim=2,
                       attend_fn=self.dispatch, attn_mask=attention_mask, observed_input=video_input,
                       restore_h=restore_h)
        out = out.flatten(2, 3).to(query.dtype)

        # 6. Output projections, then SymRnR's restoration of the video tokens
        video_out, text_out = out[:, :-text_len], out[:, -text_len:]
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[0](video_out)
            video_out = attn.to_out[1](video_out)
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        if restore_h is not None:
            video_out = R.restore_input(video_out, restore_h)
        return video_out, text_out


def _gather_rope(rope, keep_idx):
    """HunyuanVideo's rotary tables ``(cos, sin) [N, D]`` at the kept positions: ``[B, M, 1, D]`` each."""
    cos, sin = rope
    return (cos[keep_idx].unsqueeze(2), sin[keep_idx].unsqueeze(2))


def _rotate(x, cos, sin):
    """``embeddings.apply_rotary_emb`` (interleaved pairs, ``sequence_dim=1``) with per-sample tables
    ``[B, M, 1, D]`` on ``x [B, M, H, D]``."""
    import torch

    cos, sin = cos.to(x.device), sin.to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


ADAPTER = HunyuanVideoAdapter()
