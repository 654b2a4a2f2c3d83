"""Padding-free batches: a batch's examples packed into rows, each example attending only to itself.

A batch of chat examples padded to its longest one is mostly padding when lengths vary (the quickstart's worked
solutions: 53% more tokens than the examples hold), and every pad token costs a full forward and backward. Here
the examples are packed first-fit decreasing into rows of ``capacity`` tokens with ``position_ids`` that restart
at 0 for each example. Given ``position_ids`` and no ``attention_mask``, transformers builds a block-diagonal causal
mask (``masking_utils.find_packed_sequence_indices``), so no example sees another and RoPE positions are each
example's own: the loss and gradients are those of the padded batch (tested), only fewer tokens are computed.
TRL calls this ``padding_free``; NeMo-RL/verl call it sequence packing with "remove padding".

The first token of each packed example gets label -100: in the padded batch nothing predicts it (HF's shift drops
position 0), and here the token before it belongs to another example.
"""

from __future__ import annotations

import torch


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, each bin's lengths summing to at most ``capacity`` (an example longer than
    ``capacity`` gets a bin of its own). Longest first, each into the first bin it fits; deterministic."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def pack_examples(examples: list[tuple[list[int], list[int]]], capacity: int, pad_id: int,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``examples``: ``(input ids, labels)`` per example, labels aligned with the ids (-100: not trained on), as
    HF causal LMs take them. Returns ``(input_ids, labels, position_ids)``, each ``[rows, width]`` with ``width``
    the fullest row (at most ``max(capacity, longest example)``). Row tails are padding with label -100 and
    positions 0, 1, ... of their own (a segment no example attends to)."""
    if not examples:
        raise ValueError("pack_examples needs at least one example")
    for ids, labels in examples:
        if len(ids) != len(labels) or not ids:
            raise ValueError("each example needs as many labels as ids, and at least one id")
    bins = first_fit_decreasing([len(ids) for ids, _ in examples], capacity)
    width = max(sum(len(examples[i][0]) for i in b) for b in bins)
    x = torch.full((len(bins), width), pad_id, dtype=torch.long)
    y = torch.full((len(bins), width), -100, dtype=torch.long)
    pos = torch.zeros((len(bins), width), dtype=torch.long)
    for r, b in enumerate(bins):
        at = 0
        for i in b:
            ids, labels = examples[i]
            n = len(ids)
            x[r, at:at + n] = torch.tensor(ids)
            y[r, at + 1:at + n] = torch.tensor(labels[1:])
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
    return x, y, pos
