"""Tiny model zoo: Llama-architecture causal LMs and byte-level BPE tokenizers, built and trained locally."""

from refinery.models.io import load_model, load_tokenizer
from refinery.models.zoo import PRESETS, ModelConfig, TokenizerConfig, build_model, build_tokenizer, cache_dir

__all__ = ["PRESETS", "ModelConfig", "TokenizerConfig", "build_model", "build_tokenizer", "cache_dir",
           "load_model", "load_tokenizer"]
