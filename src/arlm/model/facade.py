"""x-transformers-style constructors over the one arlm model.

``TransformerWrapper(num_tokens=..., max_seq_len=..., attn_layers=Decoder(dim=..., depth=...))``
builds a ``ModelConfig`` and the same ``Transformer`` every other part of arlm uses. Keyword names
and defaults follow x-transformers, so scripts port with an import change. Unknown keyword
arguments, and x-transformers options arlm does not offer, raise ``TypeError`` naming the argument
and listing the supported ones: nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ModelConfig
from .transformer import Transformer

# Decoder keyword -> (ModelConfig field, converter). Defaults are x-transformers'.
_DECODER_KWARGS: dict[str, tuple[str | None, Any]] = {
    "heads": ("heads", int),
    "attn_dim_head": ("dim_head", int),
    "attn_dropout": ("attn_dropout", float),
    "attn_kv_heads": ("kv_heads", int),
    "attn_one_kv_head": (None, bool),
    "attn_qk_norm": ("qk_norm", bool),
    "attn_qk_norm_scale": ("qk_norm_scale", float),
    "attn_flash": (None, bool),  # accepted for compatibility: arlm always uses fused SDPA when it can
    "ff_mult": ("ff_mult", float),
    "ff_glu": ("ff_glu", bool),
    "ff_swish": (None, bool),
    "ff_relu_squared": (None, bool),
    "ff_no_bias": (None, bool),
    "ff_dropout": ("ff_dropout", float),
    "rotary_pos_emb": (None, bool),
    "rotary_emb_dim": ("rotary_dim", int),
    "rotary_base": ("rotary_base", float),
    "use_rmsnorm": (None, bool),
    "layer_dropout": ("layer_dropout", float),
}

_WRAPPER_KWARGS = ("emb_dropout", "tie_embedding", "use_abs_pos_emb")


def _reject(where: str, name: str, supported) -> None:
    raise TypeError(
        f"{where}() got an unsupported keyword argument {name!r}. "
        f"arlm supports: {', '.join(sorted(supported))}. "
        "Options arlm does not implement are refused rather than silently ignored."
    )


class Decoder:
    """A causal stack of attention layers, as x-transformers' ``Decoder``.

    This is a specification (it holds validated options); ``TransformerWrapper`` turns it into
    the model. ``causal`` cannot be set: a decoder is always causal.
    """

    def __init__(self, *, dim: int, depth: int, **kwargs):
        for name in kwargs:
            if name not in _DECODER_KWARGS:
                _reject("Decoder", name, ["dim", "depth", *_DECODER_KWARGS])
        self.dim, self.depth = int(dim), int(depth)
        self.kwargs = {k: _DECODER_KWARGS[k][1](v) if v is not None else None for k, v in kwargs.items()}

    def model_fields(self) -> dict[str, Any]:
        kw = self.kwargs
        out: dict[str, Any] = {"dim": self.dim, "depth": self.depth, "heads": 8, "dim_head": 64}
        for name, value in kw.items():
            field = _DECODER_KWARGS[name][0]
            if field is not None:
                out[field] = value
        if kw.get("attn_one_kv_head"):
            if kw.get("attn_kv_heads") is not None:
                raise TypeError("set either attn_one_kv_head=True or attn_kv_heads, not both")
            out["kv_heads"] = 1
        if kw.get("ff_swish") and kw.get("ff_relu_squared"):
            raise TypeError("ff_swish and ff_relu_squared are exclusive; choose one activation")
        out["ff_activation"] = "relu_squared" if kw.get("ff_relu_squared") else ("swish" if kw.get("ff_swish") else "gelu")
        out["ff_bias"] = not kw.get("ff_no_bias", False)
        out["norm"] = "rmsnorm" if kw.get("use_rmsnorm") else "layernorm"
        out["rotary"] = bool(kw.get("rotary_pos_emb"))
        return out

    def __repr__(self) -> str:
        args = ", ".join([f"dim={self.dim}", f"depth={self.depth}"] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"Decoder({args})"


class TransformerWrapper(Transformer):
    """x-transformers' ``TransformerWrapper``: token embedding + ``Decoder`` + logits.

    ``forward(x, mask=None, return_embeddings=False)`` returns logits (B, T, num_tokens).
    ``mask`` (B, T) booleans, True for real tokens, must be a left-padding mask (False only
    before the first True of each row): the model is causal, so right padding needs no mask.
    As in x-transformers, rotary embeddings turn off the learned absolute positions.
    """

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: Decoder, **kwargs):
        if not isinstance(attn_layers, Decoder):
            raise TypeError(f"attn_layers must be an arlm Decoder(...), got {type(attn_layers).__name__}")
        for name in kwargs:
            if name not in _WRAPPER_KWARGS:
                _reject("TransformerWrapper", name, ["num_tokens", "max_seq_len", "attn_layers", *_WRAPPER_KWARGS])
        fields = attn_layers.model_fields()
        rotary = fields.pop("rotary")
        use_abs = bool(kwargs.get("use_abs_pos_emb", True)) and not rotary
        fields["pos_emb"] = "rotary" if rotary else ("absolute" if use_abs else "none")
        cfg = ModelConfig(vocab_size=int(num_tokens), max_seq_len=int(max_seq_len),
                          emb_dropout=float(kwargs.get("emb_dropout", 0.0)),
                          tie_embedding=bool(kwargs.get("tie_embedding", False)), **fields)
        super().__init__(cfg)
        self.attn_layers = attn_layers

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_embeddings: bool = False,
                **kwargs) -> torch.Tensor:
        if mask is None:
            return super().forward(x, return_embeddings=return_embeddings, **kwargs)
        mask = mask.bool()
        start = (~mask).sum(dim=1)  # number of leading pads per row
        expected = torch.arange(x.shape[1], device=x.device)[None, :] >= start[:, None]
        if not torch.equal(mask, expected):
            raise ValueError("mask must be a left-padding mask: False only before the first True of each row")
        return super().forward(x, start=start, return_embeddings=return_embeddings, **kwargs)
