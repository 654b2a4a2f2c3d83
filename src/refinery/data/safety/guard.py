"""The guard model: a safe/unsafe + hazard-category classifier fine-tuned with LoRA (peft) on a
sequence-classification head, and its per-language evaluation (accuracy, F1 of the unsafe class, false-refusal rate
= safe prompts called unsafe, and category F1 on unsafe items).

Data: JSONL records ``{text | prompt [+ response], label: safe|unsafe, categories?, lang?}`` (CultureGuard output, or
any safety set). With a ``response`` the guard judges the prompt–response pair. The head has 1 + C outputs: an
``unsafe`` logit and one per category (multi-label, binary cross-entropy).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from refinery.errors import DataError

LABELS = ("safe", "unsafe")


def read_labelled(path: str | Path) -> list[dict[str, Any]]:
    from refinery.jsonl import iter_jsonl

    out = []
    for line, rec, err in iter_jsonl(path):
        if err or not isinstance(rec, dict):
            raise DataError(f"{path}:{line}: {err or 'not a JSON object'}")
        text = rec.get("text") or rec.get("prompt")
        label = str(rec.get("label", "")).lower()
        if not isinstance(text, str) or label not in LABELS:
            raise DataError(f"{path}:{line}: needs 'text' (or 'prompt') and 'label' safe|unsafe")
        if isinstance(rec.get("response"), str):
            text = pair_text(text, rec["response"])
        out.append({"text": text, "label": label, "lang": rec.get("lang", "en"),
                    "categories": parse_categories(rec.get("categories"))})
    return out


def pair_text(prompt: str, response: str) -> str:
    return f"User: {prompt}\n\nAssistant: {response}"


def parse_categories(value: Any) -> list[str]:
    """A list, or its string form (MultiJail writes ``"['A', 'B']"``)."""
    import ast

    if isinstance(value, list):
        return [str(x) for x in value]
    if isinstance(value, str) and value.strip():
        try:
            parsed = ast.literal_eval(value)
            return [str(x) for x in parsed] if isinstance(parsed, (list, tuple)) else [value]
        except (ValueError, SyntaxError):
            return [value]
    return []


def safety_metrics(gold: list[str], pred: list[str], langs: list[str]) -> dict[str, dict[str, float]]:
    """Per language and overall: accuracy, precision / recall / F1 of ``unsafe``, false-refusal rate."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, lang in enumerate(langs):
        groups[lang].append(i)
        groups["all"].append(i)
    out = {}
    for lang, idx in groups.items():
        tp = sum(gold[i] == "unsafe" and pred[i] == "unsafe" for i in idx)
        fp = sum(gold[i] == "safe" and pred[i] == "unsafe" for i in idx)
        fn = sum(gold[i] == "unsafe" and pred[i] == "safe" for i in idx)
        safe = sum(gold[i] == "safe" for i in idx)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[lang] = {"n": len(idx), "accuracy": sum(gold[i] == pred[i] for i in idx) / len(idx),
                     "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                     "false_refusal_rate": fp / safe if safe else 0.0}
    return out


def train_guard(records: list[dict[str, Any]], out: str | Path, base: str | Path | None = None, steps: int = 200,
                lr: float = 2e-3, batch_size: int = 16, lora_r: int = 8, max_length: int = 128, seed: int = 0,
                progress: bool = True) -> dict[str, Any]:
    """LoRA on the attention projections plus a trained classification head; the adapter is merged and the result
    saved as a plain HF sequence-classification checkpoint. ``base``: a causal-LM directory (its body is reused);
    None builds a small Llama with a tokenizer trained on the texts."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from refinery.progress import StepBar

    if len({r["label"] for r in records}) < 2:
        raise DataError("the guard needs both safe and unsafe examples")
    torch.manual_seed(seed)
    cats = sorted({c for r in records for c in r.get("categories", [])})
    n_out = 1 + len(cats)
    if base:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=n_out)
    else:
        from refinery.models.zoo import build_text_classifier

        model, tok = build_text_classifier([r["text"] for r in records], n_out, max_length)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model.config.pad_token_id = tok.pad_token_id
    names = ["unsafe", *cats]
    model.config.id2label, model.config.label2id = dict(enumerate(names)), {x: i for i, x in enumerate(names)}
    model.config.problem_type = "multi_label_classification"
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      modules_to_save=["score"], task_type="SEQ_CLS")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    y = torch.zeros(len(records), n_out)
    for i, r in enumerate(records):
        y[i, 0] = float(r["label"] == "unsafe")
        for c in r.get("categories", []):
            y[i, 1 + cats.index(c)] = 1.0
    g = torch.Generator().manual_seed(seed)
    bar = StepBar(progress, steps, 0, "guard", ("loss",))
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(records), (min(batch_size, len(records)),), generator=g).tolist()
        enc = tok([records[i]["text"] for i in idx], truncation=True, max_length=max_length, padding=True,
                  return_tensors="pt")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**enc).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(step + 1, {"loss": float(loss.detach())})
    bar.close()
    merged = model.merge_and_unload().eval()
    out = Path(out)
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"examples": len(records), "steps": steps, "lora_r": lora_r, "trainable_params": trainable,
            "base": str(base) if base else "tiny-llama", "categories": cats}
    (out / "guard.json").write_text(json.dumps(info, indent=1))
    return info


@torch.no_grad()
def predict(model_dir: str | Path, texts: list[str], batch_size: int = 32, max_length: int = 128
            ) -> list[tuple[str, list[str]]]:
    """(safe|unsafe, predicted categories) per text."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from refinery.models.io import _check_dir

    model_dir = _check_dir(model_dir)  # one clear line for a missing or non-HF directory, not a hub traceback
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s: s + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        p = model(**enc).logits.sigmoid()
        for row in p.tolist():
            unsafe = row[0] > 0.5
            out.append(("unsafe" if unsafe else "safe",
                        [names[k] for k in range(1, len(row)) if unsafe and row[k] > 0.5]))
    return out


def category_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Micro F1 of predicted hazard categories."""
    tp = sum(len(set(g) & set(p)) for g, p in zip(gold, pred))
    n_pred, n_gold = sum(len(set(p)) for p in pred), sum(len(set(g)) for g in gold)
    prec, rec = tp / n_pred if n_pred else 0.0, tp / n_gold if n_gold else 0.0
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def evaluate_guard(model_dir: str | Path, data: str | Path) -> dict[str, dict[str, float]]:
    recs = read_labelled(data)
    pred = predict(model_dir, [r["text"] for r in recs])
    res = safety_metrics([r["label"] for r in recs], [p[0] for p in pred], [r["lang"] for r in recs])
    unsafe = [(r["categories"], p[1]) for r, p in zip(recs, pred) if r["label"] == "unsafe" and r["categories"]]
    if unsafe:
        res["all"]["category_f1"] = category_f1([g for g, _ in unsafe], [p for _, p in unsafe])
    return res
