"""n-gram decontamination: Refinery's n-gram index vs a naive per-document set intersection with every benchmark
item, on the same documents in one run: documents/s and identical matches.

    python benchmarks/bench_decontam.py [--docs 2000] [--n 13] [--record]

Benchmarks: every file in ../shared/data/decont (GSM8K, HumanEval, AIME, AMC, MATH-style sets: ~8,000 items).
Documents: WikiText-2 passages of ~150 words, 5% of them with a benchmark question pasted in.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from _common import shared_data

    from refinery.data.text.decontam import build_index, ngrams, read_benchmark, words

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--n", type=int, default=13)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    root = shared_data() / "decont"
    bench = {p.name.split(".")[0]: read_benchmark(p) for p in sorted(root.iterdir())
             if p.suffix in (".jsonl", ".json", ".gz")}
    n_items = sum(len(v) for v in bench.values())
    wt = (shared_data() / "wikitext2-raw" / "wiki.test.raw").read_text(encoding="utf-8").split()
    rng = random.Random(0)
    flat = [(b, i, t) for b, items in bench.items() for i, t in enumerate(items)]
    docs = []
    for _ in range(args.docs):
        s = rng.randrange(0, len(wt) - 200)
        text = " ".join(wt[s: s + 150])
        if rng.random() < 0.05:
            b, i, t = rng.choice(flat)
            text = text[:300] + " " + t + " " + text[300:]
        docs.append(text)

    t0 = time.perf_counter()
    idx = build_index([root], n=args.n, min_words=8)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = [idx.matches(d) for d in docs]
    t_ours = time.perf_counter() - t0

    # Naive: each benchmark item's n-gram set, intersected with each document's (the same item rules).
    items = []
    for b, its in bench.items():
        for i, t in enumerate(its):
            toks = words(t)
            if len(toks) >= 8:
                items.append(((b, i), ngrams(toks, min(args.n, len(toks))), min(args.n, len(toks))))
    t0 = time.perf_counter()
    naive = []
    for d in docs:
        toks = words(d)
        cache = {}
        hits = set()
        for key, grams, k in items:
            if k not in cache:
                cache[k] = ngrams(toks, k)
            if grams & cache[k]:
                hits.add(key)
        naive.append(hits)
    t_naive = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(ours, naive))
    lines = [f"- {len(docs)} documents, {n_items} benchmark items ({len(bench)} files), n = {args.n}; "
             f"index built in {build:.2f} s", "", "| method | documents/s | contaminated documents |", "|---|---|---|",
             f"| refinery n-gram index | {len(docs) / t_ours:.0f} | {sum(bool(x) for x in ours)} |",
             f"| naive per-document set intersection | {len(docs) / t_naive:.1f} | {sum(bool(x) for x in naive)} |",
             "", f"- identical matches on {same}/{len(docs)} documents; speed-up {t_naive / t_ours:.0f}x"]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("Decontamination: n-gram index vs naive set intersection", lines)


if __name__ == "__main__":
    main()
