"""Reward models on real public preference data at toy scale: HH-RLHF (BT) and PandaLM (BT vs scaled BT).

    python benchmarks/bench_rm_real.py [--record]

Backbone: a nano Llama pretrained here on 90% of WikiText-2 (the tokenizer too; cached, shared with the sparsity
benchmark), since the default bootstrap
policy has only seen arithmetic. HH-RLHF harmless-base (2,312 pairs) and PandaLM (999 pairs, 3 annotators: the
majority wins, strength = |votes(1) - votes(2)|) are each split 80/10/10 by prompt hash; PandaLM ties (strength 0)
are dropped from training by the loss and from the test set (no right answer). Numbers are what a ~1M-parameter
model reaches in minutes on 2 CPU cores; they are reported as they are.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    from refinery.config import load_config
    from refinery.reward_models.config import RMConfig
    from refinery.reward_models.data import load_pairs, write_pairs
    from refinery.reward_models.train import train_rm
    from refinery.runs import RunDir

    hf_logging.set_verbosity_error()
    from _common import shared_data, wikitext_model

    data = shared_data()
    backbone, _, _ = wikitext_model(args.pretrain_steps)
    print(f"backbone: {backbone}")
    common = [f"backbone.path={backbone}", "pipeline=[bt]", f"trainer.epochs={args.epochs}", "trainer.batch_pairs=16",
              "trainer.lr=5e-4", "trainer.max_length=256", "trainer.eval_every=50", "trainer.threads=2"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # PandaLM: drop test ties up front (split first, then filter the test part only)
        from refinery.reward_models.data import split_pairs

        panda = load_pairs(data / "pandalm" / "testset-v1.json")
        tr, va, te = split_pairs(panda, (0.8, 0.1, 0.1), salt="0")
        for name, part in (("train", tr), ("valid", va), ("test", [p for p in te if p["strength"] > 0])):
            write_pairs(part, tmp / f"panda-{name}.jsonl")
        panda_files = ["data.source=files", f"data.train_file={tmp / 'panda-train.jsonl'}",
                       f"data.valid_file={tmp / 'panda-valid.jsonl'}", f"data.test_file={tmp / 'panda-test.jsonl'}"]
        arms = [("HH-RLHF harmless-base", "bt", ["data.source=files",
                 f"data.train_file={data / 'hh-rlhf' / 'harmless-base-test.jsonl.gz'}"]),
                ("PandaLM", "bt", panda_files), ("PandaLM", "scaled_bt", panda_files)]
        for name, loss, extra in arms:
            cfg = load_config(RMConfig, None, common + extra + [f"loss.type={loss}"])
            run = RunDir.create(cfg, "real", out=tmp / f"{name}-{loss}".replace(" ", "_"))
            s = train_rm(cfg, run, progress=False)
            print(f"{name} {loss}: test accuracy {s['rm.accuracy']:.3f} on {s['rm.n_test']} pairs "
                  f"(train {s['rm.n_train']}), corr(score, length) {s['rm.length_corr']:+.3f}", flush=True)
            rows.append(f"| {name} | {loss} | {s['rm.n_train']} | {s['rm.n_test']} | {s['rm.accuracy']:.3f} | "
                        f"{s['rm.length_corr']:+.3f} |")
    lines = [f"Backbone: nano Llama pretrained {args.pretrain_steps} steps on WikiText-2; BT stage {args.epochs} "
             "epochs, batch 16 pairs, lr 5e-4, max 256 tokens; splits 80/10/10 by prompt.", "",
             "| data | loss | train pairs | test pairs | test accuracy | corr(score, length) |",
             "|---|---|---|---|---|---|", *rows]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("Reward models on real preference data (HH-RLHF, PandaLM)", lines)


if __name__ == "__main__":
    main()
