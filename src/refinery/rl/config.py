"""The RL runner's config: one pydantic model, every knob documented with the paper it comes from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.engine.config import EngineConfig
from refinery.models.pretrain import PretrainConfig, default_bootstrap
from refinery.sources import DataSource


class PolicyConfig(Section):
    path: str | None = Field(None, description="HF model dir of the initial policy (an SFT checkpoint); None: "
                                                "train the bootstrap SFT policy below (cached)")
    bootstrap: PretrainConfig = Field(default_factory=default_bootstrap,
                                      description="SFT recipe used when path is None")
    seed: int | None = Field(None, description="seed of the bootstrap SFT policy (default: the run's seed); fix it "
                                               "to compare RL seeds from one SFT start")


class RLData(Section):
    tasks: list[str] = Field(default_factory=lambda: ["arithmetic", "word_problems"],
                             description="procedural tasks feeding rollouts (stages may narrow them)")
    difficulty: dict[str, list[int]] = Field(default_factory=lambda: {"arithmetic": [2, 3],
                                                                      "word_problems": [1, 2]},
                                             description="levels per task (all when absent)")
    seed: int | None = Field(None, description="seed of the prompt draws (train, held-out, validation; default: "
                                               "the run's seed); fix it to compare RL seeds on one held-out set")
    n_train_per_task: int = Field(5000, gt=0, description="training prompts per task")
    heldout_per_task: int = Field(100, ge=0, description="held-out problems per task: the reported accuracy "
                                  "before/after, read at the start and the end only")
    valid_per_task: int = Field(50, ge=0, description="validation problems per task (their own split): mid-run "
                                "evaluations and the controllers (reference-reset patience) read these")
    files: list[DataSource] = Field(default_factory=list, description="prompt files {prompt, answer, "
                                          "domain?, tests?, task?} (JSONL, e.g. crossthink_data or "
                                          "acereason_curation output, or a data source: {path|hub, split, columns: "
                                          "{prompt: question, answer: solution}}); each item goes to its domain's "
                                          "verifier")


class DifficultyFilterConfig(Section):
    enabled: bool = Field(False, description="drop prompts solved too often (AceReason)")
    max_pass_rate: float = Field(6 / 16, description="drop when pass rate > this (AceReason: 6/16)")
    from_step: int = Field(0, ge=0, description="start filtering at this step (AceReason: from the 24K stage)")


class AlgorithmConfig(Section):
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"] = Field(
        "grpo", description="group-normalised (GRPO), mean-only (Dr.GRPO), leave-one-out, REINFORCE++-baseline")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="token-mean (DAPO/AceReason), seq-mean-token-mean (GRPO), Dr.GRPO constant")
    eps_low: float = Field(0.2, ge=0, description="lower clip (PPO 0.2)")
    eps_high: float = Field(0.2, ge=0, description="upper clip; DAPO clip-higher 0.28, ProRL 0.4")
    kl_coef: float = Field(0.0, ge=0, description="beta of the KL penalty; 0 drops the reference model")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Schulman's KL estimator (NeMo-RL's "
                                                    "prorlv2: k2)")
    kl_input_clamp: float | None = Field(20.0, gt=0, description="clamp the log-ratio to +-this before the KL "
                                                                 "estimator (NeMo-RL: 20); null disables")
    kl_output_clamp: float | None = Field(10.0, gt=0, description="clamp each token's KL estimate to +-this "
                                                                  "(NeMo-RL, verl: 10); null disables")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus (0 = off)")
    rollout_correction: Literal["none", "token_truncate", "token_mask"] = Field(
        "none", description="importance weights for the sampler/trainer log-prob mismatch: token_truncate (TIS, "
                            "verl / TRL), token_mask (MIS); the sampler reports post-temperature log-probs")
    rollout_correction_cap: float = Field(2.0, gt=1, description="the weights' cap C (ms-swift's default: 2)")
    dynamic_sampling: bool = Field(False, description="drop all-equal-reward groups and refill (DAPO/ProRL)")
    max_refill_rounds: int = Field(10, ge=1, description="generation rounds per step when refilling; a batch "
                                   "still short after them is an error, never trained on partially (NeMo-RL "
                                   "dynamic_sampling_max_gen_batches: 10)")
    overlong_filter: bool = Field(False, description="mask truncated responses out of the loss (AceReason)")
    difficulty_filter: DifficultyFilterConfig = Field(default_factory=DifficultyFilterConfig)
    format_weight: float = Field(0.0, ge=0, le=1, description="weight of a format reward mixed into the reward")
    format_required: bool = Field(False, description="reward only answers that are right and in the format "
                                                     "(a boxed final answer): Nemotron-CrossThink's R = acc AND fmt")


class RolloutConfig(Section):
    group_size: int = Field(8, ge=2, description="G rollouts per prompt (AceReason 8 then 16; ProRL 16)")
    prompts_per_step: int = Field(16, ge=1, description="prompts per rollout batch (papers: 128-256)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (ProRL 1.2; controller may adjust)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: the project's sampler on the policy (one process) "
                                          "or its unsharded inference copy (torchrun); vllm: a colocated vLLM "
                                          "engine per rank, asleep during updates (needs vLLM + CUDA)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="vllm backend: the GPU memory "
                                               "fraction its engine may take while awake")
    max_new_tokens: int = Field(64, ge=1, description="response budget (length curriculum may override)")
    batch_size: int = Field(128, ge=1, description="rows per generation batch")


class RLTrainer(Section):
    steps: int = Field(100, gt=0, description="rollout batches (policy updates happen per mini-batch)")
    lr: float = Field(1e-5, gt=0, description="constant LR (AceReason 1e-6 math / 5e-6 code; ProRL 2e-6)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay")
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip (0 = off)")
    mini_batch_prompts: int | None = Field(None, ge=1, description="prompts per update; None = one update per "
                                                                   "batch (strictly on-policy, AceReason)")
    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    lr_decay: Literal["none", "linear", "cosine"] = Field(
        "none", description="decay of the LR to min_lr_ratio * lr at the last step (none: constant, as ProRL and "
                            "AceReason); starts at lr_decay_start")
    lr_decay_start: float = Field(0.0, ge=0, lt=1, description="fraction of trainer.steps after which the decay "
                                                               "begins (e.g. 0.7: constant, then a cool-down)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="LR at the last step, as a fraction of lr")
    eval_every: int = Field(20, gt=0, description="steps between held-out evaluations")
    eval_prompts: int = Field(200, ge=1, description="validation prompts evaluated mid-run (valid_accuracy)")
    checkpoint_every: int = Field(20, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    threads: int | None = Field(None, description="torch threads (default: all cores)")


class LengthStage(Section):
    max_new_tokens: int = Field(..., ge=1, description="response budget in this stage")
    until_step: int | None = Field(None, description="stage ends at this step (None: last stage)")


class DomainStage(Section):
    """One stage of the run's schedule; unset fields keep the run-wide value (AceReason changes the domain, the
    group size, the LR, the response budget and overlong filtering from stage to stage)."""

    tasks: list[str] | None = Field(None, description="tasks sampled in this stage (None: every data task)")
    steps: int | None = Field(None, gt=0, description="length of the stage (None: until the end)")
    group_size: int | None = Field(None, ge=2, description="G in this stage (AceReason: 8, then 16 from 24K)")
    lr: float | None = Field(None, gt=0, description="LR in this stage (AceReason: 1e-6 math, 5e-6 code)")
    max_new_tokens: int | None = Field(None, ge=1, description="response budget in this stage (over the length "
                                                                "curriculum)")
    overlong_filter: bool | None = Field(None, description="mask truncated responses in this stage (AceReason: "
                                                           "on at 8K/16K, off at 32K)")


class TemperatureControl(Section):
    enabled: bool = Field(False, description="adjust temperature to hold entropy (AceReason 1.1)")
    target: float = Field(0.3, gt=0, description="target temperature-adjusted entropy (AceReason 1.1: 0.3)")
    rate: float = Field(0.5, gt=0, description="multiplicative step size")
    min_temperature: float = Field(0.3, gt=0, description="floor")
    max_temperature: float = Field(2.0, gt=0, description="ceiling")


class ReferenceResetConfig(Section):
    every: int | None = Field(None, description="reset the reference policy every N steps (ProRL)")
    patience: int | None = Field(None, description="reset after N evals without validation improvement")
    kl_threshold: float | None = Field(None, description="reset when mean KL exceeds this")
    reset_optimizer: bool = Field(True, description="also clear optimizer state (ProRL)")


class Controllers(Section):
    length_curriculum: list[LengthStage] = Field(default_factory=list,
                                                 description="AceReason 8K->16K->24K->32K; empty = fixed budget")
    length_plateau_patience: int | None = Field(None, description="also advance a length stage on plateau")
    stages: list[DomainStage] = Field(default_factory=list, description="the stage plan: AceReason math-only then "
                                      "code-only, each stage with its own G, LR, budget and overlong filter")
    temperature: TemperatureControl = Field(default_factory=TemperatureControl)
    reference_reset: ReferenceResetConfig = Field(default_factory=ReferenceResetConfig)


class RewardConfig(Section):
    type: Literal["verifier", "reward_model"] = Field(
        "verifier", description="'verifier': the domain's verifier scores each rollout (RLVR); 'reward_model': a "
                                "trained reward model does (verifiers still measure accuracy)")
    path: str | None = Field(None, description="reward-model directory (the 'model' folder of 'refinery rm train')")
    batch_size: int = Field(64, ge=1, description="responses per reward-model forward")


class RLEval(Section):
    max_new_tokens: int = Field(64, ge=1, description="greedy budget for held-out accuracy")
    batch_size: int = Field(128, ge=1, description="prompts per generation batch")


class RLConfig(Section):
    name: str = Field("rl", description="run name (directory prefix)")
    seed: int = Field(0, description="seed for data, sampling and init")
    profile: str | None = Field(None, description="which of the recipe's profiles was applied (e.g. tiny)")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    data: RLData = Field(default_factory=RLData)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    trainer: RLTrainer = Field(default_factory=RLTrainer)
    controllers: Controllers = Field(default_factory=Controllers)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    eval: RLEval = Field(default_factory=RLEval)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if self.reward.type == "reward_model" and not self.reward.path:
            raise ValueError("reward.type is 'reward_model' but reward.path is not set")
        mb = self.trainer.mini_batch_prompts
        if mb is not None and self.rollout.prompts_per_step % mb:
            raise ValueError(f"rollout.prompts_per_step ({self.rollout.prompts_per_step}) must be a multiple of "
                             f"trainer.mini_batch_prompts ({mb})")
        for stage in self.controllers.stages:
            bad = [t for t in stage.tasks or [] if t not in self.data.tasks]
            if bad:
                raise ValueError(f"stage tasks {bad} are not in data.tasks {self.data.tasks}")
        return self
