"""The x-transformers facade as a whole: keywords at inert values are accepted, and
docs/options.md gives the status of every x-transformers keyword."""

from __future__ import annotations

import pytest

from arlm import Decoder, TransformerWrapper
from arlm.model.facade import _ANY, INERT, REFUSED

WRAPPER_ONLY = {"memory_tokens_interspersed_every", "recycling", "train_max_recycle_steps", "looped",
                "max_looped_steps", "average_pool_embed", "use_cls_token", "num_cls_tokens", "attn_pool",
                "num_pooled_tokens", "attn_pool_depth", "dim_pooled_tokens"}


def _build(dec: dict, wrap: dict) -> TransformerWrapper:
    return TransformerWrapper(num_tokens=16, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2, **dec), **wrap)


def test_keywords_at_their_inert_values_change_nothing():
    inert = {k: (True if v is _ANY else v) for k, v in INERT.items()}
    dec = {k: v for k, v in inert.items() if k not in WRAPPER_ONLY}
    wrap = {k: v for k, v in inert.items() if k in WRAPPER_ONLY}
    assert _build(dec, wrap).cfg == _build({}, {}).cfg


@pytest.mark.parametrize("name", sorted(k for k, v in INERT.items() if v is not _ANY))
def test_a_keyword_arlm_does_not_implement_is_refused_away_from_its_inert_value(name):
    value = INERT[name]
    other = {True: False, False: True, None: 3}.get(value, 7) if isinstance(value, (bool, type(None))) else value + 3
    where = ({}, {name: other}) if name in WRAPPER_ONLY else ({name: other}, {})
    try:
        _build(*where)
    except TypeError as e:
        assert repr(name) in str(e)
        if name in REFUSED:
            assert "refused" in str(e) and REFUSED[name] in str(e)
    else:  # implemented by arlm after all: then it must not be listed as inert-only
        pytest.fail(f"{name}={other!r} was accepted; remove it from INERT or implement it as an option")
