"""Preference data: one record shape, loaders for HelpSteer2, HH-RLHF, PandaLM and generic JSONL, and splits.

A pair is ``{id, prompt, chosen, rejected, strength, subset?, chosen_attributes?, rejected_attributes?}`` where
``prompt`` is a string or a list of chat messages, ``chosen`` is the preferred response and ``strength`` is
|preference| in 0..3 (0 = tie; BT-family losses drop ties). This is RewardBench's format plus a strength.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from refinery.errors import DataError

HELPSTEER_ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def _pair_id(prompt: Any, chosen: str, rejected: str) -> str:
    blob = json.dumps([prompt, chosen, rejected], sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def make_pair(prompt: Any, chosen: str, rejected: str, strength: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": extra.pop("id", None) or _pair_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "strength": int(strength), **{k: v for k, v in extra.items() if v is not None}}


def from_helpsteer2(row: dict[str, Any]) -> dict[str, Any]:
    """HelpSteer2-Preference row: ``preference_strength`` -3..3, negative when response_1 is better."""
    p = int(row["preference_strength"])
    if not -3 <= p <= 3:
        raise DataError(f"preference_strength {p} is outside -3..3")
    first_better = p < 0
    a, b = (row["response_1"], row["response_2"]) if first_better or p == 0 else (row["response_2"], row["response_1"])
    attrs = [row.get("response_1_attributes"), row.get("response_2_attributes")]
    ca, ra = (attrs[0], attrs[1]) if first_better or p == 0 else (attrs[1], attrs[0])
    return make_pair(row["prompt"], a, b, abs(p), id=row.get("id"), subset=row.get("subset"),
                     chosen_attributes=ca, rejected_attributes=ra)


# Turns start with "\n\nHuman: " / "\n\nAssistant: " (4 of the 2,312 harmless-base test transcripts lost a
# separator; their turn stays merged into the previous one rather than guessing).
_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: …\\n\\nAssistant: …' → chat messages."""
    parts = _TURN.split(text)
    if len(parts) < 3:
        raise DataError("not an HH-RLHF transcript (no '\\n\\nHuman:' / '\\n\\nAssistant:' turns)")
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def from_hh_rlhf(row: dict[str, Any]) -> dict[str, Any]:
    """HH-RLHF: two whole transcripts sharing all turns but the last assistant reply."""
    c, r = parse_hh_transcript(row["chosen"]), parse_hh_transcript(row["rejected"])
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        raise DataError("HH-RLHF transcript does not end with an assistant turn")
    return make_pair(c[:-1], c[-1]["content"], r[-1]["content"], 1, id=row.get("id"), subset=row.get("subset"))


def from_pandalm(row: dict[str, Any]) -> dict[str, Any]:
    """PandaLM: three annotators vote 0 (tie), 1 or 2. Majority side wins; strength = |votes(1) - votes(2)|
    (3-0 → 3, 2-0 → 2, 2-1 or 1-0 → 1, equal votes → tie, strength 0)."""
    votes = [int(row[k]) for k in ("annotator1", "annotator2", "annotator3") if k in row]
    if not votes:
        raise DataError("PandaLM row has no annotator labels")
    ones, twos = votes.count(1), votes.count(2)
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    first = ones >= twos
    a, b = (row["response1"], row["response2"]) if first else (row["response2"], row["response1"])
    return make_pair(prompt, a, b, abs(ones - twos), id=str(row.get("idx", "")) or None,
                     subset=row.get("motivation_app"))


def from_generic(row: dict[str, Any]) -> dict[str, Any]:
    strength = row.get("strength", 1)
    if not isinstance(strength, (int, float)) or not 0 <= abs(strength) <= 3:
        raise DataError(f"strength {strength!r} must be a number in 0..3")
    return make_pair(row["prompt"], row["chosen"], row["rejected"], abs(int(strength)), id=row.get("id"),
                     subset=row.get("subset"), section=row.get("section"),
                     chosen_attributes=row.get("chosen_attributes"), rejected_attributes=row.get("rejected_attributes"))


def detect(row: dict[str, Any]) -> str:
    """Which format a record is in: helpsteer2, hh-rlhf, pandalm or generic."""
    if "preference_strength" in row and "response_1" in row:
        return "helpsteer2"
    if "response1" in row and "annotator1" in row:
        return "pandalm"
    if "chosen" in row and "rejected" in row:
        if "prompt" not in row and str(row["chosen"]).lstrip("\n").startswith("Human:"):
            return "hh-rlhf"
        if "prompt" in row:
            return "generic"
    raise DataError("unknown preference format: expected {prompt, chosen, rejected}, HH-RLHF {chosen, rejected} "
                    "transcripts, HelpSteer2 {prompt, response_1, response_2, preference_strength} or PandaLM")


CONVERTERS = {"helpsteer2": from_helpsteer2, "hh-rlhf": from_hh_rlhf, "pandalm": from_pandalm,
              "generic": from_generic}


