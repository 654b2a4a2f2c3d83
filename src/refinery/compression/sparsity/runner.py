"""``refinery compress sparsify``: prune a model to N:M with one method and write a checkpoint (``--format``: dense HF
with the zeros in place, compressed-tensors ``sparse-24-bitmask`` for vLLM, or semi-structured values + 2-bit
indices for PyTorch's CUDA 2:4 kernels), a bit-packed mask file and a per-layer sparsity report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from refinery.errors import ConfigError

METHODS = ("magnitude", "wanda", "sparsegpt", "maskllm")
# Calibration window length when --seq-len is not given: SparseGPT (IST-DASLab/sparsegpt llama.py, model.seqlen) and
# Wanda (locuslab/wanda, LLaMA: max_position_embeddings = 2048) calibrate on 2048-token windows; MaskLLM trains at
# 4096 (scripts/learnable_sparsity/*.sh SEQ_LENGTH). Never the full context (131,072 for Llama-3.1).
DEFAULT_SEQ_LEN = 2048


@torch.no_grad()
def restore_weights(model, model_dir: str | Path, names: list[str]) -> None:
    """Reload the original ``<name>.weight`` tensors from the checkpoint's safetensors, one tensor at a time: the
    MaskLLM prior is computed by pruning the loaded model in place, then its dense weights come back from disk
    (no second copy of the model in memory)."""
    from safetensors import safe_open

    from refinery.compression.sparsity.nm import prunable_linears
    from refinery.errors import CheckpointError

    linears = prunable_linears(model)
    wanted = {f"{n}.weight": linears[n] for n in names}
    for shard in sorted(Path(model_dir).glob("model*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                if key in wanted:
                    lin = wanted.pop(key)
                    lin.weight.copy_(f.get_tensor(key).to(lin.weight.dtype))
    if wanted:
        raise CheckpointError(f"{model_dir}: cannot reload the dense weights of {sorted(wanted)[:3]} (not a "
                              "safetensors checkpoint?); MaskLLM needs them after computing its prior")


def load_transfer_masks(path: str | Path, n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """Keep-masks to transfer: a ``masks.safetensors`` (bit-packed) or a ``mask_logits.safetensors`` (argmax)."""
    from safetensors.torch import load_file

    from refinery.compression.sparsity.maskllm import masks_from_logits
    from refinery.compression.sparsity.nm import unpack_masks

    data = load_file(str(path))
    if any(k.endswith("::shape") for k in data):
        return unpack_masks(data)
    return masks_from_logits(data, n, m)


def check_prunable(model, m: int = 4) -> None:
    """A ConfigError naming the model's family and the reason where N:M pruning cannot apply to it: no decoder
    blocks found (by module type or a ``layers`` list), or a block Linear whose input width is not a multiple of M."""
    from refinery.compression.sparsity.nm import prunable_linears

    family = f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r})"
    linears = prunable_linears(model)
    if not linears:
        raise ConfigError(f"{family}: no Linear layers found inside decoder blocks (its class lists no "
                          "_no_split_modules and it has no 'layers' list), so there is nothing to prune to N:M")
    for name, lin in linears.items():
        if lin.in_features % m:
            raise ConfigError(f"{family}: layer {name} has input width {lin.in_features}, not a multiple of M={m}, "
                              f"so it cannot be {m // 2}:{m} sparse")


def calibration_windows(tokenizer, text: str, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``seq_len`` tokens from the text (MaskLLM/SparseGPT: 128 windows of the context)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) <= seq_len:
        raise ConfigError(f"calibration text has {len(ids)} tokens: not enough for windows of {seq_len} "
                          "(give more text or a smaller --seq-len)")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (n,), generator=g)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


def sparsify(model_dir: str | Path, method: str, calib_file: str | Path, out: str | Path, n_calib: int = 128,
             seq_len: int | None = None, n: int = 2, m: int = 4, steps: int = 200, lr: float = 5e-5,
             batch_size: int = 8, prior: str = "sparsegpt", init_logits: str | Path | None = None, seed: int = 0,
             progress: bool = True, fmt: str = "dense", device: str | None = None, precision: str = "fp32",
             micro_batch: int | None = None, activation_checkpointing: bool = False,
             dtype: str = "auto") -> dict[str, Any]:
    """``lr``: MaskLLM base LR, logits at 10x (NVlabs/MaskLLM llama2_7b_mask_only_tp8_c4.sh: LR=5e-5, --lr-mult 10).
    ``init_logits``: a mask_logits.safetensors or masks.safetensors whose mask becomes the prior (transfer).
    ``device``: where Wanda/SparseGPT run the layer being calibrated (e.g. cuda), the rest stays on CPU; for
    MaskLLM, the engine device the model and logits train on (default ``auto``), with ``precision``,
    ``micro_batch`` rows per forward and ``activation_checkpointing``. ``dtype``: ``auto`` loads (and writes) the
    checkpoint's own dtype (a bf16 8B model is held once, in 16 GB, not as 32 GB of fp32), or fp32 / bf16 / fp16;
    the statistics (Wanda norms, SparseGPT Hessians) are accumulated in fp32/fp64 either way."""
    from safetensors.torch import save_file

    from refinery.compression.sparsity.export import FORMATS, save_sparse
    from refinery.compression.sparsity.maskllm import maskllm
    from refinery.compression.sparsity.nm import is_nm, pack_masks, prunable_linears, sparsity_report
    from refinery.compression.sparsity.oneshot import sequential_prune
    from refinery.eval.perplexity import read_text
    from refinery.models.io import load_model, load_tokenizer

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (choose {', '.join(METHODS)})")
    if method == "maskllm" and prior not in ("magnitude", "wanda", "sparsegpt", "none"):
        raise ConfigError(f"unknown prior {prior!r} (magnitude, wanda, sparsegpt or none)")
    dtypes = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise ConfigError(f"unknown --dtype {dtype!r} (auto, fp32, bf16 or fp16)")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"unknown --precision {precision!r} (fp32 or bf16)")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r} (choose {', '.join(FORMATS)})")
    if fmt != "dense" and (n, m) != (2, 4):
        raise ConfigError(f"--format {fmt} stores 2:4 only (got {n}:{m}); use --format dense")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty")
    torch.manual_seed(seed)
    model, tok = load_model(model_dir, dtype=dtypes[dtype]), load_tokenizer(model_dir)
    check_prunable(model, m)
    L = seq_len or min(model.config.max_position_embeddings, DEFAULT_SEQ_LEN)
    calib = calibration_windows(tok, read_text(calib_file), n_calib, L, seed)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "maskllm":
        priors = None
        if init_logits is not None:  # transfer: the learned mask is the prior (paper Sec. 4), not a warm start
            priors = load_transfer_masks(init_logits, n, m)
        elif prior != "none":
            priors = sequential_prune(model, calib, prior, n, m, batch_size=batch_size, device=device)
            restore_weights(model, model_dir, list(prunable_linears(model)))
        bar = _bar(progress, steps, "maskllm")
        from refinery.engine.config import EngineConfig

        engine = EngineConfig(device=device or "auto", precision=precision, micro_batch_rows=micro_batch,
                              activation_checkpointing=activation_checkpointing)
        peak = {"mb": 0.0}

        def log(s, row):
            peak["mb"] = max(peak["mb"], row.get("peak_memory_mb", 0.0))
            bar(s, row.get("loss"))

        masks, logits = maskllm(model, calib, priors=priors, steps=steps, lr=lr,
                                batch_size=batch_size, n=n, m=m, seed=seed, log=log, engine=engine)
        bar(None, None)
        extra = {"prior": prior if init_logits is None else f"transfer:{init_logits}", "steps": steps, "lr": lr,
                 "precision": precision, "micro_batch": micro_batch, "peak_memory_mb": peak["mb"]}
    else:
        bar = _bar(progress, model.config.num_hidden_layers, method)
        masks = sequential_prune(model, calib, method, n, m, batch_size=batch_size,
                                 progress=lambda d, t: bar(d, None), device=device)
        bar(None, None)
        logits = None
    seconds = time.perf_counter() - t0
    bad = [k for k, v in masks.items() if not is_nm(v, n, m)]
    if bad:
        raise RuntimeError(f"internal error: masks of {bad} are not {n}:{m}")
    out.mkdir(parents=True, exist_ok=True)
    save_sparse(model, tok, out, fmt, n, m)  # a layer that is not N:M raises, naming it
    save_file({k: v.contiguous() for k, v in pack_masks(masks).items()}, str(out / "masks.safetensors"))
    if logits is not None:
        save_file({k: v.contiguous() for k, v in logits.items()}, str(out / "mask_logits.safetensors"))
    report = {"method": method, "pattern": f"{n}:{m}", "format": fmt, "calibration_windows": int(calib.shape[0]),
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
              "seq_len": L,
              "seconds": round(seconds, 2), "sparsity": sparsity_report(model), **extra}
    (out / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _bar(enabled: bool, total: int, name: str):
    from refinery.progress import StepBar

    bar = StepBar(enabled, total, 0, name, ("loss",))

    def update(done, loss):
        if done is None:
            bar.close()
        else:
            bar.update(done, {"loss": loss} if loss is not None else None)

    return update
