"""Common Crawl acquisition: index records (URL, WARC filename, offset, length) → the WARC byte ranges fetched over
HTTP/S3 (any fsspec filesystem) → local ``.warc.gz`` shards that ``refinery data run`` reads.

Each index record names one gzip member of a Common Crawl WARC file. It is fetched with one range request (retried
with exponential backoff on 5xx/429/connection errors, never on 404), under a global rate limit and a bounded number
of requests in flight, checked to be exactly one gzip member holding exactly one WARC record (of the indexed URL),
and appended unchanged to the open shard. ``manifest.ndjson`` in the output directory records every record fetched
or failed (with the reason) as soon as it is written, so a re-run after a crash fetches nothing twice: it truncates
the open shard to what the manifest vouches for and goes on. A shard is written as ``cc-NNNNN.warc.gz.part`` and
renamed to ``cc-NNNNN.warc.gz`` when full, so the data pipeline only ever sees finished shards.

Inputs: CDX server results and CDXJ index lines (``urlkey timestamp {json}`` or plain JSON lines with ``url``,
``filename``, ``offset``, ``length``, optionally ``digest``/``status``/``mime``), the columnar index as Parquet or
CSV (``url``, ``warc_filename``, ``warc_record_offset``, ``warc_record_length``, or the CDX names); gzip or plain,
local or any fsspec URL.
"""

from __future__ import annotations

import csv
import json
import os
import random
import threading
import time
import zlib
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pydantic import Field

from refinery.config import Section
from refinery.errors import DataError

DEFAULT_BASE_URL = "https://data.commoncrawl.org/"
MANIFEST = "manifest.ndjson"  # not .jsonl: the output directory is itself a pipeline input
STATS = "fetch_stats.json"

_ALIASES = {"url": ("url",), "filename": ("filename", "warc_filename"),
            "offset": ("offset", "warc_record_offset"), "length": ("length", "warc_record_length"),
            "digest": ("digest", "content_digest"), "status": ("status", "fetch_status"),
            "mime": ("mime", "content_mime_type", "mime-detected")}


class FetchConfig(Section):
    """How ``fetch_cc`` reaches the crawl; the defaults are polite to Common Crawl's public endpoint."""

    base_url: str = Field(DEFAULT_BASE_URL, description="prefix of the WARC filenames (https://, s3://, any fsspec "
                          "URL); a filename that is already a URL is used as it is")
    concurrency: int = Field(8, gt=0, description="range requests in flight")
    rate: float = Field(10.0, ge=0, description="requests per second over all workers, retries included (0: none)")
    retries: int = Field(5, ge=0, description="retries of a 5xx/429/connection error/short read (not of a 404)")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles each retry (with jitter)")
    max_backoff: float = Field(60.0, ge=0, description="cap on one retry delay (seconds)")
    timeout: float = Field(60.0, gt=0, description="HTTP: seconds for one request")
    shard_mb: float = Field(128.0, gt=0, description="a shard is closed once it holds this many MiB (bounds the "
                            "memory of the pipeline worker that reads it)")
    statuses: list[int] | None = Field(None, description="fetch only index records with these HTTP statuses "
                                       "(e.g. [200]); others are counted as filtered")
    retry_failed: bool = Field(False, description="fetch again the records a previous run recorded as failed")
    limit: int | None = Field(None, gt=0, description="stop after this many index records (testing a setup)")
    user_agent: str = Field("refinery-cc-fetch/0.1 (+https://commoncrawl.org/terms-of-use)",
                            description="HTTP User-Agent")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="extra fsspec filesystem options "
                                            "(e.g. anon: true for s3)")


@dataclass(frozen=True)
class IndexRecord:
    """One capture in the Common Crawl index: a gzip member ``length`` bytes long at ``offset`` of ``filename``."""

    url: str
    filename: str
    offset: int
    length: int
    digest: str | None = None
    status: int | None = None
    mime: str | None = None

    @property
    def key(self) -> str:
        return f"{self.filename}:{self.offset}:{self.length}"


@dataclass(frozen=True)
class BadIndexLine:
    where: str
    reason: str


def _field(row: dict[str, Any], name: str) -> Any:
    for alias in _ALIASES[name]:
        if row.get(alias) not in (None, ""):
            return row[alias]
    return None


