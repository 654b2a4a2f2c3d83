"""Reward-model training: Refinery's BT trainer vs TRL's RewardTrainer, same backbone, data and settings.

    python benchmarks/bench_rm_vs_trl.py [--data synthetic|hh-rlhf] [--epochs 1] [--record]

Same backbone (the cached bootstrap SFT nano model with a fresh 1-output head), the same training pairs (pairs
longer than --max-length are dropped up front, because TRL drops rather than truncates them), plain BT, batch 16
pairs, AdamW lr with 5% warm-up and cosine decay, grad-clip 1, 2 threads, and fp32 on both sides: TRL's
RewardConfig turns bf16 autocast on by default, so it is switched off here (``bf16=False``), or the comparison
would be of precisions. Reports training throughput (pairs/s, wall time of the training loop only), test accuracy
and corr(score, length) of both models scored by the same code. The backbone and the pairs are fixed; seeds vary
the head initialisation and data order only. Means with 95% t-intervals.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["synthetic", "hh-rlhf"], default="synthetic")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-pairs", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="training pairs used (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    from refinery.config import load_config
    from refinery.models.pretrain import cached_pretrain, default_bootstrap
    from refinery.reward_models.config import RMConfig
    from refinery.reward_models.eval import length_correlation, score_pairs
    from refinery.reward_models.model import RewardScorer, encode, load_backbone, save_reward_model
    from refinery.reward_models.train import load_data, train_rm
    from refinery.runs import RunDir

    hf_logging.set_verbosity_error()
    backbone = cached_pretrain(default_bootstrap(), 0, progress=True)
    data = os.environ.get("REFINERY_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    if args.data == "synthetic":
        base = ["data.source=synthetic"]
    else:
        base = ["data.source=files", f"data.train_file={data}/hh-rlhf/harmless-base-test.jsonl.gz"]
    common = [f"backbone.path={backbone}", "pipeline=[bt]", "loss.type=bt", f"trainer.epochs={args.epochs}",
              f"trainer.batch_pairs={args.batch_pairs}", f"trainer.lr={args.lr}", "trainer.warmup_ratio=0.05",
              f"trainer.max_length={args.max_length}", "trainer.threads=2", "trainer.eval_every=100000",
              "trainer.checkpoint_every=100000"]
    cfg = load_config(RMConfig, None, base + common + ["data.seed=0", "backbone.seed=0"])
    train, valid, test = load_data(cfg)
    _, tok = load_backbone(backbone, num_labels=1)
    fits = [p for p in train if all(len(encode(tok, p["prompt"], p[s], 10**6).ids) <= args.max_length
                                    for s in ("chosen", "rejected"))]
    fits = fits[: args.limit] if args.limit else fits
    print(f"{len(fits)}/{len(train)} training pairs fit in {args.max_length} tokens; {len(test)} test pairs")

    import refinery.reward_models.train as rt

    rt.load_data = lambda _cfg: (fits, valid[:8], test)  # same pairs for both; tiny valid (eval off anyway)
    orig_fit, timing = rt.fit, {}

    def timed_fit(*a, **k):
        s = time.perf_counter()
        done = orig_fit(*a, **k)
        timing["fit"] = time.perf_counter() - s
        return done

    rt.fit = timed_fit

    def conv(p):
        prompt = p["prompt"] if isinstance(p["prompt"], list) else [{"role": "user", "content": p["prompt"]}]
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}]}

    ds = Dataset.from_list([conv(p) for p in fits])
    ours, trl = [], []
    for seed in args.seeds:  # seed: head initialisation and data order, for both trainers
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            scfg = cfg.model_copy(update={"seed": seed})
            run = RunDir.create(scfg, "bench", out=tmp / "ours")
            train_rm(scfg, run, progress=False)
            summ = run.summary()
            ours.append((timing["fit"], summ["rm.accuracy"], summ["rm.length_corr"]))

            torch.manual_seed(seed)
            model, tok = load_backbone(backbone, num_labels=1)
            targs = RewardConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=args.batch_pairs,
                                 num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="cosine",
                                 warmup_steps=int(0.05 * math.ceil(len(fits) / args.batch_pairs) * args.epochs),
                                 max_length=args.max_length, logging_steps=1000, save_strategy="no",
                                 report_to=[], use_cpu=True, seed=seed, dataloader_num_workers=0,
                                 disable_dropout=True, center_rewards_coefficient=None, bf16=False, fp16=False)
            assert not (targs.bf16 or targs.fp16), "TRL must train in fp32 like Refinery here"
            trainer = RewardTrainer(model=model, args=targs, train_dataset=ds, processing_class=tok)
            kept = len(trainer.train_dataset)
            t0 = time.perf_counter()
            trainer.train()
            trl_s = time.perf_counter() - t0
            save_reward_model(trainer.model, tok, tmp / "trl-model", {"kind": "sequence_classification",
                                                                     "max_length": args.max_length})
            c, r = score_pairs(RewardScorer(tmp / "trl-model"), test)
            trl.append((trl_s, sum(x > y for x, y in zip(c, r)) / len(test), length_correlation(test, c, r)))
            print(f"seed {seed}: Refinery {ours[-1][0]:.1f}s acc {ours[-1][1]:.3f} len_corr {ours[-1][2]:+.3f} | "
                  f"TRL {trl_s:.1f}s acc {trl[-1][1]:.3f} len_corr {trl[-1][2]:+.3f}", flush=True)

    from _common import t95

    def row(name, results, n_pairs):
        secs = statistics.median(t for t, _, _ in results)
        accs = [a for _, a, _ in results]
        return (f"| {name} | {n_pairs} | {secs:.1f} | {n_pairs * args.epochs / secs:.1f} | {t95(accs)} | "
                f"{' / '.join(f'{a:.3f}' for a in accs)} | {t95([c for _, _, c in results], '+.3f')} |")

    ratio = statistics.median(t for t, _, _ in trl) / statistics.median(t for t, _, _ in ours)
    lines = [f"Data: {args.data}; backbone: bootstrap nano SFT policy (seed 0); {args.epochs} epoch(s), batch "
             f"{args.batch_pairs} pairs, lr {args.lr}, max length {args.max_length}, fp32 both; test {len(test)} "
             f"pairs; seeds {args.seeds} vary head init and data order only (same pairs).", "",
             "| trainer | train pairs | train s (median) | pairs/s | test accuracy (mean ± 95% CI) | per seed | "
             "corr(score, length) |",
             "|---|---|---|---|---|---|---|", row("Refinery `rm train` (bt)", ours, len(fits)),
             row("TRL RewardTrainer", trl, kept), "",
             f"Throughput ratio Refinery / TRL: **{ratio:.2f}x**."]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record(f"Reward-model training vs TRL RewardTrainer ({args.data})", lines)


if __name__ == "__main__":
    main()
