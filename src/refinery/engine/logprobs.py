"""Token log-probabilities and entropy from hidden states, a chunk of tokens at a time.

A causal LM's forward returns ``[batch, time, vocab]`` logits; with a 151,936-token vocabulary at 8K tokens that
is ~5 GB per row in fp32, before the log-softmax and entropy add as much again. Here the decoder's last hidden
states ``[N, H]`` go through the LM head ``chunk`` tokens at a time, each chunk under activation checkpointing:
its ``[chunk, vocab]`` logits exist only while that chunk is computed, in forward and again in backward.
Same values and gradients as the full-logits path (tested).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def split_head(model):
    """``(model, lm_head, softcap)`` of an HF causal LM: the model (whose own forward gives the last hidden states,
    see :func:`last_hidden`), its output projection, and Gemma-2's final-logit soft-capping (None when the family
    has none)."""
    head = model.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None)")
    return model, head, getattr(model.config, "final_logit_softcapping", None)


def last_hidden(model, **kwargs) -> torch.Tensor:
    """The decoder's last hidden states (after its final norm), ``[B, T, H]``, through the model's own forward so
    that wrappers' hooks (FSDP2's unshard/reshard) run; logits are computed for the last position only."""
    out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


def _chunk_stats(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                 temperature: float, softcap: float | None, with_entropy: bool):
    logits = torch.nn.functional.linear(h, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return logp, logp.new_zeros(())
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def token_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, temperature: float = 1.0,
                   chunk: int = 1024, with_entropy: bool = False, softcap: float | None = None):
    """``log softmax(head(hidden) / temperature)`` at ``targets`` and, with ``with_entropy``, the entropy of the
    same distribution; ``hidden [..., H]``, ``targets [...]`` -> tensors of ``targets``' shape. Differentiable in
    ``hidden`` and the head's parameters; peak extra memory is one ``[chunk, vocab]`` block."""
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    logps, ents = [], []
    for s in range(0, max(len(t), 1), chunk):
        args = (h[s:s + chunk], head.weight, head.bias, t[s:s + chunk], temperature, softcap, with_entropy)
        lp, en = checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args)
        logps.append(lp)
        ents.append(en)
    logp = torch.cat(logps).reshape(shape)
    return logp, (torch.cat(ents).reshape(shape) if with_entropy else None)


def lm_loss_sum(model, input_ids: torch.Tensor, labels: torch.Tensor, chunk: int = 1024,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy of a causal LM summed over the labelled tokens (``labels != -100``, shifted as HF
    shifts them), and their count: ``model(input_ids, labels=labels).loss == sum / count``, without the
    ``[batch, time, vocab]`` logits. ``position_ids`` without a mask: packed rows (:mod:`refinery.engine.packing`)."""
    _, head, softcap = split_head(model)
    extra = {} if position_ids is None else {"position_ids": position_ids}
    hidden = last_hidden(model, input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                         **extra)[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logp, _ = token_logprobs(hidden[keep], head, target[keep], 1.0, chunk, softcap=softcap)
    return -logp.sum(), int(keep.sum())
