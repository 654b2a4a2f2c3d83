import pytest

from refinery.verifiers.math import MathVerifier, extract_answer, math_equal

EQUAL = [
    # integers, separators, signs
    ("1,234", "1234"), ("1{,}234", "1234"), ("1,234,567", "1234567"), ("-5", "-5"), ("+5", "5"), ("007", "7"),
    ("12.0", "12"), ("12.50", "12.5"),
    # fractions and decimals
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "1/2"), ("\\tfrac{3}{4}", "0.75"), ("\\frac12", "\\frac{1}{2}"),
    ("-\\frac{1}{4}", "-0.25"), ("\\frac{-1}{4}", "-0.25"), ("2/4", "\\frac{1}{2}"), ("\\frac{14}{3}", "\\frac{28}{6}"),
    ("0.3333", "\\frac{1}{3}"), ("0.6667", "2/3"),
    # radicals, pi, exponents, scientific notation
    ("\\sqrt{2}", "\\sqrt2"), ("2\\sqrt{2}", "\\sqrt{8}"), ("3\\sqrt{13}", "\\sqrt{117}"), ("11\\sqrt2", "11\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"), ("1.4142", "\\sqrt{2}"), ("\\pi", "\\pi"), ("3.1416", "\\pi"),
    ("2\\pi", "\\pi \\cdot 2"), ("\\frac{\\pi}{2}", "0.5\\pi"), ("2^{10}", "1024"), ("2^3", "8"),
    ("1.5 \\times 10^3", "1500"), ("1.5e3", "1500"), ("3 \\cdot 10^{-2}", "0.03"),
    # percentages, degrees, units, currency
    ("50\\%", "50"), ("50%", "50"), ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("90°", "90"),
    ("\\$18", "18"), ("$18$", "18"), ("18 dollars", "18"), ("5 cm", "5"), ("5\\text{ cm}", "5"),
    ("12 \\text{ inches}", "12"), ("3 hours", "3"), ("10\\text{ cm}^2", "10"),
    # algebra
    ("x^2+2x+1", "(x+1)^2"), ("p - q", "-q + p"), ("2(x+1)", "2x+2"), ("\\frac{x}{2}", "0.5x"),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)"), ("a+b", "b+a"),
    # equations
    ("x = 5", "5"), ("5", "x=5"), ("y = 2x + 3", "y = 3 + 2x"), ("x=5", "x = 5"),
    # tuples, intervals, sets, lists
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"), ("(1,2)", "(1, 2)"), ("(1,2)", "1, 2"),
    ("[1,5)", "[1, 5)"), ("(-\\infty, 3]", "(-\\infty,3]"), ("(0, \\infty)", "(0,\\infty)"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"), ("1,-2", "-2, 1"), ("3, 5, 7", "7,5,3"), ("x=1 \\text{ or } x=2", "1, 2"),
    ("(-\\infty,1) \\cup (2,\\infty)", "(2,\\infty)\\cup(-\\infty,1)"),
    # complex numbers
    ("6 - 5i", "6-5i"), ("-2 + 7i", "7i - 2"),
    # matrices
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    ("\\begin{pmatrix} \\frac{1}{2} \\\\ 0 \\end{pmatrix}", "\\begin{pmatrix} 0.5 \\\\ 0 \\end{pmatrix}"),
    # infinity
    ("\\infty", "\\infty"), ("-\\infty", "-\\infty"),
    # text and choice
    ("\\text{Evelyn}", "Evelyn"), ("evelyn", "\\text{Evelyn}"), ("\\text{(C)}", "C"), ("(B)", "B"),
    ("\\textbf{Monday}", "monday"),
    # misc
    ("52_8", "52_8"), ("\\frac{243}{625}", "0.3888"), ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}"),
]

UNEQUAL = [
    ("0.33", "\\frac{1}{3}"), ("0.333", "1/3"), ("3.14", "\\pi"), ("1.41", "\\sqrt{2}"),
    ("(1,5]", "[1,5)"), ("(1,5)", "[1,5]"), ("[1,5]", "(1,5]"),
    ("1, 2, 3, 4", "2"), ("2 \\text{ or } 3", "2"), ("2, 3", "2"), ("1, 2", "1, 2, 3"),
    ("(1,2)", "(2,1)"), ("\\{1,2\\}", "\\{1,3\\}"),
    ("x^2+1", "(x+1)^2"), ("2x", "2y"), ("x+1", "x"),
    ("\\infty", "-\\infty"), ("5", "-5"), ("1234", "1243"), ("12", "120"), ("0.5", "0.05"),
    ("6-5i", "6+5i"), ("\\sqrt{2}", "2"), ("\\frac{1}{2}", "2"), ("2^{10}", "1000"),
    ("\\text{Evelyn}", "Bob"), ("A", "B"), ("(C)", "D"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}"),
    ("y = 2x+3", "y = 3x+2"), ("x=5", "6"), ("", "5"),
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal(a, b):
    assert math_equal(a, b), (a, b)
    assert math_equal(b, a), (b, a)


@pytest.mark.parametrize("a,b", UNEQUAL)
def test_unequal(a, b):
    assert not math_equal(a, b), (a, b)
    assert not math_equal(b, a), (b, a)


def test_table_is_large_enough():
    assert len(EQUAL) + len(UNEQUAL) >= 80


EXTRACT = [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5", "5"),
    ("\\boxed{}", None),
    ("\\boxed{12", None),
    ("<think>maybe \\boxed{3}</think> The answer is \\boxed{4}", "4"),
    ("<think>it is \\boxed{3}</think>", None),  # nothing after the thinking: what is inside never counts
    ("<think>\\boxed{9}</think> Final answer: 10", "10"),
    ("#### 1,234", "1,234"),
    ("Thus the answer is $x = 5$. Done.", "x = 5"),
    ("Final answer: 42", "42"),
    ("<answer>17</answer>", "17"),
    ("<answer>The value is \\boxed{3}</answer>", "3"),
    ("She makes 9 * 2 = $<<9*2=18>>18 every day\nA: 18", "18"),
    ("no numbers here", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extraction(text, expected):
    assert extract_answer(text) == expected


def test_fallback_can_be_disabled():
    assert extract_answer("it is 5", fallback_last_number=False) is None


def test_verifier_verdicts():
    v = MathVerifier()
    ok = v("We get \\boxed{\\dfrac{1}{2}}", "0.5")
    assert ok.score == 1.0 and ok.extracted == "\\dfrac{1}{2}" and ok.correct
    bad = v("We get \\boxed{0.33}", "\\frac13")
    assert bad.score == 0.0 and "not equivalent" in bad.reason
    none = v("I don't know", "5")
    assert none.score == 0.0 and none.extracted is None and "no final answer" in none.reason
    assert v("#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72").score == 1.0  # reference is a full solution


def test_batch_in_a_process_pool_with_timeout():
    v = MathVerifier()
    pairs = [("\\boxed{2}", "2"), ("\\boxed{3}", "2"), ("\\boxed{x^2}", "x\\cdot x")] * 3
    out = v.batch(pairs, workers=2, timeout=30)
    assert [o.score for o in out] == [1.0, 0.0, 1.0] * 3
