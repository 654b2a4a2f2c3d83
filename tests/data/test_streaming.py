"""Streaming shards (issue 23.4): byte-range JSONL and WARC shards, gzip-member WARC shards, Parquet row-group
shards, fsspec inputs and outputs, and a worker whose memory stays bounded on a shard larger than its limit."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refinery.data.io import plan_shards, read_shard, read_warc
from refinery.data.pipeline import RunSpec, Stage, output_records, run_pipeline


def warc_record(i: int, body: bytes | None = None) -> bytes:
    page = body if body is not None else (f"<html><body><p>page {i} " + "word " * (i % 7 + 20) + "</p></body></html>"
                                          ).encode()
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + page
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{i:08d}>\r\n"
            f"WARC-Target-URI: http://example.com/{i}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def write_warc(path: Path, n: int, members: bool = True, quote_at: int | None = None) -> Path:
    """``n`` response records; ``.gz``: one gzip member per record (Common Crawl's layout) or one gzip stream.
    ``quote_at``: that record's page quotes a whole WARC header (a false record start for a byte scanner)."""
    recs = [warc_record(i, warc_record(10_000 + i) if i == quote_at else None) for i in range(n)]
    if path.name.endswith(".gz"):
        data = b"".join(gzip.compress(r) for r in recs) if members else gzip.compress(b"".join(recs))
    else:
        data = b"".join(recs)
    path.write_bytes(data)
    return path


def ids(records) -> list:
    return [r.get("warc_record_id") for r in records]


@pytest.mark.parametrize("name,members", [("a.warc.gz", True), ("a.warc", False)])
def test_warc_shards_start_at_record_boundaries(tmp_path, name, members):
    path = write_warc(tmp_path / name, 60, quote_at=7)
    whole = ids(read_warc((str(path),), every_record=True))
    assert len(whole) == 60
    for shard_bytes in (300, 1000, 4096):
        shards = plan_shards([path], shard_bytes=shard_bytes)
        assert len(shards) > 3
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:])) and shards[-1].stop == path.stat().st_size
        got = [ids(read_shard(s)) for s in shards]
        assert [x for g in got for x in g] == whole  # every record once, in order; none split or lost
        assert all(g for g in got)  # a cut lands on a record / member start, never inside one
    if not members:  # the record quoting a WARC header is not taken for a record start
        assert "<urn:uuid:00010007>" not in whole


def test_single_stream_warc_gz_and_jsonl_gz_are_one_shard(tmp_path):
    warc = write_warc(tmp_path / "one.warc.gz", 40, members=False)
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(2000))))
    assert [len(plan_shards([p], shard_bytes=100)) for p in (warc, gz)] == [1, 1]
    assert len(ids(read_shard(plan_shards([warc], shard_bytes=100)[0]))) == 40


def test_parquet_shards_by_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": list(range(3000)), "text": [f"t{i} " * 20 for i in range(3000)]}), path,
                   row_group_size=250)
    shards = plan_shards([path], shard_bytes=1)  # one row group each
    assert [(s.start, s.stop) for s in shards] == [(k, k + 1) for k in range(12)]
    recs = [r for s in shards for r in read_shard(s)]
    assert [r["id"] for r in recs] == list(range(3000)) and recs[2999]["source"] == f"{path}:3000"
    assert len(plan_shards([path], shard_bytes=10 ** 9)) == 1


def test_jsonl_byte_ranges_split_lines_exactly_once(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"i": i, "t": "x" * (i * 37 % 301)}) for i in range(500)]
    path.write_text("\n".join(lines) + "\n\n")
    for shard_bytes in (1, 50, 999, 10 ** 9):  # 1: most shards hold no line start at all
        got = [r["i"] for s in plan_shards([path], shard_bytes=shard_bytes) for r in read_shard(s)]
        assert got == list(range(500)), shard_bytes


def test_fsspec_memory_input_and_output(tmp_path):
    """A run reads ``memory://`` inputs and writes its whole output directory there (one process: memory:// is
    not shared between processes), with a global stage whose decision files go there too."""
    import fsspec

    from refinery.config import load_config
    from refinery.data.math_web.pipeline import MathCCConfig
    from refinery.data.runner import run_data_recipe

    mem = fsspec.filesystem("memory")
    mem.pipe_file("/in/a.warc.gz", write_warc(tmp_path / "a.warc.gz", 30).read_bytes())
    mem.pipe_file("/in/b.warc", write_warc(tmp_path / "b.warc", 5).read_bytes())
    cfg = load_config(MathCCConfig, "recipes/nemotron_cc_math.yaml", [
        "input=[memory://in]", "output=memory://out", "stages=[extract,dedup_exact]", "extract.renderer=python",
        "extract.min_chars=0", "workers=1", "shard_bytes=2048", "format=parquet"])
    stats = run_data_recipe(cfg, progress=False)
    assert stats["complete"] and stats["shards"] > 4 and stats["records_out"] == 35 - 5  # b's pages repeat a's
    assert mem.exists("/out/stats.json") and mem.exists("/out/schema.json") and mem.exists("/out/report.md")
    assert not mem.exists("/out/_work") and not os.path.exists("memory:")
    assert mem.exists("/out/duplicates/exact_clusters.jsonl")
    assert len(output_records("memory://out")) == 30
    assert run_data_recipe(cfg, progress=False)["complete"]  # a complete run is found there and not redone
    mem.rm("/in", recursive=True)
    mem.rm("/out", recursive=True)


