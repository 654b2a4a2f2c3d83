"""The quickstart: the life of a tiny model on a laptop, one stage at a time, into one run directory.

Stages: (0) Nemotron-CC-Math on generated web pages (math extraction in ten formats, dedup, decontamination),
(1) build the ``nano`` model and tokenizer and train it on procedural worked solutions (SFT from scratch),
(2) RL with verifier rewards (ProRL-style GRPO), (3) a reward model on synthetic preferences (scaled BT, then ArmoRM's
verbosity decorrelation) with the stage-1 model as backbone, (4) MaskLLM 2:4 sparsity on the RL policy (accuracy
and perplexity before/after), (5) Puzzle on the RL policy (a child at a measured decode-throughput target). Each
stage runs as a sub-run (``pretrain/``, ``rl/``, ``rm/``, ``sparsity/``) with its
own checkpoints, so ``--resume`` continues the stage in flight and skips finished ones.
"""

from __future__ import annotations

import json

from pydantic import Field

from refinery.compression.puzzle.config import PuzzleRecipe
from refinery.compression.sparsity.policy import PolicySparsityConfig
from refinery.config import Section
from refinery.data.quickstart import QuickDataConfig
from refinery.models.pretrain import EvalConfig, PretrainConfig, PretrainData, TrainerConfig, check_config, pretrain
from refinery.reward_models.config import RMConfig
from refinery.rl.config import RLConfig
from refinery.runs import RunDir

STAGES = ("data", "pretrain", "rl", "rm", "sparsity", "puzzle")


def _quick_pretrain() -> PretrainConfig:
    # ProRL tiny's SFT start: countdown worked solutions only (RL, MaskLLM and Puzzle use countdown), 22 per step
    # for 800 steps, all tokens (~1.7 minutes on 2 cores). The steps, not the examples, set the accuracy: 800 steps
    # of 22 reach what 800 of 64 over three tasks reach on countdown, at a third of the compute (RESULTS.md).
    return PretrainConfig(
        name="quickstart-pretrain",
        data=PretrainData(tasks=["countdown"], n_test_per_task=100),
        trainer=TrainerConfig(steps=800, batch_size=22),
        eval=EvalConfig(n_per_task=100),
    )


def _quick_rl() -> RLConfig:
    # ProRL-style (clip-higher, dynamic sampling, KL with reference resets) on countdown, the tiny code domain: its
    # rollouts differ enough for RL to learn from (measured on a twin-free held-out set: benchmarks/RESULTS.md).
    from refinery.config import validate

    return validate(RLConfig, {
        "name": "quickstart-rl",
        "data": {"tasks": ["countdown"], "difficulty": {"countdown": [1, 2]}, "n_train_per_task": 5000,
                 "heldout_per_task": 200, "valid_per_task": 200},
        "algorithm": {"eps_low": 0.2, "eps_high": 0.4, "kl_coef": 1e-3, "kl_estimator": "k2",
                      "dynamic_sampling": True},
        "rollout": {"group_size": 8, "prompts_per_step": 16, "temperature": 1.0, "max_new_tokens": 48},
        "trainer": {"lr": 1e-4, "mini_batch_prompts": 8, "steps": 64, "eval_every": 16, "checkpoint_every": 16},
        "controllers": {"reference_reset": {"every": 32, "patience": 3}},
        "eval": {"max_new_tokens": 48},
    }, source="quickstart rl")


def _quick_rm() -> RMConfig:
    # Scaled BT on correct-vs-wrong worked solutions whose training split rewards brevity, then ArmoRM on the BT
    # model's frozen features: the gate mixes verbosity-decorrelated objectives (length correlation before/after).
    from refinery.config import validate

    return validate(RMConfig, {
        "name": "quickstart-rm", "pipeline": ["bt", "armo"], "loss": {"type": "scaled_bt"},
        "data": {"tasks": ["countdown"], "n_train": 1200, "n_valid": 200, "n_test": 400},
        "trainer": {"epochs": 2, "batch_pairs": 16, "lr": 5e-4, "max_length": 128, "eval_every": 50},
        "armo": {"gate_hidden": 64, "steps": 300},
    }, source="quickstart rm")


def _quick_puzzle() -> PuzzleRecipe:
    # The 4-layer RL policy as parent, its own answers as data; small BLD/GKD budgets (about a minute on 2 cores).
    from refinery.config import validate

    return validate(PuzzleRecipe, {
        "name": "quickstart-puzzle",
        "data": {"seq_len": 96, "n_calib": 64, "n_score": 16, "n_distill": 256},
        "bld": {"steps": 45, "lr": 1e-3, "batch_size": 8},
        "cost": {"batch_size": 8, "seq_len": 128, "repeats": 5, "model_repeats": 5},
        "search": {"target_speedup": 1.5, "n_solutions": 3},
        "gkd": {"steps": 60, "lr": 5e-4, "batch_size": 8},
    }, source="quickstart puzzle")


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
    puzzle: PuzzleRecipe = Field(default_factory=_quick_puzzle, description="stage 5: Puzzle on the RL policy")


