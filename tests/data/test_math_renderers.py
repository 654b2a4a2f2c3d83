"""Formula recall on real renderer output (issue 23.2), scored with canonical LaTeX: the regression set in
tests/data/pages (MathJax 3 CHTML/SVG without assistive MathML, MathML, Temml, KaTeX, MathJax 2, image services,
raw environments, numbered equations) and real pages from the shared data folder."""

from __future__ import annotations

import pytest
from lxml import etree

from refinery.data.math_web.canonical import canonical, formula_recall, formulas_in
from refinery.data.math_web.html import extract_math_text, rewrite_math, tex_from_url
from refinery.data.math_web.mathml import convert
from tests.data.math_pages import own_pages, shared_pages

OWN = own_pages()


@pytest.mark.parametrize("page", OWN, ids=[p["name"] for p in OWN])
def test_own_pages_recall(page):
    r = extract_math_text(page["html"], renderer="python")
    got = formulas_in(r["text"])
    missed = [f for f in page["formulas"] if canonical(f) not in {canonical(g) for g in got}]
    assert formula_recall(page["formulas"], got) == 1.0, missed
    assert "mjx-" not in r["text"] and "MATHPHX" not in r["text"]


def test_shared_real_pages_recall(shared_data):
    pages = shared_pages(shared_data)
    assert len(pages) == 8
    for p in pages:
        got = formulas_in(extract_math_text(p["html"], renderer="python")["text"])
        assert formula_recall(p["formulas"], got) >= 0.95, p["name"]


def _tex(xml: str) -> str:
    return convert(etree.fromstring(xml))


def test_mathml_keeps_variants_binomials_accents_and_tags():
    assert _tex('<math><mi mathvariant="bold">V</mi></math>') == r"\mathbf{V}"
    assert _tex("<math><mi>𝐕</mi><mo>+</mo><mi>ℝ</mi></math>") == r"\mathbf{V}+\mathbb{R}"
    assert _tex('<math><mi mathvariant="normal">d</mi><mi>x</mi></math>') == r"\mathrm{d}x"
    assert _tex('<math><mi mathvariant="bold">μ</mi></math>') == r"\boldsymbol{\mu}"
    assert _tex('<math><mrow><mo>(</mo><mfrac linethickness="0"><mi>n</mi><mi>k</mi></mfrac><mo>)</mo></mrow>'
                "</math>") == r"\binom{n}{k}"
    assert _tex('<math><mover><mi>x</mi><mo stretchy="false">¯</mo></mover></math>') == r"\bar{x}"
    assert _tex('<math><mover><mi>x</mi><mo accent="false">¯</mo></mover></math>') == r"\overline{x}"
    assert _tex("<math><mover><mi>x</mi><mo>˙</mo></mover></math>") == r"\dot{x}"
    assert _tex("<math><munder><mo movablelimits='true'>lim</mo><mi>n</mi></munder></math>") == r"\lim_n"
    assert _tex("<math><munder><munder><mi>a</mi><mo>⏟</mo></munder><mi>n</mi></munder></math>") \
        == r"\underbrace{a}_n"
    assert _tex("<math><mtable><mlabeledtr><mtd><mtext>(3)</mtext></mtd><mtd><mi>p</mi></mtd></mlabeledtr>"
                "</mtable></math>") == r"p \tag{3}"
    assert _tex('<math><mo>{</mo><mtable columnalign="left left"><mtr><mtd><mn>1</mn></mtd><mtd><mi>x</mi></mtd>'
                "</mtr></mtable></math>") == r"\begin{cases}1 & x\end{cases}"


def test_mathjax3_chtml_without_assistive_mathml():
    page = ('<p>Let <mjx-container class="MathJax" jax="CHTML"><mjx-math class="MJX-TEX"><mjx-msup>'
            '<mjx-mi class="mjx-b"><mjx-c class="mjx-c1D415 TEX-B"></mjx-c></mjx-mi><mjx-script>'
            '<mjx-mn class="mjx-n" size="s"><mjx-c class="mjx-c32"></mjx-c></mjx-mn></mjx-script></mjx-msup>'
            '</mjx-math></mjx-container> hold.</p>')
    r = rewrite_math(page)
    assert [f.tex for f in r.formulas] == [r"\mathbf{V}^2"] and r.formulas[0].source == "mathjax3-chtml"


def test_mathjax3_svg_without_assistive_mathml():
    page = ('<p><mjx-container class="MathJax" jax="SVG"><svg><g data-mml-node="math"><g data-mml-node="mfrac">'
            '<g data-mml-node="mi"><use data-c="1D44E" href="#MJX-TEX-I-1D44E"></use></g>'
            '<g data-mml-node="mn"><use data-c="32" href="#MJX-TEX-N-32"></use></g><rect></rect></g></g></svg>'
            '</mjx-container></p>')
    assert [f.tex for f in rewrite_math(page).formulas] == [r"\frac{a}{2}"]


def test_image_services_and_raw_environments():
    assert tex_from_url(r"https://latex.codecogs.com/png.latex?\dpi{120}&space;\bg_white&space;x&plus;1") == "x+1"
    assert tex_from_url("https://latex.codecogs.com/gif.latex?A%3D%5Cpi+r%5E2") == r"A=\pi r^2"
    assert tex_from_url("https://i.upmath.me/svg/%5Cfrac%7B1%7D%7B2%7D") == r"\frac{1}{2}"
    r = extract_math_text("<p>\\begin{align}<br>a &amp;= b \\\\<br>c &amp;= d<br>\\end{align}</p>"
                          "<p>$$x=1 \\qquad (4)$$</p>", renderer="python")
    assert formulas_in(r["text"]) == ["\\begin{align}\na &= b \\\\\nc &= d\n\\end{align}", r"x=1 \tag{4}"]
