"""Random-init checkpoints of real architectures (Llama, Qwen2, Qwen3, Mistral, Gemma-2, Phi-3) with their real
chat templates and special tokens, so code meant for a user's checkpoint is tested on the same family's quirks.

Each is built from the family's own transformers config class and saved in HF format with a byte-level BPE
trained here on a small built-in corpus. Sizes (every Linear dimension divisible by 4, so 2:4 sparsity applies):

- ``tiny``: hidden 64, 2 layers, 4 heads / 2 KV heads (head dim 16), intermediate 128, vocabulary 600 (the Qwen
  and Phi-3 configs pad it to 640, as their real checkpoints pad theirs), context 512, sliding window 64; ~0.1M
  parameters.
- ``small``: hidden 256, 4 layers, 8 heads / 4 KV heads (head dim 32), intermediate 768, vocabulary ~1000 (padded
  to 1024 likewise), context 1024, sliding window 256; ~3M parameters.

What each architecture keeps from its namesake: qwen2 has q/k/v biases and ties embeddings at tiny size (as
Qwen2-0.5B does); qwen3 has per-head q/k RMSNorm and no biases; mistral has a sliding window; gemma2 has
alternating sliding/full layers, attention and final-logit soft-capping, scaled embeddings and tied embeddings;
phi3 has fused qkv and gate/up projections; llama ties at tiny size (as Llama-3.2-1B does). At small size only
gemma2 ties. ``deepseek-r1-qwen2`` is Qwen2 with DeepSeek-R1-Distill's template and tokens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from refinery.errors import ConfigError
from refinery.models.chat_templates import TEMPLATES, ChatFamily, get_family

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=600,
                 max_position_embeddings=512, sliding_window=64),
    "small": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=768,
                  vocab_size=1024, max_position_embeddings=1024, sliding_window=256),
}


@dataclass(frozen=True)
class Arch:
    """An architecture: its transformers model_type, default chat template and per-family config choices."""

    model_type: str
    template: str
    rope_theta: float
    tie_at: tuple[str, ...] = ()  # sizes at which input and output embeddings are shared
    vocab_multiple: int = 1  # config vocab rounded up to this (Qwen and Phi-3 checkpoints pad their vocabulary)


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", "llama3", 500000.0, tie_at=("tiny",)),
    "qwen2": Arch("qwen2", "qwen2", 1000000.0, tie_at=("tiny",), vocab_multiple=64),
    "qwen3": Arch("qwen3", "qwen3", 1000000.0, tie_at=("tiny",), vocab_multiple=64),
    "mistral": Arch("mistral", "mistral", 1000000.0),
    "gemma2": Arch("gemma2", "gemma2", 10000.0, tie_at=("tiny", "small")),
    "phi3": Arch("phi3", "phi3", 10000.0, vocab_multiple=64),
    # DeepSeek-R1-Distill-Qwen: the Qwen2 architecture with DeepSeek-R1's template and tokens.
    "deepseek-r1-qwen2": Arch("qwen2", "deepseek-r1", 10000.0, tie_at=("tiny",), vocab_multiple=64),
}


_WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but have an they you
were her she there would their we him been has when who will more no if out so said what up its about into than
them can only other new some could time these two may then do first any my now such like our over man me even most
made after also did many before must through back years where much your way well down should because each just
those people how too little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go came right used take
three model answer question number sum result value list file line function return print token text data train test
student teacher friend program team story example step reason think solve check write read find add compute explain
correct final simple short python code string integer float true false none class import loop while break continue
hello please thank help assistant user system chat message reply response prompt language learning machine network
""".strip()


def _corpus(family: ChatFamily) -> list[str]:
    """A small deterministic corpus: prose, arithmetic, code and chats in the family's own format."""
    import random

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    rng = random.Random(0)
    words = _WORDS.split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
             for _ in range(1500)]
    texts += [f"What is {a} + {b}? {a} + {b} = {a + b}. The answer is {a + b}." for a in range(0, 60, 3)
              for b in range(0, 40, 7)]
    texts += [f"def add_{i}(x, y):\n    return x + y * {i}\n\nprint(add_{i}(3, 4))" for i in range(40)]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    template = env.from_string(family.template)
    for i in range(60):
        chat = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"What is {i} + {i + 2}?"},
                {"role": "assistant", "content": f"<think>\nI add {i} and {i + 2}.\n</think>\n\n"
                                                 f"The answer is {2 * i + 2}."}]
        texts.append(template.render(messages=chat, bos_token=family.bos or "", eos_token=family.eos,
                                     add_generation_prompt=False))
    return texts


