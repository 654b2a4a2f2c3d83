import json

import pytest

from refinery.cli import main
from refinery.verifiers import get_verifier
from refinery.verifiers.choice import extract_choice
from refinery.verifiers.format import FormatVerifier


@pytest.mark.parametrize("text,expected", [
    ("The answer is (C).", "C"), ("C. because", "C"), ("\\boxed{C}", "C"), ("Answer: b", "B"),
    ("I think (A) is wrong, so the answer is (D)", "D"), ("D", "D"), ("\\boxed{\\text{(B)}}", "B"),
    ("<think>maybe (A)</think> Answer: C", "C"), ("no idea", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_choice_by_option_text():
    assert extract_choice("It must be Paris.", ["London", "Paris", "Rome"]) == "B"
    v = get_verifier("choice")
    assert v("It must be Paris.", {"answer": "B", "options": ["London", "Paris", "Rome"]}).score == 1.0
    assert v("(A)", "B").score == 0.0 and v("(A)", "B").reason == "chose A, not B"


@pytest.mark.parametrize("text,score", [
    ("<think>12*2=24</think> So \\boxed{24}", 1.0),
    ("So \\boxed{24}", 0.0),  # no thinking
    ("<think>x</think><think>y</think> \\boxed{1}", 0.0),  # two blocks
    ("<think> </think> \\boxed{1}", 0.0),  # empty thinking
    ("<think>work</think> 24", 0.0),  # no box
    ("<think>work \\boxed{1}</think> done", 0.0),  # the box must follow the thinking
])
def test_format(text, score):
    assert FormatVerifier()(text).score == score


def test_format_is_configurable():
    assert FormatVerifier(require_think=False)("So \\boxed{24}").score == 1.0
    assert FormatVerifier(require_boxed=False)("<think>w</think> 24").score == 1.0


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_verify_cli_math(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join([
        json.dumps({"id": 1, "response": "so \\boxed{\\frac{1}{2}}", "reference": "0.5"}),
        json.dumps({"id": 2, "response": "#### 7", "reference": "8"}),
        "{oops",
        json.dumps({"id": 3, "reference": "1"}),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["verify", "math", "--input", str(inp), "--output", str(out), "--workers", "1", "--no-progress"]) == 0
    rows = _rows(out)
    assert rows[0] == {"id": 1, "score": 1.0, "extracted": "\\frac{1}{2}", "reason": "equivalent"}
    assert rows[1]["score"] == 0.0 and rows[1]["extracted"] == "7"
    assert rows[2]["score"] is None and "malformed JSON" in rows[2]["reason"]
    assert rows[3]["id"] == 3 and rows[3]["score"] is None
    assert rows[-1]["summary"] == {"verifier": "math", "total": 4, "scored": 2, "rejected": 2, "correct": 1,
                                   "mean_score": 0.5}
    assert "1 correct" in capsys.readouterr().out


def test_verify_cli_code_and_choice(tmp_path):
    inp = tmp_path / "code.jsonl"
    tests = {"kind": "stdio", "cases": [{"input": "3\n", "output": "9"}]}
    inp.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "response": "```python\nn = int(input())\nprint(n * n)\n```", "tests": tests},
        {"id": "b", "response": "print(input())", "tests": tests}]) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["verify", "code", "--input", str(inp), "--output", str(out), "--no-progress"]) == 0
    assert [r.get("score") for r in _rows(out)[:2]] == [1.0, 0.0]
    inp.write_text(json.dumps({"id": 1, "response": "Answer: C", "reference": "C"}) + "\n")
    assert main(["verify", "choice", "--input", str(inp), "--output", str(out), "--no-progress"]) == 0
    assert _rows(out)[0]["score"] == 1.0


def test_verify_cli_errors(tmp_path, capsys):
    assert main(["verify", "physics", "--input", "x", "--output", "y"]) == 2
    assert "unknown verifier" in capsys.readouterr().err
    assert main(["verify", "math", "--input", str(tmp_path / "nope.jsonl"), "--output", "y"]) == 2
    assert "does not exist" in capsys.readouterr().err
