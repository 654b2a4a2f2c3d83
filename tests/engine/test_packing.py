"""Padding-free packing: bins respect the capacity, and a packed batch gives the padded batch's loss and
gradients on every family the project supports (position ids restart, no attention across examples)."""

from __future__ import annotations

import random

import pytest
import torch

from refinery.engine.logprobs import lm_loss_sum
from refinery.engine.packing import first_fit_decreasing, pack_examples


def test_first_fit_decreasing_fills_within_capacity_and_keeps_every_example_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(200)] + [90]  # one longer than the capacity: a bin of its own
    bins = first_fit_decreasing(lengths, 64)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins if len(b) > 1)
    assert [200] in bins
    # near the lower bound: total / capacity rounded up, plus the oversized one
    assert len(bins) <= -(-(sum(lengths) - 90) // 64) + 2
    assert first_fit_decreasing([5, 5, 5], 10) == [[0, 1], [2]]
    with pytest.raises(ValueError):
        first_fit_decreasing([1], 0)


def test_pack_examples_layout():
    x, y, pos = pack_examples([([1, 2, 3], [-100, 2, 3]), ([4, 5], [4, 5]), ([6], [6])], capacity=4, pad_id=0)
    # first-fit decreasing: [0:3 tokens] + [2:1 token] in row 0, [1:2 tokens] in row 1
    assert x.tolist() == [[1, 2, 3, 6], [4, 5, 0, 0]]
    # each example's first label is masked (nothing of its own precedes it); padding is never a target
    assert y.tolist() == [[-100, 2, 3, -100], [-100, 5, -100, -100]]
    assert pos.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    with pytest.raises(ValueError):
        pack_examples([([1, 2], [1])], 4, 0)


def _model(arch: str):
    import transformers as T

    common = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    cfg = {
        "llama": lambda: T.LlamaConfig(**common),
        "qwen2": lambda: T.Qwen2Config(**common),  # attention biases
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=8),  # q/k norms
        "mistral": lambda: T.MistralConfig(**common, sliding_window=6),  # window shorter than the examples
        "gemma2": lambda: T.Gemma2Config(**common, head_dim=8, sliding_window=6, query_pre_attn_scalar=8,
                                         attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    }[arch]()
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).float()


def _examples(seed=0, n=9):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randint(1, 60) for _ in range(rng.randint(2, 17))]
        n_prompt = rng.randint(0, len(ids) - 1)
        out.append((ids, [-100] * n_prompt + ids[n_prompt:]))
    return out


def _padded(examples, pad_id=0):
    width = max(len(ids) for ids, _ in examples)
    x = torch.full((len(examples), width), pad_id)
    y = torch.full((len(examples), width), -100)
    for i, (ids, labels) in enumerate(examples):
        x[i, :len(ids)], y[i, :len(ids)] = torch.tensor(ids), torch.tensor(labels)
    return x, y


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "gemma2"])
def test_packed_batch_has_the_padded_batch_loss_and_gradients(arch):
    model = _model(arch)
    examples = _examples()
    x, y = _padded(examples)
    total, n = lm_loss_sum(model, x, y, chunk=7)
    (total / n).backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    px, py, pos = pack_examples(examples, capacity=24, pad_id=0)
    assert px.numel() < x.numel() and len(px) < len(x)  # the point: fewer tokens computed
    ptotal, pn = lm_loss_sum(model, px, py, chunk=7, position_ids=pos)
    assert pn == n
    assert float(ptotal / pn) == pytest.approx(float(total / n), abs=1e-5)
    (ptotal / pn).backward()
    for k, p in model.named_parameters():
        if k in ref:
            assert torch.allclose(p.grad, ref[k], atol=1e-5), k


def test_without_restarting_positions_the_examples_would_see_each_other():
    # the test above could pass vacuously if packing never changed anything: rows packed with plain positions
    # (one causal sequence per row) give a different loss
    model = _model("llama")
    examples = _examples()
    x, y = _padded(examples)
    total, n = lm_loss_sum(model, x, y)
    px, py, pos = pack_examples(examples, capacity=24, pad_id=0)
    leaky, _ = lm_loss_sum(model, px, py)
    assert abs(float(leaky / n) - float(total / n)) > 1e-3
