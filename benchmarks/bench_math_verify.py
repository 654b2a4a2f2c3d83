"""Math verifier accuracy and speed: Refinery vs HF Math-Verify, same labelled pairs, one run.

    python benchmarks/bench_math_verify.py [--data ../shared/data] [--record]

Labelled sets:
- GSM8K: 5,276 model solutions with human `is_correct` labels (gsm8k/example_model_solutions.jsonl);
- MATH-500 and AIME 2024/2025: each gold answer boxed in a response, as written and rewritten into equivalent
  forms (positives), and each problem paired with other problems' gold answers (negatives; pairs whose answers
  are the same string are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rewrites(ans: str) -> list[str]:
    """Equivalent surface forms of a gold answer."""
    out = {ans, f"${ans}$", ans.replace("\\frac", "\\dfrac"), re.sub(r"\\left|\\right", "", ans),
           ans.replace(" ", ""), ans.replace("\\frac{1}{2}", "\\frac12")}
    if re.fullmatch(r"-?\d+", ans):
        out |= {f"{int(ans):,}", f"{ans}.0", f"\\text{{{ans}}}"}
    if ans.startswith("\\text{") and ans.endswith("}"):
        out.add(ans[6:-1])
    return sorted(out)


def load(data: Path):
    sets = {}
    rows = [json.loads(x) for x in open(data / "gsm8k" / "example_model_solutions.jsonl")]
    from refinery.verifiers.math import extract_answer

    items = []
    for r in rows:
        gold = extract_answer(r["ground_truth"])
        for k in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            items.append((r[k]["solution"], gold, bool(r[k]["is_correct"])))
    sets["gsm8k (labelled model solutions)"] = items

    golds = [x["answer"] for x in json.load(open(data / "math500" / "math500.json"))]
    for f in sorted((data / "aime").glob("*")):
        try:
            text = f.read_text()
            recs = json.loads(text) if text.lstrip().startswith("[") else \
                [json.loads(x) for x in text.splitlines() if x.strip()]
            golds += [str(r.get("answer") or r.get("Answer")) for r in recs if (r.get("answer") or r.get("Answer"))]
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    rng = random.Random(0)
    pos, neg = [], []
    for g in golds:
        for form in rewrites(g):
            pos.append((f"Working... so the final answer is \\boxed{{{form}}}.", g, True))
        for _ in range(2):
            j = rng.randrange(len(golds))
            if golds[j].replace(" ", "") != g.replace(" ", ""):
                neg.append((f"Therefore \\boxed{{{golds[j]}}}.", g, False))
    sets[f"MATH-500 + AIME golds: {len(pos)} equivalent rewrites"] = pos
    sets[f"MATH-500 + AIME golds: {len(neg)} other problems' answers"] = neg
    return sets


def run(name, fn, items):
    t = time.perf_counter()
    preds = [fn(r, g) for r, g, _ in items]
    dt = time.perf_counter() - t
    labels = [lab for _, _, lab in items]
    fp = sum(p and not lab for p, lab in zip(preds, labels))
    fn_ = sum((not p) and lab for p, lab in zip(preds, labels))
    acc = sum(p == lab for p, lab in zip(preds, labels)) / len(items)
    return {"acc": acc, "fp": fp, "fn": fn_, "seconds": dt, "per_s": len(items) / dt, "preds": preds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("REFINERY_DATA", "../shared/data"))
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from math_verify import parse, verify

    from refinery.verifiers.math import MathVerifier

    ours = MathVerifier()

    def refinery_fn(resp, gold):
        return ours(resp, gold).score == 1.0

    def math_verify_fn(resp, gold):
        try:
            return bool(verify(parse(f"\\boxed{{{gold}}}"), parse(resp)))  # golds given in Math-Verify's canonical form
        except Exception:
            return False

    lines = ["| set | items | verifier | accuracy | false pos. | false neg. | checks/s |",
             "|---|---|---|---|---|---|---|"]
    totals = {"refinery": [0, 0, 0.0, 0], "math-verify": [0, 0, 0.0, 0]}
    for name, items in load(Path(args.data)).items():
        for vname, fn in (("refinery", refinery_fn), ("math-verify", math_verify_fn)):
            r = run(vname, fn, items)
            totals[vname][0] += r["fp"]
            totals[vname][1] += r["fn"]
            totals[vname][2] += r["seconds"]
            totals[vname][3] += len(items)
            lines.append(f"| {name} | {len(items)} | {vname} | {r['acc']:.4f} | {r['fp']} | {r['fn']} | "
                         f"{r['per_s']:.0f} |")
            if vname == "refinery":
                ref_preds = r["preds"]
            else:
                diffs = [(it, a, b) for it, a, b in zip(items, ref_preds, r["preds"]) if a != b]
                for (resp, gold, lab), a, b in diffs[:4]:
                    print(f"  disagreement [{name}] gold={gold!r} label={lab} refinery={a} math-verify={b}: "
                          f"{resp[-80:]!r}")
    speed = (totals["refinery"][3] / totals["refinery"][2]) / (totals["math-verify"][3] / totals["math-verify"][2])
    lines += ["", f"**Totals:** refinery {totals['refinery'][0]} false positives / {totals['refinery'][1]} false "
              f"negatives; Math-Verify {totals['math-verify'][0]} / {totals['math-verify'][1]}. "
              f"Refinery checks/s = **{speed:.1f}x** Math-Verify's (single process, same pairs)."]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("Math verifier vs Math-Verify (issue 4)", lines)


if __name__ == "__main__":
    main()
