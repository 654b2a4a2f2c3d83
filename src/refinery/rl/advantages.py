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


def reinforce_pp_baseline(rewards: torch.Tensor, lengths: torch.Tensor | None = None,
                          eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the whole batch **per token**, as the
    reference does (OpenRLHF / NeMo-RL ``reinforce_plus_plus``: a masked whitening of the token-level
    advantages): a response counts once per response token, so long responses weigh more in the batch mean and
    std. ``lengths`` ``[P, G]`` are the response lengths (tokens that count in the loss); None weighs every
    response once (per-sequence whitening)."""
    a = rewards - rewards.mean(-1, keepdim=True)
    w = torch.ones_like(a) if lengths is None else lengths.to(a.dtype)
    n = w.sum()
    if a.numel() < 2 or n <= 1:
        return a
    mean = (a * w).sum() / n
    var = (w * (a - mean) ** 2).sum() / (n - 1)  # unbiased over tokens, as OpenRLHF's masked whitening
    return (a - mean) / (var.sqrt() + eps)


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo",
                       lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``[P, G]`` advantages; ``lengths`` (response tokens in the loss) matter for ``reinforce_pp`` only."""
    fns = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}
    if estimator == "reinforce_pp":
        return reinforce_pp_baseline(rewards, lengths)
    if estimator not in fns:
        raise ValueError(f"unknown advantage estimator {estimator!r} ({', '.join(ESTIMATORS)})")
    return fns[estimator](rewards)
