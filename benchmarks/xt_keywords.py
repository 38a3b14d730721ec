"""Which x-transformers 2.31.10 keywords arlm accepts: counts, the share, and the keyword table of
docs/options.md.

    python benchmarks/xt_keywords.py           # counts and the keywords not accepted
    python benchmarks/xt_keywords.py --write   # also rewrite the table in docs/options.md

Keywords are read from x-transformers' signatures (the ``bench`` extra): ``AttentionLayers``
(Decoder keywords), ``Attention`` (``attn_`` + name), ``FeedForward`` (``ff_`` + name) and
``TransformerWrapper``. The status of each comes from arlm's facade (``keyword_status``).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"
BEGIN, END = "<!-- keywords:begin -->", "<!-- keywords:end -->"

# Attention/FeedForward parameters that AttentionLayers fills itself (a Decoder keyword sets them)
_SET_BY_LAYERS = {"dim", "causal"}


def xt_keywords() -> list[tuple[str, str]]:
    """(keyword, x-transformers class) for every keyword a Decoder/TransformerWrapper user can pass."""
    import x_transformers.x_transformers as X

    def params(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]

    out = [(p, "AttentionLayers") for p in params(X.AttentionLayers)]
    out += [("attn_" + p, "Attention") for p in params(X.Attention) if p not in _SET_BY_LAYERS]
    out += [("ff_" + p, "FeedForward") for p in params(X.FeedForward) if p != "dim"]
    out += [(p, "TransformerWrapper") for p in params(X.TransformerWrapper)]
    seen, rows = set(), []
    for k, cls in out:
        if k not in seen:
            seen.add(k)
            rows.append((k, cls))
    return rows


def table(rows) -> str:
    from arlm.model.facade_keywords import keyword_status

    lines = ["| x-transformers keyword | class | arlm | note |", "|---|---|---|---|"]
    for k, cls in rows:
        status, note = keyword_status(k)
        lines.append(f"| `{k}` | {cls} | {status} | {note.replace('|', '/')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the keyword table in docs/options.md")
    args = ap.parse_args()
    from arlm.model.facade_keywords import keyword_status

    rows = xt_keywords()
    counts: dict[str, list[str]] = {}
    for k, _ in rows:
        counts.setdefault(keyword_status(k)[0], []).append(k)
    n = len(rows)
    for status, names in sorted(counts.items()):
        print(f"{status:>10}: {len(names):3d} ({100 * len(names) / n:.0f}%)")
    accepted = len(counts.get("yes", [])) + len(counts.get("inert", []))
    print(f"accepted (implemented, or inert at the value given): {accepted}/{n} = {100 * accepted / n:.0f}%")
    if counts.get("no"):
        print("not accepted:", ", ".join(counts["no"]))
    if args.write:
        text = DOC.read_text()
        new = f"{BEGIN}\n{table(rows)}\n{END}"
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: new, text, flags=re.S) if BEGIN in text \
            else text.rstrip() + "\n\n" + new + "\n"
        DOC.write_text(text)
        print(f"wrote the table of {n} keywords to {DOC}")


if __name__ == "__main__":
    sys.exit(main())
