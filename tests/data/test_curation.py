"""AceReason curation: every filter on hand-made positive and negative cases, and both pipelines end to end on
real problems against `refinery serve` with a tiny model."""

from __future__ import annotations

import json

import pytest

from refinery.data.reasoning.acereason import (
    CurationConfig,
    Normalize,
    ValidateTests,
    format_violations,
    gsm8k_answer,
    majority,
    trivial_programs,
)
from refinery.verifiers.math import math_equal


@pytest.mark.parametrize("problem,rule", [
    ("Which of the following is prime? (A) 4 (B) 6 (C) 7 (D) 9", "multiple_choice"),
    ("What is 2+2?\nA. 3\nB. 4\nC. 5", "multiple_choice"),
    ("True or false: every even number greater than 2 is a sum of two primes.", "true_false"),
    ("Prove that there are infinitely many primes.", "proof"),
    ("Show that the sum of two odd numbers is even.", "proof"),
    ("(a) Find the mean of 2, 4, 6. (b) Find the median.", "multi_part"),
    ("In the figure, triangle ABC is right-angled at B. Find AC.", "figure"),
    ("[asy] draw((0,0)--(1,1)); [/asy] Find the slope.", "figure"),
])
def test_format_rules_catch_what_cannot_be_verified(problem, rule):
    assert rule in format_violations(problem)


@pytest.mark.parametrize("problem", [
    "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in total?",
    "Find the value of $x$ such that $2x + 3 = 11$.",
    "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour?",
    "Compute $\\binom{10}{3}$.",
])
def test_format_rules_keep_plain_problems(problem):
    assert format_violations(problem) == []


def test_majority_vote_and_pass_rate():
    m = majority(["4", "4.0", "5", None, "8/2"], "4", math_equal)
    assert m["agrees"] and m["majority_votes"] == 3 and m["pass_rate"] == pytest.approx(3 / 5)
    m = majority(["5", "5", "4", None], "4", math_equal)
    assert not m["agrees"] and m["majority"] == "5" and m["pass_rate"] == 0.25
    assert majority([None, None], "1", math_equal) == {"majority": None, "majority_votes": 0, "agrees": False,
                                                      "pass_rate": 0.0}


def test_normalize_known_layouts():
    st = Normalize("math")
    gsm = st.process([{"question": "How many?", "answer": "2+3 = <<2+3=5>>5\n#### 1,005"}])[0]
    assert gsm["problem"] == "How many?" and gsm["reference"] == "1005"
    assert gsm8k_answer("#### 72") == "72"
    math = st.process([{"problem": "Compute $1+1$.", "answer": "2"}])[0]
    assert math["reference"] == "2"
    assert st.process([{"question": "no answer"}])[0]["_reject"] == "no_reference"
    he = Normalize("code").process([{"task_id": "T/0", "prompt": "def f(x):\n", "canonical_solution": "    return x\n",
                                    "test": "def check(c):\n    assert c(2) == 2\n", "entry_point": "f"}])[0]
    assert he["tests"]["asserts"][0].endswith("check(f)") and he["reference"].startswith("def f")


def test_code_test_validation_flags_weak_tests_and_false_negatives():
    stage = ValidateTests(CurationConfig(domain="code"))
    good = {"problem": "sq", "entry_point": "sq", "reference": "def sq(x):\n    return x * x\n",
            "tests": {"kind": "functional", "setup": "", "asserts": ["assert sq(3) == 9", "assert sq(-2) == 4"]}}
    weak = {**good, "tests": {"kind": "functional", "setup": "", "asserts": ["assert sq(0) == 0"]}}  # returns 0
    wrong = {**good, "tests": {"kind": "functional", "setup": "", "asserts": ["assert sq(3) == 10"]}}
    stdio_good = {"problem": "echo doubled", "reference": "print(int(input()) * 2)",
                  "tests": {"kind": "stdio", "cases": [{"input": "3\n", "output": "6"}]}}
    stdio_weak = {**stdio_good, "tests": {"kind": "stdio", "cases": [{"input": "0\n", "output": "0"}]}}  # print(0)
    out = stage.process([good, weak, wrong, stdio_good, stdio_weak])
    assert [r.get("_reject") for r in out] == [None, "weak_tests", "tests_reject_reference", None, "weak_tests"]
    assert len(trivial_programs(good["tests"], "sq")) >= 5
    stage.verifier.close()


