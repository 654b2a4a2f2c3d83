"""Stable records and schemas (issue 23.3): row ids independent of input ids, one Parquet schema per run, broken
compressed inputs as counted rejects (also on resume), _work/ removed after success."""

from __future__ import annotations

import functools
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from refinery.data.io import plan_shards, read_jsonl, read_parquet, type_name
from refinery.data.pipeline import RunSpec, Stage, output_records, run_pipeline

LONG = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat " * 3


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dedup_stages():
    from refinery.data.math_web.pipeline import DedupConfig, ExactDedup, FuzzyDedup

    return [ExactDedup(), FuzzyDedup(DedupConfig())]


def test_dedup_by_row_id_keeps_unique_documents_of_inputs_with_the_same_ids(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "alpha " + LONG}, {"id": 2, "text": "beta only in a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": 1, "text": "gamma only in b"}, {"id": 2, "text": "alpha " + LONG},
                                           {"id": 3, "text": "alpha " + LONG + " near"}])
    out = tmp_path / "out"
    stats = run_pipeline(RunSpec(dedup_stages, str(out)), plan_shards([a, b]), workers=1, progress=False)
    kept = output_records(out)
    # Input ids 1 and 2 exist in both files: only b's copies of a's document go, a's "beta" and b's "gamma" stay.
    assert [r["text"][:5] for r in kept] == ["alpha", "beta ", "gamma"]
    assert [r["id"] for r in kept] == [1, 2, 1]
    by = {s["name"]: s for s in stats["stages"]}
    assert by["dedup_exact"]["dropped"] == {"duplicate_exact": 1}
    assert by["dedup_fuzzy"]["dropped"] == {"duplicate_fuzzy": 1}
    rows = [r["_row"] for r in kept]
    assert len(set(rows)) == 3 and rows == sorted(rows)
    exact = json.loads((out / "duplicates" / "exact_clusters.jsonl").read_text())
    assert exact["kept"] == 1 and exact["kept_row"] == rows[0] and exact["removed_rows"][0].startswith("00001-")


class FanOut(Stage):
    """Two records out of each one (like chunks or question templates)."""

    name = "fan_out"

    def process(self, records):
        return [{**r, "part": k} for r in records for k in (0, 1)]


def fan_twice():
    return [FanOut(), FanOut()]


def test_records_a_stage_makes_from_one_get_their_own_row_ids(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}, {"text": "y"}])
    run_pipeline(RunSpec(fan_twice, str(tmp_path / "out")), plan_shards([a]), workers=1,
                 progress=False)
    rows = [r["_row"] for r in output_records(tmp_path / "out")]
    assert len(rows) == 8 and len(set(rows)) == 8 and rows[0] == "00000-000000000"
    assert all(r.startswith(("00000-000000000", "00000-000000001")) for r in rows)


# ---- one Parquet schema --------------------------------------------------------------------------------------
def extract_stages():
    from refinery.data.math_web.pipeline import Extract, ExtractConfig

    return [Extract(ExtractConfig(renderer="python"))]


def test_parquet_one_schema_for_a_shard_without_math_and_one_with_math(tmp_path):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    pages = tmp_path / "pages"
    pages.mkdir()
    words = "Plain words about gardening and the weather, nothing else at all. " * 3
    (pages / "a_plain.html").write_text(f"<html><body><p>{words}</p></body></html>")
    (pages / "b_math.html").write_text(f"<html><body><p>{words} The area is "
                                       "<script type='math/tex'>\\pi r^2</script>.</p></body></html>")
    out = tmp_path / "out"
    shards = plan_shards([pages], html_per_shard=1)
    assert len(shards) == 2
    stats = run_pipeline(RunSpec(extract_stages, str(out), fmt="parquet"), shards, workers=1, progress=False)
    files = sorted((out / "data").glob("*.parquet"))
    schemas = [pq.read_schema(f) for f in files]
    assert len(files) == 2 and schemas[0] == schemas[1]  # no "struct with no child field", no per-shard drift
    assert type_name(schemas[0].field("formula_sources").type) == "map<string,int64>"
    table = ds.dataset(out / "data", format="parquet").to_table()  # the folder reads as one dataset
    assert table.num_rows == 2 and table.schema == schemas[0]
    recs = output_records(out)
    assert recs[0]["formula_sources"] == {} and recs[1]["formulas"] == 1
    assert sum(recs[1]["formula_sources"].values()) == 1
    assert {f["name"]: f["type"] for f in stats["schema"]["fields"]}["formulas"] == "int64"
    assert json.loads((out / "schema.json").read_text()) == stats["schema"]
    assert not (out / "_work").exists()


