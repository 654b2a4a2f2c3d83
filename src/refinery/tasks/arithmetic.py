"""Multi-digit +, −, × with parentheses; the worked solution evaluates one operation per step."""

from __future__ import annotations

import random

from refinery.tasks.base import Task, final_answer, numbers_form, register

# difficulty -> (max digits per operand, number of operations, allowed operators)
LEVELS: dict[int, tuple[int, int, str]] = {
    1: (1, 1, "+-"),
    2: (2, 1, "+-"),
    3: (2, 2, "+-*"),
    4: (3, 2, "+-*"),
    5: (3, 3, "+-*"),
}


def _operand(rng: random.Random, digits: int) -> int:
    d = rng.randint(1, digits)
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)


def _build(rng: random.Random, n_ops: int, digits: int, ops: str) -> tuple[str, list[str], int, str]:
    """Random expression tree: (expression, solution steps, value, top-level operator or '')."""
    if n_ops == 0:
        v = _operand(rng, digits)
        return str(v), [], v, ""
    left_ops = rng.randint(0, n_ops - 1)
    le, ls, lv, lop = _build(rng, left_ops, digits, ops)
    re_, rs, rv, rop = _build(rng, n_ops - 1 - left_ops, digits, ops)
    op = rng.choice(ops)
    if op == "*" and abs(lv) > 99 and abs(rv) > 9:  # keep products within reach of a tiny model
        op = rng.choice([o for o in ops if o != "*"])
    value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    # Left-associative: the left side needs parentheses only under '*' when it is a sum/difference;
    # a compound right side always does.
    lx = f"({le})" if op == "*" and lop in "+-" and lop else le
    rx = f"({re_})" if rop else re_
    return f"{lx}{op}{rx}", ls + rs + [f"{lv}{op}{rv}={value}"], value, op


def generate(rng: random.Random, difficulty: int) -> tuple[str, str, str]:
    digits, n_ops, ops = LEVELS[difficulty]
    expr, steps, value, _ = _build(rng, n_ops, digits, ops)
    assert eval(expr) == value, (expr, value)  # noqa: S307 - expr is built here from integers and + - *
    solution = " ".join(s + "." for s in steps) + f" The answer is {value}."
    return f"Compute {expr}", str(value), solution


def check(response: str, answer: str) -> bool:
    got = final_answer(response)
    return got is not None and got.replace(",", "").strip() == answer


TASK = register(
    Task(
        name="arithmetic",
        domain="math",
        difficulties=tuple(LEVELS),
        canonical=lambda prompt, answer: "math " + numbers_form(prompt, answer),
        generate=generate,
        check=check,
        description="integer +, -, * with parentheses; difficulty 1-5 = digits x operations",
    )
)
