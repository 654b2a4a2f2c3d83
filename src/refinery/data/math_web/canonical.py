"""Canonical LaTeX, for scoring formula recall: two spellings of the same formula get the same string.

What differs only in spelling is normalised: whitespace and spacing commands, sizing (``\\left``, ``\\Bigl``),
``\\displaystyle``/``\\limits``, aliases (``\\le``/``\\leq``, ``\\dfrac``/``\\frac``, ``\\operatorname``/``\\mathrm``,
``\\bm``/``\\boldsymbol``), braces (``x^{2}``/``x^2``, ``\\frac12``/``\\frac{1}{2}``, bare groups), script order
(``x^2_i``/``x_i^2``), ``^\\prime``/``'``, TeX primitives (``{a \\over b}``, ``{n \\choose k}``), matrix environments
(``pmatrix`` = ``(`` + ``matrix`` + ``)``), the ``equation`` wrapper, the equation's number (``\\tag``, ``\\label``,
a trailing ``\\qquad (2)``) and trailing punctuation. ``lenient=True`` also forgives what a reader would call
cosmetic but a renderer keeps apart: ``\\varepsilon``/``\\epsilon``, ``\\bar``/``\\overline``, ``\\mathrm{d}``/``d``,
``align``/``aligned``/``matrix``/``cases`` bodies, ``\\dots``/``\\cdots``.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\\[A-Za-z]+\*?|\\.|[{}]|\s+|.", re.S)

ALIASES = {
    r"\le": r"\leq", r"\ge": r"\geq", r"\ne": r"\neq", r"\leqslant": r"\leq", r"\geqslant": r"\geq",
    r"\rightarrow": r"\to", r"\gets": r"\leftarrow", r"\dfrac": r"\frac", r"\tfrac": r"\frac", r"\cfrac": r"\frac",
    r"\dbinom": r"\binom", r"\tbinom": r"\binom", r"\lbrace": r"\{", r"\rbrace": r"\}", r"\vert": "|",
    r"\lvert": "|", r"\rvert": "|", r"\mid": "|", r"\Vert": r"\|", r"\lVert": r"\|", r"\rVert": r"\|",
    r"\dots": r"\ldots", r"\dotsc": r"\ldots", r"\dotso": r"\ldots", r"\dotsb": r"\cdots", r"\dotsm": r"\cdots",
    r"\lt": "<", r"\gt": ">", r"\land": r"\wedge", r"\lor": r"\vee", r"\lnot": r"\neg", r"\bm": r"\boldsymbol",
    r"\pmb": r"\boldsymbol", r"\mathscr": r"\mathcal", r"\operatorname": r"\mathrm", r"\textrm": r"\text",
    r"\mbox": r"\text", r"\textnormal": r"\text", r"\hbox": r"\text", r"\colon": ":", r"\Leftrightarrow": r"\iff",
    r"\lbrack": "[", r"\rbrack": "]", r"\stackrel": r"\overset", r"\widehat": r"\hat", r"\widetilde": r"\tilde",
    r"\owns": r"\ni", r"\bot": r"\perp", r"\rvec": r"\vec", r"\textbf": r"\mathbf", r"\textit": r"\mathit",
}
LENIENT = {r"\varepsilon": r"\epsilon", r"\varphi": r"\phi", r"\vartheta": r"\theta", r"\overline": r"\bar",
           r"\cdots": r"\ldots", r"\overrightarrow": r"\vec", r"\mathit": "", r"\boldsymbol": r"\mathbf",
           r"\dfrac": r"\frac"}
DROP = {r"\left", r"\right", r"\middle", r"\big", r"\Big", r"\bigg", r"\Bigg", r"\bigl", r"\bigr", r"\Bigl",
        r"\Bigr", r"\biggl", r"\biggr", r"\Biggl", r"\Biggr", r"\bigm", r"\Bigm", r"\biggm", r"\Biggm",
        r"\displaystyle", r"\textstyle", r"\scriptstyle", r"\scriptscriptstyle", r"\limits", r"\nolimits", r"\,",
        r"\;", r"\:", r"\!", r"\ ", r"\quad", r"\qquad", r"\enspace", r"\thinspace", r"\medspace", r"\thickspace",
        r"\negthinspace", r"\nonumber", r"\notag", "~", r"\>", r"\/", r"\relax", r"\strut", r"\mathstrut"}
DROP_WITH_ARG = {r"\tag", r"\tag*", r"\label", r"\hspace", r"\hspace*", r"\vspace", r"\vspace*", r"\kern",
                 r"\mkern", r"\color"}
ONE_ARG = {r"\mathbf", r"\mathbb", r"\mathcal", r"\mathrm", r"\mathit", r"\mathsf", r"\mathtt", r"\mathfrak",
           r"\boldsymbol", r"\text", r"\hat", r"\bar", r"\overline", r"\vec", r"\dot", r"\ddot", r"\dddot",
           r"\tilde", r"\check", r"\breve", r"\acute", r"\grave", r"\underline", r"\overbrace", r"\underbrace",
           r"\overrightarrow", r"\overleftarrow", r"\mathring", r"\boxed", r"\cancel", r"\phantom", r"\textsf",
           r"\texttt", r"\emph", r"\mathop", r"\mathbin", r"\mathrel", r"\mathord", r"\mathopen", r"\mathclose"}
TWO_ARG = {r"\frac", r"\binom", r"\overset", r"\underset", r"\genfrac"}
FUNCTIONS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "lim", "max", "min", "sup", "inf",
             "det", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "gcd", "deg", "dim", "ker", "arg", "Pr",
             "lg", "hom", "liminf", "limsup", "coth", "sgn"}
FONTS = {r"\mathbf", r"\mathbb", r"\mathcal", r"\mathrm", r"\mathsf", r"\mathtt", r"\mathfrak", r"\boldsymbol",
         r"\mathit", r"\text"}
MATRIX_DELIMS = {"pmatrix": ("(", ")"), "bmatrix": ("[", "]"), "Bmatrix": (r"\{", r"\}"), "vmatrix": ("|", "|"),
                 "Vmatrix": (r"\|", r"\|")}
UNWRAP_ENVS = {"equation", "equation*", "displaymath", "math"}
ENV_ALIASES = {"align*": "align", "aligned": "align", "flalign": "align", "flalign*": "align", "alignat": "align",
               "alignat*": "align", "alignedat": "align", "split": "align", "gather*": "gather", "gathered": "gather",
               "multline*": "multline", "eqnarray*": "eqnarray", "smallmatrix": "matrix", "array": "matrix",
               "darray": "matrix", "dcases": "cases", "cases*": "cases"}
LENIENT_ENVS = {"align": "matrix", "gather": "matrix", "eqnarray": "matrix", "multline": "matrix",
                "cases": "matrix"}


class Group(list):
    """A ``{…}`` group: a list of nodes (token strings and groups)."""


def _tokens(tex: str) -> list[str]:
    return [t for t in _TOKEN.findall(tex) if not t.isspace()]


def _parse(tokens: list[str]) -> Group:
    root = Group()
    stack = [root]
    for t in tokens:
        if t == "{":
            g = Group()
            stack[-1].append(g)
            stack.append(g)
        elif t == "}":
            if len(stack) > 1:
                stack.pop()
            # an unmatched } is dropped: pages cut formulas in odd places
        else:
            stack[-1].append(t)
    return root


def _flat(g) -> str:
    return g if isinstance(g, str) else "".join(_flat(x) for x in g)


class _Canon:
    def __init__(self, lenient: bool):
        self.lenient = lenient

    def alias(self, t: str) -> str:
        t = ALIASES.get(t, t)
        if self.lenient:
            t = LENIENT.get(t, t)
        return t

    def arg(self, nodes: list, i: int) -> tuple[list, int]:
        """The argument starting at ``nodes[i]``: a group's content or one token; (content, next index)."""
        while i < len(nodes) and isinstance(nodes[i], str) and nodes[i] in DROP:
            i += 1
        if i >= len(nodes):
            return [], i
        n = nodes[i]
        if isinstance(n, Group):
            return list(n), i + 1
        arity = 1 if self.alias(n) in ONE_ARG else 2 if self.alias(n) in TWO_ARG else 0
        return list(nodes[i: i + 1 + arity]), i + 1 + arity  # x^\mathbf{V}: the command takes its argument

    def seq(self, nodes: list) -> list[str]:
        """Canonical pieces of a node list (each piece a canonical string of one atom)."""
        nodes = self.primitives(list(nodes))
        out: list[str] = []
        i = 0
        while i < len(nodes):
            n = nodes[i]
            if isinstance(n, Group):
                inner = self.seq(n)
                nxt = nodes[i + 1] if i + 1 < len(nodes) else None
                if len(inner) > 1 and nxt in ("^", "_") and not _fenced(inner):
                    out.append("{" + _join(inner) + "}")
                else:
                    out.extend(inner)
                i += 1
                continue
            t = self.alias(n)
            i += 1
            if t in DROP or t == "":
                if n in (r"\left", r"\right", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\biggl", r"\biggr",
                         r"\middle", r"\big", r"\Big", r"\bigg", r"\Bigg") and i < len(nodes) and nodes[i] == ".":
                    i += 1  # \left. is an invisible delimiter
                if t == "" and n in LENIENT and i < len(nodes):  # a font dropped leniently: keep its argument
                    a, i = self.arg(nodes, i)
                    out.extend(self.seq(a))
                continue
            if t in DROP_WITH_ARG:
                if i < len(nodes) and nodes[i] == "*":
                    i += 1
                _, i = self.arg(nodes, i)
                continue
            if t == r"\not" and i < len(nodes) and isinstance(nodes[i], str):
                nxt = self.alias(nodes[i])
                if nxt in ("=", r"\in"):
                    out.append(r"\neq" if nxt == "=" else r"\notin")
                    i += 1
                    continue
            if t == r"\begin" and i < len(nodes):
                env = _flat(nodes[i]) if isinstance(nodes[i], Group) else nodes[i]
                i += 1
                depth, j = 1, i
                while j < len(nodes):
                    if nodes[j] in (r"\begin", r"\end") and j + 1 < len(nodes) and (
                            _flat(nodes[j + 1]) if isinstance(nodes[j + 1], Group) else nodes[j + 1]) == env:
                        depth += 1 if nodes[j] == r"\begin" else -1
                        if depth == 0:
                            break
                    j += 1
                body = nodes[i:j]
                i = j + 2
                if env in ("array", "darray", "alignat", "alignat*", "alignedat") and body and isinstance(body[0],
                                                                                                        Group):
                    body = body[1:]  # the column spec / column count
                out.extend(self.env(env, body))
                continue
            if t == r"\sqrt":
                index = None
                if i < len(nodes) and nodes[i] == "[":
                    j = i + 1
                    while j < len(nodes) and nodes[j] != "]":
                        j += 1
                    index, i = nodes[i + 1:j], j + 1
                a, i = self.arg(nodes, i)
                body = "{" + _join(self.seq(a)) + "}"
                out.append(r"\sqrt" + (("[" + _join(self.seq(index)) + "]") if index else "") + body)
                continue
            if t in TWO_ARG:
                if t == r"\genfrac":
                    for _ in range(4):
                        _, i = self.arg(nodes, i)
                    t = r"\binom"
                a, i = self.arg(nodes, i)
                b, i = self.arg(nodes, i)
                out.append(t + "{" + _join(self.seq(a)) + "}{" + _join(self.seq(b)) + "}")
                continue
            if t in ONE_ARG:
                a, i = self.arg(nodes, i)
                if t == r"\text" and "$" in a:  # \text{for $|q|<1$}: text, then math
                    parts, cur, math = [], [], False
                    for x in a + ["$"]:
                        if x == "$":
                            if cur:
                                parts.append(_join(self.seq(cur)) if math else r"\text{" + _join(self.seq(cur)) + "}")
                            cur, math = [], not math
                        else:
                            cur.append(x)
                    out.extend(parts)
                    continue
                body = _join(self.seq(a))
                if t in (r"\mathrm", r"\text") and body in FUNCTIONS:
                    out.append("\\" + body)
                elif t in (r"\mathop", r"\mathord", r"\mathbin", r"\mathrel", r"\mathopen", r"\mathclose"):
                    out.extend(self.seq(a))
                elif t == r"\mathrm" and self.lenient and len(body) == 1:
                    out.append(body)
                elif t in FONTS and out and out[-1].startswith(t + "{") and out[-1].endswith("}") and \
                        t != r"\text":
                    out[-1] = out[-1][:-1] + body + "}"  # \mathbf{a}\mathbf{b} = \mathbf{ab}
                else:
                    out.append(t + "{" + body + "}")
                continue
            if t in ("^", "_"):
                a, i = self.arg(nodes, i)
                body = self.seq(a)
                s = _join(body)
                if t == "^" and s and set(body) == {"'"}:
                    out.append(s)
                    continue
                out.append(t + (s if len(body) == 1 else "{" + s + "}"))
                continue
            if t == "^" or t == "'":
                out.append(t)
                continue
            out.append(t)
        return self.order_scripts(out)

    def primitives(self, nodes: list) -> list:
        """``a \\over b`` → ``\\frac{a}{b}``; ``n \\choose k`` → ``\\binom{n}{k}`` (on this level)."""
        for prim, cmd in ((r"\over", r"\frac"), (r"\choose", r"\binom"), (r"\atop", r"\binom"),
                          (r"\brace", r"\binom"), (r"\brack", r"\binom")):
            if prim in nodes:
                k = nodes.index(prim)
                return [cmd, Group(nodes[:k]), Group(nodes[k + 1:])]
        out = []
        for n in nodes:  # x^\prime → x'
            if out and out[-1] == "^" and (n == r"\prime" or (isinstance(n, Group) and n and all(
                    x == r"\prime" for x in n))):
                out[-1] = "'" * (len(n) if isinstance(n, Group) else 1)
                continue
            out.append(n)
        return out

    def order_scripts(self, pieces: list[str]) -> list[str]:
        """``x^a_b`` → ``x_b^a``: subscript first."""
        out = list(pieces)
        for k in range(len(out) - 1):
            if out[k].startswith("^") and out[k + 1].startswith("_"):
                out[k], out[k + 1] = out[k + 1], out[k]
        return out

    def env(self, env: str, body: list) -> list[str]:
        while body and body[-1] == "\\\\":  # a trailing row break adds no row
            body = body[:-1]
        inner = _join(self.seq(body))
        if self.lenient:
            inner = inner.replace("&", "")
        if env in UNWRAP_ENVS:
            return self.seq(body)
        if env in MATRIX_DELIMS:
            a, b = MATRIX_DELIMS[env]
            return [a, r"\begin{matrix}" + inner + r"\end{matrix}", b]
        name = ENV_ALIASES.get(env, env)
        if self.lenient:
            name = LENIENT_ENVS.get(name, name)
            if env in ("cases", "dcases"):
                return [r"\{", r"\begin{matrix}" + inner + r"\end{matrix}"]
        return [r"\begin{" + name + "}" + inner + r"\end{" + name + "}"]


