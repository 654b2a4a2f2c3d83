"""The heterogeneous child: a decoder whose every layer has its own attention and FFN (Puzzle / DeciLM style),
built from the parent family's own sub-block classes (Llama, Qwen2, Qwen3, Mistral, Gemma-2; see ``FAMILIES``).

A block is ``{"attention": AttnSpec, "ffn": FFNSpec}``:

- attention ``gqa`` with ``kv_heads`` key/value heads (the parent's count is the parent block), ``linear`` (one
  ``H x H`` map on the normed input, no KV cache) or ``no_op`` (the sub-block, its norm included, is gone);
- FFN ``swiglu`` with ``intermediate_size``, ``linear`` (``H x H``) or ``no_op``.

A sub-block owns its norms: Llama-shaped families have one pre-norm each; Gemma-2 has a pre- and a post-norm
around both attention and FFN (``SUB_BLOCK_NORMS``), so a linear sub-block keeps both and a no-op drops both.
Gemma-2's alternating sliding/global layers keep their own mask; the KV cache holds only the GQA layers, in order
(``cache_layer_types``).

``PuzzleConfig`` / ``PuzzleForCausalLM`` are registered with ``AutoConfig`` / ``AutoModelForCausalLM`` on import,
so ``from_pretrained`` of a child directory works once ``refinery.compression.puzzle`` is imported
(``refinery.models.io.load_model`` does that for you). Parameter names are the family's, so a parent checkpoint's
state dict loads unchanged into the all-parent-blocks child (``from_llama``, any supported family).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)

MODEL_TYPE = "refinery_puzzle"


@dataclass(frozen=True)
class AttnSpec:
    kind: str = "gqa"  # gqa | linear | no_op
    kv_heads: int = 0

    @property
    def name(self) -> str:
        return f"kv{self.kv_heads}" if self.kind == "gqa" else self.kind

    def to_dict(self) -> dict:
        return {"kind": self.kind, "kv_heads": self.kv_heads} if self.kind == "gqa" else {"kind": self.kind}

    @staticmethod
    def parse(d: dict | str) -> AttnSpec:
        if isinstance(d, str):
            if d.startswith("kv") and d[2:].isdigit():
                return AttnSpec("gqa", int(d[2:]))
            d = {"kind": d}
        kind = d.get("kind", "gqa")
        if kind not in ("gqa", "linear", "no_op"):
            raise ValueError(f"unknown attention kind {kind!r} (gqa, linear or no_op)")
        return AttnSpec(kind, int(d.get("kv_heads", 0)) if kind == "gqa" else 0)


@dataclass(frozen=True)
class FFNSpec:
    kind: str = "swiglu"  # swiglu | linear | no_op
    intermediate_size: int = 0

    @property
    def name(self) -> str:
        return f"ffn{self.intermediate_size}" if self.kind == "swiglu" else self.kind

    def to_dict(self) -> dict:
        if self.kind == "swiglu":
            return {"kind": self.kind, "intermediate_size": self.intermediate_size}
        return {"kind": self.kind}

    @staticmethod
    def parse(d: dict | str) -> FFNSpec:
        if isinstance(d, str):
            if d.startswith("ffn") and d[3:].isdigit():
                return FFNSpec("swiglu", int(d[3:]))
            d = {"kind": d}
        kind = d.get("kind", "swiglu")
        if kind not in ("swiglu", "linear", "no_op"):
            raise ValueError(f"unknown ffn kind {kind!r} (swiglu, linear or no_op)")
        return FFNSpec(kind, int(d.get("intermediate_size", 0)) if kind == "swiglu" else 0)


@dataclass(frozen=True)
class BlockSpec:
    attention: AttnSpec
    ffn: FFNSpec

    @property
    def name(self) -> str:
        return f"{self.attention.name}+{self.ffn.name}"

    def to_dict(self) -> dict:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}

    @staticmethod
    def parse(d: dict) -> BlockSpec:
        return BlockSpec(AttnSpec.parse(d.get("attention", {})), FFNSpec.parse(d.get("ffn", {})))


# Families whose decoder layer is a residual attention sub-block then a residual gated-FFN sub-block and whose
# sub-blocks Puzzle can swap: the child builds its attention / FFN / norms / embedding / rotary from the parent
# family's own classes and runs the family's own forward, so attention biases (Qwen2), per-head q/k norms (Qwen3),
# sliding-window attention (Mistral, Gemma-2's alternating layers), soft-capping, (1+w) norms, scaled embeddings
# and query_pre_attn_scalar (Gemma-2) come with them.
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral", "gemma2": "Gemma2"}
# The norms each sub-block owns (a no-op sub-block drops them with it).
SUB_BLOCK_NORMS = {
    "gemma2": {"attention": ("input_layernorm", "post_attention_layernorm"),
               "ffn": ("pre_feedforward_layernorm", "post_feedforward_layernorm")},
}
_LLAMA_NORMS = {"attention": ("input_layernorm",), "ffn": ("post_attention_layernorm",)}
UNSUPPORTED = {
    "phi3": "its attention and FFN projections are fused (qkv_proj, gate_up_proj): KV-head pooling and FFN channel "
            "pruning need them split",
}


def family_of(config) -> str:
    """The parent family of a Puzzle child or of a parent config; a clear error for families Puzzle cannot cut."""
    family = getattr(config, "parent_model_type", None) if config.model_type == MODEL_TYPE else config.model_type
    family = family or "llama"
    if family in FAMILIES:
        return family
    why = UNSUPPORTED.get(family, "it is not a Llama-shaped decoder Puzzle knows")
    raise ValueError(f"Puzzle does not support {family!r} models: {why} (supported: {', '.join(FAMILIES)})")


@functools.cache
def _classes(family: str) -> dict:
    """The family's module classes (cached: the child's forward looks them up on every call)."""
    import importlib

    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    p = FAMILIES[family]
    return {"attention": getattr(mod, f"{p}Attention"), "mlp": getattr(mod, f"{p}MLP"),
            "norm": getattr(mod, f"{p}RMSNorm"), "model": getattr(mod, f"{p}Model"),
            "causal_lm": getattr(mod, f"{p}ForCausalLM"), "rotary": getattr(mod, f"{p}RotaryEmbedding"),
            "embedding": getattr(mod, f"{p}TextScaledWordEmbedding", None)}


def norm_names(config_or_layer, part: str) -> tuple[str, ...]:
    """The norms the ``part`` (``attention`` or ``ffn``) sub-block owns, for a config or a decoder layer."""
    if isinstance(config_or_layer, nn.Module):
        gemma = hasattr(config_or_layer, "pre_feedforward_layernorm")
        return (SUB_BLOCK_NORMS["gemma2"] if gemma else _LLAMA_NORMS)[part]
    return SUB_BLOCK_NORMS.get(family_of(config_or_layer), _LLAMA_NORMS)[part]


def part_prefixes(config_or_layer, part: str) -> tuple[str, ...]:
    """State-dict key prefixes of a decoder layer's ``part`` sub-block (its weights and its norms)."""
    return ("self_attn." if part == "attention" else "mlp.",
            *(f"{n}." for n in norm_names(config_or_layer, part)))


