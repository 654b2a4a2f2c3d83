"""Controllers that change the run as it goes: length curriculum, domain stages, temperature, reference reset."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LengthCurriculum:
    """Max response length by stage: ``stages = [(max_new_tokens, until_step), ...]`` (last until_step may be None).

    With ``plateau_patience``, a stage also ends early when the tracked reward has not improved for that many
    updates (AceReason grows 8K -> 16K -> 24K -> 32K)."""

    stages: list[tuple[int, int | None]]
    plateau_patience: int | None = None
    min_delta: float = 1e-3
    index: int = 0
    best: float = float("-inf")
    since_best: int = 0
    started_at: int = 0

    def max_new_tokens(self) -> int:
        return self.stages[self.index][0]

    def update(self, step: int, reward: float | None = None) -> bool:
        """Advance if the stage is over; returns True when the stage changed."""
        if self.index >= len(self.stages) - 1:
            return False
        until = self.stages[self.index][1]
        plateau = False
        if self.plateau_patience is not None and reward is not None:
            if reward > self.best + self.min_delta:
                self.best, self.since_best = reward, 0
            else:
                self.since_best += 1
            plateau = self.since_best >= self.plateau_patience
        if (until is not None and step >= until) or plateau:
            self.index += 1
            self.best, self.since_best, self.started_at = float("-inf"), 0, step
            return True
        return False


@dataclass
class StageSchedule:
    """Which tasks feed the batch: ``stages = [(task_names, steps), ...]`` (AceReason: math, then code)."""

    stages: list[tuple[list[str], int | None]]

    def tasks_at(self, step: int) -> tuple[int, list[str]]:
        start = 0
        for i, (tasks, steps) in enumerate(self.stages):
            if steps is None or step < start + steps:
                return i, tasks
            start += steps
        return len(self.stages) - 1, self.stages[-1][0]


@dataclass
class TemperatureController:
    """Keeps the temperature-adjusted entropy of rollouts near ``target`` (AceReason 1.1: ~0.3).

    Multiplicative update ``T <- T * exp(rate * (target - H))``: entropy below target raises T, above lowers it.
    """

    temperature: float = 1.0
    target: float = 0.3
    rate: float = 0.5
    min_temperature: float = 0.3
    max_temperature: float = 2.0

    def update(self, entropy: float) -> float:
        import math

        t = self.temperature * math.exp(self.rate * (self.target - entropy))
        self.temperature = min(self.max_temperature, max(self.min_temperature, t))
        return self.temperature


@dataclass
class ReferenceReset:
    """ProRL: hard-reset the reference policy to the current one every ``every`` steps, when the validation
    metric has not improved for ``patience`` evaluations, or when KL exceeds ``kl_threshold``."""

    every: int | None = None
    patience: int | None = None
    kl_threshold: float | None = None
    min_delta: float = 1e-3
    best: float = float("-inf")
    since_best: int = 0
    last_reset: int = 0
    history: list[tuple[int, str]] = field(default_factory=list)

    def check(self, step: int, val_metric: float | None = None, kl: float | None = None) -> str | None:
        """The reason to reset now, or None. ``val_metric`` only when a validation ran at this step."""
        reason = None
        if val_metric is not None and self.patience is not None:
            if val_metric > self.best + self.min_delta:
                self.best, self.since_best = val_metric, 0
            else:
                self.since_best += 1
                if self.since_best >= self.patience:
                    reason = f"validation plateau ({self.since_best} evals without improvement)"
        if reason is None and self.kl_threshold is not None and kl is not None and kl > self.kl_threshold:
            reason = f"KL {kl:.4f} > {self.kl_threshold}"
        if reason is None and self.every and step - self.last_reset >= self.every:
            reason = f"every {self.every} steps"
        if reason is not None:
            self.last_reset, self.since_best = step, 0
            self.history.append((step, reason))
        return reason
