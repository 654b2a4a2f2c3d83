"""Local transformers backend: batched decoding with left padding and a KV cache.

Each row (one sample of one request) carries its own sampling params and random generator, so requests with
different params batch together (the server relies on this) and a sample does not depend on its batch-mates.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinery.generation.base import Completion, GenerationError, Request, SamplingParams, check_requests

UNIFORM_BLOCK = 64


@dataclass
class Row:
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    index: int = 0
    sample: int = 0


def row_seed(seed: int | None, index: int, sample: int) -> int:
    """A per-(request, sample) seed: fixed when ``seed`` is set, fresh randomness otherwise."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    digest = hashlib.sha256(f"{seed}:{index}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class HFGenerator:
    """Generator over a local HF causal LM (a path or a loaded model + tokenizer)."""

    def __init__(self, model: Any, tokenizer: Any = None, batch_size: int = 64, device: str | None = None):
        if isinstance(model, (str, Path)):
            from refinery.models.io import load_model, load_tokenizer

            tokenizer = tokenizer or load_tokenizer(model)
            model = load_model(model)
        if tokenizer is None:
            raise GenerationError("HFGenerator needs a tokenizer when given a loaded model")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.device = device or str(next(model.parameters()).device)
        self.model.to(self.device)
        self.model.eval()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        import inspect

        # transformers 5.x renamed the KV-cache argument from past_key_values to cache.
        self.cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # ---- requests -> rows -------------------------------------------------------------------------------
    def encode(self, request: Request) -> list[int]:
        """Token ids of a prompt (as given) or of a chat (template applied, assistant turn opened)."""
        if isinstance(request, str):
            text = request
        else:
            text = self.tokenizer.apply_chat_template(request, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def rows(self, requests: list[Request], params: SamplingParams) -> list[Row]:
        check_requests(requests)
        out = []
        for i, request in enumerate(requests):
            ids = self.encode(request)
            if not ids:
                raise GenerationError(f"request {i}: empty prompt")
            if len(ids) >= self.context:
                raise GenerationError(f"request {i}: prompt has {len(ids)} tokens; the model's context is "
                                      f"{self.context}")
            out += [Row(ids, params, row_seed(params.seed, i, s), i, s) for s in range(params.n)]
        return out

    def generate(self, requests: list[Request], params: SamplingParams | None = None) -> list[Completion]:
        params = params or SamplingParams()
        return self.generate_rows(self.rows(requests, params))

    def generate_rows(self, rows: list[Row]) -> list[Completion]:
        """Decode rows in batches of similar prompt length; results come back in input order."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids))
        out: list[Completion | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, c in zip(idx, self._decode([rows[i] for i in idx])):
                out[i] = c
        return out  # type: ignore[return-value]

    # ---- the decode loop ------------------------------------------------------------------------------
    def _decode(self, rows: list[Row]) -> list[Completion]:
        import torch

        B = len(rows)
        # Rows of one request share their prompt: prefill each distinct prompt once, then copy its KV cache.
        distinct: dict[tuple[int, ...], int] = {}
        owner = torch.tensor([distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rows])
        prompts = list(distinct)
        ids, attn = left_pad(prompts, self.pad_id)
        budget = [min(r.params.max_new_tokens, self.context - len(r.prompt_ids)) for r in rows]
        temps = torch.tensor([r.params.temperature for r in rows])
        top_k = torch.tensor([r.params.top_k for r in rows])
        top_p = torch.tensor([r.params.top_p for r in rows])
        # Each row's random numbers come from its own generator, drawn in blocks of UNIFORM_BLOCK (one uniform per
        # token it may sample): one call per row per block, not per token, and memory bounded at long budgets.
        gens = [torch.Generator().manual_seed(r.seed) for r in rows]
        uniforms = torch.empty((B, UNIFORM_BLOCK), dtype=torch.float64)
        tokens: list[list[int]] = [[] for _ in rows]
        logps: list[list[float]] = [[] for _ in rows]
        texts = [""] * B
        reasons: list[str | None] = [None] * B

        from transformers import DynamicCache

        cache = DynamicCache()
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        ids, attn, pos = ids.to(self.device), attn.to(self.device), pos.to(self.device)
        want_logprobs = any(r.params.logprobs for r in rows)
        processed = torch.tensor([r.params.logprobs_mode == "processed" for r in rows])
        active = list(range(B))  # rows still decoding; finished rows leave the batch and the KV cache
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                                **{self.cache_kw: cache}).logits[:, -1].float().cpu()[owner]
            if len(prompts) < B:
                cache.batch_select_indices(owner.to(self.device))
            attn, pos = attn[owner.to(self.device)], pos[owner.to(self.device), -1:]
            for t in range(max(budget)):
                if t % UNIFORM_BLOCK == 0:
                    for i in active:
                        uniforms[i] = torch.rand(UNIFORM_BLOCK, generator=gens[i], dtype=torch.float64)
                raw = _logprobs(logits, temps, processed[active]) if want_logprobs else None
                nxt = sample_next(logits, temps, top_k, top_p, uniforms[active, t % UNIFORM_BLOCK])
                keep = []
                for j, i in enumerate(active):
                    tok = int(nxt[j])
                    tokens[i].append(tok)
                    if raw is not None:
                        logps[i].append(float(raw[j, tok]))
                    reasons[i] = self._finished(rows[i], tokens[i], texts, i, budget[i])
                    if reasons[i] is None:
                        keep.append(j)
                if not keep:
                    break
                if len(keep) < len(active):
                    sel = torch.tensor(keep)
                    cache.batch_select_indices(sel.to(self.device))
                    attn, pos, nxt = attn[sel.to(self.device)], pos[sel.to(self.device)], nxt[sel]
                    temps, top_k, top_p = temps[sel], top_k[sel], top_p[sel]
                    active = [active[j] for j in keep]
                attn = torch.cat([attn, torch.ones((len(active), 1), dtype=attn.dtype, device=self.device)], dim=1)
                pos = pos + 1
                logits = self.model(input_ids=nxt[:, None].to(self.device), attention_mask=attn, position_ids=pos,
                                    use_cache=True, **{self.cache_kw: cache}).logits[:, -1].float().cpu()
        for i, r in enumerate(rows):
            if not r.params.stop:  # rows with stop strings were decoded as they went
                toks = tokens[i][:-1] if tokens[i] and tokens[i][-1] in self.eos_ids else tokens[i]
                texts[i] = self.tokenizer.decode(toks, skip_special_tokens=True)
        return [
            Completion(text=texts[i], token_ids=tokens[i], logprobs=logps[i] if r.params.logprobs else None,
                       finish_reason=reasons[i] or "length", index=r.index, sample=r.sample,
                       prompt_tokens=len(r.prompt_ids))
            for i, r in enumerate(rows)
        ]

    def _finished(self, row: Row, toks: list[int], texts: list[str], i: int, budget: int) -> str | None:
        """'stop' / 'length' when row i is done, else None; text is tracked only for rows with stop strings."""
        if toks[-1] in self.eos_ids:
            if row.params.stop:
                texts[i] = self.tokenizer.decode(toks[:-1], skip_special_tokens=True)
            return "stop"
        if row.params.stop:
            texts[i] = self.tokenizer.decode(toks, skip_special_tokens=True)
            hits = [h for h in (texts[i].find(s) for s in row.params.stop) if h >= 0]
            if hits:
                texts[i] = texts[i][: min(hits)]
                return "stop"
        return "length" if len(toks) >= budget else None


def left_pad(seqs: list, pad_id: int):
    """``(ids, attention_mask)``: token id lists as one left-padded ``[len(seqs), longest]`` batch."""
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, width - len(x):] = torch.tensor(x)
        attn[i, width - len(x):] = 1
    return ids, attn


def _logprobs(logits, temps, processed):
    """Per-row log-probs of the next token: the model's (raw), or after the row's temperature where
    ``processed`` (the distribution the token is drawn from, before top-k/top-p truncation; greedy rows stay raw)."""
    import torch

    scale = torch.where(processed & (temps > 0), temps, torch.ones_like(temps)).to(logits.dtype)
    return torch.log_softmax(logits / scale[:, None], dim=-1)


def sample_next(logits, temps, top_k, top_p, uniforms):
    """One token per row: greedy where temperature is 0, else temperature + top-k + top-p sampling.

    ``top_k``/``top_p`` are per-row (0 / 1.0 = off). ``uniforms`` holds one U[0, 1) number per row (from the row's
    own seed), turned into a token by inverting the row's cumulative distribution: batched, and a row's draw does
    not depend on its batch-mates.
    """
    import torch

    out = logits.argmax(dim=-1)
    sampled = (temps > 0).nonzero().flatten()
    if len(sampled) == 0:
        return out
    scaled = logits[sampled].double() / temps[sampled, None].double()
    V = scaled.shape[-1]
    k, p = top_k[sampled], top_p[sampled]
    if bool((k > 0).any()) or bool((p < 1.0).any()):
        scaled, order = scaled.sort(dim=-1, descending=True)
        k = torch.where(k > 0, k, V)
        scaled = scaled.masked_fill(torch.arange(V)[None, :] >= k[:, None], float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        probs = probs.masked_fill(before >= p[:, None].double(), 0.0)  # the top token always survives
    else:
        order, probs = None, torch.softmax(scaled, dim=-1)
    cdf = probs.cumsum(dim=-1)
    # right=True: the first token whose cumulative mass exceeds u * total, so a zero-mass token is never chosen
    pick = torch.searchsorted(cdf, (uniforms[sampled].double() * cdf[:, -1])[:, None], right=True).clamp(max=V - 1)
    if order is not None:
        pick = order.gather(-1, pick)
    out[sampled] = pick.squeeze(-1)
    return out
