"""LLM cleanup of rendered pages (Nemotron-CC-Math stage 2): chunk on paragraph boundaries by tokens, ask a
Generator to keep the main content with all math as LaTeX, merge the chunks per page, drop pages the model calls
useless."""

from __future__ import annotations

import re

SENTINEL = "NO_USEFUL_CONTENT"

CLEANUP_PROMPT = """You are cleaning one part of a web page that was converted to plain text, for a mathematics \
training corpus.

Rewrite the text below so that:
- the main content (explanations, derivations, problems, solutions, definitions, discussion) is kept, in its \
original order and wording as far as possible;
- every mathematical expression is LaTeX, inline as $...$ and displayed equations as $$...$$; fix formulas that \
the conversion garbled, but never invent mathematics;
- code blocks are kept verbatim;
- navigation menus, headers and footers, advertisements, cookie notices, share buttons, comment forms and other \
boilerplate are removed.

Answer with the cleaned text only. If this part has no useful content at all, answer exactly {sentinel}.

Text:
{text}"""


def approx_tokens(text: str, chars_per_token: float = 4.0) -> int:
    return int(len(text) / chars_per_token) + 1


def chunk_text(text: str, max_tokens: int, count=approx_tokens) -> list[str]:
    """Paragraph-aligned chunks of at most ``max_tokens`` (a single paragraph longer than that is split on lines,
    then hard-split)."""
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paras:
        if count(p) <= max_tokens:
            pieces.append(p)
            continue
        lines = []
        for line in p.splitlines():
            while count(line) > max_tokens:  # one enormous line: hard split
                cut = max(1, int(len(line) * max_tokens / count(line)))
                lines.append(line[:cut])
                line = line[cut:]
            lines.append(line)
        pieces += _pack(lines, "\n", max_tokens, count)
    return _pack(pieces, "\n\n", max_tokens, count)


def _pack(parts: list[str], sep: str, max_tokens: int, count) -> list[str]:
    """Greedily join consecutive ``parts`` with ``sep`` while the result stays within ``max_tokens``."""
    out: list[str] = []
    cur = ""
    for part in parts:
        if cur and count(cur + sep + part) > max_tokens:
            out.append(cur)
            cur = part
        else:
            cur = f"{cur}{sep}{part}" if cur else part
    if cur:
        out.append(cur)
    return out


def merge_chunks(outputs: list[str]) -> str | None:
    """Join cleaned chunks; None when every chunk was judged useless."""
    kept = [o.strip() for o in outputs if o.strip() and SENTINEL not in o.strip()[: len(SENTINEL) + 8]]
    return "\n\n".join(kept) if kept else None