def layer_types(config) -> list[str]:
    """The attention type (``full_attention`` / ``sliding_attention``) of every decoder layer: the config's
    ``layer_types`` (Qwen2, Gemma-2's alternation), else sliding everywhere when the config has a window
    (Mistral)."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * config.num_hidden_layers


def layer_window(config, layer_idx: int) -> int | None:
    """The sliding window layer ``layer_idx`` attends within (None: global attention)."""
    if layer_types(config)[layer_idx] != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)


def final_logits(model, h: torch.Tensor) -> torch.Tensor:
    """The head on the last layer's output: final norm, LM head and (Gemma-2) final-logit soft-capping."""
    logits = model.lm_head(model.model.norm(h))
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _fit_layer_types(d: dict) -> dict:
    """A config dict whose ``layer_types`` follow its ``num_hidden_layers``: the cost model builds stacks of
    another depth than the parent's (a mixed pattern, Gemma-2's alternation, repeats)."""
    types = d.get("layer_types")
    n = d.get("num_hidden_layers")
    if types and n and len(types) != n:
        d["layer_types"] = [types[i % len(types)] for i in range(n)]
    return d


def family_config(config):
    """The parent family's own config with the same fields (what its attention / MLP classes expect)."""
    family = family_of(config)
    if config.model_type == family:
        sub = copy.copy(config)
    else:
        d = config.to_dict()
        for key in ("model_type", "architectures", "block_configs", "parent_model_type", "transformers_version",
                    "auto_map"):
            d.pop(key, None)
        sub = AutoConfig.for_model(family, **_fit_layer_types(d))
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl == "sdpa" and getattr(sub, "attn_logit_softcapping", None):
        impl = "eager"  # SDPA cannot soft-cap attention logits (what Gemma2PreTrainedModel says too)
    sub._attn_implementation = impl
    return sub


