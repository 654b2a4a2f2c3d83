"""Canonical LaTeX for scoring: spellings of one formula agree, different formulas stay apart."""

from __future__ import annotations

import pytest

from refinery.data.math_web.canonical import canonical, formula_recall, formulas_in, text_recall

SAME = [
    (r"x = {-b \pm \sqrt{b^2-4ac} \over 2a}.", r"x=\frac{-b\pm\sqrt{b^2-4ac}}{2a}\text{.}"),
    (r"P(E) = {n \choose k} p^k", r"P(E)=\binom{n}{k}p^k"),
    (r"\frac{1}{\Bigl(\sqrt{\phi}\Bigr) e^{\frac25 \pi}}", r"\frac{1}{(\sqrt{\phi})e^{\frac{2}{5}\pi}}"),
    (r"\left( \sum_{k=1}^n a_k \right)^2", r"{(\sum_{k=1}^na_k)}^2"),
    (r"\begin{vmatrix} a & b \end{vmatrix}", r"|\begin{matrix}a & b\end{matrix}|"),
    (r"\begin{equation} E=mc^2 \label{x}\end{equation}", r"E=mc^2\tag{1}"),
    (r"a+b=c \qquad (2)", "a+b=c"),
    (r"x^{\prime}", "x'"), (r"\mathbf{a}\mathbf{b}", r"\mathbf{ab}"), (r"x^{2}_{i}", "x_i^2"),
    (r"{\displaystyle \mathbf {u} \cdot \mathbf {v} }", r"\mathbf{u}\cdot\mathbf{v}"),
    (r"\operatorname{sin} x", r"\sin x"), (r"\le \ne \dfrac{1}{2}", r"\leq\neq\frac12"),
    (r"\text{for $|q|<1$}", r"\text{for}|q|<1"), (r"\sum\limits_{i} \,x", r"\sum_i x"),
    (r"\begin{align*} a &= b \end{align*}", r"\begin{aligned}a&=b\end{aligned}"),
]
DIFFERENT = [(r"\mathbf{V}", "V"), (r"\binom{n}{k}", r"\frac{n}{k}"), (r"\hat{x}", r"\bar{x}"), ("x^2", "x_2"),
             (r"\frac{ab}{c}", r"\frac{a}{bc}"), (r"\sqrt[3]{x}", r"\sqrt{x}"), (r"\mathbb{R}", r"\mathcal{R}")]


@pytest.mark.parametrize("a,b", SAME)
def test_spellings_agree(a, b):
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different_formulas_differ(a, b):
    assert canonical(a) != canonical(b) and canonical(a, lenient=True) != canonical(b, lenient=True)


def test_lenient_forgives_cosmetics_only():
    assert canonical(r"\varepsilon") != canonical(r"\epsilon")
    assert canonical(r"\varepsilon", lenient=True) == canonical(r"\epsilon", lenient=True)
    assert canonical(r"\mathrm{d}x", lenient=True) == canonical("dx", lenient=True)
    assert canonical(r"\begin{aligned}a&=b\end{aligned}", lenient=True) == \
        canonical(r"\begin{matrix}a&=b\end{matrix}", lenient=True)


def test_recall_scores():
    assert formulas_in("a $x$ b $$y^{2}$$") == ["x", "y^{2}"]
    assert formula_recall(["x", "y^2", "x"], ["x", "y^{2}"]) == pytest.approx(2 / 3)  # each found formula once
    assert text_recall([r"\frac{a}{b}"], r"so \frac a b holds") == 1.0
    assert text_recall([r"\frac{a}{b}"], "so a/b holds") == 0.0
    assert canonical("{{a}") == "a" and canonical("") == ""  # unbalanced input never raises
