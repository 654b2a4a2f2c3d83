"""Exact and fuzzy (MinHash-LSH) deduplication.

Exact: SHA-1 of the normalised text (lowercased, whitespace collapsed). Fuzzy (Nemotron-CC / NeMo Curator
defaults): character 24-gram shingles of the normalised text, ``bands × rows`` MinHash permutations (20 × 13),
documents sharing any band are candidates, a candidate pair is a duplicate when the signatures' estimated Jaccard
is at least ``threshold``; duplicates are merged into clusters (union-find) and the first document of each cluster
(in corpus order) is kept. Signatures are vectorised with NumPy: ``(a·h + b) mod (2⁶¹−1)`` over 32-bit shingle
hashes, as datasketch does.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import defaultdict

import numpy as np

MERSENNE = np.uint64((1 << 61) - 1)
MAX32 = np.uint64(0xFFFFFFFF)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def exact_key(text: str) -> str:
    return hashlib.sha1(normalise(text).encode()).hexdigest()


def shingles(text: str, k: int = 24) -> np.ndarray:
    """32-bit hashes of the character ``k``-grams of the normalised text (one shingle if it is shorter)."""
    t = normalise(text)
    if len(t) <= k:
        grams = [t]
    else:
        grams = {t[i: i + k] for i in range(len(t) - k + 1)}
    return np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.randint(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, a: np.ndarray, b: np.ndarray, k: int = 24) -> np.ndarray:
    """The MinHash signature (``len(a)`` uint32 values) of the text's shingles."""
    h = shingles(text, k)
    if h.size == 0:
        return np.full(a.shape, 0xFFFFFFFF, dtype=np.uint32)
    vals = ((h[:, None] * a[None, :] + b[None, :]) % MERSENNE) & MAX32
    return vals.min(axis=0).astype(np.uint32)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


class UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x, y):
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            # The smaller (earlier) id is the root: the kept document is the first in corpus order.
            if ry < rx:
                rx, ry = ry, rx
            self.parent[ry] = rx


def lsh_clusters(ids: list, sigs: np.ndarray, bands: int, rows: int, threshold: float) -> list[list]:
    """Clusters (lists of ids, sorted, size ≥ 2) of near-duplicates among the signatures ``[n, bands·rows]``."""
    if sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sigs.shape[1]} values; need bands*rows = {bands * rows}")
    uf = UnionFind()
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    checked: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        chunk = sigs[:, band * rows:(band + 1) * rows]
        for i in order:
            buckets[chunk[i].tobytes()].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            first = members[0]
            for other in members[1:]:
                pair = (first, other)
                if pair in checked:
                    continue
                checked.add(pair)
                if jaccard(sigs[first], sigs[other]) >= threshold:
                    uf.union(ids[first], ids[other])
    groups: dict = defaultdict(list)
    for x in uf.parent:
        groups[uf.find(x)].append(x)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])
