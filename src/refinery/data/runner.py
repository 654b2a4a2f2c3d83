"""Runners behind ``refinery data``: a recipe over inputs into an output directory, and single-file math
extraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from refinery.errors import ConfigError


def pipelines() -> dict[str, tuple[type, Any, Any]]:
    """Data recipes by their ``pipeline`` key: (config class, stage builder, extra report sections or None)."""
    from refinery.data.math_web.pipeline import MathCCConfig
    from refinery.data.math_web.pipeline import build_stages as math_cc
    from refinery.data.reasoning import acereason, crossthink
    from refinery.data.rephrase import beyondweb
    from refinery.data.safety import cultureguard

    return {"nemotron_cc_math": (MathCCConfig, math_cc, None),
            "acereason_curation": (acereason.CurationConfig, acereason.build_stages, None),
            "beyondweb": (beyondweb.BeyondWebConfig, beyondweb.build_stages, beyondweb.report_sections),
            "crossthink_data": (crossthink.CrossThinkConfig, crossthink.build_stages, crossthink.report_sections),
            "cultureguard": (cultureguard.CultureGuardConfig, cultureguard.build_stages, None)}


def config_class(recipe: str | Path | None) -> type:
    """The config class a data recipe file asks for (its ``pipeline`` key; default Nemotron-CC-Math)."""
    from refinery.config import read_yaml

    name = (read_yaml(recipe) or {}).get("pipeline", "nemotron_cc_math") if recipe else "nemotron_cc_math"
    table = pipelines()
    if name not in table:
        raise ConfigError(f"unknown pipeline {name!r} in {recipe} (available: {', '.join(table)})")
    return table[name][0]


def run_data_recipe(cfg, progress: bool = True, fresh: bool = False, retry_rejects: bool = False
                    ) -> dict[str, Any]:
    """Run a data recipe (any of ``pipelines()``); a re-run into the same output resumes (finished shards are
    skipped; a complete run is not redone). ``retry_rejects``: then run the records rejected for a transient
    reason (``cfg.retry_reasons``) again."""
    import functools

    from refinery.config import dump_config
    from refinery.data.io import plan_shards
    from refinery.data.pipeline import RunSpec, run_pipeline
    from refinery.data.pipeline import retry_rejects as retry
    from refinery.data.store import atomic_write_text, location, rmtree

    _, build_stages, report_sections = pipelines()[cfg.pipeline]
    if not cfg.input:
        raise ConfigError("no input: set input=PATH (WARC, JSONL, Parquet or a directory of HTML files)")
    if not cfg.output:
        raise ConfigError("no output: set output=DIR")
    missing = [f for f in cfg.required_paths() if not Path(f).exists()]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not found (the configured stages need it: point the recipe at "
                          "existing files, or drop the stage)")
    out = location(cfg.output)  # a local directory or an fsspec URL (s3://, gs://, file://, memory://)
    if fresh and out.exists():
        rmtree(out)
    resolved = dump_config(cfg)
    saved = out / "config.yaml"
    if saved.exists() and saved.read_text() != resolved:
        raise ConfigError(f"{out} holds a run with a different config ({saved}); use another output or --fresh")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, resolved)
    shards = plan_shards(cfg.input, cfg.html_per_shard, cfg.shard_bytes)
    spec = RunSpec(functools.partial(build_stages, cfg), str(out), cfg.format, cfg.batch_size, cfg.field_types)
    stats = run_pipeline(spec, shards, cfg.executor, cfg.workers, progress, ray_address=cfg.ray_address)
    if retry_rejects:
        stats = retry(spec, cfg.retry_reasons)
    stats["decontamination"] = contamination_report(out)
    extra = report_sections(out, stats) if report_sections else []
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    atomic_write_text(out / "report.md", stage_report(cfg.name, stats) + "\n".join(extra) + ("\n" if extra else ""))
    return stats


def stage_report(name: str, stats: dict) -> str:
    lines = [f"# {name}", "", f"{stats['shards']} shards, {stats['seconds']} s ({stats['executor']}); "
             f"{stats['records_out']} records out.", "", "| stage | in | kept | dropped (reason: n) | seconds |",
             "|---|---|---|---|---|"]
    for st in stats["stages"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "-"
        lines.append(f"| {st['name']} | {st['seen']} | {st['kept']} | {dropped} | {st['seconds']:.1f} |")
    dec = stats.get("decontamination") or {}
    if dec.get("documents"):
        lines += ["", f"Decontamination: {dec['documents']} records matched benchmark items "
                  f"({', '.join(f'{k}: {v}' for k, v in dec['per_benchmark'].items())}); see decontamination.json."]
    return "\n".join(lines) + "\n"


def contamination_report(out: Path) -> dict[str, Any]:
    """Which benchmark items matched which documents (from the rejects), written to ``decontamination.json``."""
    from refinery.data.io import read_output

    docs, per_bench = [], {}
    for p in sorted((out / "rejects").glob("*.jsonl")):
        for r in read_output(p):
            if r.get("_reject") == "contaminated":
                hits = json.loads(r.get("_detail") or "[]")
                docs.append({"id": r.get("id"), "source": r.get("source"), "matches": hits})
                for bench, _ in hits:
                    per_bench[bench] = per_bench.get(bench, 0) + 1
    report = {"documents": len(docs), "per_benchmark": per_bench, "matches": docs}
    (out / "decontamination.json").write_text(json.dumps(report, indent=1) + "\n")
    return {"documents": len(docs), "per_benchmark": per_bench}


def extract_math(inputs: list[str], output: str | Path, renderer: str = "auto", workers: int | None = None,
                 executor: str = "local", progress: bool = True) -> dict[str, Any]:
    """Math-preserving extraction of every page into one JSONL (``source``, ``text``, formula counts); the work
    directory next to it makes a re-run resume, and is removed on success."""
    from refinery.config import load_config
    from refinery.data.math_web.pipeline import MathCCConfig
    from refinery.data.pipeline import output_records
    from refinery.runs import atomic_write_text

    output = Path(output)
    work = output.with_name(output.name + ".work")
    cfg = load_config(MathCCConfig, None, [f"output={work}", "stages=[extract]", f"extract.renderer={renderer}",
                                           "extract.min_chars=0", f"executor={executor}"]
                      + ([f"workers={workers}"] if workers else []))
    cfg = cfg.model_copy(update={"input": [str(i) for i in inputs]})
    stats = run_data_recipe(cfg, progress=progress)
    lines = [json.dumps({k: v for k, v in r.items() if k not in ("id", "_row")}, ensure_ascii=False)
             for r in output_records(work)]
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "\n".join(lines) + ("\n" if lines else ""))
    rejects = sum(sum(s["dropped"].values()) for s in stats["stages"])
    shutil.rmtree(work, ignore_errors=True)
    return {"pages": len(lines), "rejected": rejects, "formulas": sum(json.loads(x)["formulas"] for x in lines),
            "seconds": stats["seconds"]}
