"""Readers (WARC, JSONL, Parquet, directories of HTML) and writers (JSONL, Parquet), shard by shard.

A shard is one unit of work and of output: one input file, or a slice of the files of an HTML directory. Reading
never dies on one bad record: a record that cannot be read becomes a reject ``{"_reject": reason, ...}`` and the
rest of the file is still read (a truncated gzip/WARC ends its shard with one reject saying so).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from refinery.errors import DataError

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")


@dataclass(frozen=True)
class Shard:
    index: int
    kind: str  # warc | jsonl | parquet | html
    paths: tuple[str, ...]
    start: int = 0  # jsonl: first line (0-based) of this shard
    stop: int | None = None  # jsonl: line after the last one (None: to the end)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def detect_kind(path: Path) -> str:
    n = path.name.lower()
    if path.is_dir():
        return "html"
    if n.endswith(WARC_SUFFIXES):
        return "warc"
    if n.endswith((".jsonl", ".jsonl.gz", ".json")):
        return "jsonl"
    if n.endswith(".parquet"):
        return "parquet"
    if n.endswith(HTML_SUFFIXES):
        return "html"
    raise DataError(f"cannot tell the format of {path} (expected .warc[.gz], .jsonl[.gz], .parquet, .html or a "
                    "directory of HTML files)")


def _jsonl_shards(path: Path, first_index: int, lines_per_shard: int | None) -> list[Shard]:
    if not lines_per_shard or path.name.endswith(".gz") or path.suffix == ".json":
        return [Shard(first_index, "jsonl", (str(path),))]
    with open(path, "rb") as f:
        n = sum(1 for _ in f)
    return [Shard(first_index + k, "jsonl", (str(path),), start, min(start + lines_per_shard, n))
            for k, start in enumerate(range(0, max(n, 1), lines_per_shard))]


def plan_shards(inputs: list[str | Path], html_per_shard: int = 64,
                lines_per_shard: int | None = 10000) -> list[Shard]:
    """Input paths (files, directories, globs already expanded) → shards in a stable order. Shards bound the memory
    a worker needs: HTML directories by file count, plain JSONL files by line ranges."""
    shards: list[Shard] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"input {path} does not exist")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            html = [str(p) for p in files if p.name.lower().endswith(HTML_SUFFIXES)]
            # Inside a directory only data files count (no .json: metadata and configs sit next to pages).
            others = [p for p in files if p.name.lower().endswith(WARC_SUFFIXES + (".jsonl", ".jsonl.gz", ".parquet"))]
            for k in range(0, len(html), html_per_shard):
                shards.append(Shard(len(shards), "html", tuple(html[k: k + html_per_shard])))
            for p in others:
                kind = detect_kind(p)
                if kind == "jsonl":
                    shards += _jsonl_shards(p, len(shards), lines_per_shard)
                else:
                    shards.append(Shard(len(shards), kind, (str(p),)))
        elif detect_kind(path) == "jsonl":
            shards += _jsonl_shards(path, len(shards), lines_per_shard)
        else:
            shards.append(Shard(len(shards), detect_kind(path), (str(path),)))
    if not shards:
        raise DataError(f"no readable input in {', '.join(map(str, inputs))}")
    return shards


def read_shard(shard: Shard) -> Iterator[dict[str, Any]]:
    if shard.kind == "jsonl":
        yield from read_jsonl(shard.paths, shard.start, shard.stop)
        return
    reader = {"warc": read_warc, "parquet": read_parquet, "html": read_html_files}[shard.kind]
    yield from reader(shard.paths)


# ---- readers -------------------------------------------------------------------------------------------------
_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)


def decode_html(body: bytes, header_charset: str | None = None) -> str:
    """Bytes → text: the HTTP header's charset, else a ``<meta charset>``, else UTF-8 (undecodable bytes replaced)."""
    for cs in (header_charset, None):
        if cs is None:
            m = _CHARSET.search(body[:4096])
            cs = m.group(1).decode("ascii", "ignore") if m else None
        if cs:
            try:
                return body.decode(cs)
            except (LookupError, UnicodeDecodeError):
                continue
    return body.decode("utf-8", "replace")


def read_warc(paths: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """HTML responses of WARC files (FastWARC: gzip or plain detected, chunked and content encodings decoded) as
    ``{source, html, warc_record_id, warc_date}``. A broken record or a truncated file becomes a reject."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    for path in paths:
        n = 0
        try:
            it = ArchiveIterator(str(path), record_types=WarcRecordType.response, parse_http=True,
                                 auto_decode="all", quirks_mode=True, strict_mode=False)
            for rec in it:
                n += 1
                uri = rec.headers.get("WARC-Target-URI") or f"{path}#{n}"
                try:
                    ctype = (rec.http_content_type or "").lower()
                    if ctype and "html" not in ctype:
                        continue
                    body = rec.reader.read()
                    yield {"source": uri, "html": decode_html(body, rec.http_charset),
                           "warc_record_id": rec.record_id, "warc_date": rec.headers.get("WARC-Date")}
                except Exception as e:  # a broken record: reported, the next one is still read
                    yield {"source": uri, "_reject": "warc_record", "_detail": f"{type(e).__name__}: {e}"}
        except Exception as e:
            yield {"source": f"{path}#{n + 1}", "_reject": "warc_stream", "_detail": f"broken after {n} records: {e}"}


def dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer encoding (left as-is in some WARC payloads); tolerant of a missing tail."""
    out, i = bytearray(), 0
    while i < len(body):
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        try:
            size = int(body[i:j].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return body  # not chunked after all
        if size == 0:
            break
        out += body[j + 2: j + 2 + size]
        i = j + 2 + size + 2
    return bytes(out) if out else body


def read_jsonl(paths: tuple[str, ...], start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """JSON lines (``.jsonl[.gz]``), or a ``.json`` file holding one object or a list of objects."""
    for path in paths:
        if path.endswith(".json"):
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
            except json.JSONDecodeError as e:
                yield {"source": path, "_reject": "bad_json", "_detail": e.msg}
                continue
            for i, rec in enumerate(data if isinstance(data, list) else [data], 1):
                if isinstance(rec, dict):
                    rec.setdefault("source", f"{path}:{i}")
                    yield rec
                else:
                    yield {"source": f"{path}:{i}", "_reject": "not_an_object"}
            continue
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                if line_no <= start:
                    continue
                if stop is not None and line_no > stop:
                    break
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield {"source": f"{path}:{line_no}", "_reject": "bad_json", "_detail": e.msg}
                    continue
                if not isinstance(rec, dict):
                    yield {"source": f"{path}:{line_no}", "_reject": "not_an_object"}
                    continue
                rec.setdefault("source", f"{path}:{line_no}")
                yield rec


def read_parquet(paths: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path in paths:
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                row += 1
                rec.setdefault("source", f"{path}:{row}")
                yield rec


def read_html_files(paths: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            body = Path(path).read_bytes()
        except OSError as e:
            yield {"source": path, "_reject": "unreadable", "_detail": str(e)}
            continue
        yield {"source": path, "html": decode_html(body)}


# ---- writers -------------------------------------------------------------------------------------------------
def write_records(records: list[dict[str, Any]], path: Path, fmt: str) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(records) if records else pa.table({})
        pq.write_table(table, tmp)
    else:
        raise DataError(f"unknown output format {fmt!r} (jsonl or parquet)")
    os.replace(tmp, path)


def read_output(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
