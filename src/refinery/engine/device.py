"""Device and precision: resolve ``auto``, bf16 autocast, and peak memory per step."""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from refinery.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the local rank's CUDA device when CUDA is present, else CPU; ``cuda`` without CUDA is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"engine.device must be auto, cpu or cuda, not {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("engine.device=cuda but no CUDA device is visible (torch.cuda.is_available() is False); "
                          "use engine.device=auto or cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"engine.precision must be fp32 or bf16, not {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"engine.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                          "use engine.precision=fp32")


def autocast(precision: str, device: torch.device):
    """bf16 autocast on ``device`` (weights and optimizer state stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak`: CUDA's allocated peak on a GPU; on CPU the process's peak resident
    set (``ru_maxrss``; it never goes down, so it is the peak of the run so far, not of one step)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant), under whichever name this transformers has."""
    new = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if new is not None:
        new(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
