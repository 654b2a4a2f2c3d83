"""The block library: every (layer, sub-block variant) with a training-free initialisation from the parent.

Sub-block weights are stored as state dicts keyed like a ``PuzzleDecoderLayer``'s own parameters
(``input_layernorm.weight``, ``self_attn.q_proj.weight``, ``post_attention_layernorm.weight``, ``mlp.*``; Gemma-2's
attention also owns ``post_attention_layernorm`` and its FFN ``pre_/post_feedforward_layernorm``), so a
layer with attention variant ``a`` and FFN variant ``f`` loads ``{**attn[a], **ffn[f]}``.

Initialisations (Puzzle §3): FFN width by channel contribution ``mean|X_i| · ‖W_down[:, i]‖`` (top channels kept,
order preserved), fewer KV heads by mean-pooling each group of key/value heads, linear attention as ``W_o·W_v``
(what attention computes when every query attends to its own token), linear FFN by least squares on the parent's
FFN inputs and outputs, no-op with no weights at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from refinery.compression.puzzle.model import (
    AttnSpec,
    BlockSpec,
    FFNSpec,
    PuzzleDecoderLayer,
    layer_types,
    norm_names,
    part_prefixes,
)

State = dict[str, torch.Tensor]


def channel_scores(mean_abs_x: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Puzzle's FFN channel contribution: ``mean|X_i| · ‖W_down[:, i]‖₂`` for every intermediate channel ``i``."""
    return mean_abs_x * w_down.norm(dim=0)


