"""BeyondWeb: synthetic pretraining data by rephrasing selected web documents (``recipes/beyondweb.yaml``).

What the paper found, and where it lives here: rephrase *high-quality* seeds (``select``: a quality field or
classifier with a threshold), use a *mix* of strategies (``strategies`` with mixing weights; each chunk draws one,
deterministically), deliberately add conversational / QA formats (web text is ~2.7% conversational), and keep the
source's facts (``fidelity``: the share of the source's numbers and named entities that survive). Long documents
are chunked on paragraph boundaries; every call goes through a Generator (any OpenAI-compatible server: concurrent,
cached, resumable). The run report gives the strategy and length distributions, diversity (distinct n-grams and
self-BLEU within and across strategies), fidelity, and input/output tokens per strategy.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.data.pipeline import Record, Stage, reject
from refinery.data.recipe import DataRunConfig, GeneratorSection, LLMStage

# Prompt templates (our own wording). {text} is the chunk; {style} optional target-style conditioning.
STRATEGIES: dict[str, str] = {
    "summary": "Summarise the following text in a clear, self-contained paragraph that keeps every key fact, "
               "number and name.{style}\n\nText:\n{text}",
    "wikipedia": "Rewrite the following text as a neutral, encyclopedic Wikipedia-style section with a short "
                 "title, keeping all facts, numbers and names.{style}\n\nText:\n{text}",
    "qa": "Write question-and-answer pairs that together cover all the information in the text below. Format each "
          "as 'Q: ...' on one line and 'A: ...' on the next.{style}\n\nText:\n{text}",
    "faq": "Turn the following text into a FAQ: a list of frequently asked questions with clear answers, covering "
           "every key point.{style}\n\nText:\n{text}",
    "tutorial": "Rewrite the following text as a step-by-step tutorial with numbered steps that a beginner could "
                "follow.{style}\n\nText:\n{text}",
    "distill": "Restate the following text as concisely as possible, without losing any fact, number or "
               "name.{style}\n\nText:\n{text}",
    "key_facts": "List the key facts stated in the following text as short bullet points, one fact per "
                 "line.{style}\n\nText:\n{text}",
    "conversation": "Rewrite the following text as a natural conversation between a curious student and a "
                    "knowledgeable teacher, covering all of its content.{style}\n\nText:\n{text}",
    "continuation": "Continue the following text naturally for one or two paragraphs, staying on topic and "
                    "consistent with it.{style}\n\nText:\n{text}",
}

_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?\b")
_ENTITY = re.compile(r"\b(?:[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*)\b")
_STOP = {"The", "A", "An", "In", "On", "At", "It", "This", "That", "These", "Those", "He", "She", "They", "We", "I",
         "You", "Its", "His", "Her", "Their", "Our", "As", "If", "When", "While", "For", "But", "And", "Or", "Q"}


def key_items(text: str) -> set[str]:
    """Numbers and capitalised names (not sentence-initial function words) a faithful rewrite keeps."""
    nums = {n.replace(",", "") for n in _NUMBER.findall(text)}
    ents = {e for e in _ENTITY.findall(text) if e not in _STOP and len(e) > 2}
    return nums | ents


def fidelity(source: str, output: str) -> float:
    """Share of the source's key items (numbers, names) that appear in the output (1.0 if the source has none)."""
    items = key_items(source)
    if not items:
        return 1.0
    out = output.replace(",", "")
    return sum(1 for it in items if it in out) / len(items)