def test_parquet_undeclared_fields_unified_across_shards(tmp_path):
    import pyarrow.parquet as pq

    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "score": 1, "tag": None, "meta": {}, "mixed": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "score": 2.5, "tag": "x", "meta": {"k": 1}, "mixed": "s"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"text": "c", "score": None, "tag": None, "meta": {}, "mixed": None}])
    out = tmp_path / "out"
    run_pipeline(RunSpec(list, str(out), fmt="parquet", schema={"tag": "string"}), plan_shards([a, b, c]),
                 workers=1, progress=False)
    schemas = {str(pq.read_schema(f)) for f in (out / "data").glob("*.parquet")}
    assert len(schemas) == 1
    schema = pq.read_schema(out / "data" / "shard-00000.parquet")
    assert type_name(schema.field("score").type) == "float64" and type_name(schema.field("tag").type) == "string"
    assert type_name(schema.field("mixed").type) == "string"  # int in one shard, text in another: JSON text
    desc = {f["name"]: f["type"] for f in json.loads((out / "schema.json").read_text())["fields"]}
    assert desc["mixed"] == "json"
    recs = output_records(out)
    assert [r["score"] for r in recs] == [1.0, 2.5, None] and [r["mixed"] for r in recs] == ["1", '"s"', None]


# ---- broken compressed inputs ----------------------------------------------------------------------------------
def truncated_gz(path: Path, n: int = 400) -> Path:
    data = gzip.compress("".join(json.dumps({"text": f"line {i} " + LONG}) + "\n" for i in range(n)).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_and_corrupt_compressed_inputs_are_counted_rejects(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = list(read_jsonl((str(truncated_gz(tmp_path / "t.jsonl.gz")),)))
    assert 0 < len(recs) - 1 < 400 and recs[-1]["_reject"] == "truncated_input"
    assert all("_reject" not in r for r in recs[:-1])
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"not deflate at all" * 20)
    assert [r["_reject"] for r in read_jsonl((str(bad),))] == ["corrupt_input"]
    pq.write_table(pa.table({"text": ["a"] * 1000}), tmp_path / "p.parquet")
    raw = (tmp_path / "p.parquet").read_bytes()
    (tmp_path / "p.parquet").write_bytes(raw[: len(raw) // 2])
    assert [r["_reject"] for r in read_parquet((str(tmp_path / "p.parquet"),))] == ["corrupt_input"]


class CrashOn(Stage):
    name = "crash"

    def __init__(self, flag: Path):
        self.flag = flag

    def process(self, records):
        if self.flag.exists() and any(r.get("text") == "kiwi" for r in records):
            raise KeyboardInterrupt  # the run dies (not a record error)
        return records


def crash_stages(flag):
    return [CrashOn(flag)]


def test_a_truncated_gzip_does_not_kill_the_run_nor_its_resume(tmp_path):
    (tmp_path / "in").mkdir()
    t = truncated_gz(tmp_path / "in" / "t.jsonl.gz")
    good = write_jsonl(tmp_path / "in" / "u.jsonl", [{"text": "apple"}, {"text": "kiwi"}])
    flag, out = tmp_path / "flag", tmp_path / "out"
    flag.touch()
    spec = RunSpec(functools.partial(crash_stages, flag), str(out))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, plan_shards([t, good]), workers=1, progress=False)
    flag.unlink()
    stats = run_pipeline(spec, plan_shards([t, good]), workers=1, progress=False)  # the resume finishes
    read = stats["stages"][0]
    assert read["name"] == "read" and read["dropped"] == {"truncated_input": 1}
    assert stats["records_out"] == read["kept"] and 2 < read["kept"] < 402
    rejects = [json.loads(x) for p in (out / "rejects").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert [r["_reject"] for r in rejects] == ["truncated_input"] and "t.jsonl.gz" in rejects[0]["source"]


# ---- --retry-rejects ----------------------------------------------------------------------------------------
class Flaky(Stage):
    """An LLM-like stage: records listed in the ``down`` file fail with llm_error (a server that is down);
    "spam" is rejected for good."""

    name = "flaky"

    def __init__(self, down: Path):
        self.down = down

    def process(self, records):
        down = set(self.down.read_text().split()) if self.down.exists() else set()
        return [reject_(r, "llm_error", "connection refused") if r["text"].split()[0] in down else
                reject_(r, "spam") if r["text"] == "spam" else {**r, "flaky": "ok"} for r in records]


def reject_(r, reason, detail=None):
    from refinery.data.pipeline import reject

    return reject(r, reason, detail)


def flaky_stages(down):
    from refinery.data.math_web.pipeline import ExactDedup

    return [Flaky(down), ExactDedup()]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_retry_rejects_reprocesses_only_transient_rejects(tmp_path, fmt):
    from refinery.data.pipeline import retry_rejects

    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "apple pie"}, {"text": "kiwi tart"}, {"text": "spam"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "plum jam"}, {"text": "fig roll"}, {"text": "apple pie"}])
    down, out = tmp_path / "down", tmp_path / "out"
    down.write_text("apple kiwi")  # the server fails on these
    spec = RunSpec(functools.partial(flaky_stages, down), str(out), fmt=fmt)
    first = run_pipeline(spec, plan_shards([a, b]), workers=1, progress=False)
    by = {s["name"]: s for s in first["stages"]}
    assert by["flaky"]["dropped"] == {"llm_error": 3, "spam": 1} and first["records_out"] == 2
    down.write_text("")  # the server is back
    stats = retry_rejects(spec)
    texts = [r["text"] for r in output_records(out)]
    # Retried through the rest of the pipeline: the two "apple pie" rows are exact duplicates, one is kept.
    assert sorted(texts) == ["apple pie", "fig roll", "kiwi tart", "plum jam"]
    by = {s["name"]: s for s in stats["stages"]}
    assert by["flaky"] == {**by["flaky"], "seen": 6, "kept": 5, "dropped": {"spam": 1}}
    assert by["dedup_exact"] == {**by["dedup_exact"], "seen": 5, "kept": 4, "dropped": {"duplicate_exact": 1}}
    assert stats["records_out"] == 4 and stats["retries"][-1] == {**stats["retries"][-1], "retried": 3,
                                                                  "recovered": 2,
                                                                  "rejected_again": {"duplicate_exact": 1}}
    rejects = [json.loads(x) for p in sorted((out / "rejects").glob("*.jsonl")) for x in p.read_text().splitlines()]
    assert Counter(r["_reject"] for r in rejects) == {"spam": 1, "duplicate_exact": 1}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert not (out / "_retry").exists()
    if fmt == "parquet":
        import pyarrow.dataset as ds

        assert ds.dataset(out / "data", format="parquet").to_table().num_rows == 4
    # Nothing transient left: a second retry changes nothing but its record of the attempt.
    again = retry_rejects(spec)
    assert again["records_out"] == 4 and again["retries"][-1]["retried"] == 0


