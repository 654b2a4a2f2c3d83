"""``EngineConfig``: the knobs every trainer shares (the ``engine:`` section of a recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from refinery.config import Section


class EngineConfig(Section):
    """Where and how a trainer computes. Defaults are the laptop path: they change nothing on a CPU run."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks CUDA when present (the local rank's GPU under torchrun), else CPU")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: compute under bf16 autocast with fp32 master weights and optimizer state "
                            "(on one device; FSDP2 uses its MixedPrecisionPolicy with fp32 reduction instead)")
    activation_checkpointing: bool = Field(
        False, description="recompute each decoder layer in backward (HF gradient checkpointing, non-reentrant)")
    micro_batch_rows: int | None = Field(
        None, gt=0, description="rows per forward/backward; gradients accumulate to the full batch with one "
                                "global token-mean (None: the whole batch at once)")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="also send metrics to TensorBoard (<run>/tensorboard) and/or Weights & "
                                          "Biases, from rank 0 (as TRL's report_to)")
    logprob_chunk_tokens: int = Field(
        1024, gt=0, description="tokens per chunk when log-probs/entropy are computed from hidden states: "
                                "a [batch, time, vocab] logits tensor never exists at once")
