"""Math-preserving extraction: every math format survives as LaTeX (formulas compared, not whole strings)."""

from __future__ import annotations

import re

import pytest

from refinery.data.math_web.html import (
    extract_math_text,
    lynx_available,
    normalise_tex,
    render_lynx,
    rewrite_math,
    tex_from_url,
)
from refinery.data.math_web.mathml import convert

RENDERERS = ["python"] + (["lynx"] if lynx_available() else [])


def formulas_in(text: str) -> list[str]:
    """The LaTeX of every $…$ / $$…$$ in the output, whitespace removed."""
    found = re.findall(r"\$\$(.+?)\$\$|\$(.+?)\$", text, re.S)
    return [re.sub(r"\s+", "", a or b) for a, b in found]


def squash(tex: str) -> str:
    return re.sub(r"\s+", "", tex)


HAND_PAGE = r"""<html><head><title>t</title><script>var x = 1;</script></head><body>
<nav>Home | About</nav>
<h1>Quadratics</h1>
<p>MathJax v2 inline: <script type="math/tex">x^2 + 1</script> and display:</p>
<script type="math/tex; mode=display">\int_0^1 x\,dx = \frac{1}{2}</script>
<span class="MathJax_Preview">x2+1</span><span class="MathJax">garbled x 2 + 1</span>
<p>KaTeX: <span class="katex"><span class="katex-mathml"><math><semantics><mrow><mi>a</mi></mrow>
<annotation encoding="application/x-tex">\alpha + \beta</annotation></semantics></math></span>
<span class="katex-html" aria-hidden="true">α+β</span></span> done.</p>
<p>MathML with TeX: <math alttext="e^{i\pi}+1=0"><mi>e</mi></math>.</p>
<p>MathML only: <math><mfrac><mi>a</mi><mi>b</mi></mfrac><mo>+</mo><msqrt><mi>x</mi></msqrt></math>.</p>
<p>Attribute: <span data-tex="\sum_{k=1}^n k">sum</span>.</p>
<p>Image alt: <img src="eq.png" alt="\sqrt{2} \approx 1.414"> and codecogs
<img src="https://latex.codecogs.com/png.latex?\frac{3}{4}" alt="eq"> and wp-latex
<img src="https://s0.wp.com/latex.php?latex=a%5E2%2Bb%5E2%3Dc%5E2&bg=ffffff" alt="a^2+b^2=c^2">.</p>
<p>Raw: the value $y = mx + b$ and \(z_1 \cdot z_2\) stay.</p>
<pre><code>for i in range(3):
    print(i)  # $not math$ in code
</code></pre>
<table><tr><td>n</td><td>n squared</td></tr><tr><td>3</td><td>9</td></tr></table>
<ul><li>first item</li><li>second item</li></ul>
</body></html>"""

EXPECTED = ["x^2 + 1", r"\int_0^1 x\,dx = \frac{1}{2}", r"\alpha + \beta", r"e^{i\pi}+1=0", r"\frac{a}{b}+\sqrt{x}",
            r"\sum_{k=1}^n k", r"\sqrt{2} \approx 1.414", r"\frac{3}{4}", "a^2+b^2=c^2", "y = mx + b",
            r"z_1 \cdot z_2"]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_every_math_format_survives(renderer):
    r = extract_math_text(HAND_PAGE, renderer=renderer)
    got = formulas_in(r["text"])
    for tex in EXPECTED:
        assert squash(tex) in got, (tex, got)
    assert "garbled" not in r["text"] and "x2+1" not in r["text"]  # MathJax v2's rendered twins are gone
    assert "α+β" not in r["text"]  # KaTeX's HTML rendering is gone
    assert "$$" + squash(r"\int_0^1 x\,dx = \frac{1}{2}") in squash(r["text"])  # display stays display
    assert "print(i)  # $not math$ in code" in r["text"]  # code verbatim, its dollars untouched
    assert "var x" not in r["text"]
    assert r["formula_sources"]["mathjax"] == 2 and r["formula_sources"]["katex"] == 1


def test_lynx_keeps_layout_and_never_wraps_a_formula():
    if not lynx_available():
        pytest.skip("lynx is not installed (make install installs it)")
    long = " + ".join(f"a_{{{i}}}" for i in range(60))
    page = f"<p>Sum: <script type='math/tex'>{long}</script></p><ul><li>one</li><li>two</li></ul>"
    r = extract_math_text(page, renderer="lynx", width=60)
    assert f"${long}$" in r["text"]  # one line, untouched
    assert re.search(r"\*\s+one", r["text"])  # list bullets from lynx's layout


