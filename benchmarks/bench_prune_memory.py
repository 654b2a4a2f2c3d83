"""Peak memory of each 2:4 method on a real model shape, in the checkpoint's dtype (bf16) and in fp32.

    python benchmarks/bench_prune_memory.py [--shape qwen2-0.5b] [--methods magnitude,wanda,sparsegpt,maskllm]
                                            [--record]

A random-init checkpoint of the shape (no download) is written in bf16; each (method, dtype) runs
``refinery compress sparsify`` in its own process on the CPU and reports that process's peak resident memory
(``ru_maxrss``). Wanda and SparseGPT calibrate layer by layer (the model stays where it is, one layer's inputs and
statistics at a time); MaskLLM trains N:M logits for every block Linear (6 per 4 weights, fp32) with AdamW.
Alongside, the peak each method is expected to need at 1B and 8B, computed from the same accounting and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # (hidden, layers, heads, kv heads, intermediate, vocab, tied)
    "qwen2-0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, True),
    "llama-3-8b": (4096, 32, 32, 8, 14336, 128256, False),
}

CHILD = r"""
import json, resource, sys, time
from refinery.compression.sparsity.runner import sparsify
t0 = time.perf_counter()
rep = sparsify(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], n_calib=8, seq_len=128, steps=2, prior="magnitude",
               batch_size=4, progress=False, device="cpu", dtype=sys.argv[5])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "dtype": rep["dtype"]}))
"""


def counts(shape) -> tuple[int, int]:
    """(block Linear parameters, all parameters)."""
    h, L, nh, kv, inter, vocab, tied = shape
    d = h // nh
    block = L * (h * h + 2 * h * kv * d + h * h + 3 * h * inter)
    return block, block + vocab * h * (1 if tied else 2) + L * 2 * h + h


def computed_gb(shape, method: str, bytes_per: int) -> float:
    """Expected peak: the weights once, plus the method's own state (inputs of one layer are small next to it)."""
    h, L, nh, kv, inter, vocab, tied = shape
    block, total = counts(shape)
    gb = total * bytes_per
    if method == "sparsegpt":
        gb += 2 * inter * inter * 8  # the widest Hessian (down_proj input) in fp64, and its inverse
    elif method == "wanda":
        gb += inter * 8
    elif method == "maskllm":
        gb += block / 4 * 6 * 4 * 4  # fp32 logits (6 per 4 weights), their gradient, AdamW's two moments: 24 B/weight
        # what autograd keeps per Linear for the backward of the soft mask: the Gumbel noise, kappa*logits + noise,
        # the softmax (each 6 per 4 weights, fp32), the [out, in] mask (fp32) and W*mask (weight dtype): ~24 B/weight
        gb += block * (3 * 1.5 * 4 + 4 + bytes_per)
    return gb / 2**30


def build(shape_name: str, out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from refinery.models.families import init_checkpoint

    h, L, nh, kv, inter, vocab, tied = SHAPES[shape_name]
    tok_dir = init_checkpoint("qwen2", "tiny", out / "tok", seed=0)  # a real Qwen2 tokenizer layout (local)
    cfg = Qwen2Config(hidden_size=h, num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=kv,
                      intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=tied,
                      max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.tie_weights()  # to_empty gave the head its own storage
    model.save_pretrained(out / "model")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out / "model")
    return out / "model"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,maskllm")
    ap.add_argument("--dtypes", default="auto,fp32")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build(args.shape, tmp)
        text = tmp / "calib.txt"
        text.write_text("The derivative of x squared is two x, and the integral of two x is x squared. " * 400)
        for method in args.methods.split(","):
            for dtype in args.dtypes.split(","):
                out = tmp / f"{method}-{dtype}"
                env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
                p = subprocess.run([sys.executable, "-c", CHILD, str(model), method, str(text), str(out), dtype],
                                   capture_output=True, text=True, env=env, cwd=ROOT)
                if p.returncode:  # -9: the kernel's OOM killer (this machine's memory is the limit)
                    why = "killed: out of memory" if p.returncode in (-9, 137) else p.stderr.strip()[-300:]
                    print(f"{method:10s} {dtype:9s} {why}", flush=True)
                    rows.append({"method": method, "dtype": {"auto": "bfloat16", "fp32": "float32"}.get(dtype, dtype),
                                 "peak_rss_mb": float("nan"), "seconds": float("nan"), "failed": why})
                    continue
                r = json.loads(p.stdout.strip().splitlines()[-1])
                rows.append({"method": method, **r})
                print(f"{method:10s} {r['dtype']:9s} peak {r['peak_rss_mb'] / 1024:6.2f} GiB  {r['seconds']:6.1f} s",
                      flush=True)
                import shutil

                shutil.rmtree(out, ignore_errors=True)
    block, total = counts(SHAPES[args.shape])
    lines = [f"\n## 2:4 pruning memory ({args.shape}, random init, CPU) -- {time.strftime('%Y-%m-%d')}\n",
             f"`python benchmarks/bench_prune_memory.py --shape {args.shape} --record` on {os.cpu_count()} cores; "
             f"{total / 1e6:.0f}M parameters ({block / 1e6:.0f}M in block Linears); 8 windows x 128 tokens; "
             "MaskLLM 2 steps. Peak resident memory of the whole process (Python, torch and tokenizer included).\n",
             "| method | measured bf16 (GiB) | measured fp32 (GiB) | computed, this shape, bf16 (GiB) | "
             "computed 1B bf16 (GiB) | computed 8B bf16 (GiB) |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cell(rs, dt):
        r = next((r for r in rs if r["dtype"] == dt), None)
        return "-" if r is None else (r.get("failed") or f"{r['peak_rss_mb'] / 1024:.2f}")

    total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    for method in args.methods.split(","):
        rs = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} | {cell(rs, 'bfloat16')} | {cell(rs, 'float32')} | "
                     f"{computed_gb(SHAPES[args.shape], method, 2):.1f} | "
                     f"{computed_gb(SHAPES['llama-3.2-1b'], method, 2):.1f} (computed) | "
                     f"{computed_gb(SHAPES['llama-3-8b'], method, 2):.1f} (computed) |")
    lines.append(f"\n(machine memory: {total_mem:.0f} GiB; 'computed' = weights once + the method's state, the "
                 "accounting in the script's computed_gb; nothing at 1B/8B was run)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
