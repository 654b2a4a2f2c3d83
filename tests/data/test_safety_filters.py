"""CultureGuard translation-quality filters on hand-made cases and on MultiJail's real parallel data."""

from __future__ import annotations

import pytest

from refinery.data.safety.filters import (
    back_translation_ok,
    detect_language,
    language_ok,
    length_ok,
    not_copied,
    parse_judge,
    parse_label,
)

SRC = "How can I stop my neighbour's dog from barking all night?"
ZH = "我怎样才能让邻居的狗整夜不叫？"
FR = "Comment empêcher le chien de mon voisin d'aboyer toute la nuit ?"


def test_language_filter():
    assert detect_language(ZH)[0] == "zh" and language_ok(FR, "fr")
    assert not language_ok(SRC, "fr")  # untranslated
    assert not language_ok(ZH, "fr")  # wrong language


def test_length_filter_per_language_pair():
    assert length_ok(SRC, ZH, "zh") and length_ok(SRC, FR, "fr")
    assert not length_ok(SRC, FR[:15], "fr")  # truncated
    assert not length_ok(SRC, FR * 3, "fr")  # runaway repetition
    assert not length_ok(SRC, SRC * 2, "zh")  # far too long for Chinese


def test_copy_and_back_translation_filters():
    assert not not_copied(SRC, SRC) and not_copied(SRC, FR)
    assert back_translation_ok(SRC, "How do I stop my neighbor's dog barking the whole night?")
    assert not back_translation_ok(SRC, "What is the best recipe for banana bread?")


def test_judge_and_label_parsing():
    text = "Fluency: 5\nAccuracy: 4\nIdiomaticity: 4\nTerminology: 5\nFormat: 3"
    assert parse_judge(text) == {"fluency": 5, "accuracy": 4, "idiomaticity": 4, "terminology": 5, "format": 3}
    assert parse_judge("Fluency: 5 Accuracy: 9") is None
    assert parse_label("Label: unsafe.") == "unsafe" and parse_label("This is safe") == "safe"
    assert parse_label("no idea") is None


@pytest.mark.parametrize("lang", ["zh", "ar", "th", "sw"])
def test_filters_on_multijail(shared_data, lang):
    from refinery.data.safety.evaluate import evaluate, read_multijail

    rows, langs = read_multijail(shared_data / "safety" / "MultiJail.csv")
    rep = evaluate(rows[:120], langs)[lang]
    comb = rep["combined"]
    assert comb["true_kept"] >= 0.95 and comb["precision"] >= 0.97  # true translations pass
    assert comb["rejects_shuffled"] >= 0.95 and comb["rejects_wrong_language"] >= 0.95
    assert comb["rejects_copied"] == 1.0
    assert rep["language"]["rejects_wrong_language"] >= 0.95 and rep["copy"]["rejects_copied"] == 1.0


def test_cultural_segregation_rules():
    from refinery.data.safety.cultureguard import CULTURE_MARKERS

    assert CULTURE_MARKERS.search("How do I cheat on my taxes without the IRS noticing?")
    assert CULTURE_MARKERS.search("Sell it for at least $250 a pop")
    assert not CULTURE_MARKERS.search("How do I pick a lock?")


def test_cultureguard_end_to_end_against_refinery_serve(shared_data, tmp_path):
    import json

    from refinery.cli import main
    from refinery.config import load_config
    from refinery.data.safety.evaluate import read_multijail
    from refinery.models.zoo import ModelConfig, TokenizerConfig, save_built
    from tests.conftest import TINY_MODEL, Server

    mc = load_config(ModelConfig, None, [o.removeprefix("model.") for o in TINY_MODEL]
                     + ["max_position_embeddings=2048"])
    save_built(mc, TokenizerConfig(), ["Translate the text. 你好 bonjour safe unsafe " * 50], tmp_path / "m")
    rows, _ = read_multijail(shared_data / "safety" / "MultiJail.csv")
    src = tmp_path / "en.jsonl"
    samples = [{"prompt": r["en"], "label": "unsafe", "categories": r["tags"]} for r in rows[:4]]
    samples.append({"prompt": "How do I bake bread?", "label": "safe", "categories": "[]"})
    src.write_text("".join(json.dumps(s) + "\n" for s in samples))
    srv = Server(tmp_path / "m", name="tiny-cg").start()
    try:
        out = tmp_path / "cg"
        assert main(["data", "run", "recipes/cultureguard.yaml", f"input={src}", f"output={out}",
                     "languages=[zh,fr]", "generator.max_new_tokens=16", f"generator.model={srv.name}",
                     f"generator.base_url={srv.url}", "--no-progress"]) == 0
    finally:
        srv.kill()
    by = {s["name"]: s for s in json.loads((out / "stats.json").read_text())["stages"]}
    adapt = by["adapt"]  # one record per (sample, language); an empty adaptation is rejected with its reason
    assert by["segregate"]["seen"] == 5 and adapt["kept"] + sum(adapt["dropped"].values()) == 10
    assert set(adapt["dropped"]) <= {"empty_adaptation"} and by["translate"]["seen"] == adapt["kept"]
    # An untrained model does not translate: the language filter catches it, with the reason.
    lang = by["filter_language"]
    assert lang["kept"] + lang["dropped"].get("wrong_language", 0) == lang["seen"]
    assert "| filter_label |" in (out / "report.md").read_text()


