"""MathJax 3 output → MathML, for pages where MathJax left no TeX and no assistive MathML: the CHTML glyph tree
(``<mjx-mi><mjx-c class="mjx-c1D465 TEX-I">``) or the SVG tree (``<g data-mml-node="mi"><use data-c="1D465">``) is
rebuilt as the presentation MathML it was rendered from, and :func:`refinery.data.math_web.mathml.convert` turns
that into LaTeX. Both outputs keep the MathML node names, the characters (as code points) and the font
(``TEX-B``/``mjx-b`` bold, ``mjx-ds`` double-struck, …), which is what the LaTeX needs; layout (struts, boxes,
spacers, surds, fraction lines) is dropped."""

from __future__ import annotations

import re

from lxml import etree

_HEX = re.compile(r"\bmjx-c([0-9A-Fa-f]{2,6})\b")
# CHTML font classes (on mjx-mi/mo/mn/mtext) and TeX font names (in mjx-c classes, SVG glyph ids) → mathvariant
_CLASS_VARIANT = {"mjx-b": "bold", "mjx-i": "italic", "mjx-n": "normal", "mjx-ds": "double-struck",
                  "mjx-cal": "-tex-calligraphic", "mjx-fr": "fraktur", "mjx-ss": "sans-serif", "mjx-ty": "monospace",
                  "mjx-tt": "monospace", "mjx-scr": "script", "mjx-sc": "script", "mjx-bi": "bold-italic",
                  "mjx-mit": "-tex-mathit"}
_FONT_VARIANT = {"B": "bold", "BI": "bold-italic", "I": "italic", "N": "normal", "A": "double-struck",
                 "C": "-tex-calligraphic", "CB": "-tex-calligraphic", "FR": "fraktur", "FRB": "fraktur",
                 "SS": "sans-serif", "SSB": "sans-serif", "SSI": "sans-serif", "T": "monospace", "SC": "script",
                 "MI": "-tex-mathit"}
# Pieces SVG stacks to draw a tall delimiter → the delimiter
_PIECES = {**dict.fromkeys("⎛⎜⎝", "("), **dict.fromkeys("⎞⎟⎠", ")"), **dict.fromkeys("⎡⎢⎣", "["),
           **dict.fromkeys("⎤⎥⎦", "]"), **dict.fromkeys("⎧⎨⎩⎪", "{"), **dict.fromkeys("⎫⎬⎭", "}"),
           "⏐": "|", "∣": "|", "∥": "‖"}
TOKENS = {"mi", "mn", "mo", "mtext", "ms"}
LAYOUT = {"mjx-nstrut", "mjx-dstrut", "mjx-tstrut", "mjx-line", "mjx-spacer", "mjx-surd", "mjx-mark",
          "mjx-assistive-mml", "mjx-labels", "mjx-speech"}


def _char(hexcode: str) -> str:
    try:
        return chr(int(hexcode, 16))
    except (ValueError, OverflowError):
        return ""


def _el(tag: str, children=(), text: str | None = None, **attrs) -> etree._Element:
    e = etree.Element(tag)
    for k, v in attrs.items():
        if v is not None:
            e.set(k.replace("_", "-"), v)
    if text:
        e.text = text
    for c in children:
        e.append(c)
    return e


# ---- CHTML ---------------------------------------------------------------------------------------------------
def _chtml_text(el) -> tuple[str, str | None]:
    """The characters of a CHTML token and the TeX font of its glyphs."""
    chars, font = [], None
    for c in el.iter():
        if not isinstance(c.tag, str):
            continue
        cls = c.get("class") or ""
        if c.tag in ("mjx-c", "mjx-stretchy-v", "mjx-stretchy-h") and (m := _HEX.search(cls)):
            if c.tag != "mjx-c" or not any(a.tag.startswith("mjx-stretchy") for a in c.iterancestors()):
                chars.append(_char(m.group(1)))
            f = re.search(r"\bTEX-([A-Z0-9]+)\b", cls)
            font = font or (f.group(1) if f else None)
        elif c.tag == "mjx-c" and (c.text or "").strip():
            chars.append(c.text.strip())
        elif c.tag == "mjx-utext":  # characters MathJax's fonts lack are written as text
            chars.append(c.text or "")
    return "".join(chars), font


def _find(el, names: set[str]):
    """The first descendants named in ``names``, not looking inside nested math nodes."""
    out = []
    for c in el:
        if not isinstance(c.tag, str):
            continue
        if c.tag in names:
            out.append(c)
        elif not _is_node(c.tag):
            out.extend(_find(c, names))
    return out


def _is_node(tag: str) -> bool:
    return tag.startswith("mjx-m") and tag not in ("mjx-math", "mjx-mark")


