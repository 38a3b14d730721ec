"""``TransformerWrapper.forward`` with x-transformers' keywords, translated onto ``Transformer.forward``.

Dims: B batch, N tokens in ``x``, n new tokens, P prepended rows, C model dim, V vocabulary.

The sequence of a call is [prepend_embeds rows][tokens of x]. With ``cache`` (the
``LayerIntermediates`` a previous call returned), x holds the whole sequence so far, as in
x-transformers, and only the tokens the cache lacks are computed (``input_not_include_cache=True``:
x holds only the new tokens). Unlike x-transformers, which keeps only the last token per cached
call unless told ``cache_age``, every new token is computed, so a cached call equals the full
forward whatever the step size.

Meanings (x-transformers'): ``mask`` (B, N) False hides a token from every query as a key (any
pattern; positions unchanged; kept by the returned cache for later calls); ``seq_start_pos`` (B,)
the first real token of each left-padded row (positions count from there, earlier tokens are
hidden: a row gives what it would give alone); ``pos`` custom token positions.
"""

from __future__ import annotations

import torch

from .attention import KVCache
from .embedding import extra_embedding_sum
from .intermediates import LayerIntermediates, Records, new_storage
from .transformer import Transformer

# Transformer.forward's own keywords: arlm's generation calls the wrapper with these directly
NATIVE = frozenset(("input_pos", "cache", "start", "key_mask", "return_embeddings", "targets", "loss_chunk",
                    "ignore_index", "loss_reduction"))

SUPPORTED = ("mask", "key_mask", "pos", "prepend_embeds", "prepend_mask", "excise_prepend_embeds", "embed_ids",
             "sum_embeds", "cache", "input_not_include_cache", "cache_age", "seq_start_pos", "return_intermediates",
             "return_embeddings", "return_logits_and_embeddings", "return_embeddings_and_intermediates",
             "return_logit_entropies", "return_attn", "return_attn_z_loss", "attn_z_loss_weight")

# x-transformers forward keywords for features arlm does not have, accepted at their inert value
INERT = {"mems": None, "mem_masks": None, "return_mems": False, "detach_mems": True, "recycle_steps": None,
         "looped_steps": None, "max_looped_steps": None, "looped_pred_all_logits": None, "looped_inference": False,
         "return_next_embed_pred": False, "transform_token_embeds": None, "transform_block_inputs": None}
INERT_EMPTY = ("token_emb_kwargs", "to_logits_kwargs")


# Transformer.forward's keyword-only inputs; names x-transformers shares (pos, ...) mean arlm's
# only in a call that also names input_pos
NATIVE_EXTRA = frozenset(("pos", "embed_pos", "sum_embeds", "prepend_embeds", "attn_record"))


def is_native(args: tuple, kwargs: dict) -> bool:
    """A call arlm's own code makes (Transformer.forward's keywords, a KVCache or no cache)."""
    if args or not isinstance(kwargs.get("cache"), (KVCache, type(None))):
        return False
    return all(k in NATIVE or ("input_pos" in kwargs and k in NATIVE_EXTRA) for k in kwargs)


def check_keywords(kwargs: dict) -> dict:
    """The x-transformers keywords arlm implements; inert ones dropped; anything else a TypeError."""
    out = {}
    for name, value in kwargs.items():
        if name in SUPPORTED:
            out[name] = value
        elif name in INERT and (value is INERT[name] or value == INERT[name]):
            continue
        elif name in INERT_EMPTY and not value:
            continue
        elif name in INERT or name in INERT_EMPTY:
            raise TypeError(f"TransformerWrapper.forward() keyword {name!r} is an x-transformers feature arlm does "
                            f"not have (accepted only at its inert value {INERT.get(name, dict())!r}). "
                            f"Supported: {', '.join(SUPPORTED)}.")
        elif name in NATIVE:
            raise TypeError(f"TransformerWrapper.forward() keyword {name!r} is arlm's own (Transformer.forward); "
                            "it cannot be combined with x-transformers keywords")
        else:
            raise TypeError(f"TransformerWrapper.forward() got an unsupported keyword argument {name!r}. "
                            f"Supported: {', '.join(SUPPORTED)} (and arlm's own {', '.join(sorted(NATIVE))}). "
                            "Nothing is silently ignored.")
    return out


def check_input(model, x, kwargs: dict) -> None:
    """Integer token ids that fit the context, checked before any work: past ``max_seq_len`` the
    position tables end (an IndexError deep inside), and float or bool ids would be truncated."""
    if not torch.is_tensor(x):
        return
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"x must hold integer token ids, got dtype {x.dtype}")
    S = model.cfg.max_seq_len
    if x.dim() == 2 and kwargs.get("cache") is None and kwargs.get("input_pos") is None and x.shape[1] > S:
        raise ValueError(f"x has {x.shape[1]} tokens, more than the model context max_seq_len={S}; give at most "
                         f"{S} tokens per forward (generate slides a window over longer sequences)")


