"""2:4 sparse kernels: CUDA only; on CPU they refuse instead of pretending."""

import pytest
import torch

from refinery.compression.sparsity.kernels import cuda_available, matmul_speedup, to_semi_structured
from refinery.errors import RefineryError


@pytest.mark.skipif(cuda_available(), reason="checks the CPU refusal")
def test_cpu_refuses_to_claim_a_speedup():
    with pytest.raises(RefineryError, match="CUDA"):
        matmul_speedup()
    with pytest.raises(RefineryError, match="CUDA"):
        to_semi_structured(torch.nn.Linear(4, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA (semi-structured sparse kernels)")
def test_semi_structured_matmul_matches_dense_and_is_timed():
    from torch.sparse import to_sparse_semi_structured

    from refinery.compression.sparsity.nm import nm_mask

    w = torch.randn(256, 256, device="cuda", dtype=torch.float16)
    w = w * nm_mask(w.abs().float()).half()
    x = torch.randn(128, 256, device="cuda", dtype=torch.float16)
    dense = torch.nn.functional.linear(x, w)
    sparse = torch.nn.functional.linear(x, to_sparse_semi_structured(w))
    assert torch.allclose(dense, sparse, atol=1e-2, rtol=1e-2)
    r = matmul_speedup(1024, 1024, 1024, repeats=5)
    assert r["dense_ms"] > 0 and r["sparse_ms"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA (semi-structured sparse kernels)")
def test_layers_with_extra_zeros_convert_and_a_dense_layer_is_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    from refinery.compression.sparsity.nm import SparsityPatternError, nm_mask, prunable_linears

    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=64)
    model = LlamaForCausalLM(cfg).to("cuda", torch.float16)
    with torch.no_grad():
        for lin in prunable_linears(model).values():
            lin.weight.mul_(nm_mask(lin.weight.abs().float()).half())
            lin.weight[:, :4] = 0  # dead input channels: fewer than 2 non-zeros in a group is still 2:4
    assert to_semi_structured(model) == 14
    dense = LlamaForCausalLM(cfg).to("cuda", torch.float16)
    with pytest.raises(SparsityPatternError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        to_semi_structured(dense)
