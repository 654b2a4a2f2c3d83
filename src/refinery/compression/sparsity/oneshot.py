"""One-shot N:M pruning with calibration data: magnitude, Wanda (Sun et al., 2023) and SparseGPT (Frantar &
Alistarh, 2023). Wanda and SparseGPT run block by block: each decoder layer is calibrated on the outputs of the
already-pruned layers before it, each layer running once on cached inputs (O(L) layer passes, not O(L²))."""

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
    H = H.to(W.device).clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)
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
    """The decoder blocks in forward order: found by module type (``_no_split_modules``), else by path."""
    from refinery.compression.sparsity.nm import block_names

    blocks = dict(model.named_modules())
    found = [blocks[n] for n in block_names(model)]
    if found:
        return nn.ModuleList(found)  # a view: the blocks stay where the model holds them
    for path in ("model.layers", "transformer.h", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def _layer_out(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _move_outside(model, layers: nn.ModuleList, device) -> None:
    """Move every parameter and buffer that is not inside a decoder layer (embeddings, rotary, final norm, head)."""
    inside = {id(mod) for mod in layers.modules()}
    for mod in model.modules():
        if id(mod) not in inside:
            mod._apply(lambda t: t.to(device), recurse=False)


@torch.no_grad()
def capture_layer_inputs(model, calib: torch.Tensor, batch_size: int = 8,
                         device: str | torch.device | None = None) -> list[tuple[torch.Tensor, dict]]:
    """Run the model up to its first decoder layer once per calibration batch and keep what that layer receives:
    the hidden states and its keyword arguments (attention mask, position ids, the rotary ``position_embeddings``
    transformers 5 passes to every layer, ...). A forward pre-hook records them and raises to stop the forward
    (the "Catcher" of IST-DASLab/sparsegpt and locuslab/wanda)."""
    layers = decoder_layers(model)
    home = next(model.parameters()).device
    if device is not None:
        _move_outside(model, layers, device)
    cached: list[tuple[torch.Tensor, dict]] = []

    def catch(mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        cached.append((hidden, kw))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for s in range(0, calib.shape[0], batch_size):
            try:
                model(input_ids=calib[s:s + batch_size].to(device or home), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
        if device is not None:
            _move_outside(model, layers, home)
    return cached


@torch.no_grad()
def sequential_prune(model, calib: torch.Tensor, method: str, n: int = 2, m: int = 4, batch_size: int = 8,
                     blocksize: int = 128, percdamp: float = 0.01,
                     progress: Callable[[int, int], None] | None = None,
                     calib_mask: torch.Tensor | None = None,
                     device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Prune every block's Linears in place, block by block; ``calib`` is ``[N, L]`` token ids (``calib_mask``
    marks real tokens of right-padded rows: pads add nothing to the statistics). Returns the keep masks by module
    name. ``method``: magnitude, wanda or sparsegpt.

    O(L) in the number of layers, in the reference order (IST-DASLab/sparsegpt ``llama_sequential``, locuslab/wanda
    ``prune_wanda``): the first layer's inputs are captured once; then each layer collects its Linears' input
    statistics from the cached inputs, is pruned, and runs once more on them to produce the next layer's inputs.
    With ``device`` (e.g. ``"cuda"``) only the layer being pruned sits on it."""
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
    home = next(model.parameters()).device
    cached = capture_layer_inputs(model, calib, batch_size, device)
    keeps = [None if calib_mask is None else calib_mask[s:s + batch_size].reshape(-1)
             for s in range(0, calib.shape[0], batch_size)]
    for li, layer in enumerate(layers):
        if device is not None:
            layer.to(device)
        mine = {name: lin for name, lin in linears.items() if any(mod is lin for mod in layer.modules())}
        stats: dict[str, dict] = {name: {"n": 0, "acc": None} for name in mine}
        rows: dict[str, torch.Tensor | None] = {"keep": None}

        def hook(name, stats=stats, rows=rows):
            def fn(mod, inp, out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float().cpu()
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
        try:
            for (hidden, kw), keep in zip(cached, keeps):
                rows["keep"] = keep
                layer(hidden, **kw)
        finally:
            for h in handles:
                h.remove()
        for name, lin in mine.items():
            if method == "wanda":
                masks[name] = wanda_mask(lin.weight.cpu(), stats[name]["acc"], n, m).to(lin.weight.device)
                lin.weight.mul_(masks[name])
            else:
                w, keep = sparsegpt_prune(lin.weight, stats[name]["acc"], n, m, blocksize, percdamp)
                lin.weight.copy_(w)
                masks[name] = keep
            masks[name] = masks[name].cpu()
        if li + 1 < len(layers):  # the pruned layer's outputs are the next layer's inputs
            cached = [(_layer_out(layer(hidden, **kw)), kw) for hidden, kw in cached]
        if device is not None:
            layer.to(home)
        if progress:
            progress(li + 1, len(layers))
    return masks
