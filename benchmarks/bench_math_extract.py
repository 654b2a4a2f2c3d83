"""Math-preserving extraction vs the tools a user would otherwise pick, on the same pages in one run: formula
recall (the fraction of a page's formulas present as LaTeX in the output) and pages/s, for Refinery (lynx and
pure-Python renderers), plain lynx, trafilatura and resiliparse's extract_plain_text.

    python benchmarks/bench_math_extract.py [--pages 200] [--record]

Pages: generated lessons in 10 math formats (MathJax v2 inline/display, KaTeX, MathML+TeX, data-tex, LaTeX alt
text, codecogs and wp-latex image URLs, raw $…$ and \\(…\\)), whose formulas are known, plus the two real Wikipedia
pages in ../shared/data (MathML; truth = their TeX annotations).

Real-page section (``--real``, on by default): the regression set of tests/data/math_pages.py — pages from the real
renderers (MathJax 3 CHTML/SVG without assistive MathML, MathJax MathML, Temml, KaTeX, MathJax 2), hand-written
image-service / raw-environment / numbered-equation pages, and the real shared pages (MathJax demo with and without
its assistive MathML, Wikipedia with TeX, without TeX annotations, without MathML) — scored with canonical LaTeX
(refinery.data.math_web.canonical): "in text" = the formula's canonical form occurs in the canonicalised output (the
same rule for every tool), "formula" = equal to one extracted $…$ formula (Refinery only); dev and holdout apart.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def recall(text: str, formulas: list[str]) -> float:
    t = squash(text)
    return sum(squash(f) in t for f in formulas) / len(formulas) if formulas else 1.0


def corpus(n: int) -> list[dict]:
    import lxml.html
    from _common import shared_data

    from refinery.data.math_web.html import normalise_tex
    from refinery.data.math_web.synthetic import make_pages

    pages = make_pages(n, seed=0)
    for rel in ("readability-math/wikipedia-3__source.html", "trafilatura-eval/en.wikipedia.org.tsne.html"):
        path = shared_data() / rel
        if not path.exists():
            continue
        html = path.read_text(encoding="utf-8")
        root = lxml.html.document_fromstring(html)
        truth = [normalise_tex(a.text) for a in root.iter() if isinstance(a.tag, str)
                 and a.tag.endswith("annotation") and "tex" in (a.get("encoding") or "")]
        pages.append({"source": rel, "html": html, "formulas": truth, "format": "wikipedia-mathml"})
    return pages


def methods():
    from refinery.data.math_web.html import extract_math_text, lynx_available, render_lynx

    out = {"refinery (python renderer)": lambda h: extract_math_text(h, renderer="python")["text"]}
    if lynx_available():
        out["refinery (lynx)"] = lambda h: extract_math_text(h, renderer="lynx")["text"]
        out["plain lynx"] = lambda h: render_lynx(h)
    try:
        import trafilatura

        out["trafilatura"] = lambda h: trafilatura.extract(h, favor_recall=True, include_comments=False) or ""
    except ImportError:
        print("trafilatura not installed (pip install -e '.[bench]')")
    try:
        from resiliparse.extract.html2text import extract_plain_text

        out["resiliparse extract_plain_text"] = lambda h: extract_plain_text(h, alt_texts=True)
    except ImportError:
        print("resiliparse not installed (pip install -e '.[bench]')")
    return out


def real_section(fns: dict) -> list[str]:
    """Recall on the real-renderer regression set, per renderer and split, canonical LaTeX."""
    from _common import shared_data

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.data.math_pages import own_pages, shared_pages

    from refinery.data.math_web.canonical import formula_recall, formulas_in, text_recall

    pages = own_pages() + shared_pages(shared_data())
    kinds = sorted({p["renderer"] for p in pages})
    n_dev = sum(p["split"] == "dev" for p in pages)
    lines = [f"- real-renderer regression set: {len(pages)} pages ({n_dev} dev, {len(pages) - n_dev} holdout), "
             f"{sum(len(p['formulas']) for p in pages)} formulas; canonical LaTeX; cells = mean page recall", "",
             "| method | score | " + " | ".join(kinds) + " | dev | holdout | holdout, lenient |",
             "|" + "---|" * (len(kinds) + 5)]
    for name, fn in fns.items():
        outs = [fn(p["html"]) for p in pages]
        scorers = [("in text", lambda o, p, le=False: text_recall(p["formulas"], o, le))]
        if name.startswith("refinery"):
            scorers.append(("formula", lambda o, p, le=False: formula_recall(p["formulas"], formulas_in(o), le)))
        for label, score in scorers:
            rec = [score(o, p) for o, p in zip(outs, pages)]
            lenient = [score(o, p, True) for o, p in zip(outs, pages)]

            def mean(xs):
                return f"{sum(xs) / len(xs):.3f}" if xs else "-"
            cells = [mean([r for r, p in zip(rec, pages) if p["renderer"] == k]) for k in kinds]
            cells += [mean([r for r, p in zip(rec, pages) if p["split"] == s]) for s in ("dev", "holdout")]
            cells.append(mean([r for r, p in zip(lenient, pages) if p["split"] == "holdout"]))
            row = f"| {name} | {label} | " + " | ".join(cells) + " |"
            lines.append(row)
            print(row, flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--no-real", action="store_true", help="skip the real-renderer section")
    args = ap.parse_args()
    pages = corpus(args.pages)
    groups = sorted({p["format"] for p in pages})
    header = "| method | " + " | ".join(groups) + " | all (macro) | pages/s |"
    lines = [f"- {len(pages)} pages ({args.pages} generated, 10 formats; + real Wikipedia MathML pages), "
             f"{sum(len(p['formulas']) for p in pages)} formulas", "", header, "|" + "---|" * (len(groups) + 3)]
    for name, fn in methods().items():
        t0 = time.perf_counter()
        outs = [fn(p["html"]) for p in pages]
        dt = time.perf_counter() - t0
        per = {g: [recall(o, p["formulas"]) for o, p in zip(outs, pages) if p["format"] == g] for g in groups}
        allr = sum(recall(o, p["formulas"]) for o, p in zip(outs, pages)) / len(pages)
        row = f"| {name} | " + " | ".join(f"{sum(v) / len(v):.2f}" for v in per.values()) + \
            f" | {allr:.3f} | {len(pages) / dt:.0f} |"
        lines.append(row)
        print(row, flush=True)
    print("\n".join(lines[:4]))
    if not args.no_real:
        lines += ["", "Real renderers (canonical LaTeX):", ""] + real_section(methods())
    if args.record:
        from _common import record

        title = "Math-preserving extraction: formula recall and speed vs lynx, trafilatura, resiliparse"
        record(title + ("" if args.no_real else " (+ real renderers, canonical LaTeX; pages/s under load)"), lines)


if __name__ == "__main__":
    main()
