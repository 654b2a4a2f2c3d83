"""Task registry, deterministic sampling and leak-free train/test splits."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Callable, TypedDict

from refinery.errors import ConfigError


class Item(TypedDict):
    id: str
    domain: str
    prompt: str
    answer: str
    difficulty: int
    solution: str


@dataclass(frozen=True)
class Task:
    """A named generator of verifiable items.

    ``generate(rng, difficulty)`` returns (prompt, answer, solution); ``check(response, answer)`` says whether a
    model's final answer is right (the full verifiers live in ``refinery.verifiers``; this is the task's own rule).
    """

    name: str
    domain: str
    difficulties: tuple[int, ...]
    generate: Callable[[random.Random, int], tuple[str, str, str]]
    check: Callable[[str, str], bool]
    description: str


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown task '{name}'{hint} (available: {', '.join(task_names())})")
    return TASKS[name]


_WS = re.compile(r"\s+")


def normalise_prompt(prompt: str) -> str:
    """Case- and whitespace-insensitive form used to detect the same problem twice."""
    return _WS.sub(" ", prompt.strip().lower())


TEST_FRACTION = 0.1  # share of each task's prompt space reserved for the test split


def split_of(prompt: str) -> str:
    """'test' or 'train', decided by a hash of the normalised prompt: a property of the problem itself,
    so any train sample and any test sample are disjoint, whatever their sizes, seeds or order."""
    h = int.from_bytes(hashlib.sha256(normalise_prompt(prompt).encode()).digest()[:8], "big")
    return "test" if h / 2**64 < TEST_FRACTION else "train"


def _item_id(name: str, prompt: str) -> str:
    return f"{name}-{hashlib.sha1(normalise_prompt(prompt).encode()).hexdigest()[:12]}"


def _check_difficulty(task: Task, difficulty: int | list[int] | None) -> list[int]:
    if difficulty is None:
        return list(task.difficulties)
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    bad = [d for d in levels if d not in task.difficulties]
    if bad or not levels:
        raise ConfigError(
            f"task '{task.name}' has difficulties {list(task.difficulties)}, got {levels}"
        )
    return levels


def sample(
    name: str,
    n: int,
    seed: int = 0,
    difficulty: int | list[int] | None = None,
    split: str | None = None,
    exclude: set[str] | None = None,
    exhausted_after: int = 50,
) -> list[Item]:
    """``n`` distinct items of task ``name`` (no two share a normalised prompt), none in ``exclude``.

    ``split`` ('train' / 'test' / None for both) keeps only prompts of that split (see :func:`split_of`).
    Difficulties cycle evenly over the requested levels; a level that yields nothing new for about
    ``exhausted_after`` draws in a row counts as exhausted and the others fill in. Raises when every level is
    exhausted before ``n`` items.
    """
    if split not in (None, "train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    task = get_task(name)
    levels = _check_difficulty(task, difficulty)
    rng = random.Random(f"{name}:{seed}")
    seen = set(exclude or ())
    items: list[Item] = []
    live = list(levels)
    misses = dict.fromkeys(levels, 0)
    share = {None: 1.0, "train": 1 - TEST_FRACTION, "test": TEST_FRACTION}[split]
    limit = int(exhausted_after / share)
    turn = 0
    while len(items) < n:
        if not live:
            raise ConfigError(
                f"task '{name}' at difficulty {levels} cannot give {n} distinct items (found only {len(items)}); "
                "ask for fewer or add difficulty levels"
            )
        level = live[turn % len(live)]
        prompt, answer, solution = task.generate(rng, level)
        key = normalise_prompt(prompt)
        if key in seen or (split is not None and split_of(prompt) != split):
            misses[level] += 1
            if misses[level] >= limit:
                live.remove(level)
            continue
        misses[level] = 0
        turn += 1
        seen.add(key)
        items.append(
            Item(id=_item_id(name, prompt), domain=task.domain, prompt=prompt, answer=answer,
                 difficulty=level, solution=solution)
        )
    return items


def make_splits(
    name: str, n_train: int, n_test: int, seed: int = 0, difficulty: int | list[int] | None = None
) -> tuple[list[Item], list[Item]]:
    """Train and test items of one task; they never share a normalised prompt (see :func:`split_of`)."""
    test = sample(name, n_test, seed=seed, difficulty=difficulty, split="test")
    train = sample(name, n_train, seed=seed, difficulty=difficulty, split="train")
    return train, test


_ANSWER = re.compile(r"answer is\s*:?\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")


def final_answer(response: str) -> str | None:
    """The text after the last 'The answer is', up to the end of that sentence or line, or None."""
    matches = list(_ANSWER.finditer(response))
    if not matches:
        return None
    rest = response[matches[-1].end():]
    end = _SENTENCE_END.search(rest)
    answer = (rest[: end.start()] if end else rest).strip().rstrip(".")
    return answer or None
