"""Blockwise local distillation (BLD): each library variant learns, alone, to reproduce its parent block.

Decoupled (Puzzle §3.2): an attention variant is trained inside a block with the parent's (frozen) FFN, an FFN
variant inside a block with the parent's (frozen) attention. Inputs are the parent's own activations entering the
layer, so every variant trains independently of every other: the tasks run in a process pool (or Ray).

Loss: ``MSE(o_parent, o_child) / MSE(o_parent, 0)`` where ``o`` is the block's residual branch (output minus
input): 0 is a perfect copy, 1 is what deleting the block costs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from refinery.compression.puzzle.model import AttnSpec, BlockSpec, FFNSpec, parent_block, part_prefixes

State = dict[str, torch.Tensor]


def bld_loss(o_parent: torch.Tensor, o_child: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``MSE(o_parent, o_child) / MSE(o_parent, 0)`` over the whole batch (only tokens where ``mask`` is True)."""
    if mask is not None:
        o_parent, o_child = o_parent[mask], o_child[mask]
    return (o_child - o_parent).pow(2).mean() / o_parent.pow(2).mean().clamp_min(1e-12)


def rope(config, seq_len: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's rotary (cos, sin) for positions ``0..seq_len-1`` (what the model passes every layer)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    emb = LlamaRotaryEmbedding(config=config)
    x = torch.zeros(1, seq_len, config.hidden_size, dtype=dtype)
    return emb(x, torch.arange(seq_len)[None])


def causal_mask(seq_len: int, dtype=torch.float32, window: int | None = None) -> torch.Tensor:
    """Additive causal mask ``[1, 1, S, S]`` (works for eager and SDPA attention alike); with ``window``, a query
    sees only its last ``window`` positions (sliding-window layers: Mistral, Gemma-2's local layers)."""
    m = torch.full((seq_len, seq_len), torch.finfo(dtype).min, dtype=dtype).triu(1)
    if window is not None and window < seq_len:
        m = m + torch.full_like(m, torch.finfo(dtype).min).tril(-window)
        m = m.clamp_min(torch.finfo(dtype).min)
    return m[None, None]


def layer_mask(config, layer_idx: int, seq_len: int, dtype=torch.float32) -> torch.Tensor:
    """The causal mask the parent's layer ``layer_idx`` attends with (windowed where that layer slides)."""
    from refinery.compression.puzzle.model import layer_window

    return causal_mask(seq_len, dtype, layer_window(config, layer_idx))


def run_layer(layer, h: torch.Tensor, pe, mask) -> torch.Tensor:
    out = layer(h, attention_mask=mask, position_embeddings=pe)
    return out[0] if isinstance(out, tuple) else out


def decoupled_spec(config, part: str, spec: AttnSpec | FFNSpec) -> BlockSpec:
    p = parent_block(config)
    return BlockSpec(spec, p.ffn) if part == "attention" else BlockSpec(p.attention, spec)


def train_variant(config, parent_state: State, part: str, spec: AttnSpec | FFNSpec, init_state: State,
                  inputs: torch.Tensor, steps: int, lr: float, batch_size: int, seed: int = 0,
                  eval_windows: int = 8, mask: torch.Tensor | None = None, device: str = "cpu",
                  precision: str = "fp32", layer_idx: int = 0) -> tuple[State, dict[str, float]]:
    """BLD of one variant: returns its trained sub-block state (on CPU) and the normalised loss before/after on the
    first ``eval_windows`` input windows (the parent's sub-block is frozen; only the variant's weights train).
    ``device``/``precision``: the engine's (one layer and one batch of its inputs on the device at a time, bf16
    autocast over fp32 weights). ``layer_idx``: the parent layer the variant replaces (its attention type and
    mask)."""
    from refinery.engine.device import autocast, check_precision, resolve_device

    dev = resolve_device(device)
    check_precision(precision, dev)
    from refinery.compression.puzzle.library import build_layer
    from refinery.compression.puzzle.model import PuzzleDecoderLayer

    torch.manual_seed(seed)
    p_spec = parent_block(config)
    parent = build_layer(config, p_spec, parent_state, layer_idx=layer_idx).eval().to(dev)
    for p in parent.parameters():
        p.requires_grad_(False)
    keep = part_prefixes(config, "ffn" if part == "attention" else "attention")
    frozen = {k: v for k, v in parent_state.items() if k.startswith(keep)}
    child = PuzzleDecoderLayer(config, decoupled_spec(config, part, spec), 0, parent.attention_type)
    child.load_state_dict({**init_state, **frozen}, strict=True)
    child.to(dev)
    trainable = [p for n, p in child.named_parameters() if not n.startswith(keep)]
    for n, p in child.named_parameters():
        p.requires_grad_(not n.startswith(keep))
    S = inputs.shape[1]
    pe = tuple(t.to(dev) for t in rope(config, S))

    real = torch.ones(inputs.shape[:2], dtype=torch.bool) if mask is None else mask
    attn_mask = layer_mask(config, layer_idx, S).to(dev)

    def loss_on(idx):
        h = inputs[idx].float().to(dev)
        with autocast(precision, dev):
            with torch.no_grad():
                o_p = run_layer(parent, h, pe, attn_mask) - h
            o_c = run_layer(child, h, pe, attn_mask) - h
        return bld_loss(o_p.float(), o_c.float(), real[idx].to(dev))

    ev = torch.arange(min(eval_windows, inputs.shape[0]))
    with torch.no_grad():
        before = float(loss_on(ev))
    if trainable and steps > 0:
        opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed)
        child.train()
        for step in range(steps):
            for group in opt.param_groups:  # cosine to 10% (warmup is unnecessary: the init is already close)
                group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            idx = torch.randint(0, inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=g)
            loss = loss_on(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
        child.eval()
    with torch.no_grad():
        after = float(loss_on(ev))
    state = {k: v.detach().cpu().clone().contiguous() for k, v in child.state_dict().items()
             if not k.startswith(keep)}
    return state, {"loss_init": before, "loss_final": after}


def _run_task(task: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Worker entry point: one variant, inputs read from disk, result written atomically (so a crash loses only
    the tasks in flight)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    import refinery.compression.puzzle.model  # noqa: F401  (registers the config class)

    torch.set_num_threads(task.get("threads", 1))
    d = dict(task["config"])
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    data = torch.load(task["inputs"], mmap=True, weights_only=True)
    parent_state = load_file(task["parent_state"])
    init_state = load_file(task["init_state"]) if task["init_state"] else {}
    spec = AttnSpec.parse(task["spec"]) if task["part"] == "attention" else FFNSpec.parse(task["spec"])
    state, info = train_variant(config, parent_state, task["part"], spec, init_state, data["inputs"], task["steps"],
                                task["lr"], task["batch_size"], task["seed"], mask=data.get("mask"),
                                device=task.get("device", "cpu"), precision=task.get("precision", "fp32"),
                                layer_idx=task.get("layer", 0))
    out = Path(task["out"])
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in info.items()})
    os.replace(tmp, out)
    return task["key"], info


