"""2:4 sparsity: exact masks, the three one-shot methods, MaskLLM's schedules and learning."""

import pytest
import torch

from refinery.compression.sparsity.maskllm import (
    MaskedLinear,
    MaskLLMSchedule,
    cosine_lr,
    maskllm,
    masks_from_logits,
    prior_logits,
)
from refinery.compression.sparsity.nm import (
    candidates,
    is_nm,
    nm_mask,
    pack_masks,
    prunable_linears,
    sparsity_report,
    unpack_masks,
)
from refinery.compression.sparsity.oneshot import magnitude_mask, sequential_prune, sparsegpt_prune, wanda_mask
from refinery.engine.config import EngineConfig


def test_nm_mask_keeps_top_two_of_every_four():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])
    mask = nm_mask(scores)
    assert mask.tolist() == [[True, False, True, False, False, True, True, False]]
    assert is_nm(mask) and not is_nm(torch.ones(1, 8, dtype=torch.bool))
    assert is_nm(nm_mask(torch.randn(64, 128)))
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(torch.randn(2, 6))
    assert candidates().shape == (6, 4) and (candidates().sum(1) == 2).all()


def test_pack_unpack_roundtrip_is_compact():
    masks = {"a": nm_mask(torch.randn(12, 20)), "b": nm_mask(torch.randn(3, 8))}
    packed = pack_masks(masks)
    assert packed["a"].numel() == 12 * 20 // 8
    back = unpack_masks(packed)
    assert all(torch.equal(back[k], masks[k]) for k in masks)


def test_wanda_uses_activation_norms():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert magnitude_mask(w).tolist() == [[False, False, True, True]]
    act = torch.tensor([100.0, 100.0, 0.01, 0.01]) ** 2  # sum of squares per input channel
    assert wanda_mask(w, act).tolist() == [[True, True, False, False]]


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g)
    X = torch.randn(512, 64, generator=g) @ mix * torch.linspace(0.1, 3, 64)  # correlated, uneven channels
    W = torch.randn(32, 64, generator=g)
    H = 2 * X.T.double() @ X.double() / X.shape[0]
    w_sgpt, keep = sparsegpt_prune(W, H, blocksize=16)
    assert is_nm(keep) and torch.equal(w_sgpt == 0, ~keep | (W == 0))

    def err(w):
        return float(((X @ W.T - X @ w.T) ** 2).mean())

    e_mag = err(W * magnitude_mask(W))
    e_wanda = err(W * wanda_mask(W, (X**2).sum(0)))
    assert err(w_sgpt) < e_wanda < e_mag


def test_maskllm_schedules_match_the_spec():
    s = MaskLLMSchedule()
    assert s.at(0, 100) == pytest.approx((4.0, 100.0, 1e-5))
    assert s.at(99, 100) == pytest.approx((0.05, 500.0, 0.0))
    tau, kappa, lam = s.at(33, 100)
    assert tau == pytest.approx(4 - (4 - 0.05) / 3) and kappa == pytest.approx(100 + 400 / 3)


def test_prior_logits_favour_the_prior_pattern():
    prior = nm_mask(torch.randn(64, 128))
    base = torch.randn(64, 32, 6, generator=torch.Generator().manual_seed(0)) * 0.01
    logits = prior_logits(prior, generator=torch.Generator().manual_seed(0))
    overlap = prior.reshape(64, 32, 4).float() @ candidates().T
    # exactly the spec: logits += (overlap - N/2) * std(logits) * alpha, on top of the small random init
    assert torch.allclose(logits, base + (overlap - 1) * base.std() * 3.0)
    chosen = candidates()[logits.argmax(-1)].reshape(64, 128).bool()
    agree = (chosen.reshape(64, 32, 4) == prior.reshape(64, 32, 4)).all(-1).float().mean()
    assert agree > 0.85  # a strong prior (+3 std) that learning can still overturn


def _windows(tok, text: str, L: int) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // L
    return torch.tensor(ids[: n * L]).reshape(n, L)


