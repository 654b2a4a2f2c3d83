"""Generated math web pages with known formulas, in every format the extractor handles — for the quickstart, the
formula-recall benchmark and tests (no download needed). Each page lists the LaTeX it contains."""

from __future__ import annotations

import html as _html
import random
import zlib
from urllib.parse import quote

FORMULAS = [
    r"x^2 + y^2 = r^2", r"\frac{a}{b} + \frac{c}{d} = \frac{ad + bc}{bd}", r"\sqrt{2} \approx 1.414",
    r"\int_0^1 x^2 \, dx = \frac{1}{3}", r"\sum_{k=1}^{n} k = \frac{n(n+1)}{2}", r"e^{i\pi} + 1 = 0",
    r"\lim_{x \to 0} \frac{\sin x}{x} = 1", r"a^2 + b^2 = c^2", r"\binom{n}{k} = \frac{n!}{k!(n-k)!}",
    r"f'(x) = 2x + 3", r"\log_2 1024 = 10", r"\alpha + \beta = \gamma", r"P(A \mid B) = \frac{P(B \mid A)P(A)}{P(B)}",
    r"\det(A) = ad - bc", r"\nabla \cdot \vec{E} = \frac{\rho}{\varepsilon_0}", r"3 \times 7 = 21",
    r"\pi r^2", r"\sin^2\theta + \cos^2\theta = 1", r"x = \frac{-b \pm \sqrt{b^2 - 4ac}}{2a}", r"n! > 2^n",
]
FORMATS = ["mathjax2", "mathjax2-display", "katex", "mathml-tex", "data-tex", "img-alt", "codecogs", "wp-latex",
           "raw-dollar", "raw-paren"]
TOPICS = ["algebra", "geometry", "calculus", "probability", "number theory", "linear algebra"]
BOILER = ('<nav><a href="/">Home</a> | <a href="/forum">Forum</a> | <a href="/login">Log in</a></nav>',
          '<footer>Copyright 2026 MathSite. <a href="/privacy">Privacy</a> | Cookies help us deliver our services.'
          '</footer>')


def render(tex: str, fmt: str) -> str:
    """One formula as a page would carry it."""
    e = _html.escape(tex)
    if fmt == "mathjax2":  # script content is raw text: no entity escaping (as on real pages)
        return f'<script type="math/tex">{tex}</script><span class="MathJax_Preview">{e[:6]}</span>'
    if fmt == "mathjax2-display":
        return f'<script type="math/tex; mode=display">{tex}</script><div class="MathJax_Display">rendered</div>'
    if fmt == "katex":
        return ('<span class="katex"><span class="katex-mathml"><math><semantics><mrow><mi>x</mi></mrow>'
                f'<annotation encoding="application/x-tex">{e}</annotation></semantics></math></span>'
                '<span class="katex-html" aria-hidden="true">x y z</span></span>')
    if fmt == "mathml-tex":
        return (f'<span class="mwe-math-element"><math alttext="{{\\displaystyle {e}}}"><semantics><mrow><mi>x'
                f'</mi></mrow><annotation encoding="application/x-tex">{{\\displaystyle {e}}}</annotation>'
                f'</semantics></math><img class="mwe-math-fallback-image-inline" src="f.svg" alt="{e}"></span>')
    if fmt == "data-tex":
        return f'<span class="math" data-tex="{e}">formula</span>'
    if fmt == "img-alt":
        return f'<img src="/eq/{zlib.crc32(tex.encode()) % 9999}.png" alt="{e}">'
    if fmt == "codecogs":
        return f'<img src="https://latex.codecogs.com/png.latex?{quote(tex)}" alt="equation">'
    if fmt == "wp-latex":
        return f'<img src="https://s0.wp.com/latex.php?latex={quote(tex)}&amp;bg=ffffff" alt="{e}" class="latex">'
    if fmt == "raw-dollar":
        return f"${e}$"
    if fmt == "raw-paren":
        return f"\\({e}\\)"
    raise ValueError(f"unknown format {fmt}")


def make_page(rng: random.Random, i: int, n_formulas: int = 4, fmt: str | None = None) -> dict:
    """``{"source", "html", "formulas": [tex...], "format"}`` — a lesson page with boilerplate around it."""
    topic = rng.choice(TOPICS)
    chosen = rng.sample(FORMULAS, n_formulas)
    fmt = fmt or FORMATS[i % len(FORMATS)]
    paras = []
    for k, tex in enumerate(chosen):
        paras.append(f"<p>Step {k + 1} of the {topic} lesson. We use {render(tex, fmt)} to continue, "
                     f"which follows from the previous step and the definition.</p>")
    body = (f"{BOILER[0]}<h1>Lesson {i}: {topic}</h1>{''.join(paras)}"
            f"<ul><li>Exercise: try it with n = {rng.randint(2, 9)}</li><li>Check your answer</li></ul>{BOILER[1]}")
    return {"source": f"https://math.example.org/lesson/{i}", "format": fmt, "formulas": chosen,
            "html": f"<html><head><title>Lesson {i}</title></head><body>{body}</body></html>"}


def make_pages(n: int = 20, seed: int = 0, n_formulas: int = 4) -> list[dict]:
    rng = random.Random(seed)
    return [make_page(rng, i, n_formulas) for i in range(n)]
