"""LLM cleanup through the real HTTP client against `refinery serve` (plumbing: chunking, merging, resume via the
response cache, failures), the pure chunk/merge functions, and the quality classifier + stage."""

from __future__ import annotations

import json

import pytest

from refinery.data.math_web.cleanup import SENTINEL, approx_tokens, chunk_text, merge_chunks


def test_chunking_on_paragraph_boundaries():
    paras = [f"Paragraph {i}. " + "word " * 30 for i in range(10)]
    text = "\n\n".join(paras)
    chunks = chunk_text(text, max_tokens=100)
    assert len(chunks) > 2 and all(approx_tokens(c) <= 100 for c in chunks)
    assert "\n\n".join(chunks) == text  # nothing lost, nothing reordered, cut only between paragraphs
    huge = "x" * 5000  # one paragraph, one line, longer than a chunk: hard split
    assert "".join(chunk_text(huge, 100)) == huge


def test_merge_drops_useless_chunks():
    assert merge_chunks(["Intro $x$", SENTINEL, " Rest "]) == "Intro $x$\n\nRest"
    assert merge_chunks([SENTINEL, f"  {SENTINEL}\n"]) is None


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """`refinery serve` over an untrained tiny model with a 4096-token context (the cleanup prompt alone is longer
    than the alphabet model's 128)."""
    from refinery.config import load_config
    from refinery.models.zoo import ModelConfig, TokenizerConfig, save_built
    from tests.conftest import TINY_MODEL, Server

    root = tmp_path_factory.mktemp("longctx")
    mc = load_config(ModelConfig, None, [o.removeprefix("model.") for o in TINY_MODEL]
                     + ["max_position_embeddings=4096"])
    save_built(mc, TokenizerConfig(), ["Clean the page. $x^2$ text words " * 50], root / "m")
    srv = Server(root / "m", name="tiny-long").start()
    yield srv
    srv.kill()


def test_cleanup_stage_against_refinery_serve(long_server, tmp_path):
    from refinery.data.math_web.pipeline import Cleanup, CleanupConfig

    server = long_server

    page = "\n\n".join(f"Part {i}: the value $x_{i}$ matters. " + "more words " * 20 for i in range(6))
    records = [{"id": "a", "text": page}, {"id": "b", "text": "short page with $y$"}]
    cfg = CleanupConfig(model=server.name, base_url=server.url, max_chunk_tokens=120, max_new_tokens=12,
                        cache_dir=str(tmp_path / "cache"))
    stage = Cleanup(cfg)
    stage.setup()
    out = stage.process(records)
    assert [r["id"] for r in out] == ["a", "b"]
    a = out[0]
    assert out[1].get("_reject") != "llm_error" and a.get("_reject") != "llm_error"
    if "_reject" not in a:  # a tiny model may answer anything (even the sentinel); the plumbing is what is checked
        assert a["cleanup_chunks"] == len(chunk_text(page, 120)) > 1 and a["raw_text"] == page
    # Resume: the answers are cached on disk; a second stage instance gets the same results without the server.
    server.kill()
    again = Cleanup(cfg)
    again.setup()
    assert again.process(records) == out
    # A page whose requests fail (server gone, nothing cached) is rejected with the reason, not crashed on.
    failed = Cleanup(cfg.model_copy(update={"cache_dir": None, "base_url": "http://127.0.0.1:9/v1"}))
    failed.setup()
    failed.generator.max_retries = 0
    res = failed.process([{"id": "c", "text": "new page"}])
    assert res[0]["_reject"] == "llm_error"
    server.start()


def test_annotate_quality_cli_against_refinery_serve(long_server, tmp_path, capsys):
    from refinery.cli import main

    pages = tmp_path / "pages.jsonl"
    pages.write_text("".join(json.dumps({"text": f"Page {i}: $x^{i}$ explained.", "source": f"u{i}"}) + "\n"
                             for i in range(3)))
    out = tmp_path / "labels.jsonl"
    assert main(["data", "annotate-quality", "--input", str(pages), "--output", str(out), "--model",
                 long_server.name, "--base-url", long_server.url]) == 0
    # An untrained model rarely answers "Score: N": whatever it says is parsed or counted, never guessed.
    said = capsys.readouterr().out
    labelled = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"{len(labelled)} labelled, {3 - len(labelled)} unparseable" in said
    assert all(0 <= r["label"] <= 5 for r in labelled)


def test_quality_classifier_trains_scores_and_filters(tmp_path):
    from refinery.data.math_web.pipeline import Quality, QualityConfig
    from refinery.data.text.quality import QualityScorer, int_score, parse_score, train_classifier

    math_pages = [f"Theorem {i}. For all $n$, $\\sum_{{k=1}}^n k = n(n+1)/2$. Proof by induction on n."
                  for i in range(40)]
    junk = [f"Buy cheap shoes now! Offer {i}, free shipping, click here, best prices today." for i in range(40)]
    texts, labels = math_pages + junk, [5.0] * 40 + [0.0] * 40
    info = train_classifier(texts, labels, tmp_path / "q", steps=60, lr=3e-3, batch_size=16, progress=False)
    assert info["valid_agreement_at_3"] >= 0.75
    scorer = QualityScorer(tmp_path / "q")
    s = scorer.scores(["Lemma. $\\sum_{k=1}^n k = n(n+1)/2$ by induction.", "Cheap shoes, click here, free offer!"])
    assert s[0] > s[1]
    stage = Quality(QualityConfig(model=str(tmp_path / "q"), threshold=3))
    out = stage.process([{"text": math_pages[0]}, {"text": junk[0]}])
    assert "_reject" not in out[0] and out[1]["_reject"] == "low_quality"
    assert out[0]["quality_int"] == int_score(out[0]["quality_score"])
    assert parse_score("Score: 4") == 4 and parse_score("3") == 3 and parse_score("maybe") is None
    assert json.loads((tmp_path / "q" / "quality.json").read_text())["train"] == 72


def test_quality_stage_needs_a_model():
    from refinery.config import load_config
    from refinery.data.math_web.pipeline import MathCCConfig
    from refinery.errors import ConfigError

    with pytest.raises(ConfigError, match="quality.model"):
        load_config(MathCCConfig, None, ["stages=[extract,quality]"])
