"""Dedup that scales (issue 23.5): signatures and band keys on disk per chunk of each shard, candidate pairs per band
and key range in parallel, connected components over the duplicate edges, one drop list per shard. Same clusters
as the in-memory algorithm (and as its former pure-Python loop, kept here as the reference)."""

from __future__ import annotations

import functools
import json
import pickle
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from refinery.data.io import plan_shards
from refinery.data.math_web.pipeline import DedupConfig, ExactDedup, FuzzyDedup
from refinery.data.pipeline import RunSpec, output_records, run_pipeline
from refinery.data.text import dedup_disk
from refinery.data.text.dedup import jaccard, lsh_clusters, minhash, permutations


def reference_clusters(ids, sigs, bands, rows, threshold):
    """The former pure-Python band loop (buckets by band bytes, first id of a bucket against the others)."""
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    order = sorted(range(len(ids)), key=lambda i: ids[i])
    for band in range(bands):
        buckets = defaultdict(list)
        chunk = sigs[:, band * rows:(band + 1) * rows]
        for i in order:
            buckets[chunk[i].tobytes()].append(i)
        for members in buckets.values():
            for other in members[1:]:
                if jaccard(sigs[members[0]], sigs[other]) >= threshold:
                    rx, ry = sorted((find(ids[members[0]]), find(ids[other])))
                    if rx != ry:
                        parent[ry] = rx
    groups = defaultdict(list)
    for x in parent:
        groups[find(x)].append(x)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def planted_corpus(n=600, seed=0):
    """Random documents, ~30% of them near-duplicates (a few words changed) of an earlier one, some chained."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    docs = []
    for i in range(n):
        if i > 20 and rng.random() < 0.3:
            w = docs[rng.randrange(len(docs))].split()
            for _ in range(rng.randint(0, 6)):
                w[rng.randrange(len(w))] = rng.choice(vocab)
            docs.append(" ".join(w))
        else:
            docs.append(" ".join(rng.choice(vocab) for _ in range(50)))
    return docs


def write_corpus(prefix: Path, rows, sigs, chunk: int, bands=20, rowsper=13):
    """Chunk summaries as collect writes them: a shard per row-id prefix, cut into chunks of ``chunk``."""
    out, shards = [], defaultdict(list)
    for i, r in enumerate(rows):
        shards[f"shard-{r[:5]}"].append(i)
    for name, idx in shards.items():
        for k, c in enumerate(range(0, len(idx), chunk)):
            part = idx[c: c + chunk]
            out.append(dedup_disk.write_chunk(prefix / "sig" / f"{name}.{k:05d}", [rows[i] for i in part],
                                              [(f"id{rows[i]}", f"src{rows[i]}") for i in part], sigs[part],
                                              bands, rowsper, name))
    return out


def test_disk_path_gives_exactly_the_in_memory_clusters_on_planted_duplicates(tmp_path):
    docs = planted_corpus(300)
    a, b = permutations(260)
    sigs = np.stack([minhash(d, a, b) for d in docs])
    rows = [f"{i // 100:05d}-{i % 100:09d}" for i in range(len(docs))]
    summaries = write_corpus(tmp_path, rows, sigs, chunk=32)
    assert all(isinstance(s, dict) for s in summaries) and len(pickle.dumps(summaries)) < 300 * len(summaries)
    for threshold in (0.0, 0.5, 0.8):
        expected = reference_clusters(rows, sigs, 20, 13, threshold)
        assert lsh_clusters(rows, sigs, 20, 13, threshold) == expected
        # several key ranges per band (docs_per_task=100): still every bucket whole, same clusters
        clusters, drops = dedup_disk.dedup(summaries, 20, threshold, docs_per_task=100,
                                           run=lambda t: [dedup_disk.band_edges(*x) for x in t])
        assert [[m[0] for m in c] for c in clusters] == expected
        assert clusters and all(m[1] == f"id{m[0]}" and m[2] == f"src{m[0]}" for c in clusters for m in c)
        want = defaultdict(list)
        for c in expected:
            for r in c[1:]:
                want[f"shard-{int(r[:5]):05d}"].append(r)
        assert {k: sorted(v) for k, v in drops.items()} == {k: sorted(v) for k, v in want.items()}
    assert len(expected) > 10 and any(c[0][:5] != c[-1][:5] for c in expected)  # planted, some across shards


def test_chain_across_three_shards_is_one_cluster_by_union_find(tmp_path):
    # bands of 2 rows: d0~d1 share bands 0-1, d1~d2 share bands 2-3, d0 and d2 share nothing (Jaccard 0)
    sigs = np.array([[1, 1, 2, 2, 3, 3, 4, 4], [1, 1, 2, 2, 9, 9, 8, 8], [5, 5, 6, 6, 9, 9, 8, 8],
                     [7, 7, 7, 7, 7, 7, 7, 7]], dtype=np.uint32)
    rows = ["00000-000000000", "00001-000000000", "00002-000000000", "00002-000000001"]
    summaries = write_corpus(tmp_path, rows, sigs, chunk=1, bands=4, rowsper=2)
    clusters, drops = dedup_disk.dedup(summaries, 4, 0.5, docs_per_task=1_000)
    assert [[m[0] for m in c] for c in clusters] == [rows[:3]]
    assert drops == {"shard-00001": [rows[1]], "shard-00002": [rows[2]]}
    assert lsh_clusters(rows, sigs, 4, 2, 0.5) == [rows[:3]]
    dedup_disk.write_drops(tmp_path / "drop", drops)
    assert dedup_disk.read_drops(tmp_path / "drop", "shard-00002") == {rows[2]}
    assert dedup_disk.read_drops(tmp_path / "drop", "shard-00000") == set()


def test_band_tasks_on_a_local_process_pool_match_inline(tmp_path):
    docs = planted_corpus(300, seed=3)
    a, b = permutations(260)
    sigs = np.stack([minhash(d, a, b) for d in docs])
    rows = [f"00000-{i:09d}" for i in range(len(docs))]
    summaries = write_corpus(tmp_path, rows, sigs, chunk=64)
    inline = dedup_disk.dedup(summaries, 20, 0.8, docs_per_task=100, run=lambda t: dedup_disk.run_tasks(t))
    pooled = dedup_disk.dedup(summaries, 20, 0.8, docs_per_task=100,
                              run=lambda t: dedup_disk.run_tasks(t, "local", workers=2))
    assert pooled == inline and inline[0] == [[(r, f"id{r}", f"src{r}") for r in c]
                                              for c in lsh_clusters(rows, sigs, 20, 13, 0.8)]


class RecordingDedup(FuzzyDedup):
    """FuzzyDedup that records what the driver's decide received and what it wrote."""

    def decide(self, summaries, out_dir):
        decision = super().decide(summaries, out_dir)
        flat = [x for s in summaries for x in (s if isinstance(s, list) else [s])]
        drops = {p.name: json.loads(p.read_text()) for p in sorted(Path(self.ctx.work / "drop").glob("*.json"))}
        (Path(out_dir) / "decide.json").write_text(json.dumps({
            "types": sorted({type(x).__name__ for x in flat}), "bytes": len(pickle.dumps(summaries)),
            "chunks": len(flat), "n": [x["n"] for x in flat], "decision_bytes": len(pickle.dumps(decision)),
            "drops": drops}))
        return decision


