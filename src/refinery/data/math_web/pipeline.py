"""The Nemotron-CC-Math pipeline as a recipe: extract → (LLM cleanup) → (quality) → exact dedup → MinHash dedup →
decontamination, every stage on the data engine."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.data.pipeline import GlobalStage, Record, Stage, reject, row_id
from refinery.data.recipe import DataRunConfig, GeneratorSection, LLMStage

STAGES = ("extract", "cleanup", "quality", "dedup_exact", "dedup_fuzzy", "decontaminate")


class ExtractConfig(Section):
    renderer: Literal["auto", "lynx", "python"] = Field("auto", description="lynx when installed, else Python")
    width: int = Field(120, ge=40, description="lynx -width (formulas are never wrapped: they travel as tokens)")
    timeout: float = Field(20.0, gt=0, description="seconds before a hung lynx is killed (the page is rejected)")
    min_chars: int = Field(50, ge=0, description="pages with less text are dropped (empty_text)")
    require_math: bool = Field(False, description="drop pages without any formula (no_math)")
    keep_html: bool = Field(False, description="keep the raw html (or body) field in the output")
    http_status: list[int] = Field([200], description="WARC responses with another HTTP status are rejected "
                                                      "(http_status_<code>); [] keeps every status; records "
                                                      "without one (HTML files, JSONL) always pass")
    formats: list[Literal["html", "text", "tex", "ipynb"]] = Field(
        ["html", "text", "tex", "ipynb"], description="page formats extracted: HTML/XHTML, text/plain, LaTeX "
                                                      "(.tex, application/x-tex) and Jupyter notebooks (.ipynb), "
                                                      "the last three as text with their LaTeX as-is; any other "
                                                      "content type is rejected (unsupported_content_type:<mime>)")
    notebook_code: bool = Field(True, description="keep notebook code cells (fenced) next to the markdown cells")
    max_replacement_ratio: float = Field(0.01, ge=0, le=1, description="pages whose decoded text is more than this "
                                                                       "fraction U+FFFD (undecodable bytes) are "
                                                                       "rejected (decode_error)")


class CleanupConfig(GeneratorSection):
    max_chunk_tokens: int = Field(2000, gt=0, description="chunk size (approx. tokens at chars_per_token)")
    chars_per_token: float = Field(4.0, gt=0, description="token estimate for chunking")
    max_new_tokens: int = Field(2048, gt=0, description="generation budget per chunk")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (deterministic cleanup)")


class QualityConfig(Section):
    model: str | None = Field(None, description="HF sequence-classification dir (e.g. a download of "
                                                "HuggingFaceTB/finemath-classifier, or `refinery data "
                                                "train-quality` output); required when the stage runs")
    threshold: int = Field(3, ge=0, le=5, description="keep int_score >= threshold (paper: 3+, 4+)")
    max_length: int = Field(512, gt=0, description="tokens scored per page")
    batch_size: int = Field(16, gt=0)


class DedupConfig(Section):
    shingle: int = Field(24, gt=0, description="character n-gram size")
    bands: int = Field(20, gt=0, description="LSH bands")
    rows: int = Field(13, gt=0, description="rows per band (bands x rows permutations)")
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard for a duplicate pair")
    seed: int = Field(1, description="permutation seed")
    docs_per_task: int = Field(1_000_000, gt=0, description="documents per candidate-pair task (one band, one key "
                                                           "range): a task holds ~40 bytes per document")
    chunk_docs: int = Field(8192, gt=0, description="documents per signature chunk a worker writes (it holds them "
                                                    "until it writes: ~5 KB per document with the write's "
                                                    "temporaries; every band task reads one slice of every chunk, "
                                                    "so fewer chunks, fewer reads)")


class DecontamConfig(Section):
    files: list[str] = Field(default_factory=list, description="benchmark JSONL files or folders "
                                                               "(e.g. ../shared/data/decont)")
    n: int = Field(13, gt=0, description="word n-gram size")
    min_words: int = Field(8, gt=0, description="benchmark items shorter than this are not indexed")


class MathCCConfig(DataRunConfig):
    pipeline: Literal["nemotron_cc_math"] = Field("nemotron_cc_math", description="this recipe's pipeline")
    name: str = Field("nemotron-cc-math", description="run name")
    batch_size: int = Field(32, gt=0, description="records per stage call")
    lines_per_shard: int = Field(10000, gt=0, description="records per shard of a plain JSONL input (bounds memory)")
    stages: list[str] = Field(default_factory=lambda: ["extract", "dedup_exact", "dedup_fuzzy", "decontaminate"],
                              description=f"in order, from {', '.join(STAGES)}")
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    cleanup: CleanupConfig = Field(default_factory=CleanupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = Field(default_factory=DecontamConfig)

    @model_validator(mode="after")
    def _check(self) -> MathCCConfig:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad} (choose from {', '.join(STAGES)})")
        if "quality" in self.stages and not self.quality.model:
            raise ValueError("stage 'quality' needs quality.model (an HF sequence-classification directory)")
        if "decontaminate" in self.stages and not self.decontaminate.files:
            raise ValueError("stage 'decontaminate' needs decontaminate.files (benchmark JSONL files or folders)")
        return self

    def required_paths(self) -> list[str]:
        paths = list(self.decontaminate.files) if "decontaminate" in self.stages else []
        return paths + ([self.quality.model] if "quality" in self.stages and self.quality.model else [])


# ---- stages --------------------------------------------------------------------------------------------------
class Extract(Stage):
    """Page → text with its math as LaTeX. HTML goes through the math rewrite and a renderer; text, LaTeX and
    notebook payloads (from WARC records) are taken as text. Every record comes out kept or rejected with a reason:
    ``http_status_<code>``, ``unsupported_content_type:<mime>``, ``no_html``, ``bad_notebook``, ``decode_error``,
    ``render_failed``, ``empty_text``, ``no_math``."""

    name, adds = "extract", ("text", "formulas", "formula_sources", "renderer", "format")
    schema = {"text": "string", "formulas": "int64", "formula_sources": "map<string,int64>", "renderer": "string",
              "format": "string"}

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg

    def _refusal(self, rec: Record) -> tuple[str, str | None] | None:
        from refinery.data.io import content_type_reason

        status = rec.get("http_status")
        if status is not None and self.cfg.http_status and status not in self.cfg.http_status:
            return f"http_status_{status}", None
        fmt = rec.get("format") or ("html" if "html" in rec else None)
        if fmt is None and "content_type" in rec:
            return content_type_reason(rec["content_type"]), None
        if fmt not in (None, *self.cfg.formats):
            return content_type_reason(rec.get("content_type") or fmt), f"format {fmt} is not in extract.formats"
        payload = rec.get("body" if fmt in ("text", "tex", "ipynb") else "html")
        if not isinstance(payload, str):
            return ("no_html", "record has no 'html' string") if fmt in (None, "html") else \
                ("no_body", f"{fmt} record has no 'body' string")
        if payload and payload.count("\ufffd") > self.cfg.max_replacement_ratio * len(payload):
            return "decode_error", (f"{payload.count(chr(0xFFFD))} of {len(payload)} characters undecodable "
                                    f"(decoded as {rec.get('encoding', '?')})")
        return None

    def _extract(self, rec: Record) -> dict:
        from refinery.data.math_web.formats import count_math, notebook_text, plain_text
        from refinery.data.math_web.html import extract_math_text

        fmt = rec.get("format") or "html"
        if fmt == "html":
            return extract_math_text(rec["html"], self.cfg.renderer, self.cfg.width, self.cfg.timeout)
        text = notebook_text(rec["body"], self.cfg.notebook_code) if fmt == "ipynb" else plain_text(rec["body"])
        n = count_math(text)
        return {"text": text, "formulas": n, "formula_sources": {"raw": n} if n else {}, "renderer": None}

    def process(self, records: list[Record]) -> list[Record]:
        from refinery.data.math_web.formats import NotebookError
        from refinery.data.math_web.html import RenderError

        out = []
        for rec in records:
            refusal = self._refusal(rec)
            if refusal:
                out.append(reject({k: v for k, v in rec.items() if k != "body"}, *refusal))
                continue
            try:
                r = self._extract(rec)
            except RenderError as e:
                out.append(reject(rec, "render_failed", str(e)))
                continue
            except NotebookError as e:
                out.append(reject({k: v for k, v in rec.items() if k != "body"}, "bad_notebook", str(e)))
                continue
            new = {k: v for k, v in rec.items() if k not in ("html", "body") or self.cfg.keep_html}
            new.update(text=r["text"], formulas=r["formulas"], formula_sources=r["formula_sources"],
                       renderer=r["renderer"], format=rec.get("format") or "html")
            if len(r["text"].strip()) < self.cfg.min_chars:
                out.append(reject(new, "empty_text"))
            elif self.cfg.require_math and not r["formulas"]:
                out.append(reject(new, "no_math"))
            else:
                out.append(new)
        return out


class Cleanup(LLMStage):
    name, adds = "cleanup", ("text", "raw_text", "cleanup_chunks")
    schema = {"text": "string", "raw_text": "string", "cleanup_chunks": "int64"}

    def __init__(self, cfg: CleanupConfig):
        super().__init__(cfg, cfg)

    def process(self, records: list[Record]) -> list[Record]:
        from refinery.data.math_web.cleanup import CLEANUP_PROMPT, SENTINEL, approx_tokens, chunk_text, merge_chunks

        count = functools.partial(approx_tokens, chars_per_token=self.cfg.chars_per_token)
        chunks = [chunk_text(r.get("text", ""), self.cfg.max_chunk_tokens, count) for r in records]
        results = self.sample([CLEANUP_PROMPT.format(sentinel=SENTINEL, text=c) for cs in chunks for c in cs])
        out, k = [], 0
        for rec, cs in zip(records, chunks):
            res = results[k: k + len(cs)]
            k += len(cs)
            errors = [r for r in res if isinstance(r, Exception)]
            if errors:
                out.append(reject(rec, "llm_error", str(errors[0])))
                continue
            cut = [k for k, r in enumerate(res) if r[0].finish_reason == "length"]
            if cut:  # an answer that hit max_new_tokens lost the rest of its chunk
                out.append(reject(rec, "truncated", f"chunk(s) {cut} of {len(cs)} hit cleanup.max_new_tokens="
                                                    f"{self.cfg.max_new_tokens}"))
                continue
            merged = merge_chunks([r[0].text for r in res])
            if merged is None:
                out.append(reject(rec, "no_useful_content"))
                continue
            out.append({**rec, "raw_text": rec.get("text", ""), "text": merged, "cleanup_chunks": len(cs)})
        return out


class Quality(Stage):
    name, adds = "quality", ("quality_score", "quality_int")
    schema = {"quality_score": "float64", "quality_int": "int64"}

    def __init__(self, cfg: QualityConfig):
        self.cfg = cfg
        self.scorer = None

    def setup(self) -> None:
        from refinery.data.text.quality import QualityScorer

        self.scorer = QualityScorer(self.cfg.model, self.cfg.max_length, self.cfg.batch_size)

    def process(self, records: list[Record]) -> list[Record]:
        from refinery.data.text.quality import int_score

        if self.scorer is None:
            self.setup()
        scores = self.scorer.scores([r.get("text", "") for r in records])
        out = []
        for rec, s in zip(records, scores):
            new = {**rec, "quality_score": round(s, 4), "quality_int": int_score(s)}
            out.append(new if new["quality_int"] >= self.cfg.threshold else reject(new, "low_quality"))
        return out


class ExactDedup(GlobalStage):
    name, adds = "dedup_exact", ()

    def __init__(self):
        self._drops = (None, set())

    def collect(self, records):
        from refinery.data.text.dedup import exact_key

        shard = self.ctx.shard.name if self.ctx is not None and self.ctx.shard is not None else None
        return [(row_id(r), r.get("id"), r.get("source"), exact_key(r.get("text", "")), shard) for r in records]

    def decide(self, summaries, out_dir: Path):
        groups: dict[str, list] = {}
        flat = (x for s in summaries for chunk in (s if s and isinstance(s[0], list) else [s]) for x in chunk)
        for row, rid, src, key, shard in sorted(flat, key=lambda x: x[0]):
            groups.setdefault(key, []).append((row, rid, src, shard))
        clusters = [g for g in groups.values() if len(g) > 1]
        _write_clusters(out_dir / "duplicates" / "exact_clusters.jsonl", [[m[:3] for m in g] for g in clusters])
        if self.ctx is None or any(m[3] is None for g in clusters for m in g):  # outside a run: the set itself
            return {m[0] for g in clusters for m in g[1:]}
        from refinery.data.text.dedup_disk import write_drops

        drops: dict[str, list] = {}
        for g in clusters:  # one drop list per shard, read back by that shard's apply only
            for row, _, _, shard in g[1:]:
                drops.setdefault(shard, []).append(row)
        write_drops(self.ctx.work / "drop", drops)
        return {"drop_dir": self.ctx.work / "drop"}

    def apply(self, records, drop):
        return [reject(r, "duplicate_exact") if row_id(r) in _shard_drops(self, drop) else r for r in records]


class FuzzyDedup(GlobalStage):
    """MinHash-LSH near-duplicates. In a run (bound to a context), ``collect`` writes each chunk's signatures and
    band keys to the stage's work folder and returns only a small summary; ``decide`` finds the candidate pairs
    per band and key range in parallel on the run's executor, clusters them and writes one drop list per shard,
    which ``apply`` reads for its shard (:mod:`refinery.data.text.dedup_disk`). Unbound, everything stays in memory
    (:func:`~refinery.data.text.dedup.lsh_clusters`); both give the same clusters."""

    name, adds = "dedup_fuzzy", ()

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self._chunk, self._drops = 0, (None, set())
        self._buf: tuple[list, list, list] = ([], [], [])

    def bind(self, ctx) -> None:
        super().bind(ctx)
        self._chunk = 0  # chunks written since the engine bound this shard
        self._buf = ([], [], [])

    def _sigs(self, records):
        import numpy as np

        from refinery.data.text.dedup import minhash, permutations

        a, b = permutations(self.cfg.bands * self.cfg.rows, self.cfg.seed)
        return np.stack([minhash(r.get("text", ""), a, b, self.cfg.shingle) for r in records]) if records \
            else np.zeros((0, len(a)), dtype=np.uint32)

    def collect(self, records):
        rows, meta = [row_id(r) for r in records], [(r.get("id"), r.get("source")) for r in records]
        if self.ctx is None or self.ctx.shard is None:
            return rows, meta, self._sigs(records)
        # Bound: buffered into chunks of ``chunk_docs`` (the engine's collect calls are small), written when full.
        buf_rows, buf_meta, buf_sigs = self._buf
        buf_rows += rows
        buf_meta += meta
        buf_sigs.append(self._sigs(records))
        return self._write() if len(buf_rows) >= self.cfg.chunk_docs else None

    def collect_end(self):
        """The shard's last chunk (an empty one for a shard without records, so every shard has a summary)."""
        return self._write() if self._buf[0] or self._chunk == 0 else None

    def _write(self) -> dict:
        import numpy as np

        from refinery.data.text.dedup_disk import write_chunk

        rows, meta, sigs = self._buf
        self._buf = ([], [], [])
        name = self.ctx.shard.name
        prefix = self.ctx.work / "sig" / f"{name}.{self._chunk:05d}"
        self._chunk += 1
        width = self.cfg.bands * self.cfg.rows
        return write_chunk(prefix, rows, meta, np.concatenate(sigs) if sigs else np.zeros((0, width), np.uint32),
                           self.cfg.bands, self.cfg.rows, name)

    def decide(self, summaries, out_dir: Path):
        flat = [x for s in summaries for x in (s if isinstance(s, list) else [s])]  # per shard, or per chunk
        if flat and all(isinstance(x, dict) for x in flat):
            return self._decide_disk(flat, out_dir)
        import numpy as np

        from refinery.data.text.dedup import lsh_clusters

        ids = [i for s in flat for i in s[0]]
        sources = dict(zip(ids, (x for s in flat for x in s[1])))
        if not ids:
            return set()
        sigs = np.concatenate([s[2] for s in flat])
        clusters = lsh_clusters(ids, sigs, self.cfg.bands, self.cfg.rows, self.cfg.threshold)
        _write_clusters(out_dir / "duplicates" / "minhash_clusters.jsonl",
                        [[(i, *sources[i]) for i in c] for c in clusters])
        return {i for c in clusters for i in c[1:]}

    def _decide_disk(self, summaries, out_dir):
        from refinery.data.text.dedup_disk import dedup, run_tasks, write_drops

        ctx = self.ctx
        clusters, drops = dedup(summaries, self.cfg.bands, self.cfg.threshold, self.cfg.docs_per_task,
                                lambda tasks: run_tasks(tasks, ctx.executor, ctx.workers, ctx.ray_address))
        _write_clusters(out_dir / "duplicates" / "minhash_clusters.jsonl", clusters)
        write_drops(ctx.work / "drop", drops)
        return {"drop_dir": ctx.work / "drop"}

    def apply(self, records, drop):
        return [reject(r, "duplicate_fuzzy") if row_id(r) in _shard_drops(self, drop) else r for r in records]


