"""ArmoRM pieces: ridge heads, decorrelation, gating — including the two reference-code bugs we must not have."""

import pytest
import torch

from refinery.reward_models.armo import ArmoHead, decorrelation_lambda, fit_ridge
from refinery.reward_models.eval import spearman


def test_ridge_recovers_a_linear_map_and_skips_missing_labels():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 8, generator=g)
    w_true = torch.arange(1.0, 9.0)
    y = X @ w_true + 3.0
    y[::7] = float("nan")  # missing labels are skipped, not treated as zero
    Xv = torch.randn(100, 8, generator=g)
    w, b, alpha, mse = fit_ridge(X, y, Xv, Xv @ w_true + 3.0, [1e-3, 1.0, 1e3])
    assert torch.allclose(w, w_true, atol=1e-2) and b == pytest.approx(3.0, abs=1e-2)
    assert alpha == 1e-3 and mse < 1e-3  # noiseless data: the smallest penalty wins on validation


def test_decorrelation_lambda_is_the_smallest_that_meets_the_threshold():
    g = torch.Generator().manual_seed(1)
    verb = torch.randn(500, generator=g)
    r = 0.8 * verb + 0.6 * torch.randn(500, generator=g)  # strongly length-correlated objective
    lam = decorrelation_lambda(r, verb, 0.03)
    assert spearman((r - lam * verb).tolist(), verb.tolist()) <= 0.03
    assert spearman((r - 0.97 * lam * verb).tolist(), verb.tolist()) > 0.03  # a little less is not enough
    unrelated = torch.randn(500, generator=g)
    if spearman(unrelated.tolist(), verb.tolist()) <= 0.03:
        assert decorrelation_lambda(unrelated, verb) == 0.0


def _head():
    torch.manual_seed(0)
    head = ArmoHead(4, ["help", "correct", "verbosity"], "verbosity", gate_hidden=8, gate_layers=3, dropout=0.0,
                    temperature=2.0)
    head.weight.copy_(torch.randn(3, 4))
    head.lambdas.copy_(torch.tensor([0.5, 0.25, 1.0]))
    return head.eval()


def test_gates_are_a_softmax_over_objectives_per_sample():
    head = _head()
    h = torch.randn(5, 4)
    g = head.gates(h)
    assert g.shape == (5, 3)
    assert torch.allclose(g.sum(-1), torch.ones(5))  # over objectives, not over the batch or chosen/rejected
    assert not torch.allclose(g.sum(0), torch.ones(3))


def test_score_uses_decorrelated_rewards():
    head = _head()
    h_last, h_prompt = torch.randn(6, 4), torch.randn(6, 4)
    out = head(h_last, h_prompt)
    r = h_last @ head.weight.T + head.bias
    adjusted = r - torch.tensor([0.5, 0.25, 1.0]) * r[:, 2:3]
    assert torch.allclose(out["adjusted"], adjusted)
    assert torch.allclose(out["adjusted"][:, 2], torch.zeros(6))  # verbosity itself drops out
    assert torch.allclose(out["score"], head.beta * (out["gates"] * adjusted).sum(-1))
    assert not torch.allclose(out["score"], head.beta * (out["gates"] * r).sum(-1))  # not the raw rewards


def test_head_save_load_roundtrip(tmp_path):
    head = _head()
    head.save(tmp_path)
    again = ArmoHead.load(tmp_path)
    h = torch.randn(3, 4)
    assert torch.allclose(head(h, h)["score"], again(h, h)["score"])


def test_gate_lr_cosine_to_zero_without_warmup():
    from refinery.reward_models.armo import gate_lr

    assert gate_lr(0, 2000, 1e-3, "cosine") == pytest.approx(1e-3)  # no warm-up: starts at the peak
    assert gate_lr(1000, 2000, 1e-3, "cosine") == pytest.approx(5e-4)
    assert gate_lr(1999, 2000, 1e-3, "cosine") < 1e-8
    assert gate_lr(1999, 2000, 1e-3, "constant") == 1e-3
