"""The quickstart: the life of a tiny model on a laptop, one stage at a time, into one run directory.

Stages: (0) Nemotron-CC-Math on generated web pages (math extraction in ten formats, dedup, decontamination),
(1) build the ``nano`` model and tokenizer and train it on procedural worked solutions (SFT from scratch),
(2) RL with verifier rewards (ProRL-style GRPO), (3) a reward model on synthetic preferences (scaled BT, then ArmoRM's
verbosity decorrelation) with the stage-1 model as backbone, (4) MaskLLM 2:4 sparsity on the RL policy (accuracy
and perplexity before/after). Each stage runs as a sub-run (``pretrain/``, ``rl/``, ``rm/``, ``sparsity/``) with its
own checkpoints, so ``--resume`` continues the stage in flight and skips finished ones.
"""

from __future__ import annotations

import json

from pydantic import Field

from refinery.compression.sparsity.policy import PolicySparsityConfig
from refinery.config import Section
from refinery.data.quickstart import QuickDataConfig
from refinery.models.pretrain import EvalConfig, PretrainConfig, PretrainData, TrainerConfig, check_config, pretrain
from refinery.reward_models.config import RMConfig
from refinery.rl.config import RLConfig
from refinery.runs import RunDir

STAGES = ("data", "pretrain", "rl", "rm", "sparsity")


def _quick_pretrain() -> PretrainConfig:
    # The RL bootstrap's recipe (20k worked solutions per task, all tokens, 800 steps; ~4.5 minutes on 2 cores).
    return PretrainConfig(
        name="quickstart-pretrain",
        data=PretrainData(n_test_per_task=100),
        trainer=TrainerConfig(steps=800),
        eval=EvalConfig(n_per_task=100),
    )


def _quick_rl() -> RLConfig:
    # ProRL-style (clip-higher, dynamic sampling, KL with reference resets) on countdown, the tiny code domain: its
    # rollouts differ enough for RL to learn from (on 2 cores, 50 steps took held-out countdown from 44% to 58%).
    from refinery.config import validate

    return validate(RLConfig, {
        "name": "quickstart-rl",
        "data": {"tasks": ["countdown"], "difficulty": {"countdown": [1, 2]}, "n_train_per_task": 5000,
                 "heldout_per_task": 200},
        "algorithm": {"eps_low": 0.2, "eps_high": 0.4, "kl_coef": 1e-3, "dynamic_sampling": True},
        "rollout": {"group_size": 8, "prompts_per_step": 16, "temperature": 1.0, "max_new_tokens": 48},
        "trainer": {"lr": 1e-4, "mini_batch_prompts": 8, "steps": 80, "eval_every": 20, "checkpoint_every": 20},
        "controllers": {"reference_reset": {"every": 40, "patience": 3}},
        "eval": {"max_new_tokens": 48},
    }, source="quickstart rl")


def _quick_rm() -> RMConfig:
    # Scaled BT on correct-vs-wrong worked solutions whose training split rewards brevity, then ArmoRM on the BT
    # model's frozen features: the gate mixes verbosity-decorrelated objectives (length correlation before/after).
    from refinery.config import validate

    return validate(RMConfig, {
        "name": "quickstart-rm", "pipeline": ["bt", "armo"], "loss": {"type": "scaled_bt"},
        "data": {"n_train": 1200, "n_valid": 200, "n_test": 400},
        "trainer": {"epochs": 3, "batch_pairs": 16, "lr": 5e-4, "max_length": 128, "eval_every": 50},
        "armo": {"gate_hidden": 64, "steps": 300},
    }, source="quickstart rm")


class QuickstartConfig(Section):
    name: str = Field("quickstart", description="run name (directory prefix)")
    seed: int = Field(0, description="seed for every stage")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description=f"stages to run, of {STAGES}")
    data: QuickDataConfig = Field(default_factory=QuickDataConfig, description="stage 0: Nemotron-CC-Math on "
                                                                               "generated pages")
    pretrain: PretrainConfig = Field(default_factory=_quick_pretrain, description="stage 1: build + SFT")
    rl: RLConfig = Field(default_factory=_quick_rl, description="stage 2: RL from the stage-1 model")
    rm: RMConfig = Field(default_factory=_quick_rm, description="stage 3: reward model on the stage-1 backbone")
    sparsity: PolicySparsityConfig = Field(default_factory=lambda: PolicySparsityConfig(name="quickstart-sparsity"),
                                           description="stage 4: MaskLLM 2:4 on the RL policy")


def _finished(path) -> bool:
    m = path / "manifest.json"
    return m.exists() and "finished" in json.loads(m.read_text())


