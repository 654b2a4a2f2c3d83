"""Readers (WARC, JSONL, Parquet, directories of HTML) and writers (JSONL, Parquet), shard by shard.

A shard is one unit of work and of output: one input file, or a slice of the files of an HTML directory. Reading
never dies on one bad record: a record that cannot be read becomes a reject ``{"_reject": reason, ...}`` and the
rest of the file is still read (a truncated gzip/WARC ends its shard with one reject saying so). Pages are decoded
once (:func:`decode_page`) and lose their encoding declarations, so nothing downstream decodes them a second time.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from refinery.errors import DataError

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")


@dataclass(frozen=True)
class Shard:
    """One unit of work and of output: files, or a byte range / row-group range of one file.

    ``start``/``stop``: plain JSONL and WARC, a byte range ``[start, stop)`` (a line or WARC record belongs to the
    shard holding its first byte); Parquet, a row-group range; ``stop=None``: the whole file."""

    index: int
    kind: str  # warc | jsonl | parquet | html
    paths: tuple[str, ...]
    start: int = 0
    stop: int | None = None

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


DEFAULT_SHARD_BYTES = 64 << 20


def is_url(path: str | Path) -> bool:
    """Whether ``path`` names an fsspec location (``s3://``, ``gs://``, ``http(s)://``, ``memory://``, ``file://``)
    rather than a plain local path."""
    return "://" in str(path)


def url_fs(path: str | Path):
    """``(filesystem, path inside it)`` for a local path or any fsspec URL."""
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def open_input(path: str, mode: str = "rb"):
    """A binary file object for a local path or an fsspec URL (seekable where the filesystem is)."""
    if not is_url(path):
        return open(path, mode)
    fs, p = url_fs(path)
    return fs.open(p, mode)


def _size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, p = url_fs(path)
    return fs.size(p)


def detect_kind(path: Path | str) -> str:
    n = str(path).rsplit("/", 1)[-1].lower()
    if not is_url(path) and Path(path).is_dir():
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


def _ranges(bounds: list[int], size: int) -> list[tuple[int, int]]:
    bounds = sorted(set(b for b in bounds if 0 < b < size))
    edges = [0, *bounds, size]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _jsonl_bounds(path: str, size: int, shard_bytes: int) -> list[int]:
    """Fixed byte cuts: a reader skips the partial line it starts in, so no scan is needed."""
    return list(range(shard_bytes, size, shard_bytes))


_SCAN = 1 << 20


def _next_boundary(f, pos: int, size: int, is_start) -> int | None:
    """The first offset at or after ``pos`` where ``is_start(f, offset)`` holds, scanning forward in 1 MiB reads
    for candidates of the WARC record or gzip member start."""
    magic, back = is_start.magic, len(is_start.magic) - 1
    while pos < size:
        f.seek(max(pos - back, 0))
        chunk = f.read(_SCAN + back)
        if not chunk:
            return None
        base = max(pos - back, 0)
        i = chunk.find(magic)
        while i >= 0:
            cand = base + i + is_start.skip
            if cand >= pos and is_start(f, cand, size):
                return cand
            i = chunk.find(magic, i + 1)
        pos = base + len(chunk)
        if len(chunk) < _SCAN:
            return None
    return None


def _gzip_member_start(f, off: int, size: int) -> bool:
    """A gzip member starts at ``off`` and inflates to the start of a WARC record (a chance match of the magic
    bytes inside compressed data fails one test or the other)."""
    f.seek(off)
    data = f.read(1 << 16)
    try:
        head = zlib.decompressobj(31).decompress(data, 16)
    except zlib.error:
        return False
    return head.startswith(b"WARC/")


_gzip_member_start.magic, _gzip_member_start.skip = b"\x1f\x8b\x08", 0  # type: ignore[attr-defined]


def _warc_record_start(f, off: int, size: int) -> bool:
    """A WARC record starts at ``off``: its header parses, and its Content-Length lands on the next record (or
    the end of the file), so a payload quoting a WARC header is not taken for one."""
    f.seek(off)
    head = f.read(1 << 16)
    end = head.find(b"\r\n\r\n")
    if not head.startswith(b"WARC/") or end < 0:
        return False
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head[:end], re.I)
    if not m:
        return False
    nxt = off + end + 4 + int(m.group(1)) + 4  # payload, then the record's closing CRLF CRLF
    if nxt >= size:
        return nxt - 4 <= size
    f.seek(nxt)
    return f.read(5) == b"WARC/"


_warc_record_start.magic, _warc_record_start.skip = b"\r\n\r\nWARC/", 4  # type: ignore[attr-defined]


def _warc_bounds(path: str, size: int, shard_bytes: int) -> list[int]:
    """Record starts near every ``shard_bytes`` cut: gzip member starts for ``.warc.gz`` (one record per member,
    as Common Crawl writes them), record headers for plain ``.warc``. A ``.warc.gz`` that is one gzip stream has
    no member to start at: it stays one shard."""
    test = _gzip_member_start if path.lower().endswith(".gz") else _warc_record_start
    out: list[int] = []
    with open_input(path) as f:
        for cut in range(shard_bytes, size, shard_bytes):
            if out and out[-1] >= cut:
                continue
            b = _next_boundary(f, cut, size, test)
            if b is None:
                break
            out.append(b)
    return out


def _parquet_groups(path: str, shard_bytes: int) -> list[tuple[int, int]] | None:
    """Consecutive row groups of about ``shard_bytes`` (compressed) each; None when the footer cannot be read (the
    reader then reports the file)."""
    import pyarrow.parquet as pq

    try:
        with open_input(path) as f:
            md = pq.ParquetFile(f).metadata
    except Exception:
        return None
    out, first, acc = [], 0, 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        acc += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)) or rg.total_byte_size
        if acc >= shard_bytes:
            out.append((first, i + 1))
            first, acc = i + 1, 0
    if first < md.num_row_groups or not out:
        out.append((first, md.num_row_groups))
    return out


def _file_shards(path: str, kind: str, first_index: int, shard_bytes: int | None) -> list[Shard]:
    """One file → its shards: plain JSONL and WARC by byte range, Parquet by row groups. ``.jsonl.gz`` and ``.json``
    cannot be cut (gzip has no seek points; a JSON array is one value): they are one shard each, as are ``.arc``
    files and a ``.warc.gz`` that is a single gzip stream."""
    low = path.lower()
    whole = [Shard(first_index, kind, (path,))]
    if not shard_bytes or kind == "html":
        return whole
    if kind == "parquet":
        groups = _parquet_groups(path, shard_bytes)
        if not groups or len(groups) == 1:
            return whole
        return [Shard(first_index + k, kind, (path,), a, b) for k, (a, b) in enumerate(groups)]
    if kind == "jsonl" and (low.endswith(".gz") or low.endswith(".json")):
        return whole
    if kind == "warc" and low.endswith((".arc", ".arc.gz")):
        return whole
    size = _size(path)
    if size <= shard_bytes:
        return whole
    bounds = (_jsonl_bounds if kind == "jsonl" else _warc_bounds)(path, size, shard_bytes)
    return [Shard(first_index + k, kind, (path,), a, b) for k, (a, b) in enumerate(_ranges(bounds, size))]


def _list_dir(path: str) -> list[str]:
    """Every file under a directory (local or fsspec URL), sorted, as paths/URLs the readers open."""
    if not is_url(path):
        return sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    fs, p = url_fs(path)
    return sorted(fs.unstrip_protocol(f) for f in fs.find(p))


def _exists(path: str) -> tuple[bool, bool]:
    """``(exists, is a directory)`` for a local path or URL."""
    if not is_url(path):
        return Path(path).exists(), Path(path).is_dir()
    fs, p = url_fs(path)
    if str(path).startswith(("http://", "https://")):  # HTTP has no directories; a URL is a file
        return True, False
    return fs.exists(p), fs.isdir(p)


def plan_shards(inputs: list[str | Path], html_per_shard: int = 64,
                shard_bytes: int | None = DEFAULT_SHARD_BYTES) -> list[Shard]:
    """Input paths or fsspec URLs (files, directories, globs already expanded) → shards in a stable order: HTML
    directories by file count, plain JSONL and WARC files by byte range (WARC cut at record / gzip member starts),
    Parquet by row groups, of about ``shard_bytes`` each (None: one shard per file). Planning reads no more than
    a Parquet footer and a few KiB around each WARC cut; workers seek to their range and stream it."""
    shards: list[Shard] = []
    for raw in inputs:
        path = str(raw)
        exists, is_dir = _exists(path)
        if not exists:
            raise DataError(f"input {path} does not exist")
        if is_dir:
            files = _list_dir(path)
            html = [p for p in files if p.lower().endswith(HTML_SUFFIXES)]
            # Inside a directory only data files count (no .json: metadata and configs sit next to pages).
            others = [p for p in files if p.lower().endswith(WARC_SUFFIXES + (".jsonl", ".jsonl.gz", ".parquet"))]
            for k in range(0, len(html), html_per_shard):
                shards.append(Shard(len(shards), "html", tuple(html[k: k + html_per_shard])))
            for p in others:
                shards += _file_shards(p, detect_kind(p), len(shards), shard_bytes)
        else:
            shards += _file_shards(path, detect_kind(path), len(shards), shard_bytes)
    if not shards:
        raise DataError(f"no readable input in {', '.join(map(str, inputs))}")
    return shards


def read_shard(shard: Shard) -> Iterator[dict[str, Any]]:
    if shard.kind == "jsonl":
        yield from read_jsonl(shard.paths, shard.start, shard.stop)
        return
    if shard.kind == "warc":  # every record counted: non-responses come as rejects
        yield from read_warc(shard.paths, every_record=True, start=shard.start, stop=shard.stop)
        return
    if shard.kind == "parquet":
        yield from read_parquet(shard.paths, shard.start, shard.stop)
        return
    yield from read_html_files(shard.paths)


# ---- decoding ------------------------------------------------------------------------------------------------
# WHATWG label → the Python codec that decodes what browsers decode for it (the supersets pages really use).
_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "gb_2312-80": "gb18030", "chinese": "gb18030",
            "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "l1": "cp1252",
            "us-ascii": "cp1252", "ascii": "cp1252", "ansi_x3.4-1968": "cp1252", "iso_8859-1": "cp1252",
            "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "ms_kanji": "cp932",
            "windows-31j": "cp932", "csshiftjis": "cp932", "euc-kr": "cp949", "euc_kr": "cp949", "windows-949": "cp949",
            "ks_c_5601-1987": "cp949", "ksc5601": "cp949", "korean": "cp949", "big5": "big5hkscs",
            "tis-620": "cp874", "iso-8859-11": "cp874", "iso-8859-9": "cp1254", "latin5": "cp1254",
            "x-mac-roman": "mac_roman", "utf8": "utf-8", "unicode-1-1-utf-8": "utf-8"}
# A detector's near-ties are broken by how common an encoding is on the web (charset-normalizer alone calls short
# German text cp1257 and Shift_JIS cp949).
_WEB_PRIOR = ("utf_8", "ascii", "cp1252", "cp1251", "gb18030", "cp932", "cp949", "big5", "euc_jp", "cp1250",
              "cp1256", "cp1254", "cp1253", "cp1255", "cp874", "koi8_r", "iso8859_2", "cp1257", "iso8859_15")
_DETECT_MARGIN = 0.04  # chaos difference within which the more common encoding wins
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_XML_DECL = re.compile(rb"""^\s*<\?xml\s[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:\-]+)["']""", re.I)
_META = re.compile(rb"""<meta\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.I)
_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
_CHARSET_IN_CONTENT = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9._:\-]+)""", re.I)
_HEAD_END = re.compile(rb"</head\s*>|<body[\s>]", re.I)
_COMMENT = re.compile(rb"<!--.*?(?:-->|$)", re.S)
_HEAD_SCAN_CAP = 1 << 20  # without </head> or <body>, declarations are looked for in the first MiB


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str  # the Python codec that decoded the bytes
    source: str  # bom | utf8 | http | xml | meta | detected | default (UTF-8, undecodable bytes replaced)