def _raw_rows(path: Path) -> Iterable[tuple[int, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
        rest = f.read()
    text = head + rest
    if head == "[":  # a JSON list (PandaLM)
        try:
            yield from enumerate(json.loads(text), 1)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON list: {e.msg}") from None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None


def _rows(path: Any, required: list) -> tuple[str, Iterable[tuple[Any, Any]]]:
    """(label, (location, row) pairs): a JSONL/JSON file as before, else a data source (``refinery.sources``:
    a dataset directory, Parquet/CSV, a hub name, with a column mapping)."""
    from refinery.sources import own_reader_path, read_rows

    if own_reader_path(path) is not None:
        p = Path(own_reader_path(path))
        if not p.is_file():
            return str(p), None
        return str(p), ((f"{p}:{n}", row) for n, row in _raw_rows(p))
    return str(path), ((where, row) for where, row in read_rows(path, required))


def load_pairs(path: Any, fmt: str = "auto", limit: int | None = None) -> list[dict[str, Any]]:
    """Read preference pairs from JSONL / JSONL.gz / a JSON list, or a data source, in any supported format
    (``auto`` detects it from the first record). Errors name the file and line (or row)."""
    if fmt != "auto" and fmt not in CONVERTERS:
        raise DataError(f"unknown preference format {fmt!r} (auto, {', '.join(CONVERTERS)})")
    label, rows = _rows(path, [])
    if rows is None:
        raise DataError(f"preference file {label} does not exist")
    pairs: list[dict[str, Any]] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        try:
            kind = detect(row) if fmt == "auto" else fmt
            pairs.append(CONVERTERS[kind](row))
        except (KeyError, DataError, ValueError, TypeError) as e:
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            if isinstance(e, KeyError) or "unknown preference format" in what:
                what += f" (its fields: {', '.join(map(str, row))}; map columns with the source's columns)"
            raise DataError(f"{where}: {what}") from None
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise DataError(f"{label} holds no preference pairs")
    return pairs


def prompt_key(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return " ".join(text.lower().split())


def split_pairs(pairs: list[dict[str, Any]], fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
                salt: str = "") -> list[list[dict[str, Any]]]:
    """Split by a hash of the prompt, so all responses to one prompt land in the same part (no leakage)."""
    if abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions {fractions} must sum to 1")
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(acc)
    parts: list[list[dict[str, Any]]] = [[] for _ in fractions]
    for p in pairs:
        h = int.from_bytes(hashlib.sha256((salt + prompt_key(p["prompt"])).encode()).digest()[:8], "big") / 2**64
        parts[next(i for i, b in enumerate(bounds) if h < b or i == len(bounds) - 1)].append(p)
    return parts


def responses_with_attributes(pairs: list[dict[str, Any]], objectives: list[str]) -> list[dict[str, Any]]:
    """Per-response regression rows ``{prompt, response, labels}`` (NaN where an attribute is missing) from the
    pairs' attributes, each distinct response once."""
    seen, rows = set(), []
    for p in pairs:
        for side in ("chosen", "rejected"):
            attrs = p.get(f"{side}_attributes")
            key = (prompt_key(p["prompt"]), p[side])
            if not attrs or key in seen:
                continue
            seen.add(key)
            labels = [float(attrs[o]) if attrs.get(o) is not None else float("nan") for o in objectives]
            rows.append({"prompt": p["prompt"], "response": p[side], "labels": labels})
    return rows


def load_attributes(path: Any) -> dict[tuple[str, str], dict[str, float]]:
    """HelpSteer2's per-response ratings (``{prompt, response, helpfulness, correctness, coherence, complexity,
    verbosity}`` per line, or a data source with those columns) as a table keyed by (normalised prompt,
    response)."""
    label, rows = _rows(path, ["prompt", "response"])
    if rows is None:
        raise DataError(f"attributes file {label} does not exist")
    table: dict[tuple[str, str], dict[str, float]] = {}
    for where, row in rows:
        if not isinstance(row, dict) or "prompt" not in row or "response" not in row:
            raise DataError(f"{where}: expected {{prompt, response, <attributes>}}")
        attrs = {k: float(v) for k, v in row.items() if k in HELPSTEER_ATTRIBUTES and v is not None}
        table[(prompt_key(row["prompt"]), row["response"])] = attrs
    return table


def attach_attributes(pairs: list[dict[str, Any]], table: dict[tuple[str, str], dict[str, float]]) -> int:
    """Fill ``chosen_attributes`` / ``rejected_attributes`` from ``table`` where missing; returns how many were
    found (pairs and attributes come as separate files in HelpSteer2)."""
    found = 0
    for p in pairs:
        for side in ("chosen", "rejected"):
            attrs = table.get((prompt_key(p["prompt"]), p[side]))
            if attrs and not p.get(f"{side}_attributes"):
                p[f"{side}_attributes"] = attrs
                found += 1
    return found


def write_pairs(pairs: Iterable[dict[str, Any]], path: str | Path) -> None:
    from refinery.runs import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(p) + "\n" for p in pairs))