def run_tasks(tasks: list[dict[str, Any]], executor: str = "local", workers: int | None = None,
              on_done: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, dict[str, float]]:
    """Run BLD tasks: ``serial`` (in this process), ``local`` (a spawn process pool, one thread per worker) or
    ``ray`` (one remote task each on the connected or a local Ray instance)."""
    results: dict[str, dict[str, float]] = {}

    def done(key, info):
        results[key] = info
        if on_done:
            on_done(key, info)

    if not tasks:
        return results
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if executor == "serial" or (executor == "local" and workers == 1):
        for t in tasks:
            done(*_run_task({**t, "threads": torch.get_num_threads()}))
    elif executor == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_task, {**t, "threads": threads}) for t in tasks]
            for f in as_completed(futures):
                done(*f.result())
    elif executor == "ray":
        try:
            import ray
        except ImportError:
            from refinery.errors import ConfigError

            raise ConfigError("bld.executor is 'ray' but ray is not installed (pip install 'ray[data]')") from None
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        gpus = 1 if any(t.get("device") == "cuda" for t in tasks) else 0  # Ray sets CUDA_VISIBLE_DEVICES per task
        remote = ray.remote(num_cpus=1, num_gpus=gpus)(_run_task)
        pending = [remote.remote({**t, "threads": 1}) for t in tasks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done(*ray.get(ready[0]))
    else:
        from refinery.errors import ConfigError

        raise ConfigError(f"unknown bld.executor {executor!r} (serial, local or ray)")
    return results