def codec_for(label: str | None) -> str | None:
    """A charset label (HTTP, XML or ``<meta>``) → a Python codec, or None when it names nothing known."""
    import codecs

    if not label:
        return None
    name = _ALIASES.get(label.strip().lower(), label.strip().lower())
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _strict(body: bytes, codec: str) -> str | None:
    try:
        return body.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def declared_charsets(body: bytes) -> list[tuple[str, str]]:
    """``[(source, label)]`` from the XML declaration and every ``<meta charset>`` / ``http-equiv`` Content-Type in
    the head (all of it, comments skipped: not only the first 4 KB)."""
    out = []
    m = _XML_DECL.match(body[:1024])
    if m:
        out.append(("xml", m.group(1).decode("ascii", "ignore")))
    end = _HEAD_END.search(body)
    head = _COMMENT.sub(b"", body[: end.start() if end else _HEAD_SCAN_CAP])
    for tag in _META.finditer(head):
        label = meta_charset(tag.group(0).decode("latin-1"))
        if label:
            out.append(("meta", label))
    return out


def meta_charset(tag: str) -> str | None:
    """The charset a ``<meta …>`` tag declares (``charset=…``, or ``http-equiv=Content-Type`` with a charset in
    its ``content``), else None."""
    attrs = {}
    for m in _ATTR.finditer(tag[5:].rstrip(">/")):
        attrs.setdefault(m.group(1).lower(), (m.group(2) or "").strip("\"'").strip())
    if attrs.get("charset"):
        return attrs["charset"]
    if attrs.get("http-equiv", "").lower() == "content-type":
        m = _CHARSET_IN_CONTENT.search(attrs.get("content", ""))
        return m.group(1) if m else None
    return None


