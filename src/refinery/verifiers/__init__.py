"""Verifiers: the rewards of RL. ``verifier(response, reference) -> Verdict(score, extracted, reason)``."""

from refinery.verifiers.base import Verdict, Verifier
from refinery.verifiers.thinking import ThinkSplit, split_thinking

__all__ = ["ThinkSplit", "Verdict", "Verifier", "get_verifier", "split_thinking"]


def get_verifier(name: str, **kwargs) -> Verifier:
    """'math', 'code', 'choice' or 'format'."""
    if name == "math":
        from refinery.verifiers.math import MathConfig, MathVerifier

        return MathVerifier(MathConfig(**kwargs))
    if name == "code":
        from refinery.verifiers.code import CodeVerifier

        return CodeVerifier(**kwargs)
    if name == "choice":
        from refinery.verifiers.choice import ChoiceVerifier

        return ChoiceVerifier(**kwargs)
    if name == "format":
        from refinery.verifiers.format import FormatVerifier

        return FormatVerifier(**kwargs)
    from refinery.errors import ConfigError

    raise ConfigError(f"unknown verifier '{name}' (choose math, code, choice or format)")
