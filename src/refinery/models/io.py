"""Loading HF-format model directories with one clear error when they are missing or corrupt."""

from __future__ import annotations

from pathlib import Path

from refinery.errors import CheckpointError


def _check_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a model directory (config.json + weights)")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json: not an HF model directory")
    return path


def load_model(path: str | Path, dtype=None):
    """AutoModelForCausalLM.from_pretrained with corrupt/missing files reported as CheckpointError."""
    import torch
    from transformers import AutoModelForCausalLM

    path = _check_dir(path)
    _register_custom(path)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except Exception as e:  # transformers raises many types (OSError, SafetensorError, ValueError, JSON errors)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load model from {path}: {msg} (the checkpoint is corrupt or incomplete; "
                              "rebuild it or resume from an earlier checkpoint)") from None
    return model


def _register_custom(path: Path) -> None:
    """Import the module that registers a refinery architecture (Puzzle children) with AutoModelForCausalLM."""
    import json

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return  # from_pretrained reports the corrupt config
    if model_type == "refinery_puzzle":
        import refinery.compression.puzzle.model  # noqa: F401


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    path = _check_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load tokenizer from {path}: {msg}") from None
    tok.padding_side = "left"
    return tok