def _finished(path) -> bool:
    m = path / "manifest.json"
    return m.exists() and "finished" in json.loads(m.read_text())


# What each stage needs from the others (a stage whose dependency failed or is not in the run is skipped).
NEEDS = {"data": None, "pretrain": None, "rl": "pretrain", "rm": "pretrain", "sparsity": "rl", "puzzle": "rl"}
MODEL_OF = {"pretrain": "pretrain/model", "rl": "rl/model"}


def _describe(stage: str, c) -> str:
    if stage == "data":
        return f"extract math from {c.pages + 3} generated web pages (10 formats), dedup, decontaminate"
    if stage == "pretrain":
        return (f"build '{c.model.preset}' and train it for {c.trainer.steps} steps on worked solutions "
                f"({', '.join(c.data.tasks)})")
    if stage == "rl":
        return (f"RL (GRPO, clip-higher, dynamic sampling) for {c.trainer.steps} steps on {', '.join(c.data.tasks)} "
                "with verifier rewards")
    if stage == "rm":
        return (f"reward model ({' -> '.join(c.pipeline)}, {c.loss.type}) on {c.data.n_train} synthetic preference "
                "pairs with a length trap")
    if stage == "sparsity":
        return f"MaskLLM 2:4 on the RL policy ({c.steps} steps from a {c.prior} prior)"
    return (f"Puzzle on the RL policy: block library + BLD, replace-1-block scores, MILP for "
            f"{c.search.target_speedup}x measured decode throughput, GKD")


def _stage_config(cfg: QuickstartConfig, stage: str, run: RunDir):
    seed = {"seed": cfg.seed}
    if stage == "data":
        return cfg.data.model_copy(update=seed)
    if stage == "pretrain":
        c = cfg.pretrain.model_copy(update=seed)
        check_config(c)
        return c
    policy = str(run.path / "pretrain" / "model")
    if stage == "rl":
        return cfg.rl.model_copy(update={**seed, "policy": cfg.rl.policy.model_copy(update={"path": policy})})
    if stage == "rm":
        return cfg.rm.model_copy(update={**seed, "backbone": cfg.rm.backbone.model_copy(update={"path": policy})})
    if stage == "sparsity":
        return cfg.sparsity.model_copy(update=seed)
    return cfg.puzzle.model_copy(update={**seed, "parent": str(run.path / "rl" / "model")})


def _run_stage(cfg: QuickstartConfig, stage: str, stage_cfg, stage_run: RunDir, run: RunDir, progress: bool):
    if stage == "data":
        from refinery.data.quickstart import run_data_stage

        return run_data_stage(stage_cfg, stage_run, progress=progress)
    if stage == "pretrain":
        return pretrain(stage_cfg, stage_run, progress=progress)
    if stage == "rl":
        from refinery.rl.trainer import train_rl

        return train_rl(stage_cfg, stage_run, progress=progress)
    if stage == "rm":
        from refinery.reward_models.train import train_rm

        return train_rm(stage_cfg, stage_run, progress=progress)
    from refinery.rl.rewards import RewardRouter
    from refinery.rl.trainer import load_items

    train_items, heldout, _ = load_items(cfg.rl.model_copy(update={"seed": cfg.seed}))
    train = [it for t in cfg.rl.data.tasks for it in train_items[t]]
    router = RewardRouter()
    try:
        if stage == "sparsity":
            from refinery.compression.sparsity.policy import sparsify_policy

            return sparsify_policy(stage_cfg, run.path / "rl" / "model", stage_run, heldout,
                                   lambda it, text, r=router: r(it, text)[1], train, progress=progress)
        from refinery.compression.puzzle.policy import puzzle_policy

        return puzzle_policy(stage_cfg, run.path / "rl" / "model", stage_run, heldout,
                             lambda it, text, r=router: r(it, text)[1], train, cfg.rl.eval.max_new_tokens,
                             progress=progress)
    finally:
        router.close()


