"""Random-init checkpoints of real families: plain transformers loads them, their chat templates render the
family's exact markers, their special tokens are single ids, their architectural features are really there, and
the project's own generator stops at their turn end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refinery.errors import ConfigError
from refinery.models.chat_templates import TEMPLATES
from refinery.models.families import ARCHS, build_family, init_checkpoint

SYSTEM, USER, ASSISTANT = "You are terse.", "Hi", "Hello!"
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER},
        {"role": "assistant", "content": ASSISTANT}]

# arch -> (model_type, the 2-turn chat rendered, the end of the generation prompt, turn-end token, BOS added to text)
EXPECTED = {
    "llama": ("llama",
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
              "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "<|begin_of_text|>"),
    "qwen2": ("qwen2",
              "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n",
              "<|im_start|>assistant\n", "<|im_end|>", None),
    "qwen3": ("qwen3",
              "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n",
              "<|im_start|>assistant\n", "<|im_end|>", None),
    # Mistral v0.3 puts the system message into the LAST user turn only: with an answer after it, it is dropped.
    "mistral": ("mistral", "<s>[INST] Hi[/INST] Hello!</s>", "<s>[INST] You are terse.\n\nHi[/INST]", "</s>", "<s>"),
    "gemma2": ("gemma2",
               "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
               "<start_of_turn>model\nHello!<end_of_turn>\n",
               "<start_of_turn>model\n", "<end_of_turn>", "<bos>"),
    "phi3": ("phi3",
             "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|endoftext|>",
             "<|assistant|>\n", "<|end|>", None),
    "deepseek-r1-qwen2": ("qwen2",
                          "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>",
                          "<｜Assistant｜><think>\n", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"),
}


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_every_arch_has_expectations():
    assert set(EXPECTED) == set(ARCHS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_checkpoint_loads_and_formats_like_its_family(arch, family_ckpt):
    model_type, rendered, gen_end, turn_end, bos = EXPECTED[arch]
    path = family_ckpt(arch)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == model_type
    model, tok = load(path)
    assert tok.apply_chat_template(CHAT, tokenize=False) == rendered
    prompt = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(gen_end)
    # the turn end is the eos everywhere generation looks for it
    end_id = tok.convert_tokens_to_ids(turn_end)
    gen = json.loads((path / "generation_config.json").read_text())
    stops = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tok.eos_token_id == config["eos_token_id"] == stops[0] == end_id
    assert config["pad_token_id"] == gen["pad_token_id"] == tok.pad_token_id is not None
    assert config["pad_token_id"] != end_id  # (Qwen's and Phi-3's pad is their end-of-text, a second stop)
    assert config.get("bos_token_id") == tok.bos_token_id
    # BOS: prepended to plain text where the family's tokenizer does it, and exactly once in a tokenized chat
    plain = tok("hi").input_ids
    chat_ids = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_dict=True)["input_ids"]
    if bos is not None:
        assert plain[0] == tok.bos_token_id == chat_ids[0] and chat_ids.count(tok.bos_token_id) == 1
    else:
        assert tok.bos_token_id is None or tok.bos_token_id not in plain + chat_ids
    assert tok.decode(chat_ids) == prompt
    # whatever class AutoTokenizer picks (Qwen2Tokenizer for qwen2), it encodes like the tokenizer that was built
    _, built = build_family(arch)
    text = prompt + " 12345 café  two  spaces\n\n<think>x</think>"
    assert tok(text).input_ids == built(text).input_ids
    # forward is finite; greedy generate runs
    ids = torch.tensor([chat_ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, len(chat_ids), config["vocab_size"]) and torch.isfinite(logits).all()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_special_tokens_are_single_ids(template):
    family = TEMPLATES[template]
    _, tok = build_family("qwen2", template=template)
    for t in family.tokens() + list(family.added):
        ids = tok(t, add_special_tokens=False).input_ids
        assert ids == [tok.convert_tokens_to_ids(t)], (t, ids)
    for t in family.added:  # <think> is one id but not special: decoding keeps it
        assert tok.decode(tok(t, add_special_tokens=False).input_ids, skip_special_tokens=True) == t
    assert tok.decode(tok(family.eos, add_special_tokens=False).input_ids, skip_special_tokens=True) == ""


def test_qwen3_reasoning_rules(family_ckpt):
    _, tok = load(family_ckpt("qwen3"))
    history = [{"role": "user", "content": "1+1?"},
               {"role": "assistant", "content": "<think>\nadd\n</think>\n\n2"},
               {"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "<think>\nadd again\n</think>\n\n4"}]
    text = tok.apply_chat_template(history, tokenize=False)
    assert "<|im_start|>assistant\n2<|im_end|>" in text  # reasoning before the last query is dropped
    assert text.endswith("<|im_start|>assistant\n<think>\nadd again\n</think>\n\n4<|im_end|>\n")
    off = tok.apply_chat_template(history[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_deepseek_template_on_qwen2_and_reasoning_dropped(family_ckpt):
    path = family_ckpt("qwen2", template="deepseek-r1")
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen2"
    _, tok = load(path)
    chat = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n2"},
            {"role": "user", "content": "2+2?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>1+1?<｜Assistant｜>\n\n2<｜end▁of▁sentence｜><｜User｜>2+2?" \
                   "<｜Assistant｜><think>\n"


def test_gemma2_without_system_and_alternation(family_ckpt):
    _, tok = load(family_ckpt("gemma2"))
    assert tok.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True) == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([CHAT[1], CHAT[1]], tokenize=False)


def test_architectural_features(family_ckpt):
    qwen2, _ = load(family_ckpt("qwen2"))
    attn = qwen2.model.layers[0].self_attn
    assert all(getattr(attn, f"{p}_proj").bias is not None for p in "qkv") and attn.o_proj.bias is None
    assert qwen2.config.tie_word_embeddings
    assert qwen2.lm_head.weight.data_ptr() == qwen2.model.embed_tokens.weight.data_ptr()
    assert qwen2.config.vocab_size % 64 == 0 and qwen2.config.vocab_size > 600  # padded like Qwen's
    qwen3, _ = load(family_ckpt("qwen3"))
    attn = qwen3.model.layers[0].self_attn
    assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm") and attn.q_proj.bias is None
    phi3, _ = load(family_ckpt("phi3"))
    assert hasattr(phi3.model.layers[0].self_attn, "qkv_proj") and hasattr(phi3.model.layers[0].mlp, "gate_up_proj")
    gemma2, _ = load(family_ckpt("gemma2"))
    c = gemma2.config
    assert c.final_logit_softcapping == 30.0 and c.attn_logit_softcapping == 50.0
    assert c.sliding_window == 64 and "sliding_attention" in c.layer_types and "full_attention" in c.layer_types
    with torch.no_grad():  # soft-capping is applied: huge head weights still give |logits| <= 30
        gemma2.lm_head.weight.mul_(1e4)
        assert gemma2(torch.tensor([[1, 5, 9]])).logits.abs().max() <= 30.0


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("gemma2", True)])
def test_small_size(arch, tied):
    model, tok = build_family(arch, "small")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (256, 4, 8, 4)
    assert c.tie_word_embeddings == tied and 900 <= len(tok) <= c.vocab_size <= 1024


def test_mistral_sliding_window_really_limits_attention(family_ckpt):
    """Past 2 layers x window 64, the first token cannot reach the last position (it does in Llama)."""
    ids = torch.randint(10, 500, (1, 200), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, 0] = 7
    for arch, reaches in (("mistral", False), ("llama", True)):
        model, _ = load(family_ckpt(arch))
        with torch.no_grad():
            a, b = model(ids).logits[0, -1], model(other).logits[0, -1]
        assert (not torch.allclose(a, b)) == reaches, arch


def test_seed_and_unknown_names(tmp_path):
    a, _ = build_family("llama", seed=1)
    b, _ = build_family("llama", seed=1)
    c, _ = build_family("llama", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.layers[0].self_attn.q_proj.weight, c.model.layers[0].self_attn.q_proj.weight)
    with pytest.raises(ConfigError, match="unknown architecture 'gpt2'.*llama, qwen2, qwen3, mistral, gemma2, phi3"):
        init_checkpoint("gpt2", "tiny", tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        init_checkpoint("qwen2", "huge", tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown chat template"):
        init_checkpoint("qwen2", "tiny", tmp_path / "x", template="chatml2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        init_checkpoint("qwen2", "tiny", tmp_path / "full")
    assert not (tmp_path / "x").exists()


def test_hf_generator_stops_at_the_turn_end_and_matches_transformers(family_ckpt):
    """The project's HFGenerator formats with the family template, stops at its turn end and decodes greedy like
    transformers' generate, past the sliding window (prompt + 60 tokens > 64)."""
    from refinery.generation.base import SamplingParams
    from refinery.generation.hf import HFGenerator

    msgs = [{"role": "user", "content": "What is 12 + 30? Please explain every step in a short story."}]
    for arch in ("gemma2", "mistral"):
        gen = HFGenerator(family_ckpt(arch))
        ids = gen.encode(msgs)
        assert ids == gen.tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]
        out = gen.generate([msgs], SamplingParams(temperature=0.0, max_new_tokens=60))[0]
        ref = gen.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=60, do_sample=False)[0, len(ids):].tolist()
        assert out.token_ids == ref[:len(out.token_ids)] and len(ids) + len(out.token_ids) > 64
    for arch in ("qwen3", "llama"):
        gen = HFGenerator(family_ckpt(arch))
        end = gen.tokenizer.eos_token_id
        # make the turn end the likeliest token: generation must stop at once, its text empty
        gen.model.lm_head.register_forward_hook(lambda m, i, o, end=end: o.index_fill(-1, torch.tensor([end]), 100.0))
        out = gen.generate([msgs], SamplingParams(temperature=0.0, max_new_tokens=20))[0]
        assert out.finish_reason == "stop" and out.token_ids == [end] and out.text == "", arch


def test_cli_init_and_unknown_arch(tmp_path):
    exe = str(Path(sys.executable).with_name("refinery"))
    out = tmp_path / "q"
    r = subprocess.run([exe, "models", "init", "--arch", "qwen2", "--size", "tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["architecture"] == "Qwen2ForCausalLM"
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
    r = subprocess.run([exe, "models", "init", "--arch", "gpt5", "--out", str(tmp_path / "z")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown architecture 'gpt5'" in lines[0] and "Traceback" not in r.stderr + r.stdout
