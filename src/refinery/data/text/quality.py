"""FineMath-style quality scores (0–5) from any HF sequence-classification checkpoint, and a small classifier
trained from LLM-annotated labels.

A regression head (``num_labels == 1``, as ``HuggingFaceTB/finemath-classifier``) gives the score directly; a
classification head gives the expected label ``Σ p_i · i``. ``int_score = round(clamp(score, 0, 5))``; the
paper keeps pages at 3+ (or 4+ for the high-quality subset).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

ANNOTATION_PROMPT = """Rate how useful the following web page extract is for teaching mathematics, on a scale \
from 0 to 5:
0 - no mathematical content;
1 - mentions mathematical terms or numbers but teaches nothing (prices, dates, scores);
2 - some mathematics, but superficial, fragmentary or mostly boilerplate;
3 - relevant mathematical content with some explanation or worked steps;
4 - clear mathematical explanations, derivations or solved problems, well suited to learning;
5 - outstanding: rigorous, step-by-step mathematical reasoning, like a good textbook or a detailed solution.

Extract:
{text}

Answer with the score only, as "Score: N"."""


def parse_score(text: str) -> int | None:
    m = re.search(r"score\s*[:=]?\s*([0-5])\b", text, re.I) or re.fullmatch(r"\s*([0-5])\s*\.?\s*", text)
    return int(m.group(1)) if m else None


class QualityScorer:
    """Scores texts with a sequence-classification checkpoint (batched, truncated to ``max_length`` tokens)."""

    def __init__(self, model_dir: str | Path, max_length: int = 512, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def scores(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[s: s + self.batch_size], truncation=True, max_length=self.max_length,
                           padding=True, return_tensors="pt")
            logits = self.model(**enc).logits.float()
            if logits.shape[-1] == 1:
                out += logits[:, 0].tolist()
            else:
                p = logits.softmax(-1)
                out += (p * torch.arange(p.shape[-1])).sum(-1).tolist()
        return out


def int_score(score: float) -> int:
    return int(round(min(5.0, max(0.0, score)))) if math.isfinite(score) else 0


def train_classifier(texts: list[str], labels: list[float], out: str | Path, steps: int = 300, lr: float = 1e-3,
                     batch_size: int = 16, max_length: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """A small regression classifier (a nano Llama with a scalar head, tokenizer trained on the texts) fitted to
    0–5 labels with MSE; saved as an HF sequence-classification checkpoint that ``QualityScorer`` loads."""
    from refinery.models.zoo import build_text_classifier
    from refinery.progress import StepBar

    if len(texts) != len(labels) or len(texts) < 4:
        raise ValueError(f"need at least 4 labelled texts (got {len(texts)} texts, {len(labels)} labels)")
    torch.manual_seed(seed)
    model, tok = build_text_classifier(texts, 1, max_length, problem_type="regression")
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels, dtype=torch.float32)
    n_val = max(1, len(texts) // 10)
    perm = torch.randperm(len(texts), generator=g).tolist()
    val, train = perm[:n_val], perm[n_val:]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    bar = StepBar(progress, steps, 0, "quality", ("loss",))
    model.train()
    for step in range(steps):
        idx = [train[i] for i in torch.randint(0, len(train), (batch_size,), generator=g).tolist()]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        pred = model(**enc).logits[:, 0]
        loss = torch.nn.functional.mse_loss(pred, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(step + 1, {"loss": float(loss.detach())})
    bar.close()
    model.eval()
    with torch.no_grad():
        enc = tok([texts[i] for i in val], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        pv = model(**enc).logits[:, 0]
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    val_mse = float(torch.nn.functional.mse_loss(pv, y[val]))
    agree = float(sum(int_score(float(p)) >= 3 and labels[i] >= 3 or int_score(float(p)) < 3 and labels[i] < 3
                      for p, i in zip(pv, val)) / len(val))
    info = {"train": len(train), "valid": len(val), "valid_mse": val_mse, "valid_agreement_at_3": agree}
    (out / "quality.json").write_text(json.dumps(info, indent=1))
    return info
