"""The quickstart: the life of a tiny model on a laptop, one stage at a time, into one run directory.

Stages so far: build the ``nano`` model and tokenizer, pretrain it on procedural worked solutions, and measure
held-out accuracy. Later stages (SFT, RL, reward model, compression, data) add sections to this config.
"""

from __future__ import annotations

from pydantic import Field

from refinery.config import Section
from refinery.models.pretrain import EvalConfig, PretrainConfig, PretrainData, TrainerConfig, check_config, pretrain
from refinery.runs import RunDir


def _quick_pretrain() -> PretrainConfig:
    # ~2 minutes on 2 cores: long enough for the nano model to solve the easy levels, not the hard ones,
    # which leaves later stages (SFT, RL) something to improve.
    return PretrainConfig(
        name="quickstart-pretrain",
        data=PretrainData(n_train_per_task=5000, n_test_per_task=100,
                          difficulty={"arithmetic": [1, 2, 3], "word_problems": [1, 2], "countdown": [1, 2]}),
        trainer=TrainerConfig(steps=400, batch_size=64, lr=3e-3, warmup_steps=30, eval_every=100,
                              checkpoint_every=100),
        eval=EvalConfig(n_per_task=100),
    )


class QuickstartConfig(Section):
    name: str = Field("quickstart", description="run name (directory prefix)")
    seed: int = Field(0, description="seed for every stage")
    pretrain: PretrainConfig = Field(default_factory=_quick_pretrain, description="stage 1: build + pretrain")


def run_quickstart(cfg: QuickstartConfig, run: RunDir, progress: bool = True, console=None) -> dict:
    """Run every stage into ``run``; stages write their numbers under their own prefix in summary.json."""
    pre = cfg.pretrain.model_copy(update={"seed": cfg.seed})
    check_config(pre)
    if console is not None:
        console.print(f"[bold]stage 1/1[/bold]: build '{pre.model.preset}' and pretrain for "
                      f"{pre.trainer.steps} steps on {', '.join(pre.data.tasks)}")
    pretrain(pre, run, progress=progress)
    return run.summary()