def index_record(row: dict[str, Any], where: str) -> IndexRecord | BadIndexLine:
    """A row of any index flavour → an :class:`IndexRecord`, or what is wrong with it."""
    missing = [n for n in ("url", "filename", "offset", "length") if _field(row, n) is None]
    if missing:
        return BadIndexLine(where, f"missing {', '.join(missing)} (have {', '.join(sorted(row)) or 'nothing'})")
    try:
        offset, length = int(_field(row, "offset")), int(_field(row, "length"))
    except (TypeError, ValueError):
        return BadIndexLine(where, f"offset/length not integers: {_field(row, 'offset')!r}, {_field(row, 'length')!r}")
    if offset < 0 or length <= 0:
        return BadIndexLine(where, f"offset {offset} / length {length} out of range")
    status = _field(row, "status")
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None  # CDX writes '-' for revisits
    digest = _field(row, "digest")
    return IndexRecord(str(_field(row, "url")), str(_field(row, "filename")), offset, length,
                       str(digest) if digest is not None else None, status, _field(row, "mime"))


def _parse_line(line: str) -> dict[str, Any]:
    line = line.strip()
    if line.startswith("{"):
        return json.loads(line)
    # CDXJ: "urlkey timestamp {json}"
    brace = line.find("{")
    if brace < 0:
        raise ValueError("neither JSON nor CDXJ (urlkey timestamp {json})")
    return json.loads(line[brace:])


