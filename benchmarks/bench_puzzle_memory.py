"""Memory of Puzzle's library stages (calibration statistics, the block library on disk and the one layer of it
a run holds, one BLD task, the scorer):
measured resident memory on a random-init Llama shape that runs here, beside the same arithmetic (``predict``)
at that shape and at Llama-3-8B (computed, not run). Recipe defaults: 64 calibration and 16 scoring windows of
128 tokens, kv_heads [1], ffn_fractions [0.5, 0.25, 0.1], linear and no-op variants, fp32 parent (how the runner
loads it).

    python benchmarks/bench_puzzle_memory.py            # prints a table; --append adds a row to RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource

import torch

GB = 2**30


def rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / GB


def predict(c: dict, n_calib=64, n_score=16, seq=128, kv=(1,), fracs=(0.5, 0.25, 0.1), bytes_=4) -> dict:
    """Bytes each stage adds (GiB): what the code holds, from the shapes alone."""
    H, L, inter, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    d = H // nh
    attn = lambda k: 2 * H * nh * d + 2 * H * k * d + H  # noqa: E731  q, o, k, v, norm
    layer = attn(nkv) + 3 * H * inter + H
    params = L * layer + V * H * (1 if c.get("tie_word_embeddings") else 2) + H
    widths = [max(4, round(inter * f / 4) * 4) for f in fracs]
    library = L * (attn(nkv) + sum(attn(k) for k in kv) + H * H + H  # attention: parent, fewer KV heads, linear
                   + sum(3 * H * w + H for w in [inter, *widths]) + H * H + H)  # FFN: parent, narrower, linear
    stats = lambda n: L * (n * seq * H * 4 + 2 * H * H * 8) + n * seq * H * 4  # noqa: E731  inputs + XtX, XtY
    variant = 3 * H * inter  # the largest variant trained (the parent's FFN width)
    bld = layer * bytes_ + n_calib * seq * H * 4 + 4 * variant * bytes_  # parent layer, its inputs, variant+grad+Adam
    scorer = L * n_score * seq * H * 4 + n_score * seq * V * 4  # per-layer inputs + reference log-probs
    # the library lives on disk and is read one layer at a time: building holds parent + statistics, scoring
    # holds parent + one layer's variants + scorer
    held = max(params * bytes_ + stats(n_calib), params * bytes_ + library * bytes_ / L + scorer)
    return {"parent": params * bytes_ / GB, "calib stats": stats(n_calib) / GB,
            "library (disk)": library * bytes_ / GB, "library held": library * bytes_ / L / GB,
            "bld task": bld / GB, "scorer": scorer / GB, "process peak": held / GB, "params": params}


def _bytes(*objs) -> float:
    """GiB of the distinct tensor storages reachable in ``objs`` (dicts, lists, dataclasses, tensors)."""
    seen: dict[int, int] = {}

    def walk(o):
        if isinstance(o, torch.Tensor):
            seen[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif hasattr(o, "__dict__"):
            walk(vars(o))

    for o in objs:
        walk(o)
    return sum(seen.values()) / GB


def measure(c: dict) -> dict:
    """What each stage holds (tensor storage, exact), and the process's peak resident memory over the start."""
    import tempfile
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    from refinery.compression.puzzle import bld
    from refinery.compression.puzzle import library as lib
    from refinery.compression.puzzle.runner import LibraryLayer, _save
    from refinery.compression.puzzle.scoring import Scorer

    torch.manual_seed(0)
    out = {}
    base = rss()
    parent = LlamaForCausalLM(LlamaConfig(**c)).eval()
    for p in parent.parameters():
        p.requires_grad_(False)
    out["parent"] = _bytes(list(parent.parameters()))
    cfg = parent.config
    g = torch.Generator().manual_seed(0)
    stats = lib.collect_stats(parent, torch.randint(0, cfg.vocab_size, (64, 128), generator=g))
    out["calib stats"] = _bytes(stats)
    attn_vars, ffn_vars = lib.attention_variants(cfg, [1]), lib.ffn_variants(cfg, [0.5, 0.25, 0.1])
    root = Path(tempfile.mkdtemp(prefix="puzzle-lib-"))
    per_layer = []
    for i, layer in enumerate(parent.model.layers):  # as the runner builds it: each variant to disk when made
        made = {}
        for part, vars_ in (("attention", attn_vars), ("ffn", ffn_vars)):
            for v in vars_:
                if v.kind == "no_op":
                    continue
                made[(part, v.name)] = (lib.init_attention(layer, cfg, v) if part == "attention"
                                        else lib.init_ffn(layer, stats.layers[i], v))
                _save(made[(part, v.name)], LibraryLayer(root, i, part, vars_).path(v.name))
        per_layer.append(_bytes(made))
        del made
    out["library (disk)"] = sum(f.stat().st_size for f in root.iterdir()) / GB
    out["library held"] = max(per_layer)  # scoring reads one layer's variants at a time
    state = {k: v.clone() for k, v in parent.model.layers[0].state_dict().items()}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    bld.train_variant(cfg, state, "ffn", ffn_vars[0], lib.parent_ffn(parent.model.layers[0]), stats.layers[0].inputs,
                      steps=2, lr=1e-3, batch_size=8)
    out["bld task"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - before  # 0: under the peak
    del stats
    scorer = Scorer(parent, torch.randint(0, cfg.vocab_size, (16, 128), generator=g))
    out["scorer"] = _bytes(scorer.inputs, scorer.ref_logp)
    for i in range(cfg.num_hidden_layers):  # what scoring reads: one layer's variants, then the next
        layer_a = dict(LibraryLayer(root, i, "attention", attn_vars).items())
        layer_f = dict(LibraryLayer(root, i, "ffn", ffn_vars).items())
        del layer_a, layer_f
    for f in root.iterdir():
        f.unlink()
    root.rmdir()
    out["process peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base
    return out


SHAPE = dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False)
LLAMA32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--append", action="store_true", help="append a row to benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    got, here, one, big = measure(SHAPE), predict(SHAPE), predict(LLAMA32_1B), predict(LLAMA3_8B)
    print(f"{'stage':<15} {'measured GiB':>13} {'computed GiB':>13} {'Llama-3.2-1B (computed)':>24} "
          f"{'Llama-3-8B (computed)':>22}")
    for k in got:
        print(f"{k:<15} {got[k]:>13.3f} {here[k]:>13.3f} {one[k]:>24.1f} {big[k]:>22.1f}")
    print("process peak: measured = peak RSS over the start; computed = the larger of parent + calib stats "
          "(building) and parent + one layer's library + scorer (scoring); transients on top")
    if args.append:
        row = (f"\n## Puzzle library memory ({datetime.date.today()}, {os.cpu_count()} cores)\n\n"
               f"`python benchmarks/bench_puzzle_memory.py`: measured at {here['params'] / 1e6:.0f}M params: "
               + ", ".join(f"{k} {got[k]:.3f} GiB (computed {here[k]:.3f})" for k in got)
               + "; Llama-3.2-1B computed: " + ", ".join(f"{k} {one[k]:.1f} GiB" for k in one if k != "params")
               + "; Llama-3-8B computed: " + ", ".join(f"{k} {big[k]:.1f} GiB" for k in big if k != "params")
               + ". Measured = tensor storage each stage holds (BLD: rise of peak RSS); process peak = peak RSS "
               "over the start.\n")
        with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as f:
            f.write(row)


if __name__ == "__main__":
    main()
