import math

import pytest
import torch

from refinery.rl.advantages import compute_advantages, dr_grpo, grpo, reinforce_pp_baseline, rloo
from refinery.rl.controllers import LengthCurriculum, ReferenceReset, StageSchedule, TemperatureController
from refinery.rl.losses import aggregate, clipped_surrogate, kl_penalty, policy_loss, token_entropy
from refinery.rl.sampling import difficulty_filter, informative_groups, overlong_mask


def t(x):
    return torch.tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("ratio,adv,eps_high,expected,clipped", [
    (1.5, 1.0, 0.2, -1.2, True),    # good action pushed too far up: clipped at 1+eps_high
    (1.5, -1.0, 0.2, 1.5, False),   # bad action made more likely: full penalty, no clip
    (0.5, 1.0, 0.2, -0.5, False),   # good action made less likely: full signal
    (0.5, -1.0, 0.2, 0.8, True),    # bad action pushed down past 1-eps_low: clipped
    (1.3, 1.0, 0.4, -1.3, False),   # clip-higher (ProRL 0.4) leaves room that 0.2 would clip
    (1.3, 1.0, 0.2, -1.2, True),
])
def test_clipped_surrogate_hand_values(ratio, adv, eps_high, expected, clipped):
    loss, was_clipped = clipped_surrogate(t([[math.log(ratio)]]), t([[0.0]]), t([adv]), 0.2, eps_high)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert bool(was_clipped.item()) == clipped


def test_kl_estimators_hand_values():
    logp, ref = t([0.0]), t([math.log(0.5)])  # log ratio = ln 2
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    assert kl_penalty(t([0.3]), t([0.3]), "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_aggregations_hand_values():
    loss = t([[1, 2, 3], [4, 9, 9]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", max_len=4).item() == pytest.approx(10 / 8)
    # a fully masked (filtered) sequence does not dilute the GRPO mean
    assert aggregate(loss, t([[1, 1, 1], [0, 0, 0]]), "seq-mean-token-mean").item() == pytest.approx(2.0)


def test_policy_loss_adds_kl_and_entropy():
    logp, old, ref = t([[0.0, 0.0]]), t([[0.0, 0.0]]), t([[math.log(0.5)] * 2])
    mask = t([[1, 1]])
    base, _ = policy_loss(logp, old, t([1.0]), mask)
    with_kl, stats = policy_loss(logp, old, t([1.0]), mask, ref_logp=ref, kl_coef=0.1)
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * (0.5 - 1 + math.log(2)))
    assert stats["kl"] == pytest.approx(0.5 - 1 + math.log(2))
    with_ent, _ = policy_loss(logp, old, t([1.0]), mask, entropy=t([[2.0, 2.0]]), entropy_coef=0.01)
    assert with_ent.item() == pytest.approx(base.item() - 0.02)


def test_loss_sign_raises_rewarded_action():
    """A 3-armed bandit trained with the loss: the rewarded arm must win."""
    torch.manual_seed(0)
    logits = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(50):
        logp_all = torch.log_softmax(logits, -1)
        actions = torch.multinomial(logp_all.exp().detach(), 8, replacement=True)
        rewards = (actions == 2).float()
        adv = grpo(rewards[None])[0]
        logp = logp_all[actions][:, None]
        loss, _ = policy_loss(logp, logp.detach(), adv, torch.ones_like(logp))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(logits, -1)[2] > 0.9


def test_token_entropy():
    uniform = torch.zeros(1, 4)
    assert token_entropy(uniform).item() == pytest.approx(math.log(4))
    peaked = t([[10.0, 0, 0, 0]])
    assert token_entropy(peaked, temperature=10.0).item() > token_entropy(peaked).item()


def test_advantages_hand_values():
    r = t([[1, 0, 0, 1]])
    std = math.sqrt(1 / 3)
    assert grpo(r)[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-4)
    assert dr_grpo(r)[0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert rloo(r)[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert grpo(t([[1, 1, 1, 1]])).abs().max().item() == 0.0  # no NaN for a solved group
    rpp = reinforce_pp_baseline(t([[1, 0], [1, 1]]))
    assert rpp.mean().item() == pytest.approx(0.0, abs=1e-6) and rpp.std().item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError):
        compute_advantages(r, "ppo")


def test_sampling_filters():
    rewards = t([[1, 1, 1], [0, 1, 0], [0, 0, 0]])
    assert informative_groups(rewards).tolist() == [False, True, False]
    assert overlong_mask(torch.tensor([True, False])).tolist() == [0.0, 1.0]
    assert difficulty_filter({"a": 7 / 16, "b": 6 / 16, "c": 0.0}, 6 / 16) == {"a"}


def test_temperature_controller_moves_toward_target():
    c = TemperatureController(temperature=1.0, target=0.3, rate=0.5)
    assert c.update(0.1) > 1.0  # entropy below target: hotter
    c2 = TemperatureController(temperature=1.0, target=0.3, rate=0.5)
    assert c2.update(0.8) < 1.0  # above target: cooler
    c3 = TemperatureController(temperature=1.9, target=0.3, rate=5.0, max_temperature=2.0)
    assert c3.update(0.0) == 2.0  # clamped


def test_reference_reset_fires_on_plateau_kl_and_schedule():
    r = ReferenceReset(patience=2)
    assert r.check(10, val_metric=0.5) is None  # improvement
    assert r.check(20, val_metric=0.5) is None  # 1 without improvement
    assert "plateau" in r.check(30, val_metric=0.49)  # 2 -> reset
    assert r.check(40, val_metric=0.6) is None
    assert "KL" in ReferenceReset(kl_threshold=0.1).check(5, kl=0.2)
    every = ReferenceReset(every=10)
    assert [s for s in range(1, 31) if every.check(s)] == [10, 20, 30]


def test_length_curriculum_by_step_and_plateau():
    c = LengthCurriculum([(8, 2), (16, 4), (32, None)])
    budgets = []
    for step in range(1, 7):
        c.update(step)
        budgets.append(c.max_new_tokens())
    assert budgets == [8, 16, 16, 32, 32, 32]
    p = LengthCurriculum([(8, None), (16, None)], plateau_patience=2)
    for reward in (0.1, 0.5, 0.5, 0.5):
        p.update(0, reward)
    assert p.max_new_tokens() == 16


def test_stage_schedule():
    s = StageSchedule([(["math"], 5), (["code"], 5), (["math"], None)])
    assert [s.tasks_at(i)[1][0] for i in (0, 4, 5, 9, 10, 100)] == ["math", "math", "code", "code", "math", "math"]


def test_kl_is_clamped_as_nemo_rl_and_verl_clamp_it():
    far, near = t([30.0, -30.0]), t([0.0, 0.0])  # log-ratios of +-30: one token the reference never says
    k3 = kl_penalty(far, near, "k3")
    assert k3.tolist() == pytest.approx([10.0, 10.0])  # exp(30) would swamp the batch; the output clamp is 10
    assert kl_penalty(t([25.0]), t([0.0]), "k1", output_clamp=None).item() == pytest.approx(20.0)  # input clamp
    assert kl_penalty(t([25.0]), t([0.0]), "k2", None, None).item() == pytest.approx(0.5 * 25.0**2)  # both off
    assert kl_penalty(t([0.5]), t([0.0]), "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)  # untouched


def test_reinforce_pp_whitens_per_token():
    """Group mean removed, then whitened over tokens: [0.5, -0.5] with 3 and 1 tokens has token mean 0.25 and
    unbiased token std 0.5, so the advantages are [0.5, -1.5] (per sequence they would be +-0.707)."""
    r, lengths = t([[1.0, 0.0]]), t([[3.0, 1.0]])
    assert reinforce_pp_baseline(r, lengths)[0].tolist() == pytest.approx([0.5, -1.5], rel=1e-4)
    assert compute_advantages(r, "reinforce_pp", lengths)[0].tolist() == pytest.approx([0.5, -1.5], rel=1e-4)
    assert reinforce_pp_baseline(r)[0].tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], rel=1e-4)


def test_entropy_bonus_needs_and_uses_a_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[..., 0]
    mask, adv = torch.ones(2, 3), t([0.0, 0.0])  # zero advantages: only the entropy term can move the logits
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, entropy=token_entropy(logits), entropy_coef=0.1)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="entropy with a gradient"):
        policy_loss(logp, logp.detach(), adv, mask, entropy=token_entropy(logits.detach()), entropy_coef=0.1)


