"""More than one residual stream, and residual branches that read from every earlier layer.

Dims: B batch, T time, N residual streams, C model dim, V input views of a branch (1, or 3 when
attention takes its queries, keys and values from different mixtures), L branch inputs so far.

Every computation here is per position, across depth: a token's streams and its earlier layers'
inputs are its own, never another position's. So nothing new has to be cached between decoding
steps, and left padding cannot leak: the KV cache stays the only state.

- ``Streams``: the embedding is copied into N streams (plus a learned per-stream offset) before
  the blocks and the streams are summed after them.
- ``HyperConnection``: dynamic hyper-connections (Zhu et al. 2024, "Hyper-Connections",
  Algorithm 2). The streams are carried on summed (what x-transformers 2.31.10 computes, the
  default) or mixed by a matrix pushed towards doubly stochastic by Sinkhorn iterations (Xie et
  al. 2025, "mHC: Manifold-Constrained Hyper-Connections").
- ``GatedMultiResidual``: streams read through an elementwise low-rank sigmoid gate and written
  with a per-stream scalar gate (x-transformers' ``gated_multi_residual``, after the Qwen team).
- ``LayerIntegration``: LIMe (Gerasimov et al. 2025, "You Do Not Fully Utilize Transformer's
  Representation Capacity"): a branch's input is a learned, input-dependent mixture of the
  inputs of every branch up to it.
- ``AttentionResidual``: the same mixture chosen by attention over depth, the query being the
  current input plus a low-rank correction (x-transformers' ``attn_aggregated_residuals``).
- ``BranchRoute``: how one residual branch reads its input and writes its output with the above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .context import Context
from .norms import RMSNorm


class Streams(nn.Module):
    """(B, T, C) -> (B, T, N, C) before the blocks; ``reduce`` sums them back after."""

    no_weight_decay = ("emb",)  # a per-stream offset, a bias rather than a matmul weight (training/optim.py)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.num_residual_streams
        self.emb = nn.Parameter(torch.zeros(n, cfg.dim)) if n > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., None, :]
        return x if self.emb is None else x + self.emb.to(x.dtype)

    @staticmethod
    def reduce(x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-2)

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        if self.emb is not None:
            self.emb.zero_()  # every stream starts as the embedding itself


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """(..., N, N) logits -> approximately doubly stochastic: a softmax down the columns, then
    ``iters`` rounds of normalising rows and columns to sum 1 (in fp32)."""
    dtype = logits.dtype
    m = logits.float().softmax(dim=-2)
    for _ in range(iters):
        m = F.normalize(m, p=1, dim=-1)
        m = F.normalize(m, p=1, dim=-2)
    return m.to(dtype)


class HyperConnection(nn.Module):
    """Dynamic hyper-connections for one branch. Each position's N streams give, from their
    LayerNorm, (a) V read weights per stream (sigmoid) forming the branch input, (b) how the
    streams are carried on, and (c) N write weights (2 sigmoid) for adding the branch output
    to each stream. Every weight is a static part plus a small (scaled by 0.01 at init)
    input-dependent part.

    Carrying (``hyper_conn_residual_mix``): "sinkhorn" mixes the streams with the N x N matrix
    made doubly stochastic (the mHC paper); "sum" carries the sum of all streams in every
    stream, which is what x-transformers 2.31.10 computes (its Sinkhorn step normalises 1 x N
    matrices, which always gives ones), so its checkpoints convert exactly."""

    no_weight_decay = ("static_alpha",)  # static mixing weights, like a bias (training/optim.py)

    def __init__(self, cfg: ModelConfig, index: int, views: int = 1):
        super().__init__()
        C, N = cfg.dim, cfg.num_residual_streams
        self.streams, self.views, self.index, self.iters = N, views, index, cfg.hyper_conn_sinkhorn_iters
        self.mix_sinkhorn = cfg.hyper_conn_residual_mix == "sinkhorn"
        self.norm = nn.LayerNorm(C, bias=False)
        self.static_alpha = nn.Parameter(torch.zeros(N, views + N))  # per stream: V read weights, N mix weights
        self.dynamic_alpha_fn = nn.Parameter(torch.zeros(C, views + N))
        self.dynamic_alpha_scale = nn.Parameter(torch.zeros(1))  # (1,), not 0-d: FSDP2 shards no scalars
        self.static_beta = nn.Parameter(torch.zeros(N))
        self.dynamic_beta_fn = nn.Parameter(torch.zeros(C))
        self.dynamic_beta_scale = nn.Parameter(torch.zeros(1))  # (1,), not 0-d: FSDP2 shards no scalars
        self.init_option_()

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        # the paper's init: branch i reads stream i mod N, streams carry on unmixed (identity),
        # writes start at sigmoid(1) * 2, dynamic parts at zero with a 0.01 scale
        N, V = self.streams, self.views
        self.static_alpha.zero_()
        self.static_alpha[self.index % N, :V] = 1.0
        self.static_alpha[:, V:] = torch.eye(N)
        self.static_beta.fill_(1.0)
        self.dynamic_alpha_fn.zero_()
        self.dynamic_beta_fn.zero_()
        self.dynamic_alpha_scale.fill_(1e-2)
        self.dynamic_beta_scale.fill_(1e-2)

    def read(self, x: torch.Tensor):
        """x (B, T, N, C) -> branch input (B, T, C) or (V, B, T, C), carried streams (B, T, N, C),
        write weights (B, T, N)."""
        V = self.views
        h = self.norm(x)
        alpha = h @ self.dynamic_alpha_fn * self.dynamic_alpha_scale + self.static_alpha  # (B, T, N, V+N)
        # column j of a weight matrix weighs the N streams for output j
        branch = alpha[..., :V].sigmoid().transpose(-1, -2) @ x  # (B, T, V, C)
        branch = branch[..., 0, :] if V == 1 else branch.movedim(-2, 0)
        if self.mix_sinkhorn:
            carried = sinkhorn(alpha[..., V:], self.iters).transpose(-1, -2) @ x
        else:
            carried = x.sum(dim=-2, keepdim=True).expand_as(x)
        beta = (torch.sigmoid(h @ self.dynamic_beta_fn) * 2 * self.dynamic_beta_scale + self.static_beta).sigmoid() * 2
        return branch, carried, beta

    @staticmethod
    def write(out: torch.Tensor, streams: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """out (B, T, C) added to every stream with its weight: (B, T, N, C)."""
        return streams + out[..., None, :] * beta[..., None]


class GatedMultiResidual(nn.Module):
    """N streams read through an elementwise sigmoid gate (static logits, identity-anchored on
    stream ``index mod N``, plus a low-rank input-dependent part) over the RMS-normalised
    streams, averaged; written with a per-stream scalar gate in (0, 2). The streams are not
    mixed with each other. The block has no pre-norm (the read normalises) and normalises each
    stream after the write, as x-transformers does."""

    no_weight_decay = ("read_gain", "static_read_logit")  # a gain and static logits (training/optim.py)

    def __init__(self, cfg: ModelConfig, index: int, views: int = 1):
        super().__init__()
        C, N, r = cfg.dim, cfg.num_residual_streams, cfg.gated_multi_read_gate_rank
        self.streams, self.views, self.index = N, views, index
        self.read_norm = nn.RMSNorm(C, elementwise_affine=False)
        self.read_gain = nn.Parameter(torch.ones(N, C))
        self.static_read_logit = nn.Parameter(torch.zeros(views, N, C))
        self.static_write_logit = nn.Parameter(torch.zeros(N))
        self.to_bottleneck = nn.Linear(N * C, r, bias=False)  # one bottleneck for both gates
        self.to_read_gate = nn.Linear(r, views * N * C, bias=False)
        self.to_write_gate = nn.Linear(r, N, bias=False)
        self.dynamic_gate_scale = nn.Parameter(torch.zeros(1))  # (1,), not 0-d: FSDP2 shards no scalars
        self.init_option_()

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        # both gates start at their static values (zero dynamic projections); the read gate at
        # sigmoid(1) on the layer's own stream and sigmoid(0) elsewhere, writes at 1
        self.read_gain.fill_(1.0)
        self.static_read_logit.zero_()
        self.static_read_logit[:, self.index % self.streams] = 1.0
        self.static_write_logit.zero_()
        self.to_read_gate.weight.zero_()
        self.to_write_gate.weight.zero_()
        self.dynamic_gate_scale.fill_(1e-2)

    def read(self, x: torch.Tensor):
        """x (B, T, N, C) -> branch input (B, T, C) or (V, B, T, C), streams unchanged, write weights (B, T, N)."""
        B, T, N, C = x.shape
        V = self.views
        h = self.read_norm(x) * self.read_gain  # (B, T, N, C)
        dynamic = F.silu(self.to_bottleneck(h.reshape(B, T, N * C) / N)) * self.dynamic_gate_scale  # (B, T, r)
        gate = torch.sigmoid(self.to_read_gate(dynamic).view(B, T, V, N, C) + self.static_read_logit)
        branch = (gate * h[:, :, None]).sum(dim=3) / N  # (B, T, V, C)
        branch = branch[:, :, 0] if V == 1 else branch.movedim(2, 0)
        beta = torch.sigmoid(self.to_write_gate(dynamic) + self.static_write_logit) * 2  # (B, T, N)
        return branch, x, beta

    write = staticmethod(HyperConnection.write)


class LayerIntegration(nn.Module):
    """LIMe: from the current input, V sets of weights over the L branch inputs so far (softmax,
    or ReLU with ``layer_integrate_use_softmax=False``); each view is their weighted sum."""

    def __init__(self, cfg: ModelConfig, layers: int, views: int = 1):
        super().__init__()
        self.layers, self.views, self.softmax = layers, views, cfg.layer_integrate_use_softmax
        self.norm = RMSNorm(cfg.dim)
        self.proj = nn.Linear(cfg.dim, views * layers)

    def forward(self, x: torch.Tensor, hiddens: list[torch.Tensor]) -> torch.Tensor:
        """x (B, T, C), L = ``layers`` hiddens (B, T, C) -> (B, T, C) or (V, B, T, C)."""
        w = self.proj(self.norm(x)).unflatten(-1, (self.views, self.layers))  # (B, T, V, L)
        w = w.softmax(dim=-1) if self.softmax else F.relu(w)
        return weighted_sum(w, hiddens, self.views)

    @staticmethod
    def entry(x: torch.Tensor) -> torch.Tensor:
        """What later branches need of this branch's input: the input itself."""
        return x


