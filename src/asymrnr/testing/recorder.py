"""Record every attention call a pipeline's transformers make: who called, tensor layout, lengths, masks.

:func:`record_attention` is a context manager. Inside it, each call of ``dispatch_attention_fn`` (in every
diffusers module that imported it) and of ``torch.nn.functional.scaled_dot_product_attention`` made while a
transformer of the pipeline runs its forward becomes one :class:`AttentionCall`: the attention module that
called (its path inside the component, e.g. ``blocks.0.attn1``), the processor, the function and tensor
layout (``[B, S, H, D]`` for ``dispatch_attention_fn``, ``[B, H, S, D]`` for SDPA), query/key lengths, the
mask, and where the text tokens sit in the sequence. Each transformer forward becomes one
:class:`TransformerCall` (component, ``cache_context`` name and kwargs, the shapes of its inputs), so that CFG
batching (one call of batch 2, or two calls of batch 1) is visible. SDPA calls made by the native backend
of ``dispatch_attention_fn`` are not counted twice. Calls outside the transformers (text encoders, VAE,
image encoder) are not recorded.

Where the text sits is *measured*, not assumed: for a call whose query is longer than the ``hidden_states``
given to the attention module (a joint video + text sequence), the recorder projects the module's
``encoder_hidden_states`` with its value projection (``add_v_proj`` if it has one, else ``to_v``) and finds
those rows at the start (``first``) or the end (``last``) of the value tensor. Per-sample attention (Mochi
runs one SDPA call per batch element) is matched sample by sample.

Everything is restored on exit (hooks removed, functions unpatched), also on errors.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

VIA_DISPATCH = "dispatch_attention_fn"
VIA_SDPA = "sdpa"


@dataclass(frozen=True)
class AttentionCall:
    """One attention call (see the module docstring)."""

    component: str  # pipeline attribute of the transformer: "transformer", "transformer_2"
    forward_index: int  # index of the enclosing transformer forward in this recording
    context: str | None  # name of the cache_context the pipeline opened around that forward
    site: str  # path of the attention module inside the component ("" if none encloses the call)
    module_class: str
    processor_class: str | None
    via: str  # VIA_DISPATCH or VIA_SDPA
    layout: str  # "BSHD" or "BHSD"
    batch: int
    heads: int
    q_len: int
    k_len: int
    head_dim: int
    mask_shape: tuple[int, ...] | None
    mask_dtype: str | None  # "torch.bool" (True = attend) or a float dtype (additive)
    hidden_len: int | None  # length of the hidden_states given to the attention module
    context_len: int | None  # length of its encoder_hidden_states (None when not given)
    text_layout: str  # "none" | "first" | "last" | "cross" | "other" | "unknown"
    text_tokens: int  # text tokens in this call's query (joint) or key (cross); 0 otherwise
    call_in_module: int  # index of this call within one forward of its module (Mochi: the sample)

    @property
    def is_joint(self) -> bool:
        return self.text_layout in ("first", "last")

    @property
    def mask_kind(self) -> str:
        if self.mask_dtype is None:
            return "none"
        return "bool" if self.mask_dtype == "torch.bool" else "additive"

    @property
    def site_pattern(self) -> str:
        """The site with block indices replaced by ``{i}`` (``blocks.{i}.attn1``)."""
        return re.sub(r"\.\d+\.", ".{i}.", self.site)


@dataclass(frozen=True)
class TransformerCall:
    """One forward of a pipeline transformer."""

    component: str
    index: int
    context: str | None
    context_kwargs: dict[str, Any]
    batch: int
    inputs: dict[str, Any]  # name -> ("tensor", shape, dtype) or the plain value


@dataclass
class AttentionLog:
    calls: list[AttentionCall] = field(default_factory=list)
    forwards: list[TransformerCall] = field(default_factory=list)

    def sites(self, component: str | None = None) -> list[str]:
        """Attention module paths in first-call order."""
        seen: dict[str, None] = {}
        for c in self.calls:
            if component is None or c.component == component:
                seen.setdefault(c.site, None)
        return list(seen)

    def at(self, pattern: str, component: str | None = None) -> list[AttentionCall]:
        """Calls whose site matches the regular expression ``pattern`` (full match)."""
        rx = re.compile(pattern)
        return [c for c in self.calls if rx.fullmatch(c.site) and (component is None or c.component == component)]

    def layouts(self) -> list[dict[str, Any]]:
        """One row per distinct call layout (site pattern, function, shapes, mask, text placement), in order."""
        rows: dict[tuple, dict[str, Any]] = {}
        for c in self.calls:
            row = {
                "component": c.component,
                "site": c.site_pattern,
                "module": c.module_class,
                "processor": c.processor_class,
                "via": c.via,
                "layout": c.layout,
                "batch": c.batch,
                "heads": c.heads,
                "q_len": c.q_len,
                "k_len": c.k_len,
                "head_dim": c.head_dim,
                "mask": None if c.mask_shape is None else f"{c.mask_kind} {list(c.mask_shape)}",
                "hidden_len": c.hidden_len,
                "context_len": c.context_len,
                "text": c.text_layout,
                "text_tokens": c.text_tokens,
            }
            key = tuple((k, str(v)) for k, v in row.items())
            if key in rows:
                rows[key]["count"] += 1
            else:
                rows[key] = {**row, "count": 1}
        return list(rows.values())

    def to_dict(self) -> dict[str, Any]:
        return {"calls": [asdict(c) for c in self.calls], "forwards": [asdict(f) for f in self.forwards]}


def _describe(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() <= 4 and value.ndim <= 1:
            return ("tensor", tuple(value.shape), str(value.dtype), [float(v) for v in value.detach().flatten()])
        return ("tensor", tuple(value.shape), str(value.dtype))
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(_describe(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return tuple(value)
    return type(value).__name__


def _is_attention_module(module: Any) -> bool:
    name = type(module).__name__
    return hasattr(module, "processor") or name.endswith("Attention") or name.endswith("AttentionPool")


def _arg(args: tuple, kwargs: dict, name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


class _Recorder:
    def __init__(self, probe_text: bool):
        self.log = AttentionLog()
        self.probe_text = probe_text
        self.forward_stack: list[tuple[str, int]] = []
        self.site_stack: list[dict[str, Any]] = []
        self.context: dict[str, tuple[str, dict[str, Any]] | None] = {}
        self.dispatch_depth = 0

    # ---- transformer forwards ---------------------------------------------------------------------------
    def on_forward(self, component: str, module, args, kwargs):
        index = len(self.log.forwards)
        ctx = self.context.get(component)
        inputs = {f"arg{i}": _describe(a) for i, a in enumerate(args)}
        inputs.update({k: _describe(v) for k, v in kwargs.items()})
        hidden = _arg(args, kwargs, "hidden_states", 0)
        self.log.forwards.append(
            TransformerCall(
                component=component,
                index=index,
                context=ctx[0] if ctx else None,
                context_kwargs=dict(ctx[1]) if ctx else {},
                batch=int(hidden.shape[0]) if hidden is not None else -1,
                inputs=inputs,
            )
        )
        self.forward_stack.append((component, index))

    def on_forward_end(self, *_):
        if self.forward_stack:
            self.forward_stack.pop()

    # ---- attention modules ------------------------------------------------------------------------------
    def on_site(self, path: str, module, args, kwargs):
        hidden = _arg(args, kwargs, "hidden_states", 0)
        context = _arg(args, kwargs, "encoder_hidden_states", 1)
        self.site_stack.append({"path": path, "module": module, "hidden": hidden, "context": context, "calls": 0})

    def on_site_end(self, *_):
        if self.site_stack:
            self.site_stack.pop()

    # ---- attention functions ----------------------------------------------------------------------------
    def record(self, via: str, query, key, value, mask):
        if not self.forward_stack:
            return
        import torch

        component, index = self.forward_stack[-1]
        frame = self.site_stack[-1] if self.site_stack else None
        if via == VIA_DISPATCH:
            layout, (batch, q_len, heads, head_dim), k_len = "BSHD", query.shape, key.shape[1]
        else:
            layout, (batch, heads, q_len, head_dim), k_len = "BHSD", query.shape, key.shape[2]
        hidden_len = context_len = None
        text_layout, text_tokens, call_in_module = "unknown", 0, 0
        module = None
        if frame is not None:
            module = frame["module"]
            call_in_module = frame["calls"]
            frame["calls"] += 1
            hidden, context = frame["hidden"], frame["context"]
            hidden_len = int(hidden.shape[1]) if isinstance(hidden, torch.Tensor) and hidden.ndim == 3 else None
            context_len = int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim == 3 else None
            if context_len is None:
                text_layout = "none" if q_len == k_len == hidden_len else "other"
            elif hidden_len is not None and q_len == hidden_len and k_len <= context_len:
                text_layout, text_tokens = "cross", int(k_len)
            elif hidden_len is not None and q_len > hidden_len:
                text_tokens = int(q_len - hidden_len)
                if self.probe_text:
                    text_layout = self._locate_text(module, context, value, layout, text_tokens, call_in_module)
        processor = getattr(module, "processor", None) if module is not None else None
        self.log.calls.append(
            AttentionCall(
                component=component,
                forward_index=index,
                context=self.log.forwards[index].context,
                site=frame["path"] if frame else "",
                module_class=type(module).__name__ if module is not None else "",
                processor_class=type(processor).__name__ if processor is not None else None,
                via=via,
                layout=layout,
                batch=int(batch),
                heads=int(heads),
                q_len=int(q_len),
                k_len=int(k_len),
                head_dim=int(head_dim),
                mask_shape=tuple(int(s) for s in mask.shape) if isinstance(mask, torch.Tensor) else None,
                mask_dtype=str(mask.dtype) if isinstance(mask, torch.Tensor) else None,
                hidden_len=hidden_len,
                context_len=context_len,
                text_layout=text_layout,
                text_tokens=text_tokens,
                call_in_module=call_in_module,
            )
        )

    @staticmethod
    def _locate_text(module, context, value, layout: str, n: int, call_in_module: int) -> str:
        import torch

        proj = getattr(module, "add_v_proj", None)
        if proj is None:
            proj = getattr(module, "to_v", None)
        if not isinstance(proj, torch.nn.Module):
            return "unknown"
        with torch.no_grad():
            v_text = proj(context)  # [B, T, H * D]
            v = value if layout == "BSHD" else value.transpose(1, 2)  # [B, S, H, D]
            v_text = v_text.unflatten(2, (v.shape[2], -1))
            if v_text.shape[0] != v.shape[0]:  # attention run per sample
                v_text = v_text[call_in_module : call_in_module + 1]
            expected = v_text[:, :n].to(v.dtype)
            tol = dict(atol=1e-4, rtol=1e-3) if v.dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
            if v.shape[1] >= n and torch.allclose(v[:, :n], expected, **tol):
                return "first"
            if v.shape[1] >= n and torch.allclose(v[:, -n:], expected, **tol):
                return "last"
        return "unknown"


@contextmanager
def record_attention(pipe_or_model: Any, components: tuple[str, ...] = ("transformer", "transformer_2"),
                     probe_text: bool = True) -> Iterator[AttentionLog]:
    """Record the attention calls of the transformers of ``pipe_or_model`` (a pipeline or one transformer)."""
    import functools

    import torch
    import torch.nn.functional as F
    from diffusers.models import attention_dispatch

    rec = _Recorder(probe_text)
    if isinstance(pipe_or_model, torch.nn.Module):
        models = {"transformer": pipe_or_model}
    else:
        models = {c: getattr(pipe_or_model, c) for c in components if getattr(pipe_or_model, c, None) is not None}

    handles: list[Any] = []
    patched_contexts: list[Any] = []
    original_dispatch = attention_dispatch.dispatch_attention_fn
    original_sdpa = F.scaled_dot_product_attention
    dispatch_modules = [
        m for name, m in list(sys.modules.items())
        if name.startswith("diffusers") and m is not None and getattr(m, "dispatch_attention_fn", None) is original_dispatch
    ]

    def dispatch_wrapper(query, key, value, attn_mask=None, *args, **kwargs):
        rec.record(VIA_DISPATCH, query, key, value, attn_mask)
        rec.dispatch_depth += 1
        try:
            return original_dispatch(query, key, value, attn_mask, *args, **kwargs)
        finally:
            rec.dispatch_depth -= 1

    def sdpa_wrapper(*args, **kwargs):
        if rec.dispatch_depth == 0:
            q = args[0] if len(args) > 0 else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            v = args[2] if len(args) > 2 else kwargs["value"]
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            rec.record(VIA_SDPA, q, k, v, mask)
        return original_sdpa(*args, **kwargs)

    try:
        for component, model in models.items():
            handles.append(model.register_forward_pre_hook(functools.partial(rec.on_forward, component), with_kwargs=True))
            handles.append(model.register_forward_hook(rec.on_forward_end, always_call=True))
            for path, sub in model.named_modules():
                if sub is not model and _is_attention_module(sub):
                    handles.append(sub.register_forward_pre_hook(functools.partial(rec.on_site, path), with_kwargs=True))
                    handles.append(sub.register_forward_hook(rec.on_site_end, always_call=True))
            if hasattr(model, "cache_context"):
                original_cc = model.cache_context

                @contextmanager
                def cache_context(name, _component=component, _original=original_cc, **kwargs):
                    rec.context[_component] = (name, kwargs)
                    try:
                        with _original(name, **kwargs):
                            yield
                    finally:
                        rec.context[_component] = None

                model.cache_context = cache_context  # instance attribute shadows the method
                patched_contexts.append(model)
        for m in dispatch_modules:
            m.dispatch_attention_fn = dispatch_wrapper
        F.scaled_dot_product_attention = sdpa_wrapper
        yield rec.log
    finally:
        F.scaled_dot_product_attention = original_sdpa
        for m in dispatch_modules:
            m.dispatch_attention_fn = original_dispatch
        for model in patched_contexts:
            del model.cache_context
        for h in handles:
            h.remove()


__all__ = ["AttentionCall", "TransformerCall", "AttentionLog", "record_attention", "VIA_DISPATCH", "VIA_SDPA"]
