"""Greedy held-out accuracy of a causal LM on procedural task items."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from refinery.models.chat import prompt_text
from refinery.tasks import get_task
from refinery.tasks.base import Item


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy completions of chat prompts, batched with left padding (prompts sorted by length for speed)."""
    import torch

    tokenizer.padding_side = "left"
    texts = [prompt_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                out[i] = tokenizer.decode(row, skip_special_tokens=True)
    return out


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
