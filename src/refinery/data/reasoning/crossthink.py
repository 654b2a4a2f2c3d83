"""Nemotron-CrossThink multi-domain RL data (``recipes/crossthink_data.yaml``).

Documents → question synthesis with multiple-choice and open-ended templates (any Generator) → MCQ→open-ended
conversion (items that cannot stand without their options — "Which of the following …" — are dropped) → filters
for verifiable answers (MCQ gold among the options; open-ended answers of at most ``max_answer_words`` words; math
items need an answer the math verifier can parse) → difficulty filter (drop what a small model already solves: pass
rate over N samples) → blending by domain ratios (general : math = 2 : 1 by default, the paper's best) with the final
composition reported. Output items are RL prompts ``{id, prompt, answer, domain, ...}``: ``domain: choice`` goes to
the choice verifier, the rest to the math verifier (numbers, expressions and short text answers).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from refinery.data.pipeline import GlobalStage, Record, Stage, reject, row_id
from refinery.data.recipe import DataRunConfig, GeneratorSection, LLMStage
from refinery.errors import DataError

MCQ_PROMPT = """Read the passage and write one challenging multiple-choice question about it, with four options \
of which exactly one is correct. Use exactly this format:
Question: <question>
A) <option>
B) <option>
C) <option>
D) <option>
Answer: <letter>

Passage:
{text}"""

OPEN_PROMPT = """Read the passage and write one challenging question about it whose answer is short (a number, a \
name or a few words) and can be checked exactly. Use exactly this format:
Question: <question>
Answer: <short answer>

