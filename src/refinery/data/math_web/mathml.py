"""MathML (presentation) → LaTeX, for pages whose MathML carries no TeX annotation (MathJax v3 assistive MathML,
hand-written MathML). Covers tokens, fractions, scripts, radicals, over/under, fences, tables and text; unknown
elements contribute their children, so nothing silently disappears."""

from __future__ import annotations

import re

# Unicode → LaTeX for identifiers and operators that pages use.
SYMBOLS = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\epsilon", "ϵ": r"\epsilon",
    "ζ": r"\zeta", "η": r"\eta", "θ": r"\theta", "ϑ": r"\vartheta", "ι": r"\iota", "κ": r"\kappa",
    "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi", "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma",
    "τ": r"\tau", "υ": r"\upsilon", "φ": r"\phi", "ϕ": r"\phi", "χ": r"\chi", "ψ": r"\psi", "ω": r"\omega",
    "Γ": r"\Gamma", "Δ": r"\Delta", "Θ": r"\Theta", "Λ": r"\Lambda", "Ξ": r"\Xi", "Π": r"\Pi", "Σ": r"\Sigma",
    "Φ": r"\Phi", "Ψ": r"\Psi", "Ω": r"\Omega",
    "×": r"\times", "·": r"\cdot", "⋅": r"\cdot", "−": "-", "±": r"\pm", "∓": r"\mp", "÷": r"\div",
    "≤": r"\leq", "≥": r"\geq", "≠": r"\neq", "≈": r"\approx", "≡": r"\equiv", "∼": r"\sim", "≅": r"\cong",
    "∝": r"\propto", "→": r"\to", "←": r"\leftarrow", "⇒": r"\Rightarrow", "⇔": r"\iff", "⟺": r"\iff",
    "↦": r"\mapsto", "∞": r"\infty", "∑": r"\sum", "∏": r"\prod", "∫": r"\int", "∮": r"\oint", "∂": r"\partial",
    "∇": r"\nabla", "∈": r"\in", "∉": r"\notin", "⊂": r"\subset", "⊆": r"\subseteq", "∪": r"\cup", "∩": r"\cap",
    "∅": r"\emptyset", "∀": r"\forall", "∃": r"\exists", "¬": r"\neg", "∧": r"\wedge", "∨": r"\vee",
    "…": r"\ldots", "⋯": r"\cdots", "⋮": r"\vdots", "⋱": r"\ddots", "′": "'", "″": "''", "∘": r"\circ",
    "⊗": r"\otimes", "⊕": r"\oplus", "†": r"\dagger", "ℝ": r"\mathbb{R}", "ℕ": r"\mathbb{N}", "ℤ": r"\mathbb{Z}",
    "ℚ": r"\mathbb{Q}", "ℂ": r"\mathbb{C}", "ℓ": r"\ell", "ħ": r"\hbar", "⟨": r"\langle", "⟩": r"\rangle",
    "∣": "|", "‖": r"\|", "°": r"^\circ", "\u2061": "", "\u2062": "", "\u2063": ",", "\u2064": "+", "\u00a0": " ",
}
FUNCTIONS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "lim", "max", "min", "sup", "inf", "det",
             "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "gcd", "deg", "dim", "ker", "arg", "Pr"}
ACCENTS = {"^": r"\hat", "ˆ": r"\hat", "¯": r"\overline", "‾": r"\overline", "→": r"\vec", "⃗": r"\vec",
           "~": r"\tilde", "˜": r"\tilde", "˙": r"\dot", "¨": r"\ddot", "⏞": r"\overbrace", "⏟": r"\underbrace",
           "_": r"\underline"}


def _local(tag) -> str:
    return tag.split("}")[-1].split(":")[-1].lower() if isinstance(tag, str) else ""  # {ns}mi, XHTML's m:mi


def _sym(text: str) -> str:
    out = "".join(SYMBOLS.get(ch, ch) for ch in text)
    return out


def _group(s: str) -> str:
    s = s.strip()
    atomic = len(s) == 1 or re.fullmatch(r"\\[A-Za-z]+", s) or (s.startswith("{") and s.endswith("}")
                                                                   and _balanced_outer(s))
    return s if atomic else "{" + s + "}"


