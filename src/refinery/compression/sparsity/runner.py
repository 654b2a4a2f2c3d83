"""``refinery compress sparsify``: prune a model to N:M with one method and write an HF checkpoint (zeros in
place, loads anywhere), a bit-packed mask file and a per-layer sparsity report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from refinery.errors import ConfigError

METHODS = ("magnitude", "wanda", "sparsegpt", "maskllm")


def calibration_windows(tokenizer, text: str, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``seq_len`` tokens from the text (MaskLLM/SparseGPT: 128 windows of the context)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) <= seq_len:
        raise ConfigError(f"calibration text has {len(ids)} tokens: not enough for windows of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (n,), generator=g)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


def sparsify(model_dir: str | Path, method: str, calib_file: str | Path, out: str | Path, n_calib: int = 128,
             seq_len: int | None = None, n: int = 2, m: int = 4, steps: int = 200, lr: float = 1e-3,
             batch_size: int = 8, prior: str = "sparsegpt", init_logits: str | Path | None = None, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    from refinery.compression.sparsity.maskllm import maskllm
    from refinery.compression.sparsity.nm import is_nm, pack_masks, sparsity_report
    from refinery.compression.sparsity.oneshot import sequential_prune
    from refinery.eval.perplexity import read_text
    from refinery.models.io import load_model, load_tokenizer

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (choose {', '.join(METHODS)})")
    if method == "maskllm" and prior not in ("magnitude", "wanda", "sparsegpt", "none"):
        raise ConfigError(f"unknown prior {prior!r} (magnitude, wanda, sparsegpt or none)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty")
    torch.manual_seed(seed)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    L = seq_len or model.config.max_position_embeddings
    calib = calibration_windows(tok, read_text(calib_file), n_calib, L, seed)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "maskllm":
        priors = None
        if init_logits is None and prior != "none":
            prior_model = load_model(model_dir)
            priors = sequential_prune(prior_model, calib, prior, n, m)
            del prior_model
        logits0 = load_file(str(init_logits)) if init_logits else None
        bar = _bar(progress, steps, "maskllm")
        masks, logits = maskllm(model, calib, priors=priors, init_logits=logits0, steps=steps, lr=lr,
                                batch_size=batch_size, n=n, m=m, seed=seed,
                                log=lambda s, row: bar(s, row.get("loss")))
        bar(None, None)
        extra = {"prior": prior if init_logits is None else f"logits:{init_logits}", "steps": steps, "lr": lr}
    else:
        bar = _bar(progress, model.config.num_hidden_layers, method)
        masks = sequential_prune(model, calib, method, n, m, batch_size=batch_size,
                                 progress=lambda d, t: bar(d, None))
        bar(None, None)
        logits = None
    seconds = time.perf_counter() - t0
    bad = [k for k, v in masks.items() if not is_nm(v, n, m)]
    if bad:
        raise RuntimeError(f"internal error: masks of {bad} are not {n}:{m}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in pack_masks(masks).items()}, str(out / "masks.safetensors"))
    if logits is not None:
        save_file({k: v.contiguous() for k, v in logits.items()}, str(out / "mask_logits.safetensors"))
    report = {"method": method, "pattern": f"{n}:{m}", "calibration_windows": int(calib.shape[0]), "seq_len": L,
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