def _kids(el) -> list:
    """MathML children built from a CHTML element's content (layout wrappers looked through)."""
    out = []
    for c in el:
        if not isinstance(c.tag, str) or c.tag in LAYOUT:
            continue
        if _is_node(c.tag) or c.tag == "mjx-texatom":
            out.append(chtml_node(c))
        else:
            out.extend(_kids(c))
    return [o for o in out if o is not None]


def _row(kids: list):
    return kids[0] if len(kids) == 1 else _el("mrow", kids)


def _variant(el, font: str | None) -> str | None:
    cls = set((el.get("class") or "").split())
    if {"mjx-b", "mjx-i"} <= cls:
        return "bold-italic"
    for c in cls:
        if c in _CLASS_VARIANT and c != "mjx-i":
            return _CLASS_VARIANT[c]
    if font in _FONT_VARIANT:
        return _FONT_VARIANT[font]
    return "italic" if "mjx-i" in cls else None


def chtml_node(el):
    """A CHTML element (``mjx-math`` or any ``mjx-m*`` inside it) → a MathML element."""
    tag = el.tag[4:] if el.tag.startswith("mjx-") else el.tag
    if tag == "texatom":
        return _row(_kids(el))
    if tag in TOKENS:
        text, font = _chtml_text(el)
        v = _variant(el, font)
        if tag == "mi" and v == "italic":
            v = None
        stretchy = any(c.tag.startswith("mjx-stretchy") for c in el.iter() if isinstance(c.tag, str))
        return _el(tag, text=text, mathvariant=v if v not in (None, "italic") or tag == "mi" else None,
                   stretchy=("true" if stretchy else "false") if tag == "mo" else None)
    if tag in ("msup", "msub", "msubsup"):
        base = [c for c in el if isinstance(c.tag, str) and c.tag not in ("mjx-script",) and c.tag not in LAYOUT]
        script = _find(el, {"mjx-script"})
        parts = _kids(script[0]) if script else []
        b = chtml_node(base[0]) if base else _el("mrow")
        b = b if b is not None else _el("mrow")
        if tag == "msubsup" and len(parts) >= 2:  # CHTML writes the superscript first
            return _el("msubsup", [b, parts[1], parts[0]])
        return _el(tag, [b, _row(parts) if parts else _el("mrow")])
    if tag == "mfrac":
        num, den = _find(el, {"mjx-num"}), _find(el, {"mjx-den"})
        frac = _find(el, {"mjx-frac"})
        atop = bool(frac) and (frac[0].get("atop") == "true" or not _find(frac[0], {"mjx-line"}) and not any(
            c.tag == "mjx-line" for c in frac[0].iter()))
        return _el("mfrac", [_row(_kids(num[0]) if num else []), _row(_kids(den[0]) if den else [])],
                   linethickness="0" if atop else None)
    if tag == "msqrt":
        box = _find(el, {"mjx-box"})
        return _el("msqrt", [_row(_kids(box[0]) if box else _kids(el))])
    if tag == "mroot":
        root, box = _find(el, {"mjx-root"}), _find(el, {"mjx-box"})
        return _el("mroot", [_row(_kids(box[0]) if box else []), _row(_kids(root[0]) if root else [])])
    if tag in ("mover", "munder", "munderover") and _find(el, {"mjx-script"}) and not _find(el, {"mjx-base"}):
        # movable limits in inline math: CHTML lays them out as scripts (superscript first)
        nodes = [c for c in el if isinstance(c.tag, str) and c.tag != "mjx-script" and c.tag not in LAYOUT]
        b = chtml_node(nodes[0]) if nodes else _el("mrow")
        parts = _kids(_find(el, {"mjx-script"})[0])
        if tag == "munderover" and len(parts) >= 2:
            return _el("munderover", [b, parts[1], parts[0]])
        return _el(tag, [b, _row(parts) if parts else _el("mrow")])
    if tag in ("mover", "munder", "munderover"):
        base, under, over = _find(el, {"mjx-base"}), _find(el, {"mjx-under"}), _find(el, {"mjx-over"})
        if not base:  # munderover nests its munder in a box
            inner = _find(el, {"mjx-munder"})
            if inner:
                base, under = _find(inner[0], {"mjx-base"}), _find(inner[0], {"mjx-under"})
        b = _row(_kids(base[0]) if base else [])
        u = _row(_kids(under[0])) if under else None
        o = _row(_kids(over[0])) if over else None
        if tag == "munderover" and u is not None and o is not None:
            return _el("munderover", [b, u, o])
        return _el(tag, [b, (u if tag == "munder" else o) if (u if tag == "munder" else o) is not None
                         else _el("mrow")])
    if tag == "mtable":
        labels = [_row(_kids(m)) for m in _find(_find(el, {"mjx-labels"})[0], {"mjx-mtd"})] \
            if _find(el, {"mjx-labels"}) else []
        rows = []
        table = _find(el, {"mjx-table"})
        for r in _find(table[0] if table else el, {"mjx-mtr", "mjx-mlabeledtr"}):
            cells = []
            for cell in _find(r, {"mjx-mtd"}):
                m = re.search(r"text-align:\s*(left|right|center)", cell.get("style") or "")
                cells.append(_el("mtd", _kids(cell), columnalign=m.group(1) if m else None))
            if r.tag == "mjx-mlabeledtr":
                cells.insert(0, _el("mtd", [labels.pop(0)] if labels else []))
            rows.append(_el(r.tag[4:], cells))
        return _el("mtable", rows)
    if tag in ("mphantom",):
        return None
    if tag == "mspace":
        return _el("mspace")
    return _el("mrow" if tag not in ("math", "mstyle", "mpadded", "menclose", "mtd", "merror") else tag,
               _kids(el))


