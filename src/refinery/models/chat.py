"""Rendering a task prompt in the model's chat format."""

from __future__ import annotations


def prompt_text(tokenizer, prompt: str) -> str:
    """The chat-formatted text a model sees before it answers ``prompt``."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
