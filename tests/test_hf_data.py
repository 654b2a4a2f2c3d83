"""Bring your own data (refinery.sources): every wing reads a save_to_disk dataset and Parquet with renamed
columns into the same records as the equivalent JSONL; the error cases name the column, the file and the splits."""

from __future__ import annotations

import json
import sys

import pytest

datasets = pytest.importorskip("datasets")

from refinery.cli import main  # noqa: E402
from refinery.config import load_config  # noqa: E402
from refinery.errors import DataError  # noqa: E402
from refinery.runs import RunDir  # noqa: E402
from refinery.sources import DataSource, read_records, read_rows  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    """Parquet/CSV loads build an Arrow cache: keep it out of the user's ~/.cache/huggingface."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _renamed(records, names):
    return [{names.get(k, k): v for k, v in r.items()} for r in records]


def _as_dataset(tmp_path, records, names, stem):
    """(save_to_disk DatasetDict dir with train/test, Parquet file) of ``records`` with columns renamed."""
    ds = datasets.Dataset.from_list(_renamed(records, names))
    folder = tmp_path / "saved" / stem  # its name is the source's default name, as a file's stem is
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(folder))
    parquet = tmp_path / f"{stem}.parquet"
    ds.to_parquet(str(parquet))
    return folder, parquet


# ---- the loader ---------------------------------------------------------------------------------------------
def test_sources_read_dirs_files_folders_and_map_columns(tmp_path):
    recs = [{"q": f"{i}+1", "sol": str(i + 1), "meta": {"src": f"doc{i % 2}"}} for i in range(5)]
    folder, parquet = _as_dataset(tmp_path, recs, {}, "s")
    cols = {"prompt": "q", "answer": "sol", "source": "meta.src"}
    want = [{"prompt": r["q"], "answer": r["sol"], "source": r["meta"]["src"]} for r in recs]
    assert read_records(DataSource(path=str(folder), split="train", columns=cols)) == want
    assert read_records(DataSource(path=str(parquet), columns=cols)) == want
    assert read_records(DataSource(path=str(_jsonl(tmp_path / "s.jsonl", recs)), columns=cols)) == want
    assert read_records(DataSource(path=str(parquet), columns=cols, limit=2)) == want[:2]
    # a folder of files: splits from the file names, as datasets infers them
    files = tmp_path / "files"
    files.mkdir()
    datasets.Dataset.from_list(recs[:3]).to_parquet(str(files / "train.parquet"))
    datasets.Dataset.from_list(recs[3:]).to_parquet(str(files / "test.parquet"))
    assert read_records(DataSource(path=str(files), split="test", columns=cols)) == want[3:]
    # CSV and a plain Dataset directory
    datasets.Dataset.from_list([{"q": "1+1", "sol": "2"}]).to_csv(str(tmp_path / "c.csv"), index=False)
    assert read_records(DataSource(path=str(tmp_path / "c.csv"), columns={"prompt": "q"})) == [
        {"prompt": "1+1", "sol": 2}]
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "plain"))
    assert read_records(str(tmp_path / "plain")) == recs
    # the CLI spelling
    src = DataSource.from_cli(str(folder), split="test", columns=["prompt=q", "answer=sol"])
    assert src == DataSource(path=str(folder), split="test", columns={"prompt": "q", "answer": "sol"})
    assert DataSource.from_cli("hf:openai/gsm8k", split="test", subset="main").hub == "openai/gsm8k"


def test_source_errors_name_the_column_the_file_and_the_splits(tmp_path, monkeypatch):
    recs = [{"q": "1+1", "sol": "2"}, {"q": "2+2", "sol": "4"}, {"q": "3+3", "sol": "6"}]
    folder, parquet = _as_dataset(tmp_path, recs, {}, "e")
    with pytest.raises(DataError, match=rf"column 'question' \(mapped to 'prompt'\) is not in {parquet}; its "
                                        r"columns: q, sol"):
        read_rows(DataSource(path=str(parquet), columns={"prompt": "question"}))
    with pytest.raises(DataError, match=r"column 'question' \(mapped to 'prompt'\) is not in .*e\.jsonl line 1; "
                                        r"its columns: q, sol"):
        read_rows(DataSource(path=str(_jsonl(tmp_path / "e.jsonl", recs)), columns={"prompt": "question"}))
    with pytest.raises(DataError, match=r"has no split 'valid'; its splits: train, test"):
        read_rows(DataSource(path=str(folder), split="valid"))
    with pytest.raises(DataError, match=r"has splits train, test: choose one"):
        read_rows(DataSource(path=str(folder)))
    with pytest.raises(DataError, match=r"has no column for 'prompt'; its columns: q, sol.*columns: \{prompt:"):
        read_rows(str(parquet), required=["prompt"])
    with pytest.raises(DataError, match="does not exist"):
        read_rows(str(tmp_path / "missing.parquet"))
    with pytest.raises(DataError, match="unknown data file type '.txt'"):
        (tmp_path / "x.txt").write_text("hi")
        read_rows(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="exactly one of path"):
        DataSource(columns={"prompt": "q"})
    from refinery.errors import ConfigError
    from refinery.rl.config import RLConfig

    with pytest.raises(ConfigError, match=r"unknown key 'data.files.0.colums'; did you mean 'data.files.0.columns'"):
        load_config(RLConfig, None, ["data.files=[{path: x.parquet, colums: {prompt: q}}]"])
    with pytest.raises(DataError, match="expected FIELD=COLUMN"):
        DataSource.from_cli("x.parquet", columns=["prompt"])
    # the hub: offline (as here) a clear error, not a hang or a traceback
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"hub dataset someone/no-such-dataset.*could not be loaded.*(cache|access)"):
        read_rows(DataSource(hub="someone/no-such-dataset", split="train"))
    # `datasets` is imported lazily: JSONL needs nothing extra; a columnar source says what to install
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert read_records(str(tmp_path / "e.jsonl")) == recs
    with pytest.raises(DataError, match="needs the 'datasets' package"):
        read_rows(str(parquet))


# ---- RL prompts ---------------------------------------------------------------------------------------------
RL_ITEMS = [{"prompt": f"Compute {a}+{b}", "answer": str(a + b), "domain": "math", "source": f"d{a}"}
            for a in range(1, 6) for b in range(1, 4)]


def test_rl_prompts_from_a_dataset_and_parquet_equal_the_jsonl(tmp_path, alphabet_model):
    from refinery.rl.config import RLConfig
    from refinery.rl.trainer import file_items, load_items, train_rl

    names = {"prompt": "question", "answer": "solution"}
    folder, parquet = _as_dataset(tmp_path, RL_ITEMS, names, "sums")
    cols = {"prompt": "question", "answer": "solution"}
    want = file_items([str(_jsonl(tmp_path / "sums.jsonl", RL_ITEMS))])
    assert file_items([DataSource(path=str(folder), split="train", columns=cols)]) == want
    assert file_items([DataSource(path=str(parquet), columns=cols)]) == want
    assert file_items([DataSource(path=str(parquet), columns=cols, name="mine")])["mine"][0]["task"] == "mine"
    with pytest.raises(DataError, match="has no column for 'prompt'"):
        file_items([str(parquet)])
    # the recipe syntax, one RL step on it
    recipe = tmp_path / "rl.yaml"
    recipe.write_text(f"policy: {{path: {alphabet_model}}}\ndata:\n  tasks: []\n  heldout_per_task: 3\n"
                      f"  valid_per_task: 2\n  files:\n    - path: {folder}\n      split: train\n"
                      "      columns: {prompt: question, answer: solution}\n"
                      "rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 4}\n"
                      "trainer: {steps: 1, eval_every: 1, checkpoint_every: 1, eval_prompts: 2, threads: 1}\n"
                      "eval: {max_new_tokens: 4}\n")
    cfg = load_config(RLConfig, recipe, [])
    train, held, valid = load_items(cfg)
    jcfg = load_config(RLConfig, recipe, [f"data.files=[{tmp_path / 'sums.jsonl'}]"])
    assert (train, held, valid) == load_items(jcfg)
    summary = train_rl(cfg, RunDir.create(cfg, "rl", out=tmp_path / "run"), progress=False)
    assert summary["rl.steps"] == 1 and "rl.accuracy.sums_after" in summary


# ---- SFT ----------------------------------------------------------------------------------------------------
SFT_ITEMS = [{"prompt": f"say {w}", "response": w} for w in ["yes", "no", "maybe"] * 8]


def test_sft_from_a_dataset_and_parquet_trains_as_the_jsonl(tmp_path, alphabet_model, capsys):
    folder, parquet = _as_dataset(tmp_path, SFT_ITEMS, {"prompt": "instruction", "response": "output"}, "sft")
    jsonl = _jsonl(tmp_path / "sft.jsonl", SFT_ITEMS)
    common = (f"init_from: {alphabet_model}\nseed: 3\ntrainer: {{steps: 3, batch_size: 4, warmup_steps: 1, "
              "eval_every: 3, checkpoint_every: 3, eval_batches: 1, threads: 1}\neval: {n_per_task: 0}\n")
    runs = {}
    for name, data in [("jsonl", f"data: {{source: jsonl, jsonl_files: [{jsonl}], seq_len: 32}}\n"),
                       ("dataset", f"data:\n  source: datasets\n  seq_len: 32\n  datasets:\n    - path: {folder}\n"
                                   "      split: train\n      columns: {prompt: instruction, response: output}\n"),
                       ("parquet", f"data:\n  source: datasets\n  seq_len: 32\n  datasets:\n    - path: {parquet}\n"
                                   "      columns: {prompt: instruction, response: output}\n")]:
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(common + data)
        assert main(["sft", "train", str(recipe), "--out", str(tmp_path / name), "--no-progress"]) == 0, \
            capsys.readouterr().err
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    for name in ("dataset", "parquet"):
        records = [json.loads(line) for line in (tmp_path / name / "data" / "sft.jsonl").read_text().splitlines()]
        assert records == SFT_ITEMS
        for key in ("pretrain.final_loss", "pretrain.eval_loss"):  # the same examples, the same training
            assert runs[name][key] == runs["jsonl"][key]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(common + f"data: {{source: datasets, datasets: [{{path: {parquet}, columns: "
                               "{prompt: instr, response: output}}]}\n")
    assert main(["sft", "train", str(recipe), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "column 'instr' (mapped to 'prompt') is not in" in capsys.readouterr().err


# ---- reward models: pairs and ratings -----------------------------------------------------------------------
def test_rm_pairs_and_ratings_from_a_dataset_and_parquet_equal_the_jsonl(tmp_path, alphabet_model, capsys):
    from refinery.reward_models.config import RMConfig
    from refinery.reward_models.data import load_attributes, load_pairs
    from refinery.reward_models.synthetic import synthetic_pairs
    from refinery.reward_models.train import load_data, train_rm

    pairs = [{k: p[k] for k in ("id", "prompt", "chosen", "rejected", "strength")}
             for p in synthetic_pairs(40, seed=0, missing=0.0)]
    names = {"chosen": "response_a", "rejected": "response_b", "strength": "margin"}
    folder, parquet = _as_dataset(tmp_path, pairs, names, "prefs")
    cols = {"chosen": "response_a", "rejected": "response_b", "strength": "margin"}
    jsonl = _jsonl(tmp_path / "prefs.jsonl", pairs)
    want = load_pairs(str(jsonl))
    assert load_pairs(DataSource(path=str(folder), split="train", columns=cols)) == want
    assert load_pairs(DataSource(path=str(parquet), columns=cols)) == want
    with pytest.raises(DataError, match=r"prefs\.parquet row 0: unknown preference format.*its fields: id, prompt, "
                                        r"response_a"):
        load_pairs(str(parquet))
    ratings = [{"prompt": p["prompt"], "response": p["chosen"], "helpfulness": 3.0} for p in pairs[:5]]
    _, rparquet = _as_dataset(tmp_path, ratings, {"response": "answer", "helpfulness": "score"}, "ratings")
    assert load_attributes(DataSource(path=str(rparquet), columns={"response": "answer", "helpfulness": "score"})) \
        == load_attributes(str(_jsonl(tmp_path / "ratings.jsonl", ratings)))
    # the recipe syntax: train_file as a data source; one tiny BT stage on it
    over = [f"backbone.path={alphabet_model}", "pipeline=[bt]", "data.source=files", "trainer.batch_pairs=8",
            "trainer.epochs=0.5", "trainer.eval_every=50", "trainer.checkpoint_every=50", "trainer.max_length=64",
            "trainer.threads=1"]
    cfg = load_config(RMConfig, None, over + [f"data.train_file={{path: {folder}, split: train, columns: "
                                              "{chosen: response_a, rejected: response_b, strength: margin}}"])
    assert load_data(cfg) == load_data(load_config(RMConfig, None, over + [f"data.train_file={jsonl}"]))
    summary = train_rm(cfg, RunDir.create(cfg, "rm", out=tmp_path / "rm"), progress=False)
    assert summary["rm.pipeline"] == "bt" and 0 <= summary["rm.bt.accuracy"] <= 1
    # rm eval reads the Parquet with renamed columns from the command line
    assert main(["rm", "eval", "--model", str(tmp_path / "rm" / "model"), "--data", str(parquet), "--column",
                 "chosen=response_a", "--column", "rejected=response_b", "--column", "strength=margin",
                 "--out", str(tmp_path / "rmeval")]) == 0
    assert json.loads((tmp_path / "rmeval" / "summary.json").read_text())["n"] == len(pairs)


# ---- eval ---------------------------------------------------------------------------------------------------
def test_eval_problems_from_a_dataset_and_parquet_equal_the_jsonl(tmp_path, alphabet_model):
    from refinery.eval.passk import load_problems

    probs = [{"id": f"p{i}", "question": "a b c", "solution": "d"} for i in range(4)]
    folder, parquet = _as_dataset(tmp_path, probs, {}, "bench")
    want = load_problems("math", str(_jsonl(tmp_path / "bench.jsonl", _renamed(probs, {"solution": "answer"}))))
    assert load_problems("math", DataSource(path=str(folder), split="train", columns={"answer": "solution"})) == want
    assert load_problems("math", DataSource(path=str(parquet), columns={"answer": "solution"})) == want
    with pytest.raises(DataError, match=r"bench\.parquet row 0: needs a problem/question/prompt and an answer"):
        load_problems("math", str(parquet))
    out = tmp_path / "out"
    assert main(["eval", "math", "--data", str(folder), "--split", "test", "--column", "answer=solution",
                 "--model", str(alphabet_model), "--n", "2", "--k", "1,2", "--max-new-tokens", "4",
                 "--template", "{problem}", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["problems"] == 2 and res["data"] == f"{folder}[test]"


def test_eval_cli_unknown_split_lists_the_splits(tmp_path, alphabet_model, capsys):
    folder, _ = _as_dataset(tmp_path, [{"question": "a", "answer": "b"}] * 3, {}, "b")
    assert main(["eval", "math", "--data", str(folder), "--split", "validation", "--model", str(alphabet_model),
                 "--n", "1", "--k", "1"]) == 2
    assert "has no split 'validation'; its splits: train, test" in capsys.readouterr().err


def test_eval_ppl_reads_a_text_column_as_the_joined_text_file(tmp_path, alphabet_model, capsys):
    from refinery.eval.perplexity import eval_ppl

    lines = [" ".join("abcdefghijklmnopqrstuvwxyz")] * 6 + ["z y x w v"]
    txt = tmp_path / "t.txt"
    txt.write_text("\n\n".join(lines))
    _, parquet = _as_dataset(tmp_path, [{"content": line} for line in lines], {}, "wiki")
    want = eval_ppl(alphabet_model, txt, seq_len=16)
    assert eval_ppl(alphabet_model, DataSource(path=str(parquet), columns={"text": "content"}), seq_len=16) == want
    assert main(["eval", "ppl", "--model", str(alphabet_model), "--text", str(parquet), "--column", "text=content",
                 "--seq-len", "16"]) == 0
    assert f"ppl {want['ppl']:.3f}" in capsys.readouterr().out
    with pytest.raises(DataError, match="has no column for 'text'; its columns: content"):
        eval_ppl(alphabet_model, str(parquet), seq_len=16)


def test_sft_examples_keep_chat_messages_from_parquet(tmp_path):
    from refinery.rl.sft import sft_examples

    chats = [{"conversation": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"say {w}"}],
              "reply": w} for w in ["yes", "no"]]
    _, parquet = _as_dataset(tmp_path, chats, {}, "chats")
    got = sft_examples([DataSource(path=str(parquet), columns={"messages": "conversation", "response": "reply"})])
    assert got == [{"messages": c["conversation"], "response": c["reply"]} for c in chats]
    with pytest.raises(DataError, match=r"has no column for 'response'; its columns: conversation, reply"):
        sft_examples([DataSource(path=str(parquet), columns={"messages": "conversation"})])
