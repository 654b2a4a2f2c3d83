"""Math answers: extraction from a full response, and equivalence that is careful in both directions.

Equivalence goes from cheap to expensive: normalised strings, exact rationals (``Fraction``: so ``0.33`` never
equals ``1/3``), structured values (tuples, intervals, sets, matrices, equations, text, choice letters), and only
then sympy (LaTeX via ``latex2sympy2_extended``), with symbolic simplification and a numeric check as fallback.
A decimal written with at least ``min_rounding_digits`` digits equals a value it correctly rounds
(``0.3333`` = ``1/3``, ``3.1416`` = ``\\pi``); shorter decimals must be exact.
"""

from __future__ import annotations

import cmath
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from refinery.verifiers.base import Verdict, Verifier
from refinery.verifiers.thinking import split_thinking

# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------
_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_PHRASE = re.compile(r"(?:final answer\s*(?:is)?\s*:?|the answer is\s*:?|answer\s*:)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
NO_BOX = object()


def last_boxed(text: str) -> str | None | object:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled).

    Returns NO_BOX when there is none, and None when the last one is empty or unbalanced.
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return NO_BOX
    i = matches[-1].end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # \boxed 5
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and text[j - 1] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                content = text[i + 1:j].strip()
                return content or None
    return None  # unbalanced


def _sentence(rest: str) -> str | None:
    end = _SENTENCE_END.search(rest)
    ans = (rest[: end.start()] if end else rest).strip().strip("$").strip().rstrip(".").strip()
    return ans or None


def _extract(text: str, fallback_last_number: bool) -> str | None | object:
    box = last_boxed(text)
    if box is not NO_BOX:
        return box
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1].strip()
        box = last_boxed(inner)
        return (box if box is not NO_BOX else inner.strip("$").strip()) or None
    hashes = _HASHES.findall(text)
    if hashes:
        return _sentence(hashes[-1])
    phrases = list(_PHRASE.finditer(text))
    if phrases:
        found = _sentence(text[phrases[-1].end():])
        if found:
            return found
    if fallback_last_number:
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1]
    return NO_BOX


def extract_answer(response: str, fallback_last_number: bool = True) -> str | None:
    """The final answer of a response: the last box, ``<answer>`` tag, ``#### N``, 'The answer is …' /
    'Final answer: …', or (optionally) the last number. Only the text after the thinking counts
    (:func:`~refinery.verifiers.thinking.split_thinking`): an answer inside ``<think>…</think>`` is never
    extracted, and a response that ends inside its thinking has none. An empty or unbalanced last box extracts
    nothing."""
    found = _extract(split_thinking(response).answer, fallback_last_number)
    return None if found is NO_BOX else found  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------------------
