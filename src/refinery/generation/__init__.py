"""Generation: one Generator interface with hf (local), openai (any compatible server) and vllm backends."""

from refinery.generation.base import (
    Completion,
    GenerationError,
    Generator,
    Message,
    Request,
    SamplingParams,
    group,
)

__all__ = ["Completion", "GenerationError", "Generator", "Message", "Request", "SamplingParams", "group",
           "get_generator"]


def get_generator(backend: str, model: str, **kwargs) -> Generator:
    """Build a backend by name: 'hf' (model = local dir), 'openai' (model = served name), 'vllm'."""
    if backend == "hf":
        from refinery.generation.hf import HFGenerator

        return HFGenerator(model, **kwargs)
    if backend == "openai":
        from refinery.generation.openai import OpenAIGenerator

        return OpenAIGenerator(model=model, **kwargs)
    if backend == "vllm":
        from refinery.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, **kwargs)
    raise GenerationError(f"unknown backend '{backend}' (choose hf, openai or vllm)")
