"""Reward-model losses, each a pure function of reward tensors (HelpSteer2-Preference, TRL, ArmoRM).

Ties: a pair with preference strength 0 says nothing about which response is better, so every BT-family loss
gives it weight 0 and leaves it out of the mean (the HelpSteer2-Preference paper drops ties the same way).
Strengths are signed as in HelpSteer2 (negative: the second response is better); loaders orient pairs so that
``chosen`` is the preferred one and ``strength = |preference|``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean_over(weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Weighted sum divided by the number of non-tie pairs (0 when every pair is a tie)."""
    counted = (weights != 0).sum()
    return (weights * losses).sum() / counted.clamp(min=1)


def _strength(strength: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if strength is None:
        return torch.ones_like(like)
    s = torch.as_tensor(strength, dtype=like.dtype, device=like.device).abs()
    if (s > 3).any():
        raise ValueError(f"preference strength must be in -3..3 (HelpSteer2), got max |s| = {s.max().item()}")
    return s


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, strength: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry: ``mean(-log sigma(r_c - r_r))`` over non-tie pairs."""
    s = _strength(strength, r_chosen)
    return _mean_over((s > 0).to(r_chosen.dtype), -F.logsigmoid(r_chosen - r_rejected))


def bt_margin_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float,
                   strength: torch.Tensor | None = None) -> torch.Tensor:
    """BT with margin (Llama 2 / TRL ``margin``): ``mean(-log sigma(r_c - r_r - m))`` over non-tie pairs."""
    s = _strength(strength, r_chosen)
    m = torch.as_tensor(margin, dtype=r_chosen.dtype, device=r_chosen.device)
    return _mean_over((s > 0).to(r_chosen.dtype), -F.logsigmoid(r_chosen - r_rejected - m))


def scaled_bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Scaled BT (HelpSteer2-Preference): ``-m · log sigma(r_c - r_r)`` with ``m = |strength|`` in {1, 2, 3};
    averaged over the non-tie pairs (so a batch of strength-1 pairs equals plain BT)."""
    s = _strength(strength, r_chosen)
    return _mean_over(s, -F.logsigmoid(r_chosen - r_rejected))


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked MSE over k attributes: NaN targets (missing labels) are ignored; mean over observed entries."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    observed = ~torch.isnan(target)
    if not observed.any():
        return pred.sum() * 0.0
    diff = (pred - torch.nan_to_num(target)) ** 2
    return (diff * observed).sum() / observed.sum()


def centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, coef: float = 0.01) -> torch.Tensor:
    """Reward centering (Eisenstein et al.; TRL ``center_rewards_coefficient`` 0.01): ``c · mean((r_c + r_r)^2)``
    keeps rewards near zero mean, which BT alone leaves free."""
    return coef * ((r_chosen + r_rejected) ** 2).mean()


def pair_loss(kind: str, r_chosen: torch.Tensor, r_rejected: torch.Tensor, strength: torch.Tensor | None = None,
              margin_scale: float = 1.0, center_coef: float = 0.0) -> torch.Tensor:
    """The loss switch of the trainer: ``bt``, ``bt_margin`` (margin = margin_scale·strength) or ``scaled_bt``,
    plus optional centering."""
    if kind == "bt":
        loss = bt_loss(r_chosen, r_rejected, strength)
    elif kind == "bt_margin":
        s = _strength(strength, r_chosen)
        loss = bt_margin_loss(r_chosen, r_rejected, margin_scale * s, s)
    elif kind == "scaled_bt":
        if strength is None:
            raise ValueError("scaled_bt needs preference strengths")
        loss = scaled_bt_loss(r_chosen, r_rejected, strength)
    else:
        raise ValueError(f"unknown pair loss {kind!r} (bt, bt_margin, scaled_bt)")
    if center_coef:
        loss = loss + centering_loss(r_chosen, r_rejected, center_coef)
    return loss