def test_rollout_correction_hand_values():
    from refinery.rl.losses import rollout_correction

    old = torch.log(torch.tensor([[0.5, 0.3, 0.9, 0.2]]))
    roll = torch.log(torch.tensor([[0.5, 0.1, 0.3, 0.4]]))  # ratios 1, 3, 3, 0.5
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, st = rollout_correction(old, roll, mask, "token_truncate", cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 2.0, 0.5]]), atol=1e-6)
    assert st["is_weight_mean"] == pytest.approx(5 / 3, abs=1e-6) and st["is_capped_frac"] == pytest.approx(2 / 3)
    # k1 estimate of KL(rollout || old) over the 3 real tokens: mean(log roll - log old)
    assert st["rollout_kl"] == pytest.approx((0 + math.log(1 / 3) + math.log(1 / 3)) / 3, abs=1e-6)
    w, st = rollout_correction(old, roll, mask, "token_mask", cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 0.0, 0.0, 0.5]]), atol=1e-6)
    w, st = rollout_correction(old, old, mask)  # the engines agree: weight 1, no KL
    assert torch.allclose(w, torch.ones_like(w)) and st["rollout_kl"] == 0
    with pytest.raises(ValueError, match="unknown rollout correction"):
        rollout_correction(old, roll, mask, "sequence")


def test_is_weights_scale_only_the_policy_gradient_term():
    torch.manual_seed(0)
    logp = torch.randn(2, 3, requires_grad=True)
    old, ref = logp.detach() + 0.1, logp.detach() - 0.2
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    kw = dict(ref_logp=ref, kl_coef=0.1)
    base, st = policy_loss(logp, old, adv, mask, **kw)
    same, _ = policy_loss(logp, old, adv, mask, is_weights=torch.ones(2, 3), **kw)
    assert torch.allclose(base, same)
    halved, st2 = policy_loss(logp, old, adv, mask, is_weights=torch.full((2, 3), 0.5), **kw)
    assert st2["pg_loss"] == pytest.approx(0.5 * st["pg_loss"], abs=1e-6)
    assert float(halved) == pytest.approx(0.5 * st["pg_loss"] + 0.1 * st["kl"], abs=1e-5)  # the KL term unscaled


def test_rollout_trend_averages_the_first_and_last_quarter():
    from refinery.rl.trainer import rollout_trend

    rows = [{"step": i, "rollout_accuracy": a} for i, a in enumerate([0.1, 0.3, 0.5, 0.5, 0.6, 0.6, 0.8, 1.0])]
    rows.insert(3, {"step": 3, "valid_accuracy": 0.9})  # rows without a rollout (an eval-only row) do not count
    assert rollout_trend(rows) == {"rl.train_pass_rate_first": 0.2, "rl.train_pass_rate_last": 0.9}
    assert rollout_trend([]) == {}
