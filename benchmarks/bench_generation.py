"""Generation throughput: the hf backend (batched, KV cache) vs naive one-prompt-at-a-time
``model.generate``, and `refinery serve` throughput at 1 / 8 / 32 concurrent clients.

    python benchmarks/bench_generation.py [--prompts 64] [--new-tokens 64] [--preset nano] [--record]

The model is a freshly initialised preset (random weights rarely emit EOS, so every sample runs its full
budget and token counts are comparable).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args()

    import httpx
    import torch

    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.models.io import load_model, load_tokenizer
    from refinery.models.zoo import ModelConfig, TokenizerConfig, build_cached
    from refinery.tasks import sample

    torch.set_num_threads(torch.get_num_threads())
    items = sample("word_problems", args.prompts, seed=0)
    corpus = [it["prompt"] + " " + it["solution"] for it in sample("word_problems", 2000, seed=1)]
    path = build_cached(ModelConfig(preset=args.preset), TokenizerConfig(), corpus, seed=0)
    model, tok = load_model(path), load_tokenizer(path)
    chats = [[{"role": "user", "content": it["prompt"]}] for it in items]
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)

    # 1. hf backend, batched
    gen = HFGenerator(model, tok, batch_size=args.prompts)
    gen.generate(chats[:2], params)  # warm-up
    t = time.perf_counter()
    out = gen.generate(chats, params)
    hf_s = time.perf_counter() - t
    hf_tokens = sum(len(c.token_ids) for c in out)

    # 2. naive: model.generate one prompt at a time
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    t = time.perf_counter()
    naive_tokens = 0
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            g = model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            naive_tokens += g.shape[1] - enc["input_ids"].shape[1]
    naive_s = time.perf_counter() - t

    # 3. transformers model.generate, batched with left padding (what a user would otherwise write)
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t = time.perf_counter()
    with torch.no_grad():
        g = model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    batched_s = time.perf_counter() - t
    batched_tokens = int((g[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())

    hf_tps, naive_tps, batched_tps = hf_tokens / hf_s, naive_tokens / naive_s, batched_tokens / batched_s
    lines = [f"Model: `{args.preset}` preset ({sum(p.numel() for p in model.parameters()):,} params), "
             f"{args.prompts} word-problem chats, {args.new_tokens} new tokens each, greedy.", "",
             "| generator | tokens | seconds | tokens/s |", "|---|---|---|---|",
             f"| refinery hf backend (batched, KV cache) | {hf_tokens} | {hf_s:.2f} | {hf_tps:.0f} |",
             f"| transformers `model.generate`, one prompt at a time | {naive_tokens} | {naive_s:.2f} | "
             f"{naive_tps:.0f} |",
             f"| transformers `model.generate`, batched (left padding) | {batched_tokens} | {batched_s:.2f} | "
             f"{batched_tps:.0f} |", "",
             f"**Ratios:** refinery hf / naive one-at-a-time = **{hf_tps / naive_tps:.1f}x**; "
             f"refinery hf / batched `model.generate` = **{hf_tps / batched_tps:.2f}x** (same work, plus per-row "
             "seeds, stop strings and logprobs).", ""]

    # 4. server throughput at 1 / 8 / 32 concurrent clients
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "refinery.cli", "serve", str(path), "--port", str(port),
                             "--model-name", "bench"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        lines += ["Server (`refinery serve`, chat completions over HTTP):", "",
                  "| concurrent clients | requests | seconds | tokens/s | requests/s |", "|---|---|---|---|---|"]
        base = None
        for clients in (1, 8, 32):
            n_req = max(16, clients * 2)

            def call(i, client):
                r = client.post(url + "/v1/chat/completions", json={
                    "model": "bench", "messages": chats[i % len(chats)], "max_tokens": args.new_tokens,
                    "temperature": 0}, timeout=300)
                return r.json()["usage"]["completion_tokens"]

            with httpx.Client(limits=httpx.Limits(max_connections=clients)) as client:
                call(0, client)
                t = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    tokens = sum(pool.map(lambda i: call(i, client), range(n_req)))
                dt = time.perf_counter() - t
            tps = tokens / dt
            base = base or tps
            lines.append(f"| {clients} | {n_req} | {dt:.2f} | {tps:.0f} ({tps / base:.1f}x) | {n_req / dt:.1f} |")
    finally:
        proc.kill()
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("Generation throughput (issue 3)", lines)


if __name__ == "__main__":
    main()
