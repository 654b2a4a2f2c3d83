"""Do the translation filters keep true translations and reject bad ones? Evaluated on parallel data (MultiJail: the
same prompts in many languages): every true pair (English source, its translation) must pass; four corruptions of
it must be rejected — a shuffled pair (another prompt's translation), the wrong language (the same prompt in another
language), a truncated translation (its first half) and the source copied untranslated.

The back-translation filter needs an MT system; here it is evaluated with an *oracle* back-translation: MultiJail's
own English for the text shown (the other prompt's English for a shuffled pair, the first half of the English for a
truncated one, the source itself for a copy). The LLM judge and label-consistency filters need a model and are not
part of this evaluation.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from refinery.data.safety.filters import back_translation_ok, language_ok, length_ok, not_copied

CORRUPTIONS = ("shuffled", "wrong_language", "truncated", "copied")
FILTERS = ("language", "length", "copy", "back_translation")


def read_multijail(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    langs = [c for c in rows[0] if c not in ("id", "source", "tags", "en")]
    return rows, langs


def cases(rows: list[dict[str, str]], langs: list[str], lang: str, seed: int = 0) -> list[dict[str, Any]]:
    """The true pairs of one language and one corruption of each kind per row."""
    rng = random.Random(f"{seed}:{lang}")
    out = []
    for i, r in enumerate(rows):
        src, tgt = r["en"], r[lang]
        j = rng.choice([k for k in range(len(rows)) if k != i])
        other = rng.choice([x for x in langs if x != lang])
        half = max(1, len(tgt) // 2)
        out += [
            {"kind": "true", "source": src, "output": tgt, "oracle_bt": src},
            {"kind": "shuffled", "source": src, "output": rows[j][lang], "oracle_bt": rows[j]["en"]},
            {"kind": "wrong_language", "source": src, "output": r[other], "oracle_bt": src},
            {"kind": "truncated", "source": src, "output": tgt[:half],
             "oracle_bt": src[: max(1, int(len(src) * half / max(1, len(tgt))))]},
            {"kind": "copied", "source": src, "output": src, "oracle_bt": src},
        ]
    return out


def verdicts(case: dict[str, Any], lang: str, candidates: tuple[str, ...]) -> dict[str, bool]:
    """Filter name -> passes."""
    return {"language": language_ok(case["output"], lang, candidates),
            "length": length_ok(case["source"], case["output"], lang),
            "copy": not_copied(case["source"], case["output"]),
            "back_translation": back_translation_ok(case["source"], case["oracle_bt"])}


def evaluate(rows: list[dict[str, str]], langs: list[str], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per language: for each filter and for all combined, precision and recall of *rejection* (a rejected corrupt
    pair is a true positive, a rejected true pair a false positive), plus the true pairs kept and each corruption's
    rejection rate."""
    candidates = tuple(["en", *langs])
    report: dict[str, dict[str, Any]] = {}
    for lang in langs:
        cs = cases(rows, langs, lang, seed)
        vs = [verdicts(c, lang, candidates) for c in cs]
        res: dict[str, Any] = {}
        for name in (*FILTERS, "combined"):
            def rejected(v, name=name):
                return not all(v.values()) if name == "combined" else not v[name]

            tp = sum(rejected(v) for c, v in zip(cs, vs) if c["kind"] != "true")
            fp = sum(rejected(v) for c, v in zip(cs, vs) if c["kind"] == "true")
            n_bad = sum(c["kind"] != "true" for c in cs)
            n_true = len(cs) - n_bad
            res[name] = {"precision": tp / max(1, tp + fp), "recall": tp / max(1, n_bad),
                         "true_kept": 1 - fp / max(1, n_true),
                         **{f"rejects_{k}": sum(rejected(v) for c, v in zip(cs, vs) if c["kind"] == k)
                            / max(1, sum(c["kind"] == k for c in cs)) for k in CORRUPTIONS}}
        report[lang] = res
    return report
