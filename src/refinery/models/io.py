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


def build_on_meta(build):
    """``build()`` (a model or module constructor) on the meta device: no parameter memory and no random init, so a
    model built only to receive weights is allocated once, by ``materialize``."""
    import torch

    with torch.device("meta"):
        return build()


def materialize(model, state: dict, device: str = "cpu", strict: bool = True) -> tuple[list[str], list[str]]:
    """Give a meta-built ``model`` its weights once: the tensors of ``state`` become its parameters (assigned, not
    copied; pass clones where the caller keeps using them), tied weights are re-tied, and only what ``state`` lacks
    (non-persistent buffers such as the rotary ``inv_freq`` or Gemma-2's embedding scale, and missing keys) gets
    new memory on ``device`` and the model's own initialisation. Returns ``(missing, unexpected)`` (tied keys are
    not missing); ``strict`` raises ``CheckpointError`` on either."""
    import torch

    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    loaded = set(state)
    for name, p in model.named_parameters():
        if name in loaded:
            p._is_hf_initialized = True
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for mod in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in list(getattr(mod, kind).items()):
                if t is not None and t.is_meta:
                    real = torch.empty_like(t, device=device)
                    getattr(mod, kind)[name] = (torch.nn.Parameter(real, requires_grad=t.requires_grad)
                                                if kind == "_parameters" else real)
    if hasattr(model, "initialize_weights"):
        model.initialize_weights()  # transformers' init skips every tensor flagged as loaded
    names = {n for n, _ in model.named_parameters()}  # a tied key is no longer a parameter of its own
    missing = [k for k in missing if k in names and k not in loaded and not _tied(model, k)]
    if strict and (missing or unexpected):
        raise CheckpointError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return missing, list(unexpected)


def _tied(model, key: str) -> bool:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return key in tied and bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def clone_once(state: dict) -> dict:
    """A copy of ``state`` with every tensor cloned once (tied keys sharing one tensor share one clone)."""
    memo: dict[tuple, object] = {}
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if key not in memo:
            memo[key] = v.detach().clone()
        out[k] = memo[key]
    return out
