"""Reward-model losses against values computed by hand."""

import math

import pytest
import torch

from refinery.reward_models.losses import (
    bt_loss,
    bt_margin_loss,
    centering_loss,
    pair_loss,
    regression_loss,
    scaled_bt_loss,
)


def nls(x: float) -> float:  # -log sigmoid(x) = log(1 + e^-x)
    return math.log1p(math.exp(-x))


RC = torch.tensor([2.0, 0.5, 1.0])
RR = torch.tensor([1.0, 0.5, 3.0])  # differences 1, 0, -2


def test_bt_against_hand_values():
    want = (nls(1) + nls(0) + nls(-2)) / 3  # 0.31326 + 0.69315 + 2.12693
    assert bt_loss(RC, RR).item() == pytest.approx(want, rel=1e-6)
    assert bt_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))


def test_bt_margin_shifts_the_difference():
    want = (nls(1 - 1) + nls(0 - 2) + nls(-2 - 3)) / 3
    got = bt_margin_loss(RC, RR, torch.tensor([1.0, 2.0, 3.0]))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_scaled_bt_weights_by_strength_and_drops_ties():
    s = torch.tensor([3, -2, 0])  # signed as HelpSteer2; the tie carries no ordering
    want = (3 * nls(1) + 2 * nls(0)) / 2  # mean over the two non-tie pairs
    assert scaled_bt_loss(RC, RR, s).item() == pytest.approx(want, rel=1e-6)
    # strength 1 everywhere equals plain BT
    assert scaled_bt_loss(RC, RR, torch.ones(3)).item() == pytest.approx(bt_loss(RC, RR).item())
    # ties are dropped from plain BT too
    assert bt_loss(RC, RR, s).item() == pytest.approx((nls(1) + nls(0)) / 2, rel=1e-6)
    assert bt_loss(RC, RR, torch.zeros(3)).item() == 0.0


def test_scaled_bt_rejects_out_of_range_strength():
    with pytest.raises(ValueError, match="-3..3"):
        scaled_bt_loss(RC, RR, torch.tensor([4, 1, 1]))


def test_regression_masks_missing_labels():
    pred = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    target = torch.tensor([[0.0, float("nan")], [1.0, 2.0]])
    want = ((1 - 0) ** 2 + (3 - 1) ** 2 + (0 - 2) ** 2) / 3
    assert regression_loss(pred, target).item() == pytest.approx(want)
    all_missing = torch.full((2, 2), float("nan"))
    out = regression_loss(pred.requires_grad_(), all_missing)
    assert out.item() == 0.0
    out.backward()  # still differentiable


def test_centering_and_pair_loss_switch():
    c = centering_loss(RC, RR, 0.01)
    assert c.item() == pytest.approx(0.01 * (3.0**2 + 1.0**2 + 4.0**2) / 3)
    s = torch.tensor([1, 2, 3])
    assert pair_loss("bt", RC, RR).item() == pytest.approx(bt_loss(RC, RR).item())
    assert pair_loss("scaled_bt", RC, RR, s, center_coef=0.01).item() == pytest.approx(
        scaled_bt_loss(RC, RR, s).item() + c.item())
    assert pair_loss("bt_margin", RC, RR, s, margin_scale=0.5).item() == pytest.approx(
        bt_margin_loss(RC, RR, 0.5 * s.float()).item())
    with pytest.raises(ValueError, match="unknown"):
        pair_loss("hinge", RC, RR)


def test_bt_gradient_pushes_chosen_up():
    rc = torch.tensor([0.0], requires_grad=True)
    rr = torch.tensor([0.0], requires_grad=True)
    bt_loss(rc, rr).backward()
    assert rc.grad.item() == pytest.approx(-0.5) and rr.grad.item() == pytest.approx(0.5)