def detect_encoding(body: bytes) -> str | None:
    """charset-normalizer's guess (near-ties go to the more common web encoding); None when it has none."""
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        return None
    matches = list(from_bytes(body[: 1 << 18]))
    if not matches:
        return None
    best = min(m.chaos for m in matches)
    close = [m for m in matches if m.chaos <= best + _DETECT_MARGIN]

    prior = [codec_for(n) for n in _WEB_PRIOR]

    def rank(m):
        name = codec_for(m.encoding)
        return (prior.index(name) if name in prior else len(prior), m.chaos)

    return codec_for(min(close, key=rank).encoding)


def decode_page(body: bytes, http_charset: str | None = None, html: bool = True) -> Decoded:
    """Bytes → text, decided once, in this order: a byte-order mark; the HTTP Content-Type charset; (HTML) the XML
    declaration; (HTML) ``<meta charset>`` / ``http-equiv`` anywhere in the head; charset detection; UTF-8 with
    undecodable bytes replaced. A declaration is checked against the bytes: one they do not decode under is a lie
    and the next rule decides, and bytes that are valid UTF-8 with non-ASCII in them are UTF-8 whatever a legacy
    declaration says (re-encoded pages keep their old ``<meta>``; the reverse is all but impossible by chance)."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return Decoded(body[len(bom):].decode(codec, "replace"), codec, "bom")
    utf8 = _strict(body, "utf-8")
    if utf8 is not None and not body.isascii():
        return Decoded(utf8, "utf-8", "utf8")
    declared = [("http", http_charset)] if http_charset else []
    if html:
        declared += declared_charsets(body)
    for source, label in declared:
        codec = codec_for(label)
        if codec and codec.startswith(("utf-16", "utf-32")) and (source != "http" or b"\x00" not in body[:4096]):
            codec = "utf-8"  # a declaration readable as ASCII, or bytes without NULs, are not UTF-16 (WHATWG)
        text = _strict(body, codec) if codec else None
        if text is not None:
            return Decoded(text, codec, source)
    if utf8 is not None:  # pure ASCII
        return Decoded(utf8, "utf-8", "utf8")
    codec = detect_encoding(body)
    text = _strict(body, codec) if codec else None
    if text is not None:
        return Decoded(text, codec, "detected")
    return Decoded(body.decode("utf-8", "replace"), "utf-8", "default")


_XML_DECL_STR = re.compile(r"""^\ufeff?\s*<\?xml\s[^>]*\?>""", re.I)
_META_STR = re.compile(r"""<meta\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.I)


