"""CultureGuard's data pipeline (``recipes/cultureguard.yaml``): English safety samples → cultural segregation →
cultural adaptation → machine translation → quality filters, one output record per (sample, language).

Every LLM call goes through a Generator (any OpenAI-compatible server). Each filter is its own stage with its own
threshold and reject reason (see ``refinery.data.safety.filters``). Output records keep the source id, label,
categories, the stage provenance and every score.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from refinery.data.pipeline import Stage, reject
from refinery.data.recipe import DataRunConfig, GeneratorSection, LLMStage

LANGUAGES = {"ar": "Arabic", "de": "German", "es": "Spanish", "fr": "French", "hi": "Hindi", "ja": "Japanese",
             "th": "Thai", "zh": "Chinese", "it": "Italian", "vi": "Vietnamese", "ko": "Korean", "bn": "Bengali",
             "sw": "Swahili", "jv": "Javanese", "en": "English"}

# Rule-based pre-filter: markers of one culture (US-centric web data, mostly).
CULTURE_MARKERS = re.compile(
    r"\$\s?\d|\bdollars?\b|\bbucks\b|\b(?:IRS|FBI|CIA|DMV|NFL|NBA|MLB|GOP|SAT|ACT)\b|\bCongress\b|\bSenate\b|"
    r"\bThanksgiving\b|\bHalloween\b|\bChristmas\b|\bFourth of July\b|\bSuper Bowl\b|\bWalmart\b|\bTarget\b|"
    r"\bmiles?\b|\bpounds?\b|\bFahrenheit\b|\b(?:America|American|USA|U\.S\.|Texas|California|New York)\b|"
    r"\b(?:Mexican|Chinese|Indian|Arab|Muslim|Jewish|Black|white) (?:people|person|man|woman|guys?)\b",
    re.I)

SEGREGATE_PROMPT = """Does the following text depend on a particular culture or country — its names, places, \
currency, holidays, institutions, laws, customs or stereotypes about a group — so that it would need adapting for \
readers elsewhere? Answer yes or no.

Text:
{text}"""

ADAPT_PROMPT = """Adapt the following text for readers in a {language}-speaking country: replace names, places, \
currency, holidays, institutions and customs with local equivalents. Keep its meaning, intent and any harmful or \
unsafe content exactly as it is — this is for safety-classifier training data. Answer in English, with the adapted \
text only.

Text:
{text}"""

TRANSLATE_PROMPT = "Translate the following text into {language}. Answer with the translation only.\n\nText:\n{text}"
BACK_PROMPT = "Translate the following text into English. Answer with the translation only.\n\nText:\n{text}"

JUDGE_PROMPT = """Rate this translation from English into {language}, each from 1 (bad) to 5 (excellent):
fluency, accuracy, idiomaticity, terminology, format. Answer exactly as five lines "name: score".

English:
{source}

{language}:
{translation}"""

LABEL_PROMPT = """Is the following user message safe or unsafe (asking for or containing harmful content)? Answer \
with one word: safe or unsafe.

