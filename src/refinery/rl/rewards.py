"""Reward routing: each sample goes to the verifier of its domain (CrossThink's multi-domain batches)."""

from __future__ import annotations

from typing import Any

from refinery.verifiers.base import Verdict
from refinery.verifiers.thinking import THINK_OPEN, split_thinking

# the verdict on a response that ends inside its thinking: cut off before any answer (the overlong case)
TRUNCATED_IN_THINKING = Verdict(0.0, None, "truncated inside <think>: no answer after the thinking")


class RewardRouter:
    """``(item, response) -> Verdict``. Procedural math goes to the math verifier (an explicit final answer is
    required: no last-number fallback), countdown to its exact expression check, items with ``tests`` to the code
    sandbox, choice items to the choice verifier. A format reward is either mixed in with ``format_weight`` or,
    with ``format_required`` (Nemotron-CrossThink: reward 1 only for the right answer **and** the right format),
    multiplies the verifier's score.

    Every verifier reads only what follows the thinking (``<think>…</think>``). A response that ends inside its
    thinking (an unclosed ``<think>``, or no ``</think>`` at all when the prompt opened the thinking:
    ``opened=True``, DeepSeek-R1 templates) was cut off there: it is never scored and gets reward 0 (with a
    reward model, the lowest reward of its group), and the trainer counts it as truncated (overlong filter)."""

    def __init__(self, format_weight: float = 0.0, reward_model: str | None = None, rm_batch_size: int = 64,
                 format_required: bool = False):
        from refinery.verifiers.choice import ChoiceVerifier
        from refinery.verifiers.format import FormatVerifier
        from refinery.verifiers.math import MathConfig, MathVerifier

        self.math = MathVerifier(MathConfig(fallback_last_number=False))
        self.choice = ChoiceVerifier()
        self.format = FormatVerifier(require_think=False)
        self.format_weight = format_weight
        self.format_required = format_required
        self._code = None
        self.rm = None
        if reward_model:
            from refinery.reward_models.model import RewardScorer

            self.rm = RewardScorer(reward_model, batch_size=rm_batch_size)

    @property
    def code(self):
        if self._code is None:
            from refinery.verifiers.code import CodeVerifier

            self._code = CodeVerifier()
        return self._code

    def close(self) -> None:
        if self._code is not None:
            self._code.close()

    def verdict(self, item: dict[str, Any], response: str, opened: bool = False) -> Verdict:
        """The domain verifier's verdict on the answer after the thinking (``opened``: the prompt opened it)."""
        from refinery.tasks import TASKS

        split = split_thinking(response, opened)
        if not split.closed:
            return TRUNCATED_IN_THINKING
        answer = split.answer  # free of think tags, so each verifier's own split keeps it whole
        task = item.get("task") or item["id"].rsplit("-", 1)[0]
        if "tests" in item:
            return self.code(answer, item["tests"])
        if item.get("domain") == "choice":
            return self.choice(answer, item["answer"])
        if task in TASKS and item.get("domain") == "code":  # countdown: exact evaluation of the expression
            ok = TASKS[task].check(answer, item["answer"])
            return Verdict(1.0 if ok else 0.0, None, "solves the puzzle" if ok else "does not solve the puzzle")
        return self.math(answer, item["answer"])

    def __call__(self, item: dict[str, Any], response: str, opened: bool = False) -> tuple[float, bool]:
        """(reward, correct)."""
        return self._reward(response, self.verdict(item, response, opened), opened)

    def _reward(self, response: str, v: Verdict, opened: bool = False) -> tuple[float, bool]:
        if v is TRUNCATED_IN_THINKING:
            return 0.0, False  # no format reward either: it never reached an answer
        if opened:  # the format verifier sees the whole reasoning, with the thinking the prompt opened
            response = THINK_OPEN + response
        reward = v.score
        if self.format_required:
            reward *= self.format(response).score
        if self.format_weight:
            reward = (1 - self.format_weight) * reward + self.format_weight * self.format(response).score
        return reward, v.correct

    def group(self, item: dict[str, Any], responses: list[str], opened: bool = False) -> list[tuple[float, bool]]:
        """(reward, correct) for each response to one prompt. Code responses run in the sandbox together (not one
        after another). With a reward model the reward is its score (one batched forward for the group) and the
        verifier still decides ``correct`` for the accuracy metrics; a response cut off inside its thinking gets
        the group's lowest score (never more than any response that reached an answer)."""
        splits = [split_thinking(r, opened) for r in responses]
        if "tests" in item:
            todo = [k for k, s in enumerate(splits) if s.closed]
            verdicts = [TRUNCATED_IN_THINKING] * len(responses)
            for k, v in zip(todo, self.code.batch([(splits[k].answer, item["tests"]) for k in todo])):
                verdicts[k] = v
            scored = [self._reward(r, v, opened) for r, v in zip(responses, verdicts)]
        else:
            scored = [self(item, r, opened) for r in responses]
        if self.rm is None:
            return scored
        rm = [float(x) for x in self.rm.score([item["prompt"]] * len(responses), responses)["score"]]
        floor = min(rm)
        return [(x if s.closed else floor, ok) for x, s, (_, ok) in zip(rm, splits, scored)]