def run_quickstart(cfg: QuickstartConfig, run: RunDir, progress: bool = True, console=None) -> dict:
    """Run the stages into sub-runs of ``run``; their headline numbers are merged into ``run``'s summary."""
    from refinery.errors import ConfigError

    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown quickstart stages {bad} (choose from {list(STAGES)})")
    say = console.print if console is not None else (lambda *a, **k: None)
    total = len(cfg.stages)
    reports = []
    for i, stage in enumerate(cfg.stages, 1):
        sub = run.path / stage
        if stage == "data":
            stage_cfg = cfg.data.model_copy(update={"seed": cfg.seed})
            what = (f"extract math from {stage_cfg.pages + 3} generated web pages (10 formats), dedup, "
                    "decontaminate")
        elif stage == "pretrain":
            stage_cfg = cfg.pretrain.model_copy(update={"seed": cfg.seed})
            check_config(stage_cfg)
            what = (f"build '{stage_cfg.model.preset}' and train it for {stage_cfg.trainer.steps} steps on "
                    f"worked solutions ({', '.join(stage_cfg.data.tasks)})")
        else:
            policy = run.path / "pretrain" / "model"
            if not (policy / "config.json").exists():
                raise ConfigError(f"the {stage} stage needs the pretrain stage's model: add 'pretrain' to stages")
            if stage == "rl":
                stage_cfg = cfg.rl.model_copy(update={
                    "seed": cfg.seed, "policy": cfg.rl.policy.model_copy(update={"path": str(policy)})})
                what = (f"RL (GRPO, clip-higher, dynamic sampling) for {stage_cfg.trainer.steps} steps on "
                        f"{', '.join(stage_cfg.data.tasks)} with verifier rewards")
            elif stage == "sparsity":
                policy = run.path / "rl" / "model"
                if not (policy / "config.json").exists():
                    raise ConfigError("the sparsity stage prunes the RL policy: add 'rl' to stages")
                stage_cfg = cfg.sparsity.model_copy(update={"seed": cfg.seed})
                what = f"MaskLLM 2:4 on the RL policy ({stage_cfg.steps} steps from a {stage_cfg.prior} prior)"
            else:
                stage_cfg = cfg.rm.model_copy(update={
                    "seed": cfg.seed, "backbone": cfg.rm.backbone.model_copy(update={"path": str(policy)})})
                what = (f"reward model ({' -> '.join(stage_cfg.pipeline)}, {stage_cfg.loss.type}) on "
                        f"{stage_cfg.data.n_train} synthetic preference pairs with a length trap")
        if _finished(sub):
            say(f"[bold]stage {i}/{total}[/bold] {stage}: already done")
        else:
            say(f"[bold]stage {i}/{total}[/bold] {stage}: {what}")
            stage_run = RunDir.create(stage_cfg, stage_cfg.name, out=sub, resume=(sub / "config.yaml").exists(),
                                      seed=cfg.seed)
            if stage == "data":
                from refinery.data.quickstart import run_data_stage

                run_data_stage(stage_cfg, stage_run, progress=progress)
            elif stage == "pretrain":
                pretrain(stage_cfg, stage_run, progress=progress)
            elif stage == "rl":
                from refinery.rl.trainer import train_rl

                train_rl(stage_cfg, stage_run, progress=progress)
            elif stage == "rm":
                from refinery.reward_models.train import train_rm

                train_rm(stage_cfg, stage_run, progress=progress)
            else:
                from refinery.compression.sparsity.policy import sparsify_policy
                from refinery.rl.rewards import RewardRouter
                from refinery.rl.trainer import load_items

                train_items, heldout = load_items(cfg.rl.model_copy(update={"seed": cfg.seed}))
                router = RewardRouter()
                try:
                    sparsify_policy(stage_cfg, policy, stage_run, heldout, lambda it, text, r=router: r(it, text)[1],
                                    [it for t in cfg.rl.data.tasks for it in train_items[t]], progress=progress)
                finally:
                    router.close()
        stage_summary = RunDir(sub).summary()
        run.write_summary({k: v for k, v in stage_summary.items() if k.startswith((f"{stage}.", "model."))})
        reports.append((stage, sub / "report.md"))
    lines = [f"# {cfg.name}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run.summary().items()]
    for stage, path in reports:
        if path.exists():
            body = path.read_text().replace("](plots/", f"]({stage}/plots/")
            lines += ["", f"## Stage: {stage}", "", body.split("\n", 1)[1] if body.startswith("# ") else body]
    run.write_report("\n".join(lines) + "\n")
    run.finish()
    return run.summary()