def run_quickstart(cfg: QuickstartConfig, run: RunDir, progress: bool = True, console=None) -> dict:
    """Run the stages into sub-runs of ``run``; their headline numbers are merged into ``run``'s summary.

    A finished stage is not redone. A stage that fails is reported (``<stage>.status``) and the stages that do not
    depend on it still run; the report says what failed and why."""
    import time
    import traceback

    from refinery.errors import ConfigError

    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown quickstart stages {bad} (choose from {list(STAGES)})")
    for stage in cfg.stages:
        need = NEEDS[stage]
        if need and need not in cfg.stages and not (run.path / MODEL_OF[need] / "config.json").exists():
            raise ConfigError(f"the {stage} stage needs the {need} stage's model: add '{need}' to stages")
    say = console.print if console is not None else (lambda *a, **k: None)
    total = len(cfg.stages)
    failed: dict[str, str] = {}
    for i, stage in enumerate(cfg.stages, 1):
        sub = run.path / stage
        need = NEEDS[stage]
        if need in failed:
            failed[stage] = f"skipped: the {need} stage failed"
            say(f"[bold]stage {i}/{total}[/bold] {stage}: [yellow]{failed[stage]}[/yellow]")
            run.write_summary({f"{stage}.status": failed[stage]})
            continue
        try:
            stage_cfg = _stage_config(cfg, stage, run)
            if _finished(sub):
                say(f"[bold]stage {i}/{total}[/bold] {stage}: already done")
            else:
                say(f"[bold]stage {i}/{total}[/bold] {stage}: {_describe(stage, stage_cfg)}")
                t0 = time.perf_counter()
                stage_run = RunDir.create(stage_cfg, stage_cfg.name, out=sub, resume=(sub / "config.yaml").exists(),
                                          seed=cfg.seed)
                _run_stage(cfg, stage, stage_cfg, stage_run, run, progress)
                # wall time of this invocation's work on the stage (a resumed stage counts only what was left)
                run.write_summary({f"{stage}.wall_s": round(time.perf_counter() - t0, 1)})
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one stage's failure must not cost the others
            failed[stage] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            say(f"[bold]stage {i}/{total}[/bold] {stage}: [red]{failed[stage]}[/red]")
            (run.path / f"{stage}.error.txt").write_text(traceback.format_exc())
            run.write_summary({f"{stage}.status": failed[stage]})
            continue
        stage_summary = RunDir(sub).summary()
        run.write_summary({f"{stage}.status": "ok",
                           **{k: v for k, v in stage_summary.items() if k.startswith((f"{stage}.", "model."))}})
    write_reports(cfg, run, failed)
    run.finish()
    return run.summary()


HEADLINES = [("data.formula_recall", "formula recall", "{:.2f}"), ("pretrain.accuracy", "SFT accuracy", "{:.1%}"),
             ("rl.accuracy_before", "RL accuracy before", "{:.1%}"), ("rl.accuracy_after", "RL accuracy after",
                                                                      "{:.1%}"),
             ("rl.train_pass_rate_first", "RL train pass rate, 1st quarter", "{:.1%}"),
             ("rl.train_pass_rate_last", "RL train pass rate, last quarter", "{:.1%}"),
             ("rm.accuracy", "RM accuracy", "{:.3f}"), ("sparsity.ppl_maskllm", "MaskLLM 2:4 ppl", "{:.3f}"),
             ("puzzle.measured_speedup", "Puzzle speed-up", "{:.2f}x"), ("puzzle.ppl_child", "Puzzle child ppl",
                                                                        "{:.3f}"),
             ("puzzle.accuracy_child", "Puzzle child accuracy", "{:.1%}")]


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def write_reports(cfg: QuickstartConfig, run: RunDir, failed: dict[str, str]) -> None:
    """``report.md`` and a self-contained ``report.html`` (every figure embedded) from the stage reports."""
    from refinery.report import markdown_to_html

    summary = run.summary()
    lines = [f"# {cfg.name}", "", "| stage | status | wall time | headline numbers |", "|---|---|---|---|"]
    for stage in cfg.stages:
        heads = [f"{label} {fmt.format(summary[k])}" for k, label, fmt in HEADLINES
                 if k.startswith(f"{stage}.") and isinstance(summary.get(k), (int, float))]
        wall = summary.get(f"{stage}.wall_s")
        lines.append(f"| {stage} | {summary.get(f'{stage}.status', '-')} | "
                     f"{_minutes(wall) if isinstance(wall, (int, float)) else '-'} | {'; '.join(heads) or '-'} |")
    walls = [summary[f"{s}.wall_s"] for s in cfg.stages if isinstance(summary.get(f"{s}.wall_s"), (int, float))]
    if walls:
        lines.append(f"| total | | {_minutes(sum(walls))} | |")
    if failed:
        lines += ["", "## Stages that did not finish", ""]
        lines += [f"- {s}: {why} (traceback: `{s}.error.txt`)" if why.startswith("failed") else f"- {s}: {why}"
                  for s, why in failed.items()]
    for stage in cfg.stages:
        path = run.path / stage / "report.md"
        if stage in failed or not path.exists():
            continue
        body = path.read_text().replace("](plots/", f"]({stage}/plots/")
        body = body.split("\n", 1)[1] if body.startswith("# ") else body
        body = "\n".join("#" + ln if ln.startswith("## ") else ln for ln in body.splitlines())  # nest its sections
        lines += ["", f"## Stage: {stage}", "", body]
    lines += ["", "## All numbers (summary.json)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()]
    md = "\n".join(lines) + "\n"
    run.write_report(md)
    cards = [(label, fmt.format(summary[k])) for k, label, fmt in HEADLINES if isinstance(summary.get(k), (int, float))]
    from refinery.runs import atomic_write_text

    atomic_write_text(run.path / "report.html", markdown_to_html(md, run.path, cfg.name, cards))
