#!/usr/bin/env bash
# GPU checks that cannot run on the CPU development machines. Each section prints the GPU it ran on; nothing here
# has been run by the authors unless RESULTS.md says so with the GPU name.
#
#   bash benchmarks/gpu_check.sh            # all sections
#   bash benchmarks/gpu_check.sh sparsity   # 2:4 only (about 1-2 minutes on one H100)
#   bash benchmarks/gpu_check.sh engine     # training engine: memory, tokens/s, MFU, TRL side by side
#
# On a machine with no network and no venv (the device image: python3 with torch + transformers), first run
# `bash benchmarks/gpu_wheels.sh` where pip works and bring `.whl/` along: this script installs it into /tmp/site
# (Refinery's missing dependencies and TRL for the side-by-side rows) and runs from the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
if [[ -d .whl ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
elif ! "$PY" -c "import refinery" 2>/dev/null; then
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
SECTION=${1:-all}

if [[ "$SECTION" == all || "$SECTION" == sparsity ]]; then
  echo "== 2:4 semi-structured sparsity: matmul and end-to-end decode vs dense =="
  timeout 300 "$PY" - <<'EOF'
import time

import torch

from refinery.compression.sparsity.kernels import matmul_speedup, to_semi_structured
from refinery.compression.sparsity.nm import check_nm, nm_mask, prunable_linears

if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: nothing measured")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)

# Llama-3-8B MLP shapes: gate/up 4096 -> 14336, down 14336 -> 4096; prefill (4096 tokens) and decode-sized inputs
for out_f, in_f in ((14336, 4096), (4096, 14336)):
    for tokens in (4096, 64, 16):
        r = matmul_speedup(out_f, in_f, tokens, repeats=30)
        print(f"matmul W[{out_f}x{in_f}] x {tokens} tokens fp16: dense {r['dense_ms']:.3f} ms, "
              f"2:4 {r['sparse_ms']:.3f} ms, speed-up {r['speedup']:.2f}x")

# end-to-end greedy decode: random-init Llama with Llama-3-8B layer shapes (4 layers to stay quick), fp16
from transformers import LlamaConfig, LlamaForCausalLM

cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).to("cuda", torch.float16).eval()
with torch.no_grad():
    for lin in prunable_linears(model).values():
        lin.weight.mul_(nm_mask(lin.weight.abs().float()).to(lin.weight.dtype))
        lin.weight[:, 0] = 0  # a dead input channel: extra zeros must still convert (at most 2 per 4 is 2:4)
check_nm(model)
ids = torch.randint(0, 32000, (16, 128), device="cuda")


def decode_s(m, new=64):
    with torch.no_grad():
        m.generate(ids, max_new_tokens=8, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


dense_s, dense_out = decode_s(model)
n = to_semi_structured(model)
sparse_s, sparse_out = decode_s(model)
agree = (dense_out == sparse_out).float().mean().item()
print(f"decode batch 16, prompt 128, 64 new tokens, {n} Linears 2:4: dense {dense_s:.2f} s, 2:4 {sparse_s:.2f} s, "
      f"speed-up {dense_s / sparse_s:.2f}x, tokens identical {agree:.1%}")
EOF
  "$PY" -m pytest tests/compression -q -m gpu
fi

if [[ "$SECTION" == all || "$SECTION" == engine ]]; then
  echo "== engine: CUDA tests, peak memory vs full logits, SFT / RL-update tokens/s and MFU (Qwen2-0.5B shape) =="
  "$PY" -m pytest tests/engine tests/rl/test_trainer.py -q -k "cuda or engine" || true
  # H100/H200: the issue's size fits the full-logits path only on the larger card; 4 rows keep it under 80 GB
  timeout 240 "$PY" benchmarks/bench_memory.py --rows 4 --tokens 4096 || true
  timeout 240 "$PY" benchmarks/bench_engine_gpu.py --shape qwen2-0.5b --tokens 4096 --rows 4 --trl || true
fi