Passage:
{text}"""

NEEDS_OPTIONS = re.compile(r"which of the (?:following|these|options|choices)|all of the above|none of the above|"
                           r"\bwhich option\b|\bthe options\b|\bthe choices\b|\bboth [a-d] and [a-d]\b", re.I)
_OPTION = re.compile(r"^\s*\(?([A-J])[).:]\s*(.+?)\s*$", re.M)


def parse_mcq(text: str) -> dict[str, Any] | None:
    """``Question: … / A) … / … / Answer: X`` → ``{question, options: {letter: text}, answer: letter}``."""
    q = re.search(r"Question:\s*(.+?)(?=\n\s*\(?[A-J][).:])", text, re.S)
    a = re.search(r"Answer:\s*\(?([A-J])\b", text)
    opts = {m.group(1): m.group(2) for m in _OPTION.finditer(text.split("Answer:")[0])}
    if not q or not a or len(opts) < 2:
        return None
    return {"question": q.group(1).strip(), "options": opts, "answer": a.group(1)}


def parse_open(text: str) -> dict[str, Any] | None:
    m = re.search(r"Question:\s*(.+?)\n\s*Answer:\s*(.+)", text, re.S)
    if not m:
        return None
    answer = m.group(2).strip().splitlines()[0].strip() if m.group(2).strip() else ""
    return {"question": m.group(1).strip(), "answer": answer} if answer else None


def mcq_prompt(question: str, options: dict[str, str]) -> str:
    return question + "\n" + "\n".join(f"({k}) {v}" for k, v in sorted(options.items())) + \
        "\nAnswer with the letter of the correct option."


def to_open_ended(item: dict[str, Any]) -> dict[str, Any] | None:
    """An MCQ as an open-ended question (answer = the gold option's text), or None when the stem needs its options."""
    if NEEDS_OPTIONS.search(item["question"]) or item["answer"] not in item["options"]:
        return None
    return {**item, "template": "open", "answer": item["options"][item["answer"]], "options": None,
            "converted_from_mcq": True}


def math_parseable(answer: str) -> bool:
    """Whether the math verifier can read the answer as a value (number, fraction, expression, tuple, …)."""
    from refinery.verifiers.math import normalize, parse_value, to_rational, to_sympy

    a = normalize(answer)
    if not a:
        return False
    if to_rational(a) is not None:
        return True
    try:
        v = parse_value(a)
    except Exception:
        return False
    if v.kind == "text":
        return False  # words ('Paris') are not a math answer, though sympy would read them as symbols
    if v.kind != "scalar":
        return True
    try:
        return to_sympy(a) is not None
    except Exception:
        return False


class CrossThinkConfig(DataRunConfig):
    pipeline: Literal["crossthink_data"] = Field("crossthink_data", description="this recipe's pipeline")
    name: str = Field("crossthink-data", description="run name")
    text_field: str = Field("text")
    domain_field: str | None = Field("domain", description="record field naming the document's domain")
    default_domain: str = Field("general", description="domain of records without one (e.g. stem, humanities)")
    math_domains: list[str] = Field(default_factory=lambda: ["math"], description="domains whose answers must "
                                                                                  "parse as math")
    templates: list[Literal["mcq", "open"]] = Field(default_factory=lambda: ["mcq", "open"])
    mcq_mode: Literal["keep", "convert", "both"] = Field("both", description="keep MCQs, convert them to open-ended "
                                                                             "(dropping option-bound stems), or both")
    max_chars: int = Field(4000, gt=0, description="document characters shown to the synthesiser")
    max_answer_words: int = Field(10, gt=0, description="open-ended answers longer than this are dropped")
    difficulty_samples: int = Field(0, ge=0, description="N samples for the difficulty filter (0 = off)")
    max_pass_rate: float = Field(0.75, ge=0, le=1, description="drop items the model solves more often than this")
    blend: dict[str, float] = Field(default_factory=lambda: {"general": 2.0, "math": 1.0},
                                    description="domain -> ratio of the final mix (general : math = 2 : 1)")
    blend_unnamed: Literal["keep", "drop", "error"] = Field(
        "keep", description="domains the blend does not name: keep every item of them (outside the ratios, which "
                            "apply among the named domains), drop them (counted as blend_unnamed_domain), or stop "
                            "with an error listing them")
    generator: GeneratorSection = Field(default_factory=GeneratorSection)


class Synthesize(LLMStage):
    name, adds = "synthesize", ("question", "answer", "options", "template", "domain", "source_doc")
    schema = {"question": "string", "answer": "string", "options": "map<string,string>", "template": "string",
              "domain": "string"}

    def __init__(self, cfg: CrossThinkConfig):
        super().__init__(cfg, cfg.generator)

    def process(self, records):
        c = self.cfg
        # A record back from --retry-rejects names the template whose request failed: only that one is redone.
        jobs = [(r, t) for r in records for t in c.templates if r.get("template") in (None, t)]
        res = self.sample([(MCQ_PROMPT if t == "mcq" else OPEN_PROMPT).format(
            text=(r.get(c.text_field) or "")[: c.max_chars]) for r, t in jobs])
        out = []
        for (r, t), comps in zip(jobs, res):
            domain = (r.get(c.domain_field) if c.domain_field else None) or c.default_domain
            base = {"id": f"{r['id']}.{t}", "source_doc": r.get("source", r["id"]), "domain": domain,
                    "template": t}
            if isinstance(comps, Exception):  # the document itself is kept: a retry needs its text
                out.append(reject({**r, "template": t}, "llm_error", str(comps)))
                continue
            parsed = (parse_mcq if t == "mcq" else parse_open)(comps[0].text)
            if parsed is None:
                out.append(reject({**base, "raw": comps[0].text[:500]}, "unparseable"))
            else:
                out.append({**base, "options": None, **parsed})
        return out


class ConvertMCQ(Stage):
    name, adds = "mcq_to_open", ("converted_from_mcq",)
    schema = {"converted_from_mcq": "bool"}

    def __init__(self, cfg: CrossThinkConfig):
        self.cfg = cfg

    def process(self, records):
        out = []
        for r in records:
            if r["template"] != "mcq" or self.cfg.mcq_mode == "keep":
                out.append(r)
                continue
            conv = to_open_ended(r)
            if self.cfg.mcq_mode == "both":
                out.append(r)
                if conv is not None:
                    out.append({**conv, "id": r["id"] + ".open"})
            else:
                out.append({**conv, "id": r["id"] + ".open"} if conv is not None else reject(r, "needs_options"))
        return out


class Verifiable(Stage):
    """Keep only items whose answers a verifier can check."""

    name, adds = "verifiable", ("prompt",)
    schema = {"prompt": "string", "verifier": "string", "domain_label": "string"}

    def __init__(self, cfg: CrossThinkConfig):
        self.cfg = cfg

    def process(self, records):
        out = []
        for r in records:
            if r["template"] == "mcq":
                if r["answer"] not in (r.get("options") or {}):
                    out.append(reject(r, "gold_not_in_options"))
                    continue
                out.append({**r, "prompt": mcq_prompt(r["question"], r["options"]), "verifier": "choice",
                            "domain_label": r["domain"], "domain": "choice"})
                continue
            if len(str(r["answer"]).split()) > self.cfg.max_answer_words:
                out.append(reject(r, "answer_too_long"))
            elif r["domain"] in self.cfg.math_domains and not math_parseable(str(r["answer"])):
                out.append(reject(r, "unparseable_math_answer"))
            else:
                out.append({**r, "prompt": r["question"] + "\nPut the final answer in \\boxed{}.",
                            "verifier": "math", "domain_label": r["domain"]})
        return out


class Difficulty(LLMStage):
    """Drop items a small model already solves: pass rate over N samples above ``max_pass_rate``."""

    name, adds = "difficulty", ("pass_rate",)
    schema = {"pass_rate": "float64"}

    def __init__(self, cfg: CrossThinkConfig):
        super().__init__(cfg, cfg.generator)
        self.router = None

    def setup(self):
        from refinery.rl.rewards import RewardRouter

        super().setup()
        self.router = RewardRouter()

    def process(self, records):
        if self.generator is None:
            self.setup()
        c = self.cfg
        res = self.sample([r["prompt"] for r in records], n=c.difficulty_samples)
        out = []
        for r, comps in zip(records, res):
            if isinstance(comps, Exception):
                out.append(reject(r, "llm_error", str(comps)))
                continue
            rate = pass_rate(r, [x.text for x in comps], self.router)
            new = {**r, "pass_rate": round(rate, 4)}
            out.append(reject(new, "too_easy", f"pass rate {rate:.2f}") if rate > c.max_pass_rate else new)
        return out


def pass_rate(item: dict, responses: list[str], router) -> float:
    """Fraction of responses its verifier (by domain) accepts."""
    return sum(router(item, t)[1] for t in responses) / max(1, len(responses))


class Blend(GlobalStage):
    """Sample the final mix by domain ratios: the largest mix whose every named domain can be filled, chosen by a
    seeded hash of the id (deterministic). Domains the blend does not name follow ``blend_unnamed``: kept whole
    (default), dropped with a count, or an error naming them; a domain named with ratio 0 is dropped."""

    name, adds = "blend", ()

    def __init__(self, cfg: CrossThinkConfig):
        self.cfg = cfg

    def collect(self, records):
        return [(row_id(r), r.get("domain_label", r["domain"])) for r in records]

    def decide(self, summaries, out_dir: Path):
        import json

        ratios = {d: w for d, w in self.cfg.blend.items() if w > 0}
        by: dict[str, list[str]] = {}
        for rid, dom in (x for s in summaries for x in s):
            by.setdefault(dom, []).append(rid)
        unnamed = sorted(d for d in by if d not in self.cfg.blend)
        if unnamed and self.cfg.blend_unnamed == "error":
            raise DataError(f"blend names {sorted(self.cfg.blend)} but the items also have domain(s) {unnamed} "
                            f"({', '.join(f'{d}: {len(by[d])}' for d in unnamed)} items): add them to blend, or "
                            "set blend_unnamed=keep (keep them whole) or blend_unnamed=drop")
        avail = {d: len(by.get(d, [])) for d in ratios}
        present = {d: w for d, w in ratios.items() if avail[d] > 0}
        keep: set[str] = set()
        if present:
            unit = min(avail[d] / w for d, w in present.items())  # items per unit of ratio
            for d, w in present.items():
                ids = sorted(by[d], key=lambda i: hashlib.sha1(f"{self.cfg.seed}:{i}".encode()).hexdigest())
                keep |= set(ids[: int(unit * w)])
        unnamed_rows: set[str] = set()
        for d in unnamed:
            unnamed_rows |= set(by[d])
        if self.cfg.blend_unnamed == "keep":
            keep |= unnamed_rows
        composition = {d: sum(1 for i in by.get(d, []) if i in keep) for d in set(by) | set(ratios)}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "blend.json").write_text(json.dumps({"ratios": ratios, "available": {d: len(v) for d, v in
                                                                                        by.items()},
                                                        "unnamed": {"domains": unnamed,
                                                                    "rule": self.cfg.blend_unnamed},
                                                        "kept": composition}, indent=1) + "\n")
        return keep, unnamed_rows

    def apply(self, records, decision):
        keep, unnamed = decision
        return [r if row_id(r) in keep else
                reject(r, "blend_unnamed_domain" if row_id(r) in unnamed else "blend_excess") for r in records]


def build_stages(cfg: CrossThinkConfig) -> list[Stage]:
    stages: list[Stage] = [Synthesize(cfg), ConvertMCQ(cfg), Verifiable(cfg)]
    if cfg.difficulty_samples:
        stages.append(Difficulty(cfg))
    if cfg.blend:
        stages.append(Blend(cfg))
    return stages


def composition_lines(out: Path, records: list[Record]) -> list[str]:
    import json

    lines = ["", "| domain | template | items |", "|---|---|---|"]
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r.get("domain_label", r["domain"]), r["template"])
        counts[key] = counts.get(key, 0) + 1
    lines += [f"| {d} | {t} | {n} |" for (d, t), n in sorted(counts.items())]
    bj = out / "blend.json"
    if bj.exists():
        b = json.loads(bj.read_text())
        lines += ["", f"Blend ratios {b['ratios']}; available {b['available']}; kept {b['kept']}."]
        if b.get("unnamed", {}).get("domains"):
            u = b["unnamed"]
            lines.append(f"Domains the blend does not name: {u['domains']} ({u['rule']}).")
    return lines


def report_sections(out: Path, stats: dict) -> list[str]:
    from refinery.data.pipeline import output_records

    return ["", "## Final composition", *composition_lines(out, output_records(out))]
