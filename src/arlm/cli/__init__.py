"""The ``arlm`` command line: thin verbs (train, generate, eval, presets, config) over the library."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
