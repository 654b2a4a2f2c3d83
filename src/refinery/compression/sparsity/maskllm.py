"""MaskLLM (Fang et al., 2024): learnable N:M masks with frozen weights.

Each group of M weights has one logit per candidate pattern (6 for 2:4). The training forward uses the soft mask
``gumbel_softmax(κ·logits, τ) @ candidates``; τ decays linearly 4 → 0.05 and κ grows 1e2 → 5e2 over training;
logits start from a prior one-shot mask, ``logits += (overlap(prior, candidate) − N/2)·std(logits)·α`` (α = 3); the
loss adds ``−λ(t)·Σ‖W⊙M‖²`` with λ decaying 1e-5 → 0; the logits train with AdamW at 10× the base LR; the final
mask is the argmax candidate. Transfer (the paper's Sec. 4 "transfer learning" of a general mask to a downstream
domain): a learned mask initialises new logits as a prior, with the same prior strength, it does not continue the
saved logits. Defaults follow NVlabs/MaskLLM scripts/learnable_sparsity/llama2_7b_mask_only_tp8_c4.sh
(``--gumbel-scale-range 1e2 5e2 --gumbel-temperature-range 4 0.05 --prior-strength 3.0 --lr-mult 10
--weight-reg 1e-5``, LR 5e-5 with cosine decay to 5e-6) and learnable_sparsity/differentiable_mask.py (logits
initialised N(0, 0.01); the regulariser ``(W.detach() ⊙ M)²`` uses the mask sampled by that forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from refinery.compression.sparsity.nm import candidates, prunable_linears
from refinery.engine.accum import accumulate, micro_batches
from refinery.engine.config import EngineConfig
from refinery.engine.device import (
    autocast,
    check_precision,
    enable_activation_checkpointing,
    peak_memory_mb,
    reset_peak,
    resolve_device,
)


def linear_schedule(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at the last step, linearly."""
    if total <= 1:
        return end
    return start + (end - start) * min(step, total - 1) / (total - 1)


@dataclass
class MaskLLMSchedule:
    tau: tuple[float, float] = (4.0, 0.05)  # Gumbel temperature, decays (reference: --gumbel-temperature-range 4 0.05)
    kappa: tuple[float, float] = (1e2, 5e2)  # logit scaling, grows (reference: --gumbel-scale-range 1e2 5e2)
    reg: tuple[float, float] = (1e-5, 0.0)  # weight regulariser, decays linearly to 0 (reference: --weight-reg 1e-5,
    # pretrain_maskllm.py: weight_reg * (1 - iteration / train_iters))

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
        self.sparse_weight_norm: torch.Tensor | None = None  # Σ (W ⊙ M)² of the last forward's mask
        self.noise: torch.Tensor | None = None  # this step's Gumbel noise (see resample)

    def resample(self) -> None:
        """Draw this step's Gumbel noise (as ``F.gumbel_softmax`` does): every forward until the next call uses
        the same soft mask, so the micro-batches of one step, and a checkpointed layer's recompute, see one mask
        sample as a whole-batch step does."""
        self.noise = -torch.empty_like(self.logits, memory_format=torch.legacy_contiguous_format).exponential_().log()

    def mask(self) -> torch.Tensor:
        out_f, in_f = self.linear.weight.shape
        if self.hard:
            probs = F.one_hot(self.logits.argmax(-1), self.cands.shape[0]).float()
        elif self.noise is not None:
            probs = torch.softmax((self.kappa * self.logits + self.noise) / self.tau, dim=-1)
        else:
            probs = F.gumbel_softmax(self.kappa * self.logits, tau=self.tau, hard=False, dim=-1)
        return (probs @ self.cands.to(probs.dtype)).reshape(out_f, in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask()  # one Gumbel sample per forward, shared by the output and the regulariser
        if self.training:
            self.sparse_weight_norm = (self.linear.weight.detach() * mask).pow(2).sum()
        w = self.linear.weight
        return F.linear(x, w * mask.to(w.dtype), self.linear.bias)  # a bf16 checkpoint stays bf16 (logits fp32)


def masks_from_logits(logits: dict[str, torch.Tensor], n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """The argmax (hard) keep-mask ``[out, in]`` of each layer's saved logits ``[out, in/M, C]``."""
    cands = candidates(n, m).bool()
    return {k: cands[v.argmax(-1)].reshape(v.shape[0], -1) for k, v in logits.items()}


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    """Cosine decay from ``lr`` to ``min_lr`` (the reference: --lr-decay-style cosine, --min-lr = LR / 10)."""
    import math

    if total <= 1:
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(step, total - 1) / (total - 1)))


