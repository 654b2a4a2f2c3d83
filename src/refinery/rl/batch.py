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

from refinery.engine.logprobs import last_hidden, split_head, token_logprobs
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


def _cache_kwarg(module) -> str:
    # transformers 5.x renamed the KV-cache argument from past_key_values to cache
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _checkpointing_active(model) -> bool:
    # transformers drops the KV cache inside checkpointed layers (training mode, grad enabled): the shared-prompt
    # path would silently score responses without their prompt, so it must not run then
    on = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x; the old name warns there
    if on is None:
        on = getattr(model, "is_gradient_checkpointing", False)
    return bool(on) and model.training and torch.is_grad_enabled()


def _hidden_shared_prompt(model, batch: RolloutBatch, rows: torch.Tensor, device) -> torch.Tensor:
    """Last hidden states ``[b, T, H]`` that predict each response token: each distinct prompt runs once, its KV
    cache is copied to its rows (a differentiable gather) and the responses run on top."""
    from transformers import DynamicCache

    used, owner = torch.unique(batch.owner[rows], return_inverse=True)
    p_ids, p_attn = batch.prompt_ids[used].to(device), batch.prompt_attn[used].to(device)
    owner = owner.to(device)
    resp = batch.response_ids[rows].to(device)
    T = resp.shape[1]
    cache = DynamicCache()
    kw = _cache_kwarg(model)
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    first = last_hidden(model, input_ids=p_ids, attention_mask=p_attn, position_ids=p_pos, use_cache=True,
                        **{kw: cache})[:, -1:]
    hidden = first[owner]
    if T > 1:  # teacher-force responses[:, :-1] on top of each row's copy of its prompt's cache
        cache.batch_select_indices(owner)
        r_attn = batch.mask[rows, :-1].long().to(device)
        attn = torch.cat([p_attn[owner], r_attn], dim=1)
        pos = p_attn[owner].sum(-1, keepdim=True) + torch.arange(T - 1, device=device)[None, :]
        rest = last_hidden(model, input_ids=resp[:, :-1], attention_mask=attn, position_ids=pos, use_cache=True,
                           **{kw: cache})
        hidden = torch.cat([hidden, rest], dim=1)
    return hidden


def _hidden_full_rows(model, batch: RolloutBatch, rows: torch.Tensor, device) -> torch.Tensor:
    """The same hidden states from whole ``prompt + response`` rows, no cache (what checkpointed layers need)."""
    p_ids = batch.prompt_ids[batch.owner[rows]].to(device)
    p_attn = batch.prompt_attn[batch.owner[rows]].to(device)
    resp = batch.response_ids[rows].to(device)
    P = p_ids.shape[1]
    ids = torch.cat([p_ids, resp[:, :-1]], dim=1)
    attn = torch.cat([p_attn, batch.mask[rows, :-1].long().to(device)], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = last_hidden(model, input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
    return out[:, P - 1:]


def response_logprobs(model, batch: RolloutBatch, temperature: float, rows: torch.Tensor | None = None,
                      with_entropy: bool = False, entropy_grad: bool = False, chunk_tokens: int = 1024):
    """Log-probabilities (under logits / temperature, as sampled) of the response tokens of ``rows``, ``[b, T]``;
    with ``with_entropy`` also the per-token entropy of the same distribution, differentiable when
    ``entropy_grad`` (an entropy bonus in the loss), detached otherwise (a metric only). Logits are computed from
    the decoder's hidden states ``chunk_tokens`` at a time (:mod:`refinery.engine.logprobs`), so no
    ``[b, T, vocab]`` tensor exists. Results are on the model's device."""
    rows = torch.arange(len(batch)) if rows is None else rows
    _, head, softcap = split_head(model)
    device = head.weight.device
    hidden = (_hidden_full_rows if _checkpointing_active(model) else _hidden_shared_prompt)(
        model, batch, rows, device)
    resp = batch.response_ids[rows].to(device)
    logp, entropy = token_logprobs(hidden, head, resp, temperature, chunk_tokens, with_entropy, softcap)
    if entropy is not None and not entropy_grad:
        entropy = entropy.detach()
    return logp, entropy


def response_logprobs_full_logits(model, batch: RolloutBatch, temperature: float, rows: torch.Tensor | None = None,
                                  with_entropy: bool = False):
    """The reference path: whole ``prompt + response`` rows through ``model(...)``, full ``[b, T, vocab]`` fp32
    logits, their log-softmax and entropy at once. Kept for tests and ``benchmarks/bench_memory.py``."""
    rows = torch.arange(len(batch)) if rows is None else rows
    device = model.get_output_embeddings().weight.device
    p_ids = batch.prompt_ids[batch.owner[rows]].to(device)
    p_attn = batch.prompt_attn[batch.owner[rows]].to(device)
    resp = batch.response_ids[rows].to(device)
    ids = torch.cat([p_ids, resp[:, :-1]], dim=1)
    attn = torch.cat([p_attn, batch.mask[rows, :-1].long().to(device)], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    logits = logits[:, p_ids.shape[1] - 1:].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, resp[:, :, None]).squeeze(-1)
    return logp, (token_entropy(logits) if with_entropy else None)