def from_chtml(container) -> etree._Element | None:
    """``<mjx-container>`` (CHTML) → ``<math>``, or None when it holds no ``mjx-math``."""
    maths = [e for e in container.iter("mjx-math")]
    if not maths:
        return None
    m = _el("math", _kids(maths[0]), display="block" if container.get("display") == "true" else None)
    _display_tables(m, container.get("display") == "true")
    return m


def _display_tables(math, display: bool) -> None:
    """A display formula's outer table (MathJax wraps numbered and aligned equations in one) is a display table."""
    if display:
        for t in math:
            if t.tag == "mtable":
                t.set("displaystyle", "true")
    else:
        for t in math.iter("mtable"):
            if t.get("displaystyle") == "true" and not any(r.tag == "mlabeledtr" for r in t):
                del t.attrib["displaystyle"]


# ---- SVG -----------------------------------------------------------------------------------------------------
def _svg_local(tag) -> str:
    return tag.split("}")[-1] if isinstance(tag, str) else ""


def _svg_text(el) -> tuple[str, str | None]:
    chars, font = [], None
    for c in el.iter():
        t = _svg_local(c.tag)
        if t in ("use", "path") and c.get("data-c"):
            chars.append(_char(c.get("data-c")))
            href = c.get("{http://www.w3.org/1999/xlink}href") or c.get("xlink:href") or c.get("href") or ""
            f = re.search(r"TEX-([A-Z0-9]+)-", href)
            font = font or (f.group(1) if f else None)
        elif t == "text" and (c.text or "").strip():
            chars.append(c.text)
            font = font or {"normal": "N", "bold": "B", "italic": "I"}.get(c.get("data-variant") or "", None)
    return "".join(chars), font


def _svg_kids(el) -> list:
    out = []
    for c in el:
        t = _svg_local(c.tag)
        if t in ("rect", "defs", "title", "desc", "use", "path", "text") or not isinstance(c.tag, str):
            continue
        if c.get("data-labels") == "true":
            continue
        if c.get("data-mml-node"):
            n = svg_node(c)
            if n is not None:
                out.append(n)
        else:
            inner = _svg_kids(c)
            out.append(_el("mrow", inner)) if len(inner) > 1 and t == "g" else out.extend(inner)
    return out


def svg_node(el):
    """A ``<g data-mml-node=…>`` → a MathML element."""
    tag = el.get("data-mml-node")
    if tag == "TeXAtom":
        return _row(_svg_kids(el))
    if tag in TOKENS:
        text, font = _svg_text(el)
        v = _FONT_VARIANT.get(font or "")
        if tag == "mi" and v == "italic":
            v = None
        stretchy = tag == "mo" and (any(_svg_local(c.tag) == "svg" for c in el.iter()) or any(
            "\ue000" <= ch <= "\uf8ff" or ch in _PIECES for ch in text))
        if stretchy and text:
            text = _PIECES.get(text[0], text[0])
        return _el(tag, text=text,
                   mathvariant=v if v not in (None, "italic") or tag == "mi" else None,
                   stretchy=("true" if stretchy else "false") if tag == "mo" else None)
    if tag == "mphantom":
        return None
    kids = _svg_kids(el)
    if tag in ("msqrt", "mroot"):
        kids = [k for k in kids if not (k.tag == "mo" and (k.text or "") == "√")]
        if tag == "msqrt":
            return _el("msqrt", [_row(kids)])
        return _el("mroot", kids[:2])
    if tag == "mfrac":
        return _el("mfrac", kids[:2])
    return _el(tag if tag in ("math", "mstyle", "mpadded", "menclose", "merror", "mtd", "mtr", "msup", "msub",
                              "msubsup", "mover", "munder", "munderover", "mspace", "mrow", "mtable", "mfenced")
               else "mrow", kids)


def _nearest_row(cell):
    for a in cell.iterancestors():
        if a.get("data-mml-node") in ("mtr", "mlabeledtr"):
            return a
    return None


