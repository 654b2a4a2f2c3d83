"""MinHash-LSH dedup out of core: the algorithm of :func:`refinery.data.text.dedup.lsh_clusters`, with the
signatures on disk and the work spread over tasks, so no process holds the corpus's signatures.

1. :func:`write_chunk` (per chunk of a shard, in the workers): the chunk's signatures (``.sig.u32``), its band keys
   sorted per band with their row positions (``.keys.u64``/``.pos.u32``, raw arrays: one row per band, so a band's
   keys in a key range are one contiguous read) and its records' row id, id and source (``.meta.json``). Its
   summary is a small dict: the path prefix, the count and the first and last row id.
2. :func:`band_tasks` + :func:`band_edges` (one task per band and key range, ``docs_per_task`` documents each):
   a bucket's first document (corpus order) pairs with each other member; pairs whose estimated Jaccard reaches
   the threshold are the task's edges (signature rows read from the chunks' files).
3. :func:`clusters_from_edges` (driver): connected components of the edges; each cluster's first document is kept;
   the other members are written as one drop list per shard (:func:`write_drops`), which ``apply`` reads for its
   shard only (:func:`read_drops`).

Paths are ``pathlib.Path`` (memory-mapped) or any object with ``/``, ``read_bytes``, ``write_bytes``, ``parent`` and
``mkdir`` (fsspec locations; read whole).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from refinery.data.text.dedup import band_keys, components, similar, star_edges

Chunk = tuple[Any, int, int, int]  # (path prefix, global offset of its first document, count, width)


def _sibling(prefix: Any, suffix: str) -> Any:
    return prefix.parent / (prefix.name + suffix)


def _save(path: Any, arr: np.ndarray) -> None:
    """Raw little-endian values, no header: a reader takes any slice by offset (shapes live in the summary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ascontiguousarray(arr).tobytes())


def _read(path: Any, dtype: type, start: int, count: int) -> np.ndarray:
    """``count`` values of ``dtype`` from item ``start`` of a raw file (one seek and read)."""
    size = np.dtype(dtype).itemsize
    if isinstance(path, Path):
        return np.fromfile(path, dtype=dtype, count=count, offset=start * size)
    with path.open("rb", encoding=None) as f:
        f.seek(start * size)
        return np.frombuffer(f.read(count * size), dtype=dtype)


def _rows(path: Any, n: int, width: int) -> np.ndarray:
    """A raw ``[n, width]`` uint32 file, memory-mapped when local."""
    if isinstance(path, Path):
        return np.memmap(path, dtype=np.uint32, mode="r", shape=(n, width))
    return np.frombuffer(path.read_bytes(), dtype=np.uint32).reshape(n, width)


def write_chunk(prefix: Any, rows: list[str], meta: list[tuple], sigs: np.ndarray, bands: int, rowsper: int,
                shard: str) -> dict:
    """Write one chunk's files (records in row-id order) and return its summary."""
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    rows = [rows[i] for i in order]
    sigs = np.ascontiguousarray(sigs[order])
    keys = band_keys(sigs, bands, rowsper)
    pos = np.argsort(keys, axis=1, kind="stable").astype(np.uint32)
    _save(_sibling(prefix, ".sig.u32"), sigs)
    _save(_sibling(prefix, ".keys.u64"), np.take_along_axis(keys, pos.astype(np.int64), axis=1))
    _save(_sibling(prefix, ".pos.u32"), pos)
    _sibling(prefix, ".meta.json").write_bytes(json.dumps([[r, *meta[i]] for r, i in zip(rows, order)],
                                                          ensure_ascii=False, default=str).encode())
    return {"prefix": prefix, "n": len(rows), "width": int(sigs.shape[1]), "first": rows[0] if rows else None,
            "last": rows[-1] if rows else None, "shard": shard}


def order_chunks(summaries: Iterable[dict]) -> tuple[list[dict], np.ndarray]:
    """The non-empty chunks in corpus (row id) order and their global offsets (``len + 1`` values, the last is the
    corpus size). Chunks must not interleave: each holds a contiguous run of row ids."""
    chunks = sorted((s for s in summaries if s["n"]), key=lambda s: s["first"])
    for x, y in zip(chunks, chunks[1:]):
        if not x["last"] < y["first"]:
            raise ValueError(f"dedup chunks {x['prefix']} and {y['prefix']} interleave in row order "
                             f"({x['last']!r} ≥ {y['first']!r})")
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum([c["n"] for c in chunks], out=offsets[1:])
    return chunks, offsets


