"""One-shot N:M pruning with calibration data: magnitude, Wanda (Sun et al., 2023) and SparseGPT (Frantar &
Alistarh, 2023). Wanda and SparseGPT run block by block: each decoder layer is calibrated on the outputs of the
already-pruned layers before it."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from refinery.compression.sparsity.nm import nm_mask, prunable_linears


def magnitude_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    return nm_mask(weight.abs(), n, m)


def wanda_mask(weight: torch.Tensor, act_sq_norm: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Wanda: score ``|W_ij| · ‖X_j‖₂`` (``act_sq_norm`` = Σ over calibration tokens of X_j²), N:M per row."""
    return nm_mask(weight.abs() * act_sq_norm.sqrt().unsqueeze(0), n, m)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, H: torch.Tensor, n: int = 2, m: int = 4, blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT for one layer: ``H = 2XXᵀ/n_samples`` (``[in, in]``), dampened by ``percdamp · mean(diag H)``;
    Cholesky factor of ``H⁻¹``; columns in blocks of ``blocksize``; in each group of M columns prune the M−N
    weights with the smallest ``w² / [H⁻¹]²_jj`` and propagate the error to the remaining columns (OBS).
    Returns ``(new_weight, keep_mask)``."""
    W = weight.detach().clone().float()
    rows, cols = W.shape
    if cols % m:
        raise ValueError(f"input dimension {cols} is not divisible by M={m}")
    H = H.clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if i % m == 0:
                score = W1[:, i:i + m] ** 2 / torch.diag(Hinv1)[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(score, m - n, dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), ~pruned


class _Stop(Exception):
    pass


def decoder_layers(model) -> nn.ModuleList:
    for path in ("model.layers", "transformer.h", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


@torch.no_grad()
def sequential_prune(model, calib: torch.Tensor, method: str, n: int = 2, m: int = 4, batch_size: int = 8,
                     blocksize: int = 128, percdamp: float = 0.01,
                     progress: Callable[[int, int], None] | None = None,
                     calib_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Prune every block's Linears in place, block by block; ``calib`` is ``[N, L]`` token ids (``calib_mask``
    marks real tokens of right-padded rows: pads add nothing to the statistics). Returns the keep masks by module
    name. ``method``: magnitude, wanda or sparsegpt."""
    if method not in ("magnitude", "wanda", "sparsegpt"):
        raise ValueError(f"unknown one-shot method {method!r}")
    model.eval()
    linears = prunable_linears(model)
    masks: dict[str, torch.Tensor] = {}
    if method == "magnitude":
        for name, lin in linears.items():
            masks[name] = magnitude_mask(lin.weight, n, m)
            lin.weight.mul_(masks[name])
        return masks
    layers = decoder_layers(model)
    for li, layer in enumerate(layers):
        mine = {name: lin for name, lin in linears.items() if any(mod is lin for mod in layer.modules())}
        stats: dict[str, dict] = {name: {"n": 0, "acc": None} for name in mine}
        rows: dict[str, torch.Tensor | None] = {"keep": None}

        def hook(name, stats=stats, rows=rows):
            def fn(mod, inp, out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
                if rows["keep"] is not None:
                    x = x[rows["keep"]]
                s = stats[name]
                if method == "wanda":
                    sq = (x ** 2).sum(0)
                    s["acc"] = sq if s["acc"] is None else s["acc"] + sq
                else:  # running H = 2/n Σ x xᵀ
                    k = x.shape[0]
                    if s["acc"] is None:
                        s["acc"] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
                    s["acc"] *= s["n"] / (s["n"] + k)
                    s["n"] += k
                    xs = (2 / s["n"]) ** 0.5 * x.double()
                    s["acc"] += xs.T @ xs
            return fn

        handles = [lin.register_forward_hook(hook(name)) for name, lin in mine.items()]

        def stop(mod, inp, out):
            raise _Stop

        handles.append(layer.register_forward_hook(stop))  # nothing after this block needs computing
        try:
            for s in range(0, calib.shape[0], batch_size):
                if calib_mask is not None:
                    rows["keep"] = calib_mask[s:s + batch_size].reshape(-1)
                try:
                    model(input_ids=calib[s:s + batch_size])
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
        for name, lin in mine.items():
            if method == "wanda":
                masks[name] = wanda_mask(lin.weight, stats[name]["acc"], n, m)
                lin.weight.mul_(masks[name])
            else:
                w, keep = sparsegpt_prune(lin.weight, stats[name]["acc"], n, m, blocksize, percdamp)
                lin.weight.copy_(w)
                masks[name] = keep
        if progress:
            progress(li + 1, len(layers))
    return masks
