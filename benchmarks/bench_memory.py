"""Peak memory of one RL update: the engine (chunked log-probs, micro-batches) vs the full-logits path.

    python benchmarks/bench_memory.py [--rows 8] [--tokens 4096] [--micro-rows 2] [--chunk 1024] [--record]

A random-init Llama-shaped model with Qwen2's 151,936-token vocabulary and a small hidden size, one GRPO-style
update (clipped surrogate, token-mean, entropy metric, AdamW step) on ``rows`` x ``tokens`` response tokens behind
a short shared prompt. Each arm runs in a fresh process; its peak is the rise of that process's peak memory
during the update (CUDA: ``max_memory_allocated``; CPU: peak RSS over the RSS just before the update, model,
batch and warm-up already resident). Both arms must give the same loss and gradients (checked here, max |diff|).
The full-logits path holds ``rows x tokens x vocab`` fp32 logits several times over (~20 GB per copy at 8 x 4,096):
on a CPU machine with less memory than that, pass smaller ``--rows/--tokens``; the ratio is printed for what ran.
Ends with ``peak memory ratio (engine / full logits): X``.
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

import torch

VOCAB = 151_936  # Qwen2 / DeepSeek-R1-Distill-Qwen


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arm(name: str, rows: int, tokens: int, micro_rows: int, chunk: int, device: str, out: Path) -> None:
    """One update in this process; writes peak, loss, time and the gradients to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from refinery.engine.accum import accumulate, micro_batches
    from refinery.rl.batch import make_batch, response_logprobs, response_logprobs_full_logits
    from refinery.rl.losses import policy_loss

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(device)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=tokens + 64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(dev).train()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, VOCAB, (32,), generator=g).tolist()
    responses = [torch.randint(0, VOCAB, (tokens - 97 * i,), generator=g).tolist() for i in range(rows)]
    batch = make_batch([prompt] * rows, responses, pad_id=0)
    adv = torch.randn(rows, generator=g).to(dev)
    mask = batch.mask.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def loss_fn(r):
        if name == "engine":
            logp, ent = response_logprobs(model, batch, 1.0, rows=r, with_entropy=True, chunk_tokens=chunk)
        else:
            logp, ent = response_logprobs_full_logits(model, batch, 1.0, rows=r, with_entropy=True)
            ent = ent.detach()
        rd = r.to(dev)
        loss, st = policy_loss(logp, logp.detach(), adv[rd], mask[rd])
        st["entropy"] = float((ent * mask[rd]).sum() / mask[rd].sum())
        return loss, st

    rows_t = torch.arange(rows)
    pieces = micro_batches(rows_t, micro_rows) if name == "engine" else [rows_t]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = max(_rss_mb(), _maxrss_mb())
    t0 = time.perf_counter()
    st = accumulate(loss_fn, pieces, batch.mask)
    grads = {k: p.grad.detach().cpu().clone() for k, p in model.named_parameters()}
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = _maxrss_mb() - base
    seconds = time.perf_counter() - t0
    torch.save(grads, out.with_suffix(".pt"))
    out.write_text(json.dumps({"peak_mb": peak, "loss": st["loss"], "entropy": st["entropy"], "seconds": seconds,
                               "tokens": int(batch.mask.sum())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096, help="response tokens of the longest row")
    ap.add_argument("--micro-rows", type=int, default=2, help="engine micro-batch rows")
    ap.add_argument("--chunk", type=int, default=1024, help="engine log-prob chunk (tokens)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._arm:
        arm(args._arm, args.rows, args.tokens, args.micro_rows, args.chunk, args.device, Path(args._out))
        return
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("engine", "full"):
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, "--_arm", name, "--_out", str(out), "--rows", str(args.rows),
                   "--tokens", str(args.tokens), "--micro-rows", str(args.micro_rows), "--chunk", str(args.chunk),
                   "--device", args.device]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
                sys.exit(f"{name} arm failed ({tail[0]}); with less memory than the full-logits path needs, "
                         "pass smaller --rows/--tokens")
            res[name] = json.loads(out.read_text())
            res[name]["grads"] = torch.load(out.with_suffix(".pt"))
    e, f = res["engine"], res["full"]
    gdiff = max(float((e["grads"][k] - f["grads"][k]).abs().max()) for k in e["grads"])
    gscale = max(float(f["grads"][k].abs().max()) for k in f["grads"])
    ratio = e["peak_mb"] / f["peak_mb"]
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [
        f"- device: {dev_name}; vocab {VOCAB:,}, hidden 64, 2 layers; {args.rows} rows x up to {args.tokens} response "
        f"tokens ({e['tokens']:,} in the loss); engine: chunk {args.chunk} tokens, "
        f"micro-batches of {args.micro_rows} rows",
        f"- peak memory of the update: engine {e['peak_mb']:,.0f} MiB, full logits {f['peak_mb']:,.0f} MiB "
        f"(ratio {ratio:.3f}; goal <= 0.25)",
        f"- time of the update: engine {e['seconds']:.1f} s, full logits {f['seconds']:.1f} s",
        f"- same result: loss {e['loss']:.6f} vs {f['loss']:.6f}, entropy {e['entropy']:.4f} vs {f['entropy']:.4f}, "
        f"max |grad diff| {gdiff:.2e} (max |grad| {gscale:.2e})",
    ]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("Peak memory of one RL update: engine vs full logits", lines)
    print(f"peak memory ratio (engine / full logits): {ratio:.3f}")


if __name__ == "__main__":
    main()
