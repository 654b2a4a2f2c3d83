"""The reward-model backbone: encoding, last-token head, loading other architectures."""

import pytest
import torch

from refinery.models.io import load_tokenizer
from refinery.reward_models.model import collate, encode, hidden_states, load_backbone, rewards


def test_encode_left_truncates_and_tracks_the_prompt_end(alphabet_model):
    tok = load_tokenizer(alphabet_model)
    full = encode(tok, "a b c", "d e f", max_length=10_000)
    turns = tok.apply_chat_template([{"role": "user", "content": "a b c"}], tokenize=False)
    n_turns = len(tok(turns, add_special_tokens=False)["input_ids"])
    # ArmoRM's gate reads the token closing the user turn (RLHFlow's find_token_for_gating), not the last token of
    # the generation prompt "<|assistant|>"
    assert full.prompt_end == n_turns - 1
    assert full.ids[full.prompt_end] == tok.convert_tokens_to_ids("<|end|>")
    assert full.ids[full.prompt_end + 1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert full.ids[-1] == tok.convert_tokens_to_ids("<|end|>")  # pad is <|pad|> here: nothing stripped
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


# ---- one pooling rule: what is trained is what a plain HF forward of the exported directory reads ---------------

PROMPTS = ["a b", "a", "c d e", "b c"]
RESPONSES = ["c d e f g h", "b", "f", "d e f g"]


def _without_pad(src, dst):
    """A copy of a causal-LM directory whose tokenizer and config have no pad token (common for instruct
    checkpoints: load_backbone then pads with EOS)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    tok = load_tokenizer(dst)
    tok.pad_token = None
    tok.save_pretrained(dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["pad_token_id"] = None
    (dst / "config.json").write_text(json.dumps(cfg))
    assert load_tokenizer(dst).pad_token_id is None
    return dst


def _hf_scores(rm_dir, texts, padding_side=None):
    """Scores from the plain transformers classes, as RewardBench / TRL read a reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    with torch.no_grad():
        if padding_side is None:  # unbatched
            return torch.stack([model(**tok(t, add_special_tokens=False, return_tensors="pt")).logits[0, 0]
                                for t in texts])
        tok.padding_side = padding_side
        batch = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        return model(**batch).logits[:, 0]


@pytest.mark.parametrize("has_pad", [True, False], ids=["pad-token", "no-pad-token"])
def test_rm_score_is_the_exported_models_own_forward(alphabet_model, tmp_path, has_pad):
    from refinery.reward_models.model import RewardScorer, save_reward_model

    src = alphabet_model if has_pad else _without_pad(alphabet_model, tmp_path / "nopad")
    torch.manual_seed(0)
    model, tok = load_backbone(src, num_labels=1)
    if not has_pad:
        assert model.config.pad_token_id == tok.pad_token_id == tok.eos_token_id  # pad = EOS, as TRL does
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head that reads something: scores differ per position
    out = tmp_path / "rm"
    save_reward_model(model, tok, out, {"kind": "sequence_classification", "max_length": 256})

    ours = torch.tensor(RewardScorer(out, batch_size=4).score(PROMPTS, RESPONSES)["score"])
    model.eval()
    with torch.no_grad():  # the training path: our collate + rewards() on a right-padded batch
        encs = [encode(tok, p, r, 256) for p, r in zip(PROMPTS, RESPONSES)]
        trained = rewards(model, collate(encs, model.config.pad_token_id))[:, 0]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False) for p, r in zip(PROMPTS, RESPONSES)]
    assert len(set(ours.tolist())) == len(PROMPTS)
    for hf in (_hf_scores(out, texts), _hf_scores(out, texts, "right"), _hf_scores(out, texts, "left")):
        assert torch.allclose(hf, ours, atol=1e-4), (hf, ours)
    assert torch.allclose(trained, ours, atol=1e-4)


def test_trailing_pad_tokens_are_stripped_so_every_reader_scores_the_same_token(alphabet_model, tmp_path):
    model, tok = load_backbone(_without_pad(alphabet_model, tmp_path / "nopad"), num_labels=1)
    e = encode(tok, "a", "b c", 256)
    assert e.ids[-1] != tok.pad_token_id  # the template's closing EOS (= pad) is dropped
    assert tok.decode([e.ids[-1]]).strip() == "c"
    assert tok.pad_token_id in e.ids  # the user turn's <|end|> inside the sequence stays
    batch = collate([e, encode(tok, "a b c d", "e f g h i", 256)], model.config.pad_token_id)
    from refinery.reward_models.model import pooled_index

    assert pooled_index(batch["input_ids"], model.config.pad_token_id).tolist() == (batch["last"]).tolist()
