"""Presets, tokenizer training and model construction, saved in plain HF format.

A built model directory loads with ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` and no refinery code; its tokenizer carries a chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from pydantic import Field, model_validator

from refinery.config import Section
from refinery.errors import ConfigError

# Llama architecture (RMSNorm, SwiGLU, RoPE, GQA). Every Linear dimension is divisible by 4 so 2:4 sparsity applies.
PRESETS: dict[str, dict[str, int]] = {
    # ~1.1M params: trains to useful arithmetic in minutes on 2 CPU cores.
    "nano": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512,
                 vocab_size=512, max_position_embeddings=512),
    # ~3.7M params.
    "mini": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768,
                 vocab_size=2048, max_position_embeddings=1024),
    # ~11M params.
    "micro": dict(hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=1024,
                  vocab_size=4096, max_position_embeddings=1024),
}

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
# Compact template (a tiny model pays for every token); ``<|end|>`` closes a turn and is the EOS token.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class ModelConfig(Section):
    """A preset plus optional per-field overrides."""

    preset: str = Field("nano", description="one of PRESETS: nano (~1M), mini (~4M), micro (~11M)")
    hidden_size: int | None = Field(None, description="override of the preset's hidden size")
    num_layers: int | None = Field(None, description="override of the preset's number of decoder layers")
    num_heads: int | None = Field(None, description="override: attention heads")
    num_kv_heads: int | None = Field(None, description="override: key/value heads (grouped-query attention)")
    intermediate_size: int | None = Field(None, description="override: SwiGLU hidden width")
    vocab_size: int | None = Field(None, description="override: BPE vocabulary size (specials included)")
    max_position_embeddings: int | None = Field(None, description="override: longest sequence (RoPE)")
    rope_theta: float = Field(10000.0, description="RoPE base (Llama-2 default)")
    tie_word_embeddings: bool = Field(True, description="share embedding and LM head (saves params at tiny scale)")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.preset not in PRESETS:
            import difflib

            close = difflib.get_close_matches(self.preset, PRESETS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown preset '{self.preset}'{hint} (available: {', '.join(PRESETS)})")
        d = self.resolved()
        if d["hidden_size"] % d["num_heads"]:
            raise ValueError(f"hidden_size {d['hidden_size']} is not divisible by num_heads {d['num_heads']}")
        if d["num_heads"] % d["num_kv_heads"]:
            raise ValueError(f"num_heads {d['num_heads']} is not divisible by num_kv_heads {d['num_kv_heads']}")
        head_dim = d["hidden_size"] // d["num_heads"]
        for name, dim in (("hidden_size", d["hidden_size"]), ("intermediate_size", d["intermediate_size"]),
                          ("kv width (num_kv_heads*head_dim)", d["num_kv_heads"] * head_dim)):
            if dim % 4:
                raise ValueError(f"{name} = {dim} must be divisible by 4 so 2:4 sparsity applies")
        if d["vocab_size"] < 300:
            raise ValueError(f"vocab_size {d['vocab_size']} is below 300 (256 bytes + specials + merges)")
        return self

    def resolved(self) -> dict[str, int]:
        out = dict(PRESETS[self.preset])
        for key in out:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def hf_config(self, tokenizer) -> object:
        from transformers import LlamaConfig

        d = self.resolved()
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_layers"],
            num_attention_heads=d["num_heads"],
            num_key_value_heads=d["num_kv_heads"],
            max_position_embeddings=d["max_position_embeddings"],
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="silu",
            rms_norm_eps=1e-5,
        )


class TokenizerConfig(Section):
    """Byte-level BPE trained on the corpus the model will see."""

    vocab_size: int | None = Field(None, description="defaults to the model preset's vocab_size")
    individual_digits: bool = Field(True, description="split numbers into single digits (Llama/Qwen practice; "
                                                      "arithmetic needs it)")
    min_frequency: int = Field(2, description="minimum pair count for a BPE merge")


def build_tokenizer(texts: Iterable[str], vocab_size: int, individual_digits: bool = True, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if individual_digits:
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; training code pads explicitly
    return fast


def build_model(config: ModelConfig, tokenizer, seed: int = 0):
    """A freshly initialised LlamaForCausalLM sized by ``config`` for ``tokenizer`` (deterministic by seed)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config.hf_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def cache_dir() -> Path:
    """``$REFINERY_CACHE`` or ``~/.cache/refinery``."""
    return Path(os.environ.get("REFINERY_CACHE", Path.home() / ".cache" / "refinery"))


def config_hash(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def corpus_fingerprint(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_cached(model_cfg: ModelConfig, tok_cfg: TokenizerConfig, texts: list[str], seed: int = 0,
                 refresh: bool = False) -> Path:
    """Build (or reuse) an initialised model + tokenizer in the cache, keyed by config, corpus and seed."""
    key = config_hash(model_cfg.model_dump(), tok_cfg.model_dump(), corpus_fingerprint(texts), seed)
    target = cache_dir() / "models" / f"{model_cfg.preset}-{key}"
    if target.exists() and (target / "config.json").exists() and not refresh:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        save_built(model_cfg, tok_cfg, texts, tmp, seed)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_built(model_cfg: ModelConfig, tok_cfg: TokenizerConfig, texts: list[str], out: Path, seed: int = 0) -> None:
    """Train the tokenizer, initialise the model and save both in HF format into ``out``."""
    if not texts:
        raise ConfigError("cannot build a tokenizer from an empty corpus")
    vocab = tok_cfg.vocab_size or model_cfg.resolved()["vocab_size"]
    tokenizer = build_tokenizer(texts, vocab, tok_cfg.individual_digits, tok_cfg.min_frequency)
    model = build_model(model_cfg, tokenizer, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_text_classifier(texts: list[str], num_labels: int, max_length: int = 256, vocab_size: int = 1024,
                          problem_type: str | None = None):
    """A small Llama sequence classifier (hidden 128, 2 layers) and a byte-level BPE trained on ``texts``, for
    classifiers trained from scratch (quality scores, guard models). Returns ``(model, tokenizer)``; right padding."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tokenizer(texts, vocab_size)
    tok.padding_side = "right"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_length,
                      num_labels=num_labels, pad_token_id=tok.pad_token_id, problem_type=problem_type)
    return LlamaForSequenceClassification(cfg), tok