def needs_eager(config) -> bool:
    """Whether the child must run eager attention (soft-capped attention logits: Gemma-2)."""
    return bool(getattr(config, "attn_logit_softcapping", None)) and family_of(config) == "gemma2"


class PuzzleConfig(LlamaConfig):
    """A LlamaConfig plus ``block_configs``: one ``{"attention": ..., "ffn": ...}`` dict per layer, and
    ``parent_model_type``: the family whose sub-blocks the child is built from (the parent's other config fields,
    e.g. ``sliding_window``, are kept as they are)."""

    model_type = MODEL_TYPE

    def __init__(self, block_configs: list[dict] | None = None, parent_model_type: str = "llama", **kwargs):
        super().__init__(**kwargs)
        self.parent_model_type = parent_model_type
        if block_configs is None:
            block_configs = [parent_block(self).to_dict()] * self.num_hidden_layers
        if len(block_configs) != self.num_hidden_layers:
            raise ValueError(f"block_configs has {len(block_configs)} entries for {self.num_hidden_layers} layers")
        blocks = [BlockSpec.parse(b) for b in block_configs]
        for i, b in enumerate(blocks):
            a = b.attention
            if a.kind == "gqa" and (a.kv_heads < 1 or self.num_attention_heads % a.kv_heads):
                raise ValueError(f"layer {i}: kv_heads {a.kv_heads} must divide num_attention_heads "
                                 f"{self.num_attention_heads}")
            if b.ffn.kind == "swiglu" and b.ffn.intermediate_size < 1:
                raise ValueError(f"layer {i}: intermediate_size must be >= 1")
        self.block_configs = [b.to_dict() for b in blocks]

    @property
    def blocks(self) -> list[BlockSpec]:
        return [BlockSpec.parse(b) for b in self.block_configs]

    def cache_layer_types(self) -> list[str]:
        """The KV cache's layer types: one per GQA layer in order (the child numbers its cache that way), then
        ``dummy`` (no cache) for the rest. Only a mixed pattern (Gemma-2) needs this; uniform ones keep theirs."""
        types = layer_types(self)
        gqa = [t for t, b in zip(types, self.blocks) if b.attention.kind == "gqa"]
        if len(set(types)) == 1 or not gqa:
            return types
        return gqa + ["dummy"] * (len(types) - len(gqa))

    def get_text_config(self, *args, **kwargs):
        """The config a KV cache is built from (``DynamicCache(config=...)``, ``generate``): the child's own,
        with ``layer_types`` in cache order when the parent mixes sliding and global layers."""
        if getattr(self, "_cache_view", False) or "block_configs" not in self.__dict__:
            return self if getattr(self, "_cache_view", False) else super().get_text_config(*args, **kwargs)
        types = self.cache_layer_types()
        if types == layer_types(self):
            return super().get_text_config(*args, **kwargs)
        view = copy.copy(self)
        view.__dict__["layer_types"] = types
        view.__dict__["_cache_view"] = True
        return view


