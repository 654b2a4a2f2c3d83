"""Policy-gradient losses as small pure functions over per-token tensors ``[batch, time]``.

``mask`` marks response tokens that count (1) and padding / filtered samples (0).
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float = 0.2, eps_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss ``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))`` and where clipping was active.

    Decoupled ``eps_low``/``eps_high`` is DAPO's clip-higher (ProRL: 0.2 / 0.4). ``advantages`` is ``[B]`` or
    ``[B, T]``.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3",
               input_clamp: float | None = 20.0, output_clamp: float | None = 10.0) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy (Schulman's k1/k2/k3).

    As NeMo-RL (``kl_input_clamp_value: 20``, ``kl_output_clamp_value: 10``) and verl (low-var KL in [-10, 10])
    do, the log-ratio is clamped before the estimator and the estimate after it: one token the reference finds
    near-impossible would otherwise give an ``exp(20)``-sized term (k3) that swamps the batch. ``None`` disables.
    """
    log_ratio = logp - ref_logp
    if input_clamp is not None:
        log_ratio = log_ratio.clamp(-input_clamp, input_clamp)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio**2
    elif estimator == "k3":
        kl = torch.exp(-log_ratio) - 1.0 + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")
    return kl.clamp(-output_clamp, output_clamp) if output_clamp is not None else kl


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token losses to a scalar.

    - ``token-mean`` (DAPO / AceReason): sum over all response tokens / number of tokens;
    - ``seq-mean-token-mean`` (GRPO): mean over sequences of each sequence's token mean;
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): sum over tokens / (sequences x a constant ``max_len``).
    """
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        live = (mask.sum(-1) > 0).to(loss.dtype)
        return (per_seq * live).sum() / live.sum().clamp(min=1.0)
    if mode == "seq-mean-token-sum-norm":
        norm = max_len if max_len is not None else loss.shape[-1]
        return (loss * mask).sum() / (loss.shape[0] * norm)
    raise ValueError(f"unknown loss aggregation {mode!r} ({', '.join(AGGREGATIONS)})")


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position (AceReason 1.1's temperature-adjusted entropy)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def rollout_correction(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                       mode: str = "token_truncate", cap: float = 2.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token importance weights for rollouts sampled by another engine than the trainer (vLLM, or a bf16
    inference copy): ``w = pi_old(y_t) / pi_rollout(y_t)``, the trainer's log-prob of the sampled token at rollout
    time over the sampler's. ``token_truncate`` (TIS, as verl and TRL apply it): ``min(w, cap)``; ``token_mask``
    (MIS): ``w`` where ``w <= cap``, else 0 (the token leaves the gradient). Weights carry no gradient.
    Stats: the mean weight, the fraction truncated/masked and ``rollout_kl``, the k1 estimate of
    ``KL(pi_rollout || pi_old)`` over the sampled tokens (0 when the two engines agree)."""
    if cap <= 1:
        raise ValueError(f"rollout correction cap must be > 1, got {cap}")
    log_ratio = (old_logp.detach().float() - rollout_logp.float()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    over = ratio > cap
    if mode == "token_truncate":
        w = ratio.clamp(max=cap)
    elif mode == "token_mask":
        w = torch.where(over, torch.zeros_like(ratio), ratio)
    else:
        raise ValueError(f"unknown rollout correction {mode!r} (token_truncate, token_mask)")
    m = mask.to(ratio.dtype)
    n = m.sum().clamp(min=1.0)
    stats = {"is_weight_mean": float((w * m).sum() / n), "is_capped_frac": float((over.to(m.dtype) * m).sum() / n),
             "rollout_kl": float((-log_ratio * m).sum() / n)}
    return w.to(old_logp.dtype), stats


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                eps_low: float = 0.2, eps_high: float = 0.2, agg: str = "token-mean",
                ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                kl_clamp: tuple[float | None, float | None] = (20.0, 10.0),
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
                max_len: int | None = None,
                is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The full GRPO-family objective and its diagnostics (clip fraction, KL, entropy). ``is_weights``
    (:func:`rollout_correction`) scale each token's policy-gradient term, not the KL or entropy terms (verl).

    ``entropy`` must carry its graph when ``entropy_coef`` > 0 (the bonus is a gradient, not a logged number);
    a detached entropy with a non-zero coefficient is an error."""
    pg, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    if is_weights is not None:
        pg = pg * is_weights.detach()
    per_token = pg
    stats: dict[str, float] = {}
    m = mask.to(logp.dtype)
    n = m.sum().clamp(min=1.0)
    if kl_coef and ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, kl_estimator, *kl_clamp)
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * m).sum() / n)
    if entropy_coef and entropy is not None:
        if torch.is_grad_enabled() and logp.requires_grad and not entropy.requires_grad:
            raise ValueError("entropy_coef > 0 needs an entropy with a gradient (response_logprobs(..., "
                             "entropy_grad=True)); a detached one changes the logged loss and nothing else")
        per_token = per_token - entropy_coef * entropy
    loss = aggregate(per_token, mask, agg, max_len)
    stats["clip_frac"] = float((clipped.to(m.dtype) * m).sum() / n)
    stats["pg_loss"] = float(aggregate(pg.detach(), mask, agg, max_len))
    return loss, stats
