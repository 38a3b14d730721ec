"""``arlm convert``: an x-transformers checkpoint into an arlm run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, out


def convert(args: argparse.Namespace) -> int:
    """Convert x-transformers TransformerWrapper weights into an arlm run directory.

    --config is a YAML (or JSON) file with the keyword arguments the x-transformers model was
    built with, attn_layers holding the Decoder's, for example:

      num_tokens: 256
      max_seq_len: 1024
      attn_layers: {dim: 512, depth: 6, heads: 8, rotary_pos_emb: true}

    CKPT is a torch state dict (loaded with weights_only=True: nothing in it is executed), or a
    dict holding one under "model" / "state_dict". The run gets the byte tokenizer when
    num_tokens is 256, else the tokenizer.json given with --tokenizer. The result is a run at
    step 0 that `arlm generate` and `arlm eval` read and `arlm train --resume auto` fine-tunes
    (on --data, which the run's config records).

    examples:
      arlm convert --from x-transformers enwik8.pt --config xt.yaml --out runs/enwik8-xt
    """
    import torch
    import yaml

    from arlm.config import DataConfig, RunConfig
    from arlm.export.x_transformers import convert_state_dict
    from arlm.model import Decoder, TransformerWrapper
    from arlm.tokenizers import ByteTokenizer, load_tokenizer
    from arlm.training.checkpoint import rng_state, save_checkpoint
    from arlm.training.optim import build_optimizer

    out_dir = Path(args.out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(f"--out {out_dir} exists and is not empty; choose a new folder")
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

    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif net.cfg.vocab_size == 256:
        tokenizer = ByteTokenizer()
    else:
        raise UsageError(f"num_tokens is {net.cfg.vocab_size}: give the tokenizer.json the model was trained with "
                         "via --tokenizer (the byte tokenizer only fits num_tokens 256)")
    if tokenizer.vocab_size != net.cfg.vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} ids but num_tokens is {net.cfg.vocab_size}")

    cfg = RunConfig(model=net.cfg, data=DataConfig(path=args.data, tokenizer=tokenizer.kind))
    cfg.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out_dir / "config.yaml")
    tokenizer.save(out_dir / "tokenizer.json")
    optimizer = build_optimizer(net, cfg.train, torch.device("cpu"))
    state = {"format": 1, "step": 0, "sampler": {"seed": cfg.train.seed, "batches": 0},
             "converted_from": {"library": "x-transformers", "checkpoint": str(ckpt)}}
    path = save_checkpoint(out_dir, 0, model=net, optimizer=optimizer, trainer_state=state, cfg=cfg,
                           tokenizer=tokenizer, keep_last=cfg.train.keep_last, rng=rng_state(torch.device("cpu")))
    out(f"converted {ckpt} ({sum(p.numel() for p in net.parameters()):,} parameters) into {path}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="x-transformers state dict (torch.save of model.state_dict())")
    p.add_argument("--from", dest="source", required=True, choices=["x-transformers"],
                   help="the library the checkpoint comes from")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="YAML/JSON with the TransformerWrapper keyword arguments (attn_layers: the Decoder's)")
    p.add_argument("--out", required=True, metavar="DIR", help="the arlm run directory to create")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (needed unless num_tokens is 256)")
    p.add_argument("--data", metavar="PATH", help="corpus the run evaluates on and fine-tunes with "
                   "(`arlm train --resume auto`); default: the built-in corpus")
