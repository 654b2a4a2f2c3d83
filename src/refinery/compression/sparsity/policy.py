"""MaskLLM on a task policy (the quickstart's sparsity stage): calibrate on the policy's own training distribution
(chat-formatted worked solutions), learn 2:4 masks from a SparseGPT prior, and report held-out accuracy and
perplexity before and after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from pydantic import Field

from refinery.config import Section
from refinery.runs import RunDir


class PolicySparsityConfig(Section):
    name: str = Field("sparsity", description="run name")
    seed: int = Field(0, description="seed for calibration windows and Gumbel noise")
    tasks: list[str] = Field(default_factory=lambda: ["arithmetic", "word_problems", "countdown"],
                             description="tasks whose worked solutions form the calibration / held-out text")
    n_calib: int = Field(128, gt=0, description="calibration windows (MaskLLM/SparseGPT: 128)")
    seq_len: int = Field(128, ge=8, description="calibration / perplexity window length")
    prior: str = Field("sparsegpt", description="one-shot prior of the masks (the paper: SparseGPT)")
    steps: int = Field(150, ge=0, description="MaskLLM steps")
    lr: float = Field(1e-3, gt=0, description="base LR (mask logits train at 10x)")
    batch_size: int = Field(8, gt=0, description="windows per MaskLLM step")
    max_new_tokens: int = Field(48, gt=0, description="greedy budget for held-out accuracy")


def task_text(tokenizer, tasks: list[str], n: int, split: str, seed: int) -> str:
    """Chat-formatted prompt + worked solution of ``n`` items per task, joined."""
    from refinery.tasks import sample

    parts = []
    for t in tasks:
        for it in sample(t, n, seed=seed, split=split):
            chat = [{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": it["solution"]}]
            parts.append(tokenizer.apply_chat_template(chat, tokenize=False))
    return "".join(parts)


def sparsify_policy(cfg: PolicySparsityConfig, policy_dir: Path, run: RunDir, items: list[dict],
                    score: Callable[[dict, str], bool], progress: bool = True) -> dict:
    from refinery.compression.sparsity.maskllm import maskllm
    from refinery.compression.sparsity.nm import sparsity_report
    from refinery.compression.sparsity.oneshot import sequential_prune
    from refinery.compression.sparsity.runner import calibration_windows
    from refinery.eval.accuracy import heldout_accuracy
    from refinery.eval.perplexity import perplexity, token_windows
    from refinery.generation.hf import HFGenerator
    from refinery.models.io import load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_dir)
    calib = calibration_windows(tok, task_text(tok, cfg.tasks, 600, "train", cfg.seed), cfg.n_calib, cfg.seq_len,
                                cfg.seed)
    held = token_windows(tok, task_text(tok, cfg.tasks, 60, "test", cfg.seed), cfg.seq_len)

    def measure(model) -> tuple[float, float]:
        acc = heldout_accuracy(HFGenerator(model, tok), items, score, cfg.max_new_tokens).get("accuracy", 0.0)
        return acc, perplexity(model, held)

    dense = load_model(policy_dir)
    acc_dense, ppl_dense = measure(dense)
    t0 = time.perf_counter()
    prior_model = load_model(policy_dir)
    priors = sequential_prune(prior_model, calib, cfg.prior)
    acc_prior, ppl_prior = measure(prior_model)
    del prior_model
    from refinery.progress import StepBar

    bar = StepBar(progress, cfg.steps, 0, "maskllm", ("loss",))

    def log(step: int, row: dict) -> None:
        bar.update(step, row)
        if step % 10 == 0 or step == cfg.steps:
            run.log_metrics(step, **row)

    model = load_model(policy_dir)
    maskllm(model, calib, priors=priors, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
            log=log)
    bar.close()
    seconds = time.perf_counter() - t0
    acc_ml, ppl_ml = measure(model)
    model.save_pretrained(run.path / "model")
    tok.save_pretrained(run.path / "model")
    summary = {"sparsity.accuracy_dense": round(acc_dense, 4), f"sparsity.accuracy_{cfg.prior}": round(acc_prior, 4),
               "sparsity.accuracy_maskllm": round(acc_ml, 4), "sparsity.ppl_dense": round(ppl_dense, 4),
               f"sparsity.ppl_{cfg.prior}": round(ppl_prior, 4), "sparsity.ppl_maskllm": round(ppl_ml, 4),
               "sparsity.fraction": round(sparsity_report(model)["overall"], 4), "sparsity.heldout_n": len(items),
               "sparsity.seconds": round(seconds, 1)}
    run.write_summary(summary)
    from refinery.report import plot_metrics

    plot = plot_metrics(run.metrics(), ["loss", "tau", "kappa"], run.path / "plots" / "maskllm.png",
                        title="MaskLLM on the RL policy")
    lines = [f"# {cfg.name}", "", f"2:4 on every block Linear of the RL policy; MaskLLM {cfg.steps} steps from a "
             f"{cfg.prior} prior; held-out accuracy on {len(items)} problems, perplexity on held-out worked "
             "solutions.", "", "| model | accuracy | perplexity |", "|---|---|---|",
             f"| dense | {acc_dense:.3f} | {ppl_dense:.3f} |",
             f"| {cfg.prior} 2:4 | {acc_prior:.3f} | {ppl_prior:.3f} |",
             f"| MaskLLM 2:4 | {acc_ml:.3f} | {ppl_ml:.3f} |"]
    if plot:
        lines += ["", f"![MaskLLM training](plots/{plot.name})"]
    run.write_report("\n".join(lines) + "\n")
    run.finish()
    return run.summary()
