"""2:4 sparsity on a tiny model trained for real: dense vs magnitude / Wanda / SparseGPT / MaskLLM perplexity, with
each method's wall time and peak memory, in one run.

    python benchmarks/bench_sparsity.py [--maskllm-steps 300] [--record]

Model: nano Llama pretrained on 90% of WikiText-2 (cached); calibration: 128 windows of 256 tokens from that 90%;
perplexity on the held-out last 10% (never trained or calibrated on), non-overlapping 256-token windows, the same
windows for every model. MaskLLM starts from the SparseGPT mask (the paper's prior). Peak memory is the peak RSS
growth of a fresh process running the method (CPU; no speed-up is claimed for 2:4 on CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, resource, sys, time
from refinery.compression.sparsity.runner import sparsify
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model, method, calib, out, steps = sys.argv[1:6]
t0 = time.perf_counter()
rep = sparsify(model, method, calib, out, n_calib=128, seq_len=256, steps=int(steps), progress=False)
rep["wall"] = time.perf_counter() - t0
rep["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rep["base_rss_mb"] = before / 1024
print("RESULT" + json.dumps(rep))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--maskllm-steps", type=int, default=300)
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    from _common import wikitext_model

    from refinery.eval.perplexity import eval_ppl

    model, train, held = wikitext_model(args.pretrain_steps)
    dense = eval_ppl(model, held, 256)
    print(f"dense: ppl {dense['ppl']:.2f} on {dense['windows']} held-out windows")
    rows = [("dense", dense["ppl"], None, None)]
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("magnitude", "wanda", "sparsegpt", "maskllm"):
            out = Path(tmp) / method
            proc = subprocess.run([sys.executable, "-c", CHILD, str(model), method, str(train), str(out),
                                   str(args.maskllm_steps)], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
            if proc.returncode or not line:
                sys.exit(f"{method} failed:\n{proc.stderr[-2000:]}")
            rep = json.loads(line[0][6:])
            ppl = eval_ppl(out, held, 256)["ppl"]
            print(f"{method}: ppl {ppl:.2f}, {rep['wall']:.1f}s, peak RSS {rep['peak_rss_mb']:.0f} MB", flush=True)
            rows.append((method, ppl, rep["wall"], rep["peak_rss_mb"]))
    lines = [f"nano Llama (1.1M params) pretrained {args.pretrain_steps} steps on 90% of WikiText-2; 2:4 on every "
             f"block Linear; calibration 128 x 256 tokens; MaskLLM {args.maskllm_steps} steps from the SparseGPT "
             f"prior; held-out perplexity on the last 10% ({dense['windows']} windows of 256).", "",
             "| model | held-out ppl | vs dense | wall s (incl. load + calibration) | peak RSS MB |",
             "|---|---|---|---|---|"]
    for name, ppl, wall, mem in rows:
        lines.append(f"| {name} | {ppl:.2f} | {ppl / dense['ppl']:.2f}x | {'' if wall is None else f'{wall:.1f}'} "
                     f"| {'' if mem is None else f'{mem:.0f}'} |")
    order = " < ".join(name for name, *_ in sorted(rows[1:], key=lambda r: r[1]))
    lines += ["", f"Ordering measured: {order} (paper: MaskLLM < SparseGPT <= Wanda < magnitude)."]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("2:4 sparsity: perplexity, wall time and memory per method", lines)


if __name__ == "__main__":
    main()