def pick_strategy(key: str, weights: dict[str, float], seed: int) -> str:
    """Deterministic weighted choice from a hash of (seed, key): a re-run assigns the same strategies."""
    total = sum(weights.values())
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16 ** 12 * total
    acc = 0.0
    for name, w in sorted(weights.items()):
        acc += w
        if h < acc:
            return name
    return sorted(weights)[-1]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct word n-grams / total word n-grams over the texts (higher = more diverse)."""
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        for i in range(len(w) - n + 1):
            grams.add(tuple(w[i: i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def self_bleu(texts: list[str], limit: int = 100) -> float | None:
    """Mean sentence BLEU of each text against the others (sacrebleu; lower = more diverse). None below 2 texts."""
    from sacrebleu.metrics import BLEU

    texts = [t for t in texts if t.strip()][:limit]
    if len(texts) < 2:
        return None
    bleu = BLEU(effective_order=True)
    return sum(bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)) / len(texts)


class StrategyParams(Section):
    max_new_tokens: int | None = Field(None, gt=0, description="output budget (default: generator.max_new_tokens)")
    temperature: float | None = Field(None, ge=0, description="sampling temperature (default: the generator's)")
    style: str | None = Field(None, description="style conditioning for this strategy (default: style)")


class BeyondWebConfig(DataRunConfig):
    pipeline: Literal["beyondweb"] = Field("beyondweb", description="this recipe's pipeline")
    name: str = Field("beyondweb", description="run name")
    text_field: str = Field("text", description="field holding the document")
    quality_field: str | None = Field(None, description="select: a score already on the record (e.g. "
                                                        "quality_int from the math pipeline)")
    quality_model: str | None = Field(None, description="select: an HF sequence-classification dir instead")
    min_quality: float | None = Field(None, description="select: keep documents scoring at least this")
    min_chars: int = Field(200, ge=0, description="select: shorter documents are not worth rephrasing")
    chunk_tokens: int = Field(1000, gt=0, description="chunk size (approx. tokens, 4 chars each)")
    strategies: dict[str, float] = Field(
        default_factory=lambda: {"summary": 1, "wikipedia": 1, "qa": 1.5, "faq": 1, "tutorial": 1, "distill": 1,
                                 "key_facts": 1, "conversation": 1.5},
        description="strategy -> mixing weight (a mix beats any single prompt; QA and conversation up-weighted)")
    style: str | None = Field(None, description="optional target-style conditioning appended to every prompt")
    strategy_params: dict[str, StrategyParams] = Field(
        default_factory=lambda: {"distill": StrategyParams(max_new_tokens=256),
                                 "key_facts": StrategyParams(max_new_tokens=384, temperature=0.3),
                                 "conversation": StrategyParams(max_new_tokens=1536)},
        description="per-strategy parameters (length budget, temperature, style)")
    length_ratio: tuple[float, float] = Field((0.1, 4.0), description="output/input characters outside this are "
                                                                     "dropped (length control)")
    min_fidelity: float = Field(0.0, ge=0, le=1, description="drop outputs keeping less of the source's facts")
    generator: GeneratorSection = Field(default_factory=lambda: GeneratorSection(temperature=0.7),
                                        description="the rephraser; max_new_tokens is the output budget per chunk")

    @model_validator(mode="after")
    def _check(self) -> BeyondWebConfig:
        bad = [s for s in [*self.strategies, *self.strategy_params] if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategies {bad} (available: {', '.join(STRATEGIES)})")
        if not self.strategies or any(w < 0 for w in self.strategies.values()) or sum(self.strategies.values()) <= 0:
            raise ValueError("strategies needs at least one positive weight")
        return self


class Select(Stage):
    name, adds = "select", ("source_text",)
    schema = {"source_text": "string", "quality": "float64"}

    def __init__(self, cfg: BeyondWebConfig):
        self.cfg = cfg
        self.scorer = None

    def setup(self):
        if self.cfg.quality_model:
            from refinery.data.text.quality import QualityScorer

            self.scorer = QualityScorer(self.cfg.quality_model)

    def process(self, records):
        c = self.cfg
        if c.quality_model and self.scorer is None:
            self.setup()
        texts = [r.get(c.text_field) for r in records]
        scores = self.scorer.scores([t or "" for t in texts]) if self.scorer else [None] * len(records)
        out = []
        for r, t, s in zip(records, texts, scores):
            if not isinstance(t, str) or len(t.strip()) < c.min_chars:
                out.append(reject(r, "too_short"))
                continue
            q = s if s is not None else r.get(c.quality_field) if c.quality_field else None
            if c.min_quality is not None and (q is None or float(q) < c.min_quality):
                out.append(reject(r, "low_quality", f"score {q}"))
                continue
            out.append({**r, "source_text": t, "quality": q})
        return out


class Chunk(Stage):
    """One record per paragraph-aligned chunk (``chunk``, ``chunk_index``, ``doc_id``)."""

    name, adds = "chunk", ("chunk", "chunk_index", "doc_id")
    schema = {"chunk": "string", "chunk_index": "int64"}  # doc_id: the input id, of whatever type it has

    def __init__(self, cfg: BeyondWebConfig):
        self.cfg = cfg

    def process(self, records):
        from refinery.data.math_web.cleanup import chunk_text

        out = []
        for r in records:
            for k, ch in enumerate(chunk_text(r["source_text"], self.cfg.chunk_tokens)):
                out.append({**{x: v for x, v in r.items() if x not in (self.cfg.text_field, "source_text")},
                            "doc_id": r["id"], "id": f"{r['id']}.{k:03d}", "chunk": ch, "chunk_index": k})
        return out


class Rephrase(LLMStage):
    name, adds = "rephrase", ("text", "strategy", "input_tokens", "output_tokens", "fidelity")
    schema = {"text": "string", "strategy": "string", "input_tokens": "int64", "output_tokens": "int64",
              "fidelity": "float64"}

    def __init__(self, cfg: BeyondWebConfig):
        super().__init__(cfg, cfg.generator)

    def process(self, records):
        c = self.cfg
        strategies = [pick_strategy(r["id"], c.strategies, c.seed) for r in records]
        res: list = [None] * len(records)
        for name in sorted(set(strategies)):  # one call per strategy: each has its own parameters
            p = c.strategy_params.get(name, StrategyParams())
            style = p.style if p.style is not None else c.style
            cue = f"\n\nWrite it in this style: {style}" if style else ""
            idx = [i for i, s in enumerate(strategies) if s == name]
            got = self.sample([STRATEGIES[name].format(text=records[i]["chunk"], style=cue) for i in idx],
                              temperature=p.temperature, max_new_tokens=p.max_new_tokens)
            for i, g in zip(idx, got):
                res[i] = g
        out = []
        lo, hi = c.length_ratio
        for r, s, comps in zip(records, strategies, res):
            if isinstance(comps, Exception):
                out.append(reject(r, "llm_error", str(comps)))
                continue
            comp = comps[0]
            text = comp.text.strip()
            new = {**r, "text": text, "strategy": s, "input_tokens": comp.prompt_tokens,
                   "output_tokens": len(comp.token_ids), "fidelity": round(fidelity(r["chunk"], text), 4)}
            if comp.finish_reason == "length":  # cut off at the budget: an unfinished rewrite is not data
                out.append(reject(new, "truncated", f"{s}: hit max_new_tokens after {len(comp.token_ids)} tokens"))
                continue
            why = judge_output(r["chunk"], text, (lo, hi), c.min_fidelity)
            out.append(reject(new, *why) if why else new)
        return out


def judge_output(chunk: str, text: str, length_ratio: tuple[float, float], min_fidelity: float
                 ) -> tuple[str, str] | None:
    """Why a rewrite is dropped ``(reason, detail)``, or None to keep it: empty, outside the length-ratio bounds
    (output/input characters), or keeping too few of the source's numbers and names."""
    if not text.strip():
        return "empty_output", ""
    ratio = len(text) / max(1, len(chunk))
    if not length_ratio[0] <= ratio <= length_ratio[1]:
        return "length_out_of_range", f"output/input {ratio:.2f}"
    f = fidelity(chunk, text)
    if f < min_fidelity:
        return "low_fidelity", f"{f:.2f}"
    return None


