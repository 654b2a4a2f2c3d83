"""Recipe correctness (issue 23): MATH's problem/solution layout in AceReason curation, CrossThink's blend with
domains it does not name, CultureGuard's min_judge=0, truncated LLM answers in cleanup and rephrasing."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from refinery.generation.base import Completion


class FakeGenerator:
    """Answers every request with ``answer`` (finish_reason ``finish``), n samples each."""

    def __init__(self, answer, finish: str = "stop"):
        self.answer, self.finish, self.prompts = answer, finish, []

    def generate(self, requests, params=None):
        self.prompts += requests
        n = params.n if params else 1
        return [Completion(text=self.answer(r) if callable(self.answer) else self.answer, token_ids=[1, 2, 3],
                           finish_reason=self.finish, index=i, sample=s) for i, r in enumerate(requests)
                for s in range(n)]


# ---- AceReason on the MATH layout ------------------------------------------------------------------------------
@pytest.mark.parametrize("solution,answer", [
    ("Adding, $1+1=2$, so the answer is $\\boxed{2}$.", "2"),
    ("We get $\\frac{a}{b}$ and finally $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
    ("First $\\boxed{1}$ is wrong; the answer is $\\boxed{x^{2}+1}$.", "x^{2}+1"),
    ("Hence $\\boxed 5$.", "5"),
    ("So it is $\\fbox{(1,2)}$.", "(1,2)"),
])
def test_last_boxed_answer_of_a_worked_solution(solution, answer):
    from refinery.data.reasoning.acereason import Normalize, last_boxed

    assert last_boxed(solution) == answer
    rec = Normalize("math").process([{"problem": "Compute it.", "solution": solution, "level": "Level 1"}])[0]
    assert rec["reference"] == answer and "_reject" not in rec


def test_math_layout_without_a_boxed_answer_is_a_counted_reject():
    from refinery.data.reasoning.acereason import Normalize, last_boxed

    assert last_boxed("no box here") is None and last_boxed("\\boxed{never closed") is None
    rec = Normalize("math").process([{"problem": "Compute it.", "solution": "It is 2."}])[0]
    assert rec["_reject"] == "no_reference" and "boxed" in rec["_detail"]


def test_math_layout_problems_survive_answer_verification(shared_data):
    """MATH-500's real answers (nested braces: fractions, roots, intervals) laid out as the MATH dataset does
    (problem/solution, the answer boxed at the end, no answer column): the reference is the boxed answer, and a
    model that answers it is the majority, so the problem is kept (before, the whole solution was the reference
    and every such problem was rejected)."""
    from refinery.config import load_config
    from refinery.data.reasoning.acereason import CurationConfig, Normalize, VerifyAnswer

    rows = json.loads((shared_data / "math500" / "math500.json").read_text())[:40]
    math_layout = [{"problem": r["problem"], "solution": f"Working step by step, $\\boxed{{7}}$ is not it; the "
                                                         f"answer is $\\boxed{{{r['answer']}}}$."} for r in rows]
    recs = Normalize("math").process(math_layout)
    assert [r["reference"] for r in recs] == [r["answer"] for r in rows]
    answers = {r["problem"]: r["answer"] for r in rows}
    stage = VerifyAnswer(load_config(CurationConfig, None, ["generator.samples=2"]))
    stage.generator = FakeGenerator(lambda req: "Thus \\boxed{{{}}}.".format(next(
        a for p, a in answers.items() if p in req[0]["content"])))
    out = stage.process(recs)
    assert sum("_reject" not in r for r in out) >= 0.9 * len(rows)  # the verifier's own misses aside


# ---- CrossThink blend: domains it does not name ----------------------------------------------------------------
def blend_records():
    return ([{"id": f"g{i}", "domain": "general"} for i in range(20)] + [{"id": f"m{i}", "domain": "math"}
                                                                          for i in range(20)]
            + [{"id": f"s{i}", "domain": "stem"} for i in range(7)] + [{"id": f"l{i}", "domain": "law"}
                                                                       for i in range(3)])


def test_blend_keeps_unnamed_domains_whole_by_default(tmp_path):
    from refinery.data.reasoning.crossthink import Blend, CrossThinkConfig

    cfg = CrossThinkConfig(blend={"general": 2, "math": 1})
    assert cfg.blend_unnamed == "keep"
    st, recs = Blend(cfg), blend_records()
    out = st.apply(recs, st.decide([st.collect(recs)], tmp_path))
    kept = Counter(r["domain"] for r in out if "_reject" not in r)
    assert kept == {"general": 20, "math": 10, "stem": 7, "law": 3}  # ratios among the named; the rest whole
    assert Counter(r["_reject"] for r in out if "_reject" in r) == {"blend_excess": 10}
    info = json.loads((tmp_path / "blend.json").read_text())
    assert info["unnamed"] == {"domains": ["law", "stem"], "rule": "keep"} and info["kept"]["stem"] == 7


def test_blend_drops_unnamed_domains_with_a_count_or_names_them_in_an_error(tmp_path):
    from refinery.data.reasoning.crossthink import Blend, CrossThinkConfig
    from refinery.errors import DataError

    recs = blend_records()
    st = Blend(CrossThinkConfig(blend={"general": 2, "math": 1}, blend_unnamed="drop"))
    out = st.apply(recs, st.decide([st.collect(recs)], tmp_path))
    assert Counter(r.get("_reject") for r in out) == {None: 30, "blend_excess": 10, "blend_unnamed_domain": 10}
    st = Blend(CrossThinkConfig(blend={"general": 2, "math": 1}, blend_unnamed="error"))
    with pytest.raises(DataError, match=r"\['law', 'stem'\].*law: 3, stem: 7"):
        st.decide([st.collect(recs)], tmp_path)
    # Named with ratio 0 is an explicit "none of these", not an unnamed domain.
    st = Blend(CrossThinkConfig(blend={"general": 2, "math": 1, "stem": 0, "law": 0}, blend_unnamed="error"))
    out = st.apply(recs, st.decide([st.collect(recs)], tmp_path))
    assert Counter(r.get("_reject") for r in out) == {None: 30, "blend_excess": 20}


# ---- CultureGuard min_judge=0 -----------------------------------------------------------------------------------
def test_min_judge_zero_disables_the_judge():
    from refinery.config import load_config
    from refinery.data.safety.cultureguard import CultureGuardConfig, build_stages
    from refinery.errors import ConfigError

    cfg = load_config(CultureGuardConfig, "recipes/cultureguard.yaml", ["min_judge=0"])
    assert cfg.min_judge == 0
    assert "filter_judge" not in [s.name for s in build_stages(cfg)]
    assert "filter_judge" in [s.name for s in build_stages(load_config(CultureGuardConfig, None, []))]
    with pytest.raises(ConfigError):
        load_config(CultureGuardConfig, None, ["min_judge=-1"])


# ---- truncated answers ------------------------------------------------------------------------------------------
def cleanup_stage(gen):
    from refinery.data.math_web.pipeline import Cleanup, CleanupConfig

    st = Cleanup(CleanupConfig(max_chunk_tokens=50, max_new_tokens=64))
    st.generator = gen
    return st


def test_cleanup_rejects_a_page_whose_answer_was_cut_off():
    page = "\n\n".join(f"Paragraph {i} with $x_{i}$ and " + "words " * 30 for i in range(3))
    ok = cleanup_stage(FakeGenerator("Clean text with $x$.")).process([{"id": "a", "text": page}])[0]
    assert "_reject" not in ok and ok["cleanup_chunks"] > 1
    cut = cleanup_stage(FakeGenerator("Clean text with $x", finish="length")).process([{"id": "a", "text": page}])
    assert cut[0]["_reject"] == "truncated" and "max_new_tokens=64" in cut[0]["_detail"]


def rephrase_stage(gen_cfg):
    from refinery.data.rephrase.beyondweb import BeyondWebConfig, Rephrase

    cfg = BeyondWebConfig(generator=gen_cfg, strategies={"summary": 1}, strategy_params={}, length_ratio=(0, 100))
    return Rephrase(cfg)


def test_rephrase_rejects_a_cut_off_rewrite_and_keeps_a_finished_one():
    from refinery.data.recipe import GeneratorSection

    rec = {"id": "d.000", "chunk": "Paris is the capital of France, with 2 million people."}
    st = rephrase_stage(GeneratorSection())
    st.generator = FakeGenerator("Paris, capital of France, has 2 million people.")
    assert "_reject" not in st.process([rec])[0]
    st.generator = FakeGenerator("Paris, capital of", finish="length")
    out = st.process([rec])[0]
    assert out["_reject"] == "truncated" and out["output_tokens"] == 3  # its cost is still accounted


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from refinery.config import load_config
    from refinery.models.zoo import ModelConfig, TokenizerConfig, save_built
    from tests.conftest import TINY_MODEL

    root = tmp_path_factory.mktemp("trunc")
    mc = load_config(ModelConfig, None, [o.removeprefix("model.") for o in TINY_MODEL]
                     + ["max_position_embeddings=1024"])
    save_built(mc, TokenizerConfig(), ["Paris is the capital of France. Summarise the text. " * 40], root / "m")
    return root / "m"


def test_truncation_through_the_hf_backend(tiny_model_dir):
    """A real backend's finish_reason: an untrained model given 3 new tokens never reaches EOS."""
    from refinery.data.recipe import GeneratorSection

    st = rephrase_stage(GeneratorSection(backend="hf", model=str(tiny_model_dir), max_new_tokens=3))
    st.setup()
    out = st.process([{"id": "d.000", "chunk": "Paris is the capital of France."}])[0]
    assert out["_reject"] == "truncated" and out["output_tokens"] == 3


def test_truncation_through_the_openai_backend(tiny_model_dir):
    """The same through `refinery serve` and the OpenAI client (finish_reason from the server's response)."""
    from refinery.data.math_web.pipeline import Cleanup, CleanupConfig
    from tests.conftest import Server

    srv = Server(tiny_model_dir, name="tiny-trunc").start()
    try:
        st = Cleanup(CleanupConfig(model=srv.name, base_url=srv.url, max_new_tokens=2, max_chunk_tokens=40))
        st.setup()
        out = st.process([{"id": "a", "text": "Paris is the capital of France. " * 3}])[0]
    finally:
        srv.kill()
    assert out["_reject"] == "truncated"
