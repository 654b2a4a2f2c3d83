"""MathML (presentation) → LaTeX, for pages whose MathML carries no TeX annotation (MathJax v3 assistive MathML,
hand-written MathML). Covers tokens, fractions, scripts, radicals, over/under, fences, tables and text; unknown
elements contribute their children, so nothing silently disappears."""

from __future__ import annotations

import re

# Unicode → LaTeX for identifiers and operators that pages use.
SYMBOLS = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\varepsilon", "ϵ": r"\epsilon",
    "ζ": r"\zeta", "η": r"\eta", "θ": r"\theta", "ϑ": r"\vartheta", "ι": r"\iota", "κ": r"\kappa",
    "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi", "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma",
    "τ": r"\tau", "υ": r"\upsilon", "φ": r"\varphi", "ϕ": r"\phi", "χ": r"\chi", "ψ": r"\psi", "ω": r"\omega",
    "Γ": r"\Gamma", "Δ": r"\Delta", "Θ": r"\Theta", "Λ": r"\Lambda", "Ξ": r"\Xi", "Π": r"\Pi", "Σ": r"\Sigma",
    "Φ": r"\Phi", "Ψ": r"\Psi", "Ω": r"\Omega",
    "×": r"\times", "·": r"\cdot", "⋅": r"\cdot", "−": "-", "±": r"\pm", "∓": r"\mp", "÷": r"\div",
    "≤": r"\leq", "≥": r"\geq", "≠": r"\neq", "≈": r"\approx", "≡": r"\equiv", "∼": r"\sim", "≅": r"\cong",
    "∝": r"\propto", "→": r"\to", "←": r"\leftarrow", "⇒": r"\Rightarrow", "⇔": r"\iff", "⟺": r"\iff",
    "↦": r"\mapsto", "∞": r"\infty", "∑": r"\sum", "∏": r"\prod", "∫": r"\int", "∮": r"\oint", "∂": r"\partial",
    "∇": r"\nabla", "∈": r"\in", "∉": r"\notin", "⊂": r"\subset", "⊆": r"\subseteq", "∪": r"\cup", "∩": r"\cap",
    "∅": r"\emptyset", "∀": r"\forall", "∃": r"\exists", "¬": r"\neg", "∧": r"\wedge", "∨": r"\vee",
    "…": r"\ldots", "⋯": r"\cdots", "⋮": r"\vdots", "⋱": r"\ddots", "′": "'", "″": "''", "∘": r"\circ",
    "⊗": r"\otimes", "∗": r"\ast", "⋆": r"\star", "∖": r"\setminus", "⊥": r"\perp", "∥": r"\parallel",
    "⊇": r"\supseteq", "⊃": r"\supset", "⊊": r"\subsetneq", "≪": r"\ll", "≫": r"\gg", "⟶": r"\longrightarrow",
    "⟹": r"\Longrightarrow", "⇐": r"\Leftarrow", "↔": r"\leftrightarrow", "∋": r"\ni", "≜": r"\triangleq",
    "≔": ":=", "⊤": r"\top", "⊢": r"\vdash", "⊨": r"\models", "∠": r"\angle", "△": r"\triangle",
    "⊕": r"\oplus", "†": r"\dagger", "ℝ": r"\mathbb{R}", "ℕ": r"\mathbb{N}", "ℤ": r"\mathbb{Z}",
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
    atomic = len(s) == 1 or re.fullmatch(r"\\[A-Za-z]+(?:\{[^{}]*\})?", s) or (s.startswith("{") and s.endswith("}")
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


VARIANTS = {"bold": r"\mathbf", "double-struck": r"\mathbb", "script": r"\mathcal", "bold-script": r"\mathcal",
            "-tex-calligraphic": r"\mathcal", "-tex-caligraphic": r"\mathcal", "-tex-bold-calligraphic": r"\mathcal",
            "fraktur": r"\mathfrak", "bold-fraktur": r"\mathfrak", "sans-serif": r"\mathsf",
            "bold-sans-serif": r"\mathsf", "sans-serif-italic": r"\mathsf", "monospace": r"\mathtt",
            "bold-italic": r"\boldsymbol", "normal": r"\mathrm", "-tex-mathit": r"\mathit"}
_GREEK = "αβγδεϵζηθϑικλμνξπϖρϱσςτυφϕχψωΓΔΘΛΞΠΣΥΦΨΩ∂∇"
# Unicode's mathematical alphanumerics (U+1D400…): (first code point, variant) for each A-Z/a-z alphabet.
_ALNUM = [(0x1D400, "bold"), (0x1D434, "italic"), (0x1D468, "bold-italic"), (0x1D49C, "script"),
          (0x1D4D0, "bold-script"), (0x1D504, "fraktur"), (0x1D538, "double-struck"), (0x1D56C, "bold-fraktur"),
          (0x1D5A0, "sans-serif"), (0x1D5D4, "bold-sans-serif"), (0x1D608, "sans-serif-italic"),
          (0x1D63C, "sans-serif-bold-italic"), (0x1D670, "monospace")]
_LETTERLIKE = {"ℂ": ("C", "double-struck"), "ℍ": ("H", "double-struck"), "ℕ": ("N", "double-struck"),
               "ℙ": ("P", "double-struck"), "ℚ": ("Q", "double-struck"), "ℝ": ("R", "double-struck"),
               "ℤ": ("Z", "double-struck"), "ℬ": ("B", "script"), "ℰ": ("E", "script"), "ℱ": ("F", "script"),
               "ℋ": ("H", "script"), "ℐ": ("I", "script"), "ℒ": ("L", "script"), "ℳ": ("M", "script"),
               "ℛ": ("R", "script"), "ℯ": ("e", "script"), "ℊ": ("g", "script"), "ℴ": ("o", "script"),
               "ℭ": ("C", "fraktur"), "ℌ": ("H", "fraktur"), "ℑ": ("I", "fraktur"), "ℜ": ("R", "fraktur"),
               "ℨ": ("Z", "fraktur"), "ℎ": ("h", "italic")}
_GREEK_UPPER = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡϴΣΤΥΦΧΨΩ∇"
_GREEK_LOWER = "αβγδεζηθικλμνξοπρςστυφχψω∂ϵϑϰϕϱϖ"


def plain_char(ch: str) -> tuple[str, str | None]:
    """A mathematical alphanumeric character → (plain character, its variant), e.g. ``𝐕`` → ``("V", "bold")``."""
    if ch in _LETTERLIKE:
        return _LETTERLIKE[ch]
    cp = ord(ch)
    if 0x1D400 <= cp <= 0x1D6A3:
        for start, variant in reversed(_ALNUM):
            if cp >= start:
                k = cp - start
                return (chr(ord("A") + k) if k < 26 else chr(ord("a") + k - 26)), variant
    if 0x1D6A8 <= cp <= 0x1D7CB:  # Greek: bold, italic, bold italic, sans-serif bold, sans-serif bold italic
        k = (cp - 0x1D6A8) % 58
        variant = ["bold", "italic", "bold-italic", "bold-sans-serif", "sans-serif-bold-italic"][(cp - 0x1D6A8) // 58]
        return (_GREEK_UPPER + _GREEK_LOWER)[k] if k < 58 else ch, variant
    if 0x1D7CE <= cp <= 0x1D7FF:  # digits: bold, double-struck, sans-serif, sans-serif bold, monospace
        k = cp - 0x1D7CE
        return str(k % 10), ["bold", "double-struck", "sans-serif", "bold-sans-serif", "monospace"][k // 10]
    return ch, None


def styled(text: str, variant: str | None, tag: str = "mi") -> str:
    """LaTeX for token text in a ``mathvariant`` (Unicode math letters carry their own)."""
    parts: list[tuple[str, str | None]] = []
    for ch in text:
        base, v = plain_char(ch)
        parts.append((base, v or variant))
    plain = "".join(b for b, _ in parts)
    v = parts[0][1] if parts and all(p[1] == parts[0][1] for p in parts) else variant
    if tag == "mi" and plain in FUNCTIONS and v in (None, "normal"):
        return "\\" + plain
    if tag == "mo" and plain in FUNCTIONS:
        return "\\" + plain
    body = _sym(plain)
    if tag == "mo" and plain in ("{", "}"):
        body = "\\" + plain
    if v in (None, "italic", "sans-serif-bold-italic") or not plain.strip():
        if tag == "mi" and len(plain) > 1 and plain.isalpha():
            return r"\mathrm{" + plain + "}"
        return body
    if v == "normal":
        if tag == "mi" and (len(plain) > 1 or plain.isascii()) and plain.isalpha():
            return r"\mathrm{" + body + "}"
        return body  # upright Greek capitals and digits are TeX's default
    if v == "bold" and any(ch in _GREEK for ch in plain):
        v = "bold-italic"  # \mathbf does not embolden Greek; \boldsymbol does
    if tag == "mn" and v == "bold":
        return r"\mathbf{" + body + "}"
    return VARIANTS.get(v, "") + "{" + body + "}" if v in VARIANTS else body


_ZERO = {"0", "0px", "0em", "0pt", "0.0", "0ex"}
OVER_ACCENTS = {"^": r"\hat", "ˆ": r"\hat", "\u0302": r"\hat", "¯": r"\bar", "ˉ": r"\bar", "\u0304": r"\bar",
                "‾": r"\bar", "―": r"\overline", "→": r"\vec", "\u20d7": r"\vec", "~": r"\tilde",
                "˜": r"\tilde", "\u0303": r"\tilde", "˙": r"\dot", "\u0307": r"\dot", ".": r"\dot",
                "¨": r"\ddot", "\u0308": r"\ddot", "..": r"\ddot", "ˇ": r"\check", "\u030c": r"\check",
                "˘": r"\breve", "\u0306": r"\breve", "´": r"\acute", "\u0301": r"\acute", "`": r"\grave",
                "\u0300": r"\grave", "˚": r"\mathring", "⏞": r"\overbrace", "←": r"\overleftarrow", "–": r"\overline",
                "⃡": r"\overleftrightarrow", "⌢": r"\frown"}
UNDER_ACCENTS = {"_": r"\underline", "–": r"\underline", "¯": r"\underline", "‾": r"\underline", "―": r"\underline",
                 "⏟": r"\underbrace", "→": r"\underrightarrow", "←": r"\underleftarrow"}
LIMIT_BASES = ("\\lim", "\\max", "\\min", "\\sum", "\\prod", "\\sup", "\\inf", "\\int", "\\bigcup", "\\bigcap",
               "\\coprod", "\\bigoplus", "\\bigotimes", "\\oint", "\\det", "\\gcd", "\\Pr", "\\liminf",
               "\\limsup", "\\arg", "\\underbrace", "\\overbrace", "\\bigvee", "\\bigwedge")


def _text(el) -> str:
    return "".join(el.itertext()).strip()


def _children(el) -> list:
    return [k for k in el if _local(k.tag) not in ("annotation", "annotation-xml", "")]


def _is_fence(el, chars) -> bool:
    """A bare ``<mo>`` with one of ``chars`` (or an ``<mrow>`` holding just that, as MathJax writes \\left)."""
    while el is not None and _local(el.tag) == "mrow" and len(_children(el)) == 1:
        el = _children(el)[0]
    return el is not None and _local(el.tag) == "mo" and _text(el) in chars


def _tag_text(label) -> str:
    t = re.sub(r"\s+", " ", _text(label)).strip()
    m = re.fullmatch(r"\((.*)\)", t)
    return (m.group(1) if m else t).strip()


def convert(el, variant: str | None = None) -> str:
    """LaTeX for a MathML element (an lxml element: ``<math>`` or any node inside it)."""
    tag = _local(el.tag)
    kids = _children(el)
    text = (el.text or "").strip()
    v = el.get("mathvariant") or variant

    def c(i):
        return convert(kids[i], v) if i < len(kids) else ""

    if tag in ("mi", "mn", "mo", "ms"):
        text = _text(el)
        if tag == "mi" and el.get("mathvariant") is None and len(text) == 1 and variant == "normal":
            v = "normal"
        return styled(text, v if tag != "mo" else el.get("mathvariant"), tag)
    if tag == "mtext":
        text = re.sub(r"\s+", " ", _text(el))
        return r"\text{" + text + "}" if text.strip() else " "
    if tag == "mspace":
        return " "
    if tag == "mfrac":
        if (el.get("linethickness") or "").strip() in _ZERO:
            return r"\genfrac{}{}{0pt}{}{" + c(0) + "}{" + c(1) + "}"
        return r"\frac" + "{" + c(0) + "}{" + c(1) + "}"
    if tag == "msup":
        return _group(c(0)) + "^" + _group(c(1))
    if tag == "msub":
        return _group(c(0)) + "_" + _group(c(1))
    if tag == "msubsup":
        return _group(c(0)) + "_" + _group(c(1)) + "^" + _group(c(2))
    if tag == "msqrt":
        return r"\sqrt{" + _join([convert(k, v) for k in kids]) + "}"
    if tag == "mroot":
        return r"\sqrt[" + c(1) + "]{" + c(0) + "}"
    if tag in ("mover", "munder", "munderover"):
        return _overunder(tag, el, kids, c)
    if tag == "mfenced":
        open_, close = el.get("open", "("), el.get("close", ")")
        sep = el.get("separators", ",")
        inner = (sep[:1] or ",").join(convert(k, v) for k in kids)
        return _fence(open_) + inner + _fence(close)
    if tag == "mtable":
        return _table(el, kids, v)
    if tag == "menclose":
        notation = set((el.get("notation") or "").split())
        inner = _row(kids, v)
        for n, cmd in (("top", r"\overline"), ("bottom", r"\underline"), ("box", r"\boxed"),
                       ("roundedbox", r"\boxed"), ("updiagonalstrike", r"\cancel")):
            if n in notation:
                return cmd + "{" + inner + "}"
        return inner
    if tag in ("mphantom", "none", "mprescripts"):
        return ""
    if tag == "semantics":
        return c(0)
    if tag == "mstyle" and el.get("mathvariant"):
        variant = el.get("mathvariant")
    # math, mrow, mstyle, mpadded, menclose, merror, mtd, mtr, unknown: the children in order.
    return _row(kids, variant if tag == "mstyle" else v, _sym(text) if text else "")


def _row(kids: list, variant: str | None, lead: str = "") -> str:
    """Children of a row, with ``( mfrac[linethickness=0] )`` as ``\\binom`` and ``{ mtable`` as ``cases``."""
    parts = [lead] if lead else []
    i = 0
    while i < len(kids):
        k = kids[i]
        tag = _local(k.tag)
        prev_open = i > 0 and _is_fence(kids[i - 1], "(")
        if tag == "mfrac" and (k.get("linethickness") or "").strip() in _ZERO and prev_open and parts \
                and i + 1 < len(kids) and _is_fence(kids[i + 1], ")") and len(_children(k)) >= 2:
            a, b = _children(k)[:2]
            parts[-1] = r"\binom{" + convert(a, variant) + "}{" + convert(b, variant) + "}"
            i += 2
            continue
        if tag == "mtable" and i > 0 and parts and _is_fence(kids[i - 1], "{"):
            body = _table(k, _children(k), variant, cases=True)
            if body.startswith(r"\begin{cases}"):
                parts[-1] = body
                i += 2 if i + 1 < len(kids) and _is_fence(kids[i + 1], ("",)) else 1
                continue
        parts.append(convert(k, variant))
        i += 1
    return _join(parts)


def _overunder(tag, el, kids, c) -> str:
    base = c(0)
    if tag == "munderover":
        return _group(base) + "_" + _group(c(1)) + "^" + _group(c(2))
    mark_el = kids[1] if len(kids) > 1 else None
    mark = _text(mark_el) if mark_el is not None and _local(mark_el.tag) == "mo" else None
    accents = OVER_ACCENTS if tag == "mover" else UNDER_ACCENTS
    if mark and "\ue000" <= mark[0] <= "\uf8ff":  # MathJax's SVG font builds stretchy braces from private glyphs
        mark = "⏞" if tag == "mover" else "⏟"
    if mark is not None and mark in accents:
        cmd = accents[mark]
        if cmd == r"\bar" and mark in ("¯", "‾") and mark_el.get("stretchy") != "false" and \
                el.get("accent") != "true" and mark_el.get("accent") != "true":
            cmd = r"\overline"
        if cmd == r"\vec" and mark_el.get("stretchy") == "true":
            cmd = r"\overrightarrow"
        return cmd + "{" + base + "}"
    if base.startswith(LIMIT_BASES) or _local(kids[0].tag) == "mo" and kids[0].get("movablelimits") == "true":
        return base + ("_" if tag == "munder" else "^") + _group(c(1))
    return ("\\overset" if tag == "mover" else "\\underset") + "{" + c(1) + "}{" + base + "}"


def _align(cell) -> str | None:
    a = cell.get("columnalign")
    if a:
        return a.split()[0]
    cls = set((cell.get("class") or "").split())
    for side in ("left", "right", "center"):
        if f"tml-{side}" in cls:
            return side
    m = re.search(r"text-align:\s*(left|right|center)", cell.get("style") or "")
    return m.group(1) if m else None


def _table(el, rows, variant, cases: bool = False) -> str:
    """``<mtable>`` → matrix / aligned / cases / gathered, with ``mlabeledtr`` labels (and Temml's tag column) as
    ``\\tag``."""
    spec = (el.get("columnalign") or "").split()
    body_rows, tags, aligns = [], [], None
    for row in rows:
        rtag = _local(row.tag)
        if rtag not in ("mtr", "mlabeledtr"):
            continue
        cells = [cell for cell in row if _local(cell.tag) == "mtd"]
        label = None
        if rtag == "mlabeledtr" and cells:
            label, cells = cells[0], cells[1:]
        if "tml-tageqn" in (row.get("class") or "") or (len(cells) >= 3 and "width:50%" in (
                cells[0].get("style") or "").replace(" ", "")):
            last = cells[-1]
            cells = cells[1:-1]
            if _text(last):
                label = last
            spec = spec[1:-1] if len(spec) >= 3 else spec
        tags.append(_tag_text(label) if label is not None else None)
        row_aligns = [_align(cell) or (spec[min(j, len(spec) - 1)] if spec else None)
                      for j, cell in enumerate(cells)]
        if len(cells) >= 2 and all(a is None for a in row_aligns) and all(
                len(cell) and _local(cell[0].tag) == "mi" and not _text(cell[0]) and not cell[0].tail
                for cell in cells[1::2]):  # MathJax writes "&=" as <mtd><mi></mi><mo>=</mo>
            row_aligns = ["right" if j % 2 == 0 else "left" for j in range(len(cells))]
        aligns = aligns or row_aligns
        body_rows.append([convert(cell, variant) for cell in cells])
    ncols = max((len(r) for r in body_rows), default=0)
    aligns = aligns or []
    alternating = ncols >= 2 and all(a == ("right" if j % 2 == 0 else "left") for j, a in enumerate(aligns))
    display = el.get("displaystyle") == "true" or any(tags)
    labelled = any(t for t in tags)

    def joined(env):
        lines = []
        for cells, t in zip(body_rows, tags):
            line = " & ".join(cells)
            if t and env != "aligned":
                line += r" \tag{" + t + "}"
            lines.append(line)
        return lines

    if cases and ncols >= 1 and all(a in ("left", None) for a in aligns):
        return r"\begin{cases}" + r" \\ ".join(joined("cases")) + r"\end{cases}"
    if ncols == 1 and len(body_rows) == 1 and display:
        return joined("")[0]
    if alternating and display:
        env = "align" if labelled else "aligned"
        return rf"\begin{{{env}}}" + r" \\ ".join(joined(env)) + rf"\end{{{env}}}"
    if ncols == 1 and display:
        env = "gather" if labelled else "gathered"
        return rf"\begin{{{env}}}" + r" \\ ".join(joined(env)) + rf"\end{{{env}}}"
    return r"\begin{matrix}" + r" \\ ".join(joined("matrix")) + r"\end{matrix}"


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
