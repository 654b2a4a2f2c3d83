"""Templated multi-step GSM8K-style word problems with integer answers and worked solutions."""

from __future__ import annotations

import random
import re

from refinery.tasks.arithmetic import check
from refinery.tasks.base import Task, numbers_form, register

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mia", "Nils"]
_INTS = re.compile(r"\d+")
THINGS = ["apples", "books", "coins", "pens", "stamps", "marbles", "cards", "shells", "eggs", "plants"]


def _n(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _buy(rng, d):  # a + b*c
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    a, b, c = _n(rng, 2, 9 * d), _n(rng, 2, 3 + d), _n(rng, 2, 3 + 2 * d)
    prompt = f"{who} has {a} {what}. {who} buys {b} bags with {c} {what} each. How many {what} does {who} have now?"
    steps = [f"{b}*{c}={b * c}", f"{a}+{b * c}={a + b * c}"]
    return prompt, a + b * c, steps


def _share(rng, d):  # (a*b - c) shared among k  (exact division)
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    k = _n(rng, 2, 2 + d)
    per = _n(rng, 2, 4 + 2 * d)
    c = _n(rng, 1, 5 * d)
    total = per * k + c
    prompt = (f"{who} had {total} {what} and gave away {c}. {who} shared the rest equally among {k} friends. "
              f"How many {what} did each friend get?")
    steps = [f"{total}-{c}={total - c}", f"{total - c}/{k}={per}"]
    return prompt, per, steps


def _money(rng, d):  # price*qty + price2*qty2, change from a note
    who = rng.choice(NAMES)
    p1, q1, p2, q2 = _n(rng, 2, 5 + d), _n(rng, 1, 2 + d), _n(rng, 1, 4 + d), _n(rng, 1, 2 + d)
    cost = p1 * q1 + p2 * q2
    note = 10 * ((cost // 10) + 1 + rng.randint(0, d))
    prompt = (f"{who} buys {q1} notebooks at ${p1} each and {q2} pencils at ${p2} each, and pays with ${note}. "
              f"How many dollars of change does {who} get?")
    steps = [f"{q1}*{p1}={p1 * q1}", f"{q2}*{p2}={p2 * q2}", f"{p1 * q1}+{p2 * q2}={cost}",
             f"{note}-{cost}={note - cost}"]
    return prompt, note - cost, steps


def _rate(rng, d):  # speed * time + extra
    who = rng.choice(NAMES)
    v, t, extra = _n(rng, 2, 6 + 3 * d), _n(rng, 2, 2 + d), _n(rng, 1, 10 * d)
    prompt = (f"{who} walks {v} km each day for {t} days, then {extra} km more on the last day. "
              f"How many km does {who} walk in total?")
    steps = [f"{v}*{t}={v * t}", f"{v * t}+{extra}={v * t + extra}"]
    return prompt, v * t + extra, steps


TEMPLATES = {1: [_buy, _rate], 2: [_buy, _rate, _share], 3: [_buy, _rate, _share, _money]}


def generate(rng: random.Random, difficulty: int) -> tuple[str, str, str]:
    template = rng.choice(TEMPLATES[difficulty])
    prompt, answer, steps = template(rng, difficulty)
    return prompt, str(answer), " ".join(s + "." for s in steps) + f" The answer is {answer}."


_PEOPLE_AND_THINGS = re.compile(r"\b(?:" + "|".join(NAMES + THINGS) + r")\b")


def canonical(prompt: str, answer: str) -> str:
    """The template with its numbers as a multiset and the answer: the same problem told with other names or
    objects, or with its factors swapped, is one problem."""
    skeleton = _INTS.sub("#", _PEOPLE_AND_THINGS.sub("_", prompt))
    return f"word {skeleton} " + numbers_form(prompt, answer, ops=False)


TASK = register(
    Task(
        name="word_problems",
        domain="math",
        difficulties=tuple(TEMPLATES),
        generate=generate,
        check=check,
        canonical=canonical,
        description="templated multi-step word problems (GSM8K-style); difficulty 1-3 = templates and magnitudes",
    )
)
