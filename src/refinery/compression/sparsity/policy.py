"""MaskLLM on a task policy (the quickstart's sparsity stage): calibrate on the policy's own behaviour (its greedy
answers to training prompts: an RL policy no longer writes the SFT solutions it started from, and masks fitted to
those undo the RL), learn 2:4 masks from a SparseGPT prior, and report held-out accuracy and perplexity of the
dense policy's answers before and after."""

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
    n_calib: int = Field(512, gt=0, description="training prompts whose greedy answers calibrate the masks")
    seq_len: int = Field(128, ge=8, description="longest calibration / held-out example (tokens)")
    prior: str = Field("sparsegpt", description="one-shot prior of the masks (the paper: SparseGPT)")
    steps: int = Field(150, ge=0, description="MaskLLM steps")
    lr: float = Field(1e-4, gt=0, description="base LR (mask logits train at 10x); measured on the quickstart "
                                              "policy: 1e-3 wanders off the prior, 1e-4 beats it")
    batch_size: int = Field(8, gt=0, description="windows per MaskLLM step")
    max_new_tokens: int = Field(48, gt=0, description="greedy budget for held-out accuracy")


def answer_rows(tokenizer, items: list[dict], completions, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat prompt + generated answer (with its EOS) per row, right-padded: ``(ids [N, L], real-token mask)``."""
    rows = []
    for it, c in zip(items, completions):
        head = tokenizer.apply_chat_template([{"role": "user", "content": it["prompt"]}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
        rows.append((list(head) + list(c.token_ids))[:max_len])
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
    return ids, mask


def sparsify_policy(cfg: PolicySparsityConfig, policy_dir: Path, run: RunDir, items: list[dict],
                    score: Callable[[dict, str], bool], train_items: list[dict], progress: bool = True) -> dict:
    """``items``: held-out problems (accuracy); ``train_items``: prompts whose answers calibrate."""
    from refinery.compression.sparsity.maskllm import maskllm
    from refinery.compression.sparsity.nm import sparsity_report
    from refinery.compression.sparsity.oneshot import sequential_prune
    from refinery.compression.sparsity.runner import restore_weights
    from refinery.eval.perplexity import perplexity
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.models.io import load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_dir)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens)

    def answers(model, probs: list[dict]):
        return HFGenerator(model, tok).generate([[{"role": "user", "content": it["prompt"]}] for it in probs], greedy)

    def accuracy(outs) -> float:
        return sum(bool(score(it, o.text)) for it, o in zip(items, outs)) / max(len(items), 1)

    dense = load_model(policy_dir)
    calib, calib_mask = answer_rows(tok, train_items[: cfg.n_calib], answers(dense, train_items[: cfg.n_calib]),
                                    cfg.seq_len)
    dense_held = answers(dense, items)
    held, held_mask = answer_rows(tok, items, dense_held, cfg.seq_len)  # ppl of the dense policy's own answers

    def measure(model) -> tuple[float, float]:
        return accuracy(answers(model, items)), perplexity(model, held, mask=held_mask)

    acc_dense, ppl_dense = accuracy(dense_held), perplexity(dense, held, mask=held_mask)
    t0 = time.perf_counter()
    model = dense  # one copy: prune it for the prior, measure, then reload its dense block weights from disk
    priors = sequential_prune(model, calib, cfg.prior, calib_mask=calib_mask)
    acc_prior, ppl_prior = measure(model)
    restore_weights(model, policy_dir, list(priors))
    from refinery.progress import StepBar

    bar = StepBar(progress, cfg.steps, 0, "maskllm", ("loss",))

    def log(step: int, row: dict) -> None:
        bar.update(step, row)
        if step % 10 == 0 or step == cfg.steps:
            run.log_metrics(step, **row)

    maskllm(model, calib, priors=priors, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
            log=log, calib_mask=calib_mask)
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
             f"{cfg.prior} prior; held-out accuracy on {len(items)} problems, perplexity on the held-out "
             f"answers of the dense policy (calibration: its answers to {cfg.n_calib} training prompts).", "",
             "| model | accuracy | perplexity |", "|---|---|---|",
             f"| dense | {acc_dense:.3f} | {ppl_dense:.3f} |",
             f"| {cfg.prior} 2:4 | {acc_prior:.3f} | {ppl_prior:.3f} |",
             f"| MaskLLM 2:4 | {acc_ml:.3f} | {ppl_ml:.3f} |"]
    if plot:
        lines += ["", f"![MaskLLM training](plots/{plot.name})"]
    run.write_report("\n".join(lines) + "\n")
    run.finish()
    return run.summary()