def _swap(model, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def maskllm(model, calib: torch.Tensor, priors: dict[str, torch.Tensor] | None = None,
            init_logits: dict[str, torch.Tensor] | None = None, steps: int = 200, lr: float = 5e-5,
            batch_size: int = 8, n: int = 2, m: int = 4, alpha: float = 3.0, lr_mult: float = 10.0,
            min_lr_ratio: float = 0.1,
            schedule: MaskLLMSchedule | None = None, seed: int = 0,
            log: Callable[[int, dict[str, float]], None] | None = None,
            calib_mask: torch.Tensor | None = None, engine: EngineConfig | None = None) -> tuple[dict, dict]:
    """Learn N:M masks for every prunable Linear of ``model`` on ``calib`` token windows ``[N, L]``; prune the
    model in place with the final (argmax) masks. ``priors`` (keep-masks: SparseGPT's, or a learned mask for
    transfer, see ``masks_from_logits``) initialise the logits with prior strength ``alpha``; ``init_logits`` resume
    an interrupted run's logits exactly (not transfer). ``lr`` is the base LR (reference 5e-5); the logits train at
    ``lr_mult`` x it (reference --lr-mult 10), cosine-decayed to ``min_lr_ratio`` x. ``calib_mask`` ``[N, L]``
    marks real tokens when the rows are padded examples (right padding; the loss skips pads). ``engine``: the
    device the model and logits train on, bf16 autocast, activation checkpointing and micro-batches (one Gumbel
    sample per step shared by its micro-batches; the LM loss is one token-mean over the step's batch). The model
    comes back on the device it came from. Returns ``(masks, logits)`` on CPU."""
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
    eng = engine or EngineConfig(device="cpu")
    home = next(model.parameters()).device
    device = resolve_device(eng.device)
    check_precision(eng.precision, device)
    model.to(device)
    if eng.activation_checkpointing:
        enable_activation_checkpointing(model)
    opt = torch.optim.AdamW(params, lr=lr_mult * lr, weight_decay=0.0)
    model.train()
    try:
        for step in range(steps):
            tau, kappa, lam = schedule.at(step, steps)
            for w in wrapped.values():
                w.tau, w.kappa = tau, kappa
                w.resample()
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, lr_mult * lr, lr_mult * lr * min_lr_ratio)
            idx = torch.randint(0, calib.shape[0], (min(batch_size, calib.shape[0]),), generator=gen)
            x = calib[idx]
            target = x[:, 1:].clone()
            if calib_mask is not None:
                target[~calib_mask[idx][:, 1:]] = -100

            def piece(rows: torch.Tensor, x=x, target=target, lam=lam):
                with autocast(eng.precision, device):
                    logits = model(input_ids=x[rows].to(device)).logits[:, :-1]
                t = target[rows].to(device)
                lm = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100)
                # maximise the kept weights' magnitude under this step's mask sample (no second Gumbel draw)
                reg = sum(w.sparse_weight_norm for w in wrapped.values()) if lam else 0.0
                return lm - lam * reg, {"lm": float(lm.detach())}

            opt.zero_grad(set_to_none=True)
            reset_peak(device)
            rows = torch.arange(x.shape[0])
            st = accumulate(piece, micro_batches(rows, eng.micro_batch_rows), (target != -100).float())
            opt.step()
            if log is not None:
                log(step + 1, {"loss": st["lm"], "tau": tau, "kappa": kappa, "reg_lambda": lam,
                               "peak_memory_mb": round(peak_memory_mb(device), 1)})
    finally:
        model.eval()
        masks, out_logits = {}, {}
        for name, w in wrapped.items():
            w.hard, w.noise = True, None
            with torch.no_grad():
                keep = w.mask().bool()
                w.linear.weight.mul_(keep)
            masks[name], out_logits[name] = keep.cpu(), w.logits.detach().cpu().clone()
            _swap(model, name, w.linear)
        model.to(home)
    return masks, out_logits
