"""2:4 compatibility, the three export formats (write, load back, same weights and logits) and O(L) calibration."""

import json

import numpy as np
import pytest
import torch

from refinery.compression.sparsity.export import (
    bitmask_compress,
    bitmask_decompress,
    checkpoint_format,
    load_sparse_model,
    save_sparse,
    semi_compress,
    semi_decompress,
)
from refinery.compression.sparsity.nm import (
    SparsityPatternError,
    check_nm,
    is_nm,
    is_nm_compatible,
    nm_mask,
    prunable_linears,
)
from refinery.compression.sparsity.oneshot import (
    _Stop,
    decoder_layers,
    magnitude_mask,
    sequential_prune,
    sparsegpt_prune,
    wanda_mask,
)
from refinery.errors import RefineryError


def tiny_llama(layers: int = 4, seed: int = 0, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=64, max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def calib_ids(n: int = 6, L: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (n, L), generator=torch.Generator().manual_seed(seed))


# ---- 2:4 compatibility -----------------------------------------------------------------------------------------
def test_a_weight_with_extra_zeros_is_2_4_but_not_an_exact_mask():
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 0.0]])  # group 1 has a single non-zero: still 2:4
    assert is_nm_compatible(w) and not is_nm(w != 0)
    assert not is_nm_compatible(torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    assert not is_nm_compatible(torch.ones(1, 6))


def test_check_nm_names_the_offending_layer():
    model = tiny_llama(2)
    sequential_prune(model, calib_ids(), "magnitude")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:, 1] = 0.0  # extra zeros (a dead input channel): fine
    check_nm(model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, :4] = 1.0  # 4 non-zeros in one group
    with pytest.raises(SparsityPatternError, match=r"model\.layers\.1\.mlp\.up_proj: 1 groups") as e:
        check_nm(model)
    assert isinstance(e.value, RefineryError)


# ---- per-tensor codecs -----------------------------------------------------------------------------------------
def test_bitmask_codec_matches_hand_computed_layout():
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 0.0, 0.0, 0.0]])  # second group: one non-zero
    enc = bitmask_compress(w)
    keep = enc["bitmask"]
    assert enc["compressed"].tolist() == [[5.0, 7.0, 1.0, 0.0]]  # group 2 pads its one value with a zero
    bits = np.unpackbits(keep.numpy(), axis=-1, count=8, bitorder="little")[0]
    assert bits[:4].tolist() == [0, 1, 0, 1] and bits[4] == 1 and bits.sum() == 4  # exactly 2 per group
    assert enc["shape"].tolist() == [[1], [8]] and enc["bitmask"].dtype == torch.uint8
    assert torch.equal(bitmask_decompress(**enc), w)


def test_semi_codec_packs_two_bit_positions():
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 2.0, 3.0, 0.0, 0.0]])
    enc = semi_compress(w)
    # group 0 keeps positions 1, 3 -> 1 | 3 << 2 = 13; group 1 keeps 0, 1 -> 0 | 1 << 2 = 4; byte = 13 | 4 << 4
    assert enc["indices"].tolist() == [[13 | (4 << 4)]] and enc["values"].tolist() == [[5.0, 7.0, 2.0, 3.0]]
    assert torch.equal(semi_decompress(**enc), w)
    big = torch.randn(16, 64)
    big = big * nm_mask(big.abs())
    big[:, 5] = 0  # extra zeros
    assert torch.equal(semi_decompress(**semi_compress(big)), big)
    assert torch.equal(bitmask_decompress(**bitmask_compress(big)), big)


# ---- checkpoints -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["dense", "compressed-tensors", "semi-structured"])
@pytest.mark.parametrize("tie", [False, True])
def test_each_format_loads_back_the_pruned_weights_and_logits(tmp_path, fmt, tie):
    model = tiny_llama(2, tie=tie)
    sequential_prune(model, calib_ids(), "sparsegpt")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, 0] = 0.0  # a layer with extra zeros is exported, not skipped
    x = calib_ids(2, 12, seed=5)
    with torch.no_grad():
        want = model(input_ids=x).logits
    save_sparse(model, None, tmp_path / fmt, fmt)
    assert checkpoint_format(tmp_path / fmt) == fmt
    back = load_sparse_model(tmp_path / fmt)
    theirs, ours = back.state_dict(), model.state_dict()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, want)
    if fmt != "dense":
        from safetensors.torch import load_file

        stored = load_file(str(tmp_path / fmt / "model.safetensors"))
        q = "model.layers.0.self_attn.q_proj"
        assert f"{q}.weight" not in stored and stored[f"{q}.shape"].tolist() == [[32], [32]]
        vals = stored[f"{q}.compressed" if fmt == "compressed-tensors" else f"{q}.values"]
        assert vals.shape == (32, 16) and vals.dtype == torch.float32
        side = stored[f"{q}.bitmask" if fmt == "compressed-tensors" else f"{q}.indices"]
        assert side.dtype == torch.uint8 and side.shape == (32, 4)


def test_compressed_tensors_config_is_what_llm_compressor_writes(tmp_path):
    model = tiny_llama(2)
    sequential_prune(model, calib_ids(), "magnitude")
    save_sparse(model, None, tmp_path / "ct", "compressed-tensors")
    q = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"
    sc = q["sparsity_config"]
    assert sc["format"] == "sparse-24-bitmask" and sc["sparsity_structure"] == "2:4"
    assert sc["targets"] == ["Linear"] and sc["ignore"] == ["lm_head"]
    total = sum(p.numel() for p in model.parameters())
    assert sc["global_sparsity"] == pytest.approx(sum(int((p == 0).sum()) for p in model.parameters()) / total)


