"""Multiple choice: extract a letter from '(C)', 'C.', '\\boxed{C}', 'Answer: C' or the option's own text."""

from __future__ import annotations

import re
from typing import Any

from refinery.verifiers.base import Verdict, Verifier
from refinery.verifiers.math import NO_BOX, last_boxed
from refinery.verifiers.thinking import split_thinking

_PATTERNS = [
    re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"(?:^|\s)([A-J])[.)](?:\s|$)"),
    re.compile(r"^\s*([A-J])\s*$"),
]


def extract_choice(response: str, options: list[str] | dict[str, str] | None = None,
                   letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen letter, read after the thinking: a box wins, then 'answer: X', '(X)', 'X.' (last occurrence),
    then an option's text."""
    response = split_thinking(response).answer  # never what the thinking considered
    box = last_boxed(response)
    if box is not NO_BOX and box:
        m = re.fullmatch(r"\s*(?:\\text\{)?\(?([A-Ja-j])\)?\}?\s*", box)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    for pattern in _PATTERNS:
        found = [m.group(1).upper() for m in pattern.finditer(response) if m.group(1).upper() in letters]
        if found:
            return found[-1]
    if options:
        items = options.items() if isinstance(options, dict) else zip(letters, options)
        text = response.lower()
        hits = [(text.rfind(str(opt).lower().strip()), letter) for letter, opt in items if str(opt).strip()]
        hits = [(pos, letter) for pos, letter in hits if pos >= 0]
        if len(hits) == 1 or (hits and len({p for p, _ in hits}) == len(hits)):
            return max(hits)[1]
    return None


class ChoiceVerifier(Verifier):
    """``reference`` is the correct letter, or ``{"answer": "C", "options": [...]}`` to also match option text."""

    name = "choice"

    def __call__(self, response: str, reference: Any) -> Verdict:
        options = None
        if isinstance(reference, dict):
            options = reference.get("options")
            reference = reference.get("answer", "")
        gold = str(reference).strip().strip("()").upper()
        got = extract_choice(response, options)
        if got is None:
            return Verdict(0.0, None, "no choice found")
        return Verdict(1.0 if got == gold else 0.0, got, "correct" if got == gold else f"chose {got}, not {gold}")
