"""`refinery eval` on reasoning responses: scored after the thinking, thinking and answer lengths reported apart."""

import json

import pytest

from refinery.cli import main
from refinery.eval.passk import _scorer, length_stats, run_eval
from refinery.generation import Completion


def test_length_stats_hand_values():
    texts = ["<think>abcd</think>xy", "ab</think>x", "<think>abcdef", "plain"]
    st = length_stats(texts, [False, True, False, False])
    assert st == {"thinking_chars": (4 + 2 + 6 + 0) / 4, "answer_chars": (2 + 1 + 0 + 5) / 4,
                  "unclosed_think_rate": 0.25}

    class CharTok:  # one token per character
        def __call__(self, parts, add_special_tokens=False):
            return {"input_ids": [list(p) for p in parts]}

    st = length_stats(texts, [False] * 4, CharTok())
    assert st["thinking_tokens"] == pytest.approx((4 + 2 + 6 + 0) / 4)  # a bare </think> closes thinking anyway
    assert st["answer_tokens"] == pytest.approx((2 + 1 + 0 + 5) / 4)


def test_eval_scores_after_the_thinking():
    score, router = _scorer("math")
    p = {"id": "p-1", "prompt": "What is 40+2?", "answer": "42"}
    try:
        assert not score(p, "<think>the answer is 42</think>I don't know")
        assert not score(p, "<think>the answer is 42")
        assert not score(p, "the answer is 42", opened=True)  # the prompt opened <think>: still thinking
        assert score(p, "hm</think>The answer is 42.", opened=True)
        assert score(p, "<think>hm</think>\\boxed{42}")
        code, code_router = _scorer("code")
        item = {"id": "c", "prompt": "f", "tests": {"kind": "functional", "asserts": ["assert f(2) == 4"]}}
        assert not code(item, "<think>```python\ndef f(x):\n    return 2 * x\n```</think>no idea")
        code_router.close()
    finally:
        router.close()


class FakeGen:
    """Scripted responses per prompt; no tokenizer (like a remote server)."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, requests, params):
        return [Completion(text=t, token_ids=[0] * len(t), finish_reason="length" if "<think>" in t and
                           "</think>" not in t else "stop") for _ in requests for t in self.texts[:params.n]]


def test_run_eval_reports_lengths_apart(tmp_path, monkeypatch):
    import refinery.generation as generation

    texts = ["<think>so 42</think>The answer is 42.", "<think>the answer is 42</think>no", "<think>the answer is 4"]
    monkeypatch.setattr(generation, "get_generator", lambda backend, model, **kw: FakeGen(texts))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": 1, "prompt": "40+2?", "answer": "42"}) + "\n")
    res = run_eval("math", str(data), ["m"], backend="openai", n=3, ks=[1, 3], out=tmp_path / "out")
    r = res["models"]["m"]
    assert r["avg@n"] == pytest.approx(1 / 3) and r["pass@3"] == 1.0
    ln = r["lengths"]
    assert ln["thinking_chars"] == pytest.approx((5 + 16 + 15) / 3)
    assert ln["answer_chars"] == pytest.approx((len("The answer is 42.") + 2 + 0) / 3)
    assert ln["unclosed_think_rate"] == pytest.approx(1 / 3) and ln["length_stop_rate"] == pytest.approx(1 / 3)
    assert "thinking_tokens" not in ln  # no local tokenizer: characters only
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| thinking tokens | answer tokens | thinking chars |" in report and "| 12.0 |" in report


def test_eval_cli_on_an_r1_template_reads_the_open_think_from_the_tokenizer(family_ckpt, tmp_path, capsys):
    """DeepSeek-R1's template opens <think> in the prompt: a random model never writes </think>, so everything
    is thinking, cut off; the table and results say so."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"{i}+1?", "answer": str(i + 1)}) + "\n"
                            for i in range(2)))
    model = family_ckpt("deepseek-r1-qwen2")
    assert main(["eval", "math", "--data", str(data), "--model", str(model), "--n", "2", "--k", "1",
                 "--max-new-tokens", "6", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "thinking" in printed and "answer" in printed and "unclosed" in printed  # table columns (wrapped)
    ln = json.loads((tmp_path / "out" / "results.json").read_text())["models"][str(model)]["lengths"]
    assert ln["unclosed_think_rate"] == 1.0 and ln["answer_tokens"] == 0.0 and ln["thinking_tokens"] > 0
    assert main(["eval", "math", "--data", str(data), "--model", str(model), "--n", "2", "--k", "1",
                 "--max-new-tokens", "6", "--no-opens-thinking", "--out", str(tmp_path / "out2")]) == 0
    ln = json.loads((tmp_path / "out2" / "results.json").read_text())["models"][str(model)]["lengths"]
    assert ln["answer_tokens"] > 0 and ln["thinking_tokens"] == 0.0