def test_real_compressed_tensors_library_decompresses_our_file(tmp_path):
    ct = pytest.importorskip("compressed_tensors", reason="optional extra [sparse] (compressed-tensors<=0.14)")
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskCompressor
    except ImportError:
        pytest.skip(f"compressed-tensors {ct.__version__} has no sparse-24-bitmask compressor (removed in 0.15)")
    model = tiny_llama(2)
    sequential_prune(model, calib_ids(), "wanda")
    save_sparse(model, None, tmp_path / "ct", "compressed-tensors")
    comp = ModelCompressor.from_pretrained(str(tmp_path / "ct"))
    assert isinstance(comp.sparsity_compressor, Sparse24BitMaskCompressor)
    dense = dict(comp.sparsity_compressor.decompress(str(tmp_path / "ct")))
    linears = prunable_linears(model)
    assert {k.rsplit(".", 1)[0] for k in dense if k.endswith(".weight")} >= set(linears)
    for name, lin in linears.items():
        assert torch.equal(dense[f"{name}.weight"], lin.weight)


def test_a_layer_that_is_not_2_4_fails_the_export_by_name(tmp_path):
    model = tiny_llama(2)  # never pruned
    with pytest.raises(SparsityPatternError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        save_sparse(model, None, tmp_path / "x", "compressed-tensors")


# ---- O(L) calibration ------------------------------------------------------------------------------------------
@torch.no_grad()
def reference_quadratic_prune(model, calib, method, batch_size=8):
    """The old O(L²) path, kept here as the reference: for layer i, re-run the whole (partly pruned) model from the
    embeddings and stop after layer i."""
    linears, masks = prunable_linears(model), {}
    for layer in decoder_layers(model):
        mine = {k: v for k, v in linears.items() if any(mod is v for mod in layer.modules())}
        xs = {k: [] for k in mine}
        hs = [v.register_forward_hook(lambda mod, i, o, k=k, xs=xs: xs[k].append(i[0].reshape(-1, i[0].shape[-1])))
              for k, v in mine.items()]

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
        for k, lin in mine.items():
            X = torch.cat(xs[k]).double()
            if method == "wanda":
                masks[k] = wanda_mask(lin.weight, (X ** 2).sum(0).float())
                lin.weight.mul_(masks[k])
            else:
                w, masks[k] = sparsegpt_prune(lin.weight, 2 * X.T @ X / X.shape[0])
                lin.weight.copy_(w)
    return masks


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_linear_calibration_equals_the_quadratic_reference(method):
    calib = calib_ids(10, 16)
    old, new = tiny_llama(4), tiny_llama(4)
    m_old = reference_quadratic_prune(old, calib, method, batch_size=4)
    m_new = sequential_prune(new, calib, method, batch_size=4)
    assert set(m_old) == set(m_new) and len(m_new) == 4 * 7
    assert all(torch.equal(m_old[k], m_new[k]) for k in m_old)
    for k, lin in prunable_linears(new).items():
        assert torch.allclose(lin.weight, prunable_linears(old)[k].weight, atol=1e-5)


def test_each_layer_runs_twice_per_batch_not_once_per_later_layer():
    model, calib = tiny_llama(4), calib_ids(6, 16)
    calls = [0] * 4
    for i, layer in enumerate(decoder_layers(model)):
        layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    sequential_prune(model, calib, "wanda", batch_size=2)  # 3 batches
    # completed forwards: statistics pass + one pass of the pruned layer to feed the next (the last needs none);
    # the capture of the first layer's inputs stops before layer 0 runs
    assert calls == [6, 6, 6, 3]
    ref_calls = [0] * 4
    ref = tiny_llama(4)
    for i, layer in enumerate(decoder_layers(ref)):
        layer.register_forward_hook(lambda *a, i=i: ref_calls.__setitem__(i, ref_calls[i] + 1))
    reference_quadratic_prune(ref, calib, "wanda", batch_size=2)
    assert ref_calls == [12, 9, 6, 3]  # layer i re-runs for every layer after it: O(L²)


def test_magnitude_mask_still_exact():
    w = torch.randn(8, 16)
    assert is_nm(magnitude_mask(w))


def test_device_path_gives_the_same_masks():
    calib = calib_ids(4, 16)
    a, b = tiny_llama(2), tiny_llama(2)
    ma = sequential_prune(a, calib, "sparsegpt")
    mb = sequential_prune(b, calib, "sparsegpt", device="cpu")  # the layer-at-a-time moves (a no-op on CPU)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (layer-at-a-time calibration on the GPU)")
@pytest.mark.gpu
def test_cuda_calibration_keeps_the_model_on_cpu_and_matches():
    calib = calib_ids(4, 16)
    a, b = tiny_llama(2), tiny_llama(2)
    ma = sequential_prune(a, calib, "wanda")
    mb = sequential_prune(b, calib, "wanda", device="cuda")
    assert all(p.device.type == "cpu" for p in b.parameters())
    agree = sum(int((ma[k] == mb[k]).sum()) for k in ma) / sum(v.numel() for v in ma.values())
    assert agree > 0.99  # GPU matmuls round differently; near-ties may flip