def band_tasks(n_docs: int, bands: int, docs_per_task: int) -> list[tuple[int, int, int | None]]:
    """``(band, lo, hi)`` per task: the band's 64-bit key space cut into equal ranges of about ``docs_per_task``
    documents each (keys are hashes: uniform); ``hi`` None is the top of the space."""
    parts = max(1, -(-n_docs // max(1, docs_per_task)))
    cuts = [(p << 64) // parts for p in range(parts)] + [None]
    return [(band, cuts[p], cuts[p + 1]) for band in range(bands) for p in range(parts)]


def band_edges(chunks: list[Chunk], band: int, lo: int, hi: int | None, threshold: float) -> np.ndarray:
    """The duplicate edges ``[2, E]`` (global document numbers) of one band among the documents whose band key is in
    ``[lo, hi)``: a bucket's first document with each other member, when their estimated Jaccard ≥ threshold."""
    keys, docs = [], []
    lo64 = np.uint64(lo)
    for prefix, offset, n, _ in chunks:
        k = _read(_sibling(prefix, ".keys.u64"), np.uint64, band * n, n)
        i0 = int(np.searchsorted(k, lo64, side="left"))
        i1 = k.size if hi is None else int(np.searchsorted(k, np.uint64(hi), side="left"))
        if i1 > i0:
            keys.append(k[i0:i1])
            docs.append(offset + _read(_sibling(prefix, ".pos.u32"), np.uint32, band * n + i0, i1 - i0)
                        .astype(np.int64))
    if not keys:
        return np.zeros((2, 0), dtype=np.int64)
    key, doc = np.concatenate(keys), np.concatenate(docs)
    f, o = star_edges(key, doc)
    a, b = doc[f], doc[o]
    if a.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    ok = similar(_signatures(chunks, a), _signatures(chunks, b), threshold)
    return np.stack([a[ok], b[ok]])


def _signatures(chunks: list[Chunk], docs: np.ndarray) -> np.ndarray:
    """Signature rows of global documents ``docs`` (any order), read from their chunks' files."""
    offsets = np.array([c[1] for c in chunks], dtype=np.int64)
    which = np.searchsorted(offsets, docs, side="right") - 1
    out = np.empty((docs.size, chunks[0][3]), dtype=np.uint32)
    for c in np.unique(which):
        sel = np.flatnonzero(which == c)
        prefix, off, n, width = chunks[c]
        out[sel] = _rows(_sibling(prefix, ".sig.u32"), n, width)[docs[sel] - off]
    return out


def _band_edges_task(args: tuple) -> np.ndarray:
    return band_edges(*args)


def run_tasks(tasks: list[tuple], executor: str = "local", workers: int | None = None,
              ray_address: str | None = None) -> list[np.ndarray]:
    """:func:`band_edges` over ``tasks`` (argument tuples): Ray tasks with ``executor='ray'``, else a local spawn
    process pool of ``workers`` (inline for one worker or one task)."""
    if executor == "ray":
        import ray

        if not ray.is_initialized():
            from refinery.data import pipeline

            init = getattr(pipeline, "ray_init", None)
            if init is not None:
                init(workers or 1, ray_address)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=2)(_band_edges_task)
        return ray.get([remote.remote(t) for t in tasks])
    if (workers or 1) <= 1 or len(tasks) <= 1:
        return [_band_edges_task(t) for t in tasks]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_band_edges_task, tasks))


def clusters_from_edges(edges: list[np.ndarray], chunks: list[dict], offsets: np.ndarray) -> list[list[tuple]]:
    """Clusters of ``(row, id, source)`` (sorted by row id, the kept one first; the list sorted by its first row)
    from the tasks' edges; only the chunks holding a cluster member are read."""
    e = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), dtype=np.int64)
    groups = components(e[0], e[1])
    if not groups:
        return []
    members = np.concatenate(groups)
    which = np.searchsorted(offsets, members, side="right") - 1
    info: dict[int, tuple] = {}
    for c in np.unique(which):
        meta = json.loads(_sibling(chunks[c]["prefix"], ".meta.json").read_bytes())
        for g in members[which == c]:
            info[int(g)] = tuple(meta[int(g - offsets[c])])
    return [[info[int(g)] for g in grp] for grp in groups]


def dedup(summaries: Iterable[dict], bands: int, threshold: float, docs_per_task: int,
          run: Callable[[list[tuple]], list[np.ndarray]] | None = None) -> tuple[list[list[tuple]], dict[str, list]]:
    """Clusters and per-shard drop lists (row ids) from chunk summaries; ``run`` maps :func:`band_edges` over
    argument tuples (default: inline)."""
    chunks, offsets = order_chunks(summaries)
    if not chunks:
        return [], {}
    where = [(c["prefix"], int(off), c["n"], c["width"]) for c, off in zip(chunks, offsets)]
    tasks = [(where, band, lo, hi, threshold) for band, lo, hi in band_tasks(int(offsets[-1]), bands, docs_per_task)]
    edges = (run or run_tasks)(tasks)
    clusters = clusters_from_edges(edges, chunks, offsets)
    drops: dict[str, list] = {}
    starts = [c["first"] for c in chunks]
    for cl in clusters:
        for row, *_ in cl[1:]:
            c = chunks[bisect.bisect_right(starts, row) - 1]
            drops.setdefault(c["shard"], []).append(row)
    return clusters, drops


def write_drops(folder: Any, drops: dict[str, list]) -> None:
    """One JSON list of row ids per shard that loses documents."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard, rows in drops.items():
        (folder / f"{shard}.json").write_bytes(json.dumps(sorted(rows)).encode())


def read_drops(folder: Any, shard: str) -> set:
    """The row ids ``shard`` drops (empty when it drops none)."""
    path = folder / f"{shard}.json"
    return set(json.loads(path.read_bytes())) if path.exists() else set()