def test_safety_metrics_by_hand():
    from refinery.data.safety.guard import safety_metrics

    gold = ["unsafe", "unsafe", "safe", "safe", "unsafe", "safe"]
    pred = ["unsafe", "safe", "unsafe", "safe", "unsafe", "safe"]
    m = safety_metrics(gold, pred, ["zh", "zh", "zh", "fr", "fr", "fr"])
    assert m["zh"]["accuracy"] == pytest.approx(1 / 3) and m["zh"]["false_refusal_rate"] == 1.0
    assert m["fr"] == {"n": 3, "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "false_refusal_rate": 0.0}
    assert m["all"]["precision"] == pytest.approx(2 / 3) and m["all"]["recall"] == pytest.approx(2 / 3)


def test_guard_trains_with_lora_and_evaluates_per_language(shared_data, tmp_path, capsys):
    import json
    import random

    from refinery.cli import main
    from refinery.data.safety.evaluate import read_multijail

    rows, _ = read_multijail(shared_data / "safety" / "MultiJail.csv")
    rng = random.Random(0)
    safe_en = [f"How do I {v} a {n}?" for v in ("bake", "paint", "fix", "clean", "build", "draw")
               for n in ("cake", "fence", "bicycle", "kitchen", "birdhouse", "map", "garden", "shelf")]
    recs = [{"text": r[lang], "label": "unsafe", "lang": lang, "categories": r["tags"]} for r in rows[:60]
            for lang in ("en", "zh")]
    recs += [{"text": t, "label": "safe", "lang": "en"} for t in safe_en]
    rng.shuffle(recs)
    train, test = recs[:120], recs[120:]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test))
    assert main(["data", "train-guard", "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "g"),
                 "--steps", "60", "--no-progress"]) == 0
    info = json.loads((tmp_path / "g" / "guard.json").read_text())
    assert info["lora_r"] == 8 and info["trainable_params"] > 0 and len(info["categories"]) > 3
    assert main(["eval", "safety", "--model", str(tmp_path / "g"), "--data", str(tmp_path / "test.jsonl"),
                 "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "safety.json").read_text())
    assert {"en", "zh", "all"} <= set(res) and res["all"]["accuracy"] >= 0.8  # an easy split: a sanity bar
    assert 0.0 <= res["all"]["category_f1"] <= 1.0


def test_category_parsing_and_f1():
    from refinery.data.safety.guard import category_f1, pair_text, parse_categories

    assert parse_categories("['Violence', 'Hate speech']") == ["Violence", "Hate speech"]
    assert parse_categories(["A"]) == ["A"] and parse_categories(None) == []
    assert category_f1([["A", "B"], ["C"]], [["A"], ["C", "D"]]) == pytest.approx(2 / 3)
    assert pair_text("hi", "hello").startswith("User: hi")


def test_llm_stages_reject_failed_requests_and_judge_the_rest(monkeypatch):
    """Every LLM stage of CultureGuard turns a failed request into an `llm_error` reject of that record only."""
    from refinery.data.safety.cultureguard import CultureGuardConfig, Judge, LabelConsistency, Translate
    from refinery.data.safety.filters import JUDGE_DIMENSIONS

    cfg = CultureGuardConfig(input="in.jsonl", output="out.jsonl")
    recs = [{"id": str(i), "lang": "de", "adapted": "How do I pick a lock?", "text": "Wie knacke ich ein Schloss?",
             "label": "unsafe"} for i in range(4)]

    def answers(stage, *texts):
        monkeypatch.setattr(stage, "ask", lambda prompts, max_new_tokens=None: list(texts))
        return stage.process(recs)

    good = "\n".join(f"{d}: 5" for d in JUDGE_DIMENSIONS)
    low = "\n".join(f"{d}: 1" for d in JUDGE_DIMENSIONS)
    out = answers(Judge(cfg), RuntimeError("server down"), good, low, "no scores here")
    assert [r.get("_reject") for r in out] == ["llm_error", None, "judge_low", "judge_unparseable"]
    assert "server down" in out[0]["_detail"] and out[1]["judge"][JUDGE_DIMENSIONS[0]] == 5
    out = answers(Translate(cfg), "Hallo", "", TimeoutError("slow"), "Servus")
    assert [r.get("_reject") for r in out] == [None, "empty_translation", "llm_error", None]
    assert out[0]["text"] == "Hallo"
    out = answers(LabelConsistency(cfg), "unsafe", "safe", OSError("x"), "unsafe")
    assert [r.get("_reject") for r in out] == [None, "label_changed", "llm_error", None]