def recording_stages(docs_per_task=1_000_000, chunk_docs=8192):
    return [RecordingDedup(DedupConfig(docs_per_task=docs_per_task, chunk_docs=chunk_docs))]


def write_inputs(tmp_path, docs, files=3):
    paths = []
    per = -(-len(docs) // files)
    for f in range(files):
        p = tmp_path / "in" / f"part{f}.jsonl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps({"id": i, "text": docs[i]}) + "\n"
                             for i in range(f * per, min(len(docs), (f + 1) * per))))
        paths.append(p)
    return paths


def expected_kept(docs, files=3):
    per = -(-len(docs) // files)
    rows = [f"{i // per:05d}-{i % per:09d}" for i in range(len(docs))]
    a, b = permutations(260)
    sigs = np.stack([minhash(d, a, b) for d in docs])
    clusters = lsh_clusters(rows, sigs, 20, 13, 0.8)
    removed = {r for c in clusters for r in c[1:]}
    return [i for i, r in enumerate(rows) if r not in removed], clusters, rows


def test_pipeline_local_executor_drop_lists_per_shard_and_no_signatures_in_the_driver(tmp_path, monkeypatch):
    import refinery.data.pipeline as engine

    if hasattr(engine, "COLLECT_ROWS"):  # several collect chunks per shard (the engine streams shards in chunks)
        monkeypatch.setattr(engine, "COLLECT_ROWS", 32)
    docs = planted_corpus(400, seed=1)
    inputs = write_inputs(tmp_path, docs)
    out = tmp_path / "out"
    stats = run_pipeline(RunSpec(functools.partial(recording_stages, 150, 40), str(out)), plan_shards(inputs),
                         workers=1, progress=False)
    kept_ids, clusters, rows = expected_kept(docs)
    assert [r["id"] for r in output_records(out)] == kept_ids
    assert stats["stages"][-1]["dropped"] == {"duplicate_fuzzy": len(docs) - len(kept_ids)}
    seen = json.loads((out / "decide.json").read_text())
    assert seen["types"] == ["dict"]  # summaries are paths and counts, never signatures
    # 3 shards of 134/134/132 documents, collected 32 at a time, written in chunks of >= 40: 64 + 64 + 6 per shard
    assert seen["chunks"] == 9 and seen["n"] == [64, 64, 6, 64, 64, 6, 64, 64, 4]
    assert seen["bytes"] < 400 * seen["chunks"] and seen["decision_bytes"] < 500  # no drop set pickled to shards
    want = defaultdict(list)
    for c in clusters:
        for r in c[1:]:
            want[f"shard-{int(r[:5]):05d}.json"].append(r)
    assert seen["drops"] == {k: sorted(v) for k, v in want.items()} and len(want) >= 2
    lines = [json.loads(x) for x in (out / "duplicates" / "minhash_clusters.jsonl").read_text().splitlines()]
    assert [[x["kept_row"], *x["removed_rows"]] for x in lines] == clusters
    assert [x["kept"] for x in lines] == [rows.index(c[0]) for c in clusters]  # input ids: corpus positions
    assert not (out / "_work").exists()


def test_pipeline_on_a_local_pool_of_two_workers(tmp_path):
    docs = planted_corpus(200, seed=2)
    inputs = write_inputs(tmp_path, docs)
    out = tmp_path / "out"
    run_pipeline(RunSpec(functools.partial(recording_stages, 60), str(out)), plan_shards(inputs), workers=2,
                 progress=False)
    assert [r["id"] for r in output_records(out)] == expected_kept(docs)[0]


def test_band_tasks_as_ray_tasks_wiring(monkeypatch):
    """Quick default check of the Ray path's wiring (a stand-in ray module); the real local Ray run is slow."""
    import sys
    import types

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: True, get=lambda refs: [r() for r in refs])

    def remote(**options):
        calls.append(options)
        return lambda fn: types.SimpleNamespace(remote=lambda args: (lambda: fn(args)))

    fake.remote = remote
    monkeypatch.setitem(sys.modules, "ray", fake)
    empty = np.zeros((2, 0), dtype=np.int64)
    monkeypatch.setattr(dedup_disk, "band_edges", lambda *a: empty + a[1])
    assert [e.shape for e in dedup_disk.run_tasks([(None, 1), (None, 2)], "ray", 2)] == [(2, 0), (2, 0)]
    assert calls == [{"num_cpus": 1, "scheduling_strategy": "SPREAD", "max_retries": 2}]  # spread over the nodes


