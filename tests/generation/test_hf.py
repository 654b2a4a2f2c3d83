import pytest
import torch

from refinery.generation import GenerationError, SamplingParams
from refinery.generation.hf import HFGenerator, sample_next
from refinery.models.io import load_model, load_tokenizer


@pytest.fixture(scope="module")
def gen(alphabet_model):
    return HFGenerator(alphabet_model, batch_size=4)


PROMPTS = ["a b c", "h i j k", "q", "m n o p q r s"]


def test_greedy_matches_transformers_generate(gen):
    tok = gen.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = gen.model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    expected = [tok.decode(r[enc["input_ids"].shape[1]:], skip_special_tokens=True) for r in ref]
    out = gen.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    assert [c.text for c in out] == expected
    assert out[0].text.startswith(" d e f")  # the model really learned the alphabet


def test_n_samples_are_request_major(gen):
    out = gen.generate(PROMPTS[:3], SamplingParams(temperature=1.5, n=4, seed=0, max_new_tokens=5))
    assert len(out) == 12
    assert [(c.index, c.sample) for c in out] == [(i, s) for i in range(3) for s in range(4)]


def test_same_seed_same_tokens_other_seed_differs(gen):
    p = SamplingParams(temperature=2.0, n=4, seed=11, max_new_tokens=10)
    a, b = gen.generate(PROMPTS, p), gen.generate(PROMPTS, p)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    c = gen.generate(PROMPTS, p.model_copy(update={"seed": 12}))
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_sample_does_not_depend_on_batch_mates(gen):
    p = SamplingParams(temperature=1.5, seed=3, max_new_tokens=10)
    alone = gen.generate(["a b c"], p)[0]
    together = gen.generate(["a b c", "m n o p q r s t u", "x"], p)[0]
    assert alone.token_ids == together.token_ids


def test_stop_strings_cut_text_and_keep_tokens(gen):
    out = gen.generate(["a b c"], SamplingParams(temperature=0, stop=[" g", "zzz"], max_new_tokens=20))[0]
    assert out.text == " d e f" and out.finish_reason == "stop"
    assert gen.tokenizer.decode(out.token_ids).startswith(" d e f g")


def test_length_finish_and_budget(gen):
    out = gen.generate(["a"], SamplingParams(temperature=0, max_new_tokens=3))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3


def test_eos_ends_a_sample(alphabet_model):
    model, tok = load_model(alphabet_model), load_tokenizer(alphabet_model)
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1e4  # make EOS the most likely token
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    gen = HFGenerator(model, tok)
    out = gen.generate(["a b"], SamplingParams(temperature=0, max_new_tokens=5))[0]
    assert out.token_ids == [tok.eos_token_id] and out.text == "" and out.finish_reason == "stop"


def test_logprobs_are_the_models_own(gen):
    out = gen.generate(["a b c", "q r"], SamplingParams(temperature=1.0, seed=5, max_new_tokens=6, logprobs=True))
    for prompt, c in zip(["a b c", "q r"], out):
        ids = gen.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = torch.tensor([ids + c.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(gen.model(full).logits[0].float(), -1)
        expected = [logp[len(ids) - 1 + t, tok].item() for t, tok in enumerate(c.token_ids)]
        assert c.logprobs == pytest.approx(expected, abs=1e-4)
    assert gen.generate(["a"], SamplingParams(max_new_tokens=2))[0].logprobs is None


def test_top_k_1_and_tiny_top_p_are_greedy(gen):
    greedy = [c.token_ids for c in gen.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))]
    k1 = gen.generate(PROMPTS, SamplingParams(temperature=5.0, top_k=1, seed=1, max_new_tokens=8))
    p0 = gen.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, seed=1, max_new_tokens=8))
    assert [c.token_ids for c in k1] == greedy and [c.token_ids for c in p0] == greedy


def test_sample_next_respects_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]] * 3)
    temps = torch.tensor([1.0, 1.0, 0.0])
    top_k = torch.tensor([2, 0, 0])
    top_p = torch.tensor([1.0, 0.7, 1.0])
    g = torch.Generator().manual_seed(0)
    seen = [set(), set(), set()]
    for _ in range(400):
        out = sample_next(logits, temps, top_k, top_p, torch.rand(3, generator=g))
        for i in range(3):
            seen[i].add(int(out[i]))
    assert seen[0] == {0, 1}  # top-2
    # softmax([4,3,2,1,0]) = .636 .234 .086 ...: mass before token 1 is .636 < .7, before token 2 is .87 >= .7
    assert seen[1] == {0, 1}
    assert seen[2] == {0}  # greedy


def test_sample_next_inverts_the_cdf_and_skips_zero_mass_tokens():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]] * 4)
    ones = torch.ones(4)
    u = torch.tensor([0.0, 0.49, 0.51, 0.999999])
    assert sample_next(logits, ones, torch.zeros(4, dtype=torch.long), ones, u).tolist() == [0, 0, 2, 2]
    # the empirical distribution matches softmax(logits / T)
    logits = torch.tensor([[1.0, 0.0, -1.0]]).repeat(20000, 1)
    out = sample_next(logits, torch.full((20000,), 2.0), torch.zeros(20000, dtype=torch.long), torch.ones(20000),
                      torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(out, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.5, 0.0, -0.5]), -1), atol=0.015)


def test_rows_sharing_a_prompt_match_rows_decoded_alone(gen):
    """n samples of one prompt are prefilled once; each must equal the same row decoded without its siblings."""
    from refinery.generation.hf import Row

    p = SamplingParams(temperature=1.3, max_new_tokens=100, logprobs=True)  # > one block of pre-drawn uniforms
    ids = gen.encode("h i j")
    rows = [Row(ids, p, seed=s, index=0, sample=s) for s in range(4)] + [Row(gen.encode("a b"), p, seed=9)]
    together = gen.generate_rows(rows)
    assert max(len(c.token_ids) for c in together) > 64  # the second block of uniforms is used
    for r, c in zip(rows, together):
        alone = gen.generate_rows([r])[0]
        assert alone.token_ids == c.token_ids
        assert alone.logprobs == pytest.approx(c.logprobs, abs=1e-4)


def test_chat_requests_use_the_template(gen):
    chat = [{"role": "user", "content": "a b c"}]
    text = gen.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert gen.encode(chat) == gen.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_bad_requests(gen):
    with pytest.raises(GenerationError, match="context"):
        gen.generate(["a " * 200])
    with pytest.raises(GenerationError, match="role"):
        gen.generate([[{"content": "no role"}]])
    with pytest.raises(GenerationError, match="not a single one"):
        gen.generate("a b c")
    with pytest.raises(Exception, match="stop strings must be non-empty"):
        SamplingParams(stop=[""])
