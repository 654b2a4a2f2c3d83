"""What every data recipe shares: where records come from and go, how the engine runs them, and how LLM stages reach
a Generator."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from refinery.config import Section
from refinery.data.pipeline import Stage


class DataRunConfig(Section):
    """Inputs, output and executor of a data recipe; each pipeline subclasses it with its ``pipeline`` key."""

    name: str = Field("data", description="run name")
    seed: int = Field(0, description="seed for sampling and deterministic draws")
    input: list[str] = Field(default_factory=list, description="WARC, JSONL/Parquet files, directories of HTML")
    output: str | None = Field(None, description="output directory (data/, rejects/, stats.json, report.md)")
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="output format")
    executor: Literal["local", "ray"] = Field("local", description="process pool or Ray Data")
    workers: int | None = Field(None, description="parallel shards (default: all cores; a joined Ray cluster: "
                                "its CPUs)")
    ray_address: str | None = Field(None, description="executor=ray: join this running cluster (auto, host:port, "
                                    "ray://host:port); default the RAY_ADDRESS variable, else a local Ray starts")
    batch_size: int = Field(16, gt=0, description="records per stage call")
    html_per_shard: int = Field(64, gt=0, description="HTML files per shard (directories)")
    shard_bytes: int = Field(64 << 20, gt=0, description="bytes per shard of a splittable input: plain JSONL and WARC "
                             "by byte range (WARC at record / gzip member starts), Parquet by row groups; .jsonl.gz "
                             "is one shard. The unit of work and resume; memory is bounded by batch_size")
    lines_per_shard: int = Field(2000, gt=0, description="unused since shards are cut by bytes (shard_bytes); kept "
                                 "so older recipes load")
    field_types: dict[str, str] = Field(default_factory=dict, description="Parquet: declared output types by field "
                                        "(string, int64, float64, bool, json, list<T>, map<K,V>), over what the "
                                        "stages declare and the shards infer")
    retry_reasons: list[str] = Field(default_factory=lambda: ["llm_error"], description="reject reasons "
                                     "--retry-rejects runs again (transient failures)")

    @field_validator("field_types")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        from refinery.data.io import arrow_type
        from refinery.errors import DataError

        for f, t in v.items():
            try:
                arrow_type(t)
            except DataError as e:
                raise ValueError(f"field_types.{f}: {e}") from None
        return v

    @field_validator("input", mode="before")
    @classmethod
    def _input_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def required_paths(self) -> list[str]:
        """Files the configured stages need (checked before any work starts)."""
        return []


class GeneratorSection(Section):
    """The Generator an LLM stage calls: any OpenAI-compatible server, or a local HF model directory."""

    backend: Literal["openai", "hf"] = Field("openai", description="any OpenAI-compatible server, or a local HF dir")
    model: str = Field("tiny", description="served model name (openai) or model directory (hf)")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: server URL")
    temperature: float = Field(0.6, ge=0, description="sampling temperature")
    max_new_tokens: int = Field(1024, gt=0, description="budget per completion")
    concurrency: int = Field(16, gt=0, description="openai: requests in flight")
    cache_dir: str | None = Field(None, description="openai: response cache (a re-run reuses answers)")


def make_generator(g: GeneratorSection):
    from refinery.generation import get_generator

    kw: dict[str, Any] = {"concurrency": g.concurrency, "cache_dir": g.cache_dir, "base_url": g.base_url} \
        if g.backend == "openai" else {}
    return get_generator(g.backend, g.model, **kw)


def generate_each(generator, requests, params) -> list:
    """Per request: its completions, or the exception that ended it (a failed request never fails the batch)."""
    if hasattr(generator, "generate_each"):
        return generator.generate_each(requests, params)
    try:
        flat = generator.generate(requests, params)
    except Exception as e:
        return [e] * len(requests)
    return [flat[i * params.n:(i + 1) * params.n] for i in range(len(requests))]


class LLMStage(Stage):
    """A stage that calls a Generator: built lazily once per worker; ``sample`` returns, per prompt, its
    completions or the exception that ended the request (a failed request rejects its record, never the batch)."""

    def __init__(self, cfg, generator: GeneratorSection):
        self.cfg, self.gen_cfg = cfg, generator
        self.generator = None

    def setup(self) -> None:
        self.generator = make_generator(self.gen_cfg)

    def sample(self, prompts: list[str], n: int = 1, temperature: float | None = None,
               max_new_tokens: int | None = None) -> list:
        from refinery.generation import SamplingParams

        if self.generator is None:
            self.setup()
        g = self.gen_cfg
        params = SamplingParams(temperature=g.temperature if temperature is None else temperature,
                                max_new_tokens=max_new_tokens or g.max_new_tokens, n=n,
                                seed=getattr(self.cfg, "seed", 0))
        return generate_each(self.generator, [[{"role": "user", "content": p}] for p in prompts], params)
