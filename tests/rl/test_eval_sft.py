import json
from pathlib import Path

import pytest

from refinery.cli import main
from refinery.eval.passk import load_problems, pass_at_k, run_eval

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n,c,k,expected", [
    (2, 1, 1, 0.5), (4, 2, 2, 1 - 1 / 6), (5, 0, 3, 0.0), (5, 5, 1, 1.0), (10, 3, 1, 0.3), (16, 1, 16, 1.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_monotone_in_k():
    vals = [pass_at_k(16, 3, k) for k in (1, 2, 4, 8, 16)]
    assert vals == sorted(vals)


def test_loaders(shared_data):
    gsm = load_problems("math", str(shared_data / "gsm8k" / "test.jsonl"), limit=5)
    assert len(gsm) == 5 and gsm[0]["answer"] == "18"
    m500 = load_problems("math", str(shared_data / "math500" / "math500.json"), limit=3)
    assert m500[0]["answer"].startswith("\\left( 3")
    he = load_problems("code", str(shared_data / "humaneval" / "HumanEval.jsonl.gz"), limit=2)
    assert he[0]["tests"]["kind"] == "functional"
    aime = load_problems("math", str(shared_data / "aime" / "aime2025.jsonl"))
    assert len(aime) == 30


def test_procedural_tasks_and_bad_files(tmp_path):
    items = load_problems("math", "tasks:arithmetic", limit=20)
    assert len(items) == 20 and all(it["task"] == "arithmetic" for it in items)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x"}\n')
    with pytest.raises(Exception, match="needs a problem"):
        load_problems("math", str(bad))
    with pytest.raises(Exception, match="does not exist"):
        load_problems("math", str(tmp_path / "none.jsonl"))


def test_eval_two_models_side_by_side(alphabet_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"id": i, "prompt": "a b c", "answer": "d"}) for i in range(4)) + "\n")
    res = run_eval("math", str(data), [str(alphabet_model), str(alphabet_model)], n=4, ks=[1, 2, 4],
                   temperature=1.0, max_new_tokens=4, template="{problem}", out=tmp_path / "out")
    (r,) = {json.dumps(v, sort_keys=True) for v in res["models"].values()}  # same model, same seed: same numbers
    r = json.loads(r)
    assert r["pass@1"] <= r["pass@2"] <= r["pass@4"]
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "passk.png").exists()


def test_eval_cli_checks_k(capsys, alphabet_model):
    assert main(["eval", "math", "--data", "tasks:arithmetic", "--model", str(alphabet_model), "--n", "2",
                 "--k", "1,4"]) == 2
    assert "between 1 and --n" in capsys.readouterr().err


def test_sft_on_jsonl_with_packing(tmp_path, alphabet_model, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"say {w}", "response": w}) for w in ["yes", "no"] * 20) + "\n")
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"init_from: {alphabet_model}\ndata:\n  source: jsonl\n  jsonl_files: [{data}]\n"
                      "  packing: true\n  seq_len: 64\ntrainer: {steps: 10, batch_size: 4, warmup_steps: 1, "
                      "eval_every: 5, checkpoint_every: 5, eval_batches: 1}\n")
    assert main(["sft", "train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["pretrain.steps"] == 10 and (tmp_path / "run" / "model" / "config.json").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    recipe.write_text(f"init_from: {alphabet_model}\ndata: {{source: jsonl, jsonl_files: [{bad}]}}\n")
    assert main(["sft", "train", str(recipe), "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    assert "line 1: needs 'response'" in capsys.readouterr().err
    bad.write_text('{"prompt": "x", "response": "y"}\n{"messages": [{"content": "hi"}], "response": "y"}\n')
    assert main(["sft", "train", str(recipe), "--out", str(tmp_path / "run3"), "--no-progress"]) == 2
    assert "line 2: 'messages' must be a non-empty list" in capsys.readouterr().err


def test_eval_is_as_strict_as_the_rl_reward():
    """eval used to fall back to the last number of a response, which the RL reward does not: the same response
    must score the same in both."""
    from refinery.eval.passk import _scorer
    from refinery.rl.rewards import RewardRouter

    score, router = _scorer("math")
    problem = {"id": "p-1", "prompt": "What is 3+4?", "answer": "7"}
    rl = RewardRouter()
    for response in ("3+4 gives 7", "The answer is 7.", "\\boxed{7}", "The answer is 8, not 7"):
        assert score(problem, response) == rl(problem, response)[1], response
    assert not score(problem, "3+4 gives 7") and score(problem, "The answer is 7.")
    router.close()
    rl.close()