def remove_encoding_declarations(html: str) -> str:
    """Drop the XML declaration and every ``<meta charset>`` / ``http-equiv`` Content-Type: the text is already
    decoded, and a renderer (lynx) or parser (lxml) that reads a declaration would decode it a second time."""
    if not html:
        return html
    html = _XML_DECL_STR.sub("", html, count=1).lstrip("\ufeff")
    if "charset" not in html[:_HEAD_SCAN_CAP].lower():
        return html

    return _META_STR.sub(lambda m: "" if meta_charset(m.group(0)) else m.group(0), html)


def decode_html(body: bytes, header_charset: str | None = None) -> str:
    """HTML bytes → text (:func:`decode_page`), its encoding declarations removed."""
    return remove_encoding_declarations(decode_page(body, header_charset).text)


# ---- readers -------------------------------------------------------------------------------------------------
PAGE_FORMATS = ("html", "text", "tex", "ipynb")
_TEX_MIME = {"application/x-tex", "text/x-tex", "application/x-latex", "text/x-latex", "text/tex", "text/latex"}
_LOOSE_MIME = {"", "text/plain", "application/octet-stream", "binary/octet-stream", "application/json",
               "application/x-ipynb+json", "application/download", "application/force-download"} | _TEX_MIME
_HTML_START = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>])", re.I | re.S)


