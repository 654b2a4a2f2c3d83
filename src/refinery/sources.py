"""Bring your own data: one reader for every wing's inputs (SFT examples, RL prompts, preference pairs and
ratings, eval problems).

A :class:`DataSource` names where records come from — a JSONL/JSON file (read here, with line numbers), a
Parquet/CSV/Arrow file or a folder of them, a directory written by ``datasets``' ``save_to_disk``, or a Hugging
Face hub dataset — which split, and a column mapping ``{field: column}`` that renames the dataset's columns to the
fields the wing reads. Every input field that took a JSONL path also takes a source; a plain string is shorthand
for ``{path: ...}``. ``datasets`` is imported only when a source needs it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from pydantic import Field, ValidationError, model_serializer, model_validator

from refinery.config import Section
from refinery.errors import DataError

# read here (no `datasets` needed): the formats today's loaders take, with line numbers in every error
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
# read through `datasets` (its packaged builders), by file suffix
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}


class DataSource(Section):
    """Where a wing's records come from and which column holds each field it reads."""

    path: str | None = Field(None, description="a JSONL/JSON/Parquet/CSV/Arrow file, a folder of such files "
                             "(splits from the file names, as datasets infers them) or a save_to_disk directory")
    hub: str | None = Field(None, description="a Hugging Face hub dataset, e.g. openai/gsm8k: "
                            "datasets.load_dataset(hub, subset, split=split) (needs access and the network, or "
                            "the datasets cache)")
    subset: str | None = Field(None, description="hub: the dataset's configuration (e.g. 'main' for gsm8k)")
    split: str | None = Field(None, description="which split (default: the only one; a single file is one split)")
    columns: dict[str, str] = Field(default_factory=dict, description="{field: column}: the wing's field (prompt, "
                                    "answer, response, chosen, ...) read from this column; 'a.b' reaches into a "
                                    "struct column; unmapped columns pass through under their own names")
    limit: int | None = Field(None, gt=0, description="first N rows only")
    name: str | None = Field(None, description="what the wing calls this source (RL: the task its items are "
                             "grouped and reported under); default: the file or folder name, or the hub name")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        return {"path": str(data)} if isinstance(data, (str, Path)) else data

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return self.plain_path if self.plain_path is not None else handler(self)

    @property
    def plain_path(self) -> str | None:
        """The path, when the source is nothing more (it is written back as that string, as recipes had it)."""
        bare = self.hub is None and not self.columns and self.split is None and self.limit is None and not self.name
        return self.path if bare else None

    @model_validator(mode="after")
    def _one_place(self) -> DataSource:
        if (self.path is None) == (self.hub is None):
            raise ValueError("a data source needs exactly one of path (a local file or folder) or hub (a hub "
                             "dataset name)")
        if self.subset is not None and self.hub is None:
            raise ValueError("subset is a hub dataset's configuration; a local source has none")
        return self

    def __str__(self) -> str:
        where = self.path if self.path is not None else f"hf:{self.hub}" + (f"/{self.subset}" if self.subset else "")
        return where + (f"[{self.split}]" if self.split else "")

    @property
    def label(self) -> str:
        """The default name: file stem (``a.b.jsonl`` -> ``a``), folder name, or the hub name's last part."""
        if self.name:
            return self.name
        if self.hub is not None:
            return self.hub.rstrip("/").rsplit("/", 1)[-1]
        return Path(self.path).name.split(".")[0] or str(self.path)

    @classmethod
    def from_cli(cls, data: str, split: str | None = None, subset: str | None = None,
                 columns: Iterable[str] = (), limit: int | None = None) -> DataSource:
        """``--data PATH`` or ``--data hf:NAME`` with ``--split``, ``--subset`` and ``--column field=column``."""
        mapping = {}
        for item in columns:
            field, sep, col = item.partition("=")
            if not sep or not field.strip() or not col.strip():
                raise DataError(f"--column {item!r}: expected FIELD=COLUMN, e.g. prompt=question")
            mapping[field.strip()] = col.strip()
        place = {"hub": data[3:]} if data.startswith("hf:") else {"path": data}
        try:
            return cls(**place, split=split, subset=subset, columns=mapping, limit=limit)
        except ValidationError as e:
            raise DataError(f"--data {data}: " + "; ".join(err["msg"] for err in e.errors())) from None


def as_source(value: str | Path | DataSource) -> DataSource:
    return value if isinstance(value, DataSource) else DataSource(path=str(value))


def own_reader_path(value: Any) -> str | None:
    """The path of a bare file that is not Parquet/CSV/Arrow, nor a folder (a JSONL file, a JSON list, a .gz, a
    missing path): the wings' own readers take it exactly as before, with their own messages. None for a source
    this module reads (columns, a split, a hub name, a dataset directory, a columnar file)."""
    path = value.plain_path if isinstance(value, DataSource) else str(value) if isinstance(value, (str, Path)) \
        else None
    if path is None or Path(path).is_dir() or Path(path).suffix.lower() in BUILDERS:
        return None
    return path


class Row(NamedTuple):
    """One record after the column mapping, and where it came from ("file:line" or "source row i")."""

    where: str
    record: dict[str, Any]


