"""Multiple-choice arithmetic (CrossThink's MCQ template): the answer is a letter, distractors are near misses."""

from __future__ import annotations

import random

from refinery.tasks.arithmetic import generate as arithmetic
from refinery.tasks.base import Task, final_answer, numbers_form, register

LETTERS = "ABCD"


def generate(rng: random.Random, difficulty: int) -> tuple[str, str, str]:
    prompt, answer, solution = arithmetic(rng, difficulty)
    value = int(answer)
    options = {value}
    while len(options) < 4:
        options.add(value + rng.choice([-10, -2, -1, 1, 2, 10, 11]) * rng.randint(1, 3))
    opts = sorted(options, key=lambda _: rng.random())
    letter = LETTERS[opts.index(value)]
    listed = " ".join(f"({c}) {v}" for c, v in zip(LETTERS, opts))
    worked = solution.rsplit(" The answer is", 1)[0]
    return f"{prompt}. Options: {listed}", letter, f"{worked} The answer is ({letter})."


def canonical(prompt: str, answer: str) -> str:
    """The arithmetic question under the options: the same key as the open-ended item (a question and its
    multiple-choice version land in the same split), whatever the option order."""
    stem, _, listed = prompt.partition(". Options: ")
    options = dict(part.split(") ", 1) for part in listed.lstrip("(").split(" (")) if listed else {}
    return "math " + numbers_form(stem, options.get(answer, answer).strip())


def check(response: str, answer: str) -> bool:
    got = final_answer(response)
    return got is not None and got.strip().strip("()") == answer


TASK = register(Task(name="arithmetic_mcq", domain="choice", difficulties=(1, 2, 3, 4, 5), generate=generate,
                     check=check, canonical=canonical,
                     description="arithmetic as 4-option multiple choice (CrossThink MCQ template)"))