def page_format(mime: str, url: str = "", head: bytes = b"") -> str | None:
    """What a payload is, from its MIME type, its URL's suffix (servers label ``.tex`` and ``.ipynb`` files loosely)
    and its first bytes: ``html``, ``text``, ``tex``, ``ipynb``, or None (not a page we extract: PDF, images, …)."""
    mime = (mime or "").split(";")[0].strip().lower()
    path = urlparse(url).path.lower() if url else ""
    if "html" in mime:
        return "html"
    if mime == "application/x-ipynb+json" or (path.endswith(".ipynb") and mime in _LOOSE_MIME):
        return "ipynb"
    if mime in _TEX_MIME or (path.endswith((".tex", ".latex", ".ltx")) and mime in _LOOSE_MIME):
        return "tex"
    if mime in ("", "text/plain", "application/octet-stream") and _HTML_START.match(head[:4096]):
        return "html"  # mislabelled HTML
    if mime == "text/plain":
        return "text"
    return None


def content_type_reason(mime: str) -> str:
    """``unsupported_content_type:<mime>`` with the MIME type cut to something a counter can key on."""
    m = re.sub(r"[^a-z0-9.+/_-]", "", (mime or "").split(";")[0].strip().lower())[:60]
    return f"unsupported_content_type:{m or 'unknown'}"


_WARC_TYPES: list[tuple[Any, str]] = []  # FastWARC's record types are not hashable


def _warc_type(rec) -> str:
    from fastwarc.warc import WarcRecordType

    if not _WARC_TYPES:
        _WARC_TYPES.extend((getattr(WarcRecordType, n), n) for n in (
            "response", "request", "metadata", "resource", "warcinfo", "revisit", "conversion", "continuation"))
    return next((name for t, name in _WARC_TYPES if rec.record_type == t), "unknown")


class _Range(io.RawIOBase):
    """The bytes ``[start, stop)`` of a seekable binary file as a seekable stream of its own (positions relative to
    ``start``): a WARC shard's records."""

    def __init__(self, f, start: int, stop: int | None):
        self.f, self.start, self.pos = f, start, 0
        self.size = None if stop is None else stop - start
        f.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            if self.size is None:
                self.size = self.f.seek(0, 2) - self.start
            offset += self.size
        elif whence == 1:
            offset += self.pos
        self.pos = max(0, offset if self.size is None else min(offset, self.size))
        self.f.seek(self.start + self.pos)
        return self.pos

    def readinto(self, buf) -> int:
        n = len(buf) if self.size is None else max(0, min(len(buf), self.size - self.pos))
        data = self.f.read(n) if n else b""
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def read_warc(paths: tuple[str, ...], every_record: bool = False, start: int = 0,
              stop: int | None = None) -> Iterator[dict[str, Any]]:
    """The pages of WARC files (FastWARC: gzip or plain detected, chunked and content encodings decoded): every
    ``response`` (and ``resource``) record as ``{source, warc_record_id, warc_date, http_status, content_type,
    format}`` plus, for a page format (:func:`page_format`), its decoded payload — ``html`` (HTML/XHTML, encoding
    declarations removed) or ``body`` (plain text, LaTeX, a notebook's JSON) — with ``encoding`` and
    ``encoding_source`` (:func:`decode_page`). Other payloads (PDF, images) come without a body for a stage to
    reject by content type. With ``every_record`` the other records (request, metadata, warcinfo, revisit) come
    too, as ``not_a_response`` rejects, so that every record of the file is counted. A broken record or a truncated
    file becomes a reject. ``start``/``stop``: only the records in that byte range (a shard: they start at a
    record or gzip member boundary, :func:`plan_shards`), one at a time."""
    from fastwarc.warc import ArchiveIterator

    ranged = start > 0 or stop is not None
    for path in paths:
        n, f = 0, None
        try:
            if ranged or is_url(path):
                f = open_input(path)
                stream: Any = io.BufferedReader(_Range(f, start, stop), 1 << 20) if ranged else f
            else:
                f, stream = None, str(path)  # FastWARC's own file stream
            it = ArchiveIterator(stream, parse_http=True, auto_decode="all", quirks_mode=True, strict_mode=False)
            for rec in it:
                n += 1
                where = f"{path}@{start + rec.stream_pos}" if ranged else f"{path}#{n}"
                uri = rec.headers.get("WARC-Target-URI") or where
                kind = _warc_type(rec)
                if kind not in ("response", "resource"):
                    if every_record:
                        yield {"source": uri, "_reject": "not_a_response", "_detail": f"WARC-Type {kind}",
                               "warc_record_id": rec.record_id}
                    continue
                try:
                    yield _warc_page(rec, kind, uri)
                except Exception as e:  # a broken record: reported, the next one is still read
                    yield {"source": uri, "_reject": "warc_record", "_detail": f"{type(e).__name__}: {e}"}
        except Exception as e:
            yield {"source": f"{path}#{n + 1}", "_reject": "warc_stream", "_detail": f"broken after {n} records: {e}"}
        finally:
            if f is not None:
                f.close()


