"""Benchmark decontamination by word n-gram overlap (default 13-grams, as GPT-3 / Nemotron-CC).

Every benchmark item's text (question/problem/prompt fields) is lower-cased and split into words; all its n-grams
go into an index mapping n-gram → (benchmark, item). A document is contaminated when any of its n-grams is in the
index; the matched benchmark items are reported with it. Items shorter than n words are indexed as one shorter
n-gram of their full length (so a short GSM8K question still matches verbatim).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

TEXT_FIELDS = ("question", "problem", "prompt", "input", "query", "text")
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)}


def read_benchmark(path: Path) -> list[str]:
    """Item texts of a JSONL/JSON(.gz) benchmark file (the first of TEXT_FIELDS each record has)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
        records = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    out = []
    for r in records:
        if isinstance(r, dict):
            text = next((r[k] for k in TEXT_FIELDS if isinstance(r.get(k), str) and r[k].strip()), None)
            if text:
                out.append(text)
    return out


class NgramIndex:
    def __init__(self, n: int = 13, min_words: int = 8):
        self.n, self.min_words = n, min_words
        self.index: dict[tuple[str, ...], set[tuple[str, int]]] = defaultdict(set)
        self.lengths: set[int] = set()
        self.items: dict[str, int] = {}
        self.skipped = 0

    def add(self, benchmark: str, texts: list[str]) -> None:
        self.items[benchmark] = len(texts)
        for i, text in enumerate(texts):
            toks = words(text)
            if len(toks) < self.min_words:
                self.skipped += 1  # too short to match without false positives
                continue
            k = min(self.n, len(toks))
            self.lengths.add(k)
            for g in ngrams(toks, k):
                self.index[g].add((benchmark, i))

    def matches(self, text: str) -> set[tuple[str, int]]:
        toks = words(text)
        hits: set[tuple[str, int]] = set()
        for k in self.lengths:
            for g in ngrams(toks, k):
                hit = self.index.get(g)
                if hit:
                    hits |= hit
        return hits


def build_index(files: list[str | Path], n: int = 13, min_words: int = 8) -> NgramIndex:
    idx = NgramIndex(n, min_words)
    for f in files:
        path = Path(f)
        paths = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".gz")) if path.is_dir() \
            else [path]
        for p in paths:
            name = p.name.split(".")[0]
            idx.add(name, read_benchmark(p))
    return idx
