"""CultureGuard's translation-quality filters, each a pure decision with its own threshold and reject reason.

- ``language``: the output is in the target language (langid.py, offline; restricted to the languages in play, so
  a short Javanese sentence is not called English);
- ``length``: the output/source character ratio lies in bounds for the language pair (scripts differ a lot:
  Chinese uses ~0.3 characters per English character, Thai ~1);
- ``copy``: the output is not the source left untranslated (chrF of output vs source);
- ``back_translation``: the back-translation of the output is close to the source (chrF, sacrebleu);
- ``judge``: an LLM scores fluency / accuracy / idiomaticity / terminology / format 1–5, each above a minimum;
- ``label``: the safety label re-judged on the output equals the source's.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Expected output/source character ratios (English source) with generous margins: (low, high).
LENGTH_BOUNDS: dict[str, tuple[float, float]] = {
    "zh": (0.15, 0.75), "ja": (0.2, 0.9), "ko": (0.2, 0.9), "th": (0.55, 1.8), "ar": (0.55, 1.5),
    "hi": (0.65, 1.8), "bn": (0.6, 1.8), "de": (0.8, 1.8), "fr": (0.8, 1.8), "es": (0.8, 1.8), "it": (0.8, 1.8),
    "vi": (0.75, 1.8), "sw": (0.75, 1.9), "jv": (0.75, 1.9), "en": (0.7, 1.4),
}
DEFAULT_BOUNDS = (0.5, 2.0)
JUDGE_DIMENSIONS = ("fluency", "accuracy", "idiomaticity", "terminology", "format")


@lru_cache(maxsize=16)
def _identifier(langs: tuple[str, ...] | None):
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    if langs:
        ident.set_languages(list(langs))
    return ident


def detect_language(text: str, candidates: tuple[str, ...] | None = None) -> tuple[str, float]:
    """(ISO 639-1 code, probability) among ``candidates`` (all 97 langid languages when None)."""
    return _identifier(tuple(sorted(candidates)) if candidates else None).classify(text)


def language_ok(text: str, lang: str, candidates: tuple[str, ...] | None = None, min_prob: float = 0.5) -> bool:
    got, p = detect_language(text, candidates)
    return got == lang and p >= min_prob


def length_ok(source: str, output: str, lang: str, bounds: dict[str, tuple[float, float]] | None = None) -> bool:
    lo, hi = (bounds or LENGTH_BOUNDS).get(lang, DEFAULT_BOUNDS)
    ratio = len(output.strip()) / max(1, len(source.strip()))
    return lo <= ratio <= hi


def chrf(hypothesis: str, reference: str) -> float:
    """chrF (sacrebleu, 0-100) of one sentence against one reference."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hypothesis, [reference]).score


def not_copied(source: str, output: str, max_chrf: float = 60.0) -> bool:
    """False when the output is (nearly) the source itself: left untranslated."""
    return chrf(output, source) < max_chrf


def back_translation_ok(source: str, back_translation: str, min_chrf: float = 35.0) -> bool:
    return chrf(back_translation, source) >= min_chrf


def parse_judge(text: str) -> dict[str, int] | None:
    """``fluency: 4`` … lines → scores (None unless all five dimensions are given as 1–5)."""
    out = {}
    for dim in JUDGE_DIMENSIONS:
        m = re.search(rf"{dim}\s*[:=]\s*([1-5])\b", text, re.I)
        if not m:
            return None
        out[dim] = int(m.group(1))
    return out


def parse_label(text: str) -> str | None:
    t = text.strip().lower()
    m = re.search(r"\b(unsafe|safe)\b", t)
    return m.group(1) if m else None
