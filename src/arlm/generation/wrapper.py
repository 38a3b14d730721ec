"""x-transformers' ``AutoregressiveWrapper``: next-token loss and generation over a model."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .beam import beam_search as _beam_search
from .contrastive import contrastive_hook
from .decode import as_token_ids, check_token_ids, left_pad, stream_tokens
from .filters import identity, top_k
from .sampling import SamplingConfig, SamplingError
from .speculative import speculative_tokens


# keyword-only extras of stream() that generate() forwards
_STREAM_EXTRAS = ("truncate_prompt", "amateur_model", "contrastive_decode_kwargs", "draft_model", "num_draft_tokens",
                  "repetition_penalty", "presence_penalty", "frequency_penalty", "num_samples", "compile",
                  "prepend_embeds", "sampling")

# x-transformers' keyword names for SamplingConfig fields
_XT_NAMES = {"filter_logits_fn": "logits_filter"}
# keyword defaults of each entry point: with sampling= given, the others must stay at these
_SAMPLING_DEFAULTS = {
    "stream": dict(eos_token=None, temperature=1.0, filter_logits_fn=top_k, filter_kwargs=None, repetition_penalty=1.0,
                   presence_penalty=0.0, frequency_penalty=0.0, num_samples=1),
    "beam_search": dict(beams=4, eos_token=None, length_penalty=1.0, stochastic=False, temperature=1.0),
}


def _reject_unknown(where: str, kwargs: dict, supported, prefix: str = "") -> None:
    """Unknown keyword arguments are an error naming them and listing what is supported."""
    if kwargs:
        raise TypeError(f"{where}() got unsupported keyword argument(s) {', '.join(map(repr, kwargs))}; "
                        f"supported: {prefix}{', '.join(supported)}. Nothing is silently ignored.")


class AutoregressiveWrapper(nn.Module):
    """Wraps a ``TransformerWrapper`` / ``Transformer`` for training and sampling.

    ``loss = wrapper(seq)`` with seq (B, T+1): inputs seq[:, :-1], targets seq[:, 1:] (the shift
    happens inside); target positions equal to ``ignore_index`` are left out of the loss.
    ``add_attn_z_loss`` adds ``attn_z_loss_weight`` times the attention z-loss during training
    (it recomputes the attention logits the fused kernel never exposes, so it costs memory).
    ``mask_prob`` > 0 is Forgetful Causal Masking (Liu et al. 2022): during training that fraction
    of earlier tokens is hidden from attention (never the first token).
    """

    def __init__(self, net: nn.Module, *, ignore_index: int = -100, pad_value: int = 0, mask_prob: float = 0.0,
                 add_attn_z_loss: bool = False, attn_z_loss_weight: float = 1e-4, **unsupported):
        super().__init__()
        _reject_unknown("AutoregressiveWrapper", unsupported,
                        ("net", "ignore_index", "pad_value", "mask_prob", "add_attn_z_loss", "attn_z_loss_weight"))
        if not hasattr(net, "cfg") or not hasattr(net, "new_cache"):
            raise TypeError("AutoregressiveWrapper needs an arlm TransformerWrapper or Transformer")
        if not (0.0 <= mask_prob < 1.0):
            raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob}")
        self.net = net
        self.max_seq_len = net.cfg.max_seq_len
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.mask_prob = mask_prob
        # attention z-loss (Zoph et al. 2022, ST-MoE; PaLM): keeps attention logits from drifting large
        self.add_attn_z_loss = add_attn_z_loss
        self.attn_z_loss_weight = attn_z_loss_weight
        self.last_stats: dict = {}  # e.g. speculative acceptance rate of the last generate()

    def forward(self, x: torch.Tensor, return_outputs: bool = False, prepend_embeds: torch.Tensor | None = None,
                lens: torch.Tensor | None = None, **kwargs):
        """Mean next-token cross-entropy of x (B, T+1); with ``return_outputs`` also
        ``(logits, intermediates)`` as x-transformers (the intermediates of a ``TransformerWrapper``
        forward; None for a bare ``Transformer``).

        As x-transformers: ``prepend_embeds`` (B, P, C) go in front of the tokens (their rows
        are not scored), ``lens`` (B,) marks each row's real length (later targets ignored), other
        keywords go to the network's forward."""
        if x.dim() != 2 or x.shape[1] < 2:
            raise ValueError(f"expected token ids of shape (B, T+1) with T >= 1, got {tuple(x.shape)}")
        if lens is not None:
            x = x.masked_fill(torch.arange(x.shape[1], device=x.device)[None] >= lens[:, None], self.ignore_index)
        inp, target = x[:, :-1], x[:, 1:]
        inp = inp.masked_fill(inp == self.ignore_index, self.pad_value)
        check_token_ids(inp, self.net.cfg.vocab_size, "input")
        key_mask = None
        if self.mask_prob > 0 and self.training:
            B, T = inp.shape
            n_mask = min(int(T * self.mask_prob), T - 1)
            scores = torch.rand(B, T, device=x.device)
            scores[:, 0] = -1.0  # the first token is never hidden
            hidden = scores.topk(n_mask, dim=-1).indices
            key_mask = torch.ones(B, T, dtype=torch.bool, device=x.device).scatter(1, hidden, False)
        z = self.add_attn_z_loss and self.training
        kw = dict(return_attn_z_loss=True, attn_z_loss_weight=self.attn_z_loss_weight) if z else {}
        if key_mask is not None:
            kw["key_mask"] = key_mask
        if prepend_embeds is not None:
            kw["prepend_embeds"] = prepend_embeds
        for name in ("mask", "pos", "sum_embeds"):  # cover x (B, T+1) as in x-transformers: the inputs' part
            v = kwargs.get(name)
            if v is not None and v.shape[min(1, v.dim() - 1)] == x.shape[1]:
                kwargs[name] = v[..., :-1] if name != "sum_embeds" else v[:, :-1]
        # a TransformerWrapper speaks x-transformers: (logits, intermediates) carry the z-loss
        xt_net = hasattr(self.net, "attn_qk_clip_")
        if return_outputs and xt_net:
            kw["return_intermediates"] = True
        if not return_outputs:
            kw["return_embeddings"] = True  # the loss comes from the final embeddings, below
        out = self.net(inp, **kw, **kwargs)
        y, aux = out if (z or (return_outputs and xt_net)) else (out, None)  # y: logits or final embeddings
        z_loss = (aux.attn_z_loss if xt_net else aux) if z else None
        inter = aux if xt_net else None
        if prepend_embeds is not None:
            y = y[:, prepend_embeds.shape[1]:]
        if return_outputs:  # the caller wants the logits, so the loss may read them
            loss = F.cross_entropy(y.flatten(0, 1).float(), target.flatten(), ignore_index=self.ignore_index)
        else:
            # the model's own loss (Transformer.loss, as forward(targets=...)): for a large
            # vocabulary in row chunks, never the full fp32 (B, T, V) logits
            loss = self.net.loss(y, target, ignore_index=self.ignore_index)
        if z_loss is not None:
            loss = loss + z_loss
        return (loss, (y, inter)) if return_outputs else loss

    def _prepare(self, prompts, prompt_lens, truncate_prompt: bool):
        """-> (ids (B, T) left-padded, start (B,) or None), validated and fitted to the context."""
        if isinstance(prompts, (list, tuple)):
            if prompt_lens is not None:
                raise ValueError("prompt_lens is derived from a list of prompts; give one or the other")
            ids, start = left_pad([as_token_ids(p) for p in prompts], self.pad_value)
        else:
            if not torch.is_tensor(prompts):
                raise ValueError(f"prompts must be a tensor or a list of 1-D tensors, got {type(prompts).__name__}")
            ids = prompts[None] if prompts.dim() == 1 else prompts
            if ids.dim() != 2 or ids.shape[1] < 1:
                raise ValueError(f"prompts must be (T,) or (B, T) token ids with T >= 1, got {tuple(prompts.shape)}")
            start = None
            if prompt_lens is not None:  # x-transformers convention: right-padded prompts + lengths
                ids, start = left_pad([ids[i, : int(n)] for i, n in enumerate(prompt_lens)], self.pad_value)
        check_token_ids(ids, self.net.cfg.vocab_size)
        if start is not None and not bool(start.any()):
            start = None
        S = self.max_seq_len
        if ids.shape[1] > S:
            if not truncate_prompt:
                raise ValueError(f"prompt of {ids.shape[1]} tokens is longer than the model context "
                                 f"max_seq_len={S}; shorten it or pass truncate_prompt=True to keep its last {S} tokens")
            off = ids.shape[1] - S
            ids = ids[:, off:]
            start = None if start is None else (start - off).clamp(min=0)
        return ids, start

    def _check_eos(self, eos_token):
        if eos_token is not None and not (0 <= eos_token < self.net.cfg.vocab_size):
            raise ValueError(f"eos_token {eos_token} is outside the vocabulary [0, {self.net.cfg.vocab_size})")

    def _sampling(self, where: str, sampling: SamplingConfig | None, seq_len, given: dict) -> SamplingConfig:
        """The one SamplingConfig of a call: ``sampling`` itself, or one built (and so validated)
        from x-transformers-style keywords; errors use the keyword names the caller wrote."""
        if sampling is not None:
            if not isinstance(sampling, SamplingConfig):
                raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
            clash = [k for k, v in given.items() if v != _SAMPLING_DEFAULTS[where][k]]
            if clash:
                raise TypeError(f"{where}() got sampling= and also {', '.join(clash)}; put them in the SamplingConfig")
            if seq_len is not None and seq_len != sampling.max_new_tokens:
                raise ValueError(f"seq_len={seq_len} differs from sampling.max_new_tokens={sampling.max_new_tokens}")
            cfg = sampling
        else:
            if seq_len is None:
                raise TypeError(f"{where}() needs seq_len (the number of new tokens) or sampling=SamplingConfig(...)")
            names = {_XT_NAMES.get(k, k): v for k, v in given.items()}
            try:
                cfg = SamplingConfig(max_new_tokens=seq_len, **names)
            except SamplingError as e:
                name = {v: k for k, v in _XT_NAMES.items()}.get(e.field, e.field)
                raise SamplingError("seq_len" if name == "max_new_tokens" else name, e.problem) from None
        if (cfg.beams is not None) != (where == "beam_search"):
            raise ValueError("sampling.beams is set: call beam_search()" if cfg.beams is not None else
                             "beam_search() needs beams >= 1")
        if cfg.stop:
            raise ValueError("stop strings work on text: use arlm.generation.sampling.stream_text(wrapper, "
                             "tokenizer, ids, sampling) or cut the decoded text yourself")
        self._check_eos(cfg.eos_token)
        return cfg

    def stream(self, prompts, seq_len: int | None = None, eos_token: int | None = None, temperature: float = 1.0,
               prompt_lens: torch.Tensor | None = None, filter_logits_fn: str | Callable | None = top_k,
               restrict_to_max_seq_len: bool = True, filter_kwargs: dict | None = None,
               cache_kv: bool = True, generator: torch.Generator | None = None, *,
               sampling: SamplingConfig | None = None,
               truncate_prompt: bool = False, amateur_model: nn.Module | None = None,
               contrastive_decode_kwargs: dict | None = None, draft_model: nn.Module | None = None,
               num_draft_tokens: int = 4, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
               frequency_penalty: float = 0.0, num_samples: int = 1, compile: bool = False,
               prepend_embeds: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Like ``generate`` but yields each step's tokens (B,) as they are produced."""
        cfg = self._sampling("stream", sampling, seq_len, dict(
            eos_token=eos_token, temperature=temperature, filter_logits_fn=filter_logits_fn,
            filter_kwargs=filter_kwargs, repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, num_samples=num_samples))
        yield from self._stream(prompts, cfg, prompt_lens=prompt_lens, restrict_to_max_seq_len=restrict_to_max_seq_len,
                                cache_kv=cache_kv, generator=generator, truncate_prompt=truncate_prompt,
                                amateur_model=amateur_model, contrastive_decode_kwargs=contrastive_decode_kwargs,
                                draft_model=draft_model, num_draft_tokens=num_draft_tokens, compile=compile,
                                prepend_embeds=prepend_embeds)

    def _stream(self, prompts, cfg: SamplingConfig, *, prompt_lens=None, restrict_to_max_seq_len: bool = True,
                cache_kv: bool = True, generator=None, truncate_prompt: bool = False, amateur_model=None,
                contrastive_decode_kwargs=None, draft_model=None, num_draft_tokens: int = 4, compile: bool = False,
                prepend_embeds=None) -> Iterator[torch.Tensor]:
        seq_len, temperature, eos_token, num_samples = cfg.max_new_tokens, cfg.temperature, cfg.eos_token, cfg.num_samples
        penalties = dict(repetition_penalty=cfg.repetition_penalty, presence_penalty=cfg.presence_penalty,
                         frequency_penalty=cfg.frequency_penalty)
        filter_fn = cfg.filter_fn() or identity
        ids, start = self._prepare(prompts, prompt_lens, truncate_prompt)
        if generator is None:
            generator = cfg.generator(ids.device)
        if prepend_embeds is not None:
            if amateur_model is not None or draft_model is not None:
                raise ValueError("prepend_embeds work with plain sampling, not contrastive or speculative decoding")
            if prepend_embeds.dim() != 3 or prepend_embeds.shape[0] != ids.shape[0]:
                raise ValueError(f"prepend_embeds must be (B, P, dim) with B = {ids.shape[0]} prompts, "
                                 f"got {tuple(prepend_embeds.shape)}")
        if num_samples > 1:
            ids = ids.repeat_interleave(num_samples, dim=0)
            start = None if start is None else start.repeat_interleave(num_samples)
            if prepend_embeds is not None:
                prepend_embeds = prepend_embeds.repeat_interleave(num_samples, dim=0)
        if not restrict_to_max_seq_len and ids.shape[1] + seq_len > self.max_seq_len:
            raise ValueError(f"prompt + seq_len = {ids.shape[1] + seq_len} exceeds max_seq_len={self.max_seq_len} "
                             "and restrict_to_max_seq_len=False; allow the sliding window or ask for fewer tokens")
        if draft_model is not None and amateur_model is not None:
            raise ValueError("choose either draft_model (speculative) or amateur_model (contrastive), not both")
        models = [m for m in (amateur_model, draft_model) if m is not None]
        was_training = [m.training for m in (self.net, *models)]
        for m in (self.net, *models):
            m.eval()
        self.last_stats = {}
        try:
            if draft_model is not None:
                if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
                    raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
                if eos_token is not None or penalties != dict(zip(penalties, (1.0, 0.0, 0.0))):
                    raise ValueError("speculative decoding supports neither eos_token nor penalties; "
                                     "use plain generate for those")
                draft = getattr(draft_model, "net", draft_model)
                yield from speculative_tokens(self.net, draft, ids, start, seq_len, num_draft_tokens=num_draft_tokens,
                                              temperature=temperature, filter_fn=filter_fn,
                                              generator=generator, stats=self.last_stats)
                return
            hook = None
            if amateur_model is not None:
                amateur = getattr(amateur_model, "net", amateur_model)
                hook = contrastive_hook(amateur, ids.shape[0], start, cache_kv, expert=self.net,
                                        **(contrastive_decode_kwargs or {}))
            yield from stream_tokens(self.net, ids, start, seq_len, temperature=temperature, filter_fn=filter_fn,
                                     eos_token=eos_token, pad_value=self.pad_value, cache_kv=cache_kv,
                                     generator=generator, logits_hook=hook, compile=compile, prepend=prepend_embeds,
                                     **penalties)
        finally:
            for m, t in zip((self.net, *models), was_training):
                m.train(t)

    @torch.inference_mode()
    def generate(self, prompts, seq_len: int | None = None, eos_token: int | None = None, temperature: float = 1.0,
                 prompt_lens: torch.Tensor | None = None, filter_logits_fn: str | Callable | None = top_k,
                 restrict_to_max_seq_len: bool = True, filter_kwargs: dict | None = None,
                 cache_kv: bool = True, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """Sample ``seq_len`` new tokens after each prompt and return only the new tokens.

        prompts: (T,), (B, T), a list of 1-D prompts of different lengths, or right-padded (B, T)
        with ``prompt_lens``; each row gives exactly what it would give alone.
        temperature 0 is greedy. Order: penalties, then temperature, then the filter, then sampling
        (x-transformers applies temperature after the filter, which changes what top_p, top_a and
        min_p keep; arlm follows the common convention). ``filter_logits_fn``: top_k, top_p, top_a,
        min_p, as callables or names, or None; ``filter_kwargs`` go to it.
        Per-row EOS: a row ends at its first generated ``eos_token`` and is padded with
        ``pad_value`` after it; an EOS inside the prompt does not end a row; generation stops when
        every row has ended (x-transformers treats a prompt containing EOS as ended).
        Keyword-only extras: ``truncate_prompt`` (keep the last max_seq_len prompt tokens instead of
        raising), ``num_samples`` (samples per prompt, rows grouped per prompt),
        ``repetition_penalty`` / ``presence_penalty`` / ``frequency_penalty``, ``amateur_model`` +
        ``contrastive_decode_kwargs=dict(alpha=0.1, beta=0.5)`` (contrastive decoding),
        ``draft_model`` + ``num_draft_tokens`` (speculative decoding; acceptance rate in
        ``self.last_stats``), ``compile`` (compile the one-token decode step; CUDA graphs on a GPU;
        the first call pays the compile time), ``sampling`` (a ``SamplingConfig`` holding all the
        sampling options at once, instead of the keywords above; seq_len may then be left out).
        Returns (B, n) or (n,) for a 1-D prompt, n <= seq_len (fewer when every row ended early).
        """
        _reject_unknown("generate", {k: v for k, v in kwargs.items() if k not in _STREAM_EXTRAS}, _STREAM_EXTRAS,
                        "generate's named parameters and ")
        given = dict(_SAMPLING_DEFAULTS["stream"], eos_token=eos_token, temperature=temperature,
                     filter_logits_fn=filter_logits_fn, filter_kwargs=filter_kwargs)
        given.update({k: kwargs.pop(k) for k in _SAMPLING_DEFAULTS["stream"] if k in kwargs})
        cfg = self._sampling("stream", kwargs.pop("sampling", None), seq_len, given)
        was_1d = torch.is_tensor(prompts) and prompts.dim() == 1 and cfg.num_samples == 1
        out = torch.stack(list(self._stream(prompts, cfg, prompt_lens=prompt_lens, cache_kv=cache_kv,
                                            restrict_to_max_seq_len=restrict_to_max_seq_len, generator=generator,
                                            **kwargs)), dim=1)
        eos_token = cfg.eos_token
        if eos_token is not None:  # drop trailing steps taken after every row had ended
            ended = (out == eos_token).cumsum(dim=1) > 0  # (B, n): True from a row's EOS on
            all_ended = ended.all(dim=0)
            if bool(all_ended.any()):
                out = out[:, : int(all_ended.float().argmax()) + 1]
        return out[0] if was_1d else out

    @torch.inference_mode()
    def beam_search(self, prompts, seq_len: int | None = None, beams: int = 4, return_beams_and_scores: bool = False,
                    eos_token: int | None = None, length_penalty: float = 1.0, stochastic: bool = False,
                    temperature: float = 1.0, prompt_lens: torch.Tensor | None = None, cache_kv: bool = True,
                    generator: torch.Generator | None = None, truncate_prompt: bool = False, beams_first: bool = True,
                    *, sampling: SamplingConfig | None = None):
        """Beam search over ``beams`` hypotheses per prompt; returns the best new tokens (B, seq_len)
        padded with ``pad_value`` after EOS, or with ``return_beams_and_scores`` all beams, best
        first, and their length-normalised log-probabilities: (beams, B, seq_len) and (beams, B) as
        x-transformers, or (B, beams, seq_len) and (B, beams) with ``beams_first=False`` (a 1-D
        prompt gives (beams, seq_len) and (beams,) either way).
        Finished hypotheses (EOS) are kept and ranked by logp / length ** length_penalty;
        ``beams=1`` equals greedy decoding. ``stochastic`` samples beams (Gumbel top-k) at
        ``temperature`` (which plain beam search does not use, so another value is refused).
        ``sampling``: a ``SamplingConfig`` with ``beams`` set, instead of the keywords."""
        cfg = self._sampling("beam_search", sampling, seq_len, dict(
            beams=beams, eos_token=eos_token, length_penalty=length_penalty, stochastic=stochastic,
            temperature=temperature))
        seq_len, beams = cfg.max_new_tokens, cfg.beams
        was_1d = torch.is_tensor(prompts) and prompts.dim() == 1
        ids, start = self._prepare(prompts, prompt_lens, truncate_prompt)
        was_training = self.net.training
        self.net.eval()
        try:
            seqs, scores = _beam_search(self.net, ids, start, seq_len, beams=beams, eos_token=cfg.eos_token,
                                        length_penalty=cfg.length_penalty, stochastic=cfg.stochastic,
                                        temperature=cfg.temperature, pad_value=self.pad_value,
                                        generator=generator or cfg.generator(ids.device), cache_kv=cache_kv)
        finally:
            self.net.train(was_training)
        if return_beams_and_scores:
            if was_1d:
                return seqs[0], scores[0]
            return (seqs.transpose(0, 1), scores.t()) if beams_first else (seqs, scores)
        best = seqs[:, 0]
        return best[0] if was_1d else best
