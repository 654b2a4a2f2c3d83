"""Exact and fuzzy (MinHash-LSH) deduplication.

Exact: SHA-1 of the normalised text (lowercased, whitespace collapsed). Fuzzy (Nemotron-CC / NeMo Curator
defaults): 24-byte shingles of the normalised text's UTF-8 (a vectorised rolling hash), ``bands × rows`` MinHash
permutations (20 × 13); documents sharing any band are candidates, a candidate pair is a duplicate when the
signatures' estimated Jaccard is at least ``threshold``; duplicates are merged into clusters (union-find) and the
first document of each cluster (in corpus order) is kept. Signatures are vectorised with NumPy (multiply-shift
hashing of 32-bit shingle hashes); buckets, pairs and the threshold check are NumPy sorts and comparisons, the
clusters scipy's connected components. :mod:`refinery.data.text.dedup_disk` runs the same algorithm out of core.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def exact_key(text: str) -> str:
    return hashlib.sha1(normalise(text).encode()).hexdigest()


_P = np.uint64(1099511628211)  # odd, so it has an inverse mod 2**64
_PINV = np.uint64(pow(1099511628211, -1, 1 << 64))


def shingles(text: str, k: int = 24) -> np.ndarray:
    """Distinct 32-bit hashes of the ``k``-byte windows of the normalised text's UTF-8 (one shingle if shorter).

    Vectorised polynomial rolling hash mod 2**64: with ``c = cumsum(b_j · P⁻ʲ)``, the window starting at ``i`` hashes
    to ``(c[i+k-1] − c[i-1]) · P^(i+k-1) = Σ b_j · P^(i+k-1-j)``; the top 32 bits are kept."""
    data = np.frombuffer(normalise(text).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if data.size <= k:
        return np.array([zlib.crc32(data.astype(np.uint8).tobytes())], dtype=np.uint64)
    n = data.size
    with np.errstate(over="ignore"):
        inv_pows = np.cumprod(np.full(n, _PINV, dtype=np.uint64)) * _P  # P^-j for j = 0..n-1
        pows = np.cumprod(np.full(n, _P, dtype=np.uint64)) * _PINV  # P^j
        c = np.cumsum(data * inv_pows, dtype=np.uint64)
        prev = np.concatenate([np.zeros(1, dtype=np.uint64), c[: n - k]])
        h = (c[k - 1:] - prev) * pows[k - 1:]
    return np.unique(h >> np.uint64(32))


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Parameters of ``num_perm`` multiply-shift hash functions ``(a·h + b) mod 2⁶⁴ >> 32`` (a odd)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, a: np.ndarray, b: np.ndarray, k: int = 24) -> np.ndarray:
    """The MinHash signature (``len(a)`` uint32 values) of the text's shingles. Multiply-shift hashing (a 2-universal
    family, Dietzfelbinger et al.) instead of datasketch's ``mod (2⁶¹−1)``: no modulo, ~4x faster in NumPy."""
    h = shingles(text, k)
    if h.size == 0:
        return np.full(a.shape, 0xFFFFFFFF, dtype=np.uint32)
    with np.errstate(over="ignore"):
        vals = (h[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)
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


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[bands, n]`` 64-bit keys of each document's band (its ``rows`` signature values): equal bands, equal keys
    (a hash: two different bands share a key with probability 2⁻⁶⁴)."""
    if sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sigs.shape[1]} values; need bands*rows = {bands * rows}")
    v = sigs[:, : bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    h = np.full((len(sigs), bands), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = (h ^ v[:, :, j]) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(33)  # splitmix-style finaliser: every input bit reaches the top bits
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return np.ascontiguousarray(h.T)


def star_edges(keys: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of one band: documents with equal ``keys`` form a bucket, and its first document (the
    smallest ``order``) pairs with each other member. Returns ``(first, other)`` as positions into ``keys``."""
    if keys.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.lexsort((order, keys))
    k = keys[pos]
    start = np.r_[True, k[1:] != k[:-1]]
    head = pos[np.maximum.accumulate(np.where(start, np.arange(k.size), 0))]
    return head[~start].astype(np.int64), pos[~start].astype(np.int64)


def similar(sig_a: np.ndarray, sig_b: np.ndarray, threshold: float, block: int = 1 << 15) -> np.ndarray:
    """Row-wise ``jaccard(sig_a[i], sig_b[i]) >= threshold`` (the same float as :func:`jaccard`), in blocks."""
    out = np.zeros(len(sig_a), dtype=bool)
    width = sig_a.shape[1] if sig_a.ndim == 2 else 1
    for s in range(0, len(sig_a), block):
        eq = (sig_a[s: s + block] == sig_b[s: s + block]).sum(axis=1)
        out[s: s + block] = eq / width >= threshold
    return out


def components(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Connected components (size ≥ 2) of the graph with edges ``a[i]–b[i]`` (integer node ids), each sorted,
    the list sorted by its smallest node: union-find over the edges, vectorised by scipy's csgraph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if a.size == 0:
        return []
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = len(nodes)
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (inv[: a.size], inv[a.size:])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    by = np.lexsort((nodes, labels))  # nodes grouped by component, ascending within each
    lab = labels[by]
    cuts = np.flatnonzero(lab[1:] != lab[:-1]) + 1
    groups = [g for g in np.split(nodes[by], cuts) if g.size > 1]
    return sorted(groups, key=lambda g: int(g[0]))


def lsh_edges(sigs: np.ndarray, order: np.ndarray, bands: int, rows: int, threshold: float) -> tuple[np.ndarray, ...]:
    """Duplicate pairs among the signatures ``[n, bands·rows]``: per band, each bucket's first document (smallest
    ``order``) against each other member, kept when the estimated Jaccard is at least ``threshold``."""
    keys = band_keys(sigs, bands, rows)
    firsts, others = [], []
    for band in range(bands):
        f, o = star_edges(keys[band], order)
        ok = similar(sigs[f], sigs[o], threshold)
        firsts.append(f[ok])
        others.append(o[ok])
    return np.concatenate(firsts), np.concatenate(others)


def lsh_clusters(ids: list, sigs: np.ndarray, bands: int, rows: int, threshold: float) -> list[list]:
    """Clusters (lists of ids, sorted, size ≥ 2) of near-duplicates among the signatures ``[n, bands·rows]``.

    Per band, documents with the same band values are candidates: the bucket's first id (in sorted order) is paired
    with each other member, and a pair is a duplicate when its estimated Jaccard is at least ``threshold``; the
    duplicate pairs' connected components are the clusters (the kept document is each cluster's first id)."""
    if sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sigs.shape[1]} values; need bands*rows = {bands * rows}")
    if not len(ids):
        return []
    rank = np.empty(len(ids), dtype=np.int64)
    rank[sorted(range(len(ids)), key=lambda i: ids[i])] = np.arange(len(ids))
    first, other = lsh_edges(sigs, rank, bands, rows, threshold)
    by_rank = np.argsort(rank)
    return [[ids[i] for i in by_rank[g]] for g in components(rank[first], rank[other])]
