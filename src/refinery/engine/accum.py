"""Micro-batches with gradient accumulation under one global loss normalisation.

A loss normalised per micro-batch and then averaged (what a naive accumulation loop does) is a mean of means: a
micro-batch with 10 response tokens weighs as much as one with 10,000. Here each micro-batch's loss, normalised
over its own rows as the loss function does, is scaled by ``its denominator / the global denominator`` before
``backward``: the accumulated gradient is the gradient of the loss over the whole batch (tested against one big
batch). The denominators are those of :func:`refinery.rl.losses.aggregate` (tokens for a token-mean, live rows for
a mean over sequences, rows for Dr.GRPO's constant normaliser); ``extra`` adds other ranks' counts so the mean is
over the global batch across ranks too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def denominator(mask: torch.Tensor, agg: str = "token-mean") -> float:
    """The count ``aggregate(loss, mask, agg)`` divides by (before its clamp to >= 1)."""
    if agg == "token-mean":
        return float(mask.sum())
    if agg == "seq-mean-token-mean":
        return float((mask.sum(-1) > 0).sum())
    if agg == "seq-mean-token-sum-norm":
        return float(mask.shape[0])
    raise ValueError(f"unknown loss aggregation {agg!r}")


def micro_batches(rows: torch.Tensor, micro_rows: int | None) -> list[torch.Tensor]:
    """``rows`` split into consecutive pieces of at most ``micro_rows`` (one piece when None)."""
    return list(rows.split(micro_rows)) if micro_rows else [rows]


def accumulate(loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
               pieces: list[torch.Tensor], mask: torch.Tensor, agg: str = "token-mean",
               global_denominator: float | None = None) -> dict[str, float]:
    """Forward and backward ``loss_fn(rows)`` for each piece of rows, weighted so the summed gradient is that of
    the loss over all pieces (``mask[rows]`` gives a piece's denominator). Returns the pieces' statistics weighted
    the same way, and ``loss``. ``global_denominator`` (default: the pieces' own total) is the count over the whole
    global batch, e.g. summed over ranks."""
    dens = [denominator(mask[r], agg) for r in pieces]
    total = global_denominator if global_denominator is not None else sum(dens)
    out: dict[str, float] = {}
    for rows, den in zip(pieces, dens):
        w = den / total if total > 0 else 0.0
        loss, stats = loss_fn(rows)
        (loss * w).backward()
        for k, v in {"loss": float(loss.detach()), **stats}.items():
            out[k] = out.get(k, 0.0) + w * v
    return out
