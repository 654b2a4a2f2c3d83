import json

import pytest

from refinery.cli import main
from refinery.generation import GenerationError, get_generator
from refinery.generation.vllm import vllm_available


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_generate_file_hf_with_rejects_and_resume(tmp_path, alphabet_model, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": 1, "prompt": "a b c", "meta": "kept"},
                      {"id": 2, "messages": [{"role": "user", "content": "x"}]},
                      "{broken json",
                      {"id": 1, "prompt": "again"},
                      {"prompt": "no id"},
                      {"id": 3, "prompt": "a " * 300}])  # longer than the model's context
    args = ["generate", "--backend", "hf", "--model", str(alphabet_model), "--input", str(inp), "--output",
            str(out), "--temperature", "0", "--max-new-tokens", "6", "--n", "2", "--no-progress"]
    assert main(args) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["meta"] == "kept" and len(rows[0]["completions"]) == 2
    assert rows[0]["completions"][0]["text"].startswith(" d e")
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    reasons = " | ".join(r["reason"] for r in rejects)
    assert len(rejects) == 4 and "malformed JSON" in reasons and "duplicate id" in reasons
    assert "missing 'id'" in reasons and "context" in reasons
    capsys.readouterr()
    assert main(args) == 0  # a re-run does nothing new
    assert "0 generated, 2 already done" in capsys.readouterr().out
    assert len(read_jsonl(out)) == 2


def test_a_line_cut_by_a_crash_is_redone(tmp_path, alphabet_model):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": i, "prompt": "a b"} for i in range(3)])
    out.write_text(json.dumps({"id": 0, "completions": []}) + "\n" + '{"id": 1, "compl')
    assert main(["generate", "--model", str(alphabet_model), "--input", str(inp), "--output", str(out),
                 "--max-new-tokens", "3", "--no-progress"]) == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == [0, 1, 2]


def test_generate_through_openai_backend(tmp_path, server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": f"r{i}", "prompt": "a b c"} for i in range(10)])
    assert main(["generate", "--backend", "openai", "--model", "tiny", "--base-url", server.url, "--input",
                 str(inp), "--output", str(out), "--temperature", "0", "--max-new-tokens", "4", "--logprobs",
                 "--concurrency", "4", "--no-progress"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 10 and all(len(r["completions"][0]["logprobs"]) == 4 for r in rows)


def test_all_failed_is_an_error_with_rejects(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": 1, "prompt": "hi"}])
    code = main(["generate", "--backend", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                 "--max-retries", "0", "--input", str(inp), "--output", str(out), "--no-progress"])
    assert code == 2 and "every request failed" in capsys.readouterr().err
    assert "connection error" in read_jsonl(tmp_path / "out.rejects.jsonl")[0]["reason"]


def test_missing_input_and_bad_backend(tmp_path, capsys):
    assert main(["generate", "--model", "x", "--input", str(tmp_path / "none.jsonl"), "--output",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(GenerationError, match="unknown backend"):
        get_generator("tgi", "m")


@pytest.mark.skipif(vllm_available(), reason="checks the message shown where vLLM/CUDA is absent")
def test_vllm_backend_without_cuda_is_a_clear_error():
    with pytest.raises(GenerationError, match="vllm backend needs"):
        get_generator("vllm", "some/model")


@pytest.mark.gpu
@pytest.mark.skipif(not vllm_available(), reason="needs vLLM and a CUDA GPU")
def test_vllm_backend_generates(alphabet_model):
    from refinery.generation import SamplingParams

    gen = get_generator("vllm", str(alphabet_model), gpu_memory_utilization=0.2)
    out = gen.generate(["a b c"], SamplingParams(temperature=0, max_new_tokens=6, logprobs=True))
    assert out[0].text.startswith(" d e") and len(out[0].logprobs) == len(out[0].token_ids)
