"""The reward-model runner's config (HelpSteer2-Preference pipeline and ArmoRM), every knob with its source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.engine.config import EngineConfig
from refinery.models.pretrain import PretrainConfig, default_bootstrap
from refinery.sources import DataSource

STAGES = ("regression", "bt", "expo", "armo")


class RMBackbone(Section):
    path: str | None = Field(None, description="causal-LM or reward-model directory (e.g. a Llama-3.1 instruct "
                                                "checkpoint); None: the bootstrap SFT policy below (cached)")
    bootstrap: PretrainConfig = Field(default_factory=default_bootstrap, description="used when path is None")
    seed: int | None = Field(None, description="seed of the bootstrap backbone (default: the run's seed); fix it to "
                                               "vary the head and data seeds on one backbone")


class RMData(Section):
    source: Literal["synthetic", "files"] = Field("synthetic", description="'synthetic': correct-vs-wrong worked "
                                                  "solutions (truth known); 'files': the preference files below")
    train_file: DataSource | None = Field(None, description="preference file (JSONL/JSONL.gz/JSON list; "
                                                "HelpSteer2, HH-RLHF, PandaLM or {prompt, chosen, rejected, "
                                                "strength?}) or a data source {path|hub, split, columns: {chosen: "
                                                "..., rejected: ...}} (refinery.sources)")
    valid_file: DataSource | None = Field(None, description="validation file or source (default: split "
                                                "off train_file)")
    test_file: DataSource | None = Field(None, description="test file or source (default: split off "
                                               "train_file)")
    attributes_file: DataSource | None = Field(None, description="HelpSteer2 per-response ratings {prompt, "
                                                     "response, helpfulness, ...} (a file or a data source) "
                                                     "joined onto the pairs (regression, ArmoRM)")
    format: str = Field("auto", description="auto, helpsteer2, hh-rlhf, pandalm or generic")
    seed: int | None = Field(None, description="seed of the synthetic pairs and of the prompt-hash split (default: "
                                               "the run's seed); fix it to vary the head seed on the same data")
    split: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1],
                               description="train/valid/test fractions by prompt hash when only train_file is given")
    limit: int | None = Field(None, description="read at most this many pairs per file")
    n_train: int = Field(2000, gt=0, description="synthetic: training pairs")
    n_valid: int = Field(300, gt=0, description="synthetic: validation pairs (ExPO alpha, ridge alpha, lambdas)")
    n_test: int = Field(600, gt=0, description="synthetic: test pairs (length unbiased, no label noise)")
    tasks: list[str] = Field(default_factory=lambda: ["arithmetic"], description="synthetic: procedural tasks")
    difficulty: list[int] = Field(default_factory=lambda: [1, 2], description="synthetic: task levels")
    length_bias: float = Field(0.6, ge=0, le=1, description="synthetic train: P(filler | correct) = 1 - P(filler | "
                                                            "wrong); test is always 0.5 (no bias)")
    noise: dict[int, float] = Field(default_factory=lambda: {1: 0.3, 2: 0.1, 3: 0.0},
                                    description="synthetic train: flip probability per strength (annotator noise)")
    missing: float = Field(0.1, ge=0, lt=1, description="synthetic: fraction of attribute labels left missing")


class RMTrainer(Section):
    epochs: float = Field(2.0, gt=0, description="passes over the training pairs (HelpSteer2-Pref: 1-2)")
    batch_pairs: int = Field(16, gt=0, description="pairs per step (both responses go in one forward)")
    lr: float = Field(1e-4, gt=0, description="peak LR (HelpSteer2-Pref 70B: 2e-6; tiny models take more)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="linear warm-up as a fraction of steps")
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up in steps; overrides warmup_ratio "
                                     "(HelpSteer2-Preference: 10)")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after warm-up: cosine decay to "
                                                    "min_lr_ratio·lr, or constant (HelpSteer2-Preference)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor (fraction of lr)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay on matrices")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (beta1, beta2); HelpSteer2-Preference "
                                       "(NeMo-Aligner): (0.9, 0.98)")
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 disables")
    max_length: int = Field(256, ge=8, description="tokens per prompt+response (left-truncated)")
    eval_every: int = Field(50, gt=0, description="steps between validation accuracy measurements")
    checkpoint_every: int = Field(100, gt=0, description="steps between mid-stage checkpoints")
    log_every: int = Field(10, gt=0, description="steps between metrics rows")
    threads: int | None = Field(None, description="torch threads (default: all cores)")


class RMLoss(Section):
    type: Literal["bt", "bt_margin", "scaled_bt"] = Field("scaled_bt", description="BT, BT with margin "
                                                          "(margin = margin_scale·strength) or scaled BT "
                                                          "(HelpSteer2-Preference's best)")
    margin_scale: float = Field(1.0, ge=0, description="bt_margin: margin per unit of preference strength")
    center_coef: float = Field(0.0, ge=0, description="reward centering c·mean((r_c+r_r)^2); TRL suggests 0.01")


class RegressionConfig(Section):
    objectives: list[str] = Field(default_factory=lambda: ["helpfulness"],
                                  description="attributes regressed (HelpSteer2-Pref: helpfulness only); output 0 "
                                              "initialises the BT reward")
    epochs: float = Field(2.0, gt=0, description="passes over the labelled responses")
    lr: float | None = Field(None, description="default: trainer.lr")


class ExpoConfig(Section):
    alphas: list[float] = Field(default_factory=lambda: [1.0, 1.25, 1.5, 2.0, 3.0],
                                description="ExPO theta_init + alpha·(theta_BT - theta_init), best on validation "
                                            "(1.0 = no extrapolation)")


class ArmoConfig(Section):
    objectives: list[str] = Field(default_factory=lambda: ["helpfulness", "correctness", "verbosity"],
                                  description="one ridge head per objective (ArmoRM: 19 objectives)")
    verbosity: str = Field("verbosity", description="the objective every other is decorrelated from")
    ridge_alphas: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0],
                                      description="ridge penalties tried per objective (best validation MSE)")
    corr_threshold: float = Field(0.03, ge=0, description="each lambda_i is the smallest making "
                                                          "Spearman(r_i - lambda_i·r_verbosity, r_verbosity) <= this")
    gate_hidden: int = Field(256, gt=0, description="gating MLP width (ArmoRM: 1024)")
    gate_layers: int = Field(3, ge=1, description="hidden layers of the gating MLP (ArmoRM: 3)")
    dropout: float = Field(0.2, ge=0, lt=1, description="gating MLP dropout")
    temperature: float = Field(10.0, gt=0, description="softmax(logits / T) over objectives (ArmoRM: 10)")
    steps: int = Field(600, gt=0, description="gating training steps (BT loss on pairs)")
    batch_pairs: int = Field(64, gt=0, description="pairs per gating step")
    lr: float = Field(1e-3, gt=0, description="gating AdamW LR")
    weight_decay: float = Field(0.0, ge=0, description="gating AdamW weight decay")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="gating LR after no warm-up: cosine "
                                                    "decay to 0 (RLHFlow stage-2) or constant")


class RMEval(Section):
    batch_size: int = Field(32, gt=0, description="sequences per scoring batch")


class RMConfig(Section):
    name: str = Field("rm", description="run name (directory prefix)")
    seed: int = Field(0, description="seed of the head initialisation and data order; also of the backbone and "
                                     "the data unless backbone.seed / data.seed are set")
    profile: str | None = Field(None, description="which of the recipe's profiles was applied (e.g. tiny)")
    pipeline: list[str] = Field(default_factory=lambda: ["bt"],
                                description=f"stages in order, of {STAGES}: HelpSteer2-Pref's best is "
                                            "[regression, bt, expo]; ArmoRM is [bt, armo] (BT backbone, frozen)")
    backbone: RMBackbone = Field(default_factory=RMBackbone)
    data: RMData = Field(default_factory=RMData)
    loss: RMLoss = Field(default_factory=RMLoss)
    trainer: RMTrainer = Field(default_factory=RMTrainer)
    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    expo: ExpoConfig = Field(default_factory=ExpoConfig)
    armo: ArmoConfig = Field(default_factory=ArmoConfig)
    eval: RMEval = Field(default_factory=RMEval)
    engine: EngineConfig = Field(default_factory=EngineConfig, description="device, precision, activation "
                                 "checkpointing and micro-batches of pairs (micro_batch_rows counts pairs for BT, "
                                 "responses for regression)")

    @model_validator(mode="after")
    def _check(self) -> RMConfig:
        bad = [s for s in self.pipeline if s not in STAGES]
        if bad:
            raise ValueError(f"unknown pipeline stages {bad} (choose from {list(STAGES)})")
        if not self.pipeline:
            raise ValueError("pipeline is empty")
        if len(set(self.pipeline)) != len(self.pipeline):
            raise ValueError(f"pipeline {self.pipeline} repeats a stage")
        order = [STAGES.index(s) for s in self.pipeline]
        if order != sorted(order):
            raise ValueError(f"pipeline {self.pipeline} is out of order (regression, bt, expo, armo)")
        if "expo" in self.pipeline and "bt" not in self.pipeline:
            raise ValueError("expo extrapolates a BT model: add 'bt' before it")
        if self.armo.verbosity not in self.armo.objectives:
            raise ValueError(f"armo.verbosity '{self.armo.verbosity}' is not in armo.objectives")
        if self.data.source == "files" and not self.data.train_file:
            raise ValueError("data.source is 'files' but data.train_file is not set")
        return self
