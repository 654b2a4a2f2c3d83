"""SFT: the pretraining loop started from a model, with loss on response tokens only (chat template applied)."""

from __future__ import annotations

from pydantic import Field

from refinery.models.pretrain import PretrainConfig, PretrainData


def _sft_data() -> PretrainData:
    return PretrainData(completion_only=True)


class SFTConfig(PretrainConfig):
    """As :class:`PretrainConfig`, with SFT defaults: responses-only loss; ``init_from`` names the start model
    (None builds a fresh one). Scale data with ``data.n_train_per_task`` (prompts) x ``data.responses_per_prompt``
    (AceReason 1.1: both help, and a stronger SFT start gives a stronger RL end)."""

    name: str = Field("sft", description="run name (directory prefix)")
    data: PretrainData = Field(default_factory=_sft_data)
