import pytest
import torch

from refinery.config import validate
from refinery.errors import CheckpointError, ConfigError
from refinery.models.io import load_model, load_tokenizer
from refinery.models.zoo import (
    PRESETS,
    ModelConfig,
    TokenizerConfig,
    build_cached,
    build_model,
    build_tokenizer,
    count_parameters,
)

CORPUS = [f"Compute {a}+{b} {a}+{b}={a + b}. The answer is {a + b}." for a in range(30) for b in range(30)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, 400)


@pytest.mark.parametrize("preset,lo,hi", [("nano", 1e6, 3e6), ("mini", 3e6, 6e6), ("micro", 10e6, 20e6)])
def test_preset_sizes(preset, lo, hi):
    cfg = ModelConfig(preset=preset)
    tok = build_tokenizer(CORPUS, 300)
    # count at the preset's own vocabulary size: params scale with it
    model = build_model(cfg.model_copy(update={"vocab_size": PRESETS[preset]["vocab_size"]}), tok)
    model.resize_token_embeddings(PRESETS[preset]["vocab_size"])
    assert lo <= count_parameters(model) <= hi


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_block_linear_is_2_4_ready(preset, tokenizer):
    model = build_model(ModelConfig(preset=preset), tokenizer)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert len(linears) == 7 * model.config.num_hidden_layers  # q k v o gate up down
    assert all(m.in_features % 4 == 0 and m.out_features % 4 == 0 for m in linears)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.hidden_act == "silu"  # SwiGLU


@pytest.mark.parametrize("override,msg", [
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"hidden_size": 130, "num_heads": 2, "num_kv_heads": 1}, "divisible by 4"),
    ({"num_heads": 3}, "not divisible by num_heads"),
    ({"num_kv_heads": 3}, "not divisible by num_kv_heads"),
    ({"vocab_size": 100}, "below 300"),
])
def test_bad_model_configs(override, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(ModelConfig, override, "model")


def test_tokenizer_splits_digits_and_has_chat_template(tokenizer):
    tokens = tokenizer.tokenize("x 12345")
    assert [t for t in tokens if t.strip("Ġ")][-5:] == list("12345")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|bos|><|user|>hi<|end|><|assistant|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<|pad|>"


def test_hf_round_trip_with_plain_transformers(tmp_path):
    """A built model loads with Auto* classes and no refinery code, with identical outputs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_cached(ModelConfig(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, num_layers=2,
                                    vocab_size=320), TokenizerConfig(), CORPUS, seed=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template
    ids = tok("Compute 3+4", return_tensors="pt")["input_ids"]
    ours = load_model(path)
    assert torch.equal(model(ids).logits, ours(ids).logits)


def test_cache_reuses_identical_builds(tmp_path):
    small = ModelConfig(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, num_layers=2,
                        vocab_size=320)
    a = build_cached(small, TokenizerConfig(), CORPUS, seed=2)
    mtime = (a / "config.json").stat().st_mtime_ns
    b = build_cached(small, TokenizerConfig(), CORPUS, seed=2)
    assert a == b and (b / "config.json").stat().st_mtime_ns == mtime
    c = build_cached(small, TokenizerConfig(), CORPUS, seed=3)
    assert c != a
    d = build_cached(small, TokenizerConfig(), CORPUS[:-1], seed=2)  # another corpus, another tokenizer
    assert d != a


def test_same_seed_same_init(tokenizer):
    a = build_model(ModelConfig(), tokenizer, seed=4)
    b = build_model(ModelConfig(), tokenizer, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_missing_and_corrupt_model_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    path = build_cached(ModelConfig(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, num_layers=2,
                                    vocab_size=320), TokenizerConfig(), CORPUS, seed=5)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        load_model(bad)
    (bad / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="cannot load tokenizer"):
        load_tokenizer(bad)
