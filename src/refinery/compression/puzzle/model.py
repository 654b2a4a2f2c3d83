"""The heterogeneous child: a Llama whose every layer has its own attention and FFN (Puzzle / DeciLM style).

A block is ``{"attention": AttnSpec, "ffn": FFNSpec}``:

- attention ``gqa`` with ``kv_heads`` key/value heads (the parent's count is the parent block), ``linear`` (one
  ``H x H`` map on the normed input, no KV cache) or ``no_op`` (the sub-block, its norm included, is gone);
- FFN ``swiglu`` with ``intermediate_size``, ``linear`` (``H x H``) or ``no_op``.

``PuzzleConfig`` / ``PuzzleForCausalLM`` are registered with ``AutoConfig`` / ``AutoModelForCausalLM`` on import,
so ``from_pretrained`` of a child directory works once ``refinery.compression.puzzle`` is imported
(``refinery.models.io.load_model`` does that for you). Parameter names follow Llama's, so a parent checkpoint's
state dict loads unchanged into the all-parent-blocks child (``from_llama``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
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


class PuzzleConfig(LlamaConfig):
    """A LlamaConfig plus ``block_configs``: one ``{"attention": ..., "ffn": ...}`` dict per layer."""

    model_type = MODEL_TYPE

    def __init__(self, block_configs: list[dict] | None = None, **kwargs):
        super().__init__(**kwargs)
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


def make_attention(config, spec: AttnSpec, cache_idx: int) -> nn.Module | None:
    if spec.kind == "no_op":
        return None
    if spec.kind == "linear":
        return LinearAttention(config.hidden_size)
    sub = copy.copy(config)
    sub.num_key_value_heads = spec.kv_heads
    if getattr(config, "head_dim", None) is None:
        sub.head_dim = config.hidden_size // config.num_attention_heads
    if getattr(sub, "_attn_implementation", None) is None:  # a standalone block (BLD, cost model): use SDPA
        sub._attn_implementation = "sdpa"
    return LlamaAttention(sub, cache_idx)


def make_ffn(config, spec: FFNSpec) -> nn.Module | None:
    if spec.kind == "no_op":
        return None
    if spec.kind == "linear":
        return LinearFFN(config.hidden_size)
    sub = copy.copy(config)
    sub.intermediate_size = spec.intermediate_size
    return LlamaMLP(sub)


class PuzzleDecoderLayer(LlamaDecoderLayer):
    """A decoder layer whose attention and FFN are chosen per layer; a no-op sub-block keeps only the residual.

    ``cache_idx`` numbers only the layers with GQA attention, so the KV cache has exactly those layers and its
    layer 0 (which the model reads for the sequence length) is always a real attention layer."""

    def __init__(self, config, spec: BlockSpec, cache_idx: int):
        nn.Module.__init__(self)
        self.hidden_size = config.hidden_size
        self.spec = spec
        self.self_attn = make_attention(config, spec.attention, cache_idx)
        self.mlp = make_ffn(config, spec.ffn)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if self.self_attn else None
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if self.mlp else None

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                position_embeddings=None, **kwargs):
        if self.self_attn is not None:
            attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                     position_ids=position_ids, cache=cache, use_cache=use_cache,
                                     position_embeddings=position_embeddings, **kwargs)
            hidden_states = hidden_states + attn
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class PuzzleModel(LlamaModel):
    config_class = PuzzleConfig

    def __init__(self, config: PuzzleConfig):
        super().__init__(config)
        layers, k = [], 0
        for spec in config.blocks:
            layers.append(PuzzleDecoderLayer(config, spec, k))
            k += spec.attention.kind == "gqa"
        self.layers = nn.ModuleList(layers)
        self.post_init()


class PuzzleForCausalLM(LlamaForCausalLM):
    config_class = PuzzleConfig

    def __init__(self, config: PuzzleConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = PuzzleModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register(MODEL_TYPE, PuzzleConfig, exist_ok=True)
AutoModelForCausalLM.register(PuzzleConfig, PuzzleForCausalLM, exist_ok=True)


def puzzle_config(parent_config, blocks: list[BlockSpec], **overrides) -> PuzzleConfig:
    """A child config: the parent's (Llama) config with one block spec per layer (and any field overridden)."""
    d = parent_config.to_dict()
    for key in ("model_type", "architectures", "block_configs", "transformers_version", "auto_map"):
        d.pop(key, None)
    d.update(overrides)
    cfg = PuzzleConfig(block_configs=[b.to_dict() for b in blocks], **d)
    cfg.architectures = ["PuzzleForCausalLM"]
    return cfg


def from_llama(parent) -> PuzzleForCausalLM:
    """The parent converted losslessly: every layer the parent block, same weights (outputs identical)."""
    cfg = puzzle_config(parent.config, [parent_block(parent.config)] * parent.config.num_hidden_layers)
    child = PuzzleForCausalLM(cfg)
    missing, unexpected = child.load_state_dict(parent.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"parent does not map onto the child: missing {missing[:4]}, unexpected {unexpected[:4]}")
    child.tie_weights()
    child.generation_config = copy.deepcopy(parent.generation_config)
    return child.eval()


def layer_blocks(model) -> list[BlockSpec]:
    """The block spec of every layer of a Llama or Puzzle model."""
    if isinstance(model.config, PuzzleConfig):
        return model.config.blocks
    return [parent_block(model.config)] * model.config.num_hidden_layers
