"""Helpers shared by benchmark scripts: machine facts and appending a row to RESULTS.md."""

from __future__ import annotations

import os
import platform
import sys
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def record(title: str, lines: list[str]) -> None:
    """Append a section with the command that produced it, the machine and the date."""
    command = "python " + " ".join(sys.argv)
    block = [f"## {title}", "", f"- command: `{command}`", f"- machine: {machine()}", f"- date: {date.today()}", ""]
    block += lines + [""]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the script named in its command.\n\n")
    with open(RESULTS, "a") as f:
        f.write("\n".join(block) + "\n")


def t95(xs: list[float], fmt: str = ".3f") -> str:
    """``mean ± half-width`` of the 95% Student-t interval of the mean (just the mean for one value)."""
    import statistics

    from scipy import stats

    m = statistics.mean(xs)
    if len(xs) < 2:
        return f"{m:{fmt}}"
    h = stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
    return f"{m:{fmt}} ± {h:{fmt.lstrip('+')}}"  # a sign on the mean, never on the half-width


def shared_data() -> Path:
    """The public data folder ($REFINERY_DATA, default ../shared/data next to the repository)."""
    return Path(os.environ.get("REFINERY_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def wikitext_model(steps: int = 1500, num_layers: int = 4) -> tuple[Path, Path, Path]:
    """A nano Llama (and tokenizer) pretrained on the first 90% of WikiText-2's lines, cached; returns
    ``(model_dir, train_text, heldout_text)``: the last 10% is never trained or calibrated on."""
    from refinery.config import load_config
    from refinery.models.pretrain import PretrainConfig, cached_pretrain
    from refinery.models.zoo import cache_dir

    src = shared_data() / "wikitext2-raw" / "wiki.test.raw"
    if not src.exists():
        sys.exit(f"public data not found: {src} (set REFINERY_DATA)")
    lines = src.read_text(encoding="utf-8").replace("\r\n", "\n").splitlines(keepends=True)
    cut = int(len(lines) * 0.9)
    root = cache_dir() / "bench-data"
    root.mkdir(parents=True, exist_ok=True)
    train, held = root / "wikitext2-train90.txt", root / "wikitext2-heldout10.txt"
    train.write_text("".join(lines[:cut]))
    held.write_text("".join(lines[cut:]))
    cfg = load_config(PretrainConfig, None, [
        "name=wikitext-nano", "data.source=text", f"data.text_files=[{train}]", "data.seq_len=256",
        f"trainer.steps={steps}", "trainer.batch_size=32", "trainer.lr=1e-3", "trainer.warmup_steps=100",
        "trainer.eval_every=500", "trainer.checkpoint_every=500", "eval.n_per_task=0"]
        + ([f"model.num_layers={num_layers}", f"name=wikitext-nano{num_layers}"] if num_layers != 4 else []))
    return cached_pretrain(cfg, 0, progress=True), train, held