def test_plain_lynx_loses_what_we_keep():
    """The reason for the DOM rewrite: plain lynx drops MathJax v2 scripts."""
    if not lynx_available():
        pytest.skip("lynx is not installed")
    plain = render_lynx("<p>Value <script type='math/tex'>\\frac{1}{2}</script> here</p>")
    assert "frac" not in plain
    assert r"\frac{1}{2}" in extract_math_text("<p>Value <script type='math/tex'>\\frac{1}{2}</script></p>")["text"]


def test_mathml_conversion():
    from lxml import etree

    def tex(xml):
        return convert(etree.fromstring(xml))

    assert tex("<math><msup><mi>x</mi><mn>2</mn></msup></math>") == "x^2"
    assert tex("<math><msubsup><mo>∑</mo><mrow><mi>k</mi><mo>=</mo><mn>1</mn></mrow><mi>n</mi></msubsup></math>") \
        == r"\sum_{k=1}^n"
    assert tex("<math><mroot><mi>x</mi><mn>3</mn></mroot></math>") == r"\sqrt[3]{x}"
    assert tex("<math><mi>sin</mi><mi>θ</mi></math>") == r"\sin\theta"
    assert tex("<math><mover accent='true'><mi>v</mi><mo>→</mo></mover></math>") == r"\vec{v}"
    assert tex("<math><mtable><mtr><mtd><mn>1</mn></mtd><mtd><mn>0</mn></mtd></mtr>"
               "<mtr><mtd><mn>0</mn></mtd><mtd><mn>1</mn></mtd></mtr></mtable></math>") \
        == r"\begin{matrix}1 & 0 \\ 0 & 1\end{matrix}"
    assert tex("<math><mi>x</mi><mo>≤</mo><mn>3</mn><mo>×</mo><mi>y</mi></math>") == r"x\leq3\times y"


def test_tex_helpers():
    assert normalise_tex(r"{\displaystyle a_{ij}}") == "a_{ij}"
    assert normalise_tex("$$x$$") == "x"
    assert tex_from_url("https://latex.codecogs.com/gif.latex?\\dpi{120}x^2") == "x^2"
    assert tex_from_url("https://chart.googleapis.com/chart?cht=tx&chl=E%3Dmc%5E2") == "E=mc^2"
    assert tex_from_url("https://example.com/cat.png") is None
    assert rewrite_math("").formulas == [] and extract_math_text("   ")["text"] == ""


# ---- real pages ----------------------------------------------------------------------------------------------
def test_real_mathjax3_page(shared_data):
    html = (shared_data / "readability-math" / "mathjax__source.html").read_text(encoding="utf-8")
    r = extract_math_text(html)
    got = formulas_in(r["text"])
    assert r["formulas"] == 13 and r["formula_sources"] == {"mathjax3": 13}
    assert squash(r"x=\frac{-b\pm\sqrt{b^2-4ac}}{2a}\text{.}") in got
    assert squash(r"ax^2+bx+c=0") in got and squash(r"a\neq0") in got
    assert "mjx-" not in r["text"]


@pytest.mark.parametrize("page,n", [("readability-math/wikipedia-3__source.html", 66),
                                    ("trafilatura-eval/en.wikipedia.org.tsne.html", 34)])
def test_real_wikipedia_mathml_pages(shared_data, page, n):
    import lxml.html

    html = (shared_data / page).read_text(encoding="utf-8")
    r = extract_math_text(html)
    assert r["formulas"] == n
    # Every formula of the page (its TeX annotation) is in the output as LaTeX, exactly once per occurrence.
    root = lxml.html.document_fromstring(html)
    truth = [normalise_tex(a.text) for a in root.iter() if isinstance(a.tag, str) and a.tag.endswith("annotation")
             and "tex" in (a.get("encoding") or "")]
    got = formulas_in(r["text"])
    assert len(truth) == n and all(squash(t) in got for t in truth)
    assert "{\\displaystyle" not in r["text"]  # fallback images and their alt text do not duplicate formulas


def test_real_warc_pages_extract(shared_data):
    from refinery.data.io import read_warc

    recs = list(read_warc((str(shared_data / "warc" / "resiliparse__warcfile.warc.gz"),)))
    assert len(recs) == 16 and all("html" in r and r["source"].startswith("http") for r in recs)
    texts = [extract_math_text(r["html"], renderer="python")["text"] for r in recs[:4]]
    assert all(len(t) > 100 for t in texts)