def _warc_page(rec, kind: str, uri: str) -> dict[str, Any]:
    out: dict[str, Any] = {"source": uri, "warc_record_id": rec.record_id, "warc_date": rec.headers.get("WARC-Date")}
    if kind == "response":
        http = rec.http_headers
        if http is None:
            raise DataError("response record without HTTP headers")
        out["http_status"] = http.status_code
        ctype = http.get("Content-Type") or ""
    else:  # a resource record holds the file itself
        ctype = rec.headers.get("Content-Type") or ""
    charset = _CHARSET_IN_CONTENT.search(ctype)
    body = rec.reader.read()
    fmt = page_format(ctype, uri, body[:4096])
    out.update(content_type=ctype.split(";")[0].strip().lower(), format=fmt)
    if fmt is None:
        return out
    dec = decode_page(body, charset.group(1) if charset else None, html=fmt == "html")
    if fmt == "html":
        out["html"] = remove_encoding_declarations(dec.text)
    else:
        out["body"] = dec.text
    out.update(encoding=dec.encoding, encoding_source=dec.source)
    return out


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


def _jsonl_lines(f, start: int, stop: int | None) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of the lines that start in ``[start, stop)`` of a binary file: the line that holds
    byte ``start`` belongs to the shard before (unless ``start`` opens it); the last one is read to its end."""
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":
            f.readline()  # the rest of a line the previous shard reads
    pos = f.tell()
    while stop is None or pos < stop:
        line = f.readline()
        if not line:
            return
        yield pos, line
        pos += len(line)


def read_jsonl(paths: tuple[str, ...], start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """JSON lines (``.jsonl[.gz]``), or a ``.json`` file holding one object or a list of objects; local paths or
    fsspec URLs. ``start``/``stop``: the lines that start in that byte range of a plain ``.jsonl`` (a shard;
    :func:`plan_shards`), read by seeking, never from line 1. A record without ``source`` gets ``path:LINE`` in a
    whole file, ``path@BYTE`` (the line's byte offset) in a byte-range shard, where line numbers are unknown."""
    for path in paths:
        if path.endswith(".json"):
            try:
                with open_input(path) as fh:
                    data = json.loads(fh.read().decode("utf-8", errors="replace"))
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
        ranged = start > 0 or stop is not None
        line_no = 0
        try:
            with open_input(path) as raw:
                f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
                lines = _jsonl_lines(f, start, stop) if ranged else ((0, x) for x in f)
                for line_no, (pos, line) in enumerate(lines, 1):
                    where = f"{path}@{pos}" if ranged else f"{path}:{line_no}"
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line.decode("utf-8", errors="replace"))
                    except json.JSONDecodeError as e:
                        yield {"source": where, "_reject": "bad_json", "_detail": e.msg}
                        continue
                    if not isinstance(rec, dict):
                        yield {"source": where, "_reject": "not_an_object"}
                        continue
                    rec.setdefault("source", where)
                    yield rec
        except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip: what was read is kept
            yield _broken_file(path, line_no, e)


def _broken_file(path: str, n: int, e: Exception) -> dict[str, Any]:
    """The reject that ends a file which cannot be read to its end (truncated or corrupt compression, a damaged
    Parquet footer or row group): ``truncated_input`` or ``corrupt_input``."""
    reason = "truncated_input" if isinstance(e, EOFError) or "truncat" in str(e).lower() else "corrupt_input"
    return {"source": f"{path}#{n + 1}", "_reject": reason,
            "_detail": f"unreadable after {n} lines/rows: {type(e).__name__}: {e}"}