def _balanced_outer(s: str) -> bool:
    depth = 0
    for i, ch in enumerate(s):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def _join(parts: list[str]) -> str:
    out = ""
    for p in parts:
        if not p:
            continue
        # A command followed by a letter needs a space (\alpha x, not \alphax).
        if out and re.search(r"\\[A-Za-z]+$", out) and p[0].isalpha():
            out += " "
        out += p
    return out


def convert(el) -> str:
    """LaTeX for a MathML element (an lxml element: ``<math>`` or any node inside it)."""
    tag = _local(el.tag)
    kids = [k for k in el if _local(k.tag) not in ("annotation", "annotation-xml", "")]
    text = (el.text or "").strip()

    def c(i):
        return convert(kids[i]) if i < len(kids) else ""

    if tag in ("mi", "mn", "mo", "ms"):
        if tag == "mi" and text in FUNCTIONS:
            return "\\" + text
        if tag == "mi" and len(text) > 1 and text.isalpha():
            return r"\mathrm{" + text + "}"
        if tag == "mo" and text in ("{", "}"):
            return "\\" + text
        return _sym(text)
    if tag == "mtext":
        return r"\text{" + text + "}" if text.strip() else " "
    if tag == "mspace":
        return " "
    if tag == "mfrac":
        return r"\frac" + "{" + c(0) + "}{" + c(1) + "}"
    if tag == "msup":
        return _group(c(0)) + "^" + _group(c(1))
    if tag == "msub":
        return _group(c(0)) + "_" + _group(c(1))
    if tag == "msubsup":
        return _group(c(0)) + "_" + _group(c(1)) + "^" + _group(c(2))
    if tag == "msqrt":
        return r"\sqrt{" + _join([convert(k) for k in kids]) + "}"
    if tag == "mroot":
        return r"\sqrt[" + c(1) + "]{" + c(0) + "}"
    if tag in ("mover", "munder"):
        base, mark = c(0), (kids[1].text or "").strip() if len(kids) > 1 else ""
        if mark in ACCENTS and (el.get("accent") == "true" or tag == "mover" or mark == "_"):
            return ACCENTS[mark] + "{" + base + "}"
        if tag == "munder" and base.startswith(("\\lim", "\\max", "\\min", "\\sum", "\\prod", "\\sup", "\\inf")):
            return base + "_" + _group(c(1))
        if tag == "mover" and base.startswith(("\\sum", "\\prod", "\\int")):
            return base + "^" + _group(c(1))
        return ("\\overset" if tag == "mover" else "\\underset") + "{" + c(1) + "}{" + base + "}"
    if tag == "munderover":
        return _group(c(0)) + "_" + _group(c(1)) + "^" + _group(c(2))
    if tag == "mfenced":
        open_, close = el.get("open", "("), el.get("close", ")")
        sep = el.get("separators", ",")
        inner = (sep[:1] or ",").join(convert(k) for k in kids)
        return _fence(open_) + inner + _fence(close)
    if tag == "mtable":
        rows = []
        for row in kids:
            cells = [convert(cell) for cell in row if _local(cell.tag) in ("mtd",)]
            rows.append(" & ".join(cells))
        return r"\begin{matrix}" + r" \\ ".join(rows) + r"\end{matrix}"
    if tag in ("mphantom", "none", "mprescripts"):
        return ""
    if tag == "semantics":
        return c(0)
    # math, mrow, mstyle, mpadded, menclose, merror, mtd, mtr, unknown: the children in order.
    return _join([_sym(text)] + [convert(k) for k in kids] if text else [convert(k) for k in kids])


def _fence(ch: str) -> str:
    return {"{": r"\{", "}": r"\}", "⟨": r"\langle", "⟩": r"\rangle", "‖": r"\|"}.get(ch, ch)


def tex_annotation(math_el) -> str | None:
    """The TeX a MathML element carries (``<annotation encoding="application/x-tex">`` or ``alttext``), if any."""
    for el in math_el.iter():
        if _local(el.tag) == "annotation" and "tex" in (el.get("encoding") or "").lower():
            tex = (el.text or "").strip()
            if tex:
                return tex
    alt = (math_el.get("alttext") or "").strip()
    return alt or None
