"""``arlm export``: a run as a Hugging Face transformers folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, out


def export(args: argparse.Namespace) -> int:
    """Export a run's latest (or --step) checkpoint as a Hugging Face transformers folder.

    The folder holds config.json, generation_config.json, model.safetensors, tokenizer.json and
    tokenizer_config.json: transformers.AutoModelForCausalLM.from_pretrained(DIR) gives the same
    logits as arlm (fp32) and AutoTokenizer.from_pretrained(DIR) encodes as the run's tokenizer.
    The architecture is chosen from the run's options: GPT-2 (learned absolute positions,
    LayerNorm, plain MLP: arlm's defaults), GPT-NeoX (rotary on part of each head, LayerNorm,
    plain MLP: the tiny and default presets), Llama (rotary on whole heads, RMSNorm, GLU
    feed-forward, grouped-query attention) or Mistral (Llama with a sliding window). A model none
    of them expresses exactly is refused before anything is written, naming the options in the
    way. Needs the 'hf' extra (transformers 5 or newer).

    examples:
      arlm export runs/demo --to hf --out hf/demo
      python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('hf/demo')"
    """
    from arlm.export.hf import export_run
    from arlm.export.hf_config import HFConfigError, needs_transformers

    dest = Path(args.out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"--out {dest} exists and is not an empty folder; choose a new folder")
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be >= 0, got {args.step}")
    try:
        needs_transformers().utils.logging.disable_progress_bar()  # one line of output, not a bar per file written
        export_run(args.run, dest, step=args.step)
    except HFConfigError as e:
        raise UsageError(f"{args.run} cannot be exported to transformers: {e}") from None
    except ImportError as e:  # the 'hf' extra is missing
        raise UsageError(str(e)) from None
    out(f"exported {args.run} to {dest} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `arlm train` (or `arlm convert`)")
    p.add_argument("--to", dest="target", required=True, choices=["hf"],
                   help="the format to write: hf (a Hugging Face transformers folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to create")
    p.add_argument("--step", type=int, metavar="N", help="export checkpoint step-N (default: the latest)")
