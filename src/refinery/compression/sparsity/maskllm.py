"""MaskLLM (Fang et al., 2024): learnable N:M masks with frozen weights.

Each group of M weights has one logit per candidate pattern (6 for 2:4). The training forward uses the soft mask
``gumbel_softmax(κ·logits, τ) @ candidates``; τ decays linearly 4 → 0.05 and κ grows 1e2 → 5e2 over training;
logits start from a prior one-shot mask, ``logits += (overlap(prior, candidate) − N/2)·std(logits)·α`` (α = 3); the
loss adds ``−λ(t)·Σ‖W⊙M‖²`` with λ decaying 1e-5 → 0; the logits train with AdamW at 10× the base LR; the final
mask is the argmax candidate. Logits are saved so a mask learned on general text can keep learning downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from refinery.compression.sparsity.nm import candidates, prunable_linears


def linear_schedule(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at the last step, linearly."""
    if total <= 1:
        return end
    return start + (end - start) * min(step, total - 1) / (total - 1)


@dataclass
class MaskLLMSchedule:
    tau: tuple[float, float] = (4.0, 0.05)  # Gumbel temperature, decays
    kappa: tuple[float, float] = (1e2, 5e2)  # logit scaling, grows
    reg: tuple[float, float] = (1e-5, 0.0)  # weight-magnitude regulariser, decays

    def at(self, step: int, total: int) -> tuple[float, float, float]:
        return (linear_schedule(step, total, *self.tau), linear_schedule(step, total, *self.kappa),
                linear_schedule(step, total, *self.reg))


def prior_logits(prior: torch.Tensor, n: int = 2, m: int = 4, alpha: float = 3.0, init_std: float = 0.01,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits ``[out, in/M, C]`` from a prior keep-mask: small random logits, shifted up for candidates that
    overlap the prior and down for those that do not."""
    out_f, in_f = prior.shape
    cands = candidates(n, m)
    overlap = prior.reshape(out_f, in_f // m, m).float() @ cands.T  # kept positions in common, 0..N
    logits = torch.randn(out_f, in_f // m, cands.shape[0], generator=generator) * init_std
    return logits + (overlap - n / 2) * logits.std() * alpha


class MaskedLinear(nn.Module):
    """A frozen Linear whose weight is multiplied by a (soft while training, hard after) N:M mask."""

    def __init__(self, linear: nn.Linear, logits: torch.Tensor, n: int = 2, m: int = 4):
        super().__init__()
        self.linear = linear
        for p in linear.parameters():
            p.requires_grad_(False)
        self.logits = nn.Parameter(logits.clone().float())
        self.register_buffer("cands", candidates(n, m))
        self.n, self.m = n, m
        self.tau, self.kappa, self.hard = 4.0, 100.0, False

    def mask(self) -> torch.Tensor:
        out_f, in_f = self.linear.weight.shape
        if self.hard:
            probs = F.one_hot(self.logits.argmax(-1), self.cands.shape[0]).float()
        else:
            probs = F.gumbel_softmax(self.kappa * self.logits, tau=self.tau, hard=False, dim=-1)
        return (probs @ self.cands).reshape(out_f, in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.linear.weight * self.mask(), self.linear.bias)


def _swap(model, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def maskllm(model, calib: torch.Tensor, priors: dict[str, torch.Tensor] | None = None,
            init_logits: dict[str, torch.Tensor] | None = None, steps: int = 200, lr: float = 1e-3,
            batch_size: int = 8, n: int = 2, m: int = 4, alpha: float = 3.0,
            schedule: MaskLLMSchedule | None = None, seed: int = 0,
            log: Callable[[int, dict[str, float]], None] | None = None,
            calib_mask: torch.Tensor | None = None) -> tuple[dict, dict]:
    """Learn N:M masks for every prunable Linear of ``model`` on ``calib`` token windows ``[N, L]``; prune the
    model in place with the final (argmax) masks. ``priors`` (keep-masks, e.g. SparseGPT's) initialise the logits;
    ``init_logits`` (from an earlier run) continue learning instead. ``calib_mask`` ``[N, L]`` marks real tokens
    when the rows are padded examples (right padding; the loss skips pads). Returns ``(masks, logits)``."""
    schedule = schedule or MaskLLMSchedule()
    gen = torch.Generator().manual_seed(seed)
    linears = prunable_linears(model)
    wrapped: dict[str, MaskedLinear] = {}
    for name, lin in linears.items():
        if init_logits is not None and name in init_logits:
            logits = init_logits[name]
        elif priors is not None and name in priors:
            logits = prior_logits(priors[name], n, m, alpha, generator=gen)
        else:
            logits = torch.randn(lin.out_features, lin.in_features // m, len(candidates(n, m)), generator=gen) * 0.01
        wrapped[name] = MaskedLinear(lin, logits, n, m)
        _swap(model, name, wrapped[name])
    for p in model.parameters():
        p.requires_grad_(False)
    params = [w.logits for w in wrapped.values()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=10 * lr, weight_decay=0.0)  # mask logits at 10x the base LR
    model.train()
    try:
        for step in range(steps):
            tau, kappa, lam = schedule.at(step, steps)
            for w in wrapped.values():
                w.tau, w.kappa = tau, kappa
            idx = torch.randint(0, calib.shape[0], (min(batch_size, calib.shape[0]),), generator=gen)
            x = calib[idx]
            target = x[:, 1:].clone()
            if calib_mask is not None:
                target[~calib_mask[idx][:, 1:]] = -100
            logits = model(input_ids=x).logits[:, :-1]
            lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
            reg = sum(((w.linear.weight * w.mask()) ** 2).sum() for w in wrapped.values()) if lam else 0.0
            loss = lm - lam * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log is not None:
                log(step + 1, {"loss": float(lm.detach()), "tau": tau, "kappa": kappa, "reg_lambda": lam})
    finally:
        model.eval()
        masks, out_logits = {}, {}
        for name, w in wrapped.items():
            w.hard = True
            with torch.no_grad():
                keep = w.mask().bool()
                w.linear.weight.mul_(keep)
            masks[name], out_logits[name] = keep, w.logits.detach().clone()
            _swap(model, name, w.linear)
    return masks, out_logits
