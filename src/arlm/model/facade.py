"""x-transformers-style constructors over the one arlm model.

``TransformerWrapper(num_tokens=..., max_seq_len=..., attn_layers=Decoder(dim=..., depth=...))``
builds a ``ModelConfig`` and the same ``Transformer`` every other part of arlm uses. Keyword names
and defaults follow x-transformers, so scripts port with an import change. Unknown keyword
arguments, and x-transformers options arlm does not offer, raise ``TypeError`` naming the argument
and listing the supported ones: nothing is silently ignored. Options that cannot be both causal and
exact under the KV cache are refused with the reason (facade_keywords.py: the keyword tables,
``REFUSED`` and ``INERT``).
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import Any

import torch

from ..config import ModelConfig
from .facade_forward import check_input, check_keywords, is_native, xt_forward
from .facade_keywords import (_DECODER_KWARGS, _WRAPPER_KWARGS, _attn_proj_fields, _attn_score_fields, _check_kwargs, _ff_fields, _norm_fields,
                              _position_fields, _residual_fields, _stream_fields)
from .intermediates import LayerIntermediates, qk_clip_
from .transformer import Transformer


class Decoder:
    """A causal stack of attention layers, as x-transformers' ``Decoder``.

    This is a specification (it holds validated options); ``TransformerWrapper`` turns it into
    the model. ``causal`` cannot be set: a decoder is always causal. ``depth`` may be left out
    when ``custom_layers`` gives the layer pattern.
    """

    def __init__(self, *, dim: int, depth: int | None = None, **kwargs):
        kwargs = _check_kwargs("Decoder", kwargs, _DECODER_KWARGS, ["dim", "depth"])
        if depth is None and kwargs.get("custom_layers") is None:
            raise TypeError("Decoder() needs depth (or custom_layers giving the layer pattern)")
        self.dim = int(dim)
        self.depth = int(depth) if depth is not None else None
        # x-transformers' per-layer values: an attn_*/ff_* keyword given as a tuple (one value per
        # attention or feed-forward sublayer); the first value stands in until model_fields
        self.per_layer = {k: tuple(v) for k, v in kwargs.items()
                          if k.startswith(("attn_", "ff_")) and isinstance(v, (tuple, list))}
        kwargs = {k: (v[0] if k in self.per_layer and v else v) for k, v in kwargs.items()}
        self.kwargs = {k: _DECODER_KWARGS[k][1](v) if v is not None else None for k, v in kwargs.items()}

    def model_fields(self) -> dict[str, Any]:
        kw = self.kwargs
        depth = self.depth if self.depth is not None else max(1, kw["custom_layers"].count("a"))
        out: dict[str, Any] = {"dim": self.dim, "depth": depth, "heads": 8, "dim_head": 64}
        for name, value in kw.items():
            field = _DECODER_KWARGS[name][0]
            if field is not None and value is not None:
                out[field] = value
        if kw.get("attn_one_kv_head"):
            if kw.get("attn_kv_heads") is not None:
                raise TypeError("set either attn_one_kv_head=True or attn_kv_heads, not both")
            out["kv_heads"] = 1
        for family in (_position_fields, _norm_fields, _residual_fields, _stream_fields, _attn_proj_fields,
                       _attn_score_fields, _ff_fields):
            family(kw, out)
        if self.per_layer:
            out["per_layer"] = self._per_layer_fields(out)
        return out

    def _per_layer_fields(self, out: dict) -> dict[str, list]:
        """ModelConfig.per_layer from the tuple-valued keywords: the fields of each sublayer's
        scalar version, kept where they differ between sublayers."""
        from ..config.model_checks import PER_LAYER_FIELDS

        types = ModelConfig(**{k: v for k, v in out.items() if k in ModelConfig.__dataclass_fields__}).layer_types
        per: dict[str, list] = {}
        for kind, letter in (("attn", "a"), ("ff", "f")):
            keys = [k for k in self.per_layer if k.startswith(kind + "_")]
            n = types.count(letter)
            for k in keys:
                if len(self.per_layer[k]) != n:
                    raise TypeError(f"{k} has {len(self.per_layer[k])} values; this Decoder has {n} "
                                    f"{'attention' if kind == 'attn' else 'feed-forward'} sublayers (one value each)")
            if not keys:
                continue
            layers = []
            for i in range(n):
                one = Decoder.__new__(Decoder)
                one.dim, one.depth, one.per_layer = self.dim, self.depth, {}
                one.kwargs = {**self.kwargs, **{k: _DECODER_KWARGS[k][1](self.per_layer[k][i]) for k in keys}}
                layers.append(one.model_fields())
            defaults = {name: f.default for name, f in ModelConfig.__dataclass_fields__.items()}
            # a field a sublayer leaves unset (a None keyword) takes ModelConfig's default there
            for field in dict.fromkeys(k for f in layers for k in f):
                values = [f.get(field, defaults.get(field)) for f in layers]
                if any(v != values[0] for v in values):
                    if field not in PER_LAYER_FIELDS[kind]:
                        raise TypeError(f"{', '.join(keys)} given per layer would vary {field}, which arlm builds once "
                                        f"for every layer; per-layer values are supported for: "
                                        f"{', '.join(PER_LAYER_FIELDS[kind])}")
                    per[field] = values
        return per

    def attn_qk_clip_(self, intermediates, tau: float = 100.0) -> None:
        """QK-clip on the model built from this spec, as x-transformers' ``net.attn_layers.attn_qk_clip_``."""
        model = self._model() if getattr(self, "_model", None) is not None else None
        if model is None:
            raise ValueError("this Decoder is not part of a TransformerWrapper")
        qk_clip_(model, intermediates, tau)

    def __repr__(self) -> str:
        args = ", ".join([f"dim={self.dim}", f"depth={self.depth}"] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"Decoder({args})"


class TransformerWrapper(Transformer):
    """x-transformers' ``TransformerWrapper``: token embedding + ``Decoder`` + logits.

    ``forward(x)`` returns logits (B, T, num_tokens); its x-transformers keywords (``mask``,
    ``seq_start_pos``, ``cache`` / ``return_intermediates``, ...) are in model/facade_forward.py.
    As in x-transformers, rotary and polar embeddings and T5 relative bias turn off the learned
    absolute positions unless the Decoder says ``disable_abs_pos_emb=False``;
    ``scaled_sinu_pos_emb`` swaps them for scaled sinusoids.
    """

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: Decoder, **kwargs):
        if not isinstance(attn_layers, Decoder):
            raise TypeError(f"attn_layers must be an arlm Decoder(...), got {type(attn_layers).__name__}")
        kwargs = _check_kwargs("TransformerWrapper", kwargs, _WRAPPER_KWARGS, ["num_tokens", "max_seq_len", "attn_layers"])
        fields = attn_layers.model_fields()
        qk_pos_emb = fields.pop("qk_pos_emb")
        disable_abs = fields.pop("disable_abs_pos_emb")
        use_abs = bool(kwargs.get("use_abs_pos_emb", True)) and not disable_abs
        abs_kind = ("scaled_sinusoidal" if kwargs.get("scaled_sinu_pos_emb") else "absolute") if use_abs else "none"
        if qk_pos_emb is not None:  # rotary or polar, with absolute positions only if asked for
            fields["pos_emb"], fields["abs_pos_emb"] = qk_pos_emb, abs_kind
        else:
            fields["pos_emb"] = abs_kind
        for name, value in kwargs.items():
            field, conv = _WRAPPER_KWARGS[name]
            if field is not None:
                fields[field] = conv(value)
        modules = {name: kwargs.get(name) for name in ("token_emb", "to_logits")}
        for name, module in modules.items():
            if module is not None and not isinstance(module, torch.nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
            fields[f"custom_{name}"] = module is not None
        cfg = ModelConfig(vocab_size=int(num_tokens), max_seq_len=int(max_seq_len), **fields)
        if cfg.ff_deep_embed and attn_layers.depth is None:
            # x-transformers' depth for a custom layout without one: the number of sublayer calls
            cfg = replace(cfg, ff_deep_embed_depth=len(cfg.execute_order))
        super().__init__(cfg, **modules)
        self.attn_layers = attn_layers
        self.input_not_include_cache = bool(kwargs.get("input_not_include_cache", False))
        attn_layers._model = weakref.ref(self)  # the spec's attn_qk_clip_ reaches the weights

    def forward(self, x: torch.Tensor | None = None, *args, **kwargs):
        """x-transformers' forward (model/facade_forward.py): ``mask``, ``pos``, ``prepend_embeds``,
        ``sum_embeds``, ``seq_start_pos``, ``cache`` / ``return_intermediates`` for step-by-step
        decoding, the ``return_*`` flags. arlm's own keywords (``input_pos``, a ``KVCache``,
        ``start``, ...) go straight to ``Transformer.forward``."""
        check_input(self, x, kwargs)
        if is_native(args, kwargs):
            return super().forward(x, **kwargs)
        if args:
            raise TypeError("TransformerWrapper.forward() takes the token ids positionally and everything else "
                            "by keyword")
        return xt_forward(self, x, **check_keywords(kwargs))

    def attn_qk_clip_(self, intermediates: LayerIntermediates, tau: float = 100.0) -> None:
        """QK-clip (Kimi K2's MuonClip) from a forward's intermediates; see ``intermediates.qk_clip_``."""
        qk_clip_(self, intermediates, tau)
