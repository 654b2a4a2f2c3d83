"""Procedural tasks with verifiable answers: the data every tiny-model recipe trains and evaluates on.

Each task is a generator ``(rng, difficulty) -> Item`` registered by name. Items are dicts
``{id, domain, prompt, answer, difficulty, solution}``; the same seed always gives the same items, and
``make_splits`` guarantees that train and test never share a (normalised) prompt.
"""

from refinery.tasks import arithmetic, countdown, mcq, word_problems  # noqa: F401  (registers the tasks)
from refinery.tasks.base import TASKS, Item, get_task, make_splits, normalise_prompt, sample, split_of, task_names

__all__ = ["TASKS", "Item", "get_task", "make_splits", "normalise_prompt", "sample", "split_of", "task_names"]
