"""``arlm convert``: an x-transformers checkpoint or a Hugging Face transformers folder into an arlm
run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, out


def convert(args: argparse.Namespace) -> int:
    """Convert x-transformers weights or a Hugging Face model into an arlm run directory.

    --from hf: SOURCE is a local transformers folder (config.json and model.safetensors, as
    save_pretrained writes; pickled .bin weights are never read) of a GPT-2, GPT-NeoX (sequential
    residual) or Llama-family model (llama, mistral, qwen2). The run's logits equal the
    original's. Its tokenizer is --tokenizer, else the folder's tokenizer.json when it is a
    byte-level BPE, else the byte tokenizer when the model has 256 ids; a tokenizer with fewer ids
    than the model's embedding keeps the extra rows as padding, never sampled. --max-seq-len
    shortens the context (default: the model's own, which sizes the KV cache). Needs the 'hf'
    extra (transformers 5 or newer).

    --from x-transformers: SOURCE is a torch state dict and --config a YAML (or JSON) file with
    the keyword arguments the x-transformers model was built with, attn_layers holding the
    Decoder's, for example:

      num_tokens: 256
      max_seq_len: 1024
      attn_layers: {dim: 512, depth: 6, heads: 8, rotary_pos_emb: true}

    SOURCE is a torch state dict (loaded with weights_only=True: nothing in it is executed), or a
    dict holding one under "model" / "state_dict". The run gets the byte tokenizer when
    num_tokens is 256, else the tokenizer.json given with --tokenizer. The result is a run at
    step 0 that `arlm generate` and `arlm eval` read and `arlm train --resume auto` fine-tunes
    (on --data, which the run's config records).

    examples:
      arlm convert --from x-transformers enwik8.pt --config xt.yaml --out runs/enwik8-xt
      arlm convert --from hf hf/gpt2 --out runs/gpt2 --max-seq-len 256
    """
    out_dir = Path(args.out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(f"--out {out_dir} exists and is not empty; choose a new folder")
    if args.source == "hf":
        net, tokenizer, source = _from_hf(args)
    else:
        net, tokenizer, source = _from_x_transformers(args)
    path = _write_run(out_dir, net, tokenizer, args.data, source)
    out(f"converted {args.ckpt} ({sum(p.numel() for p in net.parameters()):,} parameters) into {path}")
    return 0


def _from_hf(args: argparse.Namespace):
    """(model, tokenizer, where it came from) of a transformers folder."""
    from arlm.export.hf_config import HFConfigError
    from arlm.export.hf_import import import_hf, narrow_vocab
    from arlm.tokenizers import load_tokenizer

    if args.config:
        raise UsageError("--config is for --from x-transformers; a transformers folder has its own config.json")
    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise UsageError(f"--max-seq-len must be >= 1, got {args.max_seq_len}")
    folder = Path(args.ckpt)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give a transformers model folder (save_pretrained's)")
    try:
        net, tokenizer = import_hf(folder, args.max_seq_len)
    except HFConfigError as e:
        raise UsageError(str(e)) from None
    except ImportError as e:  # the 'hf' extra is missing
        raise UsageError(str(e)) from None
    found = "the folder's tokenizer.json is not a byte-level BPE arlm reads" if (folder / "tokenizer.json").is_file() \
        else "the folder has no tokenizer.json"
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is not None and tokenizer.vocab_size < net.cfg.vocab_size:
        try:  # transformers models often pad their embedding past the tokenizer's ids
            net = narrow_vocab(net, tokenizer.vocab_size)
        except HFConfigError as e:
            raise UsageError(str(e)) from None
    tokenizer = _tokenizer(args, net.cfg.vocab_size, tokenizer, found)
    return net, tokenizer, {"library": "transformers", "folder": str(folder)}


def _tokenizer(args: argparse.Namespace, vocab_size: int, found=None, why: str = ""):
    """--tokenizer, else ``found``, else the byte tokenizer for 256 ids; its size must be the model's."""
    from arlm.tokenizers import ByteTokenizer, load_tokenizer

    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif found is not None:
        tokenizer = found
    elif vocab_size == 256:
        tokenizer = ByteTokenizer()
    else:
        raise UsageError(f"the model has {vocab_size} token ids: give the tokenizer.json it was trained with via "
                         f"--tokenizer (the byte tokenizer only fits 256 ids){'; ' + why if why else ''}")
    if tokenizer.vocab_size != vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} ids but the model has {vocab_size}")
    return tokenizer


def _from_x_transformers(args: argparse.Namespace):
    """(model, tokenizer, where it came from) of an x-transformers state dict and its keywords."""
    import torch
    import yaml

    from arlm.export.x_transformers import convert_state_dict
    from arlm.model import Decoder, TransformerWrapper

    if not args.config:
        raise UsageError("--from x-transformers needs --config (the TransformerWrapper keyword arguments)")
    if args.max_seq_len is not None:
        raise UsageError("--max-seq-len is for --from hf; set max_seq_len in --config")
    cfg_path = Path(args.config)
    if not cfg_path.is_file():
        raise UsageError(f"--config {cfg_path} does not exist")
    try:
        kwargs = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"--config {cfg_path} is not valid YAML/JSON: {e}") from None
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("attn_layers"), dict):
        raise UsageError(f"--config {cfg_path} must be a mapping of TransformerWrapper arguments with "
                         "attn_layers: a mapping of Decoder arguments")
    kwargs = dict(kwargs)
    net = TransformerWrapper(attn_layers=Decoder(**kwargs.pop("attn_layers")), **kwargs)

    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise UsageError(f"checkpoint {ckpt} does not exist")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same answer for the user
        raise UsageError(f"cannot read {ckpt} as a weights-only torch checkpoint: {e}") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UsageError(f"{ckpt} holds no state dict of tensors")
    try:
        net.load_state_dict(convert_state_dict(state, net))
    except (KeyError, ValueError, RuntimeError) as e:
        raise UsageError(f"{ckpt} does not match --config {cfg_path}: {e}") from None

    tokenizer = _tokenizer(args, net.cfg.vocab_size)
    return net, tokenizer, {"library": "x-transformers", "checkpoint": str(ckpt)}


