"""The adapter interface: everything asymrnr needs to know about one family of video transformers.

An adapter is a small class, one per family (``archs/cogvideox.py``, ``archs/wan.py``, ...), registered in
:mod:`asymrnr.archs`. The rest of the package never names a family: it asks the adapter.

Importing an adapter module is cheap (no torch, no diffusers): the facts that need only a config (the
model description, FLOPs terms, generation rules) are plain Python; the runtime parts (attention sites,
the token grid of a call, the AsymRnR processor) import torch when called.

Vocabulary:

* *site*: one self-attention module that a schedule reduces (``index`` = its row in the schedule, ``kind``
  a label such as ``dual`` / ``single`` for families with two kinds of blocks).
* *token layout*: where the video tokens sit in a site's sequence (text ``first``, ``last`` or ``none``).
* *components*: the pipeline attributes that hold transformers (``transformer``; Wan 2.2 also
  ``transformer_2``).
* *CFG mode*: ``batched`` (one call, cond and uncond in one batch) or ``separate`` (one call per branch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import AsymRnRError
from ..formats.descriptions import DEFAULT_BLOCK_KIND, ModelDescription, SamplerDescription

#: Scheduler config keys that change the timesteps or the noise levels of a sampler. A schedule records
#: those its scheduler has; applying it under a scheduler whose values differ is refused.
SAMPLER_CONFIG_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "timestep_spacing",
    "steps_offset", "snr_shift_scale", "rescale_betas_zero_snr", "shift", "flow_shift", "use_dynamic_shifting",
    "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type", "shift_terminal",
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "final_sigmas_type", "sigma_min",
    "sigma_max", "invert_sigmas", "solver_order", "algorithm_type", "solver_type", "lower_order_final",
    "thresholding", "timestep_type", "use_flow_sigmas",
)


@dataclass(frozen=True)
class TokenLayout:
    """Token layout of one self-attention call: ``[text | video]``, ``[video | text]`` or ``[video]``."""

    text_layout: str  # "first" | "last" | "none"
    text_len: int
    num_video: int

    @property
    def video_start(self) -> int:
        return self.text_len if self.text_layout == "first" else 0

    @property
    def seq_len(self) -> int:
        return self.text_len + self.num_video


@dataclass(frozen=True)
class GenerationRules:
    """What a valid generation of the family looks like (checked by the CLI before loading anything).

    ``frames_step``/``frames_offset``: valid frame counts are ``frames_step * k + frames_offset``.
    ``size_multiple``: height and width must be multiples of it (VAE factor x spatial patch).
    """

    vae_spatial: int
    vae_temporal: int
    size_multiple: int
    frames_step: int
    frames_offset: int = 1
    #: ``(height, width)`` in pixels when the model generates that size only (CogVideoX-5B-I2V's learned
    #: positional embeddings); ``None``: any valid size.
    fixed_size: tuple[int, int] | None = None

    def check(self, height: int, width: int, num_frames: int) -> str | None:
        """A message saying what is wrong with this size (``None`` when it is valid)."""
        if self.fixed_size is not None and (height, width) != tuple(self.fixed_size):
            fh, fw = self.fixed_size
            return (f"this model generates {fh}x{fw} only (its positional embeddings are learned for that size), "
                    f"got {height}x{width}")
        if height % self.size_multiple or width % self.size_multiple:
            return (f"height and width must be multiples of {self.size_multiple} (VAE {self.vae_spatial} x "
                    f"patch), got {height}x{width}")
        if num_frames < self.frames_offset or (num_frames - self.frames_offset) % self.frames_step:
            examples = ", ".join(str(self.frames_step * k + self.frames_offset) for k in (2, 6, 12, 20))
            return (f"frames must be {self.frames_step}k+{self.frames_offset} (e.g. {examples}), got {num_frames}")
        return None


@dataclass(frozen=True)
class BlockTerms:
    """Dense FLOPs of one site's block for one sample, as the FLOPs model needs them.

    ``self_tokens``: tokens entering the self-attention (text + video for joint attention);
    ``proj_per_token``: FLOPs of the Q, K, V and output projections per such token (SymRnR's ``h`` runs
    them on fewer tokens); ``fixed``: every other term of the block (MLP, cross-attention, ...) by name,
    unchanged by any reduction. The self-attention core (``QK^T`` and ``AV``) is computed by
    :mod:`asymrnr.flops` from the reduced lengths.
    """

    self_tokens: int
    proj_per_token: float
    fixed: Mapping[str, float]


class ArchAdapter:
    """Facts and runtime parts of one family. Subclasses set the class attributes and implement the methods.

    Attributes:
        family: the name written into files (``model.family``), e.g. ``cogvideox``.
        transformer_classes: diffusers transformer class names served (matched along the class hierarchy,
            so subclasses work).
        pipeline_classes: diffusers pipeline class names of the family (for checkpoints without a preset).
        text_layout: where text sits in self-attention.
        cfg_mode: ``batched`` or ``separate``.
        components: pipeline attributes that may hold a transformer of this family.
        supported_processors: processor class names the adapter knows how to replace.
        context_parallel: its processors attend through ``dispatch_attention_fn`` with the transformer's
            parallel config and hand :func:`asymrnr.runtime.reduce.attend` the rank's shard, so asymrnr runs
            under diffusers' context parallelism (``enable_parallelism``); others refuse it.
    """

    family: str = ""
    transformer_classes: tuple[str, ...] = ()
    pipeline_classes: tuple[str, ...] = ()
    text_layout: str = "none"
    cfg_mode: str = "batched"
    components: tuple[str, ...] = ("transformer",)
    supported_processors: tuple[str, ...] = ()
    context_parallel: bool = False
    block_kind_names: Mapping[str, str] = {}  # kind -> label for reports ("dual" -> "dual-stream")

    # ---- matching a transformer ----------------------------------------------------------------------
    def serves(self, transformer: Any) -> bool:
        """Whether ``transformer`` (or a subclass of a served class) belongs to this family."""
        inner = getattr(transformer, "_orig_mod", transformer)
        names = {c.__name__ for c in type(inner).__mro__}
        return bool(names & set(self.transformer_classes))

    def serves_class_name(self, name: str) -> bool:
        return name in self.transformer_classes

    # ---- descriptions (config only) -----------------------------------------------------------------
    def describe(self, transformer: Any, *, latent_grid=None, text_len: int | None = None) -> ModelDescription:
        """The model description of ``transformer`` at ``latent_grid`` (default: its config's sample size)."""
        raise NotImplementedError

    def describe_sampler(self, pipe: Any, num_steps: int, *, latent_grid=None) -> SamplerDescription:
        """The sampler of ``pipe`` for ``num_steps`` steps: class, timesteps, config, components per step.

        ``latent_grid``: the token grid of the generation, for samplers whose timesteps depend on it (LTX-Video
        shifts them by the token count); passed to :meth:`set_timesteps` when that takes ``latent_grid``. The
        timesteps are recorded as :meth:`call_timestep` reports a transformer call's (:meth:`sampler_timestep`).
        """
        import copy
        import inspect

        scheduler = copy.deepcopy(pipe.scheduler)
        extra = {}
        if latent_grid is not None and "latent_grid" in inspect.signature(self.set_timesteps).parameters:
            extra["latent_grid"] = tuple(int(g) for g in latent_grid)
        self.set_timesteps(pipe, scheduler, num_steps, **extra)
        raw = scheduler.timesteps
        raw = raw.tolist() if hasattr(raw, "tolist") else list(raw)
        timesteps = tuple(self.sampler_timestep(float(t)) for t in raw)
        if len(timesteps) != num_steps:
            raise AsymRnRError(
                f"{type(scheduler).__name__} yields {len(timesteps)} timesteps for num_steps={num_steps}; asymrnr "
                "schedules need one transformer call per branch and step: use a first-order scheduler"
            )
        config = sampler_config(scheduler)
        names, per_step = self.step_components(pipe, tuple(float(t) for t in raw), scheduler)
        return SamplerDescription(type(scheduler).__name__, num_steps, timesteps, config, names, per_step)

    def set_timesteps(self, pipe: Any, scheduler: Any, num_steps: int) -> None:
        """Set the scheduler's timesteps as the family's pipeline does (some pipelines pass ``mu``)."""
        scheduler.set_timesteps(num_steps)

    def call_timestep(self, inputs: Mapping[str, Any]) -> float:
        """The timestep of one transformer call as the runtime compares it, from its bound arguments.

        It must fall over a generation (the step tracker starts a new generation when it goes up) and equal
        the timesteps :meth:`describe_sampler` records. Default: the largest entry of ``timestep`` (Wan 2.2
        TI2V passes one per token); families whose transformer gets reversed timesteps (Mochi) flip it.
        """
        timestep = inputs.get("timestep")
        if timestep is None:
            return 0.0
        import torch

        return float(torch.as_tensor(timestep).detach().max())

    def sampler_timestep(self, t: float) -> float:
        """A timestep of the scheduler (``scheduler.timesteps``) as :meth:`call_timestep` reports it."""
        return t

    def step_components(self, pipe: Any, timesteps, scheduler) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
        """The transformer components of ``pipe`` and which runs each step (``None``: the first, always)."""
        return ("transformer",), None

    def block_terms(self, model: ModelDescription, kind: str) -> BlockTerms:
        """Dense FLOPs terms of one block of ``kind`` for one sample, at ``model``'s grid."""
        raise NotImplementedError

    def generation_rules(self, config: Mapping[str, Any] | None = None) -> GenerationRules:
        raise NotImplementedError

    def token_grid(self, model_config: Any, height: int, width: int, num_frames: int, vae_spatial: int,
                   vae_temporal: int) -> tuple[int, int, int]:
        """Token grid of a ``height x width x num_frames`` generation (as the pipeline would make it)."""
        pt, ph, pw = self.patch_size(model_config)
        latent_frames = (num_frames - 1) // vae_temporal + 1
        return (math.ceil(latent_frames / pt), height // vae_spatial // ph, width // vae_spatial // pw)

    def patch_size(self, config: Any) -> tuple[int, int, int]:
        raise NotImplementedError

    # ---- runtime (torch) ----------------------------------------------------------------------------
    def sites(self, transformer: Any) -> list["Site"]:
        """The self-attention sites of ``transformer`` in schedule order."""
        raise NotImplementedError

    def call_grid(self, transformer: Any, inputs: Mapping[str, Any]) -> tuple[int, int, int]:
        """The token grid of one transformer call, from its bound arguments (by name, never position)."""
        raise NotImplementedError

    def call_text_len(self, inputs: Mapping[str, Any]) -> int:
        """Text tokens of one call, as :meth:`describe` takes ``text_len`` (from ``encoder_hidden_states``)."""
        ehs = inputs.get("encoder_hidden_states")
        return int(ehs.shape[1]) if ehs is not None and hasattr(ehs, "shape") else 0

    def generation_size(self, pipe: Any, transformer: Any, grid) -> dict:
        """Height, width and frames (pixels) of a generation whose token grid is ``grid``."""
        pt, ph, pw = self.patch_size(config_of(transformer))
        vs = int(getattr(pipe, "vae_scale_factor_spatial", 8))
        vt = int(getattr(pipe, "vae_scale_factor_temporal", 4))
        return {"height": grid[1] * ph * vs, "width": grid[2] * pw * vs, "num_frames": (grid[0] * pt - 1) * vt + 1}

    def make_processor(self, site: "Site", runtime: Any, original: Any) -> Any:
        """The AsymRnR processor replacing ``original`` at ``site``."""
        raise NotImplementedError

    def block_kinds(self, transformer: Any) -> tuple[str, ...]:
        return tuple(s.kind for s in self.sites(transformer))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} family={self.family!r}>"


@dataclass(frozen=True)
class Site:
    """One self-attention module of a transformer: its schedule row, kind and module path."""

    index: int
    kind: str
    path: str  # module path from the transformer, e.g. "transformer_blocks.3.attn1"
    module: Any

    @property
    def processor_name(self) -> str:
        return f"{self.path}.processor"


class AsymRnRProcessor:
    """What every family's AsymRnR processor holds: its site, the component's runtime, and the processor it
    replaced (called untouched when the site has nothing to do, and restored by ``asymrnr.remove``)."""

    def __init__(self, site: Site, runtime: Any, original: Any):
        self.site = site
        self.runtime = runtime
        self.original = original


class DispatchingProcessor(AsymRnRProcessor):
    """A processor that attends through diffusers' ``dispatch_attention_fn``, as its upstream one does.

    ``set_attention_backend`` and ``enable_parallelism`` set ``_attention_backend`` / ``_parallel_config`` on
    whatever processor a module holds: here they are stored on the original processor, so the user's choice
    applies to both paths and survives ``asymrnr.remove``.
    """

    @property
    def _attention_backend(self):
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.original._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.original._parallel_config = value

    def dispatch(self, query, key, value, attn_mask=None):
        """``dispatch_attention_fn`` on ``[B, S, H, D]`` with the user's backend and parallel config."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
                                     backend=self._attention_backend, parallel_config=self._parallel_config)


def sampler_config(scheduler: Any) -> dict:
    """The scheduler config keys (of :data:`SAMPLER_CONFIG_KEYS`) that it has, as plain JSON values."""
    cfg = getattr(scheduler, "config", {}) or {}
    out = {}
    for key in SAMPLER_CONFIG_KEYS:
        if key in cfg:
            value = cfg[key]
            if hasattr(value, "tolist"):
                value = value.tolist()
            if isinstance(value, (bool, int, float, str)) or value is None:
                out[key] = value
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
                out[key] = list(value)
    return out


def config_of(transformer: Any) -> Any:
    """``transformer.config`` (through a torch.compile wrapper), or a clear error."""
    inner = getattr(transformer, "_orig_mod", transformer)
    config = getattr(inner, "config", None)
    if config is None:
        raise TypeError(
            f"expected a diffusers transformer with a .config, got {type(inner).__name__}; pass the pipeline or "
            "pipeline.transformer"
        )
    return config


def class_name(transformer: Any) -> str:
    """The class name of a transformer, seen through torch.compile's wrapper."""
    return type(getattr(transformer, "_orig_mod", transformer)).__name__


__all__ = [
    "AsymRnRProcessor", "DispatchingProcessor", "SAMPLER_CONFIG_KEYS", "TokenLayout", "GenerationRules", "BlockTerms", "ArchAdapter", "Site", "sampler_config",
    "config_of", "class_name", "DEFAULT_BLOCK_KIND",
]