def weighted_sum(w: torch.Tensor, hiddens: list[torch.Tensor], views: int) -> torch.Tensor:
    """w (B, T, V, L), L hiddens (B, T, C) -> sum_l w_l h_l: (B, T, C), or (V, B, T, C).

    With gradients, a sum of products: backward then keeps the L hiddens themselves, shared by
    every later branch, instead of a stacked copy per branch (activation memory linear in depth,
    not quadratic: 5x less above the plain model at depth 12). Without, one batched product
    (fewer kernels per decoding step)."""
    if torch.is_grad_enabled():
        out = sum(w[..., j, None] * h[..., None, :] for j, h in enumerate(hiddens))  # (B, T, V, C)
    else:
        out = w @ torch.stack(hiddens, dim=-2)  # (B, T, V, L) @ (B, T, L, C)
    return out[..., 0, :] if views == 1 else out.movedim(-2, 0)


class AttentionResidual(nn.Module):
    """Attention over depth: the query is the current input plus a low-rank (zero-init)
    correction, RMS-normalised; the keys are the RMS-normalised inputs so far; the softmax
    weights average the raw inputs. One query per view."""

    def __init__(self, cfg: ModelConfig, views: int = 1):
        super().__init__()
        C, r = cfg.dim, cfg.attn_aggregated_lora_rank
        self.views, self.scale = views, C**-0.5
        self.key_norm = nn.RMSNorm(C)
        self.query_in_norm = nn.RMSNorm(C)
        self.query_down = nn.Linear(C, r, bias=False)
        self.query_up = nn.Linear(r, views * C, bias=False)
        self.query_norm = nn.RMSNorm(C)
        self.init_option_()

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        for norm in (self.key_norm, self.query_in_norm, self.query_norm):
            norm.weight.fill_(1.0)
        self.query_up.weight.zero_()  # the query starts as the current input itself

    def forward(self, x: torch.Tensor, hiddens: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x (B, T, C) (the last input), L ``entry`` pairs -> (B, T, C) or (V, B, T, C)."""
        delta = self.query_up(self.query_down(self.query_in_norm(x))).unflatten(-1, (self.views, -1))  # (B, T, V, C)
        # the key norm's gain moves onto the query, so each input is RMS-normalised once for all branches
        q = self.query_norm(x[..., None, :] + delta) * self.key_norm.weight  # (B, T, V, C)
        if torch.is_grad_enabled():  # (see weighted_sum)
            logits = torch.cat([q @ n[..., :, None] for _, n in hiddens], dim=-1)  # (B, T, V, L)
        else:
            logits = q @ torch.stack([n for _, n in hiddens], dim=-1)  # (B, T, V, C) @ (B, T, C, L)
        w = (logits * self.scale).softmax(dim=-1)
        return weighted_sum(w, [h for h, _ in hiddens], self.views)

    @staticmethod
    def entry(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What later branches need of this branch's input: it, and it RMS-normalised (their keys)."""
        return x, F.rms_norm(x, x.shape[-1:])


class BranchRoute(nn.Module):
    """How residual branch ``index`` (its place in ``cfg.layer_types``) meets the residual:
    read the streams (``mixer``), then mix in the inputs of every earlier branch
    (``integrate``); after the branch, ``write`` adds its output to the streams (without a
    mixer the block adds it to the single residual as usual).

    Attention branches get three views (queries, keys, values) with
    ``qkv_receive_diff_residuals`` -- from the integration when there is one, else from the
    mixer -- and with ``integrate_layers`` except the first attention branch, as x-transformers."""

    def __init__(self, cfg: ModelConfig, index: int, kind: str, first_attn: bool):
        super().__init__()
        integrating = cfg.integrate_layers or cfg.attn_aggregated_residuals
        views = 3 if kind == "attn" and cfg.qkv_views and not (first_attn and cfg.integrate_layers) else 1
        mixer_views = 1 if integrating else views
        self.mixer = None
        if cfg.gated_multi_residual:
            self.mixer = GatedMultiResidual(cfg, index, mixer_views)
        elif cfg.num_residual_streams > 1:
            self.mixer = HyperConnection(cfg, index, mixer_views)
        self.integrate = None
        if cfg.integrate_layers:
            self.integrate = LayerIntegration(cfg, index + 1, views)
        elif cfg.attn_aggregated_residuals:
            self.integrate = AttentionResidual(cfg, views)

    def read(self, x: torch.Tensor, ctx: Context, step: int, kind: str):
        """x: the residual, (B, T, N, C) with streams else (B, T, C) -> (branch input, the residual
        to add the output to, stream write weights or None)."""
        residual, beta = x, None
        if self.mixer is not None:
            x, residual, beta = self.mixer.read(x)
        if self.integrate is not None:
            # this branch's place in the execution order (the plan numbers branches for token shifting)
            s = ctx.steps[step]
            i = s.attn_shift if kind == "attn" else s.ff_shift
            if ctx.hiddens is None:
                ctx.hiddens = {}
            ctx.hiddens[i] = self.integrate.entry(x)
            x = self.integrate(x, [ctx.hiddens[j] for j in range(i + 1)])
        return x, residual, beta

    def write(self, out: torch.Tensor, residual: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return self.mixer.write(out, residual, beta)


def make_routes(cfg: ModelConfig, block: int, layer_map: list[tuple[int, str]]) -> nn.ModuleDict | None:
    """The ``BranchRoute`` of each branch of ``block`` keyed "attn" / "ff", or None when the
    config has neither streams nor layer integration (the block then stays plain)."""
    if not (cfg.multi_stream or cfg.integrate_layers or cfg.attn_aggregated_residuals):
        return None
    first_attn = cfg.layer_types.find("a")
    return nn.ModuleDict({kind: BranchRoute(cfg, j, kind, j == first_attn)
                          for j, (b, kind) in enumerate(layer_map) if b == block})
