"""The one generation interface every LLM-driven stage uses: requests + SamplingParams -> Completions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, Union, runtime_checkable

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.errors import RefineryError

Message = dict[str, str]
Request = Union[str, list[Message]]  # a raw prompt, or a chat (list of {"role", "content"})


class GenerationError(RefineryError):
    """A request could not be served (bad request, server gone after retries, malformed response)."""


class SamplingParams(Section):
    """Sampling knobs shared by every backend (OpenAI semantics)."""

    temperature: float = Field(1.0, ge=0.0, description="0 = greedy; OpenAI default 1.0")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1 = off)")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0 = off)")
    max_new_tokens: int = Field(256, ge=1, description="generation budget per sample")
    stop: list[str] = Field(default_factory=list, description="stop strings; excluded from the text")
    n: int = Field(1, ge=1, description="samples per request")
    seed: int | None = Field(None, description="same seed -> same tokens (per request and sample)")
    logprobs: bool = Field(False, description="return per-token logprobs of the sampled tokens")
    logprobs_mode: Literal["raw", "processed"] = Field(
        "raw", description="raw: the model's distribution; processed: after temperature (what the sampler drew "
                           "from; vLLM's logprobs_mode=processed_logprobs), for RL's rollout correction")

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("stop"), str):
            data = {**data, "stop": [data["stop"]]}
        return data

    @model_validator(mode="after")
    def _check_stop(self) -> SamplingParams:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self


@dataclass
class Completion:
    """One sample. ``index`` is the request's position, ``sample`` the sample number within it.

    ``logprobs`` are under the model's unprocessed distribution (before temperature / top-k / top-p), as vLLM
    returns by default, or after temperature with ``logprobs_mode="processed"``; ``token_ids`` include a final EOS
    or the tokens of a matched stop string.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    finish_reason: str = "stop"  # "stop" (EOS or stop string) or "length"
    index: int = 0
    sample: int = 0
    prompt_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Generator(Protocol):
    """A batch generator: returns ``len(requests) * params.n`` completions, request-major."""

    def generate(self, requests: list[Request], params: SamplingParams | None = None) -> list[Completion]: ...


def check_requests(requests: list[Request]) -> None:
    """Reject malformed requests before any work: a prompt string or a non-empty list of role/content messages."""
    if isinstance(requests, (str, dict)):
        raise GenerationError("requests must be a list of prompts or chats, not a single one")
    for i, r in enumerate(requests):
        if isinstance(r, str):
            continue
        if not isinstance(r, list) or not r:
            raise GenerationError(f"request {i}: expected a prompt string or a non-empty list of messages")
        for m in r:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise GenerationError(f"request {i}: each message needs string 'role' and 'content', got {m!r}")


def group(completions: list[Completion], n: int) -> list[list[Completion]]:
    """Request-major flat list -> one list of ``n`` samples per request."""
    return [completions[i:i + n] for i in range(0, len(completions), n)]
