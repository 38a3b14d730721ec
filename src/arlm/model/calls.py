"""Calling submodules on the hot path without ``nn.Module.__call__``'s bookkeeping.

Each ``module(x)`` goes through two Python frames that look for hooks, tracing and
``Module.compile()`` before reaching ``forward``. Decoding one token calls about 40 submodules,
and at batch 1 on a CPU that bookkeeping, with the ``__getattr__`` lookups of the submodules,
measured 7-13% of the step. ``call`` skips it only when nothing could tell the difference: no
forward or backward hooks on the module, none registered globally, and no ``Module.compile()``
on it. Anything hooked (FSDP2's per-block hooks, a user's forward hook) takes the normal path.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as _module


def call(m: nn.Module, *args, **kwargs):
    if (m._forward_pre_hooks or m._forward_hooks or m._backward_pre_hooks or m._backward_hooks
            or m._compiled_call_impl is not None or _module._global_forward_pre_hooks
            or _module._global_forward_hooks or _module._global_backward_pre_hooks
            or _module._global_backward_hooks):
        return m(*args, **kwargs)
    return m.forward(*args, **kwargs)
