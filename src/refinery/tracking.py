"""Experiment tracking: the metrics a run writes to ``metrics.jsonl`` also go to TensorBoard and/or Weights & Biases.

One interface (``report_to``, as in TRL / transformers' ``TrainingArguments``): ``engine.report_to: [tensorboard]``
in a recipe (or ``engine.report_to=[tensorboard,wandb]`` on the command line). Only rank 0 writes a run's files, so
only rank 0 reports. TensorBoard logs go to ``<run>/tensorboard``; W&B runs are named after the run directory and
honour the usual ``WANDB_PROJECT`` / ``WANDB_MODE`` / ``WANDB_API_KEY`` environment.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Protocol

from refinery.errors import ConfigError

BACKENDS = ("tensorboard", "wandb")


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, numbers.Number) and not isinstance(v, bool) and k not in ("step", "time")}


class TensorBoardTracker:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("engine.report_to has tensorboard but the tensorboard package is not installed "
                              "(pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any] | None):
        try:
            import wandb
        except ImportError:
            raise ConfigError("engine.report_to has wandb but wandb is not installed (pip install wandb), or "
                              "remove it from engine.report_to") from None
        self.wandb = wandb
        self.run = wandb.init(name=run_dir.name, dir=str(run_dir), config=config or {}, resume="allow",
                              id=run_dir.name.replace("/", "-"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def make_trackers(report_to: list[str], run_dir: Path, config: dict[str, Any] | None = None) -> list[Tracker]:
    bad = [b for b in report_to if b not in BACKENDS]
    if bad:
        raise ConfigError(f"engine.report_to: unknown backend(s) {bad}; choose from {list(BACKENDS)}")
    out: list[Tracker] = []
    for b in dict.fromkeys(report_to):
        out.append(TensorBoardTracker(run_dir / "tensorboard") if b == "tensorboard" else WandbTracker(run_dir, config))
    return out
