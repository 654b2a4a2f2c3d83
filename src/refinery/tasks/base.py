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
    canonical: Callable[[str, str], str] | None = None  # (prompt, answer) -> the problem's canonical form


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
_INT = re.compile(r"\d+")
_OPS = re.compile(r"(?<=[\d)])\s*([-+*/])")

# Bump when the canonical forms or the split change: cached policies trained on an older split are not reused.
SPLIT_VERSION = 2


def normalise_prompt(prompt: str) -> str:
    """Case- and whitespace-insensitive form of a prompt text."""
    return _WS.sub(" ", prompt.strip().lower())


def numbers_form(text: str, answer: str, *, ops: bool = True) -> str:
    """A canonical form of a numeric problem up to reordering: its integers and operators as multisets, and its
    answer. ``3+5`` and ``5+3`` share it (so do the same word problem told with other names); ``3-5`` and ``5-3``
    do not (different answers). Coarser than the problem itself, never finer: two problems it merges always land
    in the same split, which costs a little prompt space and can never leak."""
    ints = sorted(int(x) for x in _INT.findall(text))
    parts = ["n:" + ",".join(map(str, ints))]
    if ops:
        parts.append("o:" + "".join(sorted(_OPS.findall(text))))
    return " ".join([*parts, f"a:{answer.strip()}"])


def canonical_key(name: str, prompt: str, answer: str) -> str:
    """The problem's identity for splits and dedup: the task's own canonical form when it has one (shared across
    tasks that pose the same problem, e.g. an arithmetic question and its multiple-choice version), else the
    normalised prompt."""
    task = TASKS.get(name)
    if task is not None and task.canonical is not None:
        return task.canonical(prompt, answer)
    return f"{name}:{normalise_prompt(prompt)}"


TEST_FRACTION = 0.1  # share of each task's problem space reserved for the reported test split
VALID_FRACTION = 0.1  # ... and for the validation split that controllers (patience, plateau) read


def split_of(key: str) -> str:
    """'test', 'valid' or 'train', decided by a hash of the problem's canonical key (see :func:`canonical_key`):
    a property of the problem itself, so the three splits never share a problem, up to reordering, whatever
    their sizes, seeds or order."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < TEST_FRACTION else "valid" if h < TEST_FRACTION + VALID_FRACTION else "train"


def _item_id(name: str, key: str) -> str:
    return f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


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
    unique: str | None = None,
) -> list[Item]:
    """``n`` distinct items of task ``name``, none in ``exclude`` (canonical keys for held-out splits, normalised
    prompts for 'train' and None).

    ``split`` ('train' / 'valid' / 'test' / None for all) keeps only problems of that split (see :func:`split_of`).
    Held-out splits ('valid', 'test') hold no two items with one canonical form (:func:`canonical_key`), so each
    counts a distinct problem; 'train' only needs distinct prompts (the same problem told with other names is
    useful variety there, and can never be a held-out problem's twin: the split is the problem's own).
    ``unique`` ('problem' / 'prompt') overrides that choice (e.g. reward-model pairs, where a held-out set of
    distinct prompts suffices).
    Difficulties cycle evenly over the requested levels; a level that yields nothing new for about
    ``exhausted_after`` draws in a row counts as exhausted and the others fill in. Raises when every level is
    exhausted before ``n`` items.
    """
    if split not in (None, "train", "valid", "test"):
        raise ConfigError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if unique not in (None, "problem", "prompt"):
        raise ConfigError(f"unique must be 'problem' or 'prompt', got {unique!r}")
    task = get_task(name)
    levels = _check_difficulty(task, difficulty)
    rng = random.Random(f"{name}:{seed}")
    seen = set(exclude or ())
    items: list[Item] = []
    live = list(levels)
    misses = dict.fromkeys(levels, 0)
    share = {None: 1.0, "train": 1 - TEST_FRACTION - VALID_FRACTION, "valid": VALID_FRACTION,
             "test": TEST_FRACTION}[split]
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
        key = canonical_key(name, prompt, answer)
        by_problem = unique == "problem" if unique is not None else split in ("valid", "test")
        dedup = key if by_problem else normalise_prompt(prompt)
        if dedup in seen or (split is not None and split_of(key) != split):
            misses[level] += 1
            if misses[level] >= limit:
                live.remove(level)
            continue
        misses[level] = 0
        turn += 1
        seen.add(dedup)
        items.append(
            Item(id=_item_id(name, normalise_prompt(prompt)), domain=task.domain, prompt=prompt, answer=answer,
                 difficulty=level, solution=solution)
        )
    return items


def make_splits(
    name: str, n_train: int, n_test: int, seed: int = 0, difficulty: int | list[int] | None = None
) -> tuple[list[Item], list[Item]]:
    """Train and test items of one task; they never share a problem up to reordering (see :func:`split_of`)."""
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
