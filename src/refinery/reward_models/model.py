"""The reward-model backbone: any transformers causal LM with a linear head on the last token's final hidden state.

``AutoModelForSequenceClassification`` is exactly that (Llama/Qwen/Mistral ``score`` head, no bias) and loads a
user's real checkpoint with the same code, so a reward model directory is a plain HF directory plus
``refinery_rm.json`` (objective names, which output is the reward, max length).

One pooling rule, the exported model's own: a transformers sequence classifier reads the **rightmost token that is
not ``config.pad_token_id``**. Training, ``rm score``, ``rm eval`` and a plain HF forward of the saved directory
therefore all read the same position because (1) batches are padded with ``config.pad_token_id`` and the tokenizer
saved beside the model pads with that same id (a tokenizer without a pad token gets EOS, as TRL does), (2) trailing
pad-id tokens are stripped from an encoding (a chat template that ends in EOS = pad would otherwise be scored at
the token before it by HF and at EOS by a last-token reader such as vLLM), and (3) rewards are the model's own
``forward().logits``. Sequences are right-padded so RoPE positions do not depend on batch-mates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refinery.errors import CheckpointError, DataError
from refinery.reward_models.heads import ArmoHead

META = "refinery_rm.json"


def messages_of(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return list(prompt)
    raise DataError(f"prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def _texts(tokenizer, prompt: Any, response: str) -> tuple[str, str]:
    """``(the whole conversation up to the end of the last user turn, the whole conversation)`` as text; the
    first is a prefix of the second for every template (see ``user_turn_end``: a prompt rendered alone is not
    always one, e.g. Phi-3 closes it with <|endoftext|>, Mistral moves the system message into its last turn)."""
    msgs = messages_of(prompt)
    if getattr(tokenizer, "chat_template", None):
        from refinery.models.chat_templates import user_turn_end

        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        return user_turn_end(tokenizer, msgs, full), full
    turns = "".join(f"{'User' if m['role'] == 'user' else m['role'].title()}: {m['content']}\n\n" for m in msgs)
    return turns, turns + "Assistant: " + response + (tokenizer.eos_token or "")


@dataclass
class Encoded:
    """Token ids of prompt+response (no trailing pad-id token: the last id is the one the head reads), and the
    index of the prompt's end-of-turn token (ArmoRM's gating input)."""

    ids: list[int]
    prompt_end: int


def _last_content(tokenizer, ids: list[int], end: int) -> int:
    """The last index ``< end`` whose token is not whitespace (Gemma's ``<end_of_turn>`` before its ``\n``)."""
    j = min(end, len(ids)) - 1
    while j > 0 and not tokenizer.decode([ids[j]]).strip():
        j -= 1
    return max(j, 0)


def _n_tokens_of_prefix(tokenizer, full: str, prefix: str) -> int:
    """How many tokens of ``full``'s encoding cover its first ``len(prefix)`` characters (by offsets, so a token
    merging across the boundary, e.g. Mistral's " Hello", counts once)."""
    try:
        offsets = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers have no offsets
        return len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    return sum(1 for start, _ in offsets if start < len(prefix))


def encode(tokenizer, prompt: Any, response: str, max_length: int) -> Encoded:
    """Chat-formatted ids, left-truncated to ``max_length`` (the response end is what the head reads).

    ``prompt_end`` is ArmoRM's gating position: the token that closes the last user turn, just before the
    assistant header (RLHFlow armo-rm ``find_token_for_gating`` returns the start of
    ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n``, i.e. the user turn's ``<|eot_id|>``), not
    the last token of the generation prompt. Trailing tokens equal to the tokenizer's pad id are dropped, so the
    last id is the position every reader scores (see the module docstring)."""
    turns, full = _texts(tokenizer, prompt, response)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    while pad is not None and len(ids) > 1 and ids[-1] == pad:
        ids = ids[:-1]
    gate = _last_content(tokenizer, ids, _n_tokens_of_prefix(tokenizer, full, turns.rstrip()))
    cut = max(0, len(ids) - max_length)
    return Encoded(ids[cut:], max(0, min(gate - cut, len(ids) - cut - 1)))


def pad_id_of(model) -> int:
    """The pad id the model's own pooling skips (set by :func:`load_backbone`)."""
    pad = model.config.pad_token_id
    if pad is None:
        raise CheckpointError(f"{type(model).__name__} has no config.pad_token_id; load it with load_backbone")
    return int(pad)


def pooled_index(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """transformers' sequence-classification pooling: the rightmost token that is not ``pad_id`` (works for left
    and right padding; the last position when a row holds only pad ids)."""
    T = input_ids.shape[-1]
    pos = torch.arange(T, device=input_ids.device)
    non_pad = input_ids != pad_id
    idx = (pos * non_pad).argmax(-1)
    return torch.where(non_pad.any(-1), idx, torch.full_like(idx, T - 1))


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    L = max(len(e.ids) for e in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "last": torch.tensor([len(e.ids) - 1 for e in items]),
            "prompt_end": torch.tensor([e.prompt_end for e in items])}


def length_batches(encs: list[Encoded], batch_size: int, pad: int):
    """Yield ``(indices, collated batch)`` over ``encs`` sorted by length (little padding); scatter results back
    with the indices."""
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        yield idx, collate([encs[i] for i in idx], pad)


def hidden_states(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the pooled token (the position the model's own head reads) and at the prompt's
    end-of-turn token: ``([N, H], [N, H])``."""
    device = next(model.parameters()).device
    out = model.base_model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    h = out.last_hidden_state
    rows = torch.arange(h.shape[0], device=h.device)
    pooled = pooled_index(batch["input_ids"], pad_id_of(model)).to(h.device)
    return h[rows, pooled], h[rows, batch["prompt_end"].to(h.device)]


def head_of(model) -> torch.nn.Linear:
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise CheckpointError(f"{type(model).__name__} has no linear 'score' head")


def rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[N, k]``: the model's own forward (``AutoModelForSequenceClassification`` pooling), nothing re-implemented,
    so what is trained is what RewardBench, TRL or vLLM read from the saved directory."""
    device = next(model.parameters()).device  # the batch is built on CPU; the model may sit on a GPU
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits


def load_backbone(path: str | Path, num_labels: int | None = None, dtype=None):
    """A sequence-classification model from a causal-LM directory (new random head with ``num_labels`` outputs)
    or from a reward-model directory (its head kept). Returns ``(model, tokenizer)``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from refinery.models.io import _check_dir, load_tokenizer

    path = _check_dir(path)
    tok = load_tokenizer(path)
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path)
        is_rm = any("SequenceClassification" in a for a in (config.architectures or []))
        kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
        if num_labels is not None and not (is_rm and config.num_labels == num_labels):
            kwargs["num_labels"] = num_labels
            if is_rm:
                kwargs["ignore_mismatched_sizes"] = True
        if config.pad_token_id is None:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            if pad is None:
                raise CheckpointError(f"{path}: neither the config nor the tokenizer has a pad or EOS token; "
                                      "the reward's pooled position is undefined")
            kwargs["pad_token_id"] = pad
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # transformers raises many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load a reward-model backbone from {path}: {msg}") from None
    _align_pad(model, tok)
    return model, tok


def _align_pad(model, tok) -> None:
    """The tokenizer saved beside the model pads with the id the model's pooling skips."""
    pad = model.config.pad_token_id
    if isinstance(pad, (list, tuple)):
        pad = model.config.pad_token_id = int(pad[0])
    if tok.pad_token_id != pad:
        tok.pad_token = tok.convert_ids_to_tokens(int(pad))


def save_reward_model(model, tokenizer, out: Path, meta: dict[str, Any], state_dict: dict | None = None) -> None:
    """A plain HF directory (+ tokenizer + ``refinery_rm.json``); ``state_dict``: the gathered weights of a
    sharded model (FSDP2), written by rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / META
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is corrupt: {e.msg}") from None


class RewardScorer:
    """Scores (prompt, response) pairs with a saved reward model of either kind: a sequence-classification RM
    (HelpSteer2-Preference) or an ArmoRM (objectives + gate). ``score`` returns ``{"score", "objectives",
    "gates"}`` as lists (the last two None for a single-head RM)."""

    def __init__(self, path: str | Path, batch_size: int = 32):
        meta = read_meta(path)
        self.path, self.batch_size = Path(path), batch_size
        self.kind = meta.get("kind", "sequence_classification")
        self.objectives: list[str] = meta.get("objectives", ["reward"])
        self.max_length = int(meta.get("max_length", 1024))
        if self.kind == "armo":
            self.model, self.tokenizer = load_backbone(self.path / meta.get("backbone", "backbone"))
            self.armo = ArmoHead.load(self.path)
        else:
            self.model, self.tokenizer = load_backbone(self.path)
            self.armo = None
            self.reward_index = int(meta.get("reward_index", 0))
        self.model.eval()
        self.pad = pad_id_of(self.model)

    @torch.no_grad()
    def score(self, prompts: list[Any], responses: list[str]) -> dict[str, list | None]:
        enc = [encode(self.tokenizer, p, r, self.max_length) for p, r in zip(prompts, responses)]
        scores = [0.0] * len(enc)
        objs: list[list[float] | None] = [None] * len(enc)
        gates: list[list[float] | None] = [None] * len(enc)
        for idx, batch in length_batches(enc, self.batch_size, self.pad):
            if self.armo is not None:
                out = self.armo(*hidden_states(self.model, batch))
                for j, i in enumerate(idx):
                    scores[i] = float(out["score"][j])
                    objs[i] = out["objectives"][j].tolist()
                    gates[i] = out["gates"][j].tolist()
            else:
                r = rewards(self.model, batch)
                for j, i in enumerate(idx):
                    scores[i] = float(r[j, self.reward_index])
                    if r.shape[1] > 1:
                        objs[i] = r[j].tolist()
        multi = any(o is not None for o in objs)
        return {"score": scores, "objectives": objs if multi else None,
                "gates": gates if self.armo is not None else None}
