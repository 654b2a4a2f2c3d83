"""The quickstart's data stage: Nemotron-CC-Math on a handful of generated web pages (math in ten formats, two
duplicates, one page leaking a held-out test item), with formula recall measured against the known formulas."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from pydantic import Field

from refinery.config import Section
from refinery.runs import RunDir


class QuickDataConfig(Section):
    name: str = Field("quickstart-data", description="run name")
    seed: int = Field(0, description="seed for the generated pages")
    pages: int = Field(20, ge=2, description="generated pages (formats cycle through all ten)")
    formulas_per_page: int = Field(4, ge=1, le=10, description="formulas on each page")


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def run_data_stage(cfg: QuickDataConfig, run: RunDir, progress: bool = True) -> dict[str, Any]:
    from refinery.config import load_config
    from refinery.data.math_web.pipeline import MathCCConfig
    from refinery.data.math_web.synthetic import make_pages
    from refinery.data.pipeline import output_records
    from refinery.data.runner import run_data_recipe
    from refinery.tasks import make_splits

    pages = make_pages(cfg.pages, cfg.seed, cfg.formulas_per_page)
    rng = random.Random(cfg.seed)
    # A benchmark to decontaminate against: held-out arithmetic word problems; one page copies one of them.
    _, test = make_splits("word_problems", 50, 20, seed=cfg.seed)
    bench = run.path / "benchmark" / "word_problems_test.jsonl"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text("".join(json.dumps({"question": t["prompt"]}) + "\n" for t in test))
    leak = dict(pages[1])
    leak["source"] = "https://homework.example.org/help"
    leak["html"] = leak["html"].replace("</h1>", f"</h1><p>Can someone solve this? {test[3]['prompt']}</p>")
    dup = dict(pages[0], source="https://mirror.example.org/lesson/0")
    near = dict(pages[2], source="https://copy.example.org/lesson/2",
                html=pages[2]["html"].replace("Check your answer", "Check your answers twice"))
    corpus = pages + [leak, dup, near]
    rng.shuffle(corpus)
    root = run.path / "pages"
    root.mkdir(exist_ok=True)
    truth = {}
    for i, p in enumerate(corpus):
        path = root / f"page{i:03d}.html"
        path.write_text(p["html"], encoding="utf-8")
        truth[str(path)] = p["formulas"]
    mcfg = load_config(MathCCConfig, None, [f"input=[{root}]", f"output={run.path / 'out'}", "workers=1",
                                            f"decontaminate.files=[{bench}]", "decontaminate.min_words=6"])
    stats = run_data_recipe(mcfg, progress=progress)
    kept = output_records(run.path / "out")
    recalls = [sum(_squash(f) in _squash(r["text"]) for f in truth[r["source"]]) / len(truth[r["source"]])
               for r in kept]
    by = {s["name"]: s for s in stats["stages"]}
    summary = {
        "data.pages": len(corpus), "data.kept": len(kept), "data.formulas": sum(r["formulas"] for r in kept),
        "data.formula_recall": round(sum(recalls) / max(1, len(recalls)), 4),
        "data.duplicates_removed": sum(by[n]["dropped"].get(f"duplicate_{k}", 0)
                                       for n, k in (("dedup_exact", "exact"), ("dedup_fuzzy", "fuzzy"))),
        "data.contaminated": by["decontaminate"]["dropped"].get("contaminated", 0),
        "data.seconds": stats["seconds"],
    }
    run.write_summary(summary)
    example = next((r for r in kept if r["formulas"] >= 3), kept[0] if kept else None)
    lines = [f"# {cfg.name}", "",
             f"{len(corpus)} generated pages (math as MathJax v2, KaTeX, MathML, data-tex, LaTeX alt text, codecogs "
             "and wp-latex images, raw $…$ and \\(…\\); two copies and one page quoting a held-out test question) "
             "through extract → exact dedup → MinHash dedup → decontamination.", "",
             "| stage | in | kept | dropped |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['seen']} | {s['kept']} | "
              f"{', '.join(f'{k}: {v}' for k, v in s['dropped'].items()) or '-'} |" for s in stats["stages"]]
    lines += ["", f"Formula recall (formulas of each kept page found as LaTeX in its text): "
              f"{summary['data.formula_recall']:.3f}."]
    if example:
        lines += ["", "An extracted page:", "", "```", example["text"].strip()[:1200], "```"]
    run.write_report("\n".join(lines) + "\n")
    run.finish()
    return summary
