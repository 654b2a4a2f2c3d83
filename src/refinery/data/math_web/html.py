"""Math-preserving HTML → text (Nemotron-CC-Math stage 1).

Plain lynx drops MathJax v2 ``<script type="math/tex">`` and flattens rendered MathJax / KaTeX / MathML into
garbled Unicode. So every math element is first rewritten in the DOM into a placeholder token that carries its
LaTeX: MathJax script tags (inline and display), MathJax v3 assistive MathML, KaTeX's TeX annotation, MathML (its
TeX annotation or ``alttext``, else a MathML→LaTeX conversion), ``data-tex``/``data-math``/``data-latex``
attributes, LaTeX in image ``alt`` text and LaTeX-image-service URLs (codecogs, wp-latex, Google charts, Wikimedia);
raw ``$…$`` / ``\\(…\\)`` in text are protected the same way. The page is then rendered with lynx (layout-aware:
tables, lists and ``<pre>`` keep their shape; run with a timeout and killed on hang) or, when lynx is absent, a
pure-Python renderer, and the tokens are replaced by ``$…$`` / ``$$…$$`` — so lynx never wraps a formula.

Parsing is robust to what real pages do: encoding declarations are removed from the (already decoded) text so
neither lxml nor lynx decodes it a second time (XHTML's ``<?xml … encoding=…?>`` made lxml refuse the page), and
pages nested deeper than libxml2's limit are flattened beyond a depth instead of losing everything after it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

from refinery.data.io import remove_encoding_declarations
from refinery.data.math_web.mathjax3 import tex_from_container
from refinery.data.math_web.mathml import convert, tex_annotation

TOKEN = "MATHPHX{:06d}X"
TOKEN_RE = re.compile(r"MATHPHX(\d{6})X")
MATHJAX_RENDERED = {"MathJax_Preview", "MathJax", "MathJax_Display", "MathJax_SVG", "MathJax_SVG_Display",
                    "MathJax_CHTML", "MathJax_MathML", "MJX_Assistive_MathML", "MathJax_PHTML"}
SKIP_TEXT = {"pre", "code", "script", "style", "textarea", "kbd", "samp", "tt"}
LATEX_SERVICES = ("codecogs.com", "wp.com/latex.php", "latex.php", "chart.apis.google.com", "chart.googleapis.com",
                  "mathurl.com", "quicklatex.com", "latex.artofproblemsolving.com", "/math/render/", "upmath.me",
                  "mimetex.cgi", "mathtex.cgi", "mathtran", "/tex2img")
RAW_MATH = re.compile(r"(\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$\w])\$(?=\S)[^$\n]{1,400}?(?<=\S)\$(?!\w))",
                      re.S)
ENVS = "equation|align|alignat|flalign|gather|multline|eqnarray|displaymath|math|dmath"
ENV_MATH = re.compile(r"\\begin\{(" + ENVS + r")(\*?)\}.+?\\end\{\1\2\}", re.S)
_OPEN_ENV = re.compile(r"\\begin\{(" + ENVS + r")(\*?)\}")
_EQ_LABEL = re.compile(r"(?:\\q?quad|\\hfill|\\hspace\{[^}]*\}|~|\\,|\s)+\(\s*([0-9][\w.\-]*|[A-Za-z]\d*|\*+)\s*\)\s*$")
_LATEXISH = re.compile(r"\\[A-Za-z]+|[\^_]\{|\^\d|_\d|\\[{}()\[\]]")
LIBXML_MAX_DEPTH = 2048  # libxml2's nesting limit with huge_tree (256 without): deeper content is silently lost
FLATTEN_DEPTH = 1000  # pages that reach the limit are re-parsed with tags beyond this depth unwrapped


@dataclass
class Formula:
    tex: str
    display: bool
    source: str  # mathjax | mathjax3 | katex | mathml-tex | mathml | data-attr | img-alt | img-url | raw


@dataclass
class Rewritten:
    html: str
    formulas: list[Formula] = field(default_factory=list)


def normalise_tex(tex: str) -> str:
    """Strip what carries no meaning: ``{\\displaystyle …}`` / ``\\displaystyle`` wrappers, ``$`` delimiters,
    surrounding whitespace."""
    t = tex.strip()
    for a, b in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if t.startswith(a) and t.endswith(b) and len(t) > len(a) + len(b):
            t = t[len(a): -len(b)].strip()
            break
    m = re.fullmatch(r"\{\\(?:displaystyle|textstyle)\s*(.*)\}", t, re.S)
    if m:
        t = m.group(1).strip()
    t = re.sub(r"^\\(?:displaystyle|textstyle)\s*", "", t)
    return t


def looks_like_latex(text: str) -> bool:
    t = text.strip()
    return bool(t) and (bool(_LATEXISH.search(t)) or (t.startswith("$") and t.endswith("$") and len(t) > 2))


_CODECOGS_OPTS = re.compile(r"^(?:\\(?:dpi\{\d+\}|bg\{\w+\}|fn\{\w+\}|(?:dpi\d+|bg_[A-Za-z]+|fg_[A-Za-z]+|fn_[A-Za-z]+|"
                            r"inline|tiny|small|normalsize|large|Large|LARGE|huge|Huge|displaystyle)(?![A-Za-z]))\s*)+")


def tex_from_url(src: str) -> str | None:
    """LaTeX encoded in a LaTeX-image-service URL: codecogs ``…?{tex}`` (with its ``&space;``/``&plus;`` and
    ``\\dpi``/``\\bg_white`` options), wp-latex ``latex.php?latex=``, Google charts ``chl=``, mimeTeX/mathTeX
    ``.cgi?{tex}``, upmath ``/svg/{tex}``."""
    if not src or not any(s in src for s in LATEX_SERVICES):
        return None
    import html as _html

    u = urlparse(src)
    if "codecogs.com" in src or ".cgi?" in src:
        raw = src.split("?", 1)[1] if "?" in src else ""
        raw = raw.replace("&space;", " ").replace("&plus;", "%2B").replace("&amp;", "&")
        if re.search(r"%[0-9A-Fa-f]{2}", raw):  # URL-encoded by a generic encoder: + is a space
            raw = raw.replace("+", " ")
        tex = _html.unescape(unquote(raw)).replace("&space;", " ").replace("&plus;", "+")
        return _CODECOGS_OPTS.sub("", tex.strip()).strip() or None
    if "upmath.me" in src:
        m = re.search(r"/(?:svg|png|gif)/(.+)$", u.path)
        return unquote(m.group(1)).strip() or None if m else None
    q = parse_qs(u.query.replace("&amp;", "&"))
    for key in ("latex", "chl", "tex", "eq"):
        if q.get(key):
            return q[key][0].strip() or None
    return None


_GENERIC_ALT = {"", "formula", "equation", "eq", "math", "latex", "image", "img", "tex", "quicklatex", "rendered",
                "rendered by quicklatex.com"}


def _trusted_alt(img) -> bool:
    """Images whose alt text is the formula by construction (LaTeX services, QuickLaTeX, wp-latex, Wikipedia)."""
    cls = " ".join(_classes(img))
    src = img.get("src") or ""
    return bool(re.search(r"\bql-img|\blatex\b|\btex\b|mwe-math-fallback|\bmathtex|\bwp-latex", cls)) or any(
        s in src for s in LATEX_SERVICES)


def _local(tag) -> str:
    """An element's local name: ``{ns}math`` and XHTML's prefixed ``m:math`` are both ``math``."""
    return tag.split("}")[-1].split(":")[-1] if isinstance(tag, str) else ""


# ---- parsing -------------------------------------------------------------------------------------------------
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
         "wbr", "basefont", "bgsound", "frame", "keygen", "isindex"}
_RAW_TEXT = {"script", "style", "textarea", "title", "xmp", "plaintext"}
_KEEP_WHOLE = {"math", "m:math", "pre", "svg", "mjx-container"}  # never unwrapped, even when deep
_TAG = re.compile(r"""<!--.*?(?:-->|$)|<(/?)([A-Za-z][^\s/>]*)((?:[^>"']|"[^"]*"|'[^']*')*)>""", re.S)
_CLOSES_SIBLING = {"p": {"p"}, "li": {"li"}, "dt": {"dt", "dd"}, "dd": {"dt", "dd"}, "option": {"option"},
                   "tr": {"tr", "td", "th"}, "td": {"td", "th"}, "th": {"td", "th"}}


def flatten_deep(html: str, max_depth: int = FLATTEN_DEPTH) -> str:
    """The HTML with every tag that would open beyond ``max_depth`` (and its end tag) removed — block tags become
    ``<br>`` so lines stay apart — and the text kept. Math, tables, ``<pre>`` and raw-text elements are kept whole.
    Depth is counted on the tag stream (end tags close up to their match; ``<p>``/``<li>``/cells close their open
    siblings), which never undercounts what libxml2 builds."""
    out: list[tuple[int, int, str]] = []
    stack: list[tuple[str, bool]] = []  # (tag, kept) of every open element, dropped ones included
    depth = pos = 0  # depth: kept elements open
    for m in _TAG.finditer(html):
        if m.start() < pos:  # inside a raw-text element already copied
            continue
        closing, name = m.group(1), m.group(2).lower()
        if m.group(0).startswith("<!--") or name in _VOID:
            continue
        if not closing:
            if name in _RAW_TEXT or name in _KEEP_WHOLE:
                end = re.compile(rf"</{re.escape(name)}\s*>", re.I).search(html, m.end())
                if name in _RAW_TEXT or end is not None:
                    pos = end.end() if end else len(html)
                    continue
            sib = _CLOSES_SIBLING.get(name)
            if sib and stack and stack[-1][0] in sib:
                depth -= stack.pop()[1]
            if m.group(3).rstrip().endswith("/"):
                continue
            keep = depth < max_depth
            stack.append((name, keep))
            depth += keep
            if not keep:
                out.append((m.start(), m.end(), "<br>" if name in BLOCKS else ""))
            continue
        i = next((k for k in range(len(stack) - 1, -1, -1) if stack[k][0] == name), None)
        if i is None:
            continue
        kept = stack[i][1]
        depth -= sum(k for _, k in stack[i:])
        del stack[i:]
        if not kept:
            out.append((m.start(), m.end(), "<br>" if name in BLOCKS else ""))
    if not out:
        return html
    parts, last = [], 0
    for a, b, sub in out:
        parts += [html[last:a], sub]
        last = b
    return "".join(parts) + html[last:]


def _depth(root) -> int:
    from lxml import etree

    depth = best = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        best = max(best, depth)
    return best


def parse_html(html: str):
    """A decoded page → its lxml document root (None when nothing parses): encoding declarations removed, libxml2's
    ``huge_tree`` on, and a page that reaches libxml2's depth limit re-parsed from :func:`flatten_deep`."""
    import lxml.html
    from lxml import etree

    html = remove_encoding_declarations(html)
    parser = lxml.html.HTMLParser(huge_tree=True)
    try:
        root = lxml.html.document_fromstring(html, parser=parser)
        if html.count("<") > LIBXML_MAX_DEPTH - 8 and _depth(root) >= LIBXML_MAX_DEPTH - 8:
            root = lxml.html.document_fromstring(flatten_deep(html), parser=parser)
    except (etree.ParserError, ValueError):
        return None
    return root


def _classes(el) -> set[str]:
    return set((el.get("class") or "").split())


def _replace(el, text: str) -> None:
    """Put ``text`` where ``el`` was (keeping the tail)."""
    parent = el.getparent()
    if parent is None:
        return
    tail = el.tail or ""
    prev = el.getprevious()
    if prev is not None:
        prev.tail = (prev.tail or "") + text + tail
    else:
        parent.text = (parent.text or "") + text + tail
    parent.remove(el)


def _drop(el) -> None:
    _replace(el, "")


def rewrite_math(html: str) -> Rewritten:
    """The page with every math element replaced by a placeholder token, and the formulas in page order."""
    import lxml.html

    out = Rewritten(html="")
    if not html or not html.strip():
        return out
    root = parse_html(html)
    if root is None:
        return out
    formulas = out.formulas

    def token(tex: str, display: bool, source: str) -> str:
        tex = normalise_tex(tex)
        if display and (m := _EQ_LABEL.search(tex)) and r"\tag" not in tex:
            tex = tex[: m.start()].rstrip() + r" \tag{" + m.group(1) + "}"  # a hand-written "(2)" is the tag
        formulas.append(Formula(tex, display, source))
        t = TOKEN.format(len(formulas) - 1)
        return f" {t} " if display else t

    # 1. MathJax v2 source scripts; their rendered twins go.
    scripts = [s for s in root.iter("script") if (s.get("type") or "").lower().startswith("math/tex")]
    for s in scripts:
        display = "mode=display" in (s.get("type") or "").lower()
        tex = re.sub(r"^\s*(?://\s*)?<!\[CDATA\[|(?://\s*)?\]\]>\s*$", "", s.text or "")  # XHTML wraps it
        _replace(s, token(tex, display, "mathjax"))
    if scripts:
        for el in [e for e in root.iter() if isinstance(e.tag, str) and _classes(e) & MATHJAX_RENDERED]:
            if el.getparent() is not None:
                _drop(el)
    # 2. MathJax v3 containers: the assistive MathML is the formula; without it the formula is rebuilt from the
    #    CHTML or SVG glyph tree. The glyphs themselves go.
    for el in list(root.iter("mjx-container")):
        if el.getparent() is None:
            continue
        maths = [m for m in el.iter() if _local(m.tag) == "math"]
        display = el.get("display") == "true"
        if maths:
            tex = tex_annotation(maths[0]) or convert(maths[0])
            _replace(el, token(tex, display, "mathjax3"))
            continue
        tex = tex_from_container(el)
        if tex:
            svg = any(_local(e.tag) == "svg" for e in el.iter())
            _replace(el, token(tex, display, "mathjax3-svg" if svg else "mathjax3-chtml"))
        else:
            _drop(el)
    # 3. KaTeX: the TeX annotation replaces the whole rendering.
    for el in [e for e in root.iter() if isinstance(e.tag, str) and "katex" in _classes(e)]:
        if el.getparent() is None:
            continue
        ann = [a for a in el.iter() if isinstance(a.tag, str) and a.tag.endswith("annotation")
               and "tex" in (a.get("encoding") or "")]
        if ann:
            anc = el.getparent()
            display = anc is not None and "katex-display" in _classes(anc)
            _replace(el, token(ann[0].text or "", display, "katex"))
    # 4. MathML (Wikipedia hides a fallback image next to each <math>: the image goes, the MathML stays).
    for img in [i for i in root.iter("img") if any(c.startswith("mwe-math-fallback") for c in _classes(i))]:
        parent = img.getparent()
        if parent is not None and any(_local(m.tag) == "math" for m in parent.iter()):
            _drop(img)
    for m in [e for e in root.iter() if _local(e.tag) == "math"]:
        if m.getparent() is None:
            continue
        tex = tex_annotation(m)
        src = "mathml-tex" if tex else "mathml"
        _replace(m, token(tex or convert(m), m.get("display") == "block", src))
    # 5. data-tex / data-math / data-latex attributes.
    for el in [e for e in root.iter() if isinstance(e.tag, str)]:
        if el.getparent() is None:
            continue
        for attr in ("data-tex", "data-math", "data-latex"):
            tex = el.get(attr)
            if tex and tex.strip():
                display = el.get("data-display") in ("block", "true") or el.tag == "div"
                _replace(el, token(tex, display, "data-attr"))
                break
    # 6. Images: LaTeX-service URLs, LaTeX alt text.
    for img in list(root.iter("img")):
        if img.getparent() is None:
            continue
        display = any(c.endswith("display") or c.endswith("displayed-equation") for c in _classes(img))
        tex = tex_from_url(img.get("src") or "")
        if tex:
            _replace(img, token(tex, display, "img-url"))
            continue
        alt = (img.get("alt") or "").strip()
        if looks_like_latex(alt) or (_trusted_alt(img) and alt.lower() not in _GENERIC_ALT):
            _replace(img, token(alt, display, "img-alt"))
    # 7. Raw delimited LaTeX in text: protected from wrapping (delimiters kept by kind).
    for el in list(root.iter()):
        if not isinstance(el.tag, str) or el.tag in SKIP_TEXT or any(
                a.tag in SKIP_TEXT for a in el.iterancestors() if isinstance(a.tag, str)):
            continue
        _merge_breaks(el)
        el.text = _protect(el.text, token)
        for child in el:  # a child's tail is this element's text, even when the child itself is code
            child.tail = _protect(child.tail, token)
    for el in list(root.iter("script", "style", "noscript", "template")):
        if el.getparent() is not None:
            _drop(el)
    out.html = lxml.html.tostring(root, encoding="unicode")
    return out


def _unclosed(text: str) -> bool:
    """Text that opens a display formula (an environment, ``\\[``, ``$$``) it does not close."""
    for m in _OPEN_ENV.finditer(text):
        if f"\\end{{{m.group(1)}{m.group(2)}}}" not in text[m.end():]:
            return True
    return text.count("\\[") > text.count("\\]") or text.count("$$") % 2 == 1


def _merge_breaks(el) -> None:
    """A display formula written over several lines (``\\begin{align}<br>a &= b<br>\\end{align}``) is joined into
    one text node so it can be recognised; only ``<br>`` elements between its pieces are removed."""
    kids = list(el)
    if not kids or not any("\\" in (t or "") or "$$" in (t or "") for t in [el.text] + [k.tail for k in kids]):
        return
    i = -1  # -1: el.text; k: kids[k].tail
    while i < len(kids):
        text = el.text if i < 0 else kids[i].tail
        if text and _unclosed(text):
            acc, j = text, i + 1
            while j < len(kids) and kids[j].tag in ("br", "wbr"):
                acc += "\n" + (kids[j].tail or "")
                if not _unclosed(acc):
                    break
                j += 1
            if j < len(kids) and kids[j].tag in ("br", "wbr") and not _unclosed(acc):
                for k in kids[i + 1: j + 1]:
                    el.remove(k)
                if i < 0:
                    el.text = acc
                else:
                    kids[i].tail = acc
                kids = list(el)
        i += 1


def _protect(text: str | None, token) -> str | None:
    if not text or ("$" not in text and "\\" not in text):
        return text

    def sub(m):
        raw = m.group(0)
        display = raw.startswith(("$$", "\\[", "\\begin"))
        return token(raw, display, "raw")

    return ENV_MATH.sub(sub, RAW_MATH.sub(sub, text))


def restore(text: str, formulas: list[Formula]) -> str:
    """Placeholder tokens → ``$tex$`` (inline) or ``$$tex$$`` (display, on its own line)."""

    def sub(m):
        i = int(m.group(1))
        if i >= len(formulas):
            return m.group(0)
        f = formulas[i]
        return f"\n$${f.tex}$$\n" if f.display else f"${f.tex}$"

    out = TOKEN_RE.sub(sub, text)
    out = re.sub(r"[ \t]+\n", "\n", out)
    return re.sub(r"\n{3,}", "\n\n", out).strip() + "\n"


# ---- renderers -----------------------------------------------------------------------------------------------
def lynx_available() -> bool:
    return shutil.which("lynx") is not None


class RenderError(RuntimeError):
    pass


def render_lynx(html: str, width: int = 120, timeout: float = 20.0) -> str:
    """``lynx -dump -nolist`` of the HTML (stdin), killed after ``timeout`` seconds."""
    cmd = ["lynx", "-dump", "-nolist", "-force_html", "-stdin", f"-width={width}", "-display_charset=utf-8",
           "-assume_charset=utf-8", "-nomargins", "-noreferer", "-nostatus"]
    try:
        proc = subprocess.run(cmd, input=html.encode("utf-8", "replace"), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError(f"lynx timed out after {timeout}s") from None
    except OSError as e:
        raise RenderError(f"lynx could not run: {e}") from None
    if proc.returncode != 0:
        raise RenderError(f"lynx exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}")
    return proc.stdout.decode("utf-8", "replace")


BLOCKS = {"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "h1", "h2", "h3", "h4",
          "h5", "h6", "ul", "ol", "dl", "dt", "dd", "table", "tr", "blockquote", "figure", "figcaption", "form",
          "hr", "br", "li", "pre", "body", "html", "address", "details", "summary", "caption", "center"}


def render_python(html: str) -> str:
    """A small layout-aware renderer for machines without lynx: blocks on their own lines, list bullets,
    table cells separated by `` | ``, ``<pre>`` verbatim, headings underlined. Iterative: any depth lxml builds
    renders."""
    root = parse_html(html)
    if root is None:
        return ""
    lines: list[str] = []
    cur: list[str] = []

    def flush():
        text = re.sub(r"[ \t\r\n]+", " ", "".join(cur)).strip()
        cur.clear()
        if text:
            lines.append(text)

    def enter(el, depth) -> bool:
        """Open ``el``; False when its children are not to be walked."""
        if not isinstance(el.tag, str):  # comments, processing instructions: only their tail is text
            return False
        tag = el.tag
        if tag in ("script", "style", "head", "title", "noscript", "template"):
            return False
        if tag == "pre":
            flush()
            lines.append(el.text_content().rstrip("\n"))
            return False
        if tag in BLOCKS:
            flush()
        if tag == "li":
            cur.append("  " * depth + "* ")
        if tag == "img" and el.get("alt"):
            cur.append(f"[{el.get('alt')}]")
        if el.text:
            cur.append(el.text)
        return True

    def leave(el):
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag in BLOCKS:
            flush()
            if tag in ("h1", "h2", "h3") and lines:
                lines.append(("=" if tag == "h1" else "-") * min(len(lines[-1]), 80))
        if tag in ("p", "h1", "h2", "h3", "h4", "table", "pre", "ul", "ol", "blockquote"):
            lines.append("")

    def after_child(parent, child):
        if parent.tag == "tr" and child.tag in ("td", "th"):
            cur.append(" | ")
        if child.tail:
            cur.append(child.tail)

    stack: list[tuple] = [("enter", root, 0)]
    while stack:
        op, el, *rest = stack.pop()
        if op == "enter":
            depth = rest[0]
            if not enter(el, depth):
                continue
            stack.append(("leave", el))
            sub = depth + (el.tag in ("ul", "ol"))
            for child in reversed(el):
                stack.append(("after", el, child))
                stack.append(("enter", child, sub))
        elif op == "after":
            after_child(el, rest[0])
        else:
            leave(el)
    flush()
    return "\n".join(lines)


def extract_math_text(html: str, renderer: str = "auto", width: int = 120, timeout: float = 20.0) -> dict:
    """HTML → ``{"text", "formulas", "formula_sources", "renderer"}`` with every formula as LaTeX."""
    rw = rewrite_math(html)
    if not rw.html:
        return {"text": "", "formulas": 0, "formula_sources": {}, "renderer": None}
    use = renderer
    if renderer == "auto":
        use = "lynx" if lynx_available() else "python"
    if use == "lynx":
        raw = render_lynx(rw.html, width=width, timeout=timeout)
    elif use == "python":
        raw = render_python(rw.html)
    else:
        raise ValueError(f"unknown renderer {renderer!r} (auto, lynx or python)")
    sources: dict[str, int] = {}
    for f in rw.formulas:
        sources[f.source] = sources.get(f.source, 0) + 1
    return {"text": restore(raw, rw.formulas), "formulas": len(rw.formulas), "formula_sources": sources,
            "renderer": use, "latex": [f.tex for f in rw.formulas]}
