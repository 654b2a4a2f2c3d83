"""2:4 sparsity on a tiny model trained for real: dense vs magnitude / Wanda / SparseGPT / MaskLLM perplexity, with
each method's wall time and peak memory, in one run.

    python benchmarks/bench_sparsity.py [--maskllm-steps 300] [--record]
    python benchmarks/bench_sparsity.py --calibration [--record]   # O(L) vs the old O(L²) calibration

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
model, method, calib, out, steps, lr = sys.argv[1:7]
t0 = time.perf_counter()
rep = sparsify(model, method, calib, out, n_calib=128, seq_len=256, steps=int(steps), lr=float(lr), progress=False)
rep["wall"] = time.perf_counter() - t0
rep["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rep["base_rss_mb"] = before / 1024
print("RESULT" + json.dumps(rep))
"""


def _quadratic_prune(model, calib, method: str, batch_size: int) -> dict:
    """The old calibration, kept only here to measure against: for every layer, the whole (partly pruned) model
    re-runs from the embeddings and stops after that layer (L(L+1)/2 layer passes per batch)."""
    import torch

    from refinery.compression.sparsity.nm import prunable_linears
    from refinery.compression.sparsity.oneshot import _Stop, decoder_layers, sparsegpt_prune, wanda_mask

    linears, masks = prunable_linears(model), {}
    with torch.no_grad():
        for layer in decoder_layers(model):
            mine = {k: v for k, v in linears.items() if any(mod is v for mod in layer.modules())}
            acc = {k: None for k in mine}

            def hook(k, acc=acc):
                def fn(mod, inp, out):
                    x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                    s = (x ** 2).sum(0) if method == "wanda" else x.T @ x
                    acc[k] = s if acc[k] is None else acc[k] + s
                return fn

            hs = [v.register_forward_hook(hook(k)) for k, v in mine.items()]

            def stop(*a):
                raise _Stop

            hs.append(layer.register_forward_hook(stop))
            for s in range(0, calib.shape[0], batch_size):
                try:
                    model(input_ids=calib[s:s + batch_size])
                except _Stop:
                    pass
            for h in hs:
                h.remove()
            n_tok = calib.numel()
            for k, lin in mine.items():
                if method == "wanda":
                    masks[k] = wanda_mask(lin.weight, acc[k].float())
                    lin.weight.mul_(masks[k])
                else:
                    w, masks[k] = sparsegpt_prune(lin.weight, 2 * acc[k] / n_tok)
                    lin.weight.copy_(w)
    return masks


def calibration_bench(record: bool) -> None:
    """Wall time of Wanda / SparseGPT calibration vs depth: before (O(L²), re-running the model per layer) and
    after (O(L), cached layer inputs). Random-init Llama (hidden 256, MLP 768, 4 heads / 2 KV), 64 x 256 tokens."""
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from refinery.compression.sparsity.oneshot import decoder_layers, sequential_prune

    torch.set_num_threads(2)
    calib = torch.randint(0, 512, (64, 256), generator=torch.Generator().manual_seed(0))
    rows = []
    for method in ("wanda", "sparsegpt"):
        for layers in (2, 4, 8, 16):
            cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                              max_position_embeddings=256)
            res = {}
            for name, fn in (("before", lambda m, method=method: _quadratic_prune(m, calib, method, 8)),
                             ("after", lambda m, method=method: sequential_prune(m, calib, method, batch_size=8))):
                torch.manual_seed(0)
                model = LlamaForCausalLM(cfg).eval()
                calls = [0]
                for layer in decoder_layers(model):
                    layer.register_forward_hook(lambda *a, calls=calls: calls.__setitem__(0, calls[0] + 1))
                t0 = time.perf_counter()
                masks = fn(model)
                res[name] = (time.perf_counter() - t0, calls[0] // (calib.shape[0] // 8), masks)
            same = all(torch.equal(res["before"][2][k], res["after"][2][k]) for k in res["after"][2])
            (tb, cb, _), (ta, ca, _) = res["before"], res["after"]
            print(f"{method} L={layers}: before {tb:.2f}s ({cb} layer passes/batch), after {ta:.2f}s ({ca}), "
                  f"{tb / ta:.2f}x, masks identical: {same}", flush=True)
            rows.append(f"| {method} | {layers} | {tb:.2f} | {cb} | {ta:.2f} | {ca} | {tb / ta:.2f}x | {same} |")
    lines = ["Random-init Llama (hidden 256, MLP 768, 4 heads / 2 KV heads), 64 calibration windows x 256 tokens, "
             "batch 8; 2:4 on every block Linear. Before: the old calibration (re-runs the model from the "
             "embeddings for every layer, kept in this script only); after: sequential_prune (first layer's inputs "
             "cached once, each layer runs on the cached inputs).", "",
             "| method | layers | before s | layer passes / batch | after s | layer passes / batch | speed-up "
             "| masks identical |", "|---|---|---|---|---|---|---|---|", *rows]
    print("\n".join(lines))
    if record:
        from _common import record as rec

        rec("2:4 calibration: O(L) cached layer inputs vs O(L²) re-runs", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--maskllm-steps", type=int, default=300)
    ap.add_argument("--maskllm-lr", type=float, nargs="+", default=[5e-5, 1e-3],
                    help="MaskLLM base LRs, one arm each: 5e-5 is the reference (7B, 2000 steps); 1e-3 a departure "
                         "for a 1M-parameter model and a few hundred steps")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--calibration", action="store_true", help="only the O(L) vs O(L²) calibration timing")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    if args.calibration:
        return calibration_bench(args.record)

    from _common import wikitext_model

    from refinery.eval.perplexity import eval_ppl

    model, train, held = wikitext_model(args.pretrain_steps)
    dense = eval_ppl(model, held, 256)
    print(f"dense: ppl {dense['ppl']:.2f} on {dense['windows']} held-out windows")
    rows = [("dense", dense["ppl"], None, None)]
    with tempfile.TemporaryDirectory() as tmp:
        arms = [(m, m, 0.0) for m in ("magnitude", "wanda", "sparsegpt")]
        arms += [(f"maskllm (lr {lr:g})", "maskllm", lr) for lr in args.maskllm_lr]
        for name, method, lr in arms:
            out = Path(tmp) / name.replace(" ", "_")
            proc = subprocess.run([sys.executable, "-c", CHILD, str(model), method, str(train), str(out),
                                   str(args.maskllm_steps), str(lr)], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
            if proc.returncode or not line:
                sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
            rep = json.loads(line[0][6:])
            ppl = eval_ppl(out, held, 256)["ppl"]
            print(f"{name}: ppl {ppl:.2f}, {rep['wall']:.1f}s, peak RSS {rep['peak_rss_mb']:.0f} MB", flush=True)
            rows.append((name, ppl, rep["wall"], rep["peak_rss_mb"]))
    lines = [f"nano Llama (1.1M params) pretrained {args.pretrain_steps} steps on 90% of WikiText-2; 2:4 on every "
             f"block Linear; calibration 128 x 256 tokens; MaskLLM {args.maskllm_steps} steps from the SparseGPT "
             f"prior (logits at 10x the base LR, cosine to 1/10); held-out perplexity on the last 10% "
             f"({dense['windows']} windows of 256).", "",
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
