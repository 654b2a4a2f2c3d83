"""Assembly of a child from library blocks, and global knowledge distillation (GKD) from the parent.

GKD loss (Puzzle §5): ``Σ_layers (1 − cos(h_child, h_parent)) + KL(p_parent ‖ p_child)``, with ``h`` the hidden
state after each layer (cosine per token, averaged) and the KL per token, averaged.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from refinery.compression.puzzle.model import BlockSpec, PuzzleForCausalLM, puzzle_config
from refinery.compression.puzzle.scoring import kl_parent_child
from refinery.engine.config import EngineConfig

State = dict[str, torch.Tensor]


def gkd_loss(h_child: list[torch.Tensor], h_parent: list[torch.Tensor], logits_child: torch.Tensor,
             logits_parent: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_l mean(1 − cos(h_child_l, h_parent_l)) + KL(p_parent ‖ p_child)`` over the tokens where ``mask`` is
    True (all by default); also returns the two parts."""
    if len(h_child) != len(h_parent):
        raise ValueError(f"{len(h_child)} child vs {len(h_parent)} parent hidden states")
    m = (torch.ones(logits_child.shape[:-1], dtype=torch.bool, device=logits_child.device) if mask is None
         else mask.to(logits_child.device))
    cos = sum((1 - F.cosine_similarity(c.float(), p.float(), dim=-1))[m].mean() for c, p in zip(h_child, h_parent))
    kl = kl_parent_child(F.log_softmax(logits_parent.float(), -1), F.log_softmax(logits_child.float(), -1), m)
    return cos + kl, {"cos": float(cos.detach()), "kl": float(kl.detach())}


def assemble(parent, blocks: list[BlockSpec], attn_lib: list[dict[str, State]], ffn_lib: list[dict[str, State]]):
    """The child: parent embeddings/norm/head, and for layer ``l`` the library's ``attn_lib[l][a]`` and
    ``ffn_lib[l][f]`` weights (keyed by variant name). Built on the meta device and given its (copied) weights
    once: the child is allocated once, with no random init (the library and the parent stay untouched)."""
    from refinery.models.io import build_on_meta, clone_once, materialize

    cfg = puzzle_config(parent.config, blocks)
    child = build_on_meta(lambda: PuzzleForCausalLM(cfg))
    state = {k: v for k, v in parent.state_dict().items() if not k.startswith("model.layers.")}
    for i, b in enumerate(blocks):
        for k, v in {**attn_lib[i][b.attention.name], **ffn_lib[i][b.ffn.name]}.items():
            state[f"model.layers.{i}.{k}"] = v
    missing, unexpected = materialize(child, clone_once(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"library does not cover the child: missing {missing[:4]}, unexpected {unexpected[:4]}")
    child.generation_config = parent.generation_config
    return child.eval()


def distill(child, parent, windows: torch.Tensor, steps: int, lr: float, batch_size: int, seed: int = 0,
            log: Callable[[int, dict], None] | None = None, mask: torch.Tensor | None = None,
            engine: EngineConfig | None = None) -> list[dict]:
    """GKD of the whole child on random batches of ``windows`` (AdamW, warmup then cosine); returns the log.
    ``engine``: device (both models move there and back), bf16 autocast, activation checkpointing of the child,
    and micro-batches; the loss is one token-mean over the step's batch however it is split."""
    from refinery.engine.accum import accumulate, micro_batches
    from refinery.engine.device import (
        autocast,
        check_precision,
        enable_activation_checkpointing,
        peak_memory_mb,
        reset_peak,
        resolve_device,
    )

    eng = engine or EngineConfig(device="cpu")
    device = resolve_device(eng.device)
    check_precision(eng.precision, device)
    home = next(child.parameters()).device
    torch.manual_seed(seed)
    parent.eval()
    for p in parent.parameters():
        p.requires_grad_(False)
    child.to(device)
    parent.to(device)
    if eng.activation_checkpointing:
        enable_activation_checkpointing(child)
    params = [p for p in child.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    warm = max(1, steps // 10)
    rows = []
    real = torch.ones(windows.shape, dtype=torch.bool) if mask is None else mask.bool()
    child.train()
    try:
        for step in range(steps):
            frac = (step - warm) / max(1, steps - warm)
            scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            idx = torch.randint(0, windows.shape[0], (min(batch_size, windows.shape[0]),), generator=g)
            x, m = windows[idx], real[idx]

            def piece(r: torch.Tensor, x=x, m=m):
                xr = x[r].to(device)
                with autocast(eng.precision, device):
                    with torch.no_grad():
                        po = parent(input_ids=xr, output_hidden_states=True)
                    co = child(input_ids=xr, output_hidden_states=True)
                return gkd_loss(list(co.hidden_states[1:]), list(po.hidden_states[1:]), co.logits, po.logits, m[r])

            opt.zero_grad(set_to_none=True)
            reset_peak(device)
            parts = accumulate(piece, micro_batches(torch.arange(len(idx)), eng.micro_batch_rows), m.float())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            row = {"step": step + 1, **parts, "peak_memory_mb": round(peak_memory_mb(device), 1)}
            rows.append(row)
            if log:
                log(step + 1, row)
    finally:
        child.eval()
        child.to(home)
        parent.to(home)
    return rows
