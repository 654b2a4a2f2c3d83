"""Batch generation over a JSONL file: resumable, streaming to disk, with a rejects file.

Input lines: ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "messages": [{"role", "content"}, ...]}`` (other
fields are carried through). Output lines: the input record plus ``completions`` (a list of ``n``
``{text, finish_reason, token_ids, logprobs?}``). A re-run skips ids already in the output; requests that fail
after retries, and malformed input lines, go to the rejects file with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from refinery.generation.base import Completion, GenerationError, Generator, SamplingParams
from refinery.jsonl import iter_jsonl


@dataclass
class GenerateStats:
    total: int = 0
    skipped_done: int = 0
    generated: int = 0
    rejected: int = 0
    completion_tokens: int = 0


def read_requests(path: Path, rejects: list[dict]) -> list[dict]:
    """Valid records of ``path``; each bad line becomes a reject with its line number and reason."""
    records, seen = [], set()
    for lineno, rec, error in iter_jsonl(path):
        if error:
            rejects.append({"line": lineno, "reason": error})
            continue
        reason = _invalid(rec)
        if reason is None and str(rec["id"]) in seen:
            reason = f"duplicate id {rec['id']!r}"
        if reason:
            rejects.append({"line": lineno, "id": rec.get("id") if isinstance(rec, dict) else None, "reason": reason})
            continue
        seen.add(str(rec["id"]))
        records.append(rec)
    return records


def _invalid(rec) -> str | None:
    if not isinstance(rec, dict):
        return "record is not a JSON object"
    if "id" not in rec:
        return "missing 'id'"
    if isinstance(rec.get("prompt"), str):
        return None if rec["prompt"] else "empty 'prompt'"
    msgs = rec.get("messages")
    if isinstance(msgs, list) and msgs and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
        return None
    return "needs a non-empty 'prompt' string or 'messages' list of {role, content}"


def done_ids(output: Path) -> set[str]:
    """Ids already in the output; a last line cut by a crash is removed so appending stays valid JSONL."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(output, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    ids = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def _completion_dict(c: Completion, with_logprobs: bool) -> dict:
    d = {"text": c.text, "finish_reason": c.finish_reason, "token_ids": c.token_ids}
    if with_logprobs:
        d["logprobs"] = c.logprobs
    return d


def generate_file(generator: Generator, input_path: str | Path, output_path: str | Path,
                  params: SamplingParams, rejects_path: str | Path | None = None, chunk_size: int = 256,
                  progress: bool = True) -> GenerateStats:
    """Generate for every record not yet in ``output_path``; append results as they finish."""
    input_path, output_path = Path(input_path), Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else output_path.with_suffix(".rejects.jsonl")
    rejects: list[dict] = []
    records = read_requests(input_path, rejects)
    done = done_ids(output_path)
    todo = [r for r in records if str(r["id"]) not in done]
    stats = GenerateStats(total=len(records), skipped_done=len(records) - len(todo))
    output_path.parent.mkdir(parents=True, exist_ok=True)

    bar = None
    if progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        task = bar.add_task("generate", total=len(todo))
        bar.start()
    try:
        with open(output_path, "a", encoding="utf-8") as out:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                requests = [r["prompt"] if isinstance(r.get("prompt"), str) else r["messages"] for r in chunk]

                def write(i: int, result, chunk=chunk) -> None:
                    rec = chunk[i]
                    if isinstance(result, GenerationError):
                        rejects.append({"id": rec["id"], "reason": str(result)})
                    else:
                        row = {**rec, "completions": [_completion_dict(c, params.logprobs) for c in result]}
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        out.flush()
                        stats.generated += 1
                        stats.completion_tokens += sum(len(c.token_ids) for c in result)
                    if bar is not None:
                        bar.advance(task)

                for i, result in enumerate(_each(generator, requests, params, write)):
                    if result is not None:
                        write(i, result)
                os.fsync(out.fileno())
    finally:
        if bar is not None:
            bar.stop()
        stats.rejected = len(rejects)
        if rejects or rejects_path.exists():
            tmp = rejects_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
            os.replace(tmp, rejects_path)
    return stats


def _each(generator, requests, params, write):
    """Per-request results. Backends with ``generate_each`` stream through ``write`` (yielding None);
    others run as one batch, falling back to one request at a time to isolate a bad one."""
    if hasattr(generator, "generate_each"):
        generator.generate_each(requests, params, on_result=write)
        return [None] * len(requests)
    try:
        flat = generator.generate(requests, params)
        return [flat[i * params.n:(i + 1) * params.n] for i in range(len(requests))]
    except GenerationError:
        results = []
        for r in requests:
            try:
                results.append(generator.generate([r], params))
            except GenerationError as e:
                results.append(e)
        return results
