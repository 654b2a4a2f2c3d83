"""Greedy held-out accuracy of a causal LM on procedural task items."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from refinery.tasks import get_task
from refinery.tasks.base import Item


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy completions of task prompts, sent as one-turn chats."""
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=batch_size)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    return [c.text for c in gen.generate([[{"role": "user", "content": p}] for p in prompts], params)]


def task_accuracy(model, tokenizer, items: Iterable[Item], max_new_tokens: int = 64,
                  batch_size: int = 64) -> dict[str, float]:
    """Accuracy overall, per task (domain-named by task) and per (task, difficulty), as flat keys."""
    items = list(items)
    if not items:
        return {}
    responses = generate_greedy(model, tokenizer, [it["prompt"] for it in items], max_new_tokens, batch_size)
    hits: dict[str, list[int]] = defaultdict(list)
    for it, resp in zip(items, responses):
        task = it["id"].rsplit("-", 1)[0]
        ok = int(get_task(task).check(resp, it["answer"]))
        hits["accuracy"].append(ok)
        hits[f"accuracy.{task}"].append(ok)
        hits[f"accuracy.{task}.d{it['difficulty']}"].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}
