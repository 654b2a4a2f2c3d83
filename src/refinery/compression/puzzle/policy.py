"""Puzzle on a task policy (the quickstart's Puzzle stage): search, assemble and distill on the policy's own answers
(as the sparsity stage does: an RL policy no longer writes its SFT solutions), then held-out accuracy of the parent,
the Puzzle child and the uniform baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from refinery.compression.puzzle.config import PuzzleRecipe
from refinery.runs import RunDir


def puzzle_policy(cfg: PuzzleRecipe, policy_dir: Path, run: RunDir, items: list[dict],
                  score: Callable[[dict, str], bool], train_items: list[dict], max_new_tokens: int = 48,
                  progress: bool = True) -> dict:
    """``items``: held-out problems (accuracy; the first ``data.n_score`` also give the replace-1-block scores);
    ``train_items``: prompts whose answers feed BLD and GKD."""
    import torch

    from refinery.compression.puzzle.runner import run_puzzle
    from refinery.compression.sparsity.policy import answer_rows
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.models.io import load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_dir)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def answers(model, probs):
        return HFGenerator(model, tok).generate([[{"role": "user", "content": it["prompt"]}] for it in probs], greedy)

    def accuracy(model) -> float:
        outs = answers(model, items)
        return sum(bool(score(it, o.text)) for it, o in zip(items, outs)) / max(len(items), 1)

    parent = load_model(policy_dir)
    d = cfg.data
    train = train_items[: d.n_distill]
    ids, mask = answer_rows(tok, train, answers(parent, train), d.seq_len)
    hids, hmask = answer_rows(tok, items, answers(parent, items), d.seq_len)
    n_score = min(d.n_score, len(items) // 2)
    rows = {"calib": (ids[: d.n_calib], mask[: d.n_calib]), "distill": (ids, mask),
            "score": (hids[:n_score], hmask[:n_score]), "eval": (hids[n_score:], hmask[n_score:])}
    cfg = cfg.model_copy(update={"parent": str(policy_dir)})
    s = run_puzzle(cfg, run, progress=progress, rows=rows, finish=False)
    acc = {"parent": accuracy(parent), "child": accuracy(load_model(run.path / "child"))}
    if (run.path / "baseline" / "config.json").exists():
        acc["baseline"] = accuracy(load_model(run.path / "baseline"))
    summary = {f"puzzle.{k}": v for k, v in s.items() if isinstance(v, (int, float)) and not k.startswith("seconds_")}
    summary.update({f"puzzle.accuracy_{k}": round(v, 4) for k, v in acc.items()})
    summary["puzzle.architecture"] = s["architecture"]
    run.write_summary(summary)
    report = (run.path / "report.md").read_text()
    extra = "\n".join(["", f"Held-out accuracy ({len(items)} problems, greedy): parent {acc['parent']:.3f}, "
                       f"Puzzle child {acc['child']:.3f}"
                       + (f", uniform baseline {acc['baseline']:.3f}" if "baseline" in acc else "") + "."])
    run.write_report(report + extra + "\n")
    run.finish()
    return run.summary()
