"""CultureGuard translation filters on MultiJail (315 prompts, parallel in 10 languages): for every target language,
true pairs must pass and four corruptions must be rejected (shuffled pair, wrong language, truncated, source copied);
precision / recall of rejection per filter and combined.

    python benchmarks/bench_cultureguard_filters.py [--record]

Back-translation is an oracle here (MultiJail's own English for the text shown); see refinery.data.safety.evaluate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from _common import shared_data

    from refinery.data.safety.evaluate import FILTERS, evaluate, read_multijail

    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows, langs = read_multijail(shared_data() / "safety" / "MultiJail.csv")
    t0 = time.perf_counter()
    rep = evaluate(rows, langs)
    dt = time.perf_counter() - t0
    lines = [f"- {len(rows)} prompts x {len(langs)} languages; per language {len(rows)} true pairs and "
             f"{4 * len(rows)} corrupted ones; {dt:.1f} s", "",
             "| language | combined P | combined R | true kept | shuffled | wrong lang. | truncated | copied | "
             + " | ".join(f"{f} P/R" for f in FILTERS) + " |", "|" + "---|" * (8 + len(FILTERS))]
    for lang, r in rep.items():
        c = r["combined"]
        lines.append(f"| {lang} | {c['precision']:.3f} | {c['recall']:.3f} | {c['true_kept']:.3f} | "
                     f"{c['rejects_shuffled']:.2f} | {c['rejects_wrong_language']:.2f} | "
                     f"{c['rejects_truncated']:.2f} | {c['rejects_copied']:.2f} | "
                     + " | ".join(f"{r[f]['precision']:.2f}/{r[f]['recall']:.2f}" for f in FILTERS) + " |")
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("CultureGuard translation filters on MultiJail", lines)


if __name__ == "__main__":
    main()
