"""ProRL tiny on a twin-free held-out set, over RL seeds from one SFT start: pass@1 and pass@k before and after.

    python benchmarks/bench_rl_tiny.py [--seeds 0 1 2] [--k 16] [--record] [extra overrides ...]

Runs ``refinery rl train recipes/prorl.yaml profile=tiny`` once per seed with the SFT start (``policy.seed``) and
the prompt draws (``data.seed``) fixed, so the seeds vary only the RL run (sampling, order). The held-out set is the
problems' own test split (no twin of any held-out problem, up to reordering, is in RL or SFT training; see
``refinery.tasks.split_of``); mid-run evaluations and the reference-reset patience read the validation split.
pass@1 is greedy accuracy (the run's own summary); pass@k is the unbiased estimator from n = k samples at T = 1.0
per held-out problem, for the SFT start and each final policy (ProRL's boundary analysis). Means with 95%
t-intervals over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def pass_k(model_dir: Path, items: list[dict], k: int, max_new_tokens: int, seed: int) -> float:
    from refinery.eval.passk import pass_at_k
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.rl.rewards import RewardRouter
    from refinery.rl.trainer import chat

    gen, router = HFGenerator(model_dir, batch_size=256), RewardRouter()
    try:
        out = gen.generate([chat(it) for it in items], SamplingParams(n=k, temperature=1.0, top_p=1.0,
                                                                      max_new_tokens=max_new_tokens, seed=seed))
        scores = []
        for i, it in enumerate(items):
            c = sum(router(it, comp.text)[1] for comp in out[i * k:(i + 1) * k])
            scores.append(pass_at_k(k, c, k))
        return statistics.mean(scores)
    finally:
        router.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--sft-seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra recipe overrides (key=value)")
    args = ap.parse_args()

    from _common import record, t95
    from transformers.utils import logging as hf_logging

    from refinery.config import load_config
    from refinery.rl.config import RLConfig
    from refinery.rl.trainer import bootstrap_policy, load_items, train_rl
    from refinery.runs import RunDir

    hf_logging.set_verbosity_error()

    def cfg_for(seed: int) -> RLConfig:
        return load_config(RLConfig, ROOT / "recipes" / "prorl.yaml", [
            "profile=tiny", f"seed={seed}", f"policy.seed={args.sft_seed}", f"data.seed={args.data_seed}",
            *args.overrides])

    base = cfg_for(args.seeds[0])
    t0 = time.time()
    sft = bootstrap_policy(base)
    sft_s = time.time() - t0
    _, heldout, valid = load_items(base)
    budget = base.eval.max_new_tokens
    before_k = pass_k(sft, heldout, args.k, budget, seed=1234)
    print(f"SFT start {sft} ({sft_s:.0f} s incl. cache); held-out {len(heldout)}, valid {len(valid)}; "
          f"pass@{args.k} before {before_k:.3f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = cfg_for(seed)
            run = RunDir.create(cfg, cfg.name, out=Path(tmp) / f"s{seed}")
            t = time.time()
            s = train_rl(cfg, run, progress=False)
            wall = time.time() - t
            after_k = pass_k(run.path / "model", heldout, args.k, budget, seed=1234)
            rows.append({"seed": seed, "before": s["accuracy_before"], "after": s["accuracy_after"],
                         "after_k": after_k, "minutes": wall / 60, "resets": s.get("rl.reference_resets", 0)})
            print(f"seed {seed}: pass@1 {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, pass@{args.k} "
                  f"{before_k:.3f} -> {after_k:.3f}, {wall / 60:.1f} min", flush=True)

    gains = [100 * (r["after"] - r["before"]) for r in rows]
    n = len(heldout)
    p = statistics.mean(r["before"] for r in rows)
    se = 100 * (p * (1 - p) / n) ** 0.5
    lines = [
        f"`recipes/prorl.yaml profile=tiny`{' ' + ' '.join(args.overrides) if args.overrides else ''}; RL seeds "
        f"{args.seeds} from one SFT start (policy.seed {args.sft_seed}, {sft_s / 60:.1f} min to train or load) and "
        f"one draw of prompts (data.seed {args.data_seed}); held-out: {n} countdown problems of the test split, "
        f"twin-free against RL and SFT training; mid-run evaluations on {len(valid)} validation problems. pass@1 = "
        f"greedy; pass@{args.k} = unbiased estimate from {args.k} samples at T = 1.0. Binomial standard error of "
        f"one pass@1 on {n} problems: ±{se:.1f} points.",
        "",
        f"| seed | pass@1 before | pass@1 after | gain (points) | pass@{args.k} before | pass@{args.k} after | "
        "RL minutes | reference resets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, g in zip(rows, gains):
        lines.append(f"| {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {g:+.1f} | {before_k:.3f} | "
                     f"{r['after_k']:.3f} | {r['minutes']:.1f} | {r['resets']} |")
    lines += ["", f"Mean gain in pass@1: **{t95(gains, '+.1f')} points** (95% t-interval over {len(rows)} seeds); "
              f"pass@{args.k}: {before_k:.3f} -> {t95([r['after_k'] for r in rows])}."]
    print("\n".join(lines))
    if args.record:
        record("ProRL tiny on a twin-free held-out set (RL seeds from one SFT start)", lines)


if __name__ == "__main__":
    main()