def from_svg(container) -> etree._Element | None:
    """``<mjx-container><svg>`` → ``<math>``, or None when it holds no ``data-mml-node="math"``."""
    top = [g for g in container.iter() if isinstance(g.tag, str) and g.get("data-mml-node") == "math"]
    if not top:
        return None
    labels = [_row(_svg_kids(m)) for lab in container.iter() if isinstance(lab.tag, str)
              and lab.get("data-labels") == "true" and _svg_local(lab.tag) == "g"
              for m in lab.iter() if m.get("data-mml-node") == "mtd"]
    _LABELS.clear()
    _LABELS.extend(labels)
    m = _svg_math(top[0])
    display = container.get("display") == "true"
    m.set("display", "block") if display else None
    _display_tables(m, display)
    return m


_LABELS: list = []


def _svg_math(top):
    """Build with the equation labels fed to the labelled rows in order."""
    def build(el):
        tag = el.get("data-mml-node")
        if tag == "mtable":
            rows = [r for r in el.iter() if r.get("data-mml-node") in ("mtr", "mlabeledtr")
                    and _nearest_table(r) is el]
            out = []
            for r in rows:
                cells = [build(c) for c in r.iter() if c.get("data-mml-node") == "mtd" and _nearest_row(c) is r]
                if r.get("data-mml-node") == "mlabeledtr":
                    cells.insert(0, _el("mtd", [_LABELS.pop(0)] if _LABELS else []))
                out.append(_el(r.get("data-mml-node"), cells))
            return _el("mtable", out)
        if tag in TOKENS or tag in ("mphantom", "TeXAtom"):
            return svg_node(el)
        kids = []
        for c in el:
            if not isinstance(c.tag, str) or c.get("data-labels") == "true":
                continue
            if c.get("data-mml-node"):
                n = build(c)
                if n is not None:
                    kids.append(n)
            elif _svg_local(c.tag) in ("g", "svg"):
                inner = _svg_build_all(c, build)
                kids.append(_el("mrow", inner)) if len(inner) > 1 else kids.extend(inner)
        if tag in ("msqrt", "mroot"):
            kids = [k for k in kids if not (k.tag == "mo" and (k.text or "") == "√")]
            return _el("msqrt", [_row(kids)]) if tag == "msqrt" else _el("mroot", kids[:2])
        if tag in ("msubsup", "munderover") and len(kids) == 3:  # sub/under is the lower of the two (y is up)
            ys = [_y(c) for c in el if isinstance(c.tag, str) and c.get("data-mml-node")][1:3]
            if len(ys) == 2 and ys[0] is not None and ys[1] is not None and ys[0] > ys[1]:
                kids = [kids[0], kids[2], kids[1]]
        if tag == "mfrac":
            line = any(_svg_local(c.tag) == "rect" for c in el)
            return _el("mfrac", kids[:2], linethickness=None if line else "0")
        if tag == "TeXAtom":
            return _row(kids)
        keep = ("math", "mstyle", "mpadded", "menclose", "merror", "mtd", "msup", "msub", "msubsup", "mover",
                "munder", "munderover", "mspace", "mrow", "mfrac", "mfenced")
        return _el(tag if tag in keep else "mrow", kids)

    return build(top)


def _svg_build_all(el, build) -> list:
    out = []
    for c in el:
        if not isinstance(c.tag, str) or c.get("data-labels") == "true":
            continue
        if c.get("data-mml-node"):
            n = build(c)
            if n is not None:
                out.append(n)
        elif _svg_local(c.tag) in ("g", "svg"):
            out.extend(_svg_build_all(c, build))
    return out


def _y(el) -> float | None:
    m = re.search(r"translate\(\s*[-\d.e]+\s*[, ]\s*([-\d.e]+)", el.get("transform") or "")
    return float(m.group(1)) if m else 0.0


def _nearest_table(row):
    for a in row.iterancestors():
        if a.get("data-mml-node") == "mtable":
            return a
    return None


def tex_from_container(container) -> str | None:
    """LaTeX for a MathJax 3 container with no TeX and no MathML left: ``data-latex`` if MathJax 4 left it, else
    the formula rebuilt from its CHTML or SVG tree; None when neither is there."""
    from refinery.data.math_web.mathml import convert

    for e in container.iter():
        if isinstance(e.tag, str) and (e.tag == "mjx-math" or e.get("data-mml-node") == "math") and e.get(
                "data-latex"):
            return e.get("data-latex")
    m = from_svg(container) if container.get("jax") == "SVG" or any(
        _svg_local(e.tag) == "svg" for e in container.iter() if isinstance(e.tag, str)) else None
    if m is None:
        m = from_chtml(container)
    if m is None:
        return None
    tex = convert(m).strip()
    return tex or None