def read_index(paths: Iterable[str | Path]) -> Iterator[IndexRecord | BadIndexLine]:
    """Stream index records from CDX/CDXJ/JSON-lines, CSV or Parquet files (gzip inferred; local or fsspec URLs);
    a line that cannot be read comes as a :class:`BadIndexLine`, the rest of the file is still read."""
    import fsspec

    for raw in paths:
        path = str(raw)
        name = path.lower().removesuffix(".gz")
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            with fsspec.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                cols = [c for c in pf.schema_arrow.names if any(c in a for a in _ALIASES.values())]
                n = 0
                for batch in pf.iter_batches(columns=cols, batch_size=8192):
                    for row in batch.to_pylist():
                        n += 1
                        yield index_record(row, f"{path}#row{n}")
            continue
        with fsspec.open(path, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
            if name.endswith(".csv"):
                for n, row in enumerate(csv.DictReader(f), start=2):
                    yield index_record(row, f"{path}:{n}")
                continue
            for n, line in enumerate(f, start=1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                try:
                    row = _parse_line(line)
                except ValueError as e:
                    yield BadIndexLine(f"{path}:{n}", f"unreadable index line: {e}")
                    continue
                if not isinstance(row, dict):
                    yield BadIndexLine(f"{path}:{n}", "index line is not a JSON object")
                    continue
                yield index_record(row, f"{path}:{n}")


# ---- verification ------------------------------------------------------------------------------------------------
def check_member(data: bytes, rec: IndexRecord | None = None) -> tuple[str, str] | None:
    """None when ``data`` is exactly one complete gzip member holding exactly one WARC record (of ``rec.url``, with
    ``rec.digest`` when both sides name one); else ``(reason, detail)``."""
    d = zlib.decompressobj(wbits=31)
    try:
        raw = d.decompress(data)
    except zlib.error as e:
        return "not_gzip", str(e)
    if not d.eof:
        return "truncated_gzip", f"gzip member does not end within {len(data)} bytes"
    if d.unused_data:
        return "not_one_member", f"{len(d.unused_data)} bytes after the first gzip member"
    if not raw.startswith(b"WARC/"):
        return "not_warc", f"member starts with {raw[:16]!r}"
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return "not_warc", "WARC headers do not end"
    headers: dict[str, str] = {}
    for line in raw[:end].decode("utf-8", "replace").split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    try:
        clen = int(headers.get("content-length", ""))
    except ValueError:
        return "not_warc", "no Content-Length in the WARC headers"
    if len(raw) != end + 4 + clen + 4 or not raw.endswith(b"\r\n\r\n"):
        return "not_one_record", f"WARC record of {clen} content bytes in a member of {len(raw) - end - 4}"
    if rec is not None:
        uri = headers.get("warc-target-uri")
        if rec.url and uri and uri.strip("<>") != rec.url:
            return "url_mismatch", f"member holds {uri}, index says {rec.url}"
        digest = headers.get("warc-payload-digest")
        if rec.digest and digest and digest.split(":")[-1] != rec.digest.split(":")[-1]:
            return "digest_mismatch", f"member payload digest {digest}, index says {rec.digest}"
    return None


# ---- fetching ----------------------------------------------------------------------------------------------------
class RateLimiter:
    """At most ``rate`` acquisitions per second over all threads (evenly spaced); 0 means unlimited."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.lock = threading.Lock()
        self.next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next)
            self.next = at + self.interval
        if at > now:
            time.sleep(at - now)


@dataclass
class Fetched:
    rec: IndexRecord
    data: bytes | None
    reason: str | None = None
    detail: str = ""
    attempts: int = 0


def _status(e: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        v = getattr(e, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            return v
    return None


def _transient(e: BaseException) -> bool:
    try:
        import aiohttp

        if isinstance(e, aiohttp.ClientError):
            return True
    except ImportError:
        pass
    import asyncio

    return isinstance(e, (TimeoutError, asyncio.TimeoutError, ConnectionError, OSError))


class Fetcher:
    """Range requests through one fsspec filesystem, with the rate limit and retry policy of a :class:`FetchConfig`."""

    def __init__(self, cfg: FetchConfig, sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.sleep = cfg, sleep
        self.limiter = RateLimiter(cfg.rate)
        self.requests = 0
        self.retried = 0
        self._lock = threading.Lock()
        self._fs: dict[str, Any] = {}

    def url(self, filename: str) -> str:
        if "://" in filename:
            return filename
        return self.cfg.base_url.rstrip("/") + "/" + filename.lstrip("/")

    def fs(self, url: str):
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        with self._lock:
            if protocol not in self._fs:
                import fsspec

                opts = dict(self.cfg.storage_options)
                if protocol in ("http", "https"):
                    try:
                        import aiohttp
                    except ImportError:
                        raise DataError("fetching over HTTP needs aiohttp: pip install 'fsspec[http]'") from None
                    opts.setdefault("headers", {"User-Agent": self.cfg.user_agent})
                    opts.setdefault("client_kwargs", {"timeout": aiohttp.ClientTimeout(total=self.cfg.timeout)})
                try:
                    self._fs[protocol] = fsspec.filesystem(protocol, **opts)
                except (ImportError, ValueError) as e:
                    raise DataError(f"cannot open {protocol}:// through fsspec ({e}); for s3:// install s3fs, for "
                                    "gs:// gcsfs") from None
            return self._fs[protocol]

    def fetch(self, rec: IndexRecord) -> Fetched:
        url = self.url(rec.filename)
        fs = self.fs(url)
        reason, detail = "error", ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                delay = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** (attempt - 1))
                self.sleep(delay * (0.5 + random.random() / 2))
            self.limiter.wait()
            with self._lock:
                self.requests += 1
            try:
                data = fs.cat_file(url, start=rec.offset, end=rec.offset + rec.length)
            except FileNotFoundError as e:
                return Fetched(rec, None, "not_found", f"{url}: {e}", attempt + 1)
            except PermissionError as e:
                return Fetched(rec, None, "forbidden", f"{url}: {e}", attempt + 1)
            except Exception as e:
                status = _status(e)
                reason, detail = (f"http_{status}" if status else type(e).__name__), f"{url}: {e}"
                if status is not None and status != 429 and status < 500:
                    return Fetched(rec, None, reason, detail, attempt + 1)  # 4xx other than 429: final
                if status is None and not _transient(e):
                    return Fetched(rec, None, reason, detail, attempt + 1)
                continue
            if len(data) < rec.length:
                reason, detail = "short_read", f"{url}: {len(data)} of {rec.length} bytes"
                continue
            if len(data) > rec.length:
                return Fetched(rec, None, "range_ignored", f"{url}: {len(data)} bytes for a {rec.length}-byte range "
                               "(the server does not honour Range)", attempt + 1)
            bad = check_member(data, rec)
            if bad:
                return Fetched(rec, None, bad[0], f"{url}@{rec.offset}: {bad[1]}", attempt + 1)
            return Fetched(rec, data, attempts=attempt + 1)
        return Fetched(rec, None, reason, detail, self.cfg.retries + 1)


# ---- shards and manifest -----------------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"cc-{index:05d}.warc.gz"


class ShardWriter:
    """Appends verified members to ``cc-NNNNN.warc.gz.part`` and the manifest line after the bytes (flushed), so the
    manifest never vouches for bytes that are not in the shard; ``resume`` truncates whatever came after."""

    def __init__(self, out: Path, shard_bytes: int):
        self.out, self.shard_bytes = out, shard_bytes
        self.done: set[str] = set()  # keys fetched
        self.failed: dict[str, str] = {}  # key -> reason of its last failure
        self.shards_done: list[str] = []
        self.current: str | None = None  # open shard (name without .part)
        self.pos = 0
        self.count = 0
        self.next_index = 0
        self.f = None
        self.manifest = None
        self._resume()

    def _resume(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / MANIFEST
        lines: list[dict[str, Any]] = []
        good_bytes, rewrite = 0, False
        if path.exists():
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        if not raw.endswith(b"\n"):
                            raise ValueError("torn line")
                        lines.append(json.loads(raw))
                    except ValueError:
                        rewrite = True  # a line torn by a crash (the last one): dropped
                        break
                    good_bytes += len(raw)
        shard_end: dict[str, int] = {}
        shard_count: Counter = Counter()
        for e in lines:
            if "shard_done" in e:
                self.shards_done.append(e["shard_done"])
            elif e.get("ok"):
                shard_end[e["shard"]] = max(shard_end.get(e["shard"], 0), e["pos"] + e["size"])
                shard_count[e["shard"]] += 1
        names = sorted(set(shard_end) | set(self.shards_done))
        self.next_index = max((int(n[3:8]) + 1 for n in names), default=0)
        open_shards = [n for n in names if n not in self.shards_done]
        for name in open_shards:  # at most one in normal operation
            part, final = self.out / (name + ".part"), self.out / name
            if final.exists() and not part.exists():  # crashed between the rename and its manifest line
                self.shards_done.append(name)
                lines.append({"shard_done": name, "records": shard_count[name], "bytes": final.stat().st_size})
                rewrite = True
                continue
            have = part.stat().st_size if part.exists() else 0
            if have < shard_end[name]:  # bytes the manifest vouched for are gone (not flushed): fetch them again
                lines = [e for e in lines if not (e.get("ok") and e["shard"] == name and e["pos"] + e["size"] > have)]
                shard_end[name] = max([e["pos"] + e["size"] for e in lines if e.get("ok") and e["shard"] == name],
                                      default=0)
                rewrite = True
            if part.exists() and not shard_end[name]:
                part.unlink()
            elif part.exists():
                with open(part, "r+b") as f:
                    f.truncate(shard_end[name])
            if shard_end[name]:
                self.current, self.pos = name, shard_end[name]
                self.count = sum(1 for e in lines if e.get("ok") and e["shard"] == name)
        for e in lines:
            if "key" not in e:
                continue
            if e.get("ok"):
                self.done.add(e["key"])
                self.failed.pop(e["key"], None)
            elif e["key"] not in self.done:
                self.failed[e["key"]] = e.get("reason", "")
        if rewrite:
            from refinery.runs import atomic_write_text

            atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in lines))
        elif path.exists() and path.stat().st_size != good_bytes:
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
        self.manifest = open(path, "a", encoding="utf-8")
        if self.current:
            self.f = open(self.out / (self.current + ".part"), "ab")

    def _log(self, entry: dict[str, Any]) -> None:
        self.manifest.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.manifest.flush()

    def add(self, res: Fetched) -> None:
        rec = res.rec
        if res.data is None:
            self.failed[rec.key] = res.reason or "error"
            self._log({"key": rec.key, "ok": False, "url": rec.url, "reason": res.reason, "detail": res.detail,
                       "attempts": res.attempts})
            return
        if self.f is None:
            self.current, self.pos, self.count = shard_name(self.next_index), 0, 0
            self.next_index += 1
            self.f = open(self.out / (self.current + ".part"), "wb")
        self.f.write(res.data)
        self.f.flush()
        self._log({"key": rec.key, "ok": True, "url": rec.url, "shard": self.current, "pos": self.pos,
                   "size": len(res.data)})
        self.done.add(rec.key)
        self.failed.pop(rec.key, None)
        self.pos += len(res.data)
        self.count += 1
        if self.pos >= self.shard_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        if self.f is None:
            return
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        os.replace(self.out / (self.current + ".part"), self.out / self.current)
        self._log({"shard_done": self.current, "records": self.count, "bytes": self.pos})
        self.shards_done.append(self.current)
        self.current = None

    def close(self, finish: bool) -> None:
        """``finish``: close the open shard too (the run is complete); otherwise leave it for a resume."""
        if finish:
            self.close_shard()
        elif self.f is not None:
            self.f.close()
            self.f = None
        if self.manifest is not None:
            self.manifest.close()
            self.manifest = None


def fetch_cc(index: Iterable[str | Path], out: str | Path, cfg: FetchConfig | None = None, progress: bool = False,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Fetch every record of the index files into ``out`` (shards, ``manifest.ndjson``, ``fetch_stats.json``);
    re-running resumes. Returns the counts: ``fetched``/``failed`` this run (failures by reason), ``already_done``,
    ``previously_failed`` (skipped unless ``retry_failed``), ``duplicates``, ``filtered``, ``bad_index_lines``."""
    from refinery.progress import StepBar
    from refinery.runs import atomic_write_text

    cfg = cfg or FetchConfig()
    out = Path(out)
    writer = ShardWriter(out, int(cfg.shard_mb * (1 << 20)))
    fetcher = Fetcher(cfg, sleep)
    counts: Counter = Counter()
    failed_by: Counter = Counter()
    bad_samples: list[dict[str, str]] = []
    seen: set[str] = set()
    t0 = time.perf_counter()
    bar = StepBar(progress, None, 0, "fetch-cc", ("failed",))
    finished = False

    def handle(res: Fetched) -> None:
        writer.add(res)
        if res.data is None:
            counts["failed"] += 1
            failed_by[res.reason or "error"] += 1
        else:
            counts["fetched"] += 1
            counts["bytes"] += len(res.data)
        bar.update(counts["fetched"] + counts["failed"], {"failed": float(counts["failed"])})

    pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="fetch-cc")
    window: deque = deque()
    try:
        n = 0
        for item in read_index(index):
            if isinstance(item, BadIndexLine):
                counts["bad_index_lines"] += 1
                if len(bad_samples) < 20:
                    bad_samples.append({"where": item.where, "reason": item.reason})
                continue
            n += 1
            if cfg.limit is not None and n > cfg.limit:
                break
            if item.key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(item.key)
            if cfg.statuses is not None and item.status not in cfg.statuses:
                counts["filtered"] += 1
                continue
            if item.key in writer.done:
                counts["already_done"] += 1
                continue
            if item.key in writer.failed and not cfg.retry_failed:
                counts["previously_failed"] += 1
                continue
            window.append(pool.submit(fetcher.fetch, item))
            while len(window) >= 2 * cfg.concurrency:  # written in index order; memory bounded by the window
                handle(window.popleft().result())
        while window:
            handle(window.popleft().result())
        finished = True
    finally:
        for fut in window:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        writer.close(finish=finished)
        bar.close()
    stats = {"fetched": counts["fetched"], "failed": counts["failed"], "failed_by_reason": dict(failed_by),
             "already_done": counts["already_done"], "previously_failed": counts["previously_failed"],
             "duplicates": counts["duplicates"], "filtered": counts["filtered"],
             "bad_index_lines": counts["bad_index_lines"], "bad_index_samples": bad_samples,
             "bytes": counts["bytes"], "requests": fetcher.requests, "retries": fetcher.retried,
             "seconds": round(time.perf_counter() - t0, 3), "records_total": len(writer.done),
             "failed_total": len(writer.failed), "shards": sorted(writer.shards_done), "output": str(out)}
    atomic_write_text(out / STATS, json.dumps(stats, indent=1) + "\n")
    return stats


def manifest_entries(out: str | Path) -> list[dict[str, Any]]:
    """The manifest of a fetch directory (every fetched or failed record, every finished shard)."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]
