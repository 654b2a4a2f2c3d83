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
