"""Scoring rollouts for the update: response log-probabilities with each group's prompt encoded once.

The G samples of a group share their prompt. Rather than running G copies of ``prompt + response`` through the
model (what a plain padded batch does), the prompt is run once, its KV cache is copied to the G rows (a
differentiable gather, so gradients from every response flow back into the one prompt pass), and only the response
tokens are run on top. Same log-probabilities and gradients as the full batch (tested), with prompt compute divided
by G and no prompt padding repeated per row.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from refinery.generation.hf import left_pad
from refinery.rl.losses import token_entropy


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [U, P] distinct prompts, left-padded
    prompt_attn: torch.Tensor  # [U, P]
    owner: torch.Tensor  # [B] row -> its prompt
    response_ids: torch.Tensor  # [B, T] right-padded
    mask: torch.Tensor  # [B, T] float, 1 on real response tokens

    def __len__(self) -> int:
        return len(self.owner)


def make_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> RolloutBatch:
    """Rows of (prompt, response) token ids; identical prompts are stored once."""
    distinct: dict[tuple[int, ...], int] = {}
    owner = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids], dtype=torch.long)
    ids, attn = left_pad(list(distinct), pad_id)
    T = max(1, max(len(r) for r in response_ids))
    resp = torch.full((len(response_ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(response_ids), T), dtype=torch.float32)
    for i, r in enumerate(response_ids):
        if r:
            resp[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1.0
    return RolloutBatch(ids, attn, owner, resp, mask)


def _cache_kwarg(model) -> str:
    # transformers 5.x renamed the KV-cache argument from past_key_values to cache
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def response_logprobs(model, batch: RolloutBatch, temperature: float, rows: torch.Tensor | None = None,
                      with_entropy: bool = False, entropy_grad: bool = False):
    """Log-probabilities (under logits / temperature, as sampled) of the response tokens of ``rows``, ``[b, T]``;
    with ``with_entropy`` also the per-token entropy of the same distribution, differentiable when
    ``entropy_grad`` (an entropy bonus in the loss), detached otherwise (a metric only)."""
    from transformers import DynamicCache

    rows = torch.arange(len(batch)) if rows is None else rows
    used, owner = torch.unique(batch.owner[rows], return_inverse=True)
    p_ids, p_attn = batch.prompt_ids[used], batch.prompt_attn[used]
    resp = batch.response_ids[rows]
    T = resp.shape[1]
    cache = DynamicCache()
    kw = _cache_kwarg(model)
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    first = model(input_ids=p_ids, attention_mask=p_attn, position_ids=p_pos, use_cache=True,
                  **{kw: cache}).logits[:, -1:]
    logits = first[owner]
    if T > 1:  # teacher-force responses[:, :-1] on top of each row's copy of its prompt's cache
        cache.batch_select_indices(owner)
        r_attn = batch.mask[rows, :-1].long()
        attn = torch.cat([p_attn[owner], r_attn], dim=1)
        pos = p_attn[owner].sum(-1, keepdim=True) + torch.arange(T - 1)[None, :]
        rest = model(input_ids=resp[:, :-1], attention_mask=attn, position_ids=pos, use_cache=True,
                     **{kw: cache}).logits
        logits = torch.cat([logits, rest], dim=1)
    logits = logits.float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, resp[:, :, None]).squeeze(-1)
    entropy = token_entropy(logits if entropy_grad else logits.detach()) if with_entropy else None
    return logp, entropy
