"""A guard's false refusals on benign prompts that look unsafe, per language, with and without look-alike training.

    python benchmarks/bench_guard_refusals.py [--seeds 0 1 2 3 4] [--steps 200] [--record]

Both arms train the same tiny guard (`train_guard`: LoRA + head, tokenizer trained on the texts) on MultiJail's
unsafe prompts (first 250, in English, Chinese and Italian) and templated everyday English requests as the safe
class. Arm "+ look-alikes" also trains on the packaged XSTest-style set's *even-numbered* English groups (safe
look-alikes as safe, their contrast prompts as unsafe). Both are evaluated on the *odd-numbered* groups only (in
every language the set has), which no arm trained on, and on MultiJail's last 65 prompts (English, Chinese) for
unsafe recall. Seeds vary the guard's initialisation and data order; the split is fixed. Means with 95% t-intervals.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import t95  # noqa: E402


def everyday() -> list[str]:
    chores = ("bake", "paint", "fix", "clean", "build", "draw", "plan", "choose", "organise", "decorate")
    things = ("a birthday cake", "a garden fence", "a bicycle tyre", "the kitchen", "a birdhouse", "a city map",
              "a holiday trip", "a laptop", "my bookshelf", "a small flat")
    out = [f"How do I {c} {t}?" for c in chores for t in things]
    topics = ("photosynthesis", "the French revolution", "compound interest", "black holes", "the water cycle",
              "machine learning", "jazz harmony", "the immune system", "plate tectonics", "sourdough fermentation")
    out += [f"{q} {t}." for q in ("Explain", "Summarise what is known about", "Write a short poem about")
            for t in topics]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from _common import shared_data
    from transformers.utils import logging as hf_logging

    from refinery.data.safety.evaluate import read_multijail
    from refinery.data.safety.guard import predict, train_guard
    from refinery.data.safety.over_refusal import load_set, over_refusal_report

    hf_logging.set_verbosity_error()
    mj = shared_data() / "safety" / "MultiJail.csv"
    if not mj.exists():
        sys.exit(f"needs MultiJail at {mj} (set REFINERY_DATA)")
    rows, _ = read_multijail(mj)
    looks = load_set()
    index = lambda r: int(r["group"].rsplit("-", 1)[1])  # noqa: E731
    train_look = [r for r in looks if r["lang"] == "en" and index(r) % 2 == 0]
    test_look = [r for r in looks if index(r) % 2 == 1]
    assert not {r["group"] for r in train_look} & {r["group"] for r in test_look}
    base = [{"text": r[lang], "label": "unsafe", "lang": lang, "categories": []} for r in rows[:250]
            for lang in ("en", "zh", "it")]
    base += [{"text": t, "label": "safe", "lang": "en", "categories": []} for t in everyday()]
    held_unsafe = [r[lang] for r in rows[250:] for lang in ("en", "zh")]
    arms = {"MultiJail + everyday": base,
            "+ look-alikes (even groups)": base + [{"text": r["text"], "label": r["label"], "lang": "en",
                                                     "categories": []} for r in train_look]}
    langs = sorted({r["lang"] for r in test_look})
    res: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    for seed in args.seeds:
        for arm, recs in arms.items():
            recs = list(recs)
            random.Random(seed).shuffle(recs)
            with tempfile.TemporaryDirectory() as d:
                train_guard(recs, d, steps=args.steps, seed=seed, progress=False)
                pred = [p[0] for p in predict(d, [r["text"] for r in test_look] + held_unsafe)]
            rep = over_refusal_report(test_look, pred[:len(test_look)])
            row = res[arm]
            for lang in langs:
                row.setdefault(f"FRR {lang}", []).append(rep["by_language"][lang]["false_refusal_rate"])
            row.setdefault("FRR all", []).append(rep["all"]["false_refusal_rate"])
            row.setdefault("contrast recall", []).append(rep["all"]["contrast_recall"])
            row.setdefault("MultiJail recall", []).append(
                sum(p == "unsafe" for p in pred[len(test_look):]) / len(held_unsafe))
            print(seed, arm, json.dumps({k: round(v[-1], 3) for k, v in row.items()}), flush=True)
    cols = [*(f"FRR {lang}" for lang in langs), "FRR all", "contrast recall", "MultiJail recall"]
    n_safe = sum(r["label"] == "safe" for r in test_look)
    lines = [f"Seeds {args.seeds} (guard init and data order), {args.steps} steps; held-out look-alikes: "
             f"{n_safe} safe + {len(test_look) - n_safe} contrast prompts (odd groups, {', '.join(langs)}); "
             f"MultiJail held-out unsafe: {len(held_unsafe)}. FRR = safe prompts called unsafe (lower is better); "
             "recall = unsafe prompts called unsafe. Mean ± 95% t-interval.", "",
             "| training | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm, row in res.items():
        lines.append(f"| {arm} | " + " | ".join(t95(row[c]) for c in cols) + " |")
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("Guard false refusals on look-alike prompts (CultureGuard, XSTest-style)", lines)


if __name__ == "__main__":
    main()
