"""Data engine: counts and rejects per stage, a failing record never kills a run, resume by shard, local = Ray,
readers on broken input, dedup, decontamination, the Nemotron-CC-Math recipe through the CLI."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from refinery.data.io import plan_shards, read_jsonl, read_shard, read_warc
from refinery.data.pipeline import GlobalStage, RunSpec, Stage, output_records, reject, run_pipeline


class Upper(Stage):
    name, adds = "upper", ("shout",)

    def process(self, records):
        out = []
        for r in records:
            if r["text"] == "boom":
                raise ValueError("cannot shout boom")
            out.append({**r, "shout": r["text"].upper()} if r["text"] != "drop me" else reject(r, "unwanted"))
        return out


class KeepFirstLetter(GlobalStage):
    """Toy global stage: keep only the first record (corpus order) of each first letter."""

    name = "first_letter"

    def collect(self, records):
        return [(r["id"], r["text"][:1]) for r in records]

    def decide(self, summaries, out_dir):
        seen, drop = set(), set()
        for rid, letter in sorted(x for s in summaries for x in s):
            (drop.add(rid) if letter in seen else seen.add(letter))
        return drop

    def apply(self, records, drop):
        return [reject(r, "dup_letter") if r["id"] in drop else r for r in records]


def toy_stages():
    return [Upper(), KeepFirstLetter()]


def write_inputs(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    texts = [["apple", "boom", "drop me", "cherry"], ["avocado", "banana", "kiwi"], ["blueberry", "date"]]
    for i, chunk in enumerate(texts):
        p = root / f"part{i}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk) + "{not json\n")
        files.append(p)
    return files


def test_counts_rejects_and_global_stage(tmp_path):
    files = write_inputs(tmp_path / "in")
    spec = RunSpec(toy_stages, str(tmp_path / "out"), batch_size=2)
    stats = run_pipeline(spec, plan_shards(files), workers=1, progress=False)
    by = {s["name"]: s for s in stats["stages"]}
    assert by["read"] == {**by["read"], "seen": 12, "kept": 9, "dropped": {"bad_json": 3}}
    assert by["upper"]["dropped"] == {"error": 1, "unwanted": 1} and by["upper"]["kept"] == 7
    assert by["first_letter"]["dropped"] == {"dup_letter": 2}  # avocado, blueberry
    kept = [r["text"] for r in output_records(tmp_path / "out")]
    assert kept == ["apple", "cherry", "banana", "kiwi", "date"]
    rejects = [json.loads(line) for p in sorted((tmp_path / "out" / "rejects").glob("*.jsonl"))
               for line in p.read_text().splitlines()]
    boom = next(r for r in rejects if r.get("text") == "boom")
    assert boom["_reject"] == "error" and "cannot shout boom" in boom["_detail"] and boom["_stage"] == "upper"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["records_out"] == 5


class Crash(BaseException):
    """Stands for the process dying (not an Exception: the engine does not catch it)."""


class CrashOnKiwi(Stage):
    name = "crash"

    def __init__(self, flag: Path):
        self.flag = flag

    def process(self, records):
        if self.flag.exists() and any(r["text"] == "kiwi" for r in records):
            raise Crash
        return records


def crashing_stages(flag: Path):
    return [Upper(), KeepFirstLetter(), CrashOnKiwi(flag)]


def test_resume_skips_finished_shards_and_a_complete_run_is_not_redone(tmp_path):
    files = write_inputs(tmp_path / "in")
    out, flag = tmp_path / "out", tmp_path / "crash"
    flag.touch()
    spec = RunSpec(functools.partial(crashing_stages, flag), str(out))
    with pytest.raises(Crash):  # shard 1 of the last segment dies; shard 0 is finished
        run_pipeline(spec, plan_shards(files), workers=1, progress=False)
    assert (out / "_work").is_dir() and not (out / "stats.json").exists()
    before = {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    assert list(before) == [out / "data" / "shard-00000.jsonl"]
    flag.unlink()
    stats = run_pipeline(spec, plan_shards(files), workers=1, progress=False)
    after = {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    assert after[out / "data" / "shard-00000.jsonl"] == before[out / "data" / "shard-00000.jsonl"]
    assert [r["text"] for r in output_records(out)] == ["apple", "cherry", "banana", "kiwi", "date"]
    # Done: _work/ is gone, stats.json says complete, and the same run again changes nothing.
    assert stats["complete"] and not (out / "_work").exists()
    flag.touch()  # would crash if anything ran again
    assert run_pipeline(spec, plan_shards(files), workers=1, progress=False) == stats
    assert {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == after


def test_process_pool_matches_serial(tmp_path):
    files = write_inputs(tmp_path / "in")
    serial = RunSpec(toy_stages, str(tmp_path / "serial"))
    run_pipeline(serial, plan_shards(files), workers=1, progress=False)
    pool = RunSpec(toy_stages, str(tmp_path / "pool"))
    run_pipeline(pool, plan_shards(files), workers=2, progress=False)
    assert output_records(tmp_path / "pool") == output_records(tmp_path / "serial")


def test_ray_executor_matches_local_on_real_pages(shared_data, tmp_path):
    pytest.importorskip("ray", reason="ray is part of the test install (pip install 'ray[data]')")
    from refinery.config import load_config
    from refinery.data.math_web.pipeline import MathCCConfig, build_stages

    outs = {}
    for executor in ("local", "ray"):
        cfg = load_config(MathCCConfig, "recipes/nemotron_cc_math.yaml", [
            f"input=[{shared_data / 'readability-math'},{shared_data / 'warc'}]", f"output={tmp_path / executor}",
            f"decontaminate.files=[{shared_data / 'decont' / 'gsm8k_test.jsonl'}]", "extract.renderer=python",
            "html_per_shard=2", "workers=2", f"executor={executor}"])
        spec = RunSpec(functools.partial(build_stages, cfg), cfg.output)
        stats = run_pipeline(spec, plan_shards(cfg.input, cfg.html_per_shard), executor, 2, progress=False)
        assert stats["executor"] == executor
        outs[executor] = output_records(cfg.output)
    assert len(outs["local"]) > 15 and outs["ray"] == outs["local"]


def test_jsonl_split_into_byte_range_shards(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"text": f"item{i}"}) + "\n" for i in range(25)))
    shards = plan_shards([src], shard_bytes=100)
    size = src.stat().st_size
    assert len(shards) == -(-size // 100) and shards[0].start == 0 and shards[-1].stop == size
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))  # byte ranges, no line counting
    spec = RunSpec(list, str(tmp_path / "out"))  # no stages: read and write only
    run_pipeline(spec, shards, workers=1, progress=False)
    out = output_records(tmp_path / "out")
    assert [r["text"] for r in out] == [f"item{i}" for i in range(25)]  # every line once, in order
    assert out[3]["source"] == f"{src}@{3 * len(json.dumps({'text': 'item0'}) + chr(10))}"  # the line's offset


def test_parquet_input_and_a_hung_renderer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from refinery.data.math_web.pipeline import Extract, ExtractConfig

    src = tmp_path / "pages.parquet"
    pq.write_table(pa.Table.from_pylist([{"source": "u1", "html": "<p>one $x$ " + "word " * 20 + "</p>"},
                                         {"source": "u2", "html": "<p>two</p>"}]), src)
    recs = list(read_shard(plan_shards([src])[0]))
    assert [r["source"] for r in recs] == ["u1", "u2"]
    out = Extract(ExtractConfig(renderer="python", min_chars=10)).process(recs)
    assert "$x$" in out[0]["text"] and out[1]["_reject"] == "empty_text"
    from refinery.data.math_web.html import lynx_available

    if lynx_available():  # a renderer that hangs is killed at the timeout and the page rejected, not waited on
        slow = Extract(ExtractConfig(renderer="lynx", timeout=0.001)).process(recs[:1])
        assert slow[0]["_reject"] == "render_failed" and "timed out" in slow[0]["_detail"]


def test_parquet_output(tmp_path):
    files = write_inputs(tmp_path / "in")
    spec = RunSpec(toy_stages, str(tmp_path / "pq"), fmt="parquet")
    run_pipeline(spec, plan_shards(files), workers=1, progress=False)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq" / "data" / "shard-00000.parquet")
    assert table.column("shout").to_pylist() == ["APPLE", "CHERRY"]


def test_readers_on_broken_input(shared_data, tmp_path):
    warc = shared_data / "warc"
    # Truncated / clipped / chunked WARCs: readable records come out, the rest is a counted reject.
    assert [r["source"] for r in read_warc((str(warc / "warcio__example-iana.org-chunked.warc"),))] == \
        ["http://www.iana.org/"]
    chunked = next(read_warc((str(warc / "warcio__example-iana.org-chunked.warc"),)))
    assert "<html" in chunked["html"].lower() and "\r\n1c" not in chunked["html"][:50]  # de-chunked
    assert len(list(read_warc((str(warc / "resiliparse__clipped.warc.gz"),)))) >= 1
    trunc = tmp_path / "trunc.warc.gz"
    data = (warc / "resiliparse__warcfile.warc.gz").read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    recs = list(read_warc((str(trunc),)))
    good = [r for r in recs if "_reject" not in r]
    assert 1 <= len(good) < 16  # the first half is read; the file ending mid-record does not crash the reader
    garbage = tmp_path / "garbage.warc"
    garbage.write_bytes(b"this is not a warc file\r\n\r\n" * 10)
    assert all("_reject" in r for r in read_warc((str(garbage),)))
    j = tmp_path / "x.json"
    j.write_text(json.dumps([{"html": "<p>a</p>"}, 3]))
    assert [r.get("_reject") for r in read_jsonl((str(j),))] == [None, "not_an_object"]


# ---- dedup and decontamination -------------------------------------------------------------------------------
def test_minhash_finds_near_duplicates_and_keeps_the_first():
    from refinery.data.text.dedup import exact_key, jaccard, lsh_clusters, minhash, permutations

    rng = np.random.default_rng(0)
    words = [" ".join(rng.choice(list("abcdefghij"), 6)) for _ in range(400)]
    base = " ".join(words[:200])
    near = base.replace(words[10], "zzzzzz", 1)  # a one-word edit
    other = " ".join(words[200:])
    a, b = permutations(260)
    sigs = np.stack([minhash(t, a, b) for t in (base, other, near, base.upper())])
    assert jaccard(sigs[0], sigs[2]) > 0.9 and jaccard(sigs[0], sigs[1]) < 0.2
    clusters = lsh_clusters(["d0", "d1", "d2", "d3"], sigs, 20, 13, 0.8)
    assert clusters == [["d0", "d2", "d3"]]
    assert exact_key("Hello   World") == exact_key("hello world")


def test_jaccard_estimate_is_unbiased():
    from refinery.data.text.dedup import jaccard, minhash, permutations, shingles

    x = "the quick brown fox jumps over the lazy dog " * 3 + "and then some more words to make it long enough"
    y = x[:80] + " different ending for this document that shares only the beginning with the other one"
    sx, sy = set(shingles(x, 5).tolist()), set(shingles(y, 5).tolist())
    true = len(sx & sy) / len(sx | sy)
    a, b = permutations(1024, seed=3)
    assert abs(jaccard(minhash(x, a, b, 5), minhash(y, a, b, 5)) - true) < 0.06


def test_decontamination_finds_benchmark_items(shared_data):
    from refinery.data.text.decontam import build_index, read_benchmark

    idx = build_index([shared_data / "decont"], n=13)
    q = read_benchmark(shared_data / "decont" / "gsm8k_test.jsonl")[5]
    doc = "Some forum post. " + q + " Anyone know the answer?"
    assert ("gsm8k_test", 5) in idx.matches(doc)
    assert not idx.matches("A page about prime numbers and the sieve of Eratosthenes, with no test questions.")


def test_math_cc_recipe_end_to_end(shared_data, tmp_path):
    from refinery.cli import main
    from refinery.data.text.decontam import read_benchmark

    pages = tmp_path / "pages"
    pages.mkdir()
    q = read_benchmark(shared_data / "decont" / "gsm8k_test.jsonl")[0]
    body = "<p>The area of a circle is <script type='math/tex'>\\pi r^2</script>. " + "Geometry is fun. " * 20
    (pages / "a.html").write_text(f"<html><body>{body}</p></body></html>")
    (pages / "a_copy.html").write_text(f"<html><body>{body}</p></body></html>")
    (pages / "a_near.html").write_text(f"<html><body>{body} Extra.</p></body></html>")
    more = "<p>More text here.</p>" * 5
    (pages / "leak.html").write_text(f"<html><body><p>Homework help: {q}</p>{more}</body></html>")
    (pages / "tiny.html").write_text("<html><body>hi</body></html>")
    out = tmp_path / "out"
    args = ["data", "run", "recipes/nemotron_cc_math.yaml", f"input=[{pages}]", f"output={out}",
            f"decontaminate.files=[{shared_data / 'decont'}]", "--no-progress"]
    assert main(args) == 0
    recs = output_records(out)
    assert [Path(r["source"]).name for r in recs] == ["a.html"]
    assert "$\\pi r^2$" in recs[0]["text"]
    stats = json.loads((out / "stats.json").read_text())
    by = {s["name"]: s for s in stats["stages"]}
    assert by["extract"]["dropped"] == {"empty_text": 1}
    assert by["dedup_exact"]["dropped"] == {"duplicate_exact": 1}
    assert by["dedup_fuzzy"]["dropped"] == {"duplicate_fuzzy": 1}
    assert by["decontaminate"]["dropped"] == {"contaminated": 1}
    assert stats["decontamination"]["per_benchmark"] == {"gsm8k_test": 1}
    clusters = [json.loads(line) for line in (out / "duplicates" / "minhash_clusters.jsonl").read_text().splitlines()]
    assert len(clusters) == 1 and Path(clusters[0]["removed_sources"][0]).name == "a_near.html"
    # Same command again: everything is done, nothing is redone; a different config is refused.
    assert main(args) == 0
    assert main(args + ["dedup.threshold=0.5"]) == 2


def test_extract_math_cli(shared_data, tmp_path):
    from refinery.cli import main

    out = tmp_path / "x.jsonl"
    assert main(["data", "extract-math", "--input", str(shared_data / "readability-math"), "--input",
                 str(shared_data / "warc" / "warcio__example.warc.gz"), "--output", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"source", "text", "formulas"} <= set(rows[0])
    by = {Path(r["source"]).name if r["source"].startswith("/") else r["source"]: r for r in rows}
    assert by["mathjax__source.html"]["formulas"] == 13 and by["wikipedia-3__source.html"]["formulas"] == 66
    assert "http://example.com/" in by
    assert not out.with_name(out.name + ".work").exists()


def test_a_stage_that_cannot_start_is_one_clear_error(tmp_path, capsys):
    from refinery.cli import main

    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "a.html").write_text("<p>" + "words " * 30 + "</p>")
    args = ["data", "run", "recipes/nemotron_cc_math.yaml", f"input=[{pages}]", f"output={tmp_path / 'o'}",
            "stages=[extract,quality]", f"quality.model={bad}", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pipeline failed in segment 1/1" in err and "Traceback" not in err
    assert "Traceback" in (tmp_path / "o" / "error.txt").read_text()
    assert main([*args[:5], "stages=[extract,quality]", f"quality.model={tmp_path / 'missing'}"]) == 2
    assert "not found" in capsys.readouterr().err