@pytest.mark.slow
def test_pipeline_ray_executor_same_output_as_local(tmp_path):
    pytest.importorskip("ray", reason="ray is part of the test install (pip install 'ray[data]')")
    docs = planted_corpus(200, seed=4)
    inputs = write_inputs(tmp_path, docs)
    out = tmp_path / "ray"
    stats = run_pipeline(RunSpec(functools.partial(recording_stages, 80), str(out)), plan_shards(inputs), "ray", 2,
                         progress=False)
    assert stats["executor"] == "ray"
    assert [r["id"] for r in output_records(out)] == expected_kept(docs)[0]
    assert json.loads((out / "decide.json").read_text())["types"] == ["dict"]


class RecordingExact(ExactDedup):
    def decide(self, summaries, out_dir):
        decision = super().decide(summaries, out_dir)
        drops = {p.name: json.loads(p.read_text()) for p in sorted(Path(self.ctx.work / "drop").glob("*.json"))}
        (Path(out_dir) / "exact.json").write_text(json.dumps({"decision": str(decision), "drops": drops}))
        return decision


def exact_stages():
    return [RecordingExact()]


def test_exact_dedup_writes_a_drop_list_per_shard(tmp_path):
    docs = ["alpha one", "beta two", "alpha  ONE", "gamma", "beta two", "delta", "alpha one"]
    inputs = write_inputs(tmp_path, docs, files=3)  # shards of 3, 3, 1 documents
    out = tmp_path / "out"
    run_pipeline(RunSpec(exact_stages, str(out)), plan_shards(inputs), workers=1, progress=False)
    assert [r["id"] for r in output_records(out)] == [0, 1, 3, 5]
    seen = json.loads((out / "exact.json").read_text())
    assert "drop_dir" in seen["decision"]  # a folder, not the drop set, goes to every shard
    assert seen["drops"] == {"shard-00000.json": ["00000-000000002"], "shard-00001.json": ["00001-000000001"],
                             "shard-00002.json": ["00002-000000000"]}
    # unbound (outside a run), the same stage decides in memory, as before
    st = ExactDedup()
    recs = [{"_row": f"r{i}", "id": i, "text": t} for i, t in enumerate(docs)]
    assert st.decide([st.collect(recs)], tmp_path / "mem") == {"r2", "r4", "r6"}


def fuzzy_stages():
    return [FuzzyDedup(DedupConfig(docs_per_task=100))]


def test_pipeline_with_an_fsspec_memory_output(tmp_path):
    """The chunk files and drop lists live under the output's _work/, here on fsspec's memory:// (one process)."""
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    docs = planted_corpus(200, seed=5)
    for f, p in enumerate(write_inputs(tmp_path, docs)):
        mem.pipe_file(f"/dd-in/part{f}.jsonl", p.read_bytes())
    try:
        stats = run_pipeline(RunSpec(fuzzy_stages, "memory://dd-out"), plan_shards(["memory://dd-in"]), workers=1,
                             progress=False)
        assert stats["complete"] and not mem.exists("/dd-out/_work")
        assert [r["id"] for r in output_records("memory://dd-out")] == expected_kept(docs)[0]
        assert mem.exists("/dd-out/duplicates/minhash_clusters.jsonl")
    finally:
        mem.rm("/dd-in", recursive=True)
        if mem.exists("/dd-out"):
            mem.rm("/dd-out", recursive=True)