def test_decontamination_catches_at_n_and_not_above(tmp_path):
    from refinery.data.text.decontam import build_index

    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"}))
    doc = "prefix words then alpha beta gamma delta epsilon zeta eta theta iota and something else"  # 9 shared
    assert build_index([bench], n=9).matches(doc)
    assert not build_index([bench], n=10).matches(doc)


# ---- end to end on real problems -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    from refinery.config import load_config
    from refinery.models.zoo import ModelConfig, TokenizerConfig, save_built
    from tests.conftest import TINY_MODEL, Server

    root = tmp_path_factory.mktemp("cur")
    mc = load_config(ModelConfig, None, [o.removeprefix("model.") for o in TINY_MODEL]
                     + ["max_position_embeddings=2048"])
    save_built(mc, TokenizerConfig(), ["Solve the problem. \\boxed{4} def f(x): return x " * 50], root / "m")
    srv = Server(root / "m", name="tiny-cur").start()
    yield srv
    srv.kill()


def test_math_curation_end_to_end_on_gsm8k(shared_data, long_server, tmp_path):
    from refinery.cli import main
    from refinery.data.pipeline import output_records

    src = tmp_path / "gsm8k_slice.jsonl"
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:12]
    test_q = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[0])
    extra = [json.dumps(test_q), lines[0],  # a leaked test item and a duplicate
             json.dumps({"question": "Which of the following is even? (A) 3 (B) 4", "answer": "#### 4"})]
    src.write_text("\n".join(lines + extra) + "\n")
    out = tmp_path / "cur"
    args = ["data", "run", "recipes/acereason_curation.yaml", f"input={src}", f"output={out}",
            f"decontaminate=[{shared_data / 'decont' / 'gsm8k_test.jsonl'}]", f"generator.model={long_server.name}",
            f"generator.base_url={long_server.url}", "generator.samples=2", "generator.max_new_tokens=8",
            "--no-progress"]
    assert main(args) == 0
    stats = json.loads((out / "stats.json").read_text())
    by = {s["name"]: s for s in stats["stages"]}
    assert by["normalize"]["seen"] == 15
    assert by["dedup_exact"]["dropped"] == {"duplicate_exact": 1}
    assert by["decontaminate"]["dropped"] == {"contaminated": 1}
    assert by["format_filter"]["dropped"] == {"format_multiple_choice": 1}
    v = by["verify_answer"]
    assert v["seen"] == 12 and v["kept"] + v["dropped"].get("answer_mismatch", 0) == 12  # a tiny model: mostly wrong
    assert all(0 <= r["difficulty"] <= 1 for r in output_records(out))
    assert "| verify_answer |" in (out / "report.md").read_text()


def test_code_curation_end_to_end_on_humaneval(shared_data, long_server, tmp_path):
    import gzip

    from refinery.cli import main

    rows = [json.loads(x) for x in gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt")][:6]
    rows[1]["canonical_solution"] = "    return None\n"  # a reference its tests reject
    src = tmp_path / "he.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cur"
    assert main(["data", "run", "recipes/acereason_curation.yaml", "domain=code", f"input={src}", f"output={out}",
                 "decontaminate=[]", f"generator.model={long_server.name}", f"generator.base_url={long_server.url}",
                 "generator.samples=2", "generator.max_new_tokens=8", "--no-progress"]) == 0
    by = {s["name"]: s for s in json.loads((out / "stats.json").read_text())["stages"]}
    assert by["validate_tests"]["dropped"].get("tests_reject_reference") == 1
    assert by["validate_tests"]["kept"] == 5
    # A tiny untrained model solves nothing: every remaining problem is dropped as unsolved, with its pass rate.
    assert by["solvability"]["dropped"] == {"unsolved": 5}
