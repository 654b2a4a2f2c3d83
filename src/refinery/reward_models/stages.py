"""What every reward-model stage shares: the batch order (a pure function of seed, stage and step), stage
directories written atomically, and whether a stage is done."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from refinery.runs import RunDir


def order_for(n: int, step: int, batch: int, seed: int, salt: str) -> list[int]:
    """Indices of the batch at ``step``: a fresh permutation per epoch, a pure function of the arguments."""
    per_epoch = max(1, n // batch)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(_stable(seed, salt, epoch))
    perm = torch.randperm(n, generator=g).tolist()
    return perm[pos * batch: pos * batch + batch] or perm[:batch]


def _stable(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


def steps_for(n: int, epochs: float, batch: int) -> int:
    return max(1, math.ceil(n * epochs / batch))


def save_stage(run: RunDir, stage: str, write: Callable[[Path], None]) -> Path:
    """Write a stage's model directory atomically and drop the mid-stage checkpoints."""
    final = run.path / "stages" / stage
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{stage}-"))
    try:
        write(tmp)
        (tmp / "COMPLETE").write_text(stage)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for c in run.checkpoints():
        shutil.rmtree(c, ignore_errors=True)
    return final


def stage_done(run: RunDir, stage: str) -> bool:
    return (run.path / "stages" / stage / "COMPLETE").exists()
