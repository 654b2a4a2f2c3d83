"""AceReason prompt curation on the data engine (``recipes/acereason_curation.yaml``).

Math: normalise (problem + reference answer) → exact dedup → n-gram decontamination (9-gram) → format filter
(multiple choice, true/false, proof, multi-part, figure-dependent: rules, plus an optional LLM classifier) → answer
verification (the majority answer of N samples must equal the reference under the math verifier; the pass rate is
kept as ``difficulty`` for the RL trainer's filters).
Code: normalise (problem, reference solution, tests) → dedup → decontamination (14-gram) → test validation in the
sandbox (tests must accept the reference — else false negatives — and reject trivial wrong programs — else weak
tests / false positives) → solvability (drop problems every one of N samples fails; pass rate as ``difficulty``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from refinery.data.pipeline import Record, Stage, reject
from refinery.data.recipe import DataRunConfig, GeneratorSection, LLMStage

# ---- rules ---------------------------------------------------------------------------------------------------
FORMAT_RULES: list[tuple[str, re.Pattern]] = [
    ("multiple_choice", re.compile(r"which of the following|\(\s*[A-E]\s*\)\s*\S.*\(\s*[B-E]\s*\)|"
                                   r"^\s*[A-E][.)]\s+\S.*\n\s*[B-E][.)]\s+\S|answer choices", re.I | re.S | re.M)),
    ("true_false", re.compile(r"\btrue or false\b|\btrue/false\b|\bT/F\b|\bis (?:it|this|the statement) true\b",
                              re.I)),
    ("proof", re.compile(r"\bprove\b|\bshow that\b|\bdemonstrate that\b|\bprove or disprove\b|\bjustify your\b",
                         re.I)),
    ("multi_part", re.compile(r"(?:^|\s)\(a\)[\s\S]*(?:^|\s)\(b\)|\bpart \(?a\)?\b[\s\S]*\bpart \(?b\)?\b|"
                              r"^\s*a\)\s[\s\S]*^\s*b\)\s", re.I | re.M)),
    ("figure", re.compile(r"\[asy\]|\bin the (?:figure|diagram|graph|picture)\b|\bshown (?:below|above)\b|"
                          r"\b(?:figure|diagram) (?:below|above)\b|\bsee (?:the )?(?:figure|diagram)\b", re.I)),
]

FORMAT_PROMPT = """Can the following problem be answered with one short final answer (a number, expression or \
word) that a checker can compare exactly? Answer "no" if it is multiple choice, true/false, a proof, has several \
parts, or needs a figure that is not given.

Problem:
{problem}

