"""Greedy held-out accuracy of a policy on task items, with any scorer (task rule or reward verifiers)."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable


def heldout_accuracy(generator, items: Iterable[dict], score: Callable[[dict, str], bool], max_new_tokens: int = 64,
                     by_difficulty: bool = False) -> dict[str, float]:
    """Greedy accuracy as flat keys: ``accuracy``, ``accuracy.<task>`` (and ``accuracy.<task>.d<level>``).

    Items are chat prompts ``{id, prompt | messages, difficulty, task?}``; the task defaults to the id's prefix.
    """
    from refinery.generation import SamplingParams

    items = list(items)
    if not items:
        return {}
    chats = [it.get("messages") or [{"role": "user", "content": it["prompt"]}] for it in items]
    out = generator.generate(chats, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    hits: dict[str, list[int]] = defaultdict(list)
    for it, c in zip(items, out):
        task = it.get("task") or it["id"].rsplit("-", 1)[0]
        ok = int(score(it, c.text))
        hits["accuracy"].append(ok)
        hits[f"accuracy.{task}"].append(ok)
        if by_difficulty:
            hits[f"accuracy.{task}.d{it['difficulty']}"].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def task_rule(item: dict, response: str) -> bool:
    """Score with the procedural task's own check."""
    from refinery.tasks import get_task

    return get_task(item.get("task") or item["id"].rsplit("-", 1)[0]).check(response, item["answer"])