Message:
{text}"""


class CultureGuardConfig(DataRunConfig):
    pipeline: Literal["cultureguard"] = Field("cultureguard", description="this recipe's pipeline")
    name: str = Field("cultureguard", description="run name")
    text_field: str = Field("prompt", description="the sample's text")
    label_field: str = Field("label", description="safe / unsafe")
    categories_field: str = Field("categories", description="hazard categories (kept as is)")
    languages: list[str] = Field(default_factory=lambda: ["ar", "de", "es", "fr", "hi", "ja", "th", "zh"],
                                 description="target languages (CultureGuard's eight)")
    llm_segregation: bool = Field(True, description="ask the generator when no rule marks the text")
    min_lang_prob: float = Field(0.5, ge=0, le=1, description="language filter: langid probability")
    max_copy_chrf: float = Field(60.0, description="copy filter: chrF(output, source) at or above = untranslated")
    min_bt_chrf: float = Field(35.0, description="back-translation filter: chrF(back-translation, source)")
    min_judge: int = Field(3, ge=0, le=5, description="judge filter: every dimension at least this (0 disables "
                                                      "the judge stage: no judge calls)")
    label_check: bool = Field(True, description="re-judge the safety label of the translation")
    generator: GeneratorSection = Field(default_factory=lambda: GeneratorSection(temperature=0.0,
                                                                                 max_new_tokens=512))

    @field_validator("languages")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in LANGUAGES]
        if bad:
            raise ValueError(f"unknown languages {bad} (known: {', '.join(LANGUAGES)})")
        return v


class _LLMStage(LLMStage):
    def __init__(self, cfg: CultureGuardConfig):
        super().__init__(cfg, cfg.generator)

    def ask(self, prompts: list[str], max_new_tokens: int | None = None) -> list:
        """One text (stripped) or exception per prompt."""
        return [r if isinstance(r, Exception) else r[0].text.strip()
                for r in self.sample(prompts, max_new_tokens=max_new_tokens)]

    def each(self, records: list[dict], prompts: list[str], keep, max_new_tokens: int | None = None) -> list[dict]:
        """Ask one prompt per record; ``keep(record, answer)`` makes the record's result, and a failed request
        rejects it as ``llm_error``."""
        return [reject(r, "llm_error", str(a)) if isinstance(a, Exception) else keep(r, a)
                for r, a in zip(records, self.ask(prompts, max_new_tokens))]


class Segregate(_LLMStage):
    name, adds = "segregate", ("culture", "culture_reason")

    def process(self, records):
        out, ask = [], []
        for r in records:
            text = r.get(self.cfg.text_field)
            if not isinstance(text, str) or not text.strip():
                out.append(reject(r, "no_text"))
                continue
            m = CULTURE_MARKERS.search(text)
            out.append({**r, "culture": "specific" if m else "agnostic",
                        "culture_reason": f"rule: {m.group(0)}" if m else "rule: none"})
            if not m and self.cfg.llm_segregation:
                ask.append(len(out) - 1)
        if ask:
            answers = self.ask([SEGREGATE_PROMPT.format(text=out[i][self.cfg.text_field]) for i in ask], 4)
            for i, a in zip(ask, answers):
                if isinstance(a, Exception):
                    out[i] = reject(out[i], "llm_error", str(a))
                elif a.lower().startswith("yes"):
                    out[i] = {**out[i], "culture": "specific", "culture_reason": "llm"}
        return out


class Adapt(_LLMStage):
    """One record per (sample, language); culture-specific samples rewritten for the target culture."""

    name, adds = "adapt", ("lang", "source_id", "adapted")

    def process(self, records):
        out, ask = [], []
        for r in records:
            for lang in self.cfg.languages:
                new = {**r, "lang": lang, "source_id": r["id"], "id": f"{r['id']}.{lang}",
                       "adapted": r[self.cfg.text_field]}
                out.append(new)
                if r["culture"] == "specific":
                    ask.append(len(out) - 1)
        if ask:
            answers = self.ask([ADAPT_PROMPT.format(language=LANGUAGES[out[i]["lang"]],
                                                    text=out[i][self.cfg.text_field]) for i in ask])
            for i, a in zip(ask, answers):
                out[i] = reject(out[i], "llm_error", str(a)) if isinstance(a, Exception) else \
                    ({**out[i], "adapted": a} if a else reject(out[i], "empty_adaptation"))
        return out


class Translate(_LLMStage):
    name, adds = "translate", ("text",)

    def process(self, records):
        return self.each(records, [TRANSLATE_PROMPT.format(language=LANGUAGES[r["lang"]], text=r["adapted"])
                                   for r in records],
                         lambda r, a: {**r, "text": a} if a else reject(r, "empty_translation"))


class LanguageFilter(Stage):
    name, adds = "filter_language", ("lang_prob",)

    def __init__(self, cfg: CultureGuardConfig):
        self.cfg = cfg

    def process(self, records):
        from refinery.data.safety.filters import detect_language

        cands = tuple(sorted({"en", *self.cfg.languages}))
        out = []
        for r in records:
            got, p = detect_language(r["text"], cands)
            new = {**r, "lang_detected": got, "lang_prob": round(p, 4)}
            ok = got == r["lang"] and p >= self.cfg.min_lang_prob
            out.append(new if ok else reject(new, "wrong_language", f"{got} ({p:.2f})"))
        return out


class LengthFilter(Stage):
    name, adds = "filter_length", ("length_ratio",)

    def process(self, records):
        from refinery.data.safety.filters import length_ok

        out = []
        for r in records:
            new = {**r, "length_ratio": round(len(r["text"]) / max(1, len(r["adapted"])), 3)}
            out.append(new if length_ok(r["adapted"], r["text"], r["lang"]) else reject(new, "length_ratio"))
        return out


class CopyFilter(Stage):
    name, adds = "filter_copy", ()

    def __init__(self, cfg: CultureGuardConfig):
        self.cfg = cfg

    def process(self, records):
        from refinery.data.safety.filters import not_copied

        return [r if not_copied(r["adapted"], r["text"], self.cfg.max_copy_chrf) else reject(r, "untranslated")
                for r in records]


class BackTranslation(_LLMStage):
    name, adds = "filter_back_translation", ("back_translation", "bt_chrf")

    def process(self, records):
        from refinery.data.safety.filters import chrf

        def keep(r, a):
            score = chrf(a, r["adapted"])
            new = {**r, "back_translation": a, "bt_chrf": round(score, 2)}
            return new if score >= self.cfg.min_bt_chrf else reject(new, "back_translation", f"chrF {score:.1f}")

        return self.each(records, [BACK_PROMPT.format(text=r["text"]) for r in records], keep)


class Judge(_LLMStage):
    name, adds = "filter_judge", ("judge",)

    def process(self, records):
        from refinery.data.safety.filters import parse_judge

        def keep(r, a):
            scores = parse_judge(a)
            if scores is None:
                return reject(r, "judge_unparseable", a[:200])
            return reject({**r, "judge": scores}, "judge_low") if min(scores.values()) < self.cfg.min_judge \
                else {**r, "judge": scores}

        return self.each(records, [JUDGE_PROMPT.format(language=LANGUAGES[r["lang"]], source=r["adapted"],
                                                       translation=r["text"]) for r in records], keep, 48)


class LabelConsistency(_LLMStage):
    name, adds = "filter_label", ("label_rejudged",)

    def process(self, records):
        from refinery.data.safety.filters import parse_label

        def keep(r, a):
            got, want = parse_label(a), str(r.get(self.cfg.label_field, "")).lower()
            new = {**r, "label_rejudged": got}
            return new if got == want else reject(new, "label_changed", f"{want} -> {got}")

        return self.each(records, [LABEL_PROMPT.format(text=r["text"]) for r in records], keep, 4)


class Provenance(Stage):
    """Records which stages each kept record passed (the pipeline's stage names, in order)."""

    name, adds = "provenance", ("provenance",)

    def __init__(self, names: list[str]):
        self.names = names

    def process(self, records):
        return [{**r, "provenance": list(self.names)} for r in records]


def build_stages(cfg: CultureGuardConfig) -> list[Stage]:
    stages: list[Stage] = [Segregate(cfg), Adapt(cfg), Translate(cfg), LanguageFilter(cfg), LengthFilter(),
                           CopyFilter(cfg), BackTranslation(cfg)]
    if cfg.min_judge:
        stages.append(Judge(cfg))
    if cfg.label_check:
        stages.append(LabelConsistency(cfg))
    return stages + [Provenance([s.name for s in stages])]
