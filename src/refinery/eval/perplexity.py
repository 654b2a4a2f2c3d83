"""Standard perplexity: the text joined into one token stream, cut into non-overlapping windows of ``seq_len``
(the same windows for every model sharing a tokenizer); exp of the mean next-token loss over all windows."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from refinery.errors import DataError


def token_windows(tokenizer, text: str, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """``[N, seq_len]`` non-overlapping windows of the tokenised text (the tail shorter than a window is dropped)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"the text has {len(ids)} tokens: fewer than one window of {seq_len}")
    if limit is not None:
        n = min(n, limit)
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)


def read_text(path) -> str:
    """A UTF-8 text file, or the ``text`` column of a data source (``refinery.sources``: a dataset directory,
    Parquet, hf:wikitext with subset wikitext-2-raw-v1, ...) joined with blank lines, as HF's perplexity guide does."""
    from refinery.sources import BUILDERS, DataSource, read_rows

    if isinstance(path, DataSource) or Path(path).is_dir() or Path(path).suffix.lower() in BUILDERS:
        return "\n\n".join(str(r.record["text"] or "") for r in read_rows(path, required=["text"]))
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} does not exist")
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8, mask: torch.Tensor | None = None) -> float:
    """exp(mean next-token loss); ``mask`` marks real tokens of right-padded rows (pads are not scored)."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, windows.shape[0], batch_size):
        x = windows[s: s + batch_size]
        target = x[:, 1:].clone()
        if mask is not None:
            target[~mask[s: s + batch_size][:, 1:]] = -100
        logits = model(input_ids=x).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    return math.exp(total / count)


def eval_ppl(model_dir: str | Path, text_file, seq_len: int | None = None,
             limit: int | None = None, batch_size: int = 8) -> dict:
    from refinery.models.io import load_model, load_tokenizer

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    L = seq_len or model.config.max_position_embeddings
    windows = token_windows(tok, read_text(text_file), L, limit)
    return {"ppl": perplexity(model, windows, batch_size), "windows": windows.shape[0], "seq_len": L,
            "tokens": windows.numel()}
