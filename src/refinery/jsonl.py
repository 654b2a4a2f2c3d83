"""Reading JSONL files line by line, with the line number of every record and of every malformed line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from refinery.errors import DataError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, record, None)`` for each JSON line and ``(line_number, None, reason)`` for a malformed
    one; blank lines are skipped. A missing file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as e:
                yield lineno, None, f"malformed JSON: {e.msg}"
