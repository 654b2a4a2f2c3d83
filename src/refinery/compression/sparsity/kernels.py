"""2:4 semi-structured sparse kernels (CUDA only): convert pruned Linears to PyTorch's semi-structured sparse
tensors and time them against dense. There is no CPU speed-up to claim, so CPU calls raise."""

from __future__ import annotations

import time

import torch

from refinery.errors import RefineryError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def to_semi_structured(model, dtype=torch.float16) -> int:
    """Replace every block Linear weight by a ``SparseSemiStructuredTensor`` (fp16/bf16 on CUDA); returns how many
    were converted. A weight with at most 2 non-zeros per group of 4 is 2:4 (extra zeros are fine); a layer that is
    not, or that the kernels cannot take, raises ``SparsityPatternError`` naming it: nothing is skipped silently."""
    if not cuda_available():
        raise RefineryError("semi-structured 2:4 kernels need CUDA; on CPU the pruned checkpoint runs dense")
    from torch.sparse import to_sparse_semi_structured

    from refinery.compression.sparsity.nm import SparsityPatternError, check_nm, prunable_linears

    check_nm(model, 2, 4)
    done = 0
    for name, lin in prunable_linears(model).items():
        w = lin.weight.detach().to(device="cuda", dtype=dtype)
        try:
            sparse = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError) as e:  # e.g. a shape the CUTLASS / cuSPARSELt kernels do not support
            raise SparsityPatternError(f"layer {name} ({tuple(w.shape)}, {dtype}) cannot be converted to "
                                       f"semi-structured 2:4: {str(e).splitlines()[0]}") from None
        lin.weight = torch.nn.Parameter(sparse, requires_grad=False)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(lin.bias.detach().to(device="cuda", dtype=dtype), requires_grad=False)
        done += 1
    return done


@torch.no_grad()
def matmul_speedup(out_features: int = 4096, in_features: int = 4096, tokens: int = 4096, repeats: int = 50,
                   dtype=torch.float16) -> dict[str, float]:
    """Dense vs 2:4 semi-structured ``x @ Wᵀ`` time on the current GPU (median of ``repeats``)."""
    if not cuda_available():
        raise RefineryError("semi-structured 2:4 kernels need CUDA")
    from torch.sparse import to_sparse_semi_structured

    from refinery.compression.sparsity.nm import nm_mask

    w = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
    w = w * nm_mask(w.abs().float()).to(dtype)
    x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
    ws = to_sparse_semi_structured(w)

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    dense = timed(lambda: torch.nn.functional.linear(x, w))
    sparse = timed(lambda: torch.nn.functional.linear(x, ws))
    return {"dense_ms": dense * 1e3, "sparse_ms": sparse * 1e3, "speedup": dense / sparse}
