"""Rollout filters: dynamic sampling (DAPO/ProRL), overlong filtering and difficulty filtering (AceReason)."""

from __future__ import annotations

import torch


def informative_groups(rewards: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """``[P, G]`` -> ``[P]`` bool: groups whose rewards are not all equal (they carry a gradient signal)."""
    return (rewards.max(-1).values - rewards.min(-1).values) > tol


def overlong_mask(truncated: torch.Tensor) -> torch.Tensor:
    """1 for samples kept in the loss, 0 for those cut by the length limit (AceReason at short budgets)."""
    return (~truncated.bool()).to(torch.float32)


def difficulty_filter(pass_rates: dict[str, float], max_pass_rate: float) -> set[str]:
    """Prompt ids to drop: solved more often than ``max_pass_rate`` (AceReason: > 6/16)."""
    return {pid for pid, rate in pass_rates.items() if rate > max_pass_rate}
