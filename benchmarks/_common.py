"""Helpers shared by benchmark scripts: machine facts and appending a row to RESULTS.md."""

from __future__ import annotations

import os
import platform
import sys
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def record(title: str, lines: list[str]) -> None:
    """Append a section with the command that produced it, the machine and the date."""
    command = "python " + " ".join(sys.argv)
    block = [f"## {title}", "", f"- command: `{command}`", f"- machine: {machine()}", f"- date: {date.today()}", ""]
    block += lines + [""]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the script named in its command.\n\n")
    with open(RESULTS, "a") as f:
        f.write("\n".join(block) + "\n")
