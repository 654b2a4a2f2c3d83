"""The math-extraction regression set: pages with known formulas, for tests and benchmarks/bench_math_extract.py.

Two sources, each page tagged ``dev`` (used while developing the extractor) or ``holdout`` (written before the
extractor changes and not tuned on):

- ``tests/data/pages/``: pages written for this set. ``{split}__{renderer}.html`` come from the real renderers
  (``generate.js``: MathJax 3.2.2 CHTML and SVG without assistive MathML, MathJax's TeX→MathML without annotations,
  Temml, KaTeX, MathJax 2 script tags) over ``formulas.json``; the others (image services, raw environments,
  numbered equations) are written by hand, their formulas in ``expected.json``.
- real pages in the shared data folder: the MathJax demo page (as served, and with its assistive MathML removed so
  only the CHTML glyph tree is left) and two Wikipedia pages (as served; with their TeX annotations removed so the
  MathML must be converted; with the MathML removed so only the fallback images' alt text is left).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PAGES = Path(__file__).resolve().parent / "pages"

# The MathJax demo page's formulas, as the MathJax samples write them (truth written by hand from the samples).
MATHJAX_DEMO = [
    r"a \ne 0", r"ax^2 + bx + c = 0", r"x = {-b \pm \sqrt{b^2-4ac} \over 2a}.",
    r"\begin{aligned} \dot{x} & = \sigma(y-x) \\ \dot{y} & = \rho x - y - xz \\ \dot{z} & = -\beta z + xy "
    r"\end{aligned}",
    r"\left( \sum_{k=1}^n a_k b_k \right)^2 \leq \left( \sum_{k=1}^n a_k^2 \right) \left( \sum_{k=1}^n b_k^2 \right)",
    r"\mathbf{V}_1 \times \mathbf{V}_2 = \begin{vmatrix} \mathbf{i} & \mathbf{j} & \mathbf{k} \\ "
    r"\frac{\partial X}{\partial u} & \frac{\partial Y}{\partial u} & 0 \\ "
    r"\frac{\partial X}{\partial v} & \frac{\partial Y}{\partial v} & 0 \end{vmatrix}",
    "k", "n", r"P(E) = {n \choose k} p^k (1-p)^{ n-k}",
    r"\frac{1}{\Bigl(\sqrt{\phi \sqrt{5}}-\phi\Bigr) e^{\frac25 \pi}} = 1+\frac{e^{-2\pi}} {1+\frac{e^{-4\pi}} "
    r"{1+\frac{e^{-6\pi}} {1+\frac{e^{-8\pi}} {1+\ldots} } } }",
    r"1 + \frac{q^2}{(1-q)}+\frac{q^6}{(1-q)(1-q^2)}+\cdots = \prod_{j=0}^{\infty}\frac{1}{(1-q^{5j+2})(1-q^{5j+3})},"
    r" \quad\quad \text{for $|q|<1$}.",
    r"\begin{aligned} \nabla \times \vec{\mathbf{B}} -\, \frac1c\, \frac{\partial\vec{\mathbf{E}}}{\partial t} & = "
    r"\frac{4\pi}{c}\vec{\mathbf{j}} \\ \nabla \cdot \vec{\mathbf{E}} & = 4 \pi \rho \\ \nabla \times "
    r"\vec{\mathbf{E}}\, +\, \frac1c\, \frac{\partial\vec{\mathbf{B}}}{\partial t} & = \vec{\mathbf{0}} \\ "
    r"\nabla \cdot \vec{\mathbf{B}} & = 0 \end{aligned}",
    r"\sqrt{3x-1}+(1+x)^2",
]
WIKIPEDIA = ("readability-math/wikipedia-3__source.html", "trafilatura-eval/en.wikipedia.org.tsne.html")


def own_pages() -> list[dict]:
    """This repository's pages: ``{"name", "split", "renderer", "html", "formulas"}``."""
    sets = json.loads((PAGES / "formulas.json").read_text(encoding="utf-8"))
    hand = json.loads((PAGES / "expected.json").read_text(encoding="utf-8"))
    out = []
    for path in sorted(PAGES.glob("*.html")):
        split, renderer = path.stem.split("__")
        formulas = hand[path.stem] if path.stem in hand else [tex for tex, _ in sets[split]]
        out.append({"name": path.stem, "split": split, "renderer": renderer,
                    "html": path.read_text(encoding="utf-8"), "formulas": formulas})
    return out


def _without(html: str, pattern: str) -> str:
    return re.sub(pattern, "", html, flags=re.S | re.I)


def shared_pages(root: Path) -> list[dict]:
    """Real pages from the shared data folder (none where it is absent), all held out except where noted."""
    import lxml.html

    out = []
    demo = root / "readability-math" / "mathjax__source.html"
    if demo.exists():
        html = demo.read_text(encoding="utf-8")
        out.append({"name": "real mathjax demo (CHTML + assistive MathML)", "split": "holdout",
                    "renderer": "mathjax3-assistive", "html": html, "formulas": MATHJAX_DEMO})
        out.append({"name": "real mathjax demo, assistive MathML removed", "split": "holdout",
                    "renderer": "mathjax3-chtml", "formulas": MATHJAX_DEMO,
                    "html": _without(html, r"<mjx-assistive-mml\b.*?</mjx-assistive-mml>")})
    for rel in WIKIPEDIA:
        path = root / rel
        if not path.exists():
            continue
        html = path.read_text(encoding="utf-8")
        doc = lxml.html.document_fromstring(html)
        truth = [a.text for a in doc.iter() if isinstance(a.tag, str) and a.tag.endswith("annotation")
                 and "tex" in (a.get("encoding") or "")]
        out.append({"name": f"real {rel} (MathML + TeX)", "split": "holdout", "renderer": "wikipedia",
                    "html": html, "formulas": truth})
        bare = _without(_without(html, r"<annotation\b[^>]*>.*?</annotation>"), r'\salttext="[^"]*"')
        out.append({"name": f"real {rel}, TeX annotations removed", "split": "holdout",
                    "renderer": "wikipedia-mathml", "html": bare, "formulas": truth})
        imgs = _without(html, r"<math\b.*?</math>")
        out.append({"name": f"real {rel}, MathML removed (fallback images)", "split": "holdout",
                    "renderer": "wikipedia-img", "html": imgs, "formulas": truth})
    return out
