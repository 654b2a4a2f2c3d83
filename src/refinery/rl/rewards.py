"""Reward routing: each sample goes to the verifier of its domain (CrossThink's multi-domain batches)."""

from __future__ import annotations

from typing import Any

from refinery.verifiers.base import Verdict


class RewardRouter:
    """``(item, response) -> Verdict``. Procedural math goes to the math verifier (an explicit final answer is
    required: no last-number fallback), countdown to its exact expression check, items with ``tests`` to the code
    sandbox, choice items to the choice verifier. A format reward is either mixed in with ``format_weight`` or,
    with ``format_required`` (Nemotron-CrossThink: reward 1 only for the right answer **and** the right format),
    multiplies the verifier's score."""

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

    def verdict(self, item: dict[str, Any], response: str) -> Verdict:
        from refinery.tasks import TASKS

        task = item.get("task") or item["id"].rsplit("-", 1)[0]
        if "tests" in item:
            return self.code(response, item["tests"])
        if item.get("domain") == "choice":
            return self.choice(response, item["answer"])
        if task in TASKS and item.get("domain") == "code":  # countdown: exact evaluation of the expression
            ok = TASKS[task].check(response, item["answer"])
            return Verdict(1.0 if ok else 0.0, None, "solves the puzzle" if ok else "does not solve the puzzle")
        return self.math(response, item["answer"])

    def __call__(self, item: dict[str, Any], response: str) -> tuple[float, bool]:
        """(reward, correct)."""
        return self._reward(response, self.verdict(item, response))

    def _reward(self, response: str, v: Verdict) -> tuple[float, bool]:
        reward = v.score
        if self.format_required:
            reward *= self.format(response).score
        if self.format_weight:
            reward = (1 - self.format_weight) * reward + self.format_weight * self.format(response).score
        return reward, v.correct

    def group(self, item: dict[str, Any], responses: list[str]) -> list[tuple[float, bool]]:
        """(reward, correct) for each response to one prompt. Code responses run in the sandbox together (not one
        after another). With a reward model the reward is its score (one batched forward for the group) and the
        verifier still decides ``correct`` for the accuracy metrics."""
        if "tests" in item:
            verdicts = self.code.batch([(r, item["tests"]) for r in responses])
            scored = [self._reward(r, v) for r, v in zip(responses, verdicts)]
        else:
            scored = [self(item, r) for r in responses]
        if self.rm is None:
            return scored
        rm = self.rm.score([item["prompt"]] * len(responses), responses)["score"]
        return [(float(x), ok) for x, (_, ok) in zip(rm, scored)]

