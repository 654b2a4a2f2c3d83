"""Cost model: parameter memory, KV-cache memory and measured runtime of every sub-block variant.

Memory is exact arithmetic on shapes. Runtime is measured on this machine, the way the model runs it: a stack of
layers holding only that sub-block, minus a stack of empty layers (prefill: ``[batch, seq]``; decode: one token per
sequence against a KV cache of ``seq`` tokens), median of repeats, cached on disk by shape, variant, thread count
and torch version. A block's
runtime is the sum of its sub-blocks'; what the model spends outside the blocks (embedding, mask and rotary set-up,
final norm, head, Python) is the parent's measured total minus its blocks' sum, so the prediction for the parent
is its measurement.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from refinery.compression.puzzle.model import AttnSpec, BlockSpec, FFNSpec


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _norm_params(config, part: str) -> int:
    """The sub-block's norms (one pre-norm; Gemma-2 a pre- and a post-norm)."""
    from refinery.compression.puzzle.model import norm_names

    return config.hidden_size * len(norm_names(config, part))


def attn_params(config, spec: AttnSpec) -> int:
    from refinery.compression.puzzle.model import family_of

    H, d, nh = config.hidden_size, head_dim(config), config.num_attention_heads
    qwen2 = family_of(config) == "qwen2"  # q/k/v biases always, none on o_proj (its config has no attention_bias)
    qkv_bias = qwen2 or bool(getattr(config, "attention_bias", False))
    o_bias = not qwen2 and bool(getattr(config, "attention_bias", False))
    if spec.kind == "no_op":
        return 0
    norms = _norm_params(config, "attention")
    if spec.kind == "linear":
        return H * H + norms
    kv = spec.kv_heads
    qk_norms = 2 * d if getattr(config, "model_type", None) == "qwen3" or getattr(
        config, "parent_model_type", None) == "qwen3" else 0
    return H * nh * d + 2 * H * kv * d + nh * d * H + norms + qk_norms + qkv_bias * (nh * d + 2 * kv * d) + o_bias * H


def ffn_params(config, spec: FFNSpec) -> int:
    H = config.hidden_size
    bias = bool(getattr(config, "mlp_bias", False))
    if spec.kind == "no_op":
        return 0
    norms = _norm_params(config, "ffn")
    if spec.kind == "linear":
        return H * H + norms
    inter = spec.intermediate_size
    return 3 * H * inter + norms + bias * (2 * inter + H)


def kv_bytes_per_token(config, spec: AttnSpec, dtype_bytes: int = 2) -> int:
    """Keys and values one sequence stores per token for this attention variant."""
    return 2 * spec.kv_heads * head_dim(config) * dtype_bytes if spec.kind == "gqa" else 0


def block_memory(config, spec: BlockSpec, batch: int, seq: int, dtype_bytes: int = 2) -> int:
    """Bytes a block needs when serving ``batch`` sequences of ``seq`` tokens: parameters + KV cache."""
    params = attn_params(config, spec.attention) + ffn_params(config, spec.ffn)
    return params * dtype_bytes + batch * seq * kv_bytes_per_token(config, spec.attention, dtype_bytes)


@dataclass(frozen=True)
class Runtime:
    prefill: float  # seconds for one prefill of [batch, seq]
    decode: float  # seconds for one decode step of [batch, 1] at context seq


