"""BeyondWeb rephrasing and CrossThink QA synthesis: every filter on hand-made cases, both pipelines end to end on
pages from the math pipeline against `refinery serve` with a tiny model."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from refinery.data.reasoning.crossthink import (
    Blend,
    ConvertMCQ,
    CrossThinkConfig,
    Verifiable,
    math_parseable,
    parse_mcq,
    parse_open,
    to_open_ended,
)
from refinery.data.rephrase.beyondweb import (
    STRATEGIES,
    BeyondWebConfig,
    distinct_n,
    fidelity,
    key_items,
    pick_strategy,
    self_bleu,
)


# ---- BeyondWeb -----------------------------------------------------------------------------------------------
def test_strategy_registry_and_mixing_weights():
    assert {"summary", "wikipedia", "qa", "faq", "tutorial", "distill", "key_facts", "conversation"} <= set(STRATEGIES)
    weights = {"qa": 3.0, "summary": 1.0}
    draws = Counter(pick_strategy(f"doc{i}", weights, seed=0) for i in range(4000))
    assert abs(draws["qa"] / 4000 - 0.75) < 0.03  # follows the weights
    assert pick_strategy("doc7", weights, 0) == pick_strategy("doc7", weights, 0)  # deterministic: resumable
    with pytest.raises(Exception, match="unknown strategies"):
        BeyondWebConfig(strategies={"poem": 1.0})
    with pytest.raises(Exception, match="unknown strategies"):
        BeyondWebConfig(strategy_params={"poem": {"max_new_tokens": 10}})
    assert BeyondWebConfig().strategy_params["distill"].max_new_tokens == 256


def test_fidelity_counts_surviving_numbers_and_names():
    src = "In 1969 Neil Armstrong walked on the Moon; Apollo 11 carried 3 astronauts."
    assert {"1969", "Neil Armstrong", "Moon", "Apollo", "11", "3"} <= key_items(src)
    assert fidelity(src, "Neil Armstrong reached the Moon in 1969 with Apollo 11 and 3 crew.") == 1.0
    assert fidelity(src, "Someone went to space once.") == 0.0
    assert fidelity("no names or numbers here", "anything") == 1.0


def test_rewrites_are_judged_on_length_and_fidelity():
    from refinery.data.rephrase.beyondweb import judge_output

    src = "In 1969 Neil Armstrong walked on the Moon with Apollo 11."
    good = "Neil Armstrong walked on the Moon in 1969 (Apollo 11)."
    assert judge_output(src, good, (0.1, 4.0), 0.8) is None
    assert judge_output(src, "  ", (0.1, 4.0), 0.0)[0] == "empty_output"
    assert judge_output(src, "Moon.", (0.5, 4.0), 0.0)[0] == "length_out_of_range"
    assert judge_output(src, good * 10, (0.1, 4.0), 0.0)[0] == "length_out_of_range"
    assert judge_output(src, "A man once walked somewhere far away, a long time ago.", (0.1, 4.0), 0.5)[0] == \
        "low_fidelity"


def test_diversity_measures():
    same = ["the cat sat on the mat"] * 4
    varied = ["the cat sat on the mat", "a dog ran in the park", "stocks fell sharply today", "rain is expected"]
    assert distinct_n(varied, 2) > distinct_n(same, 2)
    assert self_bleu(same) > 90 and self_bleu(varied) < 20
    assert self_bleu(["only one"]) is None


# ---- CrossThink ----------------------------------------------------------------------------------------------
MCQ = "Question: What is the capital of France?\nA) Berlin\nB) Paris\nC) Rome\nD) Madrid\nAnswer: B"


def test_parsing_templates():
    m = parse_mcq(MCQ)
    assert m == {"question": "What is the capital of France?", "answer": "B",
                 "options": {"A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid"}}
    assert parse_open("Question: How many legs has a spider?\nAnswer: 8\n") == \
        {"question": "How many legs has a spider?", "answer": "8"}
    assert parse_mcq("Question: no options\nAnswer: A") is None and parse_open("just text") is None


def test_mcq_to_open_drops_option_bound_stems():
    ok = to_open_ended({**parse_mcq(MCQ), "template": "mcq"})
    assert ok["answer"] == "Paris" and ok["template"] == "open" and ok["converted_from_mcq"]
    bound = {**parse_mcq(MCQ), "question": "Which of the following is a capital?", "template": "mcq"}
    assert to_open_ended(bound) is None
    cfg = CrossThinkConfig(mcq_mode="convert")
    out = ConvertMCQ(cfg).process([{"id": "x", "domain": "general", **bound}])
    assert out[0]["_reject"] == "needs_options"


def test_verifiable_filters():
    st = Verifiable(CrossThinkConfig())
    items = [
        {"id": "1", "template": "mcq", "domain": "general", "question": "Q?", "options": {"A": "x", "B": "y"},
         "answer": "C"},  # gold not among the options
        {"id": "2", "template": "mcq", "domain": "general", "question": "Q?", "options": {"A": "x", "B": "y"},
         "answer": "B"},
        {"id": "3", "template": "open", "domain": "general", "question": "Q?",
         "answer": "a very long answer that goes on for far more than ten words in total"},
        {"id": "4", "template": "open", "domain": "math", "question": "Q?", "answer": "Paris"},  # not math
        {"id": "5", "template": "open", "domain": "math", "question": "Q?", "answer": "\\frac{3}{4}"},
        {"id": "6", "template": "open", "domain": "general", "question": "Q?", "answer": "Paris"},
    ]
    out = st.process(items)
    assert [r.get("_reject") for r in out] == ["gold_not_in_options", None, "answer_too_long",
                                               "unparseable_math_answer", None, None]
    assert out[1]["domain"] == "choice" and "(B) y" in out[1]["prompt"]  # routes to the choice verifier
    assert math_parseable("2x+1") and math_parseable("(1, 2)") and not math_parseable("Paris")
    # The items are what the RL reward router consumes: a correct response scores 1.
    from refinery.rl.rewards import RewardRouter

    router = RewardRouter()
    assert router(out[1], "The answer is (B)")[1] and router(out[4], "\\boxed{0.75}")[1]
    assert router(out[5], "\\boxed{Paris}")[1] and not router(out[5], "\\boxed{Rome}")[1]


def test_difficulty_pass_rate_uses_the_domain_verifier():
    from refinery.data.reasoning.crossthink import pass_rate
    from refinery.rl.rewards import RewardRouter

    router = RewardRouter()
    choice = {"id": "c", "prompt": "?", "answer": "B", "domain": "choice"}
    math = {"id": "m", "prompt": "?", "answer": "3/4", "domain": "math"}
    assert pass_rate(choice, ["(B)", "Answer: B", "(A)", "C"], router) == 0.5
    assert pass_rate(math, ["\\boxed{0.75}", "\\boxed{3/4}", "\\boxed{1}"], router) == pytest.approx(2 / 3)


def test_blend_follows_ratios(tmp_path):
    cfg = CrossThinkConfig(blend={"general": 2, "math": 1})
    st = Blend(cfg)
    recs = [{"id": f"g{i}", "domain": "general"} for i in range(50)] + \
        [{"id": f"m{i}", "domain": "math"} for i in range(40)]
    keep, _ = st.decide([st.collect(recs)], tmp_path)
    kept = Counter(r["domain"] for r in recs if r["id"] in keep)
    assert kept == {"general": 50, "math": 25}  # general limits: 50 general -> 25 math
    assert json.loads((tmp_path / "blend.json").read_text())["kept"] == {"general": 50, "math": 25}


# ---- end to end ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    from refinery.config import load_config
    from refinery.models.zoo import ModelConfig, TokenizerConfig, save_built
    from tests.conftest import TINY_MODEL, Server

    root = tmp_path_factory.mktemp("syn")
    mc = load_config(ModelConfig, None, [o.removeprefix("model.") for o in TINY_MODEL]
                     + ["max_position_embeddings=4096"])
    save_built(mc, TokenizerConfig(), ["Question: what? Answer: B) Paris. Summary of the text. " * 50], root / "m")
    srv = Server(root / "m", name="tiny-syn").start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def math_pages(shared_data, tmp_path_factory):
    """Pages from the math pipeline (real MathJax / Wikipedia pages), with a domain label."""
    from refinery.data.runner import extract_math

    out = tmp_path_factory.mktemp("pages") / "pages.jsonl"
    extract_math([str(shared_data / "readability-math")], out, renderer="python", progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["domain"] = "math" if r["formulas"] else "general"
        r["quality"] = i % 3
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, rows


def test_beyondweb_end_to_end(math_pages, long_server, tmp_path):
    from refinery.cli import main

    src, rows = math_pages
    out = tmp_path / "bw"
    assert main(["data", "run", "recipes/beyondweb.yaml", f"input={src}", f"output={out}", "quality_field=quality",
                 "min_quality=1", "chunk_tokens=300", "generator.max_new_tokens=24", "length_ratio=[0.0,100.0]",
                 f"generator.model={long_server.name}", f"generator.base_url={long_server.url}",
                 "generator.cache_dir=" + str(tmp_path / "cache"), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    by = {s["name"]: s for s in stats["stages"]}
    assert by["select"]["dropped"]["low_quality"] == sum(r["quality"] < 1 for r in rows)
    assert by["chunk"]["kept"] > by["select"]["kept"]  # long pages became several chunks
    bw = stats["beyondweb"]
    assert bw["input_tokens"] > 0 and sum(v for k, v in bw.items() if k.startswith("strategy.")) == bw["records"]
    report = (out / "report.md").read_text()
    assert "| strategy | outputs |" in report and "self-BLEU" in report


def test_crossthink_end_to_end(math_pages, long_server, tmp_path):
    from refinery.cli import main

    src, _ = math_pages
    out = tmp_path / "ct"
    assert main(["data", "run", "recipes/crossthink_data.yaml", f"input={src}", f"output={out}",
                 "generator.max_new_tokens=24", f"generator.model={long_server.name}",
                 f"generator.base_url={long_server.url}", "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    by = {s["name"]: s for s in stats["stages"]}
    assert by["synthesize"]["seen"] == 6 and by["synthesize"]["kept"] + sum(by["synthesize"]["dropped"].values()) == 12
    assert "## Final composition" in (out / "report.md").read_text()
