"""Where a run's output lives: a local directory (``pathlib.Path``) or any fsspec URL (``s3://``, ``gs://``,
``file://``, ``memory://``), behind the small part of the ``pathlib`` API the data engine uses, so that Ray workers
on other machines write their shards straight to shared storage.

Writes are atomic either way: a temp file renamed into place locally; on object stores a file appears only when
its upload completes, and the temp name + move keeps the same protocol for every filesystem.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


class FsPath:
    """A location in an fsspec filesystem with the ``pathlib`` methods the engine calls (``/``, ``name``,
    ``parent``, ``exists``, ``mkdir``, ``open``, ``read_text``, ``write_text``, ``glob``, ``unlink``)."""

    def __init__(self, url: str, fs: Any = None, path: str | None = None):
        if fs is None:
            import fsspec

            fs, path = fsspec.core.url_to_fs(url)
        self.fs, self.path = fs, str(path).rstrip("/") or "/"

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: FsPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: str) -> FsPath:
        return FsPath("", self.fs, f"{self.path.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        n = self.name
        return n[n.rindex("."):] if "." in n.lstrip(".") else ""

    @property
    def parent(self) -> FsPath:
        return FsPath("", self.fs, self.path.rsplit("/", 1)[0] or "/")

    def with_name(self, name: str) -> FsPath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> FsPath:
        n = self.name
        return self.with_name((n[: -len(self.suffix)] if self.suffix else n) + suffix)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def open(self, mode: str = "r", encoding: str | None = "utf-8", **kw):
        if "b" in mode:
            return self.fs.open(self.path, mode)
        return self.fs.open(self.path, mode, encoding=encoding, **kw)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        self.fs.makedirs(self.parent.path, exist_ok=True)
        self.fs.pipe_file(self.path, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def glob(self, pattern: str) -> Iterator[FsPath]:
        """Files directly under this directory whose names match ``pattern`` (no recursion), sorted."""
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return iter(())
        names = sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return iter([self / n for n in names if fnmatch.fnmatch(n, pattern)])


Location = Path | FsPath


def location(path: str | Path | FsPath) -> Location:
    """A plain path stays a ``Path``; an fsspec URL (``scheme://``) becomes an :class:`FsPath`."""
    if isinstance(path, (Path, FsPath)):
        return path
    return FsPath(path) if "://" in str(path) else Path(path)


def replace(src: Location, dst: Location) -> None:
    """Move ``src`` onto ``dst`` (a finished temp file into place)."""
    if isinstance(src, FsPath):
        src.fs.mv(src.path, dst.path)
    else:
        os.replace(src, dst)


def rmtree(path: Location) -> None:
    """Remove a directory and everything under it; nothing if it is not there."""
    if isinstance(path, FsPath):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_text(path: Location, text: str) -> None:
    """Write a whole text file atomically (temp + rename locally, temp + move on an fsspec filesystem)."""
    if isinstance(path, FsPath):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        replace(tmp, path)
        return
    from refinery.runs import atomic_write_text as local

    local(path, text)