_CHILD = textwrap.dedent("""
    import json, resource, sys
    from refinery.data.io import plan_shards, read_shard
    from refinery.data.pipeline import RunSpec, Stage, run_pipeline

    class Upper(Stage):
        name, adds = "upper", ("n",)
        def process(self, records):
            return [{**r, "n": len(r["text"])} for r in records]

    def stages():
        return [Upper()]

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def vm():
        return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmSize"))

    src, out, fmt, headroom = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    shards = plan_shards([src], shard_bytes=1 << 40)  # the whole big file is ONE shard
    list(read_shard(plan_shards([src], shard_bytes=1000)[0]))  # warm up the imports the readers use
    base, limit = peak(), vm() + headroom
    if headroom:  # the address space may not grow by the file's size
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stats = run_pipeline(RunSpec(stages, out, fmt=fmt, batch_size=64), shards, workers=1,
                         progress=False)
    print(json.dumps({"records": stats["records_out"], "base": base, "peak": peak(), "headroom": headroom}))
""")


def _run_bounded(tmp_path: Path, fmt: str, mb: int, headroom: int = 400 << 20) -> dict:
    src = tmp_path / "big.jsonl"
    n, body = 0, "lorem ipsum dolor sit amet " * 300  # ~8 KB per record
    with open(src, "w") as f:
        while f.tell() < mb << 20:
            f.write(json.dumps({"id": n, "text": f"{n} {body}"}) + "\n")
            n += 1
    size = src.stat().st_size
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    res = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "out"), fmt, str(headroom)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "ARROW_DEFAULT_MEMORY_POOL": "system"})
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["records"] == n
    m["size"] = size
    return m


def test_a_shard_larger_than_the_memory_limit_streams(tmp_path):
    """A 600 MB JSONL file as one shard, under an address-space limit of 400 MB over the worker's start: holding
    the shard (or its output) would need more than the limit; peak RSS grows by a few MB."""
    m = _run_bounded(tmp_path, "jsonl", 600)
    assert m["size"] > m["headroom"]
    assert m["peak"] - m["base"] < 64 << 20, m
    out = tmp_path / "out" / "data" / "shard-00000.jsonl"
    assert out.stat().st_size > m["size"]  # every record written, with the field added


@pytest.mark.slow
def test_parquet_output_of_a_big_shard_streams(tmp_path):
    m = _run_bounded(tmp_path, "parquet", 600, headroom=0)  # Arrow's writer threads reserve malloc arenas: RSS only
    assert m["peak"] - m["base"] < 160 << 20, m  # a 4096-row group (~32 MB) in Arrow plus its Python rows
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "out" / "data" / "shard-00000.parquet").metadata.num_rows == m["records"]


class FailLate(Stage):
    """Fails on the last shard until ``ok`` exists; logs the first row of every batch it sees to ``log``."""

    name = "fail_late"

    def __init__(self, last: int, ok: str, log: str):
        self.last, self.ok, self.log = last, ok, log

    def process(self, records):
        with open(self.log, "a") as f:
            f.write(records[0]["_row"] + "\n")
        if records[0]["_row"].startswith(f"{self.last:05d}-") and not os.path.exists(self.ok):
            raise RuntimeError("worker lost")
        return records


def _fail_late(last: int, ok: str, log: str):
    return [FailLate(last, ok, log)]


def test_resume_keeps_finished_byte_range_shards(tmp_path):
    import functools

    from refinery.data import pipeline

    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(100)))
    shards = plan_shards([path], shard_bytes=200)
    out, ok, log = tmp_path / "out", tmp_path / "ok", tmp_path / "log"
    spec = RunSpec(functools.partial(_fail_late, len(shards) - 1, str(ok), str(log)), str(out), batch_size=1000)
    stats = run_pipeline(spec, shards, workers=1, progress=False)  # the failing batch's records become rejects
    assert stats["stages"][-1]["dropped"] == {"error": 100 - stats["records_out"]} and stats["records_out"] < 100
    assert not list((out / "data").glob("*.tmp"))
    pipeline._STAGES.clear()

    out2 = tmp_path / "out2"
    spec = RunSpec(functools.partial(_fail_late, len(shards) - 1, str(ok), str(log)), str(out2), batch_size=1000)
    # a crash mid-shard (not a record error): the shard-segment's temp files are dropped, finished shards kept
    real = pipeline._stream_stage

    def crash_on_last(stage, records, fn, counts, on_reject, batch_size):
        for r in real(stage, records, fn, counts, on_reject, batch_size):
            if r["_row"].startswith(f"{len(shards) - 1:05d}-"):
                raise KeyboardInterrupt
            yield r

    ok.write_text("")
    pipeline._stream_stage = crash_on_last
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(spec, shards, workers=1, progress=False)
    finally:
        pipeline._stream_stage = real
    assert not list((out2 / "data").glob("*.tmp")) and len(list((out2 / "data").glob("*.jsonl"))) == len(shards) - 1
    log.write_text("")
    run_pipeline(spec, shards, workers=1, progress=False)
    assert [x[:5] for x in log.read_text().split()] == [f"{len(shards) - 1:05d}"]  # only that shard ran again
    assert [r["text"] for r in output_records(out2)] == [f"t{i}" for i in range(100)]
