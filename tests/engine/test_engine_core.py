"""The engine's single-process pieces: chunked log-probs, micro-batch accumulation, checkpointing, devices."""

import pytest
import torch

from refinery.engine.accum import accumulate, denominator, micro_batches
from refinery.engine.device import autocast, enable_activation_checkpointing, resolve_device
from refinery.engine.logprobs import split_head, token_logprobs
from refinery.errors import ConfigError
from refinery.rl.batch import make_batch, response_logprobs, response_logprobs_full_logits
from refinery.rl.losses import AGGREGATIONS, policy_loss


def tiny_llama(seed=0, vocab=97, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **kw)
    return LlamaForCausalLM(cfg).float()


def rollout_batch():
    prompts = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10], [9, 10], [9, 10], [11, 12, 13]]
    responses = [[11, 12, 13], [14], [15, 16, 17, 18, 19, 20, 21], [20, 21], [22, 23, 24], [30, 31, 32, 33]]
    return make_batch(prompts, responses, pad_id=0)


def grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_logprobs_equal_full_logits_values_and_gradients(softcap):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    logp, ent = token_logprobs(hidden, head, targets, temperature=0.7, chunk=4, with_entropy=True, softcap=softcap)
    (logp.sum() + 0.3 * ent.sum()).backward()
    g_chunk = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    full = torch.log_softmax(logits / 0.7, -1)
    ref_lp = full.gather(-1, targets[..., None]).squeeze(-1)
    ref_ent = -(full.exp() * full).sum(-1)
    (ref_lp.sum() + 0.3 * ref_ent.sum()).backward()
    assert torch.allclose(logp, ref_lp, atol=1e-6) and torch.allclose(ent, ref_ent, atol=1e-6)
    for a, b in zip(g_chunk, [hidden.grad, head.weight.grad, head.bias.grad]):
        assert torch.allclose(a, b, atol=1e-6)


def test_split_head_finds_the_head():
    model = tiny_llama()
    decoder, head, cap = split_head(model)
    assert decoder is model and head is model.lm_head and cap is None


def test_engine_scoring_equals_full_logits_path():
    """Shared-prompt hidden states + chunked head == whole rows through model(...).logits (values and grads)."""
    model = tiny_llama()
    batch = rollout_batch()
    rows = torch.tensor([0, 2, 3, 5])
    logp, ent = response_logprobs(model, batch, 0.8, rows=rows, with_entropy=True, entropy_grad=True, chunk_tokens=5)
    m = batch.mask[rows]
    ((logp * m).sum() + (ent * m).sum()).backward()
    g_engine = grads(model)
    model.zero_grad()
    ref_lp, ref_ent = response_logprobs_full_logits(model, batch, 0.8, rows=rows, with_entropy=True)
    ((ref_lp * m).sum() + (ref_ent * m).sum()).backward()
    assert torch.allclose(logp * m, ref_lp * m, atol=1e-5)
    assert torch.allclose(ent * m, ref_ent * m, atol=1e-5)
    for a, b in zip(g_engine, grads(model)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_keeps_the_prompt():
    """transformers drops the KV cache in checkpointed layers; with checkpointing on, scoring must still equal the
    plain full-sequence computation (log-probs and gradients), and the cache path would not have."""
    from refinery.rl.batch import _hidden_shared_prompt

    batch = rollout_batch()
    rows = torch.arange(len(batch))
    plain = tiny_llama()
    ref_lp, _ = response_logprobs_full_logits(plain, batch, 1.0, rows=rows)
    (ref_lp * batch.mask).sum().backward()
    ref_g = grads(plain)

    ckpt = tiny_llama()
    ckpt.train()
    enable_activation_checkpointing(ckpt)
    logp, _ = response_logprobs(ckpt, batch, 1.0, rows=rows)
    (logp * batch.mask).sum().backward()
    assert torch.allclose(logp * batch.mask, ref_lp * batch.mask, atol=1e-5)
    for a, b in zip(grads(ckpt), ref_g):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # the hazard this guards against is real: the cache path under checkpointing scores prompt-less responses
    decoder, head, _ = split_head(ckpt)
    bad = token_logprobs(_hidden_shared_prompt(decoder, batch, rows, "cpu"), head, batch.response_ids)[0]
    assert not torch.allclose(bad * batch.mask, ref_lp * batch.mask, atol=1e-3)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_micro_batches_accumulate_to_the_big_batch_gradient(agg):
    """Micro-batches of unequal token counts, weighted by their share of the global denominator, give the
    gradient of the loss over the whole batch (a mean of micro-batch means would not)."""
    torch.manual_seed(1)
    batch = rollout_batch()
    adv = torch.randn(len(batch))
    rows = torch.arange(len(batch))

    def loss_fn(model, r):
        logp, _ = response_logprobs(model, batch, 1.0, rows=r)
        return policy_loss(logp, logp.detach() - 0.05, adv[r], batch.mask[r], agg=agg, max_len=8)

    big = tiny_llama()
    loss, _ = loss_fn(big, rows)
    loss.backward()
    micro = tiny_llama()
    pieces = micro_batches(rows, 4)
    assert [len(p) for p in pieces] == [4, 2]
    st = accumulate(lambda r: loss_fn(micro, r), pieces, batch.mask, agg)
    assert st["loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
    for a, b in zip(grads(micro), grads(big)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # the naive mean of micro-batch means differs whenever the pieces' denominators differ
    naive = sum(float(loss_fn(tiny_llama(), p)[0]) for p in pieces) / len(pieces)
    if agg != "seq-mean-token-sum-norm" or len(set(len(p) for p in pieces)) > 1:
        assert naive != pytest.approx(float(loss.detach()), abs=1e-4)


def test_denominators():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0.]])
    assert denominator(mask, "token-mean") == 3
    assert denominator(mask, "seq-mean-token-mean") == 2
    assert denominator(mask, "seq-mean-token-sum-norm") == 3
    with pytest.raises(ValueError):
        denominator(mask, "mean")


def test_devices_and_precision():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    with autocast("bf16", torch.device("cpu")):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scoring_matches_cpu():
    model = tiny_llama()
    batch = rollout_batch()
    cpu, _ = response_logprobs(model, batch, 1.0)
    gpu, _ = response_logprobs(model.cuda(), batch, 1.0)
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_lm_loss_sum_equals_hf_loss():
    from refinery.engine.logprobs import lm_loss_sum

    model = tiny_llama()
    x = torch.randint(0, 97, (3, 11))
    y = x.clone()
    y[0, :4] = -100
    y[2, 7:] = -100
    total, n = lm_loss_sum(model, x, y, chunk=5)
    assert n == int((y[:, 1:] != -100).sum())
    assert float(total / n) == pytest.approx(float(model(input_ids=x, labels=y).loss), abs=1e-5)