@torch.no_grad()
def _stack_time(config, spec: BlockSpec, layers: int, batch: int, seq: int, repeats: int) -> Runtime:
    """Median prefill and decode-step time of a model body of ``layers`` identical ``spec`` blocks (no head)."""
    from transformers import DynamicCache

    from refinery.compression.puzzle.model import PuzzleForCausalLM, puzzle_config

    cfg = puzzle_config(config, [spec] * layers, num_hidden_layers=layers, vocab_size=16, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    body = PuzzleForCausalLM(cfg).model.eval()
    ids = torch.randint(0, 16, (batch, seq))
    nxt = torch.randint(0, 16, (batch, 1))
    prefills, decodes = [], []
    for r in range(repeats + 1):
        cache = DynamicCache(config=cfg)
        t0 = time.perf_counter()
        body(input_ids=ids, cache=cache, use_cache=True)
        t1 = time.perf_counter()
        steps = []
        for _ in range(4):
            t2 = time.perf_counter()
            body(input_ids=nxt, cache=cache, use_cache=True)
            steps.append(time.perf_counter() - t2)
            if spec.attention.kind == "gqa":
                cache.crop(-1)  # the context stays at ``seq`` tokens
        if r:  # the first round warms up
            prefills.append(t1 - t0)
            decodes += steps
    return Runtime(statistics.median(prefills), statistics.median(decodes))


def measure_subblock(config, part: str, spec: AttnSpec | FFNSpec, batch: int, seq: int, repeats: int = 7,
                     layers: int = 4) -> Runtime:
    """Time of one sub-block variant as the real model runs it (KV-cache update, masks and all): a stack of
    ``layers`` layers holding only that sub-block, minus a stack of empty layers, divided by ``layers``."""
    if spec.kind == "no_op":
        return Runtime(0.0, 0.0)
    empty = BlockSpec(AttnSpec("no_op"), FFNSpec("no_op"))
    block = BlockSpec(spec, empty.ffn) if part == "attention" else BlockSpec(empty.attention, spec)
    full = _stack_time(config, block, layers, batch, seq, repeats)
    base = _stack_time(config, empty, layers, batch, seq, repeats)
    return Runtime(max(0.0, (full.prefill - base.prefill) / layers), max(0.0, (full.decode - base.decode) / layers))


class CostModel:
    """Runtime and memory per sub-block variant for one (config, batch, seq) on this machine, cached on disk."""

    def __init__(self, config, batch: int, seq: int, repeats: int = 7, dtype_bytes: int = 2, cache_file=None):
        self.config, self.batch, self.seq, self.repeats, self.dtype_bytes = config, batch, seq, repeats, dtype_bytes
        self.cache_file = cache_file
        self._cache: dict[str, list[float]] = {}
        if cache_file is not None and cache_file.exists():
            self._cache = json.loads(cache_file.read_text())

    def _key(self, part: str, spec) -> str:
        c = self.config
        return "|".join(map(str, (part, spec.name, c.hidden_size, c.num_attention_heads, head_dim(c), self.batch,
                                  self.seq, torch.get_num_threads(), torch.__version__, platform.machine())))

    def runtime(self, part: str, spec) -> Runtime:
        key = self._key(part, spec)
        if key not in self._cache:
            r = measure_subblock(self.config, part, spec, self.batch, self.seq, self.repeats)
            self._cache[key] = [r.prefill, r.decode]
            if self.cache_file is not None:
                from refinery.runs import atomic_write_text

                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.cache_file, json.dumps(self._cache, indent=1))
        return Runtime(*self._cache[key])

    def block_runtime(self, spec: BlockSpec) -> Runtime:
        a, f = self.runtime("attention", spec.attention), self.runtime("ffn", spec.ffn)
        return Runtime(a.prefill + f.prefill, a.decode + f.decode)

    def block_memory(self, spec: BlockSpec) -> int:
        return block_memory(self.config, spec, self.batch, self.seq, self.dtype_bytes)


@torch.no_grad()
def measure_model(model, batch: int, seq: int, new_tokens: int = 16, repeats: int = 3) -> dict[str, float]:
    """Measured whole-model speed with a KV cache: prefill seconds for ``[batch, seq]``, then ``new_tokens``
    greedy decode steps; medians over repeats. ``decode_tps`` is generated tokens per second."""
    from transformers import DynamicCache

    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (batch, seq), generator=g)
    prefills, decodes = [], []
    for r in range(repeats + 1):
        cache = DynamicCache(config=model.config)
        t0 = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True)
        t1 = time.perf_counter()
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            nxt = model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        t2 = time.perf_counter()
        if r:  # the first pass warms up allocators and kernels
            prefills.append(t1 - t0)
            decodes.append((t2 - t1) / new_tokens)
    decode = statistics.median(decodes)
    return {"prefill_s": statistics.median(prefills), "decode_step_s": decode, "decode_tps": batch / decode}


def model_memory(model, batch: int, seq: int, dtype_bytes: int = 2) -> int:
    """Parameter bytes (tied embeddings once) + KV cache for ``batch`` sequences of ``seq`` tokens."""
    from refinery.compression.puzzle.model import layer_blocks
    from refinery.models.zoo import count_parameters

    kv = sum(kv_bytes_per_token(model.config, b.attention, dtype_bytes) for b in layer_blocks(model))
    return count_parameters(model) * dtype_bytes + batch * seq * kv
