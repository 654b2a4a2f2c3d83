"""SFT: the pretraining loop started from a model, with loss on response tokens only (chat template applied)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, model_validator

from refinery.models.pretrain import PretrainConfig, PretrainData
from refinery.sources import DataSource


class SFTData(PretrainData):
    """As :class:`PretrainData`, plus ``source: datasets``: chat examples from data sources (``refinery.sources``:
    a dataset directory, Parquet/JSON/CSV files, a hub name) with a column mapping."""

    source: Literal["tasks", "text", "jsonl", "datasets"] = Field(
        "tasks", description="'tasks': procedural worked solutions; 'text': the files in text_files; "
                             "'jsonl': chat examples in jsonl_files; 'datasets': chat examples from the sources in "
                             "datasets")
    datasets: list[DataSource] = Field(default_factory=list, description="source=datasets: {path|hub, "
                                             "split, columns: {prompt: question, response: solution}} (or a path) "
                                             "whose records are {prompt|messages, response}; 5% held out for eval "
                                             "loss")

    @model_validator(mode="after")
    def _check_datasets(self) -> SFTData:
        if self.source == "datasets" and not self.datasets:
            raise ValueError("source is 'datasets' but datasets is empty")
        return self


def _sft_data() -> SFTData:
    return SFTData(completion_only=True)


class SFTConfig(PretrainConfig):
    """As :class:`PretrainConfig`, with SFT defaults: responses-only loss; ``init_from`` names the start model
    (None builds a fresh one). Scale data with ``data.n_train_per_task`` (prompts) x ``data.responses_per_prompt``
    (AceReason 1.1: both help, and a stronger SFT start gives a stronger RL end)."""

    name: str = Field("sft", description="run name (directory prefix)")
    data: SFTData = Field(default_factory=_sft_data)


def sft_examples(sources: list) -> list[dict]:
    """The SFT examples ``{prompt | messages, response, ...}`` of data sources, each checked where it was read."""
    from refinery.errors import DataError
    from refinery.sources import read_rows

    out = []
    for src in sources:
        for where, rec in read_rows(src, required=["response", ("prompt", "messages")]):
            if isinstance(rec.get("messages"), list) and rec.get("prompt") is None:
                rec.pop("prompt", None)  # a null prompt cell beside a messages column
            ok = isinstance(rec.get("response"), str) and (isinstance(rec.get("prompt"), str)
                                                           or isinstance(rec.get("messages"), list))
            if not ok:
                raise DataError(f"{where}: needs 'response' and 'prompt' (or 'messages'); map them with the "
                                "source's columns, e.g. columns: {prompt: question, response: solution}")
            out.append(rec)
    if not out:
        raise DataError(f"no examples in {', '.join(map(str, sources))}")
    return out


def resolve_sft_data(cfg: PretrainConfig, run) -> PretrainConfig:
    """``source: datasets`` becomes ``source: jsonl`` over ``data/sft.jsonl`` in the run directory (the records
    the run trains on, in the JSONL shape the training loop reads); every other config is returned as it is."""
    from refinery.runs import atomic_write_text

    if cfg.data.source != "datasets":
        return cfg
    examples = sft_examples(cfg.data.datasets)
    path = run.path / "data" / "sft.jsonl"
    atomic_write_text(path, "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in examples))
    fields = {k: v for k, v in cfg.data.model_dump().items() if k != "datasets"}
    data = PretrainData(**{**fields, "source": "jsonl", "jsonl_files": [str(path)]})
    return PretrainConfig(**{**cfg.model_dump(exclude={"data"}), "data": data})


def train_sft(cfg: PretrainConfig, run, progress: bool = True, stop_after: int | None = None) -> dict:
    """SFT per ``cfg`` into ``run`` (resumable), reading ``data.datasets`` when the data source is 'datasets'."""
    from refinery.models.pretrain import pretrain

    return pretrain(resolve_sft_data(cfg, run), run, progress=progress, stop_after=stop_after)