def _shard_drops(stage: GlobalStage, drop) -> set:
    """The row ids to drop: the decision itself (a set, in memory) or the bound shard's drop list, read once."""
    if not isinstance(drop, dict):
        return drop
    from refinery.data.text.dedup_disk import read_drops

    key = (drop["drop_dir"], stage.ctx.shard.name)
    if stage._drops[0] != key:
        stage._drops = (key, read_drops(*key))
    return stage._drops[1]


def _write_clusters(path: Path, clusters: list[list[tuple]]) -> None:
    """One line per cluster of ``(row, id, source)`` members: the kept one first (input ids and row ids both)."""
    from refinery.data.io import write_records

    write_records([{"kept": c[0][1], "kept_row": c[0][0], "kept_source": c[0][2],
                    "removed": [i for _, i, _ in c[1:]], "removed_rows": [r for r, _, _ in c[1:]],
                    "removed_sources": [s for _, _, s in c[1:]]} for c in clusters], path, "jsonl")


class Decontaminate(Stage):
    name, adds = "decontaminate", ()

    def __init__(self, cfg: DecontamConfig):
        self.cfg = cfg
        self.index = None

    def setup(self) -> None:
        from refinery.data.text.decontam import build_index

        self.index = build_index(self.cfg.files, self.cfg.n, self.cfg.min_words)

    def process(self, records):
        if self.index is None:
            self.setup()
        out = []
        for r in records:
            hits = self.index.matches(r.get("text", ""))
            if hits:
                out.append(reject(r, "contaminated", json.dumps(sorted(hits)[:20])))
            else:
                out.append(r)
        return out


def build_stages(cfg: MathCCConfig) -> list[Stage]:
    make = {"extract": lambda: Extract(cfg.extract), "cleanup": lambda: Cleanup(cfg.cleanup),
            "quality": lambda: Quality(cfg.quality), "dedup_exact": ExactDedup,
            "dedup_fuzzy": lambda: FuzzyDedup(cfg.dedup), "decontaminate": lambda: Decontaminate(cfg.decontaminate)}
    return [make[s]() for s in cfg.stages]
