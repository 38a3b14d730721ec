"""``arlm train`` and ``arlm config``: build a RunConfig from a preset, a file and flags; train it."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
from pathlib import Path

from arlm.config import PRESETS, TOKENIZERS, ConfigError, RunConfig, all_keys, field_types, preset
from arlm.config.yaml_text import read_yaml_file
from arlm.rundir import is_checkpoint_dir, run_config

from .common import note, out, suggest

DEFAULT_PRESET = "default"
CFG_PREFIX = "cfg:"  # argparse dest prefix of the dotted override flags
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report


def train(args: argparse.Namespace) -> int:
    """Train a model; the run directory holds config, metrics, tokenizer and checkpoints.

    The configuration is built in layers, each overriding the one before:
      1. a preset (--preset, default "default"; `arlm presets` lists them),
      2. a YAML file (--config; only the keys it names),
      3. the short flags (--data, --max-steps, --tokenizer, --device, --compile, --no-progress),
      4. a dotted flag for any single field (--model.dim 128, --train.lr 3e-4, --data.seq_len 64;
         booleans take true/false, optional fields take null).
    With --resume and neither --preset nor --config, the run's own config.yaml is the base layer,
    so `arlm train --out runs/x --resume auto --max-steps 5000` extends run x.

    The resolved config is written to RUN/config.yaml; `arlm config` prints it without training.
    Ctrl-C (or SIGTERM) saves a checkpoint and exits with status 130 (143); --resume auto
    continues from it.

    examples:
      arlm train --preset default --out runs/demo
      arlm train --preset tiny --data corpus.txt --model.dim 64 --train.lr 3e-3
      arlm train --out runs/demo --resume auto --max-steps 3000
    """
    cfg, out_dir = resolve(args)  # every config error surfaces here, before any work
    from arlm.training import NonFiniteLossError, train as run_training  # heavy import: only when training

    try:
        result = run_training(cfg, out_dir, resume=args.resume, progress=cfg.train.progress, log=out)
    except NonFiniteLossError as e:  # diverged: not a usage error, but a message for people all the same
        note(f"arlm: error: {e}")
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        _print_summary(result)
    if result.stopped_by == "signal":
        return _signal_status(result)
    return 0


def config(args: argparse.Namespace) -> int:
    """Print the resolved run configuration as YAML, without training.

    Takes the same configuration flags as `arlm train`, so
    `arlm config --preset tiny --model.dim 64 > my.yaml` writes a file to pass to
    `arlm train --config my.yaml`.
    """
    cfg, _ = resolve(args)
    out(cfg.to_yaml(), end="")
    return 0


def add_config_arguments(p: argparse.ArgumentParser, *, for_training: bool) -> None:
    """The flags that build a RunConfig, shared by ``train`` and ``config``."""
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", metavar="NAME", help=f"starting point: {', '.join(PRESETS)} "
                   f"(default: {DEFAULT_PRESET}; see `arlm presets`)")
    g.add_argument("--config", metavar="FILE.yaml", help="YAML file with model/data/train sections; "
                   "its keys override the preset (configs/*.yaml are the presets written out)")
    g.add_argument("--data", metavar="PATH", help="corpus: a text file, a .gz, a folder of text files, "
                   "a folder from `arlm prepare` (memory-mapped), or 'default' for the built-in corpus (sets data.path)")
    g.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps to train to (sets train.max_steps)")
    g.add_argument("--tokenizer", choices=TOKENIZERS, help="byte (256 ids) or bpe trained on the corpus "
                   "(sets data.tokenizer)")
    g.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model "
                   "(sets train.compile)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar; log lines only (sets train.progress)")
    if for_training:
        r = p.add_argument_group("run directory")
        r.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>)")
        r.add_argument("--resume", metavar="auto|DIR", help="auto: continue from the run's latest checkpoint "
                       "(start fresh if there is none); DIR: continue from that checkpoint")
    groups = {}
    for key, annotation in field_types().items():
        section = key.split(".")[0]
        if section not in groups:
            groups[section] = p.add_argument_group(
                f"{section} overrides", f"one flag per {section} field, e.g. --{key} VALUE")
        groups[section].add_argument(f"--{key}", dest=CFG_PREFIX + key, metavar=_metavar(annotation),
                                     default=argparse.SUPPRESS)


def resolve(args: argparse.Namespace) -> tuple[RunConfig, Path | None]:
    """The validated RunConfig the flags describe, and the run directory (train only)."""
    resume = getattr(args, "resume", None)
    name = args.preset
    if name is not None and name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{suggest(name, PRESETS)}; available: {', '.join(PRESETS)}")

    out_dir, saved = None, None
    if hasattr(args, "out"):
        source = Path(resume) if resume and resume != "auto" else None  # a checkpoint or run folder
        if args.out:
            out_dir = Path(args.out)
        elif source is not None:  # continue in the folder the checkpoint belongs to
            out_dir = source.parent.parent if is_checkpoint_dir(source) else source
        else:
            out_dir = Path("runs") / (name or (Path(args.config).stem if args.config else DEFAULT_PRESET))
        if resume and name is None and args.config is None:
            # resuming: the run's own config is the base layer (its newest checkpoint's when
            # RUN/config.yaml is cut short)
            saved = run_config(source if source is not None else out_dir, log=note)
    cfg = saved if saved is not None else preset(name or DEFAULT_PRESET)
    if args.config is not None:
        _layer_file(cfg, args.config)

    short = {"data.path": args.data, "train.max_steps": args.max_steps, "data.tokenizer": args.tokenizer,
             "train.device": args.device, "train.compile": args.compile, "train.progress": args.progress}
    for key, value in short.items():
        if value is not None:
            cfg.override(key, value)
    for dest, value in vars(args).items():
        if dest.startswith(CFG_PREFIX):
            cfg.override(dest[len(CFG_PREFIX):], value)
    cfg.validate()
    return cfg, out_dir


def unknown_flag_message(extras: list[str]) -> str:
    """A message for flags argparse did not recognise, naming a mistyped config key precisely."""
    flag = next((e for e in extras if e.startswith("--")), extras[0])
    key = flag[2:].split("=", 1)[0]
    section = key.split(".", 1)[0]
    if "." in key and section in ("model", "data", "train"):
        allowed = [k.split(".", 1)[1] for k in all_keys() if k.startswith(section + ".")]
        name = key.split(".", 1)[1]
        hint = suggest(name, allowed).replace("mean ", f"mean {section}.")
        return (f"unknown config key {key!r}{hint}; "
                f"allowed in {section}: {', '.join(allowed)}")
    if flag.startswith("--"):
        return f"unrecognized argument {flag}{suggest(flag, ['--' + k for k in all_keys()])}"
    return f"unrecognized arguments: {' '.join(extras)}"


def _layer_file(cfg: RunConfig, path: str) -> None:
    """Apply the keys a YAML file names on top of ``cfg`` (unnamed keys keep their values)."""
    data = read_yaml_file(path)  # a folder, a device, bad YAML or a duplicate key: a message naming the file
    RunConfig.from_dict(data)  # checks sections, keys and types, naming what is wrong
    for section, values in (data or {}).items():
        for key, value in (values or {}).items():
            cfg.override(f"{section}.{key}", value)


def _metavar(annotation: str) -> str:
    ann = str(annotation).replace(" ", "")
    base = ann.replace("|None", "").replace("None|", "")
    word = {"int": "INT", "float": "FLOAT", "str": "STR", "bool": "true|false"}.get(base, "VALUE")
    return word + ("|null" if "None" in ann else "")


def _print_summary(result) -> None:
    val = "n/a (no validation ran)"
    if getattr(result, "val_loss", None) is not None:
        at = getattr(result, "val_step", None)
        at = f" at step {at}" if at is not None else ""
        bpb = f", {result.val_bpb:.4f} bits per byte" if getattr(result, "val_bpb", None) is not None else ""
        val = f"val_loss {result.val_loss:.4f}{at} (nats/token){bpb}"
    out(f"finished: step {result.step} ({result.stopped_by.replace('_', ' ')}) in {result.seconds:.1f} s")
    out(f"validation: {val}")
    tps = getattr(result, "tokens_per_sec", None)
    if tps:
        out(f"throughput: {tps:,.0f} tokens/s")
    out(f"run directory: {result.run_dir}")
    if result.stopped_by in ("signal", "max_minutes"):
        why = ("train.max_minutes ran out before train.max_steps" if result.stopped_by == "max_minutes"
               else "stopped early")
        note(f"{why}; continue with: arlm train --out {shlex.quote(str(result.run_dir))} --resume auto")


def _signal_status(result) -> int:
    """130 for SIGINT, 143 for SIGTERM (as a shell reports a process killed by them)."""
    sig = getattr(result, "signal", None)
    if sig is None:
        return SIGNAL_EXIT[signal.SIGINT]
    if isinstance(sig, str):
        sig = getattr(signal, sig if sig.startswith("SIG") else "SIG" + sig.upper(), signal.SIGINT)
    return SIGNAL_EXIT.get(sig, 128 + int(sig))

