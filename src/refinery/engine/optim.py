"""Optimizer state operations the trainers share."""

from __future__ import annotations

import torch


@torch.no_grad()
def reset_state(optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer`` behave as a freshly built one (ProRL's optimizer reset at a reference reset) while
    keeping its state populated: every state tensor is zeroed in place, step counters included. For AdamW a
    zero state with ``step = 0`` takes exactly the first step of a new optimizer (bias correction restarts).

    ``optimizer.state.clear()`` would do the same for one process, but an empty state is not what
    ``torch.distributed.checkpoint`` saves: its ``get_state_dict`` fills an empty state with a zero-gradient step
    (``step = 1``), so the run after a sharded save would no longer be the run without one. Zeroing in place keeps
    sharded (DTensor) state sharded too."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            elif isinstance(value, (int, float)):
                state[key] = type(value)(0)
