"""Norm-family claims the option matrix cannot see: ``norm_add_unit_offset`` is a pure
parametrisation under arlm's optimizers (nothing it touches is weight-decayed), the options start
where their papers start them, they cost nothing when off, and bad combinations are refused."""

from __future__ import annotations

import pytest
import torch

from arlm import ConfigError, Decoder, ModelConfig, Transformer, TransformerWrapper
from arlm.model.norms import Derf, DynamicTanh, HeadRMSNorm, LayerScale, QKNorm, RMSNorm, ScaleNorm
from arlm.training.optim import muon_split, param_groups

BASE = dict(dim=32, depth=2, heads=2, attn_dim_head=16)

# Every module whose stored parameters x-transformers offsets by 1 (or by init_alpha) under
# norm_add_unit_offset, plus the per-head q/k/v gains (always offset there).
OFFSET_MODULES = (torch.nn.LayerNorm, RMSNorm, ScaleNorm, DynamicTanh, Derf, LayerScale, QKNorm, HeadRMSNorm)


def net(**kw) -> TransformerWrapper:
    return TransformerWrapper(num_tokens=40, max_seq_len=24, attn_layers=Decoder(**{**BASE, **kw}))


@pytest.mark.parametrize("kw", [
    {"use_layerscale": True, "attn_qk_norm": True, "attn_qk_norm_dim_scale": True, "attn_value_rmsnorm": True,
     "pre_and_post_norm": True},
    {"use_dynamic_tanh": True, "attn_qk_rmsnorm": True},
    {"use_derf": True, "attn_k_rmsnorm": True, "sandwich_norm": True},
    {"use_rmsnorm": True}, {"use_scalenorm": True},
])
def test_unit_offset_parameters_are_never_weight_decayed(kw):
    # the unit offset only shifts these parameters by a constant: gradients and Adam updates are
    # the same either way, so it is a pure parametrisation exactly when nothing decays them
    model = net(**kw)
    offset = {id(p) for m in model.modules() if isinstance(m, OFFSET_MODULES)
              for p in m.parameters(recurse=False)}
    assert offset
    decayed, _ = param_groups(model, 0.1)
    assert not offset & {id(p) for p in decayed["params"]}
    muon, _ = muon_split(model)
    assert not offset & {id(p) for p in muon}


def test_the_unit_offset_flag_is_recorded_and_changes_no_arlm_number():
    a, b = net(), net(norm_add_unit_offset=False)
    assert a.cfg.norm_add_unit_offset and not b.cfg.norm_add_unit_offset
    b.load_state_dict(a.state_dict())  # same parameters, same names
    x = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_options_start_where_their_papers_start():
    model = net(use_dynamic_tanh=True, dynamic_tanh_init_alpha=0.7, use_layerscale=True, layerscale_init_value=0.2,
                attn_qk_norm=True, attn_qk_norm_dim_scale=True, attn_qk_rmsnorm=True, attn_value_rmsnorm=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.init_weights(torch.Generator().manual_seed(0))
    attn = model.blocks[0].attn
    assert torch.all(attn.qk_norm.gain == 16**0.25)  # q.k starts at dim_head**0.5, times dim_head**-0.5
    assert torch.all(attn.qk_rmsnorm.gain == 1.0) and torch.all(attn.value_rmsnorm.gain == 1.0)
    assert torch.all(model.blocks[0].attn_layerscale.gain == torch.tensor(0.2))
    dyt = model.blocks[0].attn_norm
    assert dyt.alpha.item() == pytest.approx(0.7) and torch.all(dyt.weight == 1) and torch.all(dyt.bias == 0)
    derf = net(use_derf=True).norm
    assert derf.alpha.item() == 0.5 and derf.shift.item() == 0.0


def test_options_off_cost_nothing():
    model = net()
    assert all(b.plain for b in model.blocks)
    attn = model.blocks[0].attn
    assert attn.qk_norm is None and attn.qk_rmsnorm is None and attn.value_rmsnorm is None
    names = {n for n, _ in model.named_parameters()}
    assert not any(k in n for n in names for k in ("layerscale", "residual_norm", "gain"))
    assert model.norm is not None
    for kw in ({"pre_and_post_norm": True}, {"pre_norm_has_final_norm": False}, {"pre_norm": False}):
        assert net(**kw).norm is None


@pytest.mark.parametrize("fields, match", [
    ({"qk_norm_groups": 2}, "needs model.qk_norm"),
    ({"qk_norm_dim_scale": True}, "needs model.qk_norm"),
    ({"qk_norm": True, "qk_norm_groups": 3}, "qk_norm_groups=3"),
    ({"qk_norm": True, "qk_norm_groups": 8}, "more than 2"),  # 16 / 8 = 2 features per group
    ({"qk_rmsnorm": True, "k_rmsnorm": True}, "choose one"),
    ({"dynamic_tanh_init_alpha": 2.0}, "norm=dynamic_tanh"),
    ({"layerscale_init_value": 0.1}, "layerscale=true"),
])
def test_bad_norm_combinations_are_refused(fields, match):
    with pytest.raises(ConfigError, match=match):
        Transformer(ModelConfig(dim=32, heads=2, dim_head=16, depth=1, **fields))


@pytest.mark.parametrize("name", ["use_adaptive_layernorm", "use_adaptive_rmsnorm", "use_adaptive_layerscale",
                                  "adaptive_condition_mlp"])
def test_adaptive_norms_are_refused_with_the_reason(name):
    with pytest.raises(TypeError, match="condition tensor"):
        Decoder(**BASE, **{name: True})
    Decoder(**BASE, **{name: False})  # the inert default is accepted


@pytest.mark.parametrize("kw", [{"use_dynamic_tanh": True}, {"use_derf": True}])
def test_no_scalar_parameters_so_fsdp_can_shard_them(kw):
    # FSDP2's fully_shard refuses 0-dim parameters (x-transformers keeps DyT's and Derf's as scalars)
    assert all(p.dim() >= 1 for p in net(**kw).parameters())