def read_parquet(paths: tuple[str, ...], start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Parquet rows in batches of 1024 (local or fsspec URLs); ``start``/``stop``: only those row groups (a shard)."""
    import pyarrow.parquet as pq

    for path in paths:
        row = 0
        try:
            with open_input(path) as f:
                pf = pq.ParquetFile(f)
                groups = None
                if start or stop is not None:
                    groups = list(range(start, pf.metadata.num_row_groups if stop is None else stop))
                    row = sum(pf.metadata.row_group(i).num_rows for i in range(start))
                for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
                    for rec in batch.to_pylist(maps_as_pydicts="lossy"):
                        row += 1
                        rec.setdefault("source", f"{path}:{row}")
                        yield rec
        except (OSError, ValueError, EOFError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError OSError
            yield _broken_file(path, row, e)


def read_html_files(paths: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            with open_input(path) as f:
                body = f.read()
        except OSError as e:
            yield {"source": path, "_reject": "unreadable", "_detail": str(e)}
            continue
        dec = decode_page(body)
        yield {"source": path, "html": remove_encoding_declarations(dec.text), "encoding": dec.encoding,
               "encoding_source": dec.source}


# ---- writers ------------------------------------------------------------------------------------------------
# Types of the fields the readers produce (used for a field when it is present in the output).
READER_TYPES: dict[str, str] = {
    "source": "string", "warc_record_id": "string", "warc_date": "string", "http_status": "int64",
    "content_type": "string", "format": "string", "html": "string", "body": "string", "encoding": "string",
    "encoding_source": "string", "_row": "string"}
JSON = "json"  # a declared/resolved type: the value is stored as its JSON text (a string column)
_SCALARS = {"string": "string", "str": "string", "int64": "int64", "int": "int64", "int32": "int32",
            "float64": "float64", "float": "float64", "double": "float64", "float32": "float32", "bool": "bool",
            "binary": "binary", "null": "null"}


def arrow_type(spec: str):
    """A declared type (``string``, ``int64``, ``float64``, ``bool``, ``list<T>``, ``map<K,V>``) → a pyarrow
    type (``json`` stays a string column holding JSON text)."""
    import pyarrow as pa

    t = spec.strip().lower()
    if t == JSON:
        return pa.string()
    if t in _SCALARS:
        return getattr(pa, _SCALARS[t])()
    if t.startswith("list<") and t.endswith(">"):
        return pa.list_(arrow_type(t[5:-1]))
    if t.startswith("map<") and t.endswith(">"):
        inner, depth = t[4:-1], 0
        for k, ch in enumerate(inner):
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "," and depth == 0:
                return pa.map_(arrow_type(inner[:k]), arrow_type(inner[k + 1:]))
    raise DataError(f"unknown field type {spec!r} (string, int64, float64, bool, binary, json, list<T>, map<K,V>)")


def type_name(t) -> str:
    """A pyarrow type in the declared notation (``float64``, ``list<string>``, ``map<string,int64>``)."""
    import pyarrow as pa

    if pa.types.is_map(t):
        return f"map<{type_name(t.key_type)},{type_name(t.item_type)}>"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    return {"double": "float64", "float": "float32"}.get(str(t), str(t))


def _unwritable(t) -> bool:
    """Types Parquet cannot store (a struct without fields, as inferred from ``{}``), anywhere inside ``t``."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(_unwritable(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _unwritable(t.value_type)
    if pa.types.is_map(t):
        return _unwritable(t.key_type) or _unwritable(t.item_type)
    return False


def infer_types(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per field (in order of first appearance), the arrow type its values infer to, or ``json`` where they do
    not infer to one type (mixed types)."""
    import pyarrow as pa

    fields: dict[str, None] = {}
    for r in records:
        fields.update(dict.fromkeys(r))
    out: dict[str, Any] = {}
    for f in fields:
        try:
            t = pa.array([r.get(f) for r in records]).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            out[f] = JSON
            continue
        out[f] = t  # may be unwritable (``{}`` → an empty struct): a declaration or the resolution decides
    return out


def encode_types(types: dict[str, Any]) -> dict[str, Any]:
    """Inferred types → something JSON can carry (``{"json": [...], "arrow": base64 IPC schema}``)."""
    import base64

    import pyarrow as pa

    schema = pa.schema([pa.field(f, t) for f, t in types.items() if t != JSON])
    return {"order": list(types), "json": [f for f, t in types.items() if t == JSON],
            "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode()}


def decode_types(enc: dict[str, Any]) -> dict[str, Any]:
    import base64

    import pyarrow as pa

    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(enc["arrow"])))
    by = {f.name: f.type for f in schema}
    return {f: (JSON if f in enc["json"] else by[f]) for f in enc["order"]}


def resolve_schema(declared: dict[str, str], observed: list[dict[str, Any]]) -> tuple[Any, list[str], list[str]]:
    """One schema for a whole output: a field seen in any shard gets its declared type, else the types its shards
    inferred, unified (null → anything, int → float). Returns ``(schema, json_fields, mismatched)``: fields whose
    values only fit as JSON text, and declared fields whose values did not fit the declaration (stored as JSON)."""
    import pyarrow as pa

    order: dict[str, None] = {}
    for obs in observed:
        order.update(dict.fromkeys(obs))
    fields, json_fields, mismatched = [], [], []
    for f in order:
        types = [obs[f] for obs in observed if f in obs]
        t = None
        if JSON not in types:
            try:
                t = pa.unify_schemas([pa.schema([pa.field(f, x)]) for x in types],
                                     promote_options="permissive").field(f).type
            except (pa.ArrowException, TypeError, ValueError):
                t = None
        if f in declared:
            want = arrow_type(declared[f])
            ok = declared[f] != JSON and JSON not in types and all(pa.types.is_null(x) or _fits(x, want)
                                                                   for x in types)
            if declared[f] == JSON or not ok:
                json_fields.append(f)
                if declared[f] != JSON:
                    mismatched.append(f)
            fields.append(pa.field(f, want if ok else pa.string()))
        elif t is None or _unwritable(t):
            json_fields.append(f)
            fields.append(pa.field(f, pa.string()))
        else:
            fields.append(pa.field(f, t))
    return pa.schema(fields), json_fields, mismatched


def _fits(observed, declared) -> bool:
    """Whether values inferred as ``observed`` convert to ``declared`` without loss of meaning."""
    import pyarrow as pa

    if observed == declared:
        return True
    if pa.types.is_integer(observed) and (pa.types.is_integer(declared) or pa.types.is_floating(declared)):
        return True
    if pa.types.is_floating(observed) and pa.types.is_floating(declared):
        return True
    if pa.types.is_struct(observed) and pa.types.is_map(declared):  # dicts inferred as structs → a map
        return all(_fits(observed.field(i).type, declared.item_type) or pa.types.is_null(observed.field(i).type)
                   for i in range(observed.num_fields))
    if pa.types.is_list(observed) and pa.types.is_list(declared):
        return pa.types.is_null(observed.value_type) or _fits(observed.value_type, declared.value_type)
    return False


def _json_text(records: list[dict[str, Any]], json_fields) -> list[dict[str, Any]]:
    if not json_fields:
        return records
    jf = set(json_fields)
    return [{k: (json.dumps(v, ensure_ascii=False, default=str) if k in jf and v is not None else v)
             for k, v in r.items()} for r in records]


class JsonlWriter:
    """Records appended to a JSONL file as they come (bounded memory), made visible atomically by ``close``
    (temp file + rename; local paths or fsspec URLs). ``abort`` drops the temp file."""

    def __init__(self, path):
        from refinery.data.store import location

        self.path = location(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = self.tmp.open("w", encoding="utf-8")
        self.n = 0

    def write(self, records) -> None:
        for r in records:
            self.f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            self.n += 1

    def close(self) -> None:
        from refinery.data.store import replace

        self.f.close()
        replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def write_records(records: list[dict[str, Any]], path, fmt: str, schema=None,
                  json_fields: tuple[str, ...] | list[str] = ()) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a shard. Parquet is written under
    ``schema`` when one is given (``json_fields`` stored as their JSON text), else inferred from the records."""
    from refinery.data.store import location

    path = location(path)
    if fmt == "jsonl":
        w = JsonlWriter(path)
        w.write(records)
        w.close()
    elif fmt == "parquet":
        write_parquet([records], path, schema, json_fields)
    else:
        raise DataError(f"unknown output format {fmt!r} (jsonl or parquet)")


def write_parquet(batches, path, schema=None, json_fields: tuple[str, ...] | list[str] = ()) -> None:
    """Batches of records → one Parquet file, atomically, one row group per batch as they come (a shard's output
    is never held whole). Without ``schema`` the first batch's inferred schema is used (a one-batch write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from refinery.data.store import location, replace

    path = location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    with tmp.open("wb") as f:
        for records in batches:
            records = _json_text(records, json_fields)
            if schema is not None:
                table = pa.Table.from_pylist(records, schema=schema)
            else:
                table = pa.Table.from_pylist(records) if records else pa.table({})
            if writer is None:
                writer = pq.ParquetWriter(f, table.schema)
            if table.num_rows:
                writer.write_table(table)
        if writer is None:
            writer = pq.ParquetWriter(f, schema if schema is not None else pa.schema([]))
        writer.close()
    replace(tmp, path)


def iter_output(path, chunk: int = 1024) -> Iterator[dict[str, Any]]:
    """Records of one output or work file, streamed (Parquet maps come back as dicts, as they were written)."""
    from refinery.data.store import location

    path = location(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with path.open("rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk):
                yield from batch.to_pylist(maps_as_pydicts="lossy")
        return
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_output(path) -> list[dict[str, Any]]:
    """Records of one output or work file (Parquet maps come back as dicts, as they were written)."""
    return list(iter_output(path))
