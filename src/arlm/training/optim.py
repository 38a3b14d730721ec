"""Optimizer construction: AdamW (or Adam) with weight decay on matrices only, or Muon for the
hidden matrices with AdamW for the rest."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: tensors with dim >= 2 (matmul weights and embeddings) decay; norm gains and
    biases (dim < 2) do not, as nanoGPT does. Shared parameters appear once."""
    decay, no_decay = [], []
    gains = _gain_like(model)
    for p in model.parameters():  # parameters() already yields a tied tensor once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in gains else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _gain_like(model: nn.Module) -> set[int]:
    """Parameters with two or more dims that act as gains, biases or mixing weights, not as
    matmul weights (e.g. hyper-connection stream mixes): a module lists their names in a
    ``no_weight_decay`` attribute. Names survive FSDP2's parameter swap; ids are taken now."""
    out = set()
    for m in model.modules():
        for name in getattr(m, "no_weight_decay", ()):
            p = getattr(m, name, None)
            if isinstance(p, torch.Tensor):
                out.add(id(p))
    return out


class Combined:
    """Several optimizers stepped as one (Muon for hidden matrices + AdamW for the rest).

    ``param_groups`` lists every group of every part, so the trainer's per-step learning rate
    reaches all of them; the state dict holds each part's under its index.
    """

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts
        self.param_groups = [g for p in parts for g in p.param_groups]

    def step(self, closure=None):
        for p in self.parts:
            p.step()

    def zero_grad(self, set_to_none: bool = True):
        for p in self.parts:
            p.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {str(i): p.state_dict() for i, p in enumerate(self.parts)}

    def load_state_dict(self, state):
        if sorted(state) != [str(i) for i in range(len(self.parts))]:
            raise ValueError(f"optimizer state has parts {sorted(state)}, expected {len(self.parts)}")
        for i, p in enumerate(self.parts):
            p.load_state_dict(state[str(i)])


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Muon takes the 2-D weights inside the blocks; embeddings, the output head, norms and
    biases stay with AdamW (Jordan et al. 2024: Muon is for hidden layers)."""
    gains = _gain_like(model)
    hidden = {id(p) for blk in getattr(model, "blocks", []) for p in blk.parameters()
              if p.dim() == 2 and id(p) not in gains}
    muon = [p for p in model.parameters() if p.requires_grad and id(p) in hidden]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden]
    return muon, rest


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW, Adam (coupled L2 decay, as torch defines it), or Muon + AdamW.

    Fused kernels on CUDA. The learning rate is set by the trainer before every update; Muon
    scales its update to AdamW's RMS (``adjust_lr_fn="match_rms_adamw"``) so one lr serves both.
    """
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if device.type == "cuda":
        kwargs["fused"] = True
    if cfg.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"train.optimizer='muon' needs torch.optim.Muon, which torch {torch.__version__} "
                              "lacks; use adamw or a newer torch")
        muon, rest = muon_split(model)
        if not muon:
            raise ConfigError("train.optimizer='muon' found no 2-D weights inside transformer blocks")
        adam = torch.optim.AdamW(param_groups(_Holder(rest), cfg.weight_decay), **kwargs)
        mu = torch.optim.Muon(muon, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
        return Combined([mu, adam])
    groups = param_groups(model, cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)


class _Holder(nn.Module):
    """Presents a list of parameters as a module, for ``param_groups``."""

    def __init__(self, params: list[nn.Parameter]):
        super().__init__()
        self._params = params

    def parameters(self, recurse: bool = True):
        return iter(self._params)


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them
    (Chen et al. 2016). Applied from outside: the model and its state dict are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