Answer with yes or no only."""

SOLVE_PROMPT = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{problem}"
CODE_PROMPT = ("Complete the following Python function. Answer with the whole function in one ```python code "
               "block.\n\n{problem}")


def format_violations(problem: str) -> list[str]:
    """Which exclusion rules a problem triggers (empty: keep)."""
    return [name for name, rx in FORMAT_RULES if rx.search(problem)]


def gsm8k_answer(answer: str) -> str:
    """GSM8K's reference: the part after ``####``, thousands separators removed."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "") if "####" in answer else answer.strip()


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$]+)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in a worked solution, nested braces
    matched (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``); ``\\boxed 5`` without braces too; None if there
    is none or its braces never close."""
    starts = list(_BOXED.finditer(text))
    bare = list(_BOXED_BARE.finditer(text))
    if bare and (not starts or bare[-1].start() > starts[-1].start()):
        return bare[-1].group(1)
    if not starts:
        return None
    depth, i = 1, starts[-1].end()
    for j in range(i, len(text)):
        if text[j] == "\\":
            continue
        if text[j] == "{" and text[j - 1] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def math_reference(r: dict) -> tuple[str | None, str | None]:
    """A math record's reference answer and, when there is none, why: ``reference`` or ``answer`` as given
    (GSM8K's after ``####``), else the last ``\\boxed{}`` of a worked ``solution`` (the MATH layout)."""
    ref = r.get("reference", r.get("answer"))
    if ref is not None:
        return (gsm8k_answer(str(ref)) if "question" in r else str(ref).strip()), None
    solution = r.get("solution")
    if solution is None:
        return None, "no reference, answer or solution field"
    boxed = last_boxed(str(solution))
    return (boxed, None) if boxed else (None, "solution has no \\boxed{...} final answer")


def majority(answers: list[str | None], reference: str, equal) -> dict[str, Any]:
    """Cluster extracted answers by equivalence; report the majority answer, whether it equals the reference, and
    the pass rate (fraction of samples equal to the reference). ``None`` answers count as wrong."""
    clusters: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for c in clusters:
            if equal(a, c[0]):
                c.append(a)
                break
        else:
            clusters.append([a])
    correct = sum(1 for a in answers if a is not None and equal(a, reference))
    top = max(clusters, key=len) if clusters else None
    return {"majority": top[0] if top else None, "majority_votes": len(top) if top else 0,
            "agrees": bool(top) and equal(top[0], reference), "pass_rate": correct / max(1, len(answers))}


def trivial_programs(tests: dict, entry_point: str | None) -> list[str]:
    """Wrong programs that good tests must reject: constant returns for a function, silence/echo for stdio."""
    if tests["kind"] == "stdio":
        return ["pass", "import sys\nprint(sys.stdin.read())", "print(0)"]
    name = entry_point or "solution"
    return [f"def {name}(*args, **kwargs):\n    return {value}\n"
            for value in ("None", "0", "1", "''", "[]", "True", "False", "args[0] if args else None")]


# ---- config --------------------------------------------------------------------------------------------------
class CurationGenerator(GeneratorSection):
    samples: int = Field(8, ge=1, description="N samples per problem (AceReason: 8-16)")


class CurationConfig(DataRunConfig):
    pipeline: Literal["acereason_curation"] = Field("acereason_curation", description="this recipe's pipeline")
    name: str = Field("acereason-curation", description="run name")
    domain: Literal["math", "code"] = Field("math", description="math problems or code problems")
    stages: list[str] | None = Field(None, description="default: every stage of the domain, in order")
    decontaminate: list[str] = Field(default_factory=list, description="benchmark files or folders")
    ngram: int | None = Field(None, description="decontamination n (default: 9 math, 14 code — AceReason)")
    llm_format_check: bool = Field(False, description="math: also ask the generator whether the format is usable")
    generator: CurationGenerator = Field(default_factory=CurationGenerator)
    min_pass_rate: float = Field(0.0, ge=0, le=1, description="code: drop problems whose pass rate is not above "
                                                              "this (0: drop only what every sample fails)")

    @field_validator("decontaminate", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def required_paths(self) -> list[str]:
        return list(self.decontaminate) if "decontaminate" in self.resolved_stages() else []

    @model_validator(mode="after")
    def _check(self) -> CurationConfig:
        allowed = MATH_STAGES if self.domain == "math" else CODE_STAGES
        bad = [s for s in self.resolved_stages() if s not in allowed]
        if bad:
            raise ValueError(f"unknown {self.domain} stage(s) {bad} (choose from {', '.join(allowed)})")
        return self

    def resolved_stages(self) -> list[str]:
        if self.stages is not None:
            return list(self.stages)
        base = list(MATH_STAGES if self.domain == "math" else CODE_STAGES)
        return [s for s in base if s != "decontaminate" or self.decontaminate]


MATH_STAGES = ("normalize", "dedup_exact", "decontaminate", "format_filter", "verify_answer")
CODE_STAGES = ("normalize", "dedup_exact", "decontaminate", "validate_tests", "solvability")


# ---- stages --------------------------------------------------------------------------------------------------
class Normalize(Stage):
    """Map known layouts (GSM8K, MATH, HumanEval, generic) to ``problem`` / ``reference`` / ``tests``. MATH's
    ``problem``/``solution`` layout (no answer column) takes the last ``\\boxed{}`` of the solution."""

    name, adds = "normalize", ("problem", "reference", "text")
    schema = {"problem": "string", "reference": "string", "text": "string"}

    def __init__(self, domain: str):
        self.domain = domain

    def process(self, records):
        out = []
        for r in records:
            problem = r.get("problem") or r.get("question") or r.get("prompt")
            if not isinstance(problem, str) or not problem.strip():
                out.append(reject(r, "no_problem"))
                continue
            new = {**r, "problem": problem, "text": problem}
            if self.domain == "math":
                ref, why = math_reference(r)
                if ref is None:
                    out.append(reject(r, "no_reference", why))
                    continue
                new["reference"] = ref
            else:
                if "canonical_solution" in r and "test" in r:  # HumanEval
                    new["reference"] = r["prompt"] + r["canonical_solution"]
                    new["tests"] = {"kind": "functional", "setup": "",
                                    "asserts": [r["test"] + f"\ncheck({r['entry_point']})"]}
                else:
                    new["reference"] = r.get("reference") or r.get("solution")
                if not new.get("reference") or not isinstance(new.get("tests"), dict):
                    out.append(reject(r, "no_reference_or_tests"))
                    continue
            out.append(new)
        return out


class FormatFilter(LLMStage):
    name, adds = "format_filter", ()

    def __init__(self, cfg: CurationConfig):
        super().__init__(cfg, cfg.generator)

    def setup(self):
        if self.cfg.llm_format_check:
            super().setup()

    def process(self, records):
        out, ask = [], []
        for r in records:
            bad = format_violations(r["problem"])
            if bad:
                out.append(reject(r, f"format_{bad[0]}", ", ".join(bad)))
            else:
                out.append(r)
                ask.append(len(out) - 1)
        if self.cfg.llm_format_check and ask:
            res = self.sample([FORMAT_PROMPT.format(problem=out[i]["problem"]) for i in ask], temperature=0.0,
                              max_new_tokens=4)
            for i, r in zip(ask, res):
                if isinstance(r, Exception):
                    out[i] = reject(out[i], "llm_error", str(r))
                elif r[0].text.strip().lower().startswith("no"):
                    out[i] = reject(out[i], "format_llm")
        return out


class VerifyAnswer(LLMStage):
    """Keep a math problem only if the majority of N sampled answers equals its reference (AceReason)."""

    name, adds = "verify_answer", ("difficulty", "majority_answer", "samples")
    schema = {"difficulty": "float64", "majority_answer": "string", "samples": "int64"}

    def __init__(self, cfg: CurationConfig):
        super().__init__(cfg, cfg.generator)

    def process(self, records):
        from refinery.verifiers.math import extract_answer, math_equal

        res = self.sample([SOLVE_PROMPT.format(problem=r["problem"]) for r in records], n=self.cfg.generator.samples)
        out = []
        for r, comps in zip(records, res):
            if isinstance(comps, Exception):
                out.append(reject(r, "llm_error", str(comps)))
                continue
            answers = [extract_answer(c.text, fallback_last_number=True) for c in comps]
            m = majority(answers, r["reference"], math_equal)
            new = {**r, "difficulty": round(1 - m["pass_rate"], 4), "majority_answer": m["majority"],
                   "samples": len(comps)}
            out.append(new if m["agrees"] else reject(new, "answer_mismatch",
                                                      f"majority {m['majority']!r} vs {r['reference']!r}"))
        return out


class ValidateTests(Stage):
    """Tests must accept the reference solution and reject trivial wrong programs (sandboxed)."""

    name, adds = "validate_tests", ()

    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg
        self.verifier = None

    def setup(self):
        from refinery.verifiers.code import CodeVerifier

        self.verifier = CodeVerifier(mode="all")

    def process(self, records):
        if self.verifier is None:
            self.setup()
        pairs, owners = [], []
        for k, r in enumerate(records):
            pairs.append((r["reference"], r["tests"]))
            owners.append((k, "reference"))
            for prog in trivial_programs(r["tests"], r.get("entry_point")):
                pairs.append((prog, r["tests"]))
                owners.append((k, "trivial"))
        verdicts = self.verifier.batch(pairs)
        ref_ok = {k: True for k in range(len(records))}
        weak: dict[int, int] = Counter()
        for (k, kind), v in zip(owners, verdicts):
            if kind == "reference" and v.score < 1:
                ref_ok[k] = False
            elif kind == "trivial" and v.score >= 1:
                weak[k] += 1
        out = []
        for k, r in enumerate(records):
            if not ref_ok[k]:
                out.append(reject(r, "tests_reject_reference"))
            elif weak[k]:
                out.append(reject(r, "weak_tests", f"{weak[k]} trivial program(s) pass"))
            else:
                out.append(r)
        return out


class Solvability(LLMStage):
    """Sample N programs; drop problems every sample fails (AceReason); pass rate kept as difficulty."""

    name, adds = "solvability", ("difficulty", "samples")
    schema = {"difficulty": "float64", "samples": "int64"}

    def __init__(self, cfg: CurationConfig):
        super().__init__(cfg, cfg.generator)
        self.verifier = None

    def setup(self):
        from refinery.verifiers.code import CodeVerifier

        super().setup()
        self.verifier = CodeVerifier(mode="all")

    def process(self, records):
        if self.generator is None:
            self.setup()
        res = self.sample([CODE_PROMPT.format(problem=r["problem"]) for r in records], n=self.cfg.generator.samples)
        pairs, owners = [], []
        out: list[Record | None] = [None] * len(records)
        for k, (r, comps) in enumerate(zip(records, res)):
            if isinstance(comps, Exception):
                out[k] = reject(r, "llm_error", str(comps))
                continue
            for c in comps:
                program = c.text if "def " in c.text or "```" in c.text else r["problem"] + c.text
                pairs.append((program, r["tests"]))
                owners.append(k)
        verdicts = self.verifier.batch(pairs) if pairs else []
        passed: Counter = Counter()
        total: Counter = Counter()
        for k, v in zip(owners, verdicts):
            total[k] += 1
            passed[k] += v.score >= 1
        for k, r in enumerate(records):
            if out[k] is not None:
                continue
            rate = passed[k] / max(1, total[k])
            new = {**r, "difficulty": round(1 - rate, 4), "samples": total[k]}
            out[k] = new if rate > self.cfg.min_pass_rate else reject(new, "unsolved", f"pass rate {rate:.2f}")
        return out


def build_stages(cfg: CurationConfig) -> list[Stage]:
    from refinery.data.math_web.pipeline import DecontamConfig, Decontaminate, ExactDedup

    n = cfg.ngram or (9 if cfg.domain == "math" else 14)
    make = {"normalize": lambda: Normalize(cfg.domain), "dedup_exact": ExactDedup,
            "decontaminate": lambda: Decontaminate(DecontamConfig(files=cfg.decontaminate, n=n,
                                                                  min_words=min(8, n))),
            "format_filter": lambda: FormatFilter(cfg), "verify_answer": lambda: VerifyAnswer(cfg),
            "validate_tests": lambda: ValidateTests(cfg), "solvability": lambda: Solvability(cfg)}
    return [make[s]() for s in cfg.resolved_stages()]