_UNITS = (
    r"(?:square\s+|sq\.?\s*|cubic\s+)?(?:units?|cm|mm|km|m|meters?|metres?|centimeters?|kilometers?|inches|inch|in|"
    r"feet|foot|ft|yards?|miles?|mph|kg|g|grams?|kilograms?|pounds?|lbs?|ounces?|oz|liters?|litres?|ml|gallons?|"
    r"seconds?|secs?|s|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|dollars?|cents?|euros?|"
    r"degrees?|percent|points?|people|students?|apples?|times)(?:\^?\{?[23]\}?)?"
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_AFTER_NUMBER = re.compile(rf"^(.*?\d)\s*(?:{_UNITS})\.?$", re.IGNORECASE)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def normalize(s: str) -> str:
    """Strip presentation (delimiters, spacing commands, units, currency, degrees, percent) but not meaning."""
    s = s.strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = s.replace("\\$", "").replace("\\%", "").replace("%", "").replace("°", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?=[()\[\]|.]|\\[{}|])", "", s)
    s = re.sub(r"\\(?:displaystyle|!|,|;|:|quad|qquad)", "", s)
    s = re.sub(r"(?<!\\)\\ ", " ", s).replace("~", " ")  # '\ ' is a space; '\\' (matrix rows) stays
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt\s*(\d+)", r"\\sqrt{\1}", s)  # \sqrt2
    s = s.replace("{,}", ",")
    # a unit in \text{} right after a number, then plain units / currency words
    s = re.sub(rf"(\d)\s*\\(?:text|mbox|mathrm)\s*\{{\s*{_UNITS}\s*\}}(?:\^\{{?[23]\}}?)?", r"\1", s,
               flags=re.IGNORECASE)
    m = _UNIT_AFTER_NUMBER.match(s)
    if m:
        s = m.group(1)
    s = s.strip().rstrip(".").strip()
    if _THOUSANDS.match(s.replace(" ", "")):
        s = s.replace(",", "").replace(" ", "")
    s = re.sub(r"\s+", " ", s)
    return s


def _strip_text(s: str) -> str:
    prev = None
    while prev != s:
        prev, s = s, _TEXT_CMD.sub(r"\1", s)
    return s.strip()


# ---------------------------------------------------------------------------------------------------------------
# Structured values
# ---------------------------------------------------------------------------------------------------------------
_OPEN, _CLOSE = "([{", ")]}"


def split_top(s: str, seps: tuple[str, ...] = (",",)) -> list[str]:
    """Split on separators outside (), [], {} (and ``\\{ \\}``)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i:i + 2])
            i += 2
            continue
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        if depth == 0:
            sep = next((x for x in seps if s.startswith(x, i)), None)
            if sep is not None:
                parts.append("".join(cur).strip())
                cur = []
                i += len(sep)
                continue
        cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return parts


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


_MATRIX = re.compile(r"\\begin\{[pbvBV]?matrix\}(.*)\\end\{[pbvBV]?matrix\}", re.DOTALL)
_LIST_WORDS = (" or ", " and ", "\\text{ or }", "\\text{ and }", "\\text{or}", "\\text{and}")


@dataclass(frozen=True)
class Value:
    kind: str  # scalar | seq | set | matrix | union | eq | text | choice
    items: tuple = ()
    text: str = ""
    brackets: str = ""


def parse_value(s: str) -> Value:
    """Parse a normalised answer into a structured value (no sympy yet)."""
    s = s.strip()
    m = _MATRIX.search(s)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(1)) if r.strip()]
        return Value("matrix", tuple(tuple(c.strip() for c in r.split("&")) for r in rows))
    if re.fullmatch(r"\(?\s*[A-E]\s*\)?", s) or re.fullmatch(r"\\text\{\s*\(?[A-E]\)?\s*\}", s):
        return Value("choice", text=re.search(r"[A-E]", s).group(0))
    for sep in ("\\cup", " U "):
        parts = split_top(s, (sep,))
        if len(parts) > 1:
            return Value("union", tuple(parse_value(p) for p in parts))
    if s.startswith("\\{") and s.endswith("\\}"):
        return Value("set", tuple(parse_value(p) for p in split_top(s[2:-2]) if p))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        inner = split_top(s[1:-1])
        if len(inner) >= 2:
            return Value("seq", tuple(parse_value(p) for p in inner), brackets=s[0] + s[-1])
    for seps in ((",",), (";",), _LIST_WORDS):
        parts = [p for p in split_top(s, seps) if p]
        if len(parts) > 1:
            return Value("set", tuple(parse_value(p) for p in parts))
    eq = split_top(s, ("=",))
    if len(eq) == 2 and eq[0] and eq[1]:
        return Value("eq", (eq[0], eq[1]))
    plain = _strip_text(s)
    if _WORDS.fullmatch(plain) and re.search(r"[A-Za-z]{3}", plain):
        return Value("text", text=plain)
    if plain != s:  # \text{(C)}, \mathrm{...}: look again without the wrapper
        return parse_value(plain)
    return Value("scalar", text=s)


_WORDS = re.compile(r"[A-Za-z]+(?:[ '.-][A-Za-z]+)*\.?")  # 'Evelyn', 'New York' (not 'p - q', not 'xy')


# ---------------------------------------------------------------------------------------------------------------
# Scalars
# ---------------------------------------------------------------------------------------------------------------
_DEC = re.compile(r"^[+-]?(\d+)?(?:\.(\d+))?(?:[eE]([+-]?\d+))?$")
_SCI_TIMES = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_FRAC = re.compile(r"^([+-])?\\frac\{\s*([+-]?\d+)\s*\}\{\s*([+-]?\d+)\s*\}$")
_SLASH = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")


def to_rational(s: str) -> tuple[Fraction, int | None] | None:
    """An exact rational and, for decimal literals, the number of fractional digits written; else None."""
    s = s.replace(" ", "")
    m = _DEC.match(s)
    if m and (m.group(1) or m.group(2)):
        value = Fraction(s) if "e" not in s.lower() else Fraction(float(s)).limit_denominator(10**12)
        digits = len(m.group(2)) if m.group(2) and not m.group(3) else None
        return value, digits
    m = _SCI_TIMES.match(s)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)), None
    m = _FRAC.match(s)
    if m and int(m.group(3)) != 0:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return (-v if m.group(1) == "-" else v), None
    m = _SLASH.match(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2))), None
    return None


@dataclass
class MathConfig:
    fallback_last_number: bool = True  # extract the last number when no explicit answer is marked
    min_rounding_digits: int = 4  # a decimal with >= this many digits may equal a value it correctly rounds
    numeric_tolerance: float = 1e-9  # relative tolerance of the numeric fallback for symbolic expressions
    max_chars: int = 1000  # longer answers are not sent to sympy (a hedge or garbage)


def _rounds_to(decimal: Fraction, digits: int, value: float) -> bool:
    return abs(float(decimal) - value) <= 0.5 * 10.0 ** (-digits) + 1e-15 * max(1.0, abs(value))


_SYMPY_CACHE: dict[str, Any] = {}


def to_sympy(s: str) -> Any:
    """Parse LaTeX or plain math into sympy (None if it cannot be parsed). ``i`` is the imaginary unit."""
    if s in _SYMPY_CACHE:
        return _SYMPY_CACHE[s]
    import sympy

    expr = None
    try:
        from latex2sympy2_extended import latex2sympy

        expr = latex2sympy(s)
    except Exception:
        try:
            from sympy.parsing.sympy_parser import (
                convert_xor,
                implicit_multiplication_application,
                parse_expr,
                standard_transformations,
            )

            expr = parse_expr(s.replace("\\pi", "pi"), transformations=standard_transformations + (
                implicit_multiplication_application, convert_xor), evaluate=True)
        except Exception:
            expr = None
    if expr is not None and hasattr(expr, "free_symbols"):
        i_sym = [x for x in expr.free_symbols if x.name == "i"]
        if i_sym:
            expr = expr.subs(i_sym[0], sympy.I)
        pi_sym = [x for x in expr.free_symbols if x.name == "pi"]
        if pi_sym:
            expr = expr.subs(pi_sym[0], sympy.pi)
    if expr is not None and not isinstance(expr, sympy.Basic):
        expr = None
    if len(_SYMPY_CACHE) < 10000:
        _SYMPY_CACHE[s] = expr
    return expr


def scalar_equal(a: str, b: str, cfg: MathConfig) -> bool:
    if a == b:
        return True
    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    ra, rb = to_rational(a), to_rational(b)
    if ra is not None and rb is not None:
        if ra[0] == rb[0]:
            return True
        # a decimal may stand for a value it correctly rounds, if written with enough digits
        for (x, dx), (y, dy) in ((ra, rb), (rb, ra)):
            if dx is not None and dx >= cfg.min_rounding_digits and (dy is None or dy > dx):
                if _rounds_to(x, dx, float(y)):
                    return True
        return False
    if len(a) > cfg.max_chars or len(b) > cfg.max_chars:
        return False
    ea, eb = to_sympy(a), to_sympy(b)
    if ea is None or eb is None:
        return _strip_text(a).lower() == _strip_text(b).lower()
    return sympy_equal(ea, eb, ra, rb, cfg)


def sympy_equal(ea: Any, eb: Any, ra, rb, cfg: MathConfig) -> bool:
    import sympy

    try:
        if ea == eb:
            return True
        if not ea.free_symbols and not eb.free_symbols:
            va, vb = complex(sympy.N(ea, 30)), complex(sympy.N(eb, 30))
            for r, v_other in ((ra, vb), (rb, va)):
                if r is not None and r[1] is not None and abs(v_other.imag) < 1e-12:
                    if r[1] >= cfg.min_rounding_digits:
                        return _rounds_to(r[0], r[1], v_other.real)
                    return abs(float(r[0]) - v_other.real) <= 1e-12 * max(1.0, abs(v_other.real)) and \
                        sympy.nsimplify(v_other.real) == r[0]
            if not (cmath.isfinite(va) and cmath.isfinite(vb)):
                return va == vb
            scale = max(1.0, abs(va), abs(vb))
            return abs(va - vb) <= cfg.numeric_tolerance * scale
        if ea.free_symbols != eb.free_symbols:
            return False
        diff = sympy.simplify(ea - eb)
        if diff == 0:
            return True
        return _numeric_probe(ea, eb, cfg)
    except Exception:
        return False


def _numeric_probe(ea: Any, eb: Any, cfg: MathConfig) -> bool:
    """Equal at several random points (guards simplify's misses on equal expressions)."""
    import random

    symbols = sorted(ea.free_symbols, key=lambda x: x.name)
    rng = random.Random(0)
    checked = 0
    for _ in range(8):
        point = {x: rng.uniform(0.3, 2.7) for x in symbols}
        try:
            va, vb = complex(ea.evalf(subs=point)), complex(eb.evalf(subs=point))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if abs(va - vb) > cfg.numeric_tolerance * max(1.0, abs(va), abs(vb)):
            return False
        checked += 1
        if checked >= 4:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------------
def values_equal(a: Value, b: Value, cfg: MathConfig) -> bool:
    if a.kind == "eq" and b.kind != "eq":
        return _single_var(a.items[0]) and values_equal(parse_value(a.items[1]), b, cfg)
    if b.kind == "eq" and a.kind != "eq":
        return _single_var(b.items[0]) and values_equal(a, parse_value(b.items[1]), cfg)
    if a.kind == "seq" and b.kind == "set" or a.kind == "set" and b.kind == "seq":
        seq, lst = (a, b) if a.kind == "seq" else (b, a)
        return seq.brackets == "()" and _ordered(seq.items, lst.items, cfg)
    if a.kind != b.kind:
        if {a.kind, b.kind} == {"scalar", "text"}:
            return a.text.lower() == b.text.lower()
        return False
    if a.kind == "scalar":
        return scalar_equal(a.text, b.text, cfg)
    if a.kind in ("text", "choice"):
        norm = lambda t: re.sub(r"[^a-z0-9]", "", t.lower())
        return norm(a.text) == norm(b.text)
    if a.kind == "seq":
        return a.brackets == b.brackets and _ordered(a.items, b.items, cfg)
    if a.kind in ("set", "union"):
        return _unordered(list(a.items), list(b.items), cfg)
    if a.kind == "matrix":
        return len(a.items) == len(b.items) and all(
            len(ra) == len(rb) and all(scalar_equal(normalize(x), normalize(y), cfg) for x, y in zip(ra, rb))
            for ra, rb in zip(a.items, b.items))
    if a.kind == "eq":
        if a.items[0].replace(" ", "") == b.items[0].replace(" ", "") and _single_var(a.items[0]):
            return values_equal(parse_value(a.items[1]), parse_value(b.items[1]), cfg)
        lhs = f"({a.items[0]})-({a.items[1]})"
        rhs = f"({b.items[0]})-({b.items[1]})"
        return scalar_equal(lhs, rhs, cfg) or scalar_equal(lhs, f"-({rhs})", cfg)
    return False


def _single_var(s: str) -> bool:
    return bool(re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*|\s*\\[a-zA-Z]+\s*", s))


def _ordered(xs, ys, cfg) -> bool:
    return len(xs) == len(ys) and all(values_equal(x, y, cfg) for x, y in zip(xs, ys))


def _unordered(xs: list, ys: list, cfg) -> bool:
    if len(xs) != len(ys):
        return False
    remaining = list(ys)
    for x in xs:
        for k, y in enumerate(remaining):
            if values_equal(x, y, cfg):
                del remaining[k]
                break
        else:
            return False
    return True


def math_equal(pred: str, gold: str, cfg: MathConfig | None = None) -> bool:
    """Whether two final answers are mathematically the same (see the module doc for the rules)."""
    cfg = cfg or MathConfig()
    a, b = normalize(pred), normalize(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    return values_equal(parse_value(a), parse_value(b), cfg)


class MathVerifier(Verifier):
    """Score 1 when the response's final answer equals the reference (a final answer, or a worked solution
    whose final answer is extracted the same way)."""

    name = "math"

    def __init__(self, config: MathConfig | None = None):
        self.config = config or MathConfig()

    def __call__(self, response: str, reference: Any) -> Verdict:
        gold = str(reference).strip()
        if _BOX.search(gold) or "####" in gold or "\n" in gold:
            gold = extract_answer(gold, True) or gold
        pred = extract_answer(response, self.config.fallback_last_number)
        if pred is None:
            return Verdict(0.0, None, "no final answer found")
        if math_equal(pred, gold, self.config):
            return Verdict(1.0, pred, "equivalent")
        return Verdict(0.0, pred, f"not equivalent to {gold!r}")
