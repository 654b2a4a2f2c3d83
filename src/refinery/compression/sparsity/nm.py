"""N:M mask utilities: keep the top-N of every M consecutive weights along the input dimension (rows of a Linear
weight ``[out, in]`` are split into groups of M input columns)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from refinery.errors import RefineryError


class SparsityPatternError(RefineryError):
    """A layer's weight is not N:M compatible (some group of M holds more than N non-zeros)."""


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` highest scores in each group of ``m`` consecutive input columns."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise ValueError(f"input dimension {in_f} is not divisible by M={m}")
    groups = scores.reshape(out_f, in_f // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_f, in_f)


def is_nm(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive input columns keeps exactly ``n`` entries."""
    out_f, in_f = mask.shape
    if in_f % m:
        return False
    return bool((mask.reshape(out_f, in_f // m, m).sum(-1) == n).all())


def is_nm_compatible(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive input columns holds *at most* ``n`` non-zeros: a 2:4 weight may
    have extra zeros (dead input channels after SparseGPT, zero weights) and still runs on 2:4 kernels."""
    out_f, in_f = weight.shape
    if in_f % m:
        return False
    return bool(((weight != 0).reshape(out_f, in_f // m, m).sum(-1) <= n).all())


def check_nm(model, n: int = 2, m: int = 4) -> None:
    """Raise ``SparsityPatternError`` naming the first prunable Linear that is not N:M compatible."""
    for name, lin in prunable_linears(model).items():
        w = lin.weight.detach()
        if w.shape[1] % m:
            raise SparsityPatternError(f"layer {name}: input dimension {w.shape[1]} is not divisible by M={m}")
        over = int(((w != 0).reshape(w.shape[0], -1, m).sum(-1) > n).sum())
        if over:
            raise SparsityPatternError(f"layer {name}: {over} groups of {m} hold more than {n} non-zeros, so it is "
                                       f"not {n}:{m} sparse (prune it first, e.g. refinery compress sparsify)")


def keep_mask_of(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """An exact N:M keep-mask covering every non-zero of an N:M-compatible weight (extra zeros fill the slots)."""
    return nm_mask(weight.detach().abs().float(), n, m)  # top-n |w| of a group includes all its (<= n) non-zeros


def candidates(n: int = 2, m: int = 4) -> torch.Tensor:
    """The ``C(m, n)`` binary patterns of a group, ``[C, m]`` (6 for 2:4), in a fixed order."""
    rows = []
    for keep in itertools.combinations(range(m), n):
        row = [0.0] * m
        for k in keep:
            row[k] = 1.0
        rows.append(row)
    return torch.tensor(rows)


def block_names(model) -> list[str]:
    """Qualified names of the model's decoder blocks, found by module type: the classes transformers lists in
    ``_no_split_modules`` (LlamaDecoderLayer, Gemma2DecoderLayer, ...), outermost only; [] when it lists none."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    names: list[str] = []
    for name, mod in model.named_modules():
        if name and type(mod).__name__ in kinds and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def prunable_linears(model) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder blocks (found by module type, else under a ``layers`` list):
    attention and MLP projections, fused ones included (Phi-3's qkv_proj); embeddings, the LM head (tied or not),
    a reward head, norms and biases stay dense."""
    blocks = block_names(model)
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        inside = any(name.startswith(b + ".") for b in blocks) if blocks else ".layers." in f".{name}."
        if inside and "lm_head" not in name:
            out[name] = mod
    return out


@torch.no_grad()
def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    layers = prunable_linears(model)
    for name, mask in masks.items():
        layers[name].weight.mul_(mask.to(layers[name].weight.dtype))


def sparsity_report(model) -> dict[str, float]:
    """Fraction of zeros per prunable layer, and overall."""
    rep, zeros, total = {}, 0, 0
    for name, mod in prunable_linears(model).items():
        z = int((mod.weight == 0).sum())
        rep[name] = z / mod.weight.numel()
        zeros, total = zeros + z, total + mod.weight.numel()
    rep["overall"] = zeros / max(total, 1)
    return rep


def pack_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bit-packed masks (8 entries per byte) for a compact mask file; ``unpack_masks`` inverts it."""
    out = {}
    for name, mask in masks.items():
        flat = mask.flatten().to(torch.uint8)
        pad = (-flat.numel()) % 8
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)]).reshape(-1, 8)
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
        out[name] = (flat * weights).sum(-1).to(torch.uint8)
        out[name + "::shape"] = torch.tensor(list(mask.shape))
    return out


def unpack_masks(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, bits in packed.items():
        if key.endswith("::shape"):
            continue
        shape = tuple(packed[key + "::shape"].tolist())
        numel = shape[0] * shape[1]
        unpacked = ((bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()[:numel]
        out[key] = unpacked.reshape(shape).bool()
    return out