def _loss(model, x) -> float:
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)))


def test_oneshot_methods_prune_every_block_linear_to_2_4(alphabet_model):
    from refinery.models.io import load_model, load_tokenizer

    tok = load_tokenizer(alphabet_model)
    calib = _windows(tok, " ".join("abcdefghijklmnopqrstuvwxyz") * 20, 32)
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = load_model(alphabet_model)
        head = model.lm_head.weight.clone()
        masks = sequential_prune(model, calib, method)
        assert set(masks) == set(prunable_linears(model)) and all(is_nm(m) for m in masks.values())
        rep = sparsity_report(model)
        assert rep["overall"] >= 0.5 and torch.equal(model.lm_head.weight, head)


def test_maskllm_learns_a_better_mask_than_its_prior(alphabet_model):
    from refinery.models.io import load_model, load_tokenizer

    tok = load_tokenizer(alphabet_model)
    text = " ".join("abcdefghijklmnopqrstuvwxyz") * 40
    calib, held = _windows(tok, text, 32)[:-4], _windows(tok, text[7:], 32)[-4:]
    prior_model = load_model(alphabet_model)
    priors = sequential_prune(prior_model, calib, "magnitude")
    prior_loss = _loss(prior_model, held)
    model = load_model(alphabet_model)
    masks, logits = maskllm(model, calib, priors=priors, steps=60, lr=5e-3, batch_size=8)
    assert all(is_nm(m) for m in masks.values())
    assert sparsity_report(model)["overall"] >= 0.5
    assert _loss(model, held) < prior_loss  # learned mask beats its one-shot prior at equal sparsity
    # the saved logits' argmax is the learned mask
    assert all(torch.equal(masks_from_logits(logits)[k], masks[k]) for k in masks)
    # transfer (paper: the learned mask is the prior of fresh logits), not a continuation of the saved logits
    again = load_model(alphabet_model)
    masks2, logits2 = maskllm(again, calib, priors=masks_from_logits(logits), steps=0)
    agree = sum(int((masks2[k] == masks[k]).all(-1).sum()) for k in masks) / sum(m.shape[0] for m in masks.values())
    for k in logits:  # fresh N(0, 0.01) logits shifted by ±3 std, not the trained ones
        assert not torch.allclose(logits2[k], logits[k]) and float(logits2[k].abs().max()) < 0.2
    assert agree > 0.2  # whole rows agree often even though each group keeps a small chance to flip


def test_regulariser_reuses_the_forward_mask(monkeypatch):
    import refinery.compression.sparsity.maskllm as ml

    calls = {"n": 0}
    real = ml.F.gumbel_softmax

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(ml.F, "gumbel_softmax", counting)
    lin = torch.nn.Linear(8, 3, bias=False)
    wrapped = MaskedLinear(lin, torch.randn(3, 2, 6) * 0.01)
    wrapped.train()
    torch.manual_seed(0)
    mask_seen = {}
    orig_mask = wrapped.mask
    wrapped.mask = lambda: mask_seen.setdefault("m", orig_mask())
    wrapped(torch.randn(2, 8))
    assert calls["n"] == 1
    assert torch.allclose(wrapped.sparse_weight_norm, (lin.weight.detach() * mask_seen["m"]).pow(2).sum())

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    calls["n"], draws = 0, {"n": 0}
    real_resample = ml.MaskedLinear.resample

    def counting_resample(self):
        draws["n"] += 1
        return real_resample(self)

    monkeypatch.setattr(ml.MaskedLinear, "resample", counting_resample)
    maskllm(model, torch.randint(0, 64, (4, 12)), steps=3, batch_size=2,
            engine=EngineConfig(device="cpu", micro_batch_rows=1))
    # one Gumbel sample per layer per step, shared by the step's micro-batches (the old regulariser drew a second)
    assert draws["n"] == 3 * 14 and calls["n"] == 0


