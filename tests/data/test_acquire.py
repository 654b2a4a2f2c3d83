"""Common Crawl acquisition against a real local HTTP server (Range requests, a 503 to retry, a 404 not to)."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from base64 import b32encode
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from refinery.data import acquire
from refinery.data.acquire import (
    BadIndexLine,
    FetchConfig,
    IndexRecord,
    RateLimiter,
    check_member,
    fetch_cc,
    manifest_entries,
    read_index,
)
from refinery.data.io import plan_shards, read_shard

WARC_NAME = "crawl-data/CC-MAIN-2024-18/segments/1/warc/CC-MAIN-test-00000.warc.gz"
FAST = dict(backoff=0.01, max_backoff=0.05, rate=0, concurrency=2)


def warc_member(kind: str, uri: str, payload: bytes, n: int, digest: str | None = None) -> bytes:
    ctype = "application/http; msgtype=response" if kind == "response" else "application/warc-fields"
    extra = f"WARC-Target-URI: {uri}\r\n" if uri else ""
    if digest:
        extra += f"WARC-Payload-Digest: sha1:{digest}\r\n"
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
            f"WARC-Date: 2024-05-01T00:00:00Z\r\n{extra}Content-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return gzip.compress(head.encode() + payload + b"\r\n\r\n", mtime=0)


def page(i: int) -> bytes:
    body = (f"<html><head><title>Page {i}</title></head><body><p>Lemma {i}: the sum of the first n odd numbers "
            f"is n squared, checked for n = {i}.</p></body></html>").encode()
    return f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n" \
        .encode() + body


def build_crawl(n: int = 5) -> tuple[bytes, list[dict]]:
    """A CC-style WARC (warcinfo, then one gzip member per response) and its CDX-server index rows."""
    members = [warc_member("warcinfo", "", b"software: refinery-test\r\n", 0)]
    rows = []
    for i in range(1, n + 1):
        payload = page(i)
        body = payload.split(b"\r\n\r\n", 1)[1]
        digest = b32encode(hashlib.sha1(body).digest()).decode()
        url = f"https://math.example.org/p{i}.html"
        members.append(warc_member("response", url, payload, i, digest))
        rows.append({"urlkey": f"org,example,math)/p{i}.html", "timestamp": "20240501000000", "url": url,
                     "mime": "text/html", "status": "200", "digest": digest, "length": None, "offset": None,
                     "filename": WARC_NAME})
    offsets, pos = [], 0
    for m in members:
        offsets.append(pos)
        pos += len(m)
    for row, off, m in zip(rows, offsets[1:], members[1:]):
        row["offset"], row["length"] = str(off), str(len(m))
    return b"".join(members), rows


class Crawl:
    """A threaded HTTP server holding files; honours Range, fails the first ``fail_first`` GETs with 503, counts
    every request and the most in flight at once."""

    def __init__(self, files: dict[str, bytes], fail_first: int = 1, delay: float = 0.0):
        self.files, self.fail_left, self.delay = files, fail_first, delay
        self.log: list[tuple[str, str]] = []
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        crawl = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                with crawl.lock:
                    crawl.log.append((self.path, self.headers.get("Range", "")))
                    crawl.inflight += 1
                    crawl.max_inflight = max(crawl.max_inflight, crawl.inflight)
                    fail = crawl.fail_left > 0
                    crawl.fail_left -= fail
                try:
                    if crawl.delay:
                        time.sleep(crawl.delay)
                    self._serve(fail)
                finally:
                    with crawl.lock:
                        crawl.inflight -= 1

            def _serve(self, fail: bool):
                if fail:
                    return self._send(503, b"busy")
                data = crawl.files.get(self.path.lstrip("/"))
                if data is None:
                    return self._send(404, b"no such file")
                rng = self.headers.get("Range")
                if not rng:
                    return self._send(200, data)
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    return self._send(416, b"")
                self._send(206, data[start: end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"})

            def _send(self, code: int, body: bytes, headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ranges(self) -> Counter:
        return Counter(r for _, r in self.log)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crawl():
    servers = []

    def make(files, **kw):
        servers.append(Crawl(files, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def write_index(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fetch_retries_503_not_404_and_the_pipeline_reads_the_shard(tmp_path, crawl):
    warc, rows = build_crawl(5)
    missing = dict(rows[2], filename="crawl-data/CC-MAIN-2024-18/missing.warc.gz", url="https://gone.example/")
    server = crawl({WARC_NAME: warc}, fail_first=1)
    index = write_index(tmp_path / "index.jsonl", rows[:2] + [missing] + rows[2:])
    out = tmp_path / "fetched"
    stats = fetch_cc([index], out, FetchConfig(base_url=server.url, **FAST))
    assert stats["fetched"] == 5 and stats["failed"] == 1
    assert stats["failed_by_reason"] == {"not_found": 1}
    assert stats["retries"] == 1 and stats["requests"] == 7  # 5 + the 503 retried + the 404 tried once
    assert [p for p, _ in server.log].count("/crawl-data/CC-MAIN-2024-18/missing.warc.gz") == 1
    assert all(r.startswith("bytes=") for _, r in server.log)
    assert sorted(p.name for p in out.iterdir()) == ["cc-00000.warc.gz", "fetch_stats.json", "manifest.ndjson"]
    assert json.loads((out / "fetch_stats.json").read_text())["fetched"] == 5
    failed = [e for e in manifest_entries(out) if e.get("ok") is False]
    assert failed[0]["reason"] == "not_found" and failed[0]["url"] == "https://gone.example/"

    # the existing WARC reader and shard planner read the fetched directory: every record, in index order
    shards = plan_shards([out])
    assert [s.kind for s in shards] == ["warc"]
    recs = list(read_shard(shards[0]))
    assert [r["source"] for r in recs] == [r["url"] for r in rows]
    assert all(r["http_status"] == 200 and "Lemma" in r["html"] for r in recs)

    # and a data pipeline runs over it
    from refinery.data.runner import extract_math

    res = extract_math([str(out)], tmp_path / "text.jsonl", renderer="python", workers=1, progress=False)
    assert res["pages"] == 5
    texts = [json.loads(line)["text"] for line in (tmp_path / "text.jsonl").read_text().splitlines()]
    assert any("Lemma 3" in t for t in texts)

    # a re-run fetches nothing: done records are skipped, the failure is remembered
    before = len(server.log)
    again = fetch_cc([index], out, FetchConfig(base_url=server.url, **FAST))
    assert len(server.log) == before
    assert again["fetched"] == 0 and again["already_done"] == 5 and again["previously_failed"] == 1


def test_resume_after_a_crash_fetches_nothing_twice(tmp_path, crawl, monkeypatch):
    warc, rows = build_crawl(8)
    server = crawl({WARC_NAME: warc}, fail_first=0)
    index = write_index(tmp_path / "index.jsonl", rows)
    out = tmp_path / "fetched"
    cfg = FetchConfig(base_url=server.url, **dict(FAST, concurrency=1), shard_mb=len(warc) * 0.4 / (1 << 20))
    real_add, calls = acquire.ShardWriter.add, []

    def crashing_add(self, res):
        if len(calls) == 5:
            raise KeyboardInterrupt  # the process dies here
        calls.append(res.rec.key)
        real_add(self, res)

    monkeypatch.setattr(acquire.ShardWriter, "add", crashing_add)
    with pytest.raises(KeyboardInterrupt):
        fetch_cc([index], out, cfg)
    monkeypatch.setattr(acquire.ShardWriter, "add", real_add)
    recorded = {e["key"] for e in manifest_entries(out) if e.get("ok")}
    assert len(recorded) == 5 and any(p.name.endswith(".part") for p in out.iterdir())
    # a crash mid-write: bytes after the last recorded member and a torn manifest line
    part = next(p for p in out.iterdir() if p.name.endswith(".part"))
    with open(part, "ab") as f:
        f.write(b"\x1f\x8b half a member")
    with open(out / "manifest.ndjson", "a") as f:
        f.write('{"key": "torn')
    first_run = server.ranges()

    stats = fetch_cc([index], out, cfg)
    assert stats["already_done"] == 5 and stats["fetched"] == 3 and stats["failed"] == 0
    second_run = server.ranges() - first_run
    for r in rows:
        rng = f"bytes={int(r['offset'])}-{int(r['offset']) + int(r['length']) - 1}"
        key = f"{r['filename']}:{r['offset']}:{r['length']}"
        assert second_run[rng] == (0 if key in recorded else 1), (key, second_run)
    shards = sorted(p for p in out.glob("*.warc.gz"))
    assert len(shards) >= 2 and not list(out.glob("*.part"))
    recs = [r for s in plan_shards([out]) for r in read_shard(s)]
    assert [r["source"] for r in recs] == [r["url"] for r in rows]  # each once, in index order
    assert not any("_reject" in r for r in recs)


def test_bounded_concurrency_and_rate_limit(tmp_path, crawl):
    warc, rows = build_crawl(6)
    server = crawl({WARC_NAME: warc}, fail_first=0, delay=0.15)
    index = write_index(tmp_path / "index.jsonl", rows)
    stats = fetch_cc([index], tmp_path / "a", FetchConfig(base_url=server.url, **dict(FAST, concurrency=2)))
    assert stats["fetched"] == 6 and server.max_inflight == 2

    lim, t0 = RateLimiter(40.0), time.monotonic()
    for _ in range(9):
        lim.wait()
    assert time.monotonic() - t0 >= 8 / 40 - 0.01


def test_bad_ranges_are_counted_not_retried(tmp_path, crawl):
    warc, rows = build_crawl(3)
    server = crawl({WARC_NAME: warc}, fail_first=0)
    shifted = dict(rows[0], offset=str(int(rows[0]["offset"]) + 1))  # lands inside a member
    two = dict(rows[1], length=str(int(rows[1]["length"]) + int(rows[2]["length"])))  # two members
    wrong_url = dict(rows[2], url="https://other.example/")
    past_end = dict(rows[2], offset=str(len(warc) - 10), length="100")  # the server returns 10 bytes
    bad_json = "{not json"
    index = tmp_path / "index.jsonl"
    index.write_text("\n".join([json.dumps(shifted), json.dumps(two), json.dumps(wrong_url), json.dumps(past_end),
                                bad_json, json.dumps({"url": "x"})]) + "\n")
    stats = fetch_cc([index], tmp_path / "out", FetchConfig(base_url=server.url, **dict(FAST, retries=2)))
    assert stats["fetched"] == 0 and stats["bad_index_lines"] == 2
    assert stats["failed_by_reason"] == {"not_gzip": 1, "not_one_member": 1, "url_mismatch": 1, "short_read": 1}
    assert stats["requests"] == 3 + 3  # the short read retried twice, the rest tried once
    assert "missing filename, offset, length" in stats["bad_index_samples"][1]["reason"]


def test_check_member():
    warc, rows = build_crawl(2)
    off, n = int(rows[0]["offset"]), int(rows[0]["length"])
    member = warc[off: off + n]
    rec = IndexRecord(rows[0]["url"], WARC_NAME, off, n, rows[0]["digest"])
    assert check_member(member, rec) is None
    assert check_member(member[:-5], rec)[0] == "truncated_gzip"
    assert check_member(member + member, rec)[0] == "not_one_member"
    assert check_member(b"plain bytes", rec)[0] == "not_gzip"
    assert check_member(gzip.compress(b"HTTP/1.1 200 OK\r\n\r\n"), rec)[0] == "not_warc"
    raw = gzip.decompress(member)
    assert check_member(gzip.compress(raw + raw), rec)[0] == "not_one_record"
    assert check_member(member, IndexRecord(rec.url, WARC_NAME, off, n, "sha1:AAAA"))[0] == "digest_mismatch"


def test_read_index_flavours(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cdxj = tmp_path / "cdx-00000.gz"
    cdxj.write_bytes(gzip.compress(
        b'org,example)/a 20240501000000 {"url": "https://example.org/a", "filename": "f.warc.gz", '
        b'"offset": "10", "length": "20", "status": "200"}\n\n'
        b'org,example)/b 20240501000000 {"url": "https://example.org/b", "filename": "f.warc.gz", '
        b'"offset": "30", "length": "5", "status": "-"}\n'
        b"garbage line\n"))
    csv_path = tmp_path / "athena.csv"
    csv_path.write_text("url,warc_filename,warc_record_offset,warc_record_length,fetch_status\n"
                        "https://example.org/c,g.warc.gz,0,7,200\n")
    table = pa.table({"url": ["https://example.org/d"], "warc_filename": ["h.warc.gz"],
                      "warc_record_offset": [100], "warc_record_length": [50], "content_mime_type": ["text/html"],
                      "unrelated": [1]})
    pq.write_table(table, tmp_path / "columnar.parquet")
    got = list(read_index([cdxj, csv_path, tmp_path / "columnar.parquet"]))
    assert got[0] == IndexRecord("https://example.org/a", "f.warc.gz", 10, 20, None, 200, None)
    assert got[1].status is None and got[1].key == "f.warc.gz:30:5"
    assert isinstance(got[2], BadIndexLine) and got[2].where.endswith(":4")
    assert got[3] == IndexRecord("https://example.org/c", "g.warc.gz", 0, 7, None, 200, None)
    assert got[4] == IndexRecord("https://example.org/d", "h.warc.gz", 100, 50, None, None, "text/html")


def test_status_filter_duplicates_and_fsspec_memory_filesystem(tmp_path):
    """Any fsspec filesystem serves as the crawl (here memory://, as S3 would through s3fs)."""
    import fsspec

    warc, rows = build_crawl(3)
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/cc-test/{WARC_NAME}", warc)
    try:
        rows[1]["status"] = "301"
        index = write_index(tmp_path / "index.jsonl", rows + [rows[0]])
        stats = fetch_cc([index], tmp_path / "out",
                         FetchConfig(base_url="memory://cc-test/", statuses=[200], **FAST))
        assert (stats["fetched"], stats["filtered"], stats["duplicates"]) == (2, 1, 1)
        recs = list(read_shard(plan_shards([tmp_path / "out"])[0]))
        assert [r["source"] for r in recs] == [rows[0]["url"], rows[2]["url"]]
    finally:
        fs.rm("/cc-test", recursive=True)


def test_cli_fetch_cc(tmp_path, crawl):
    from typer.testing import CliRunner

    from refinery.cli import app

    warc, rows = build_crawl(2)
    server = crawl({WARC_NAME: warc}, fail_first=0)
    index = write_index(tmp_path / "index.jsonl", rows)
    res = CliRunner().invoke(app, ["data", "fetch-cc", str(index), "--out", str(tmp_path / "out"), "--base-url",
                                   server.url, "--rate", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "2 fetched, 0 failed" in res.output
    assert (tmp_path / "out" / "cc-00000.warc.gz").exists()
