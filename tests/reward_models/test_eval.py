"""RewardBench-style scoring rules."""

import pytest

from refinery.reward_models.eval import length_correlation, rewardbench_scores, spearman


def test_ties_are_wrong_and_sections_weight_by_subset_size():
    pairs = [{"subset": "a", "section": "S"}] * 3 + [{"subset": "b", "section": "S"}] + [{"subset": "c"}] * 2
    chosen = [1.0, 1.0, 0.5, 2.0, 3.0, 1.0]
    rejected = [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]  # pair 2 and 6 are ties -> wrong
    out = rewardbench_scores(pairs, chosen, rejected)
    assert out["subsets"]["a"]["accuracy"] == pytest.approx(1 / 3)
    assert out["subsets"]["b"]["accuracy"] == 1.0
    assert out["sections"]["S"] == pytest.approx((1 / 3 * 3 + 1.0 * 1) / 4)  # weighted by size, not mean of subsets
    assert out["sections"]["c"] == 0.5  # no section given: the subset is its own section
    assert out["overall"] == pytest.approx((0.5 + 0.5) / 2)


def test_rewardbench_subset_names_map_to_sections():
    pairs = [{"subset": "alpacaeval-easy"}, {"subset": "math-prm"}]
    out = rewardbench_scores(pairs, [1.0, 0.0], [0.0, 1.0])
    assert out["sections"] == {"chat": 1.0, "reasoning": 0.0}


def test_length_correlation():
    pairs = [{"chosen": "x" * n, "rejected": "x" * (n + 1)} for n in (1, 5, 9)]
    # score grows with length exactly -> +1
    assert length_correlation(pairs, [1, 5, 9], [2, 6, 10]) == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError):
        rewardbench_scores(pairs, [1.0], [0.0, 1.0, 2.0])


def test_reasoning_uses_rewardbench_fixed_counts_not_file_sizes():
    # 4 math-prm pairs (3 right) and 2 hep-python pairs (1 right); RewardBench weighs math-prm 984 and each hep
    # language 164 whatever the file holds: (0.75*984 + 0.5*164) / (984 + 164), not (3 + 1) / 6
    pairs = [{"subset": "math-prm"}] * 4 + [{"subset": "hep-python"}] * 2
    chosen = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    rejected = [0.0] * 6
    out = rewardbench_scores(pairs, chosen, rejected)
    assert out["subsets"]["math-prm"]["weight"] == 984 and out["subsets"]["hep-python"]["weight"] == 164
    assert out["sections"]["reasoning"] == pytest.approx((0.75 * 984 + 0.5 * 164) / 1148)
    assert out["sections"]["reasoning"] != pytest.approx(4 / 6)


def test_overall_is_the_mean_of_sections_with_fixed_safety_weights():
    # safety: xstest-should-respond (250) all right, donotanswer (136) all wrong -> 250/386; chat: alpacaeval-easy
    # right -> 1.0; overall = (1.0 + 250/386) / 2
    pairs = [{"subset": "xstest-should-respond"}, {"subset": "donotanswer"}, {"subset": "alpacaeval-easy"}]
    out = rewardbench_scores(pairs, [1.0, 0.0, 1.0], [0.0, 1.0, 0.0])
    assert out["sections"]["safety"] == pytest.approx(250 / 386)
    assert out["overall"] == pytest.approx((1.0 + 250 / 386) / 2)