def test_retry_needs_a_complete_run(tmp_path):
    from refinery.data.pipeline import retry_rejects
    from refinery.errors import DataError

    with pytest.raises(DataError, match="no complete run"):
        retry_rejects(RunSpec(list, str(tmp_path / "nothing")))


def test_retry_rejects_cli_on_a_rephrasing_run(tmp_path, monkeypatch, capsys):
    """`refinery data run … --retry-rejects` after the LLM server failed on part of a BeyondWeb run."""
    import refinery.data.recipe as recipe
    from refinery.cli import main

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": f"Document {i}: Paris has 2 million people. "
                                                  * 8} for i in range(6)])
    calls = {"n": 0}

    class Server:
        def __init__(self, up):
            self.up = up

        def generate_each(self, requests, params):
            from refinery.generation.base import Completion, GenerationError

            out = []
            for r in requests:
                calls["n"] += 1
                ok = self.up or "Document 1" not in r[0]["content"] and "Document 4" not in r[0]["content"]
                out.append([Completion("Paris has 2 million people.", [1, 2])] if ok else GenerationError("503"))
            return out

    state = {"up": False}
    monkeypatch.setattr(recipe, "make_generator", lambda g: Server(state["up"]))
    out = tmp_path / "bw"
    args = ["data", "run", "recipes/beyondweb.yaml", f"input={docs}", f"output={out}", "workers=1",
            "length_ratio=[0.0,10.0]", "--no-progress"]
    assert main(args) == 0
    assert json.loads((out / "stats.json").read_text())["records_out"] == 4
    state["up"] = True
    before = calls["n"]
    assert main(args + ["--retry-rejects"]) == 0
    assert calls["n"] - before == 2  # only the two failed documents were asked again
    assert "2 records retried, 2 recovered" in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_out"] == 6 and "llm_error" not in {s["name"]: s for s in stats["stages"]}["rephrase"][
        "dropped"]
    assert sorted(r["doc_id"] for r in output_records(out)) == list(range(6))
