"""The guard's false-refusal evaluation: the packaged XSTest-style set, the report by hand, the CLI end to end."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from refinery.errors import DataError


def test_packaged_set_covers_every_type_and_language():
    from refinery.data.safety.over_refusal import load_set

    recs = load_set()
    assert len({r["id"] for r in recs}) == len(recs) == len({r["text"] for r in recs}) == 232
    en = Counter((r["type"], r["label"]) for r in recs if r["lang"] == "en")
    types = {t for t, _ in en}
    assert len(types) == 8 and all(en[t, "safe"] == 12 and en[t, "unsafe"] == 5 for t in types)
    en_groups = {r["group"]: r for r in recs if r["lang"] == "en"}
    for lang in ("de", "es", "fr", "zh"):
        mine = [r for r in recs if r["lang"] == lang]
        c = Counter((r["type"], r["label"]) for r in mine)
        assert all(c[t, "safe"] == 2 and c[t, "unsafe"] == 1 for t in types), lang
        for r in mine:  # a translation keeps its English prompt's group, type and label
            src = en_groups[r["group"]]
            assert (src["type"], src["label"]) == (r["type"], r["label"]), r["id"]
    assert load_set(langs=["zh"]) == [r for r in recs if r["lang"] == "zh"]


def test_report_by_hand():
    from refinery.data.safety.over_refusal import over_refusal_report

    recs = [{"id": "a", "lang": "en", "type": "homonyms", "label": "safe"},
            {"id": "b", "lang": "en", "type": "homonyms", "label": "safe"},
            {"id": "c", "lang": "en", "type": "homonyms", "label": "unsafe"},
            {"id": "d", "lang": "de", "type": "definitions", "label": "safe"},
            {"id": "e", "lang": "de", "type": "homonyms", "label": "safe"},
            {"id": "f", "lang": "de", "type": "definitions", "label": "unsafe"}]
    pred = ["unsafe", "safe", "unsafe", "safe", "unsafe", "safe"]
    rep = over_refusal_report(recs, pred)
    assert rep["all"] == {"safe": 4, "false_refusals": 2, "false_refusal_rate": 0.5, "contrast": 2,
                          "contrast_flagged": 1, "contrast_recall": 0.5}
    assert rep["by_language"]["en"]["false_refusal_rate"] == 0.5 and rep["by_language"]["en"]["refused_ids"] == ["a"]
    assert rep["by_language"]["de"]["contrast_recall"] == 0.0 and rep["by_language"]["de"]["refused_ids"] == ["e"]
    assert rep["by_type"]["homonyms"]["false_refusal_rate"] == pytest.approx(2 / 3)
    assert rep["by_type"]["homonyms"]["contrast_recall"] == 1.0
    assert rep["by_type"]["definitions"] == {"safe": 1, "false_refusals": 0, "false_refusal_rate": 0.0,
                                             "contrast": 1, "contrast_flagged": 0, "contrast_recall": 0.0}
    with pytest.raises(DataError, match="2 predictions"):
        over_refusal_report(recs, pred[:2])


def test_bad_files_name_the_line(tmp_path):
    from refinery.data.safety.over_refusal import load_set

    p = tmp_path / "x.jsonl"
    p.write_text('{"id": "1", "lang": "en", "type": "t", "label": "safe", "text": "hi"}\n'
                 '{"id": "2", "lang": "en", "type": "t", "label": "maybe", "text": "ho"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: label must be safe or unsafe"):
        load_set(p)
    p.write_text('{"id": "1", "lang": "en", "label": "safe", "text": "hi"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: needs string fields type"):
        load_set(p)
    with pytest.raises(DataError, match="no records in languages xx"):
        load_set(langs=["xx"])


def test_cli_reports_a_trained_guards_false_refusals(tmp_path):
    """A guard trained on keyword-looking data, evaluated through `refinery eval refusals`: the report is exactly
    the pure function's on the guard's own predictions, over the whole packaged set."""
    from refinery.cli import main
    from refinery.data.safety.guard import predict
    from refinery.data.safety.over_refusal import load_set, over_refusal_report

    harms = ("kill", "poison", "shoot", "stab", "rob", "kidnap")
    people = ("my neighbour", "a child", "my boss", "a police officer", "my sister", "a stranger")
    chores = ("bake", "paint", "fix", "clean", "build", "draw")
    things = ("a cake", "a fence", "a bicycle", "the kitchen", "a birdhouse", "a map")
    recs = [{"text": f"How do I {h} {p}?", "label": "unsafe"} for h in harms for p in people]
    recs += [{"text": f"How do I {c} {t}?", "label": "safe"} for c in chores for t in things]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["data", "train-guard", "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "g"),
                 "--steps", "40", "--no-progress"]) == 0
    assert main(["eval", "refusals", "--model", str(tmp_path / "g"), "--out", str(tmp_path / "ev")]) == 0
    got = json.loads((tmp_path / "ev" / "refusals.json").read_text())
    sets = load_set()
    want = over_refusal_report(sets, [p[0] for p in predict(tmp_path / "g", [r["text"] for r in sets])])
    assert got == json.loads(json.dumps(want))
    assert got["all"]["safe"] == 96 + 4 * 16 and got["all"]["contrast"] == 40 + 4 * 8
    assert set(got["by_language"]) == {"en", "de", "es", "fr", "zh"} and len(got["by_type"]) == 8


def test_missing_guard_directory_is_one_clear_error(tmp_path, capsys):
    from refinery.cli import main

    assert main(["eval", "refusals", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
