"""Puzzle: (1) the MILP at paper scale (80 layers x 50 variants) and against brute force on small instances;
(2) the whole search on a real 8-layer model: the Puzzle child vs the uniform-shrink baseline at the same measured
decode-throughput target, both assembled from the same BLD library and distilled with the same GKD budget.

    python benchmarks/bench_puzzle.py [--target 1.5] [--pretrain-steps 1000] [--record]

Parent: nano Llama with 8 layers pretrained on 90% of WikiText-2 (cached). BLD calibration and GKD on that 90%;
scores and perplexity on the held-out last 10% (disjoint windows). Speed: decode steps with a KV cache at batch 8,
context 256, child and parent measured alternately on this machine (median of 5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def milp_part() -> list[str]:
    from refinery.compression.puzzle.search import Problem, brute_force, diverse_solutions, solve

    rng = np.random.default_rng(0)
    L, V = 80, 50
    scores = rng.random((L, V)) * np.linspace(0, 1, V)  # cheaper variants hurt more, with noise
    runtime = rng.random((L, V)) * 0.1 + np.linspace(1, 0.05, V)
    memory = rng.random((L, V)) * 0.1 + np.linspace(1, 0.0, V)
    prob = Problem(scores, {"runtime": runtime, "memory": memory},
                   {"runtime": runtime[:, 0].sum() / 1.5, "memory": memory[:, 0].sum() * 0.6})
    t0 = time.perf_counter()
    sol = solve(prob)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    sols = diverse_solutions(prob, 4, alpha=0.8)
    four = time.perf_counter() - t0
    assert sol is not None and prob.feasible(sol)
    agree, total, t_bf, t_milp = 0, 0, 0.0, 0.0
    for seed in range(30):
        r = np.random.default_rng(seed)
        small = Problem(r.random((6, 5)), {"runtime": r.random((6, 5))}, {"runtime": 2.0})
        t0 = time.perf_counter()
        ref = brute_force(small)
        t_bf += time.perf_counter() - t0
        t0 = time.perf_counter()
        got = solve(small)
        t_milp += time.perf_counter() - t0
        total += 1
        agree += (ref is None and got is None) or (ref is not None and got is not None
                                                   and abs(small.value(ref) - small.value(got)) < 1e-9)
    lines = [f"- MILP {L} layers x {V} variants, memory + throughput budgets: {one:.2f} s for the optimum, "
             f"{four:.2f} s for 4 diverse solutions (alpha 0.8; {len(sols)} found)",
             f"- small instances (6 layers x 5 variants, 15,625 architectures): MILP = brute force on {agree}/{total}; "
             f"brute force {t_bf / total * 1e3:.0f} ms vs MILP {t_milp / total * 1e3:.1f} ms per instance"]
    for ln in lines:
        print(ln)
    return lines


def search_part(args) -> list[str]:
    from _common import wikitext_model

    from refinery.compression.puzzle.config import PuzzleRecipe
    from refinery.compression.puzzle.runner import run_puzzle
    from refinery.config import load_config
    from refinery.runs import RunDir

    model, train, held = wikitext_model(args.pretrain_steps, num_layers=8)
    cfg = load_config(PuzzleRecipe, Path(__file__).resolve().parents[1] / "recipes" / "puzzle.yaml", [
        f"parent={model}", "data.source=text", f"data.text_file={train}", f"data.heldout_file={held}",
        "data.seq_len=256", "data.n_calib=64", "data.n_score=16", "data.n_eval=48", "data.n_distill=512",
        "cost.batch_size=8", "cost.seq_len=256", f"search.target_speedup={args.target}",
        f"search.n_solutions={args.solutions}", f"bld.steps={args.bld_steps}", f"gkd.steps={args.gkd_steps}"])
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(cfg, cfg.name, out=Path(tmp) / "run", seed=cfg.seed)
        t0 = time.perf_counter()
        s = run_puzzle(cfg, run, progress=True)
        wall = time.perf_counter() - t0
        report = (run.path / "report.md").read_text()
    lines = [
        f"- parent: nano, 8 layers, WikiText-2 ({args.pretrain_steps} steps); target {args.target}x decode "
        f"throughput (batch 8, context 256); BLD {args.bld_steps} steps/variant, GKD {args.gkd_steps} steps; "
        f"{s['solutions']} solutions measured; wall {wall:.0f} s",
        "",
        "| model | measured decode speed-up | ppl (held-out) | ppl before GKD | KL(parent‖model) | architecture |",
        "|---|---|---|---|---|---|",
        f"| parent | 1.00 | {s['ppl_parent']:.2f} | – | 0 | 8 x kv2+ffn512 |",
        f"| Puzzle child | {s['measured_speedup']:.2f} (predicted {s['predicted_speedup']:.2f}) | {s['ppl_child']:.2f} "
        f"| {s['ppl_child_before_gkd']:.2f} | {s['kl_child']:.3f} | {s['architecture']} |",
        f"| uniform shrink | {s['baseline_measured_speedup']:.2f} | {s['ppl_uniform_baseline']:.2f} | "
        f"{s['ppl_uniform_baseline_before_gkd']:.2f} | {s['kl_uniform_baseline']:.3f} | "
        f"8 x {s['baseline_architecture']} |",
        "",
        f"- perplexity change over the parent at the same target: Puzzle {s['ppl_child'] - s['ppl_parent']:+.2f}, "
        f"uniform shrink {s['ppl_uniform_baseline'] - s['ppl_parent']:+.2f} -> "
        f"{'Puzzle wins' if s['ppl_child'] < s['ppl_uniform_baseline'] else 'uniform wins'}",
        f"- memory (bf16 params + KV at batch 8 x 256): parent {s['memory_parent_bytes'] / 2**20:.2f} MiB, child "
        f"{s['memory_child_bytes'] / 2**20:.2f} MiB",
    ]
    print("\n".join(lines))
    print(report)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=1.5)
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--solutions", type=int, default=4)
    ap.add_argument("--bld-steps", type=int, default=150)
    ap.add_argument("--gkd-steps", type=int, default=200)
    ap.add_argument("--skip-search", action="store_true", help="MILP part only")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    lines = milp_part()
    if not args.skip_search:
        lines += [""] + search_part(args)
    if args.record:
        from _common import record

        record("Puzzle: MILP search and Puzzle child vs uniform shrink", lines)


if __name__ == "__main__":
    main()
