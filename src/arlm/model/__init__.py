"""Pure nn.Modules: no I/O, no CLI, no distributed code."""

from .attention import KVCache
from .facade import Decoder, TransformerWrapper
from .transformer import Transformer

__all__ = ["Decoder", "KVCache", "Transformer", "TransformerWrapper"]