def _join(pieces: list[str]) -> str:
    """Pieces joined; a space only where a command would otherwise run into a letter (``\\sin x``)."""
    out = ""
    for p in pieces:
        if out and p and p[0].isalpha() and re.search(r"\\[A-Za-z]+$", out):
            out += " "
        out += p
    return out


def _fenced(pieces: list[str]) -> bool:
    """``( … )`` as one bracketed unit: ``{(a+b)}^2`` is ``(a+b)^2``."""
    if len(pieces) < 2 or (pieces[0], pieces[-1]) not in (("(", ")"), ("[", "]"), (r"\{", r"\}"), ("|", "|")):
        return False
    depth = 0
    for k, p in enumerate(pieces):
        depth += p in ("(", "[", r"\{")
        depth -= p in (")", "]", r"\}")
        if depth == 0 and k < len(pieces) - 1 and p in (")", "]", r"\}"):
            return False
    return True


_TRAILING_LABEL = re.compile(r"(?:\\q?quad|\\hfill|\\hspace\{[^}]*\}|~)+\s*\(\s*[\w.\-]+\s*\)\s*$")
_TRAILING_PUNCT = ("\\text{.}", "\\text{,}", "\\text{;}", ".", ",", ";")


def canonical(tex: str, lenient: bool = False) -> str:
    """The canonical spelling of ``tex`` (delimiters, if any, removed). Tolerates unbalanced braces."""
    t = (tex or "").strip()
    for a, b in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if t.startswith(a) and t.endswith(b) and len(t) > len(a) + len(b):
            t = t[len(a):-len(b)]
            break
    t = _TRAILING_LABEL.sub("", t)
    out = _join(_Canon(lenient).seq(_parse(_tokens(t))))
    changed = True
    while changed:
        changed = False
        for p in _TRAILING_PUNCT:
            if out.endswith(p) and len(out) > len(p):
                out, changed = out[: -len(p)], True
    return out


def formulas_in(text: str) -> list[str]:
    """The LaTeX of every ``$…$`` / ``$$…$$`` in extracted text."""
    return [a or b for a, b in re.findall(r"\$\$(.+?)\$\$|\$(.+?)\$", text, re.S)]


def formula_recall(expected: list[str], got: list[str], lenient: bool = False) -> float:
    """Fraction of ``expected`` formulas that some ``got`` formula equals canonically (each used once)."""
    if not expected:
        return 1.0
    pool: dict[str, int] = {}
    for g in got:
        c = canonical(g, lenient)
        pool[c] = pool.get(c, 0) + 1
    hit = 0
    for e in expected:
        c = canonical(e, lenient)
        if pool.get(c, 0) > 0:
            pool[c] -= 1
            hit += 1
    return hit / len(expected)


def text_recall(expected: list[str], text: str, lenient: bool = False) -> float:
    """Fraction of ``expected`` formulas whose canonical form occurs in the canonicalised output text: the same
    rule for any extractor, whether it delimits formulas or not."""
    if not expected:
        return 1.0
    whole = canonical(text.replace("$", " "), lenient)
    return sum(canonical(e, lenient) in whole for e in expected) / len(expected)
