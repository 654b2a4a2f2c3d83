"""Format reward (CrossThink): the response thinks inside <think>…</think>, then gives a boxed answer."""

from __future__ import annotations

import re
from typing import Any

from refinery.verifiers.base import Verdict, Verifier
from refinery.verifiers.math import NO_BOX, last_boxed
from refinery.verifiers.thinking import split_thinking


class FormatVerifier(Verifier):
    """Score 1 when the format holds; each requirement can be switched off."""

    name = "format"

    def __init__(self, require_think: bool = True, require_boxed: bool = True, think_open: str = "<think>",
                 think_close: str = "</think>"):
        self.require_think, self.require_boxed = require_think, require_boxed
        self.open, self.close = think_open, think_close

    def __call__(self, response: str, reference: Any = None) -> Verdict:
        split = split_thinking(response, open_tag=self.open, close_tag=self.close)
        if not split.closed:
            return Verdict(0.0, None, f"ends inside its thinking ({self.open} never closed)")
        answer_part = split.answer  # a box inside the thinking does not count
        if self.require_think:
            pattern = re.escape(self.open) + r"(.*?)" + re.escape(self.close)
            blocks = re.findall(pattern, response, re.DOTALL)
            if len(blocks) != 1 or not response.lstrip().startswith(self.open):
                return Verdict(0.0, None, f"expected exactly one {self.open}…{self.close} block at the start")
            if not blocks[0].strip():
                return Verdict(0.0, None, "empty thinking block")
        if self.require_boxed:
            box = last_boxed(answer_part)
            if box is NO_BOX or box is None:
                return Verdict(0.0, None, "no boxed answer after the thinking")
            return Verdict(1.0, box, "format ok")
        return Verdict(1.0, None, "format ok")