def read_rows(source: str | Path | DataSource, required: Sequence[str | tuple[str, ...]] = ()) -> list[Row]:
    """Every record of ``source`` with its columns mapped. ``required`` lists the fields a record needs (a tuple:
    any one of them); for a columnar source a missing one is an error before any row is read."""
    src = as_source(source)
    if src.hub is None and str(src.path).lower().endswith(JSON_SUFFIXES):
        return _json_rows(src)
    ds, where = _load_dataset(src)
    where += f"[{src.split}]" if src.split else ""
    cols = list(ds.column_names)
    for field, col in src.columns.items():
        if col.split(".", 1)[0] not in cols and col not in cols:
            raise DataError(f"column {col!r} (mapped to {field!r}) is not in {where}; its columns: "
                            f"{', '.join(cols)}")
    fields = (set(cols) - {c if c in cols else c.split(".", 1)[0] for c in src.columns.values()}) | set(src.columns)
    for need in required:
        options = need if isinstance(need, tuple) else (need,)
        if not fields & set(options):
            names = " or ".join(repr(o) for o in options)
            raise DataError(f"{where} has no column for {names}; its columns: {', '.join(cols)}. Map one in the "
                            f"source's columns, e.g. columns: {{{options[0]}: <column>}}")
    if src.limit is not None:
        ds = ds.select(range(min(src.limit, len(ds))))
    return [Row(f"{where} row {i}", _mapped(rec, src.columns, f"{where} row {i}", cols))
            for i, rec in enumerate(ds)]


def read_records(source: str | Path | DataSource, required: Sequence[str | tuple[str, ...]] = ()) -> list[dict]:
    """The records of :func:`read_rows` without their locations."""
    return [r.record for r in read_rows(source, required)]


def _mapped(rec: dict[str, Any], columns: dict[str, str], where: str, available: Iterable[str]) -> dict[str, Any]:
    if not columns:
        return dict(rec)
    used = {c if c in rec else c.split(".", 1)[0] for c in columns.values()}
    out = {k: v for k, v in rec.items() if k not in used}
    for field, col in columns.items():
        out[field] = _get(rec, col, field, where, available)
    return out


def _get(rec: dict[str, Any], col: str, field: str, where: str, available: Iterable[str]) -> Any:
    if col in rec:
        return rec[col]
    node: Any = rec
    for part in col.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"column {col!r} (mapped to {field!r}) is not in {where}; its columns: "
                            f"{', '.join(available)}")
        node = node[part]
    return node


def _json_rows(src: DataSource) -> list[Row]:
    """A JSONL file (or one JSON list), read without ``datasets``: errors name the line."""
    path = Path(src.path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON list ({e.msg} at line {e.lineno})") from None
        label = "item"
    else:
        items = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
        label = "line"
    rows = []
    for n, rec in items[: src.limit]:
        where = f"{path} {label} {n}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        rows.append(Row(where, _mapped(rec, src.columns, where, rec.keys())))
    return rows


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading this data source needs the 'datasets' package: pip install datasets (JSONL "
                        "files need nothing extra)") from None
    return datasets


def _load_dataset(src: DataSource):
    """(a ``datasets.Dataset`` of the chosen split, a label for errors)."""
    datasets = _datasets()
    if src.hub is not None:
        where = f"hub dataset {src.hub}" + (f" ({src.subset})" if src.subset else "")
        try:
            ds = datasets.load_dataset(src.hub, src.subset, split=src.split)
        except ValueError as e:  # an unknown split: datasets' message lists the available ones
            raise DataError(f"{where}: {e}") from None
        except (ConnectionError, OSError, FileNotFoundError) as e:
            raise DataError(f"{where} could not be loaded: {e}. It is neither in the datasets cache nor reachable: "
                            "check the name, your access (hf auth login) and the network (HF_DATASETS_OFFLINE=1 "
                            "reads the cache only)") from None
        except Exception as e:  # datasets' own errors (DatasetNotFoundError, gated repos) share no base class
            raise DataError(f"{where} could not be loaded: {type(e).__name__}: {e}") from None
        return _pick_split(ds, src.split, where), where
    path = Path(src.path)
    if not path.exists():
        raise DataError(f"data source {path} does not exist (a file, a folder of files or a save_to_disk "
                        "directory)")
    where = str(path)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        return _pick_split(ds, src.split, where), where
    if path.is_dir():
        try:
            ds = datasets.load_dataset(str(path))
        except Exception as e:
            raise DataError(f"{where}: not a folder of data files datasets can read ({type(e).__name__}: {e})") \
                from None
        return _pick_split(ds, src.split, where), where
    suffix = path.suffix.lower()
    if suffix not in BUILDERS:
        raise DataError(f"{path}: unknown data file type {suffix!r} (JSONL/JSON, Parquet, CSV/TSV or Arrow; or a "
                        "folder or save_to_disk directory)")
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    split = src.split or "train"  # a single file is one split, named as asked
    try:
        ds = datasets.load_dataset(BUILDERS[suffix], data_files={split: str(path)}, split=split, **kwargs)
    except Exception as e:
        raise DataError(f"{path}: could not be read as {BUILDERS[suffix]} ({type(e).__name__}: {e})") from None
    return ds, where


def _pick_split(ds, split: str | None, where: str):
    """The requested split of a DatasetDict (its only one when none is asked); a Dataset is its own split."""
    if hasattr(ds, "column_names") and not isinstance(ds.column_names, dict):  # one Dataset
        own = str(ds.split) if getattr(ds, "split", None) else None
        if split is not None and own is not None and split != own:
            raise DataError(f"{where} has no split {split!r}; its splits: {own}")
        return ds
    names = list(ds.keys())
    if split is None:
        if len(names) == 1:
            return ds[names[0]]
        raise DataError(f"{where} has splits {', '.join(names)}: choose one with split: NAME (--split NAME)")
    if split not in ds:
        raise DataError(f"{where} has no split {split!r}; its splits: {', '.join(names)}")
    return ds[split]
