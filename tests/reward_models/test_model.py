"""The reward-model backbone: encoding, last-token head, loading other architectures."""

import torch

from refinery.models.io import load_tokenizer
from refinery.reward_models.model import collate, encode, hidden_states, load_backbone, rewards


def test_encode_left_truncates_and_tracks_the_prompt_end(alphabet_model):
    tok = load_tokenizer(alphabet_model)
    full = encode(tok, "a b c", "d e f", max_length=10_000)
    head = tok.apply_chat_template([{"role": "user", "content": "a b c"}], add_generation_prompt=True,
                                   tokenize=False)
    n_head = len(tok(head, add_special_tokens=False)["input_ids"])
    assert full.prompt_end == n_head - 1
    assert full.ids[-1] == tok.convert_tokens_to_ids("<|end|>")
    cut = encode(tok, "a b c", "d e f", max_length=len(full.ids) - 3)
    assert cut.ids == full.ids[3:] and cut.prompt_end == full.prompt_end - 3


def test_last_token_reward_ignores_padding(alphabet_model):
    model, tok = load_backbone(alphabet_model, num_labels=3)
    model.eval()
    a = encode(tok, "a b", "c d e f g h", 256)
    b = encode(tok, "a", "b", 256)
    alone = rewards(model, collate([b], tok.pad_token_id))
    together = rewards(model, collate([a, b], tok.pad_token_id))
    assert together.shape == (2, 3)
    assert torch.allclose(alone[0], together[1], atol=1e-5)  # right padding: batch-mates change nothing
    h_last, h_prompt = hidden_states(model, collate([a], tok.pad_token_id))
    assert not torch.allclose(h_last, h_prompt)


def test_other_architectures_load_with_the_same_code(alphabet_model, tmp_path):
    """A user's real checkpoint (here a tiny random Qwen2) loads as a reward backbone unchanged."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer(alphabet_model)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_backbone(tmp_path, num_labels=2)
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    out = rewards(model, collate([encode(tok2, "a", "b", 64)], tok2.pad_token_id))
    assert out.shape == (1, 2)