def parent_block(config) -> BlockSpec:
    """The block a Llama config has in every layer."""
    return BlockSpec(AttnSpec("gqa", config.num_key_value_heads), FFNSpec("swiglu", config.intermediate_size))


class LinearAttention(nn.Module):
    """Attention replaced by one linear map of the normed input (Puzzle's 'linear' attention; no KV cache)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, hidden_states, **kwargs):
        return self.proj(hidden_states), None


class LinearFFN(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        return self.proj(x)


def make_attention(config, spec: AttnSpec, cache_idx: int, layer_type: str = "full_attention") -> nn.Module | None:
    if spec.kind == "no_op":
        return None
    if spec.kind == "linear":
        return LinearAttention(config.hidden_size)
    sub = family_config(config)  # a standalone block (BLD, cost model) gets SDPA (eager where soft-capped)
    sub.num_key_value_heads = spec.kv_heads
    if getattr(sub, "head_dim", None) is None:
        sub.head_dim = config.hidden_size // config.num_attention_heads
    if getattr(sub, "layer_types", None) is not None:  # the attention reads its type at its cache index
        sub.__dict__["layer_types"] = [layer_type] * (cache_idx + 1)
    return _classes(family_of(config))["attention"](sub, cache_idx)


def make_ffn(config, spec: FFNSpec) -> nn.Module | None:
    if spec.kind == "no_op":
        return None
    if spec.kind == "linear":
        return LinearFFN(config.hidden_size)
    sub = family_config(config)
    sub.intermediate_size = spec.intermediate_size
    return _classes(family_of(config))["mlp"](sub)


class PuzzleDecoderLayer(LlamaDecoderLayer):
    """A decoder layer whose attention and FFN are chosen per layer; a no-op sub-block keeps only the residual.

    ``cache_idx`` numbers only the layers with GQA attention, so the KV cache has exactly those layers and its
    layer 0 (which the model reads for the sequence length) is always a real attention layer. ``layer_type`` is
    the layer's attention type (its mask; the parent's layer at the same depth)."""

    def __init__(self, config, spec: BlockSpec, cache_idx: int, layer_type: str | None = None):
        nn.Module.__init__(self)
        self.hidden_size = config.hidden_size
        self.spec = spec
        self.attention_type = layer_type or layer_types(config)[0]
        self.self_attn = make_attention(config, spec.attention, cache_idx, self.attention_type)
        self.mlp = make_ffn(config, spec.ffn)
        norm = _classes(family_of(config))["norm"]
        self.attn_norms = norm_names(config, "attention")  # (pre,) or (pre, post)
        self.ffn_norms = norm_names(config, "ffn")
        for names, present in ((self.attn_norms, self.self_attn), (self.ffn_norms, self.mlp)):
            for n in names:
                setattr(self, n, norm(config.hidden_size, eps=config.rms_norm_eps) if present else None)

    def _sub_block(self, fn, norms, h):
        out = fn(getattr(self, norms[0])(h))
        return h + (getattr(self, norms[1])(out) if len(norms) > 1 else out)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                position_embeddings=None, **kwargs):
        if self.self_attn is not None:
            def attend(x):
                return self.self_attn(hidden_states=x, attention_mask=attention_mask, position_ids=position_ids,
                                      cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
                                      **kwargs)[0]
            hidden_states = self._sub_block(attend, self.attn_norms, hidden_states)
        if self.mlp is not None:
            hidden_states = self._sub_block(self.mlp, self.ffn_norms, hidden_states)
        return hidden_states


class _FamilyMixin:
    """What a child takes from its parent family's PreTrainedModel: weight init (Gemma-2's zero-centred norms and
    embedding scale) and whether SDPA may run (not with soft-capped attention logits)."""

    @property
    def _supports_sdpa(self) -> bool:
        return not needs_eager(self.config)

    def _init_weights(self, module):
        super()._init_weights(module)
        if family_of(self.config) == "gemma2":
            from transformers import initialization as init

            if "RMSNorm" in module.__class__.__name__:
                init.zeros_(module.weight)
            elif hasattr(module, "scalar_embed_scale"):
                init.constant_(module.embed_scale, module.scalar_embed_scale)


class PuzzleModel(_FamilyMixin, LlamaModel):
    config_class = PuzzleConfig

    def __init__(self, config: PuzzleConfig):
        super().__init__(config)
        family = family_of(config)
        cls = _classes(family)
        layers, k = [], 0
        for spec, kind in zip(config.blocks, layer_types(config)):
            layers.append(PuzzleDecoderLayer(config, spec, k, kind))
            k += spec.attention.kind == "gqa"
        self.layers = nn.ModuleList(layers)
        if family != "llama":  # the family's own final norm, rotary and (Gemma-2: sqrt(H)-scaled) embedding
            sub = family_config(config)
            self.norm = cls["norm"](config.hidden_size, eps=config.rms_norm_eps)
            self.rotary_emb = cls["rotary"](config=sub)
            if cls["embedding"] is not None:
                self.embed_tokens = cls["embedding"](config.vocab_size, config.hidden_size, config.pad_token_id,
                                                     embed_scale=config.hidden_size**0.5)
        # what the Qwen family's forward reads (set by its own __init__)
        self.has_sliding_layers = "sliding_attention" in (getattr(config, "layer_types", None) or [])
        self.post_init()

    def forward(self, *args, **kwargs):
        # the parent family's own forward: its masks (sliding windows for Mistral), rotary set-up and cache
        return _classes(family_of(self.config))["model"].forward(self, *args, **kwargs)


class PuzzleForCausalLM(_FamilyMixin, LlamaForCausalLM):
    config_class = PuzzleConfig

    def __init__(self, config: PuzzleConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = PuzzleModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, *args, **kwargs):
        # the family's own head (Gemma-2 soft-caps the final logits)
        return _classes(family_of(self.config))["causal_lm"].forward(self, *args, **kwargs)


AutoConfig.register(MODEL_TYPE, PuzzleConfig, exist_ok=True)
AutoModelForCausalLM.register(PuzzleConfig, PuzzleForCausalLM, exist_ok=True)


def puzzle_config(parent_config, blocks: list[BlockSpec], **overrides) -> PuzzleConfig:
    """A child config: the parent's config (Llama, Qwen2, Qwen3, Mistral, Gemma-2) with one block spec per layer
    (and any field overridden)."""
    d = parent_config.to_dict()
    for key in ("model_type", "architectures", "block_configs", "transformers_version", "auto_map"):
        d.pop(key, None)
    d.update(overrides)
    d.setdefault("parent_model_type", family_of(parent_config))
    _fit_layer_types(d)
    cfg = PuzzleConfig(block_configs=[b.to_dict() for b in blocks], **d)
    cfg.architectures = ["PuzzleForCausalLM"]
    return cfg


def from_llama(parent) -> PuzzleForCausalLM:
    """The parent converted losslessly: every layer the parent block, same weights (outputs identical). The child
    is built on the meta device and receives a copy of the parent's weights once (no random init)."""
    from refinery.models.io import build_on_meta, clone_once, materialize

    cfg = puzzle_config(parent.config, [parent_block(parent.config)] * parent.config.num_hidden_layers)
    child = build_on_meta(lambda: PuzzleForCausalLM(cfg))
    missing, unexpected = materialize(child, clone_once(parent.state_dict()), strict=False)
    if missing or unexpected:
        raise ValueError(f"parent does not map onto the child: missing {missing[:4]}, unexpected {unexpected[:4]}")
    child.generation_config = copy.deepcopy(parent.generation_config)
    return child.eval()


def layer_blocks(model) -> list[BlockSpec]:
    """The block spec of every layer of a Llama or Puzzle model."""
    if isinstance(model.config, PuzzleConfig):
        return model.config.blocks
    return [parent_block(model.config)] * model.config.num_hidden_layers