def _new_part(t: torch.Tensor | None, what: str, full: int, new: int, inc: bool) -> torch.Tensor | None:
    """The new tokens' part of a per-token input that covers x (B, N, ...) (or, with
    input_not_include_cache, only the new tokens)."""
    if t is None:
        return None
    n = t.shape[-1] if what in ("pos", "mask") else t.shape[1]
    want = new if inc else full
    if n != want:
        raise ValueError(f"{what} covers {n} tokens; x has {want}")
    if inc or full == new:
        return t
    return t[..., full - new:] if what in ("pos", "mask") else t[:, full - new:]


def xt_forward(model, x: torch.Tensor | None, *, mask=None, key_mask=None, pos=None, prepend_embeds=None,
               prepend_mask=None, excise_prepend_embeds=False, embed_ids=None, sum_embeds=None, cache=None,
               input_not_include_cache=None,
               cache_age=None, seq_start_pos=None, return_intermediates=False, return_embeddings=False,
               return_logits_and_embeddings=False, return_embeddings_and_intermediates=False,
               return_logit_entropies=False, return_attn=False, return_attn_z_loss=False, attn_z_loss_weight=1e-4):
    cfg = model.cfg
    if embed_ids or model.embeds is not None:  # embed_num_tokens tables: summed with the token embedding
        extra = extra_embedding_sum(model.embeds, embed_ids)
        sum_embeds = extra if sum_embeds is None else sum_embeds + extra
    if x is None:
        if prepend_embeds is None:
            raise ValueError("x may be None only with prepend_embeds")
        x = torch.empty(prepend_embeds.shape[0], 0, dtype=torch.long, device=prepend_embeds.device)
    if cache is not None and not isinstance(cache, LayerIntermediates):
        raise TypeError("cache must be the intermediates object a previous forward returned "
                        f"(return_intermediates=True), got {type(cache).__name__}")
    inc = bool(model.input_not_include_cache if input_not_include_cache is None else input_not_include_cache)
    B, N = x.shape
    # rows: [P prepended][tokens]; `past` rows are cached already
    if cache is None:
        P, past = (0 if prepend_embeds is None else prepend_embeds.shape[1]), 0
        n, new_prepend = N, prepend_embeds
    else:
        if cache.batch != B:
            raise ValueError(f"the cache holds {cache.batch} rows, x has {B}")
        P, past = cache.prepend_len, cache.cache_length
        if prepend_embeds is not None and (inc or prepend_embeds.shape[1] != P):
            raise ValueError("with a cache, prepend_embeds may only repeat the first call's (x holding the whole "
                             "sequence); they are cached already")
        n = N if inc else N - (past - P)
        if n < 1:
            raise ValueError(f"x has {N} tokens and the cache {past - P}: nothing new to compute (x holds the whole "
                             "sequence, or pass input_not_include_cache=True and only the new tokens)")
        new_prepend = None
    rows = n + (P if cache is None else 0)
    if cache_age is not None and cache is not None and cache_age != rows:
        raise ValueError(f"cache_age={cache_age} but {rows} tokens are new (arlm computes every new token)")
    full = n if inc else N  # tokens the per-token inputs cover
    new_ids = x[:, N - n:]
    tok0 = past - P if cache is not None else 0  # token index of the first new token

    start = _start(cache, seq_start_pos, prepend_embeds)
    fcm = key_mask  # arlm's own (Forgetful Causal Masking in AutoregressiveWrapper): uncached rows only
    key_mask = kept_mask = _key_mask(cache, mask, prepend_mask, B, P, past, rows, n, full, inc, x.device)
    if key_mask is not None:
        # hidden tokens still reach later rows through these (x-transformers zeroes the shifted
        # features in attention branches only, and the hidden rows' own states differ between its
        # cached and uncached paths); the others treat hidden keys in ways arlm does not reproduce
        unmatched = [name for name in ("shift_tokens", "data_dependent_alibi", "cope", "attn_selective")
                     if getattr(cfg, name)]
        if unmatched:
            raise ValueError(f"mask with {', '.join(unmatched)} is not supported (x-transformers' treatment of hidden "
                             "tokens there is not reproduced); for left padding pass seq_start_pos instead")
    if fcm is not None:
        if cache is not None or P or fcm.shape != (B, n):
            raise ValueError("key_mask (arlm's) covers the tokens of an uncached forward without prepend_embeds")
        key_mask = fcm.bool() if key_mask is None else key_mask & fcm.bool()
    pos = _positions(model, pos, cache, start, P)
    pos = _new_part(pos, "pos", full, n, inc)
    sum_embeds = _new_part(sum_embeds, "sum_embeds", full, n, inc)
    embed_pos = torch.arange(tok0, tok0 + n, device=x.device) if P else None

    wants_inter = return_intermediates or return_embeddings_and_intermediates or return_logit_entropies \
        or return_attn_z_loss
    storage = kv = None
    if cache is not None:
        kv = cache.cache_for(model, rows)
        storage = cache._storage
    elif wants_inter and not (model.training and torch.is_grad_enabled()):
        # a cache only where decoding may follow: a training forward with gradients keeps none
        storage = new_storage(model, B, rows, x)
        kv = storage.cache
    record = Records() if (wants_inter or return_attn) else None
    out = Transformer.forward(
        model, new_ids, input_pos=past if kv is not None else None, cache=kv, start=start, key_mask=key_mask,
        return_embeddings=True, return_attn_z_loss=return_attn_z_loss, attn_z_loss_weight=attn_z_loss_weight,
        pos=pos, embed_pos=embed_pos, sum_embeds=sum_embeds, prepend_embeds=new_prepend, attn_record=record)
    emb, z_loss = out if return_attn_z_loss else (out, None)
    if storage is not None:
        storage.writes += 1
    inter = LayerIntermediates(storage, past + rows, start, kept_mask, P, Records() if record is None else record, B)
    inter.attn_z_loss, inter.last_hidden = z_loss, emb
    if excise_prepend_embeds and prepend_embeds is not None and cache is None:
        emb = emb[:, P:]
    need_logits = not (return_embeddings or return_embeddings_and_intermediates) or return_logits_and_embeddings \
        or return_logit_entropies
    logits = model.logits(emb) if need_logits else None

    if return_logits_and_embeddings:
        res = (logits, emb)
    elif return_embeddings_and_intermediates:
        res = (emb, inter)
    elif return_embeddings:
        res = emb
    else:
        res = logits
    if return_logit_entropies:
        logp = logits.float().log_softmax(dim=-1)
        inter.logit_entropies = -(logp.exp() * logp).sum(dim=-1)  # (B, n)
        return_intermediates = True
    if return_attn_z_loss:
        return_intermediates = True
    if return_intermediates:
        return res, inter
    if return_attn:
        return res, [a.post_softmax_attn for a in inter.attn_intermediates]
    return res


