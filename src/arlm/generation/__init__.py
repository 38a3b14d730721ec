"""Sampling: filters, the prefill + decode loop, and the AutoregressiveWrapper."""

from .decode import sample_next, stream_tokens
from .filters import FILTERS, min_p, resolve_filter, top_a, top_k, top_p
from .wrapper import AutoregressiveWrapper

__all__ = ["AutoregressiveWrapper", "FILTERS", "min_p", "resolve_filter", "sample_next", "stream_tokens",
           "top_a", "top_k", "top_p"]
