"""Reasoning responses: the thinking (``<think>…</think>``) and the answer after it, split one way everywhere.

Every verifier, the RL reward router and ``refinery eval`` read a response through :func:`split_thinking`, so an
answer written inside the thinking never earns reward and a response cut off while thinking is never scored.
"""

from __future__ import annotations

import re
from typing import NamedTuple

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_LEADING_BLANK_LINES = re.compile(r"^(?:[ \t]*\r?\n)+")


class ThinkSplit(NamedTuple):
    """``thinking``: everything before the answer, tags removed; ``answer``: what a verifier scores; ``closed``:
    False when the response ends inside a thinking block (truncated there: ``answer`` is empty)."""

    thinking: str
    answer: str
    closed: bool


def split_thinking(response: str, starts_in_thinking: bool = False, open_tag: str = THINK_OPEN,
                   close_tag: str = THINK_CLOSE) -> ThinkSplit:
    """Split a response into (thinking, answer, closed).

    The answer is the text after the **last** close tag; everything before it (every block, text before the first
    open tag, text between blocks) is thinking. A response with no tags is all answer, unless the prompt already
    opened the thinking (``starts_in_thinking``: DeepSeek-R1's template ends the prompt with ``<think>``, so the
    response holds only ``…</think>answer``, or just thinking when cut off). An open tag after the last close tag
    (or with no close tag at all) leaves the response inside thinking: ``closed`` is False and the answer empty.
    The thinking's pieces (between tags) are stripped and joined by newlines. The answer loses the spaces after the
    close tag, its leading blank lines and trailing whitespace; without tags its first line keeps its indentation
    (a bare code body stays valid Python).
    """
    last = response.rfind(close_tag)
    if last < 0:
        if starts_in_thinking or open_tag in response:
            return ThinkSplit(_strip_tags(response, open_tag, close_tag), "", False)
        return ThinkSplit("", _trim(response), True)
    tail = response[last + len(close_tag):]
    if open_tag in tail:  # a new block opened after the last close and never closed
        return ThinkSplit(_strip_tags(response, open_tag, close_tag), "", False)
    return ThinkSplit(_strip_tags(response[:last], open_tag, close_tag), _trim(tail.lstrip(" \t")), True)


def answer_of(response: str, starts_in_thinking: bool = False) -> str:
    """The part of a response a verifier scores (empty when it ends inside its thinking)."""
    return split_thinking(response, starts_in_thinking).answer


def prompt_opens_thinking(prompt: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> bool:
    """Whether a rendered prompt leaves the model inside a thinking block (its last open tag is not closed), as
    DeepSeek-R1-style templates do with ``<｜Assistant｜><think>\\n``; Qwen3's ``enable_thinking=False`` prompt
    (``<think>\\n\\n</think>``) does not."""
    i = prompt.rfind(open_tag)
    return i >= 0 and close_tag not in prompt[i:]


def _strip_tags(text: str, open_tag: str, close_tag: str) -> str:
    """The thinking without its tags: the pieces between tags, stripped, one per line."""
    pieces = text.replace(close_tag, open_tag).split(open_tag)
    return "\n".join(p.strip() for p in pieces if p.strip())


def _trim(answer: str) -> str:
    return _LEADING_BLANK_LINES.sub("", answer).rstrip()
