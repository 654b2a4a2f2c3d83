"""Puzzle: heterogeneous model, library init, BLD, scoring, cost arithmetic, MILP search, assembly, GKD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from refinery.compression.puzzle import bld, cost, distill, library, search
from refinery.compression.puzzle.model import (
    AttnSpec,
    BlockSpec,
    FFNSpec,
    PuzzleDecoderLayer,
    PuzzleForCausalLM,
    from_llama,
    parent_block,
    puzzle_config,
)
from refinery.compression.puzzle.scoring import Scorer


def tiny_llama(layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # break the init's symmetry so every channel and head matters differently
        for p in model.parameters():
            p.mul_(1 + 0.5 * torch.rand_like(p))
    return model


MIXED = [BlockSpec(AttnSpec("no_op"), FFNSpec("swiglu", 32)), BlockSpec(AttnSpec("gqa", 1), FFNSpec("linear")),
         BlockSpec(AttnSpec("linear"), FFNSpec("no_op")), BlockSpec(AttnSpec("gqa", 2), FFNSpec("swiglu", 64))]


# ---- heterogeneous model -------------------------------------------------------------------------------------
def test_parent_converts_losslessly():
    parent = tiny_llama()
    child = from_llama(parent)
    x = torch.randint(0, 96, (2, 17))
    assert torch.equal(parent(x).logits, child(x).logits)


def test_heterogeneous_child_saves_loads_and_generates_with_cache(tmp_path):
    child = PuzzleForCausalLM(puzzle_config(tiny_llama().config, MIXED)).eval()
    child.generation_config.pad_token_id = 0
    child.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "PuzzleForCausalLM"
    assert [b.name for b in loaded.config.blocks] == [b.name for b in MIXED]
    x = torch.randint(0, 96, (2, 9))
    assert torch.equal(child(x).logits, loaded(x).logits)
    # Cached decoding (layer 0 has no attention, so the cache indexes attention layers only) = full recompute.
    out = loaded.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False)
    full = x
    for _ in range(5):
        full = torch.cat([full, loaded(full).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, full)
    # The no-op sub-blocks really hold no weights.
    names = [n for n, _ in loaded.named_parameters()]
    assert not any(n.startswith("model.layers.0.self_attn") or n.startswith("model.layers.0.input_layernorm")
                   for n in names)
    assert not any(n.startswith("model.layers.2.mlp") for n in names)


def test_refinery_load_model_reads_a_child(tmp_path):
    from refinery.models.io import load_model

    child = PuzzleForCausalLM(puzzle_config(tiny_llama().config, MIXED))
    child.save_pretrained(tmp_path)
    assert type(load_model(tmp_path)).__name__ == "PuzzleForCausalLM"


def test_bad_block_config_is_rejected():
    with pytest.raises(ValueError, match="kv_heads 3"):
        puzzle_config(tiny_llama().config, [BlockSpec(AttnSpec("gqa", 3), FFNSpec("swiglu", 8))] * 4)
    with pytest.raises(ValueError, match="4 layers"):
        puzzle_config(tiny_llama().config, MIXED[:2])
    with pytest.raises(ValueError, match="unknown attention kind"):
        AttnSpec.parse({"kind": "mamba"})


# ---- library init --------------------------------------------------------------------------------------------
def test_channel_scores_formula():
    x = torch.tensor([1.0, 2.0, 0.5])
    w_down = torch.tensor([[3.0, 0.0, 1.0], [4.0, 1.0, 1.0]])
    assert torch.allclose(library.channel_scores(x, w_down), torch.tensor([5.0, 2.0, 0.5 * math.sqrt(2)]))
    assert library.keep_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [1, 3]


def _stats(parent):
    return library.collect_stats(parent, torch.randint(0, 96, (6, 16), generator=torch.Generator().manual_seed(1)))


def test_init_keeping_everything_reproduces_the_parent():
    parent = tiny_llama()
    st = _stats(parent)
    cfg = parent.config
    pe, mask = bld.rope(cfg, 16), bld.causal_mask(16)
    for i, layer in enumerate(parent.model.layers):
        p = parent_block(cfg)
        state = {**library.init_attention(layer, cfg, p.attention), **library.init_ffn(layer, st.layers[i], p.ffn)}
        rebuilt = library.build_layer(cfg, p, state)
        h = st.layers[i].inputs
        assert torch.allclose(bld.run_layer(rebuilt, h, pe, mask), bld.run_layer(layer, h, pe, mask), atol=1e-6)


def test_ffn_pruning_keeps_the_highest_contribution_channels():
    parent = tiny_llama()
    st = _stats(parent)
    layer = parent.model.layers[1]
    state = library.init_ffn(layer, st.layers[1], FFNSpec("swiglu", 16))
    scores = library.channel_scores(st.layers[1].mean_abs_act, layer.mlp.down_proj.weight)
    keep = torch.topk(scores, 16).indices.sort().values
    assert torch.equal(state["mlp.down_proj.weight"], layer.mlp.down_proj.weight[:, keep])
    assert torch.equal(state["mlp.gate_proj.weight"], layer.mlp.gate_proj.weight[keep])


def test_kv_head_pooling_and_linear_attention_init():
    w = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4 * 3, 2)  # 4 heads of dim 3
    pooled = library.pool_kv_heads(w, 4, 2)
    assert torch.allclose(pooled[:3], (w[:3] + w[3:6]) / 2) and torch.allclose(pooled[3:], (w[6:9] + w[9:]) / 2)
    assert torch.equal(library.pool_kv_heads(w, 4, 4), w)
    # Linear attention = W_o · W_v: exactly what attention outputs when every key is the same token.
    parent = tiny_llama()
    layer = parent.model.layers[0]
    cfg = parent.config
    state = library.init_attention(layer, cfg, AttnSpec("linear"))
    h = torch.randn(1, 1, 32)  # one token: softmax attention is the identity on its own value
    n = layer.input_layernorm(h)
    ref = layer.self_attn(n, position_embeddings=bld.rope(cfg, 1), attention_mask=None)[0]
    assert torch.allclose(n @ state["self_attn.proj.weight"].T, ref, atol=1e-5)


def test_linear_ffn_is_the_least_squares_fit():
    torch.manual_seed(0)
    x = torch.randn(500, 8, dtype=torch.float64)
    w_true = torch.randn(8, 8, dtype=torch.float64)
    y = x @ w_true.T
    w = library.fit_linear(x.T @ x, x.T @ y, ridge=0.0)
    assert torch.allclose(w.double(), w_true, atol=1e-4)


def test_variant_lists():
    cfg = tiny_llama().config
    assert [a.name for a in library.attention_variants(cfg, [1])] == ["kv2", "kv1", "linear", "no_op"]
    assert [f.name for f in library.ffn_variants(cfg, [0.5, 0.25])] == ["ffn64", "ffn32", "ffn16", "linear", "no_op"]
    with pytest.raises(ValueError):
        library.attention_variants(cfg, [3])


# ---- BLD -----------------------------------------------------------------------------------------------------
def test_bld_loss_formula():
    op = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    oc = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    assert float(bld.bld_loss(op, oc)) == pytest.approx((1 + 4) / 4 / ((1 + 4 + 9 + 16) / 4))
    assert float(bld.bld_loss(op, torch.zeros_like(op))) == pytest.approx(1.0)


def test_bld_training_improves_a_pruned_ffn_and_leaves_the_parent_part_alone():
    parent = tiny_llama()
    st = _stats(parent)
    layer = parent.model.layers[2]
    spec = FFNSpec("swiglu", 8)
    init = library.init_ffn(layer, st.layers[2], spec)
    pstate = {k: v.clone() for k, v in layer.state_dict().items()}
    state, info = bld.train_variant(parent.config, pstate, "ffn", spec, init, st.layers[2].inputs, steps=60,
                                    lr=3e-3, batch_size=4)
    assert info["loss_final"] < 0.8 * info["loss_init"]
    assert set(state) == set(init)  # only the variant's own weights come back
    assert not torch.equal(state["mlp.down_proj.weight"], init["mlp.down_proj.weight"])


def test_bld_tasks_run_in_a_process_pool(tmp_path):
    from safetensors.torch import load_file, save_file

    parent = tiny_llama()
    st = _stats(parent)
    torch.save({"inputs": st.layers[0].inputs}, tmp_path / "in.pt")
    layer = parent.model.layers[0]
    save_file({k: v.contiguous() for k, v in layer.state_dict().items()}, str(tmp_path / "parent.safetensors"))
    tasks = []
    for spec in (AttnSpec("gqa", 1), FFNSpec("swiglu", 16)):
        part = "attention" if isinstance(spec, AttnSpec) else "ffn"
        init = (library.init_attention(layer, parent.config, spec) if part == "attention"
                else library.init_ffn(layer, st.layers[0], spec))
        save_file({k: v.contiguous() for k, v in init.items()}, str(tmp_path / f"{spec.name}.init"))
        tasks.append({"key": spec.name, "config": parent.config.to_dict(), "inputs": str(tmp_path / "in.pt"),
                      "parent_state": str(tmp_path / "parent.safetensors"),
                      "init_state": str(tmp_path / f"{spec.name}.init"),
                      "part": part, "spec": spec.name, "steps": 20, "lr": 3e-3, "batch_size": 4, "seed": 0,
                      "out": str(tmp_path / f"{spec.name}.safetensors")})
    results = bld.run_tasks(tasks, executor="local", workers=2)
    assert set(results) == {"kv1", "ffn16"}
    for t in tasks:
        assert results[t["key"]]["loss_final"] <= results[t["key"]]["loss_init"]
        assert load_file(t["out"])  # written, complete
    # The same tasks on Ray (a local instance) give the same weights: each task is seeded and single-threaded.
    pytest.importorskip("ray", reason="ray is part of the test install (pip install 'ray[data]')")
    first = {t["key"]: load_file(t["out"]) for t in tasks}
    ray_tasks = [{**t, "out": t["out"].replace(".safetensors", ".ray.safetensors")} for t in tasks]
    assert set(bld.run_tasks(ray_tasks, executor="ray", workers=2)) == {"kv1", "ffn16"}
    for t in ray_tasks:
        again = load_file(t["out"])
        assert all(torch.equal(again[k], first[t["key"]][k]) for k in again)


# ---- scoring -------------------------------------------------------------------------------------------------
def test_kl_formula_and_replace_one_block():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    assert float(distill.kl_parent_child(p, q)) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    parent = tiny_llama()
    windows = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(2))
    scorer = Scorer(parent, windows)
    same = scorer.score(1, parent.model.layers[1])
    assert same["kl"] < 1e-6 and same["lm_loss"] == pytest.approx(scorer.ref_loss, abs=1e-5)
    # Removing a whole block is the strongest change: its KL exceeds a pruned FFN's.
    st = _stats(parent)
    noop = library.build_layer(parent.config, BlockSpec(AttnSpec("no_op"), FFNSpec("no_op")), {})
    half = library.build_layer(parent.config, BlockSpec(AttnSpec("gqa", 2), FFNSpec("swiglu", 48)),
                               {**library.parent_attention(parent.model.layers[1]),
                                **library.init_ffn(parent.model.layers[1], st.layers[1], FFNSpec("swiglu", 48))})
    assert scorer.score(1, noop)["kl"] > scorer.score(1, half)["kl"] > 0


# ---- cost model ----------------------------------------------------------------------------------------------
def test_cost_arithmetic_matches_real_modules():
    cfg = tiny_llama().config
    for spec in MIXED + [parent_block(cfg)]:
        layer = PuzzleDecoderLayer(cfg, spec, 0)
        real = sum(p.numel() for p in layer.parameters())
        assert cost.attn_params(cfg, spec.attention) + cost.ffn_params(cfg, spec.ffn) == real
    # KV: 2 (k, v) x kv_heads x head_dim x bytes per token; nothing for linear / no-op attention.
    assert cost.kv_bytes_per_token(cfg, AttnSpec("gqa", 2), 2) == 2 * 2 * 8 * 2
    assert cost.kv_bytes_per_token(cfg, AttnSpec("linear"), 2) == 0
    spec = parent_block(cfg)
    p = cost.attn_params(cfg, spec.attention) + cost.ffn_params(cfg, spec.ffn)
    assert cost.block_memory(cfg, spec, batch=3, seq=10, dtype_bytes=2) == p * 2 + 3 * 10 * 64
    parent = tiny_llama()
    expected = sum(p.numel() for p in {id(p): p for p in parent.parameters()}.values()) * 2 + 3 * 10 * 64 * 4
    assert cost.model_memory(from_llama(parent), 3, 10) == expected


def test_runtime_measurements_are_cached_and_ordered(tmp_path):
    cfg = LlamaConfig(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=1, vocab_size=64)
    cm = cost.CostModel(cfg, batch=4, seq=64, repeats=3, cache_file=tmp_path / "c.json")
    full, small = cm.runtime("ffn", FFNSpec("swiglu", 512)), cm.runtime("ffn", FFNSpec("swiglu", 32))
    assert cm.runtime("ffn", FFNSpec("no_op")) == cost.Runtime(0.0, 0.0)
    assert full.prefill > small.prefill >= 0  # (a 32-wide FFN can time at 0 on a loaded machine: clamped)
    kv = cm.runtime("attention", AttnSpec("gqa", 2))
    assert kv.prefill > 0 and kv.decode > 0
    again = cost.CostModel(cfg, batch=4, seq=64, repeats=3, cache_file=tmp_path / "c.json")
    assert again.runtime("ffn", FFNSpec("swiglu", 512)) == full  # read from the cache, not re-measured


# ---- search --------------------------------------------------------------------------------------------------
def _random_problem(L, V, seed, budget_frac=0.6):
    rng = np.random.default_rng(seed)
    scores = rng.random((L, V))
    scores[:, 0] = 0  # variant 0 = parent: free in score, most expensive
    mem = rng.random((L, V)) + np.linspace(1, 0, V)
    run = rng.random((L, V)) + np.linspace(1, 0, V)
    scores[rng.random((L, V)) < 0.1] = np.inf
    scores[:, 0] = 0
    return search.Problem(scores, {"memory": mem, "runtime": run},
                          {"memory": mem[:, 0].sum() * budget_frac, "runtime": run[:, 0].sum() * budget_frac})


@pytest.mark.parametrize("seed", range(6))
def test_milp_matches_brute_force(seed):
    prob = _random_problem(4, 4, seed)
    ref = search.brute_force(prob)
    got = search.solve(prob)
    if ref is None:
        assert got is None
    else:
        assert got is not None and prob.feasible(got)
        assert prob.value(got) == pytest.approx(prob.value(ref))
        # The second diverse solution matches brute force under the same cut.
        ref2 = search.brute_force(prob, [got], alpha=0.5)
        got2 = search.solve(prob, [got], alpha=0.5)
        assert (ref2 is None) == (got2 is None)
        if ref2 is not None:
            assert prob.value(got2) == pytest.approx(prob.value(ref2))
            assert sum(a == b for a, b in zip(got, got2)) <= 2


def test_constraint_arithmetic_and_infeasible_budget():
    scores = np.array([[0.0, 1.0, 5.0], [0.0, 2.0, 3.0]])
    runtime = np.array([[10.0, 6.0, 1.0], [10.0, 5.0, 1.0]])
    prob = search.Problem(scores, {"runtime": runtime}, {"runtime": 12.0})
    # Budget 12: (1,1) costs 11 with score 3; (2,0) costs 11, score 5; (0,2) costs 11, score 3.
    # Cheapest-score feasible: (1,1)=3 or (0,2)=3 -> tie broken by the solver; both are optimal.
    sol = search.solve(prob)
    assert prob.usage(sol)["runtime"] <= 12 and prob.value(sol) == 3.0
    assert search.solve(search.Problem(scores, {"runtime": runtime}, {"runtime": 1.5})) is None
    with pytest.raises(ValueError, match="unknown costs"):
        search.Problem(scores, {"runtime": runtime}, {"memory": 1.0})


# ---- assembly and GKD ----------------------------------------------------------------------------------------
def test_gkd_loss_formula():
    h = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]])]
    hp = [torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[2.0, 2.0]]])]
    logits = torch.tensor([[[0.0, 0.0]]])
    loss, parts = distill.gkd_loss(h, hp, logits, logits)
    assert parts["cos"] == pytest.approx(1.0) and parts["kl"] == pytest.approx(0.0)
    logits_p = torch.tensor([[[math.log(3.0), 0.0]]])  # p = (3/4, 1/4) vs q = (1/2, 1/2)
    loss, parts = distill.gkd_loss(h, hp, logits, logits_p)
    assert float(loss) == pytest.approx(1.0 + 0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def test_assemble_from_the_library_and_distill():
    parent = tiny_llama()
    cfg = parent.config
    attn_lib, ffn_lib = _libs(parent, _stats(parent))
    same = distill.assemble(parent, [parent_block(cfg)] * 4, attn_lib, ffn_lib)
    x = torch.randint(0, 96, (2, 16))
    assert torch.allclose(same(x).logits, parent(x).logits, atol=1e-5)
    child = distill.assemble(parent, MIXED, attn_lib, ffn_lib)
    windows = torch.randint(0, 96, (16, 16), generator=torch.Generator().manual_seed(3))
    rows = distill.distill(child, parent, windows, steps=40, lr=3e-3, batch_size=8)
    assert np.mean([r["loss"] for r in rows[-5:]]) < np.mean([r["loss"] for r in rows[:5]])
    assert all(not p.requires_grad for p in parent.parameters())



# ---- the recipe end to end -----------------------------------------------------------------------------------
TINY_PUZZLE = ["pretrain.model.hidden_size=32", "pretrain.model.num_layers=3", "pretrain.model.num_heads=2",
               "pretrain.model.num_kv_heads=2", "pretrain.model.intermediate_size=64", "pretrain.model.vocab_size=320",
               "pretrain.data.n_train_per_task=300", "pretrain.data.n_test_per_task=10",
               "pretrain.data.tasks=[arithmetic]", "pretrain.trainer.steps=30", "pretrain.trainer.batch_size=16",
               "pretrain.trainer.warmup_steps=2", "pretrain.trainer.threads=2", "data.tasks=[arithmetic]",
               "data.n_items=120", "data.seq_len=32", "data.n_calib=16", "data.n_score=4", "data.n_eval=8",
               "data.n_distill=32", "space.ffn_fractions=[0.5]", "bld.steps=4", "bld.workers=2", "cost.batch_size=2",
               "cost.seq_len=16", "cost.repeats=2", "cost.model_repeats=2", "cost.new_tokens=4",
               "search.target_speedup=1.2", "search.n_solutions=2", "search.calibrate_rounds=1", "gkd.steps=4"]


def test_puzzle_cli_end_to_end_and_resume(tmp_path):
    import json

    from refinery.cli import main
    from refinery.models.io import load_model

    out = tmp_path / "run"
    args = ["compress", "puzzle", "recipes/puzzle.yaml", *TINY_PUZZLE, "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("target_speedup", "measured_speedup", "predicted_speedup", "ppl_parent", "ppl_child",
                "ppl_uniform_baseline", "memory_child_bytes", "kl_child"):
        assert key in summary, key
    assert summary["ppl_child"] > 1 and math.isfinite(summary["ppl_child"])
    assert summary["memory_child_bytes"] <= summary["memory_parent_bytes"]
    child = load_model(out / "child")
    assert type(child).__name__ == "PuzzleForCausalLM"
    assert [b.name for b in child.config.blocks] == summary["architecture"].split()
    report = (out / "report.md").read_text()
    assert "![architecture](plots/architecture.png)" in report and (out / "plots" / "architecture.png").exists()
    scores = json.loads((out / "scores.json").read_text())
    assert sorted(scores) == ["0", "1", "2"] and all(len(row) == 4 * 4 for row in scores.values())
    # Resume: a run that lost its last scored layer and its outputs redoes only those; the library is reused.
    lib_files = {p: p.stat().st_mtime_ns for p in (out / "library").glob("*.safetensors")}
    assert len(lib_files) == 3 * (3 + 3)  # per layer: kv2, kv1, linear + ffn64, ffn32, linear (no-ops have none)
    del scores["2"]
    (out / "scores.json").write_text(json.dumps(scores))
    (out / "summary.json").unlink()
    assert main(args + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "library").glob("*.safetensors")} == lib_files
    assert "2" in json.loads((out / "scores.json").read_text())
    assert json.loads((out / "summary.json").read_text())["ppl_child"] > 1


def test_puzzle_recipe_rejects_an_empty_budget():
    from refinery.compression.puzzle.config import PuzzleRecipe
    from refinery.config import load_config
    from refinery.errors import ConfigError

    with pytest.raises(ConfigError, match="at least one budget"):
        load_config(PuzzleRecipe, "recipes/puzzle.yaml", ["search.target_speedup=null"])


def _gkd_run(**engine):
    from refinery.engine.config import EngineConfig

    parent = tiny_llama()
    child = distill.assemble(parent, MIXED, *_libs(parent, _stats(parent)))
    windows = torch.randint(0, 96, (12, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(windows, dtype=torch.bool)
    mask[1, 9:] = mask[4, 3:] = False  # padded rows: the pieces hold different token counts
    rows = distill.distill(child, parent, windows, steps=4, lr=1e-4, batch_size=6, mask=mask,
                           engine=EngineConfig(device="cpu", **engine))
    return {k: v.detach().clone() for k, v in child.state_dict().items()}, rows


def test_gkd_micro_batches_and_checkpointing_equal_the_whole_batch():
    whole, rows = _gkd_run()
    for engine in ({"micro_batch_rows": 1}, {"micro_batch_rows": 4, "activation_checkpointing": True}):
        state, rows2 = _gkd_run(**engine)
        assert max(abs(a[k] - b[k]) for a, b in zip(rows, rows2) for k in ("loss", "cos", "kl")) < 1e-5, engine
        assert max(float((whole[k] - state[k]).abs().max()) for k in whole) < 1e-5, engine
    assert all(r["peak_memory_mb"] > 0 for r in rows)


def test_gkd_and_bld_train_in_bf16():
    from refinery.engine.config import EngineConfig

    parent = tiny_llama()
    st = _stats(parent)
    layer = parent.model.layers[2]
    spec = FFNSpec("swiglu", 8)
    init = library.init_ffn(layer, st.layers[2], spec)
    pstate = {k: v.clone() for k, v in layer.state_dict().items()}
    state, info = bld.train_variant(parent.config, pstate, "ffn", spec, init, st.layers[2].inputs, steps=60,
                                    lr=3e-3, batch_size=4, precision="bf16")
    assert info["loss_final"] < 0.8 * info["loss_init"]
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    child = distill.assemble(parent, MIXED, *_libs(parent, st))
    windows = torch.randint(0, 96, (16, 16), generator=torch.Generator().manual_seed(3))
    rows = distill.distill(child, parent, windows, steps=40, lr=3e-3, batch_size=8,
                           engine=EngineConfig(device="cpu", precision="bf16"))
    assert np.mean([r["loss"] for r in rows[-5:]]) < np.mean([r["loss"] for r in rows[:5]])


def _libs(parent, st):
    cfg = parent.config
    attn_lib, ffn_lib = [], []
    for i, layer in enumerate(parent.model.layers):
        attn_lib.append({a.name: library.init_attention(layer, cfg, a) for a in library.attention_variants(cfg, [1])})
        ffn_lib.append({f.name: library.init_ffn(layer, st.layers[i], f) for f in library.ffn_variants(cfg, [0.5])})
    return attn_lib, ffn_lib


def test_library_is_read_from_disk_one_layer_at_a_time(tmp_path, monkeypatch):
    """The run's library is files, read when a variant is asked for: scoring reads each variant file of a layer
    once, holds only that layer's variants, and scores exactly as the library held whole in memory would."""
    import safetensors.torch as st

    from refinery.compression.puzzle import runner
    from refinery.compression.puzzle.config import PuzzleRecipe
    from refinery.errors import DataError

    parent = tiny_llama()
    for p in parent.parameters():
        p.requires_grad_(False)
    cfg = PuzzleRecipe.model_validate({"bld": {"steps": 0}, "space": {"kv_heads": [1], "ffn_fractions": [0.5]}})
    g = torch.Generator().manual_seed(2)
    calib = (torch.randint(0, 96, (6, 16), generator=g), None)
    score_rows = (torch.randint(0, 96, (4, 16), generator=g), None)
    root = tmp_path / "library"
    runner.build_library(cfg, parent, calib, root, progress=False)
    attn_lib, ffn_lib = runner.load_library(cfg, parent.config, root)
    assert all(isinstance(x, runner.LibraryLayer) for x in attn_lib + ffn_lib) and len(attn_lib) == 4
    whole_a = [{n: x[n] for n in x} for x in attn_lib]
    whole_f = [{n: x[n] for n in x} for x in ffn_lib]

    reads: list[str] = []
    real = st.load_file
    monkeypatch.setattr(st, "load_file", lambda path, *a, **k: (reads.append(path), real(path, *a, **k))[1])
    lazy = runner.score_library(cfg, parent, score_rows, attn_lib, ffn_lib, tmp_path / "lazy.json", False)
    assert sorted(reads) == sorted(str(f) for f in root.glob("L*.safetensors"))  # every variant file read once, no more
    order = [int(r.split("/")[-1].split(".")[0][1:]) for r in reads]
    assert order == sorted(order)  # layer by layer: layer i+1's files only after layer i's
    monkeypatch.setattr(st, "load_file", real)
    held = runner.score_library(cfg, parent, score_rows, whole_a, whole_f, tmp_path / "held.json", False)
    assert lazy == held
    child = distill.assemble(parent, [parent_block(parent.config)] * 4, attn_lib, ffn_lib)
    ids = torch.randint(0, 96, (2, 16), generator=g)
    assert torch.allclose(child(ids).logits, parent(ids).logits, atol=1e-5)

    next(root.glob("L2.ffn.*.safetensors")).unlink()
    with pytest.raises(DataError, match="lacks 1 variant file"):
        runner.load_library(cfg, parent.config, root)