def build_family_tokenizer(family: ChatFamily, vocab_size: int):
    """A byte-level BPE (single digits, as Qwen and Llama split them) with the family's special tokens at the
    lowest ids, its single-id non-special tokens (``<think>``) added, its chat template and its BOS rule."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    specials = family.tokens()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(family.added), min_frequency=2,
                                  special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(family), trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.added])
    extra = [t for t in specials if t not in (family.pad, family.bos, family.eos)]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   pad_token=family.pad, unk_token="<unk>" if "<unk>" in specials else None,
                                   additional_special_tokens=extra, add_bos_token=family.add_bos,
                                   add_eos_token=False, model_max_length=SIZES["small"]["max_position_embeddings"])
    fast.chat_template = family.template
    fast.padding_side = "left"
    return fast


def _hf_config(arch: Arch, size: dict[str, int], tokenizer, family: ChatFamily, tied: bool):
    import transformers

    d = size
    head_dim = d["hidden_size"] // d["num_heads"]
    vocab = -(-len(tokenizer) // arch.vocab_multiple) * arch.vocab_multiple
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    common = dict(vocab_size=vocab, hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
                  num_hidden_layers=d["num_layers"], num_attention_heads=d["num_heads"],
                  num_key_value_heads=d["num_kv_heads"], max_position_embeddings=d["max_position_embeddings"],
                  tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
                  **ids)
    t = arch.model_type
    if t == "llama":
        return transformers.LlamaConfig(**common, rms_norm_eps=1e-5)
    if t == "qwen2":
        return transformers.Qwen2Config(**common)  # q/k/v biases are part of the Qwen2 architecture
    if t == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=head_dim, attention_bias=False)
    if t == "mistral":
        return transformers.MistralConfig(**common, sliding_window=d["sliding_window"])
    if t == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                                         sliding_window=d["sliding_window"], final_logit_softcapping=30.0,
                                         attn_logit_softcapping=50.0)
    if t == "phi3":
        return transformers.Phi3Config(**common, original_max_position_embeddings=d["max_position_embeddings"])
    raise AssertionError(t)


def _check(arch: str, size: str, template: str | None) -> tuple[Arch, dict[str, int], ChatFamily]:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture '{arch}' (supported: {', '.join(ARCHS)})")
    if size not in SIZES:
        raise ConfigError(f"unknown size '{size}' (supported: {', '.join(SIZES)})")
    if template is not None and template not in TEMPLATES:
        raise ConfigError(f"unknown chat template '{template}' (supported: {', '.join(TEMPLATES)})")
    a = ARCHS[arch]
    return a, SIZES[size], get_family(template or a.template)


def build_family(arch: str, size: str = "tiny", seed: int = 0, template: str | None = None):
    """``(model, tokenizer)``: a random-init model of ``arch`` (deterministic by seed) and its family's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    a, d, family = _check(arch, size, template)
    tokenizer = build_family_tokenizer(family, d["vocab_size"])
    config = _hf_config(a, d, tokenizer, family, tied=size in a.tie_at)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stops = [tokenizer.eos_token_id]
    if family.end_of_text is not None:
        stops.append(tokenizer.convert_tokens_to_ids(family.end_of_text))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=stops if len(stops) > 1 else stops[0])
    return model, tokenizer


def init_checkpoint(arch: str, size: str = "tiny", out: str | Path = "model", seed: int = 0,
                    template: str | None = None) -> Path:
    """Write a random-init HF checkpoint of ``arch`` at ``size`` with its family's tokenizer and chat template into
    ``out`` (atomically: built in a sibling temp dir, then renamed). ``template`` overrides the architecture's own
    (e.g. ``deepseek-r1`` on ``qwen2``). Returns ``out``."""
    _check(arch, size, template)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty directory; choose a new path")
    model, tokenizer = build_family(arch, size, seed, template)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