def _maskllm_run(model_dir, **engine):
    from refinery.models.io import load_model

    model = load_model(model_dir)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, model.config.vocab_size, (6, 16), generator=g)
    calib_mask = torch.ones_like(calib, dtype=torch.bool)
    calib_mask[0, 10:] = calib_mask[3, 5:] = False  # padded rows: micro-batches hold different token counts
    torch.manual_seed(0)
    rows = []
    masks, logits = maskllm(model, calib, steps=4, lr=5e-4, batch_size=4, seed=0, calib_mask=calib_mask,
                            engine=EngineConfig(device="cpu", **engine), log=lambda s, r: rows.append(r))
    return masks, logits, rows


def test_maskllm_micro_batches_and_checkpointing_equal_the_whole_batch(alphabet_model):
    # (lr 5e-4: AdamW turns float-order noise in near-zero gradients into ~lr-sized logit differences; at 5e-3
    # they reach 5e-5 while the losses still agree to 1e-6)
    masks, logits, rows = _maskllm_run(alphabet_model)
    for engine in ({"micro_batch_rows": 1}, {"micro_batch_rows": 3, "activation_checkpointing": True}):
        m2, l2, r2 = _maskllm_run(alphabet_model, **engine)
        assert max(float((logits[k] - l2[k]).abs().max()) for k in logits) < 1e-5, engine
        assert all(torch.equal(masks[k], m2[k]) for k in masks)
        assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, r2)) < 1e-5
    first = _maskllm_run(alphabet_model)[1]
    assert max(float((first[k] - logits[k]).abs().max()) for k in logits) == 0  # seeded: a rerun is identical
    assert all("peak_memory_mb" in r for r in rows)


def test_maskllm_bf16_learns_exact_2_4_masks(alphabet_model):
    masks, logits, rows = _maskllm_run(alphabet_model, precision="bf16")
    assert all(is_nm(v, 2, 4) for v in masks.values())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_maskllm_lr_defaults_follow_the_reference():
    import inspect

    from refinery.compression.sparsity.runner import sparsify

    assert inspect.signature(maskllm).parameters["lr"].default == 5e-5  # LR=5e-5 (NVlabs/MaskLLM scripts)
    assert inspect.signature(maskllm).parameters["lr_mult"].default == 10.0  # --lr-mult 10
    assert inspect.signature(sparsify).parameters["lr"].default == 5e-5
    assert cosine_lr(0, 11, 5e-4, 5e-5) == pytest.approx(5e-4)
    assert cosine_lr(5, 11, 5e-4, 5e-5) == pytest.approx(2.75e-4)
    assert cosine_lr(10, 11, 5e-4, 5e-5) == pytest.approx(5e-5)


