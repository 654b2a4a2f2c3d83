"""The Puzzle recipe: parent, data, search space, BLD, scoring, cost, search budgets, GKD."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.engine.config import EngineConfig
from refinery.models.pretrain import PretrainConfig, PretrainData, TrainerConfig


def _default_parent() -> PretrainConfig:
    """nano with 8 layers on the procedural task corpus: deep enough for layers to differ in importance, and
    trained in minutes on 2 cores (micro trains ~6x slower)."""
    return PretrainConfig(name="puzzle-parent", model={"preset": "nano", "num_layers": 8},
                          data=PretrainData(n_train_per_task=20000, n_test_per_task=100, seq_len=128),
                          trainer=TrainerConfig(steps=600, batch_size=32, lr=1e-3),
                          eval={"n_per_task": 0})


class PuzzleData(Section):
    source: Literal["tasks", "text"] = Field("tasks", description="'tasks': procedural worked solutions rendered as "
                                                                 "text; 'text': text_file (+ heldout_file)")
    text_file: str | None = Field(None, description="source=text: calibration and distillation text")
    heldout_file: str | None = Field(None, description="source=text: held-out text for scores and perplexity "
                                                      "(default: the last 10% of text_file)")
    tasks: list[str] = Field(default_factory=lambda: ["arithmetic", "word_problems", "countdown"],
                             description="source=tasks: task names")
    n_items: int = Field(3000, gt=0, description="source=tasks: items per task (10% held out)")
    seq_len: int = Field(128, ge=8, description="window length for calibration, scoring, GKD and perplexity")
    n_calib: int = Field(64, gt=0, description="windows of parent activations each BLD variant trains on")
    n_score: int = Field(16, gt=0, description="held-out windows for replace-1-block scores")
    n_distill: int = Field(512, gt=0, description="windows GKD samples its batches from")
    n_eval: int = Field(64, gt=0, description="held-out windows for perplexity (disjoint from scoring windows)")

    @model_validator(mode="after")
    def _check(self) -> PuzzleData:
        if self.source == "text" and not self.text_file:
            raise ValueError("data.source is 'text' but data.text_file is not set")
        return self


class SearchSpace(Section):
    kv_heads: list[int] = Field(default_factory=lambda: [1], description="fewer KV heads than the parent's (each "
                                                                         "must divide it); Puzzle: 8 -> 4,2,1")
    linear_attention: bool = Field(True, description="offer attention replaced by a linear map")
    attention_no_op: bool = Field(True, description="offer removing attention")
    ffn_fractions: list[float] = Field(default_factory=lambda: [0.5, 0.25, 0.1],
                                       description="FFN widths as fractions of the parent's (Puzzle: 87%..10%)")
    linear_ffn: bool = Field(True, description="offer the FFN replaced by a linear map")
    ffn_no_op: bool = Field(True, description="offer removing the FFN")


class BLDConfig(Section):
    steps: int = Field(150, ge=0, description="AdamW steps per variant (0 keeps the training-free init)")
    lr: float = Field(1e-3, gt=0, description="peak LR (cosine to 10%)")
    batch_size: int = Field(8, gt=0, description="windows per step")
    executor: Literal["local", "serial", "ray"] = Field("local", description="process pool, in-process, or Ray")
    workers: int | None = Field(None, description="parallel variants (default: all cores)")


class CostSection(Section):
    batch_size: int = Field(8, gt=0, description="sequences served together (throughput scenario)")
    seq_len: int = Field(256, gt=0, description="context length: prefill size and KV-cache length for decode")
    repeats: int = Field(7, gt=0, description="timed repeats per sub-block (median)")
    dtype_bytes: int = Field(2, gt=0, description="bytes per parameter / cache value for memory (bf16: 2)")
    new_tokens: int = Field(16, gt=0, description="decode steps when measuring a whole model")
    model_repeats: int = Field(5, gt=0, description="whole-model measurement repeats (median)")


class SearchSection(Section):
    target_speedup: float | None = Field(1.5, gt=1, description="decode throughput of child / parent, measured")
    memory_ratio: float | None = Field(None, gt=0, le=1, description="child memory (params + KV) / parent's")
    latency_ratio: float | None = Field(None, gt=0, le=1, description="child prefill time / parent's")
    metric: Literal["kl", "lm_loss"] = Field("kl", description="replace-1-block score minimised (Puzzle: KL)")
    margin: float = Field(0.03, ge=0, lt=0.5, description="aim the throughput / latency budget this fraction past "
                                                           "the target, so measurement noise does not miss it")
    n_solutions: int = Field(4, gt=0, description="diverse solutions assembled and measured")
    diversity_alpha: float = Field(0.8, gt=0, le=1, description="a new solution shares at most alpha*L layers "
                                                                "with each earlier one")
    calibrate_rounds: int = Field(2, ge=0, description="re-solves with a tightened budget when no solution meets "
                                                       "the measured target")
    time_limit: float | None = Field(60.0, description="MILP time limit per solve (seconds)")


class GKDConfig(Section):
    steps: int = Field(200, ge=0, description="global distillation steps (0 skips)")
    lr: float = Field(5e-4, gt=0, description="peak LR (warmup 10%, cosine)")
    batch_size: int = Field(8, gt=0, description="windows per step")


class PuzzleRecipe(Section):
    name: str = Field("puzzle", description="run name")
    seed: int = Field(0, description="seed for data windows, BLD and GKD")
    parent: str | None = Field(None, description="HF directory of a Llama, Qwen2, Qwen3 or Mistral "
                                                   "model; null trains the default parent (pretrain)")
    pretrain: PretrainConfig = Field(default_factory=_default_parent, description="the parent built when parent "
                                                                                  "is null (cached)")
    data: PuzzleData = Field(default_factory=PuzzleData)
    space: SearchSpace = Field(default_factory=SearchSpace)
    bld: BLDConfig = Field(default_factory=BLDConfig)
    cost: CostSection = Field(default_factory=CostSection)
    search: SearchSection = Field(default_factory=SearchSection)
    gkd: GKDConfig = Field(default_factory=GKDConfig)
    baseline: bool = Field(True, description="also build, distill and measure the uniform-shrink baseline")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="device and precision of BLD (one "
                                 "layer at a time) and GKD (also activation checkpointing and micro-batches)")

    @model_validator(mode="after")
    def _check(self) -> PuzzleRecipe:
        s = self.search
        if s.target_speedup is None and s.memory_ratio is None and s.latency_ratio is None:
            raise ValueError("search needs at least one budget: target_speedup, memory_ratio or latency_ratio")
        return self