def _write_run(out_dir: Path, net, tokenizer, data: str | None, source: dict) -> Path:
    """A run at step 0: config.yaml, tokenizer.json and a committed checkpoint of ``net``, which
    `arlm generate` and `arlm eval` read and `arlm train --resume auto` fine-tunes."""
    import torch

    from arlm.config import DataConfig, RunConfig
    from arlm.rundir import write_run_files
    from arlm.training.checkpoint import rng_state, save_checkpoint
    from arlm.training.optim import build_optimizer

    cfg = RunConfig(model=net.cfg, data=DataConfig(path=data, tokenizer=tokenizer.kind))
    cfg.validate()
    write_run_files(out_dir, config_yaml=cfg.to_yaml(), tokenizer=tokenizer)
    optimizer = build_optimizer(net, cfg.train, torch.device("cpu"))
    state = {"format": 1, "step": 0, "sampler": {"seed": cfg.train.seed, "batches": 0}, "converted_from": source}
    return save_checkpoint(out_dir, 0, model=net, optimizer=optimizer, trainer_state=state, cfg=cfg,
                           tokenizer=tokenizer, keep_last=cfg.train.keep_last, rng=rng_state(torch.device("cpu")))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="SOURCE", help="x-transformers state dict (torch.save of model.state_dict()), "
                   "or with --from hf a transformers model folder")
    p.add_argument("--from", dest="source", required=True, choices=["x-transformers", "hf"],
                   help="the library the model comes from")
    p.add_argument("--config", metavar="FILE",
                   help="x-transformers: YAML/JSON with the TransformerWrapper keyword arguments (attn_layers: the "
                   "Decoder's)")
    p.add_argument("--out", required=True, metavar="DIR", help="the arlm run directory to create")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (needed unless the model has 256 ids, or "
                   "with --from hf the folder has a byte-level BPE tokenizer.json)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="hf: the run's context (default: the model's "
                   "max_position_embeddings / n_positions)")
    p.add_argument("--data", metavar="PATH", help="corpus the run evaluates on and fine-tunes with "
                   "(`arlm train --resume auto`); default: the built-in corpus")