def test_sparsify_cli_writes_checkpoint_masks_and_report(alphabet_model, tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from refinery.cli import main
    from refinery.models.io import load_model

    text = tmp_path / "abc.txt"
    text.write_text(" ".join("abcdefghijklmnopqrstuvwxyz") * 30)
    common = ["--model", str(alphabet_model), "--calib", str(text), "--n-calib", "8", "--seq-len", "32",
              "--no-progress"]
    assert main(["compress", "sparsify", "--method", "sparsegpt", "--out", str(tmp_path / "sg"), *common]) == 0
    model = load_model(tmp_path / "sg")  # a plain HF checkpoint with the zeros in place
    masks = unpack_masks(load_file(str(tmp_path / "sg" / "masks.safetensors")))
    for name, lin in prunable_linears(model).items():
        assert is_nm(masks[name]) and bool((lin.weight[~masks[name]] == 0).all())
    rep = json.loads((tmp_path / "sg" / "sparsity.json").read_text())
    assert rep["method"] == "sparsegpt" and rep["sparsity"]["overall"] >= 0.5 and rep["format"] == "dense"

    assert main(["compress", "sparsify", "--method", "maskllm", "--steps", "3", "--prior", "magnitude",
                 "--out", str(tmp_path / "ml"), *common]) == 0
    assert (tmp_path / "ml" / "mask_logits.safetensors").exists()
    assert main(["compress", "sparsify", "--method", "maskllm", "--steps", "2", "--out", str(tmp_path / "ml2"),
                 "--init-logits", str(tmp_path / "ml" / "mask_logits.safetensors"), "--precision", "bf16",
                 "--micro-batch", "1", "--activation-checkpointing", *common]) == 0  # transfer, on the engine
    rep2 = json.loads((tmp_path / "ml2" / "sparsity.json").read_text())
    assert rep2["prior"].startswith("transfer:") and rep2["precision"] == "bf16" and rep2["micro_batch"] == 1
    assert rep2["peak_memory_mb"] > 0
    assert main(["compress", "sparsify", "--method", "wanda", "--format", "compressed-tensors",
                 "--out", str(tmp_path / "ct"), *common]) == 0
    from refinery.compression.sparsity.export import checkpoint_format, load_sparse_model

    assert checkpoint_format(tmp_path / "ct") == "compressed-tensors"
    back = load_sparse_model(tmp_path / "ct")
    masks_ct = unpack_masks(load_file(str(tmp_path / "ct" / "masks.safetensors")))
    for name, lin in prunable_linears(back).items():
        assert bool((lin.weight[~masks_ct[name]] == 0).all()) and bool((lin.weight[masks_ct[name]] != 0).any())
    assert main(["compress", "sparsify", "--method", "wanda", "--format", "bogus", "--out", str(tmp_path / "b"),
                 *common]) == 2
    assert main(["compress", "sparsify", "--method", "bogus", "--out", str(tmp_path / "x"), *common]) == 2

    capsys.readouterr()
    assert main(["eval", "ppl", "--model", str(alphabet_model), "--model", str(tmp_path / "sg"), "--text", str(text),
                 "--seq-len", "32"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "ppl" in ln]
    dense, sparse = (float(ln.split("ppl ")[1].split()[0]) for ln in lines)
    assert 1.0 <= dense < sparse  # same windows for both; pruning costs perplexity on this model


def test_perplexity_matches_a_hand_computation(alphabet_model):
    import math

    from refinery.eval.perplexity import perplexity, token_windows
    from refinery.models.io import load_model, load_tokenizer

    model, tok = load_model(alphabet_model), load_tokenizer(alphabet_model)
    w = token_windows(tok, " ".join("abcdefghij") * 20, 16)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=w).logits[:, :-1], -1)
        nll = -logp.gather(-1, w[:, 1:].unsqueeze(-1)).mean()
    assert perplexity(model, w, batch_size=3) == pytest.approx(math.exp(float(nll)), rel=1e-4)


def test_maskllm_prior_uses_one_model_copy_and_default_seq_len(alphabet_model, tmp_path, monkeypatch):
    import json

    import refinery.models.io as io
    from refinery.compression.sparsity.runner import sparsify

    loads = {"n": 0}
    real = io.load_model

    def counting(*a, **k):
        loads["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(io, "load_model", counting)
    text = tmp_path / "abc.txt"
    text.write_text(" ".join("abcdefghijklmnopqrstuvwxyz") * 30)
    rep = sparsify(alphabet_model, "maskllm", text, tmp_path / "ml", n_calib=4, steps=0, prior="magnitude",
                   progress=False)
    assert loads["n"] == 1  # the prior is computed on the same model, whose dense weights come back from disk
    assert rep["seq_len"] == 128  # min(max_position_embeddings=128, 2048)
    # the mask is applied to the ORIGINAL weights (restored after the prior pruned them)
    from safetensors.torch import load_file

    dense, pruned = real(alphabet_model), real(tmp_path / "ml")
    masks = unpack_masks(load_file(str(tmp_path / "ml" / "masks.safetensors")))
    for name, lin in prunable_linears(dense).items():  # had the prior's pruning stayed, more would be zero
        assert torch.equal(pruned.get_submodule(name).weight, lin.weight * masks[name])
        assert torch.equal(pruned.get_submodule(name).weight != 0, masks[name])
    assert json.loads((tmp_path / "ml" / "sparsity.json").read_text())["prior"] == "magnitude"
