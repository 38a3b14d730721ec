"""The ``arlm`` command: verbs over the library, each a function whose docstring is its help.

Errors a person can fix (bad flags, bad config values, a missing corpus, a folder that is not a
run) print ``arlm: error: <message>`` and exit with status 2, without a traceback. A training
run stopped by Ctrl-C or SIGTERM saves a checkpoint and exits with 130 or 143.
Set ARLM_DEBUG=1 to see the traceback of any error.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from . import chat, convert, evaluate, export, generate, plot, prepare, presets, serve, train
from .common import Parser, UsageError, description, summary

PROG = "arlm"


def _verbs() -> dict[str, tuple[Callable, Callable]]:
    """verb name -> (function, adds its arguments to a parser)."""
    return {
        "train": (train.train, lambda p: train.add_config_arguments(p, for_training=True)),
        "generate": (generate.generate, generate.add_arguments),
        "eval": (evaluate.evaluate, evaluate.add_arguments),
        "presets": (presets.presets, presets.add_arguments),
        "config": (train.config, lambda p: train.add_config_arguments(p, for_training=False)),
        "convert": (convert.convert, convert.add_arguments),
        "prepare": (prepare.prepare, prepare.add_arguments),
        "plot": (plot.plot, plot.add_arguments),
        "export": (export.export, export.add_arguments),
        "serve": (serve.serve, serve.add_arguments),
        "chat": (chat.chat, chat.add_arguments),
    }


def build_parser() -> Parser:
    """The full argument parser: one sub-parser per verb, help taken from the verb docstrings."""
    from arlm import __version__

    parser = Parser(prog=PROG, description=(
        "Train and sample decoder-only transformer language models.\n\n"
        "Start with `arlm train --preset default --out runs/demo`, then\n"
        "`arlm generate runs/demo --prompt \"def \"` and `arlm eval runs/demo`.\n"
        "`arlm VERB --help` describes each verb."))
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for name, (fn, add_arguments) in _verbs().items():
        usage = None
        if name in ("train", "config"):  # a usage line listing ~60 override flags helps nobody
            extra = " [--out DIR] [--resume auto|DIR]" if name == "train" else ""
            usage = (f"{PROG} {name} [--preset NAME] [--config FILE.yaml] [--data PATH] [--max-steps N]{extra}\n"
                     f"       {' ' * len(name)} [--tokenizer byte|bpe] [--device D] [--compile] [--no-progress]\n"
                     f"       {' ' * len(name)} [--model.FIELD VALUE] [--data.FIELD VALUE] [--train.FIELD VALUE] ...")
        p = sub.add_parser(name, help=summary(fn), description=description(fn), verb=name,
                           prog=f"{PROG} {name}", usage=usage)
        add_arguments(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        return _run(argv)
    except UsageError as e:
        return _fail(str(e), hint=f"{PROG} {e.verb} --help" if e.verb else f"{PROG} --help")
    except KeyboardInterrupt:
        sys.stderr.write("\narlm: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader of our stdout went away (`arlm generate ... | head`): stop quietly
        _silence_stdout()
        return 141
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        # ConfigError, DataError, RunError, CheckpointError are ValueErrors with messages for people
        if os.environ.get("ARLM_DEBUG"):
            raise
        return _fail(str(e))
    except OSError as e:
        if os.environ.get("ARLM_DEBUG"):
            raise
        _fail(str(e))
        return 1


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args, extras = parser.parse_known_args(argv)
    if extras:
        if args.verb in ("train", "config"):
            raise UsageError(train.unknown_flag_message(extras), args.verb)
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}", args.verb)
    if args.verb is None:
        raise UsageError(f"choose a verb: {', '.join(_verbs())}")
    try:
        return args.func(args)
    except UsageError as e:
        e.verb = e.verb or args.verb
        raise


def _fail(message: str, hint: str | None = None) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    if hint:
        sys.stderr.write(f"(see `{hint}`)\n")
    sys.stderr.flush()
    return 2


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
