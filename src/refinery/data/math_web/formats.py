"""Pages that are not HTML but carry math as text: plain text, LaTeX sources and Jupyter notebooks.

Their LaTeX is already LaTeX, so extraction keeps it as-is: a ``.tex`` file or a ``text/plain`` page comes out with
its lines, a notebook as its markdown cells (where the math is: ``$…$``, ``$$…$$``, ``\\begin{align}``) and,
optionally, its code cells in fences.
"""

from __future__ import annotations

import json
import re

from refinery.data.math_web.html import RAW_MATH

_ENVIRONMENTS = re.compile(r"\\begin\{(?:equation|align|gather|multline|eqnarray|displaymath|math)\*?\}")


class NotebookError(ValueError):
    pass


def count_math(text: str) -> int:
    """Formulas in text: ``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]`` and display environments."""
    return len(RAW_MATH.findall(text)) + len(_ENVIRONMENTS.findall(text))


def plain_text(body: str) -> str:
    """A text or LaTeX payload as extracted text: line endings normalised, trailing blanks and runs of blank lines
    removed; the content (LaTeX included) untouched."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _source(cell: dict, key: str = "source") -> str:
    src = cell.get(key, "")
    return "".join(src) if isinstance(src, list) else str(src or "")


def notebook_text(body: str, code_cells: bool = True) -> str:
    """A Jupyter notebook (nbformat 4, or 3's worksheets) → its markdown and raw cells as they are and its code cells
    as fenced blocks in the kernel's language; outputs are left out. Raises :class:`NotebookError` when the payload
    is not a notebook."""
    try:
        nb = json.loads(body)
    except json.JSONDecodeError as e:
        raise NotebookError(f"not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(nb, dict):
        raise NotebookError("not a notebook (the JSON is not an object)")
    cells = nb.get("cells")
    if cells is None and isinstance(nb.get("worksheets"), list):  # nbformat 3
        cells = [c for ws in nb["worksheets"] if isinstance(ws, dict) for c in ws.get("cells", [])]
    if not isinstance(cells, list):
        raise NotebookError("not a notebook (no cells)")
    meta = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    lang = ((meta.get("kernelspec") or {}).get("language") or (meta.get("language_info") or {}).get("name")
            or "python")
    parts = []
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        if kind in ("markdown", "raw", "heading"):
            text = _source(cell)
            if kind == "heading":  # nbformat 3
                text = "#" * int(cell.get("level", 1) or 1) + " " + text
        elif kind == "code" and code_cells:
            code = _source(cell) or _source(cell, "input")  # nbformat 3 calls it input
            text = f"```{lang}\n{code.rstrip()}\n```" if code.strip() else ""
        else:
            continue
        if text.strip():
            parts.append(text.strip("\n"))
    return plain_text("\n\n".join(parts)) if parts else ""
