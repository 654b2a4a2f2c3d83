"""Advantage estimators over a group of G rollouts per prompt: rewards ``[num_prompts, G]`` -> ``[num_prompts, G]``."""

from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")


def grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps); sample std (n-1), as TRL's GRPOTrainer."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: r - group mean (no std division, which biases toward too-easy and too-hard prompts)."""
    return rewards - rewards.mean(-1, keepdim=True)


def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: r_i - mean of the other G-1 rewards."""
    g = rewards.shape[-1]
    if g < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean(-1, keepdim=True)) * g / (g - 1)


def reinforce_pp_baseline(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the whole batch."""
    a = rewards - rewards.mean(-1, keepdim=True)
    return (a - a.mean()) / (a.std() + eps) if a.numel() > 1 else a


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo") -> torch.Tensor:
    fns = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo, "reinforce_pp": reinforce_pp_baseline}
    if estimator not in fns:
        raise ValueError(f"unknown advantage estimator {estimator!r} ({', '.join(ESTIMATORS)})")
    return fns[estimator](rewards)
