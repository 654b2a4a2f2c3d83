"""MinHash-LSH dedup vs datasketch on the same corpus in one run: documents/s (signatures + LSH) and the
near-duplicates removed against the ones injected.

    python benchmarks/bench_dedup.py [--docs 3000] [--record]

Corpus: WikiText-2 cut into disjoint documents of 100 words; 20% of them get a near-duplicate (a few words changed or
dropped), 5% an exact copy. Both tools: 24-character shingles, 20 bands x 13 rows (260 permutations), a pair counts
when it shares a band (datasketch's MinHashLSH semantics; Refinery's estimated-Jaccard check is set to 0 here so
the candidate rule is identical).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_corpus(n: int, seed: int = 0):
    from _common import shared_data

    text = (shared_data() / "wikitext2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    words = text.split()
    rng = random.Random(seed)
    docs, truth = [], set()
    base = n * 3 // 4
    if len(words) < base * 100:
        sys.exit(f"WikiText-2 has {len(words)} words: not enough for {base} disjoint documents; use fewer --docs")
    for i in range(base):  # disjoint windows: no accidental duplicates among the originals
        docs.append(" ".join(words[i * 100: (i + 1) * 100]))
    while len(docs) < n:
        src = rng.randrange(base)
        w = docs[src].split()
        if rng.random() < 0.2:
            docs.append(docs[src])
        else:
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(len(w))
                if rng.random() < 0.5:
                    w[j] = "edited"
                else:
                    del w[j]
            docs.append(" ".join(w))
        truth.add(len(docs) - 1)
    return docs, truth


def flagged_from_clusters(clusters, ids_index):
    """Documents removed: every member of a cluster but its first."""
    return {ids_index[x] for c in clusters for x in sorted(c)[1:]}


def refinery(docs):
    from refinery.data.text.dedup import lsh_clusters, minhash, permutations

    t0 = time.perf_counter()
    a, b = permutations(260)
    sigs = np.stack([minhash(d, a, b, 24) for d in docs])
    ids = [f"{i:07d}" for i in range(len(docs))]
    clusters = lsh_clusters(ids, sigs, 20, 13, 0.0)
    dt = time.perf_counter() - t0
    return dt, flagged_from_clusters(clusters, {x: i for i, x in enumerate(ids)})


def datasketch_run(docs):
    from datasketch import MinHash, MinHashLSH

    from refinery.data.text.dedup import UnionFind, normalise

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=260, params=(20, 13))
    uf = UnionFind()
    for i, d in enumerate(docs):
        t = normalise(d)
        m = MinHash(num_perm=260, seed=1)
        m.update_batch([t[k: k + 24].encode() for k in range(max(1, len(t) - 23))])
        for j in lsh.query(m):
            uf.union(j, i)
        lsh.insert(i, m)
    groups = {}
    for x in uf.parent:
        groups.setdefault(uf.find(x), []).append(x)
    flagged = {k for g in groups.values() for k in sorted(g)[1:]}
    return time.perf_counter() - t0, flagged


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    docs, truth = make_corpus(args.docs)
    rows = {}
    rows["refinery"] = refinery(docs)
    try:
        rows["datasketch"] = datasketch_run(docs)
    except ImportError:
        print("datasketch not installed (pip install -e '.[bench]')")
    lines = [f"- {len(docs)} documents (~100 words each), {len(truth)} injected duplicates", "",
             "| tool | docs/s | documents removed | recall | precision |", "|---|---|---|---|---|"]
    for name, (dt, flagged) in rows.items():
        tp = len(flagged & truth)
        lines.append(f"| {name} | {len(docs) / dt:.0f} | {len(flagged)} | {tp / len(truth):.3f} | "
                     f"{tp / max(1, len(flagged)):.3f} |")
    if "datasketch" in rows:
        lines.append(f"- speed ratio Refinery / datasketch: {rows['datasketch'][0] / rows['refinery'][0]:.2f}x")
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("MinHash-LSH dedup vs datasketch", lines)


if __name__ == "__main__":
    main()
