"""A synthetic preference task whose truth is known: correct vs incorrect worked solutions to procedural math.

- strength = how wrong the rejected answer is: off by 1 → 1 (subtle), by 2-5 → 2, by 10-50 → 3 (obvious);
- annotator noise: in the training split a fraction of weak pairs is flipped (default 30% of strength-1, 10% of
  strength-2, none of strength-3), as graded human labels are less reliable when the preference is slight. This is
  what scaled BT exploits: it trusts strong preferences more;
- a verbosity trap: correct solutions get filler sentences more often than wrong ones in the training split
  (``length_bias``), so length predicts preference there, as verbosity does in human and LLM-judge labels; the
  test split draws filler independently of correctness, so a model that learned "longer is better" is caught;
- per-response HelpSteer-style attributes on a 0-4 scale (helpfulness = correctness, verbosity = filler), with a
  fraction missing, for regression and ArmoRM.
"""

from __future__ import annotations

import random
import re
from typing import Any

from refinery.reward_models.data import make_pair

STRENGTH_NAMES = {1: "subtle", 2: "moderate", 3: "obvious"}
FILLER = [
    "Let me think about this carefully before answering.",
    "I will work through it one step at a time.",
    "First, I read the question again to be sure.",
    "This kind of problem needs some care.",
    "Here is my reasoning, written out in full.",
]
OBJECTIVES = ["helpfulness", "correctness", "verbosity"]


def _wrong(solution: str, answer: str, delta: int) -> str:
    """The same worked steps with the stated final answer off by ``delta`` (a slip between the work and the
    answer: the truth is checkable from the response itself). A number answer is shifted by ``delta``; an
    expression answer (countdown) has its last number shifted by ``|delta|`` (up, or down when that stays >= 1),
    so it misses the target or uses a number it was not given, at about the same length as the right one."""
    head, _, _ = solution.rpartition("The answer is")
    lead = head.strip() + " " if head.strip() else ""
    try:
        return lead + f"The answer is {int(answer) + delta}."
    except ValueError:
        pass
    last = list(re.finditer(r"\d+", answer))
    if not last:
        from refinery.errors import ConfigError

        raise ConfigError(f"synthetic preference pairs need a number in the task's answer to make a wrong one, and "
                          f"{answer!r} has none: use arithmetic, word_problems or countdown")
    m = last[-1]
    n = int(m.group())
    shifted = n - abs(delta) if delta < 0 and n - abs(delta) >= 1 else n + abs(delta)
    return lead + f"The answer is {answer[:m.start()]}{shifted}{answer[m.end():]}"


def _delta(rng: random.Random, strength: int) -> int:
    size = {1: 1, 2: rng.randint(2, 5), 3: rng.randint(10, 50)}[strength]
    return size if rng.random() < 0.5 else -size


def _pad(rng: random.Random, text: str, verbose: bool) -> tuple[str, int]:
    if not verbose:
        return text, 0
    k = rng.randint(1, 3)
    return " ".join(rng.sample(FILLER, k)) + " " + text, k


def synthetic_pairs(n: int, seed: int = 0, split: str = "train", tasks: tuple[str, ...] = ("arithmetic",),
                    difficulty: list[int] | None = None, length_bias: float | None = None,
                    noise: dict[int, float] | None = None, missing: float = 0.1) -> list[dict[str, Any]]:
    """``n`` pairs from the task's ``split`` (train and test never share a problem). ``length_bias`` is the
    probability that the correct answer (and 1 - it that the wrong one) is padded: default 0.6 for train and 0.5
    (no bias) for test; ``noise`` maps strength to flip probability (default train {1: .3, 2: .1}, test none)."""
    from refinery.tasks import get_task, sample
    from refinery.tasks.base import final_answer

    train = split == "train"
    bias = length_bias if length_bias is not None else (0.6 if train else 0.5)
    flips = noise if noise is not None else ({1: 0.3, 2: 0.1, 3: 0.0} if train else {})
    rng = random.Random(f"synthetic-pairs-{seed}-{split}")
    per_task = -(-n // len(tasks))
    items = []
    for t in tasks:
        # distinct prompts are enough for pair sets; the split itself is the problem's, so train and test pairs
        # never share a problem
        items += [(get_task(t), it) for it in sample(t, per_task, seed=seed, difficulty=difficulty or [1, 2],
                                                       split=split, unique="prompt")]
    rng.shuffle(items)
    pairs = []
    for task, it in items[:n]:
        s = rng.choice([1, 2, 3])
        good, good_k = _pad(rng, it["solution"], rng.random() < bias)
        wrong = _wrong(it["solution"], it["answer"], _delta(rng, s))
        while task.check(wrong, it["answer"]):  # a changed number can still solve the puzzle: change it more
            wrong = _wrong(wrong, final_answer(wrong) or "", 1)
        bad, bad_k = _pad(rng, wrong, rng.random() < 1 - bias)

        def attrs(correct: bool, k: int, s: int = s) -> dict[str, float | None]:
            score = 4.0 if correct else float(3 - s)
            a = {"helpfulness": score, "correctness": score, "verbosity": float(k + 1)}
            return {o: (None if rng.random() < missing else v) for o, v in a.items()}

        ga, ba = attrs(True, good_k), attrs(False, bad_k)
        truth = "correct"
        if rng.random() < flips.get(s, 0.0):  # an annotator got this one backwards
            good, bad, ga, ba, truth = bad, good, ba, ga, "flipped"
        lengths = "chosen-longer" if good_k > bad_k else "chosen-shorter" if bad_k > good_k else "same-length"
        pairs.append(make_pair(it["prompt"], good, bad, s, subset=f"{STRENGTH_NAMES[s]}-{lengths}",
                               section=lengths, label=truth, chosen_attributes=ga, rejected_attributes=ba))
    return pairs
