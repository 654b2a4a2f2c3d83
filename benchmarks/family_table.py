"""README's family table, generated from the tests: run tests/test_family_wings.py (the full matrix, slow cells
included) with REFINERY_FAMILY_TABLE set so each cell records its outcome, then render one Markdown row per family.

    .venv/bin/python benchmarks/family_table.py                  # run the matrix, print the table
    .venv/bin/python benchmarks/family_table.py --write-readme   # ... and replace the table in README.md
    .venv/bin/python benchmarks/family_table.py --records r.jsonl  # render recorded outcomes without running
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- family-table:start -->", "<!-- family-table:end -->"
# column -> the cells (as tests/test_family_wings.py names them) that must all pass
COLUMNS = {
    "generate": ["generate"],
    "serve": ["serve", "serve (refinery serve)"],
    "SFT": ["sft mask", "sft train"],
    "RL step": ["rl step"],
    "pass@k": ["eval pass@k"],
    "RM train/eval/score": ["rm encoding", "rm train", "rm eval", "rm score"],
    "2:4 magnitude": ["2:4 magnitude"],
    "2:4 Wanda": ["2:4 wanda"],
    "2:4 SparseGPT": ["2:4 sparsegpt"],
    "2:4 MaskLLM": ["2:4 maskllm"],
    "eval ppl": ["eval ppl"],
}


def run_matrix(records: Path) -> int:
    env = dict(os.environ, REFINERY_FAMILY_TABLE=str(records))
    cmd = [sys.executable, "-m", "pytest", "tests/test_family_wings.py", "-q", "-m", "slow or not slow",
           "-p", "no:cacheprovider"]
    print(f"recording cells into {records}", file=sys.stderr)
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr).returncode  # stdout: the table only


def render(records: Path) -> str:
    """One row per family; a column is 'yes' when every cell behind it passed, 'no' (with the first failure) when
    one failed, '-' when none ran."""
    cells: dict[tuple[str, str], dict] = {}
    for line in records.read_text().splitlines():
        r = json.loads(line)
        key = (r["arch"], r["wing"])
        if cells.get(key, {}).get("outcome") != "fail":  # a failure anywhere wins
            cells[key] = r
    archs = sorted({a for a, _ in cells})
    lines = ["| family | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    notes: list[str] = []
    for arch in archs:
        row = []
        for wings in COLUMNS.values():
            got = [cells[(arch, w)] for w in wings if (arch, w) in cells]
            fails = [c for c in got if c["outcome"] == "fail"]
            if fails:
                notes.append(f"{arch} / {fails[0]['wing']}: {fails[0]['detail']}")
                row.append(f"no [{len(notes)}]")
            elif got and all(c["outcome"] == "ok" for c in got):
                row.append("yes")
            else:
                row.append("-")
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    lines += ["", *[f"[{i}] {n}" for i, n in enumerate(notes, 1)]] if notes else []
    return "\n".join(lines) + "\n"


def write_readme(table: str, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + table + END + tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, help="render these recorded outcomes instead of running the tests")
    ap.add_argument("--write-readme", action="store_true", help="replace the table between README's markers")
    args = ap.parse_args()
    rc = 0
    if args.records is None:
        args.records = Path(tempfile.mkdtemp()) / "family_cells.jsonl"
        rc = run_matrix(args.records)
    table = render(args.records)
    print(table, end="")
    if args.write_readme:
        write_readme(table)
    return rc


if __name__ == "__main__":
    sys.exit(main())
