"""`arlm convert --from x-transformers` for every option with an x-transformers twin: the keyword
arguments as YAML, the weights as a state dict, and a run folder whose model (rebuilt from its
saved config) gives x-transformers' logits."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

xt = pytest.importorskip("x_transformers")

from test_cli import cli  # noqa: E402
from test_options import BASE, OPTIONS, SEQ  # noqa: E402

from arlm.model.feedforward import activation_name  # noqa: E402
from arlm.run import load_run  # noqa: E402

TWINS = [name for name, (_, _, twin) in OPTIONS.items() if twin]


def _plain(v):
    """A keyword value as YAML holds it: tuples become lists, activation modules their name."""
    if isinstance(v, torch.nn.Module):
        return activation_name(v)
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("name", TWINS)
def test_convert_gives_a_run_with_x_transformers_logits(name, tmp_path):
    dec, wrap, _ = OPTIONS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = xt.TransformerWrapper(num_tokens=256, max_seq_len=SEQ, attn_layers=xt.Decoder(**{**BASE, **dec}), **wrap)
    with torch.no_grad():
        for p in ref.parameters():  # off the init, as the parity tests
            p.add_(torch.randn_like(p) * 0.1)
    ref.eval()
    kwargs = {"num_tokens": 256, "max_seq_len": SEQ, **{k: _plain(v) for k, v in wrap.items()},
              "attn_layers": {k: _plain(v) for k, v in {**BASE, **dec}.items()}}
    torch.save(ref.state_dict(), tmp_path / "xt.pt")
    (tmp_path / "xt.yaml").write_text(yaml.safe_dump(kwargs))
    rc, _, err = cli("convert", tmp_path / "xt.pt", "--from", "x-transformers", "--config", tmp_path / "xt.yaml",
                     "--out", tmp_path / "run")
    assert rc == 0, err
    model = load_run(tmp_path / "run").model.eval()
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
