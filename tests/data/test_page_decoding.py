"""Page decoding (issue 23, item 1): every page is decoded once — BOM, HTTP charset, XML declaration, ``<meta>``
anywhere in the head, detection — and its declarations removed, so neither lxml nor lynx decodes it again; XHTML
and deeply nested pages parse; every WARC record is counted as kept or rejected with a reason. The pages are built
here, byte by byte, in the encodings real sites use."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from refinery.data.io import decode_html, decode_page, plan_shards, read_html_files, read_warc
from refinery.data.math_web.html import extract_math_text, flatten_deep, lynx_available
from refinery.data.math_web.pipeline import Extract, ExtractConfig
from refinery.data.pipeline import RunSpec, output_records, run_pipeline

RENDERERS = ["python"] + (["lynx"] if lynx_available() else [])

SENTENCES = {
    "windows-1251": "Съешь же ещё этих мягких французских булок, да выпей чаю. Математика — царица наук.",
    "iso-8859-1": "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. L'élève a déjà résolu "
                  "l'équation à la forêt.",
    "gb2312": "我能吞下玻璃而不伤身体。数学是科学的皇后，几何是它的基础。",
    "shift_jis": "私はガラスを食べられます。それは私を傷つけません。数学は科学の女王です。",
    "euc-kr": "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. 수학은 과학의 여왕입니다.",
}
LONG_HEAD = ("<!-- " + "a long licence comment, " * 250 + ' <meta charset="koi8-r"> (commented out) -->'
             "<script>" + "var tracker = [1, 2, 3];" * 200 + "</script>")  # > 4 KB before the real declaration


def page(sentence: str, head: str = "") -> str:
    return (f"<html><head>{head}<title>Page</title></head><body><h1>Notes</h1><p>{sentence}</p>"
            f"<p>The square <script type='math/tex'>x^2</script> is shown.</p></body></html>")


def cases(cs: str) -> dict[str, tuple[bytes, str | None]]:
    """(page bytes, HTTP charset) per way a real page says — or does not say, or misstates — its encoding."""
    s = SENTENCES[cs]
    return {
        "meta": (page(s, f'<meta charset="{cs}">').encode(cs), None),
        "http_equiv": (page(s, f'<meta http-equiv="Content-Type" content="text/html; charset={cs}">').encode(cs),
                       None),
        "http_header_only": (page(s).encode(cs), cs),
        "meta_past_4kb": (page(s, LONG_HEAD + f'<meta http-equiv="content-type" content="text/html; charset={cs}">')
                          .encode(cs), None),
        "undeclared": (page(s).encode(cs), None),
        "meta_lies_utf8": (page(s, '<meta charset="utf-8">').encode(cs), None),
    }


def text_of(raw: bytes, http: str | None, renderer: str) -> str:
    return extract_math_text(decode_html(raw, http), renderer=renderer, width=400)["text"]


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("how", list(cases("gb2312")))
@pytest.mark.parametrize("cs", list(SENTENCES))
def test_each_encoding_each_declaration_comes_out_exact(cs, how, renderer):
    raw, http = cases(cs)[how]
    if how != "undeclared":
        assert SENTENCES[cs].encode("utf-8") not in raw  # really in the legacy encoding
    text = text_of(raw, http, renderer)
    assert SENTENCES[cs] in text, text[:300]
    assert "$x^2$" in text


@pytest.mark.parametrize("cs", list(SENTENCES))
def test_which_rule_decided(cs):
    c = cases(cs)
    assert decode_page(*c["meta"]).source == "meta"
    assert decode_page(*c["http_header_only"]).source == "http"
    assert decode_page(*c["meta_past_4kb"]).source == "meta"  # the commented-out koi8-r one is skipped
    assert decode_page(*c["undeclared"]).source == "detected"
    assert decode_page(*c["meta_lies_utf8"]).source == "detected"


@pytest.mark.parametrize("renderer", RENDERERS)
def test_lying_declarations(renderer):
    # A page re-encoded as UTF-8 that kept its old <meta charset=windows-1251>: bytes and text both come out right.
    ru = SENTENCES["windows-1251"]
    stale = page(ru, '<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">')
    assert decode_page(stale.encode("utf-8")).source == "utf8"
    assert ru in text_of(stale.encode("utf-8"), None, renderer)
    assert ru in extract_math_text(stale, renderer=renderer, width=400)["text"]  # a decoded str (JSONL input)
    # An HTTP header that says ISO-8859-1 over Shift_JIS bytes (which windows-1252 cannot decode): the meta decides.
    ja = SENTENCES["shift_jis"]
    raw = page(ja, '<meta charset="shift_jis">').encode("shift_jis")
    assert decode_page(raw, "iso-8859-1").source == "meta"
    assert ja in text_of(raw, "iso-8859-1", renderer)


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("bom,codec", [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")])
def test_utf16_with_bom(bom, codec, renderer, tmp_path):
    html = page(" ".join(SENTENCES.values()), '<meta charset="utf-16">')
    raw = bom + html.encode(codec)
    assert decode_page(raw, "iso-8859-1").source == "bom"  # the BOM outranks every declaration
    text = text_of(raw, None, renderer)
    for s in SENTENCES.values():
        assert s in text
    (tmp_path / "u16.html").write_bytes(raw)  # the HTML-directory reader decodes the same way
    rec = next(read_html_files((str(tmp_path / "u16.html"),)))
    assert rec["encoding"] == codec and SENTENCES["euc-kr"] in rec["html"] and "charset" not in rec["html"]


XHTML = """<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1 plus MathML 2.0//EN" "http://www.w3.org/Math/DTD/mathml2/xhtml-math11-f.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:m="http://www.w3.org/1998/Math/MathML" xml:lang="de">
<head><meta http-equiv="Content-Type" content="application/xhtml+xml; charset=iso-8859-1" /><title>Brüche</title></head>
<body><h1>Brüche</h1><p>Für alle Zähler gilt: <m:math><m:mfrac><m:mi>a</m:mi><m:mi>b</m:mi></m:mfrac></m:math> ist
ein Bruch, und <math xmlns="http://www.w3.org/1998/Math/MathML" alttext="\\sqrt{2}"><msqrt><mn>2</mn></msqrt></math>
ist irrational.</p>
<p>Größere Formel: <script type="math/tex; mode=display">//<![CDATA[
\\sum_{k=1}^n k = \\frac{n(n+1)}{2}
//]]></script></p>
</body></html>
"""


@pytest.mark.parametrize("renderer", RENDERERS)
def test_xhtml_with_an_xml_encoding_declaration(renderer):
    raw = XHTML.encode("iso-8859-1")
    assert decode_page(raw).source == "xml"
    for html in (decode_html(raw), XHTML):  # bytes decoded here, or a str that still carries its declaration
        r = extract_math_text(html, renderer=renderer, width=400)
        assert "Für alle Zähler gilt:" in r["text"] and "Größere Formel:" in r["text"]
        assert "$\\frac{a}{b}$" in r["text"] and "$\\sqrt{2}$" in r["text"]
        assert "$$\\sum_{k=1}^n k = \\frac{n(n+1)}{2}$$" in r["text"] and "CDATA" not in r["text"]
        assert r["formulas"] == 3


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("depth", [300, 1000, 3000])
def test_deep_nesting_keeps_inner_text_and_what_follows(depth, renderer):
    html = ("<html><body><p>Before the nesting.</p>" + "<div><span>" * (depth // 2) +
            "<p>Inner text with <script type='math/tex'>e^{i\\pi}</script> deep down.</p>" +
            "</span></div>" * (depth // 2) + "<p>After the nesting, the page goes on.</p></body></html>")
    text = extract_math_text(html, renderer=renderer)["text"]
    assert "Before the nesting." in text
    assert "Inner text with $e^{i\\pi}$ deep down." in text
    assert "After the nesting, the page goes on." in text


def test_flatten_deep_unwraps_only_beyond_the_depth():
    html = "<div>" * 5 + "<pre>a <b>b</b></pre><math><mi>x</mi></math>text" + "</div>" * 5 + "<p>after</p>"
    flat = flatten_deep(html, max_depth=2)
    assert flat.startswith("<div><div><br><br><br><pre>a <b>b</b></pre><math><mi>x</mi></math>text")
    assert flat.endswith("text<br><br><br></div></div><p>after</p>")
    assert flatten_deep(html, max_depth=10) == html


def test_extract_rejects_undecodable_and_broken_notebooks():
    recs = [{"source": "a", "html": "<p>" + "\ufffd" * 80 + " some words here and there</p>"},
            {"source": "b", "format": "ipynb", "content_type": "application/json", "body": "{not json"},
            {"source": "c", "format": "ipynb", "body": json.dumps({"cells": [{"cell_type": "markdown",
                                                                               "source": ["# T\n", "$a^2$ " * 20]}]})}]
    out = Extract(ExtractConfig(renderer="python")).process(recs)
    assert out[0]["_reject"] == "decode_error" and "undecodable" in out[0]["_detail"]
    assert out[1]["_reject"] == "bad_notebook" and "body" not in out[1]
    assert "_reject" not in out[2] and out[2]["format"] == "ipynb" and out[2]["formulas"] == 20


# ---- WARC: every record counted ------------------------------------------------------------------------------
NOTEBOOK = {"nbformat": 4, "metadata": {"kernelspec": {"language": "python", "name": "python3"}},
            "cells": [{"cell_type": "markdown", "source": ["## Integrals\n", "We compute $\\int_0^1 x^2\\,dx = "
                                                           "\\frac{1}{3}$ numerically.\n"]},
                      {"cell_type": "code", "source": ["import numpy as np\n", "print(np.trapz([0, 1], [0, 1]))"],
                       "outputs": [{"output_type": "stream", "text": ["0.5\n"]}]}]}
TEX = "\\documentclass{article}\n\\begin{document}\nEuler: \\begin{equation} e^{i\\pi} + 1 = 0 \\end{equation}\n" \
      "and inline $a^2 + b^2 = c^2$ too.\n\\end{document}\n"
PLAIN = "Exercise 3. Show that the sum of the first n odd numbers is n^2, for every n >= 1.\n"


def warc_record(kind: str, uri: str, payload: bytes, n: int) -> bytes:
    ctype = {"response": "application/http; msgtype=response", "request": "application/http; msgtype=request"}[kind]
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
            f"WARC-Date: 2024-05-01T00:00:00Z\r\nWARC-Target-URI: {uri}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload + b"\r\n\r\n"


def http_response(status: str, ctype: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def build_warc(path: Path) -> Path:
    zh = SENTENCES["gb2312"]
    records = [
        ("response", "http://math.example.cn/page.html",
         http_response("200 OK", "text/html; charset=gb2312", page(zh + " " * 40 + zh).encode("gb2312"))),
        ("request", "http://math.example.cn/page.html", b"GET /page.html HTTP/1.1\r\nHost: math.example.cn\r\n\r\n"),
        ("response", "http://math.example.cn/missing.html",
         http_response("404 Not Found", "text/html", page("Not found. " * 10).encode())),
        ("response", "http://math.example.cn/paper.pdf",
         http_response("200 OK", "application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")),
        ("response", "http://math.example.cn/exercise.txt",
         http_response("200 OK", "text/plain; charset=utf-8", PLAIN.encode())),
        ("response", "http://math.example.cn/notes.tex", http_response("200 OK", "application/x-tex", TEX.encode())),
        ("response", "http://math.example.cn/integrals.ipynb",
         http_response("200 OK", "application/octet-stream", json.dumps(NOTEBOOK).encode())),
    ]
    path.write_bytes(b"".join(warc_record(k, u, p, i) for i, (k, u, p) in enumerate(records)))
    return path


def extract_only(**cfg):
    return [Extract(ExtractConfig(renderer="python", min_chars=20, **cfg))]


def run(tmp_path: Path, name: str, **cfg) -> tuple[dict, dict, list[dict]]:
    warc = build_warc(tmp_path / "pages.warc")
    spec = RunSpec(functools.partial(extract_only, **cfg), str(tmp_path / name))
    stats = run_pipeline(spec, plan_shards([warc]), workers=1, progress=False)
    by = {s["name"]: s for s in stats["stages"]}
    rejects = [json.loads(line) for p in sorted((tmp_path / name / "rejects").glob("*.jsonl"))
               for line in p.read_text().splitlines()]
    return by, {r["source"].rsplit("/", 1)[-1]: r for r in output_records(tmp_path / name)}, rejects


def test_warc_every_record_is_kept_or_rejected_with_a_reason(tmp_path):
    by, kept, rejects = run(tmp_path, "out")
    assert by["read"]["seen"] == 7 and by["read"]["dropped"] == {"not_a_response": 1}
    assert by["extract"]["dropped"] == {"http_status_404": 1, "unsupported_content_type:application/pdf": 1}
    counted = sum(by["read"]["dropped"].values()) + sum(by["extract"]["dropped"].values()) + by["extract"]["kept"]
    assert counted == 7 and by["extract"]["kept"] == 4
    assert sorted(kept) == ["exercise.txt", "integrals.ipynb", "notes.tex", "page.html"]
    assert {r["_reject"] for r in rejects} == {"not_a_response", "http_status_404",
                                               "unsupported_content_type:application/pdf"}
    assert all("body" not in r and "html" not in r for r in rejects)
    # The right text for each format: HTML decoded from its HTTP charset, LaTeX as-is, the notebook's math kept.
    html = kept["page.html"]
    assert SENTENCES["gb2312"] in html["text"] and html["encoding_source"] == "http" and html["format"] == "html"
    assert kept["notes.tex"]["text"] == TEX and kept["notes.tex"]["format"] == "tex"
    assert kept["notes.tex"]["formulas"] == 2
    assert kept["exercise.txt"]["text"] == PLAIN and kept["exercise.txt"]["format"] == "text"
    nb = kept["integrals.ipynb"]["text"]
    assert "We compute $\\int_0^1 x^2\\,dx = \\frac{1}{3}$ numerically." in nb
    assert "```python\nimport numpy as np\nprint(np.trapz([0, 1], [0, 1]))\n```" in nb and "0.5" not in nb
    assert kept["integrals.ipynb"]["formulas"] == 1


def test_warc_status_and_format_filters_are_configurable(tmp_path):
    by, kept, _ = run(tmp_path, "all_status", http_status=[], formats=["html"])
    assert by["extract"]["dropped"] == {"unsupported_content_type:application/pdf": 1,
                                        "unsupported_content_type:text/plain": 1,
                                        "unsupported_content_type:application/x-tex": 1,
                                        "unsupported_content_type:application/octet-stream": 1}
    assert sorted(kept) == ["missing.html", "page.html"]


def test_read_warc_alone_yields_pages_only(tmp_path):
    warc = build_warc(tmp_path / "pages.warc")
    recs = list(read_warc((str(warc),)))
    assert [r["http_status"] for r in recs] == [200, 404, 200, 200, 200, 200]
    assert [r["format"] for r in recs] == ["html", "html", None, "text", "tex", "ipynb"]
    assert "body" not in recs[2] and "html" not in recs[2]  # a PDF is not decoded as text
    assert len(list(read_warc((str(warc),), every_record=True))) == 7
