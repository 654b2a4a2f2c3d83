"""Writing and reading 2:4 checkpoints in three formats.

- ``dense``: a plain HF checkpoint with the zeros in place (loads anywhere, no speed-up by itself).
- ``compressed-tensors``: the ``sparse-24-bitmask`` layout of neuralmagic/compressed-tensors (<= 0.14; the layout
  llm-compressor writes and vLLM's CompressedTensors24 scheme reads). Every 2:4 block Linear ``<mod>.weight`` is
  replaced by ``<mod>.compressed`` ([out, in/2], the weight's dtype: the two kept values of every group of 4, in
  column order), ``<mod>.bitmask`` ([out, ceil(in/8)] uint8, ``numpy.packbits(keep, axis=-1, bitorder="little")``:
  exactly two bits set per group) and ``<mod>.shape`` ([2, 1] int64); config.json gets
  ``quantization_config = {quant_method: compressed-tensors, version, sparsity_config: {format:
  sparse-24-bitmask, sparsity_structure: "2:4", targets: ["Linear"], ignore: [...], global_sparsity}, ...}``.
- ``semi-structured``: the values and 2-bit positions that PyTorch's ``to_sparse_semi_structured`` (CUTLASS /
  cuSPARSELt) packs. Their packed metadata layout is GPU-architecture specific and can only be produced on CUDA, so
  the file stores an architecture-free layout instead and ``load_sparse_model(..., semi_structured=True)`` converts
  on a CUDA device: ``<mod>.values`` [out, in/2] (kept values in column order) and ``<mod>.indices``
  [out, in/8] uint8 (per group of 4 one nibble ``i0 | i1 << 2`` with the kept positions i0 < i1; group 2k in the low
  nibble of byte k, group 2k+1 in the high nibble) and ``<mod>.shape``; ``sparse_format.json`` names the format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from refinery.compression.sparsity.nm import check_nm, keep_mask_of, prunable_linears
from refinery.errors import CheckpointError, ConfigError

FORMATS = ("dense", "compressed-tensors", "semi-structured")
CT_FORMAT = "sparse-24-bitmask"
CT_LAYOUT_VERSION = "0.13.0"  # compressed-tensors release whose Sparse24BitMaskCompressor this layout matches
SEMI_FORMAT = "refinery-semi-structured-2:4"


# ---- per-tensor codecs -------------------------------------------------------------------------------------------
def bitmask_compress(weight: torch.Tensor, name: str = "weight") -> dict[str, torch.Tensor]:
    """compressed-tensors ``sparse-24-bitmask`` tensors of one 2:4-compatible weight (local names)."""
    keep = keep_mask_of(weight)
    rows, cols = weight.shape
    return {"compressed": weight.detach()[keep].reshape(rows, cols // 2).contiguous(),
            "bitmask": torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little")),
            "shape": torch.tensor([rows, cols]).reshape(-1, 1)}


def bitmask_decompress(compressed: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    rows, cols = (int(v) for v in shape.flatten().tolist())
    keep = torch.from_numpy(np.unpackbits(bitmask.numpy(), axis=-1, count=cols, bitorder="little").astype(bool))
    out = torch.zeros(rows, cols, dtype=compressed.dtype)
    out[keep.reshape(rows, cols)] = compressed.flatten()
    return out


def semi_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Kept values + 2-bit positions of a 2:4-compatible weight (layout in the module docstring)."""
    keep = keep_mask_of(weight)
    rows, cols = weight.shape
    pos = keep.reshape(rows, cols // 4, 4).nonzero()[:, 2].reshape(rows, cols // 4, 2)  # i0 < i1 per group
    nib = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8).reshape(rows, cols // 8, 2)
    return {"values": weight.detach()[keep].reshape(rows, cols // 2).contiguous(),
            "indices": (nib[..., 0] | (nib[..., 1] << 4)).contiguous(),
            "shape": torch.tensor([rows, cols]).reshape(-1, 1)}


def semi_decompress(values: torch.Tensor, indices: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    rows, cols = (int(v) for v in shape.flatten().tolist())
    nib = torch.stack([indices & 0xF, indices >> 4], -1).reshape(rows, cols // 4).long()
    pos = torch.stack([nib & 3, nib >> 2], -1)  # [rows, groups, 2]
    out = torch.zeros(rows, cols // 4, 4, dtype=values.dtype)
    out.scatter_(-1, pos, values.reshape(rows, cols // 4, 2))
    return out.reshape(rows, cols)


# ---- checkpoints -------------------------------------------------------------------------------------------------
def save_sparse(model, tokenizer, out: str | Path, fmt: str = "dense", n: int = 2, m: int = 4) -> Path:
    """Write ``model`` (already pruned) to ``out`` in ``fmt``. Raises ``SparsityPatternError`` naming a layer that is
    not N:M compatible (at most N non-zeros per M), ``ConfigError`` for a format that cannot hold the pattern."""
    from safetensors.torch import load_file, save_file

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r} (choose {', '.join(FORMATS)})")
    out = Path(out)
    check_nm(model, n, m)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if fmt == "dense":
        return out
    if (n, m) != (2, 4):
        raise ConfigError(f"--format {fmt} stores 2:4 sparsity only (got {n}:{m}); use --format dense")
    codec = bitmask_compress if fmt == "compressed-tensors" else semi_compress
    targets = {f"{name}.weight": name for name in prunable_linears(model)}
    index_file = out / "model.safetensors.index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else None
    for shard in sorted(out.glob("model*.safetensors")):
        tensors = load_file(str(shard))
        new: dict[str, torch.Tensor] = {}
        for key, t in tensors.items():
            if key in targets:
                for local, v in codec(t).items():
                    new[f"{targets[key]}.{local}"] = v
                    if index is not None:
                        index["weight_map"][f"{targets[key]}.{local}"] = shard.name
                if index is not None:
                    index["weight_map"].pop(key, None)
            else:
                new[key] = t
        save_file(new, str(shard), metadata={"format": "pt"})
    if index is not None:
        index_file.write_text(json.dumps(index, indent=2) + "\n")
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if fmt == "compressed-tensors":
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        others = sorted({name for name, mod in model.named_modules()
                         if isinstance(mod, torch.nn.Linear) and name not in set(targets.values())})
        cfg["quantization_config"] = {  # as compressed-tensors' ModelCompressor.update_config writes it
            "quant_method": "compressed-tensors", "version": CT_LAYOUT_VERSION, "transform_config": {},
            "sparsity_config": {"format": CT_FORMAT, "sparsity_structure": "2:4", "targets": ["Linear"],
                                "ignore": others, "global_sparsity": zeros / max(total, 1),
                                "registry_requires_subclass": False}}
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    else:
        (out / "sparse_format.json").write_text(json.dumps(
            {"format": SEMI_FORMAT, "layers": sorted(targets.values()),
             "layout": "values [out, in/2]; indices [out, in/8] uint8, nibble i0 | i1 << 2 per group of 4"},
            indent=2) + "\n")
    return out


def checkpoint_format(path: str | Path) -> str:
    path = Path(path)
    if (path / "sparse_format.json").exists():
        return "semi-structured"
    try:
        q = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return "dense"
    return "compressed-tensors" if (q.get("sparsity_config") or {}).get("format") == CT_FORMAT else "dense"


def load_sparse_model(path: str | Path, semi_structured: bool = False, device: str | None = None):
    """Load a checkpoint written by ``save_sparse`` in any format as a dense-weight HF model (the weights equal the
    pruned dense weights exactly). ``semi_structured=True`` then converts the 2:4 Linears with
    ``kernels.to_semi_structured`` (CUDA only)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from refinery.models.io import build_on_meta, load_model, materialize

    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt == "dense":
        model = load_model(path)
    else:
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop("quantization_config", None)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        # built on the meta device and given the decompressed weights once: never the checkpoint twice
        model = build_on_meta(lambda: AutoModelForCausalLM.from_config(config, dtype=torch.float32))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(path.glob("model*.safetensors")):
            state.update(load_file(str(shard)))
        names = {k.rsplit(".", 1)[0] for k in state if k.endswith(".shape")}
        for mod in names:
            if fmt == "compressed-tensors":
                w = bitmask_decompress(state.pop(f"{mod}.compressed"), state.pop(f"{mod}.bitmask"),
                                       state.pop(f"{mod}.shape"))
            else:
                w = semi_decompress(state.pop(f"{mod}.values"), state.pop(f"{mod}.indices"), state.pop(f"{mod}.shape"))
            state[f"{mod}.weight"] = w
        for k in state:  # the model's dtype (fp32), one tensor at a time
            state[k] = state[k].float() if state[k].is_floating_point() else state[k]
        missing, unexpected = materialize(model, state, strict=False)
        if unexpected or missing:
            raise CheckpointError(f"{path}: {fmt} checkpoint does not match its config (missing "
                                  f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        model.eval()
    if device is not None:
        model.to(device)
    if semi_structured:
        from refinery.compression.sparsity.kernels import to_semi_structured

        to_semi_structured(model)
    return model
