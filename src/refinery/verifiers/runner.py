"""``refinery verify``: score a JSONL file of responses, one verdict per line, a summary at the end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from refinery.jsonl import iter_jsonl
from refinery.verifiers.base import Verdict, Verifier


@dataclass
class VerifyStats:
    total: int = 0
    scored: int = 0
    rejected: int = 0
    mean_score: float = 0.0
    correct: int = 0


def verify_file(verifier: Verifier, kind: str, input_path: str | Path, output_path: str | Path,
                workers: int | None = None, timeout: float = 10.0, progress: bool = True) -> VerifyStats:
    """Each input line ``{id, response, reference}`` (``tests`` for code) -> ``{id, score, extracted, reason}``;
    malformed lines get a line with ``score`` null and the reason; the last line is a summary."""
    input_path, output_path = Path(input_path), Path(output_path)
    ref_key = "tests" if kind == "code" else "reference"
    rows, pairs, bad = [], [], []
    for lineno, rec, error in iter_jsonl(input_path):
        if error is None and not (isinstance(rec, dict) and "id" in rec and isinstance(rec.get("response"), str)
                                  and ref_key in rec):
            error = f"needs 'id', a string 'response' and '{ref_key}'"
        if error:
            bad.append({"id": rec.get("id") if isinstance(rec, dict) else None, "line": lineno, "score": None,
                        "reason": error})
            continue
        rows.append(rec)
        pairs.append((rec["response"], rec[ref_key]))
    verdicts: list[Verdict] = verifier.batch(pairs, workers=workers, timeout=timeout, progress=progress) \
        if pairs else []
    stats = VerifyStats(total=len(rows) + len(bad), scored=len(rows), rejected=len(bad))
    stats.correct = sum(v.correct for v in verdicts)
    stats.mean_score = round(sum(v.score for v in verdicts) / len(verdicts), 6) if verdicts else 0.0
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_suffix(output_path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for rec, v in zip(rows, verdicts):
            out.write(json.dumps({"id": rec["id"], **v.to_dict()}, ensure_ascii=False) + "\n")
        for b in bad:
            out.write(json.dumps(b, ensure_ascii=False) + "\n")
        out.write(json.dumps({"summary": {"verifier": kind, "total": stats.total, "scored": stats.scored,
                                          "rejected": stats.rejected, "correct": stats.correct,
                                          "mean_score": stats.mean_score}}) + "\n")
    tmp.replace(output_path)
    return stats