def keep_channels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest-scoring channels, in their original order (ties broken by index)."""
    if not 1 <= k <= scores.numel():
        raise ValueError(f"cannot keep {k} of {scores.numel()} channels")
    top = torch.topk(scores.double() - torch.arange(scores.numel(), dtype=torch.float64) * 1e-12, k).indices
    return top.sort().values


def prune_ffn(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, keep: torch.Tensor) -> State:
    """SwiGLU with only the ``keep`` channels: rows of gate/up, columns of down."""
    return {"mlp.gate_proj.weight": gate[keep].clone(), "mlp.up_proj.weight": up[keep].clone(),
            "mlp.down_proj.weight": down[:, keep].clone()}


def pool_kv_heads(w: torch.Tensor, kv_parent: int, kv_child: int) -> torch.Tensor:
    """Mean-pool a k/v projection ``[kv_parent·d, H]`` to ``[kv_child·d, H]`` over groups of consecutive heads
    (query heads keep their own weights; the group they read from gets the average of its parents' heads)."""
    if kv_parent % kv_child:
        raise ValueError(f"kv heads {kv_child} must divide the parent's {kv_parent}")
    d = w.shape[0] // kv_parent
    return w.reshape(kv_child, kv_parent // kv_child, d, -1).mean(1).reshape(kv_child * d, -1).clone()


def linear_attention_weight(w_v: torch.Tensor, w_o: torch.Tensor, num_heads: int, kv_heads: int) -> torch.Tensor:
    """``W_o · W_v`` with each KV head's value projection repeated for the query heads of its group: ``[H, H]``."""
    d = w_v.shape[0] // kv_heads
    v = w_v.reshape(kv_heads, 1, d, -1).expand(kv_heads, num_heads // kv_heads, d, w_v.shape[1])
    return w_o @ v.reshape(num_heads * d, -1)


def fit_linear(xtx: torch.Tensor, xty: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Least squares ``W`` (as a Linear weight, ``y = W x``) from ``XᵀX`` and ``XᵀY``, with a relative ridge."""
    xtx = xtx.double()
    lam = ridge * xtx.diagonal().mean().clamp_min(1e-12)
    w = torch.linalg.solve(xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype), xty.double())
    return w.T.float().contiguous()


@dataclass
class LayerStats:
    """What one pass of the parent over calibration text leaves per layer."""

    inputs: torch.Tensor  # [N, S, H] hidden state entering the layer (BLD inputs)
    mean_abs_act: torch.Tensor  # [I] mean |input of down_proj| per channel
    xtx: torch.Tensor  # [H, H] Σ xᵀx over FFN inputs (after the FFN's pre-norm)
    xty: torch.Tensor  # [H, H] Σ xᵀy, y = FFN output
    tokens: int = 0


@dataclass
class Stats:
    layers: list[LayerStats] = field(default_factory=list)
    final: torch.Tensor | None = None  # [N, S, H] output of the last layer


@torch.no_grad()
def collect_stats(parent, windows: torch.Tensor, batch_size: int = 8, mask: torch.Tensor | None = None,
                  normal_equations: bool = True) -> Stats:
    """Run the parent over ``windows`` once, recording per-layer inputs, FFN channel activity and the FFN normal
    equations (float64; ``normal_equations=False`` skips them: ``2·H²·8`` bytes a layer the scorer does not need);
    ``mask`` (True = real token) keeps padding out of the statistics."""
    layers = parent.model.layers
    L = len(layers)
    inputs: list[list[torch.Tensor]] = [[] for _ in range(L)]
    abs_sum = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    H = parent.config.hidden_size
    xtx = [torch.zeros(H, H, dtype=torch.float64) if normal_equations else torch.zeros(0) for _ in range(L)]
    xty = [torch.zeros(H, H, dtype=torch.float64) if normal_equations else torch.zeros(0) for _ in range(L)]
    final: list[torch.Tensor] = []
    counts = [0] * L
    hooks = []
    current: list[torch.Tensor] = []  # the mask of the batch in flight, flattened

    def real(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1, t.shape[-1]).double()
        return flat[current[0]] if current else flat
    for i, layer in enumerate(layers):
        def pre(mod, args, kwargs, i=i):
            inputs[i].append((args[0] if args else kwargs["hidden_states"]).detach().clone())

        def down_pre(mod, args, i=i):
            x = real(args[0])
            abs_sum[i] += x.abs().sum(0)
            counts[i] += x.shape[0]

        def mlp_hook(mod, args, out, i=i):
            x, y = real(args[0]), real(out)
            xtx[i] += x.T @ x
            xty[i] += x.T @ y

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(down_pre))
        if normal_equations:
            hooks.append(layer.mlp.register_forward_hook(mlp_hook))
    hooks.append(layers[-1].register_forward_hook(lambda mod, args, out: final.append(
        (out[0] if isinstance(out, tuple) else out).detach().clone())))
    try:
        parent.eval()
        for s in range(0, windows.shape[0], batch_size):
            current[:] = [] if mask is None else [mask[s: s + batch_size].reshape(-1)]
            parent.model(input_ids=windows[s: s + batch_size])
    finally:
        for h in hooks:
            h.remove()
    stats = Stats(final=torch.cat(final))
    for i in range(L):
        stats.layers.append(LayerStats(torch.cat(inputs[i]), (abs_sum[i] / max(counts[i], 1)).float(),
                                       xtx[i], xty[i], counts[i]))
    return stats


def attention_variants(config, kv_heads: list[int], linear: bool = True, no_op: bool = True) -> list[AttnSpec]:
    """The parent's attention first, then fewer KV heads, linear, no-op."""
    parent = config.num_key_value_heads
    out = [AttnSpec("gqa", parent)]
    for k in sorted(set(kv_heads), reverse=True):
        if k != parent and k < parent and parent % k == 0:
            out.append(AttnSpec("gqa", k))
        elif k != parent:
            raise ValueError(f"kv_heads {k} must be below and divide the parent's {parent}")
    if linear:
        out.append(AttnSpec("linear"))
    if no_op:
        out.append(AttnSpec("no_op"))
    return out


def ffn_variants(config, fractions: list[float], linear: bool = True, no_op: bool = True) -> list[FFNSpec]:
    """The parent's FFN first, then narrower widths (``fraction × intermediate_size``, rounded to a multiple of 4
    so 2:4 sparsity still applies), linear, no-op."""
    full = config.intermediate_size
    out = [FFNSpec("swiglu", full)]
    for f in sorted(set(fractions), reverse=True):
        if not 0 < f <= 1:
            raise ValueError(f"ffn fraction {f} must be in (0, 1]")
        width = max(4, int(round(full * f / 4)) * 4)
        if width < full and all(v.intermediate_size != width for v in out):
            out.append(FFNSpec("swiglu", width))
    if linear:
        out.append(FFNSpec("linear"))
    if no_op:
        out.append(FFNSpec("no_op"))
    return out


def _norms(layer, part: str) -> State:
    return {f"{n}.weight": getattr(layer, n).weight.detach().clone() for n in norm_names(layer, part)}


def init_attention(layer, config, spec: AttnSpec) -> State:
    """Training-free init of one attention variant from the parent layer (its norms included)."""
    if spec.kind == "no_op":
        return {}
    norm = _norms(layer, "attention")
    a = layer.self_attn
    if spec.kind == "linear":
        w = linear_attention_weight(a.v_proj.weight.detach(), a.o_proj.weight.detach(), config.num_attention_heads,
                                    config.num_key_value_heads)
        return {**norm, "self_attn.proj.weight": w}
    kv = config.num_key_value_heads
    state = {f"self_attn.{k}": v.detach().clone() for k, v in a.state_dict().items()}
    for proj in ("k_proj", "v_proj"):
        state[f"self_attn.{proj}.weight"] = pool_kv_heads(getattr(a, proj).weight.detach(), kv, spec.kv_heads)
        bias = getattr(a, proj).bias
        if bias is not None:
            state[f"self_attn.{proj}.bias"] = pool_kv_heads(bias.detach()[:, None], kv, spec.kv_heads)[:, 0]
    return {**norm, **state}


def init_ffn(layer, stats: LayerStats, spec: FFNSpec, ridge: float = 1e-4) -> State:
    """Training-free init of one FFN variant from the parent layer and its calibration statistics."""
    if spec.kind == "no_op":
        return {}
    norm = _norms(layer, "ffn")
    m = layer.mlp
    if spec.kind == "linear":
        return {**norm, "mlp.proj.weight": fit_linear(stats.xtx, stats.xty, ridge)}
    scores = channel_scores(stats.mean_abs_act, m.down_proj.weight.detach())
    keep = keep_channels(scores, spec.intermediate_size)
    return {**norm, **prune_ffn(m.gate_proj.weight.detach(), m.up_proj.weight.detach(),
                                m.down_proj.weight.detach(), keep)}


def parent_attention(layer) -> State:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()
            if k.startswith(part_prefixes(layer, "attention"))}


def parent_ffn(layer) -> State:
    return {k: v.detach().clone() for k, v in layer.state_dict().items() if k.startswith(part_prefixes(layer, "ffn"))}


def build_layer(config, spec: BlockSpec, state: State, cache_idx: int = 0,
                layer_idx: int = 0) -> PuzzleDecoderLayer:
    """A standalone decoder layer of ``spec`` (with the attention type of the parent's layer ``layer_idx``) holding
    ``state``'s tensors themselves (every key must match): built on the meta device, so scoring and BLD never hold
    a layer twice. Train a copy (``copy.deepcopy``), not this layer, where ``state`` must stay as it is."""
    import torch

    with torch.device("meta"):
        layer = PuzzleDecoderLayer(config, spec, cache_idx, layer_types(config)[layer_idx])
    layer.load_state_dict(state, strict=True, assign=True)
    return layer
