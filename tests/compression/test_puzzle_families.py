"""Puzzle on the families the papers start from: the child is built from the parent family's own sub-blocks, so
attention biases (Qwen2), q/k norms (Qwen3), sliding-window attention (Mistral) and Gemma-2's four (1+w) norms,
alternating sliding/global layers, soft-capping and scaled embeddings survive; the all-parent child reproduces the
parent, a heterogeneous child saves, loads back and generates; other families (Phi-3) fail clearly."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from refinery.compression.puzzle import distill, library
from refinery.compression.puzzle.model import AttnSpec, BlockSpec, FFNSpec, family_of, from_llama, parent_block

ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma2"]


def _parent(family_ckpt, arch):
    parent = AutoModelForCausalLM.from_pretrained(family_ckpt(arch)).eval()
    with torch.no_grad():  # random init leaves biases / norms at 0 / 1: make every weight matter
        g = torch.Generator().manual_seed(0)
        for p in parent.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return parent


@pytest.mark.parametrize("arch", ARCHS)
def test_all_parent_child_reproduces_the_parent(family_ckpt, arch):
    parent = _parent(family_ckpt, arch)
    child = from_llama(parent)
    assert child.config.parent_model_type == arch
    # 96 tokens: past the tiny Mistral's / Gemma-2's 64-token sliding window, so its windowed mask must come along
    x = torch.randint(0, parent.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(child(x).logits, parent(x).logits, atol=1e-5)
        # and with the KV cache (the sliding layers' cache drops what falls out of their window)
        assert torch.equal(child.generate(x[:, :60], max_new_tokens=40, do_sample=False),
                           parent.generate(x[:, :60], max_new_tokens=40, do_sample=False))
    feature = {"qwen2": "self_attn.q_proj.bias", "qwen3": "self_attn.q_norm.weight",
               "gemma2": "pre_feedforward_layernorm.weight"}.get(arch)
    if feature:
        assert f"model.layers.0.{feature}" in child.state_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_heterogeneous_child_saves_loads_and_generates(family_ckpt, arch, tmp_path):
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.models.io import load_model

    parent = _parent(family_ckpt, arch)
    cfg = parent.config
    stats = library.collect_stats(parent, torch.randint(0, cfg.vocab_size, (4, 16),
                                                        generator=torch.Generator().manual_seed(2)))
    attn_lib, ffn_lib = [], []
    for i, layer in enumerate(parent.model.layers):
        attn_lib.append({a.name: library.init_attention(layer, cfg, a) for a in library.attention_variants(cfg, [1])})
        ffn_lib.append({f.name: library.init_ffn(layer, stats.layers[i], f) for f in library.ffn_variants(cfg, [0.5])})
    blocks = [BlockSpec(AttnSpec("gqa", 1), FFNSpec("swiglu", cfg.intermediate_size // 2)),
              BlockSpec(AttnSpec("linear"), FFNSpec("no_op"))]
    child = distill.assemble(parent, blocks, attn_lib, ffn_lib)
    if arch == "qwen2":  # the pooled KV head keeps the mean of its parents' k/v biases
        kb = parent.model.layers[0].self_attn.k_proj.bias.detach().reshape(2, -1).mean(0)
        assert torch.allclose(child.model.layers[0].self_attn.k_proj.bias, kb, atol=1e-6)
    child.save_pretrained(tmp_path / "child")
    parent_tok = tmp_path / "child"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(family_ckpt(arch)).save_pretrained(parent_tok)
    again = load_model(tmp_path / "child")
    x = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(again(x).logits, child(x).logits, atol=1e-5)
    out = HFGenerator(tmp_path / "child").generate([[{"role": "user", "content": "hi"}]],
                                                    SamplingParams(max_new_tokens=6, temperature=0.0))
    assert len(out[0].token_ids) >= 1


@pytest.mark.parametrize("arch,why", [("phi3", "fused")])
def test_unsupported_families_say_why(family_ckpt, arch, why):
    parent = AutoModelForCausalLM.from_pretrained(family_ckpt(arch))
    with pytest.raises(ValueError, match=f"Puzzle does not support '{arch}'.*{why}"):
        family_of(parent.config)
    with pytest.raises(ValueError, match="does not support"):
        parent_block(parent.config) and from_llama(parent)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_puzzle_cli_on_a_family_parent(family_ckpt, tmp_path, arch):
    """The whole recipe (library, BLD, scoring, costs, MILP, GKD) from a Qwen2- or Gemma-2-architecture parent:
    the child keeps the family's sub-blocks (Qwen2's biases, Gemma-2's four norms and soft-capping) and loads
    back."""
    import json

    from refinery.cli import main
    from refinery.models.io import load_model

    out = tmp_path / "run"
    args = ["compress", "puzzle", "recipes/puzzle.yaml", f"parent={family_ckpt(arch)}", "data.tasks=[arithmetic]",
            "data.n_items=60", "data.seq_len=32", "data.n_calib=8", "data.n_score=4", "data.n_eval=4",
            "data.n_distill=8", "space.ffn_fractions=[0.5]", "bld.steps=2", "bld.executor=serial",
            "cost.batch_size=2", "cost.seq_len=16", "cost.repeats=1", "cost.model_repeats=1", "cost.new_tokens=2",
            # a memory budget (exact arithmetic), not a speed one: on a loaded 2-core machine a 2-layer model's
            # blocks can measure under the share of its time a speed-up target needs, and no architecture meets it
            "search.target_speedup=null", "search.memory_ratio=0.9", "search.n_solutions=1",
            "search.calibrate_rounds=0",
            "gkd.steps=2", "baseline=false", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    child = load_model(out / "child")
    assert child.config.parent_model_type == arch
    assert [b.name for b in child.config.blocks] == summary["architecture"].split()
    keys = child.state_dict()
    if arch == "qwen2":
        assert any(k.endswith("q_proj.bias") for k in keys) or "kv" not in summary["architecture"]
    else:
        assert child.config.final_logit_softcapping and child.config._attn_implementation == "eager"
        assert all(f"model.layers.{i}.post_feedforward_layernorm.weight" in keys
                   for i, b in enumerate(child.config.blocks) if b.ffn.kind != "no_op")
    assert summary["memory_child_bytes"] == summary["predicted_memory_child_bytes"]


def test_puzzle_cli_refuses_an_unsupported_family_clearly(family_ckpt, tmp_path, capsys):
    from refinery.cli import main

    assert main(["compress", "puzzle", "recipes/puzzle.yaml", f"parent={family_ckpt('phi3')}",
                 "--out", str(tmp_path / "r"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "Puzzle does not support 'phi3'" in err and "fused" in err and "Traceback" not in err


def test_gemma2_sub_block_swaps_keep_their_norms_and_caps(family_ckpt):
    """A Gemma-2 sub-block owns its pre- and post-norm: a linear attention keeps both around its map, a no-op FFN
    drops both (the residual passes untouched), with the parent's soft-capped logits and sqrt(H)-scaled embedding.
    The reference is the parent itself with those sub-blocks' outputs replaced by hooks (a zero output through
    Gemma's post-norm is zero), on 96 tokens (past the 64-token window of layer 0)."""
    parent = _parent(family_ckpt, "gemma2")
    cfg = parent.config
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    stats = library.collect_stats(parent, torch.randint(0, cfg.vocab_size, (4, 16),
                                                        generator=torch.Generator().manual_seed(2)))
    layer0 = parent.model.layers[0]
    attn_lib = [{"linear": library.init_attention(layer0, cfg, AttnSpec("linear"))},
                {"kv2": library.parent_attention(parent.model.layers[1])}]
    ffn_lib = [{"no_op": {}}, {"ffn128": library.parent_ffn(parent.model.layers[1])}]
    blocks = [BlockSpec(AttnSpec("linear"), FFNSpec("no_op")), parent_block(cfg)]
    child = distill.assemble(parent, blocks, attn_lib, ffn_lib)
    keys = child.state_dict()
    assert {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"} <= set(keys)
    assert not any(k.startswith("model.layers.0.pre_feedforward") or k.startswith("model.layers.0.post_feedforward")
                   for k in keys)
    assert child.config.cache_layer_types() == ["full_attention", "dummy"]  # only layer 1 keeps a KV cache
    w = attn_lib[0]["linear"]["self_attn.proj.weight"]
    hooks = [layer0.self_attn.register_forward_hook(lambda m, a, k, out: (k["hidden_states"] @ w.T, None),
                                                    with_kwargs=True),
             layer0.mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))]
    x = torch.randint(0, cfg.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            ref = parent(x).logits
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        out = child(x).logits
        assert torch.allclose(out, ref, atol=1e-5)
        assert out.abs().max() <= cfg.final_logit_softcapping
        # decoding through the renumbered cache (layer 1's global attention at cache index 0) matches the
        # full-sequence forward
        gen = child.generate(x[:1, :60], max_new_tokens=40, do_sample=False)
        full = child(gen[:, :-1]).logits[:, 59:].argmax(-1)
        assert torch.equal(gen[:, 60:], full)
    assert stats.layers[0].xtx.shape == (cfg.hidden_size, cfg.hidden_size)


@pytest.mark.parametrize("arch", ARCHS)
def test_cost_model_counts_each_familys_parameters(family_ckpt, arch):
    """The memory the MILP budgets is the modules' real parameter count, per family (Qwen2's q/k/v biases without
    an o_proj bias, Qwen3's q/k norms, Gemma-2's two norms per sub-block)."""
    from refinery.compression.puzzle import cost

    cfg = AutoModelForCausalLM.from_pretrained(family_ckpt(arch)).config
    for a in library.attention_variants(cfg, [1]):
        for f in library.ffn_variants(cfg, [0.5]):
            layer = library.PuzzleDecoderLayer(cfg, BlockSpec(a, f), 0)
            assert sum(p.numel() for p in layer.parameters()) == cost.attn_params(cfg, a) + cost.ffn_params(cfg, f)
