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