def _start(cache, seq_start_pos, prepend_embeds):
    """Left padding per row: the first call's ``seq_start_pos`` (later calls may repeat it)."""
    if seq_start_pos is not None and prepend_embeds is not None:
        raise ValueError("seq_start_pos with prepend_embeds is not supported: the padding would sit between the "
                         "prepended rows and the tokens")
    given = None if seq_start_pos is None or not bool(seq_start_pos.any()) else seq_start_pos.long()
    if cache is None:
        return given
    if seq_start_pos is not None:
        same = given is None if cache.start is None else given is not None and torch.equal(given, cache.start)
        if not same:
            raise ValueError("seq_start_pos differs from the one the cache was built with")
    return cache.start


def _key_mask(cache, mask, prepend_mask, B, P, past, rows, n, full, inc, device):
    """(B, past + rows) False on rows hidden as keys, or None when nothing is hidden."""
    old = cache.key_mask if cache is not None else None
    if mask is None and prepend_mask is None and old is None:
        return None
    km = torch.ones(B, past + rows, dtype=torch.bool, device=device)
    if old is not None:
        km[:, :past] = old
    if prepend_mask is not None:
        if prepend_mask.shape != (B, P):
            raise ValueError(f"prepend_mask must be (B, P) = {(B, P)}, got {tuple(prepend_mask.shape)}")
        km[:, :P] = prepend_mask.bool()
    if mask is not None:
        if mask.dim() != 2 or mask.shape[0] != B or mask.shape[1] != full:
            raise ValueError(f"mask must be (B, N) = {(B, full)} booleans over the tokens of x, "
                             f"got {tuple(mask.shape)}")
        km[:, past + rows - full:] = mask.bool()
    return None if bool(km.all()) else km


def _positions(model, pos, cache, start, P):
    """Custom token positions: exact where arlm can keep them (see the checks)."""
    if pos is None:
        return None
    cfg = model.cfg
    if pos.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError("pos must hold integer positions (external position embeddings as floats are not supported)")
    problems = [what for what, bad in (
        ("prepend_embeds", P > 0), ("num_memory_tokens", model.num_memory_tokens > 0),
        ("seq_start_pos", start is not None),
        ("rel_pos_bias / dynamic_pos_bias / attn_use_rel_proj_pos_bias (x-transformers allows custom positions "
         "with ALiBi only)", cfg.pos_bias in ("t5", "dynamic") or cfg.rel_proj_pos_bias),
        ("attn_max_attend_past (x-transformers' window counts slots, not positions)", cfg.max_attend_past is not None),
        ("a cache with alibi_pos_bias (cached keys keep their slots' positions)",
         cache is not None and cfg.pos_bias == "alibi")) if bad]
    if problems:
        raise ValueError(f"custom pos is not supported with {', '.join(problems)}")
    return pos.long()
