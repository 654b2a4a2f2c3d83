"""Countdown: reach a target with the given numbers; the answer is a Python expression, checked by evaluating it.

The check evaluates the expression with a restricted AST walker (integers, + - * /, parentheses only) and
requires each given number to be used at most once. The RL code domain runs it in the real sandbox instead.
"""

from __future__ import annotations

import ast
import random
import warnings
from collections import Counter
from fractions import Fraction

from refinery.tasks.base import Task, final_answer, register

# difficulty -> (how many numbers, largest number)
LEVELS: dict[int, tuple[int, int]] = {1: (2, 20), 2: (3, 20), 3: (3, 50), 4: (4, 50)}


def _combine(rng: random.Random, a: tuple[str, Fraction], b: tuple[str, Fraction]) -> tuple[str, Fraction, str]:
    ops = ["+", "-", "*"]
    if b[1] != 0 and (a[1] / b[1]).denominator == 1 and b[1] != 1:
        ops.append("/")
    op = rng.choice(ops)
    value = {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1], "/": a[1] / b[1] if b[1] else Fraction(0)}[op]
    ax = a[0] if a[0].isdigit() else f"({a[0]})"
    bx = b[0] if b[0].isdigit() else f"({b[0]})"
    return f"{ax}{op}{bx}", value, f"{_fmt(a[1])}{op}{_fmt(b[1])}={_fmt(value)}"


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def generate(rng: random.Random, difficulty: int) -> tuple[str, str, str]:
    count, top = LEVELS[difficulty]
    while True:
        numbers = [rng.randint(1, top) for _ in range(count)]
        pool = [(str(n), Fraction(n)) for n in numbers]
        steps = []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            expr, value, step = _combine(rng, pool[i], pool[j])
            steps.append(step)
            pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(expr, value)]
        expr, value = pool[0]
        if value.denominator == 1 and 1 <= value <= 999:
            break
    target = int(value)
    prompt = (f"Using the numbers {', '.join(map(str, numbers))}, each at most once, "
              f"write an expression equal to {target}.")
    solution = " ".join(s + "." for s in steps) + f" The answer is {expr}"
    return prompt, expr, solution


_ALLOWED_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the integer literals it uses; ValueError if not allowed."""
    try:
        with warnings.catch_warnings():  # "1or 2" from a policy: a SyntaxWarning on the user's console otherwise
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an expression: {e.msg}") from None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _ALLOWED_OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"'{ast.unparse(node)}' is not allowed (only integers, + - * / and parentheses)")

    return walk(tree.body), used


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """(numbers, target) from a countdown prompt."""
    head, _, tail = prompt.partition(", each at most once")
    numbers = [int(x) for x in head.removeprefix("Using the numbers ").split(", ")]
    target = int(tail.rsplit(" ", 1)[-1].rstrip("."))
    return numbers, target


def is_solution(expression: str, numbers: list[int], target: int) -> bool:
    """True when ``expression`` uses each of ``numbers`` at most once and equals ``target``."""
    try:
        value, used = evaluate(expression)
    except (ValueError, RecursionError, MemoryError):
        return False
    return value == target and not (Counter(used) - Counter(numbers))


def canonical(prompt: str, answer: str) -> str:
    """The puzzle up to the order of its numbers: the multiset of numbers and the target (whatever the
    reference expression)."""
    numbers, target = parse_prompt(prompt)
    return f"countdown n:{','.join(map(str, sorted(numbers)))} t:{target}"


def check(response: str, answer: str) -> bool:
    """Whether the response's final expression solves the same puzzle as the reference expression ``answer``."""
    got = final_answer(response)
    if got is None:
        return False
    ref_value, ref_numbers = evaluate(answer)
    return is_solution(got.rstrip("."), ref_numbers, int(ref_value))


TASK = register(
    Task(
        name="countdown",
        domain="code",
        difficulties=tuple(LEVELS),
        generate=generate,
        check=check,
        canonical=canonical,
        description="reach a target with given numbers; answer is a Python expression (the tiny code domain)",
    )
)