def build_stages(cfg: BeyondWebConfig) -> list[Stage]:
    return [Select(cfg), Chunk(cfg), Rephrase(cfg)]


def report(records: list[Record], rejected: list[Record]) -> tuple[dict[str, Any], list[str]]:
    """Strategy/length distributions, diversity within and across strategies, fidelity and token accounting."""
    by: dict[str, list[Record]] = {}
    for r in records:
        by.setdefault(r["strategy"], []).append(r)
    spend: dict[str, list[int]] = {}
    for r in records + [x for x in rejected if "strategy" in x]:
        tok = spend.setdefault(r["strategy"], [0, 0])
        tok[0] += int(r.get("input_tokens") or 0)
        tok[1] += int(r.get("output_tokens") or 0)
    rows, summary = [], {"records": len(records)}
    for s in sorted(set(by) | set(spend)):
        rs = by.get(s, [])
        texts = [r["text"] for r in rs]
        sb = self_bleu(texts)
        rows.append(f"| {s} | {len(rs)} | {sum(len(t) for t in texts) / max(1, len(texts)):.0f} | "
                    f"{distinct_n(texts, 2):.3f} | {'-' if sb is None else f'{sb:.1f}'} | "
                    f"{sum(r['fidelity'] for r in rs) / max(1, len(rs)):.2f} | {spend.get(s, [0, 0])[0]} | "
                    f"{spend.get(s, [0, 0])[1]} |")
        summary[f"strategy.{s}"] = len(rs)
    all_texts = [r["text"] for r in records]
    summary.update({"distinct2_all": round(distinct_n(all_texts, 2), 4),
                    "self_bleu_across": self_bleu([by[s][0]["text"] for s in by]) if len(by) > 1 else None,
                    "input_tokens": sum(v[0] for v in spend.values()),
                    "output_tokens": sum(v[1] for v in spend.values())})
    lines = ["", "| strategy | outputs | mean chars | distinct-2 | self-BLEU (within) | fidelity | input tokens | "
             "output tokens |", "|---|---|---|---|---|---|---|---|", *rows, "",
             f"Across strategies: distinct-2 {summary['distinct2_all']:.3f}, self-BLEU of one output per strategy "
             f"{'-' if summary['self_bleu_across'] is None else format(summary['self_bleu_across'], '.1f')}; "
             f"tokens in {summary['input_tokens']}, out {summary['output_tokens']} (rejected outputs included: "
             "their cost was paid)."]
    return summary, lines



def report_sections(out, stats: dict) -> list[str]:
    """The run report's rephrasing section (and ``stats["beyondweb"]``), from the outputs and the rejects."""
    from refinery.data.io import read_output
    from refinery.data.pipeline import output_records

    rejected = [r for p in sorted((out / "rejects").glob("*.jsonl")) for r in read_output(p)]
    summary, lines = report(output_records(out), rejected)
    stats["beyondweb"] = summary
    return ["", "## Rephrasing", *lines]
