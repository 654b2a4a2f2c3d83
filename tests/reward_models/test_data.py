"""Preference loaders, splits and the synthetic task."""

import gzip
import json
import re

import pytest

from refinery.errors import DataError
from refinery.reward_models.data import (
    from_helpsteer2,
    from_pandalm,
    load_pairs,
    parse_hh_transcript,
    responses_with_attributes,
    split_pairs,
)
from refinery.reward_models.synthetic import FILLER, synthetic_pairs


def test_helpsteer2_orientation_and_strength():
    row = {"prompt": "p", "response_1": "A", "response_2": "B", "preference_strength": -2,
           "response_1_attributes": {"helpfulness": 4}, "response_2_attributes": {"helpfulness": 1}}
    p = from_helpsteer2(row)  # negative: response 1 is better
    assert (p["chosen"], p["rejected"], p["strength"]) == ("A", "B", 2)
    assert p["chosen_attributes"] == {"helpfulness": 4}
    p = from_helpsteer2({**row, "preference_strength": 3})
    assert (p["chosen"], p["strength"], p["chosen_attributes"]) == ("B", 3, {"helpfulness": 1})
    assert from_helpsteer2({**row, "preference_strength": 0})["strength"] == 0  # a tie, kept and marked
    with pytest.raises(DataError, match="outside"):
        from_helpsteer2({**row, "preference_strength": 5})


def test_hh_transcript_to_messages():
    msgs = parse_hh_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye?\n\nAssistant: bye")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == "bye?"
    with pytest.raises(DataError):
        parse_hh_transcript("no turns here")


@pytest.mark.parametrize("votes,chosen,strength", [((1, 1, 1), "r1", 3), ((2, 2, 0), "r2", 2), ((1, 2, 1), "r1", 1),
                                                   ((0, 0, 2), "r2", 1), ((1, 2, 0), "r1", 0)])
def test_pandalm_majority_and_agreement(votes, chosen, strength):
    row = {"instruction": "do", "input": "x", "response1": "r1", "response2": "r2",
           **{f"annotator{i + 1}": v for i, v in enumerate(votes)}}
    p = from_pandalm(row)
    assert p["strength"] == strength
    if strength:
        assert p["chosen"] == chosen
    assert p["prompt"] == "do\n\nx"


def test_load_pairs_detects_formats_and_names_bad_lines(tmp_path):
    f = tmp_path / "mixed.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"})
                + "\n")
    p = load_pairs(f)[0]
    assert p["prompt"] == [{"role": "user", "content": "q"}] and p["chosen"] == "good" and p["strength"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_pairs(bad)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "a"}) + "\n")
    with pytest.raises(DataError, match="odd.jsonl:1: unknown preference format"):
        load_pairs(odd)
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "missing.jsonl")


def test_helpsteer2_attributes_join_onto_pairs(tmp_path):
    from refinery.reward_models.data import attach_attributes, load_attributes

    f = tmp_path / "attrs.jsonl"
    f.write_text(json.dumps({"prompt": "Q  one", "response": "A", "helpfulness": 4, "verbosity": 1, "id": 3}) + "\n")
    pairs = [{"prompt": "q one", "chosen": "A", "rejected": "B"}]
    assert attach_attributes(pairs, load_attributes(f)) == 1
    assert pairs[0]["chosen_attributes"] == {"helpfulness": 4.0, "verbosity": 1.0}
    assert "rejected_attributes" not in pairs[0]


def test_split_keeps_prompts_together():
    pairs = [{"prompt": f"q{i % 50}", "chosen": f"a{i}", "rejected": "b"} for i in range(400)]
    parts = split_pairs(pairs, (0.6, 0.2, 0.2))
    assert sum(map(len, parts)) == 400
    prompts = [{p["prompt"] for p in part} for part in parts]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])


def test_synthetic_truth_noise_and_length_trap():
    train = synthetic_pairs(600, seed=1, split="train")
    test = synthetic_pairs(600, seed=1, split="test")
    assert not ({p["prompt"] for p in train} & {p["prompt"] for p in test})
    # test: no flips, chosen is always the correct answer; strength grows with the size of the error
    for p in test:
        assert p["label"] == "correct" and p["chosen_attributes"]["correctness"] in (4.0, None)
        err = abs(int(p["chosen"].split("The answer is ")[-1].rstrip(".")) -
                  int(p["rejected"].split("The answer is ")[-1].rstrip(".")))
        assert {1: err == 1, 2: 2 <= err <= 5, 3: 10 <= err <= 50}[p["strength"]]
    flipped = {s: sum(p["label"] == "flipped" for p in train if p["strength"] == s) for s in (1, 2, 3)}
    assert flipped[1] > flipped[2] > flipped[3] == 0

    def shorter_minus_longer(pairs):  # how much more often the chosen response is the shorter one
        return sum((len(p["chosen"]) < len(p["rejected"])) - (len(p["chosen"]) > len(p["rejected"]))
                   for p in pairs) / len(pairs)

    big_train, big_test = synthetic_pairs(3000, seed=2, split="train"), synthetic_pairs(1000, seed=2, split="test")
    assert shorter_minus_longer(big_train) < -0.05  # the trap: in train, longer is usually better
    assert abs(shorter_minus_longer(big_test)) < 0.04  # test: length says nothing
    rows = responses_with_attributes(train, ["helpfulness", "verbosity"])
    assert rows and all(len(r["labels"]) == 2 for r in rows)


def test_synthetic_countdown_pairs_reject_a_wrong_expression():
    """Countdown pairs: the rejected response is the chosen one's work with its final expression's last number
    changed, so the task's own check fails it (off the target or a number not given), at about the same length."""
    from refinery.tasks.countdown import check

    pairs = synthetic_pairs(400, seed=4, split="test", tasks=("countdown",))
    assert len(pairs) == 400 and len({p["prompt"] for p in pairs}) == 400
    for p in pairs:
        good, bad = p["chosen"], p["rejected"]  # test split: never flipped
        ref = good.split("The answer is ")[-1]
        assert check(good, ref) and not check(bad, ref)
        # the same work (filler sentences aside), only the last number of the stated expression differs
        head_g, expr_g = good.rsplit("The answer is ", 1)
        head_b, expr_b = bad.rsplit("The answer is ", 1)
        def work(head):
            for f in FILLER:
                head = head.replace(f, "")
            return head.strip()

        assert work(head_g) == work(head_b)
        def last_number_out(expr):
            return re.sub(r"\d+(?=\D*$)", "N", expr)

        assert last_number_out(expr_g) == last_number_out(expr_b) and expr_g != expr_b
        assert abs(len(expr_g) - len(expr_b)) <= 1
    assert {p["strength"] for p in pairs} == {1, 2, 3}
    from refinery.errors import ConfigError

    with pytest.raises(ConfigError, match="need a number in the task's answer"):
        synthetic_pairs(4, tasks=("arithmetic_mcq",))


def test_real_hh_rlhf_and_pandalm_load(shared_data):
    hh = load_pairs(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz")
    assert len(hh) == 2312 and sum(p["prompt"][-1]["role"] == "user" for p in hh) >= 2300
    pl = load_pairs(shared_data / "pandalm" / "testset-v1.json")
    assert len(pl) == 999 and {p["strength"] for p in pl} <= {0, 1, 2, 3}
