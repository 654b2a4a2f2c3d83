"""The ``refinery`` command: one typer group per wing; errors are one line, never a traceback wall."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from refinery import __version__
from refinery.errors import RefineryError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(name="refinery", help="Refinery: Nemotron-family recipes (data, RLVR, reward models, "
                  "compression) at laptop scale and real scale.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="Tiny model zoo: build, pretrain and inspect HF-format Llama models.",
                         no_args_is_help=True)
tasks_app = typer.Typer(help="Procedural tasks with verifiable answers (arithmetic, word problems, countdown).",
                        no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(tasks_app, name="tasks")
sft_app = typer.Typer(help="Supervised fine-tuning on chat examples (loss on responses only).", no_args_is_help=True)
rl_app = typer.Typer(help="RL with verifiable rewards: GRPO-family trainer (AceReason, ProRL, CrossThink).",
                     no_args_is_help=True)
app.add_typer(sft_app, name="sft")
app.add_typer(rl_app, name="rl")
rm_app = typer.Typer(help="Reward models: HelpSteer2-Preference (BT, margin, scaled BT, regression, ExPO) and "
                     "ArmoRM (multi-objective + gating), RewardBench-style evaluation.", no_args_is_help=True)
app.add_typer(rm_app, name="rm")
compress_app = typer.Typer(help="Compression: 2:4 sparsity (magnitude, Wanda, SparseGPT, MaskLLM); Puzzle.",
                           no_args_is_help=True)
app.add_typer(compress_app, name="compress")

data_app = typer.Typer(help="Data engine: Nemotron-CC-Math (WARC/HTML -> math-preserving text -> cleanup -> "
                         "quality -> dedup -> decontamination).", no_args_is_help=True)
app.add_typer(data_app, name="data")

def _version(value: bool) -> None:
    if value:
        console.print(f"refinery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


RecipeArg = typer.Argument(..., help="Recipe YAML file (see recipes/).", show_default=False)
OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. trainer.steps=200 model.preset=micro.",
                              show_default=False)
OutOpt = typer.Option(None, "--out", help="Run directory (default: runs/<name>-<timestamp>).")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved config and exit.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
NprocOpt = typer.Option(1, "--nproc", min=1, help="Run on N processes (torchrun, one node; one GPU each when "
                        "CUDA is present, CPU ranks with gloo otherwise). Multi-node: see README 'Scaling up'.")
_ARGV: list[str] = []  # this invocation's arguments, for --nproc's relaunch under torchrun
SplitOpt = typer.Option(None, "--split", help="--data's split (a dataset with several splits, or a hub dataset).")
SubsetOpt = typer.Option(None, "--subset", help="hf:NAME's configuration (e.g. main for gsm8k).")
ColumnOpt = typer.Option(None, "--column", help="FIELD=COLUMN: read FIELD (prompt, answer, chosen, ...) from "
                         "--data's COLUMN; repeatable.")


def _data_source(data: str, split: str | None, subset: str | None, column: list[str] | None):
    """--data as given (a JSONL file, tasks:NAME) or, with --split/--subset/--column or hf:NAME, a DataSource."""
    from refinery.sources import DataSource

    if data.startswith("tasks:") or not (split or subset or column or data.startswith("hf:")):
        return data
    return DataSource.from_cli(data, split=split, subset=subset, columns=column or ())


def _run_recipe(config_cls, recipe, overrides, out, resume: bool, dry_run: bool, runner, check=None,
                nproc: int = 1) -> None:
    """The shape every runner command shares: recipe -> config -> (dry run | run directory -> runner -> summary)."""
    from refinery.config import dump_config, load_config
    from refinery.runs import RunDir

    cfg = load_config(config_cls, recipe, overrides)
    if check is not None:
        check(cfg)
    if dry_run:
        console.print(dump_config(cfg), end="", markup=False, highlight=False)
        return
    if nproc > 1:  # the same command on N ranks under torchrun, all writing into one run directory
        from refinery.engine.dist import relaunch_with_torchrun

        argv = list(_ARGV)
        if out is None:
            out = RunDir.new_path(cfg.name)
            argv += ["--out", str(out)]
        rc = relaunch_with_torchrun(nproc, argv)
        if rc:
            raise typer.Exit(rc)
        return
    _quiet_hf()
    argv = ["refinery", *_ARGV]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: rank 0 makes the run directory
        from refinery.engine import dist

        if out is None:
            raise RefineryError("under torchrun every rank must write into the same run directory: pass --out "
                                "RUN_DIR (or use --nproc N, which picks one)")
        env = dist.init_distributed(getattr(getattr(cfg, "engine", None), "device", "auto"))
        if env.is_main:
            run = RunDir.create(cfg, cfg.name, out=out, resume=resume, seed=cfg.seed, argv=argv)
        dist.barrier()
        if not env.is_main:
            run = RunDir(Path(out))
        summary = runner(cfg, run)
        if env.is_main:
            _print_summary(summary, run.path)
        dist.destroy()
        return
    run = RunDir.create(cfg, cfg.name, out=out, resume=resume, seed=cfg.seed, argv=argv)
    summary = runner(cfg, run)
    _print_summary(summary, run.path)


def _quiet_hf() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


# ---- models ------------------------------------------------------------------------------------------------
@models_app.command("build")
def models_build(
    preset: str = typer.Argument("nano", help="Model preset: nano, mini or micro."),
    out: Path | None = typer.Option(None, "--out", help="Copy the built model here (default: cache only)."),
    corpus: List[Path] = typer.Option([], "--corpus", help="Text file(s) to train the tokenizer on "
                                      "(default: the procedural task corpus)."),
    seed: int = typer.Option(0, "--seed"),
    overrides: List[str] | None = typer.Argument(None, help="Model overrides, e.g. hidden_size=192."),
) -> None:
    """Build an initialised model and its tokenizer (cached under ~/.cache/refinery by config hash)."""
    import shutil

    from refinery.config import apply_overrides, validate
    from refinery.models.pretrain import PretrainData, read_text_files, tokenizer_corpus
    from refinery.models.zoo import ModelConfig, TokenizerConfig, build_cached

    _quiet_hf()
    mcfg = validate(ModelConfig, apply_overrides({"preset": preset}, overrides or []), source="model")
    texts = read_text_files([str(p) for p in corpus]) if corpus else tokenizer_corpus(PretrainData(), seed)
    path = build_cached(mcfg, TokenizerConfig(), texts, seed=seed)
    if out is not None:
        if out.exists() and any(out.iterdir()):
            raise RefineryError(f"--out {out} exists and is not empty")
        shutil.copytree(path, out, dirs_exist_ok=True)
        path = out
    _print_info(path)


@models_app.command("pretrain")
def models_pretrain(recipe: Path = RecipeArg, overrides: List[str] | None = OverridesArg,
                    out: Path | None = OutOpt, resume: bool = ResumeOpt, dry_run: bool = DryRunOpt,
                    progress: bool = ProgressOpt, nproc: int = NprocOpt) -> None:
    """Pretrain a tiny model on text files or a procedural task stream (cosine LR, eval, checkpoints)."""
    from refinery.models.pretrain import PretrainConfig, check_config, pretrain

    _run_recipe(PretrainConfig, recipe, overrides, out, resume, dry_run,
                lambda cfg, run: pretrain(cfg, run, progress=progress), check=check_config, nproc=nproc)


@models_app.command("info")
def models_info(path: Path = typer.Argument(..., help="HF model directory or checkpoint.")) -> None:
    """Print a model's architecture, parameter count and 2:4 readiness."""
    _quiet_hf()
    _print_info(path)


@models_app.command("init")
def models_init(
    arch: str = typer.Option(..., "--arch", help="llama, qwen2, qwen3, mistral, gemma2, phi3 or deepseek-r1-qwen2."),
    size: str = typer.Option("tiny", "--size", help="tiny (hidden 64, 2 layers) or small (hidden 256, 4 layers)."),
    out: Path = typer.Option(..., "--out", help="New (or empty) directory for the checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    template: Optional[str] = typer.Option(None, "--template", help="Chat template instead of the arch's own: "
                                           "qwen2, qwen3, llama3, mistral, gemma2, phi3, deepseek-r1."),
) -> None:
    """Write a random-init HF checkpoint of a real architecture with its family's chat template and tokens."""
    from refinery.models.families import init_checkpoint

    _quiet_hf()
    _print_info(init_checkpoint(arch, size, out, seed, template))


def _print_info(path: Path) -> None:
    from refinery.models.io import load_model, load_tokenizer
    from refinery.models.zoo import count_parameters

    model = load_model(path)
    tok = load_tokenizer(path)
    c = model.config
    linears = [(n, m) for n, m in model.named_modules()
               if m.__class__.__name__ == "Linear" and ".layers." in f".{n}"]
    ready = all(m.in_features % 4 == 0 and m.out_features % 4 == 0 for _, m in linears)
    info = {
        "path": str(path), "architecture": c.architectures[0] if c.architectures else type(model).__name__,
        "params": count_parameters(model), "layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
        "intermediate_size": c.intermediate_size, "vocab_size": len(tok),
        "max_position_embeddings": c.max_position_embeddings, "tied_embeddings": bool(c.tie_word_embeddings),
        "chat_template": bool(tok.chat_template), "block_linears": len(linears), "sparsity_2_4_ready": ready,
    }
    console.print_json(json.dumps(info))


# ---- tasks -------------------------------------------------------------------------------------------------
@tasks_app.command("list")
def tasks_list() -> None:
    """List the procedural tasks and their difficulty levels."""
    from refinery.tasks import TASKS

    for name in sorted(TASKS):
        t = TASKS[name]
        console.print(f"[bold]{name}[/bold] ({t.domain}; difficulty {list(t.difficulties)}): {t.description}")


@tasks_app.command("sample")
def tasks_sample(
    name: str = typer.Argument(..., help="Task name (see 'refinery tasks list')."),
    n: int = typer.Option(100, "--n", min=1, help="How many items."),
    out: Path = typer.Option(..., "--out", help="Output JSONL file."),
    seed: int = typer.Option(0, "--seed"),
    difficulty: str | None = typer.Option(None, "--difficulty", help="Levels, e.g. 2 or 1,2,3 (default: all)."),
    split: str = typer.Option("train", "--split", help="train or test: the two never share a prompt."),
) -> None:
    """Write N items {id, domain, prompt, answer, difficulty, solution} as JSONL."""
    from refinery.runs import atomic_write_text
    from refinery.tasks import sample

    levels = None
    if difficulty:
        try:
            levels = [int(x) for x in difficulty.split(",")]
        except ValueError:
            raise RefineryError(f"--difficulty {difficulty!r}: expected integers like 2 or 1,2,3") from None
    if split not in ("train", "test"):
        raise RefineryError(f"--split must be 'train' or 'test', got {split!r}")
    # The split is a hash of the prompt, so any 'train' file and any 'test' file are disjoint.
    items = sample(name, n, seed=seed, difficulty=levels, split=split)
    atomic_write_text(out, "".join(json.dumps(it) + "\n" for it in items))
    console.print(f"wrote {len(items)} {name} items to {out}")


# ---- sft / rl ----------------------------------------------------------------------------------------------
@sft_app.command("train")
def sft_train(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg, out: Optional[Path] = OutOpt,
              resume: bool = ResumeOpt, dry_run: bool = DryRunOpt, progress: bool = ProgressOpt,
              nproc: int = NprocOpt) -> None:
    """Chat-template SFT (loss on response tokens only, optional packing, resumable)."""
    from refinery.models.pretrain import check_config
    from refinery.rl.sft import SFTConfig, train_sft

    _run_recipe(SFTConfig, recipe, overrides, out, resume, dry_run,
                lambda cfg, run: train_sft(cfg, run, progress=progress), check=check_config, nproc=nproc)


@rl_app.command("train")
def rl_train(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg, out: Optional[Path] = OutOpt,
             resume: bool = ResumeOpt, dry_run: bool = DryRunOpt, progress: bool = ProgressOpt,
             nproc: int = NprocOpt) -> None:
    """Train a policy with verifier rewards (e.g. recipes/prorl.yaml profile=tiny)."""
    from refinery.rl.config import RLConfig
    from refinery.rl.trainer import train_rl

    _run_recipe(RLConfig, recipe, overrides, out, resume, dry_run,
                lambda cfg, run: train_rl(cfg, run, progress=progress), nproc=nproc)


def _eval_refusals(model: str, data: Optional[str], out: Optional[Path]) -> None:
    """A guard's false refusals on benign prompts that look unsafe (the packaged XSTest-style set by default)."""
    from rich.table import Table

    from refinery.data.safety.over_refusal import evaluate_over_refusal

    _quiet_hf()
    res = evaluate_over_refusal(model, data)
    pct = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for key, title in (("by_language", "language"), ("by_type", "type")):
        table = Table(title=f"{model}: false refusals by {title}")
        for col in (title, "safe", "false-refusal rate", "contrast", "contrast flagged"):
            table.add_column(col)
        for name, m in [*res[key].items(), ("all", res["all"])]:
            table.add_row(name, str(m["safe"]), pct(m["false_refusal_rate"]), str(m["contrast"]),
                          pct(m["contrast_recall"]))
        console.print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "refusals.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))


@app.command("eval")
def eval_cmd(
    kind: str = typer.Argument(..., help="math, code, choice, ppl (perplexity), safety (a guard on labelled "
                               "data) or refusals (a guard's false refusals on benign look-alike prompts)."),
    data: Optional[str] = typer.Option(None, "--data", help="gsm8k/math500/aime/humaneval file, a JSONL of {id, "
                                       "prompt, answer|tests}, tasks:NAME for a procedural task's test split, a "
                                       "Parquet/CSV file, folder or save_to_disk directory, or hf:NAME (hub)."),
    split: Optional[str] = SplitOpt,
    subset: Optional[str] = SubsetOpt,
    column: Optional[List[str]] = ColumnOpt,
    text: Optional[str] = typer.Option(None, "--text", help="ppl: a UTF-8 text file (e.g. WikiText-2 test), or "
                                       "a dataset (Parquet, folder, save_to_disk directory, hf:NAME) whose 'text' "
                                       "column is joined (--column text=COLUMN to map it)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=2, help="ppl: window length (default: the "
                                          "model's context)."),
    model: List[str] = typer.Option(..., "--model", help="Model dir (hf/vllm) or served name (openai); repeat "
                                    "to compare models (ProRL's boundary analysis)."),
    backend: str = typer.Option("hf", "--backend", help="hf, openai or vllm."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", "--base-url"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="openai: env var with the API key "
                                    "(e.g. the REFINERY_API_KEY of a `refinery serve --api-key` server)."),
    opens_thinking: Optional[bool] = typer.Option(None, "--opens-thinking/--no-opens-thinking", help="Whether the "
                                                  "prompt template opens <think> (DeepSeek-R1): a response without "
                                                  "</think> is then cut off while thinking. Default: read from the "
                                                  "model's tokenizer (hf, vllm); off for openai."),
    n: int = typer.Option(16, "--n", min=1, help="Samples per problem."),
    k: str = typer.Option("1,4,16", "--k", help="pass@k values (each <= n)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="First N problems (ppl: windows) only."),
    temperature: float = typer.Option(0.8, "--temperature"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template with {problem} (default: "
                                           "task prompt as is; files: an instruction to box the answer)."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for results.json, report.md and the plot."),
) -> None:
    """Unbiased pass@k and avg@n of one or more models on a benchmark; perplexity (``ppl``); a guard model's
    per-language accuracy / F1 / false-refusal rate (``safety``, --data JSONL {text, label safe|unsafe, lang}); or
    its false refusals on benign prompts that look unsafe, per language and type (``refusals``; --data optional)."""
    from refinery.eval.passk import run_eval

    if kind == "safety":
        from rich.table import Table

        from refinery.data.safety.guard import evaluate_guard

        if data is None:
            raise RefineryError("eval safety needs --data FILE (JSONL of {text, label, lang})")
        _quiet_hf()
        res = evaluate_guard(model[0], data)
        table = Table(title=f"{model[0]} on {data}")
        for col in ("language", "n", "accuracy", "F1 (unsafe)", "false-refusal rate"):
            table.add_column(col)
        for lang, m in res.items():
            table.add_row(lang, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['f1']:.3f}", f"{m['false_refusal_rate']:.3f}")
        console.print(table)
        if "category_f1" in res.get("all", {}):
            console.print(f"hazard categories (unsafe items): micro F1 {res['all']['category_f1']:.3f}")
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "safety.json").write_text(json.dumps(res, indent=1))
        return
    if kind == "refusals":
        _eval_refusals(model[0], data, out)
        return
    if kind == "ppl":
        from refinery.eval.perplexity import eval_ppl

        if text is None:
            raise RefineryError("eval ppl needs --text FILE")
        _quiet_hf()
        for m in model:
            r = eval_ppl(m, _data_source(text, split, subset, column), seq_len, limit)
            console.print(f"{m}: ppl {r['ppl']:.3f} ({r['windows']} windows x {r['seq_len']} tokens)",
                          highlight=False)
        return
    if data is None:
        raise RefineryError(f"eval {kind} needs --data")
    source = _data_source(data, split, subset, column)
    try:
        ks = sorted({int(x) for x in k.split(",")})
    except ValueError:
        raise RefineryError(f"--k {k!r}: expected integers like 1,4,16") from None
    if any(x > n or x < 1 for x in ks):
        raise RefineryError(f"every k must be between 1 and --n ({n}); got {ks}")
    _quiet_hf()
    results = run_eval(kind, source, model, backend=backend, base_url=base_url, n=n, ks=ks, limit=limit,
                       temperature=temperature, max_new_tokens=max_new_tokens, template=template, seed=seed, out=out,
                       opens_thinking=opens_thinking, api_key_env=api_key_env)
    from rich.table import Table

    table = Table(title=f"{kind} on {source}")
    table.add_column("model")
    for x in ks:
        table.add_column(f"pass@{x}")
    table.add_column(f"avg@{n}")
    unit = "tokens" if all("thinking_tokens" in r["lengths"] for r in results["models"].values()) else "chars"
    table.add_column(f"thinking {unit}")
    table.add_column(f"answer {unit}")
    table.add_column("unclosed think")
    for name, r in results["models"].items():
        ln = r["lengths"]
        table.add_row(name, *[f"{r['pass@'+str(x)]:.3f}" for x in ks], f"{r['avg@n']:.3f}",
                      f"{ln['thinking_' + unit]:.1f}", f"{ln['answer_' + unit]:.1f}",
                      f"{ln['unclosed_think_rate']:.3f}")
    console.print(table)
    if out:
        console.print(f"results: {out / 'results.json'}  report: {out / 'report.md'}")


# ---- reward models ---------------------------------------------------------------------------------------
@rm_app.command("train")
def rm_train(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg, out: Optional[Path] = OutOpt,
             resume: bool = ResumeOpt, dry_run: bool = DryRunOpt, progress: bool = ProgressOpt,
             nproc: int = NprocOpt) -> None:
    """Train a reward model (e.g. recipes/helpsteer2_pref.yaml or recipes/armorm.yaml, profile=tiny)."""
    from refinery.reward_models.config import RMConfig
    from refinery.reward_models.train import train_rm

    _run_recipe(RMConfig, recipe, overrides, out, resume, dry_run,
                lambda cfg, run: train_rm(cfg, run, progress=progress), nproc=nproc)


@rm_app.command("eval")
def rm_eval(
    model: Path = typer.Option(..., "--model", help="Reward-model directory (the 'model' folder of a run)."),
    data: str = typer.Option(..., "--data", help="Pairs {prompt, chosen, rejected, subset?} (RewardBench format; "
                             "HH-RLHF, PandaLM and HelpSteer2 files are converted): JSONL, Parquet/CSV, a folder, "
                             "a save_to_disk directory or hf:NAME (hub)."),
    split: Optional[str] = SplitOpt,
    subset: Optional[str] = SubsetOpt,
    column: Optional[List[str]] = ColumnOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for summary.json (default: print only)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="First N pairs only."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """RewardBench rules: chosen must score strictly higher; per-subset, per-section and overall accuracy."""
    from rich.table import Table

    from refinery.reward_models.eval import evaluate_model
    from refinery.runs import atomic_write_text

    _quiet_hf()
    res = evaluate_model(model, _data_source(data, split, subset, column), batch_size=batch_size, limit=limit)
    table = Table(title=f"{model} on {data} ({res['n']} pairs)")
    for col in ("subset", "section", "n", "accuracy"):
        table.add_column(col)
    for name, s in res["subsets"].items():
        table.add_row(name, s["section"], str(s["n"]), f"{s['accuracy']:.3f}")
    for sec, acc in res["sections"].items():
        table.add_row(f"[bold]{sec}[/bold]", "section", "", f"{acc:.3f}")
    table.add_row("[bold]overall[/bold]", "", str(res["n"]), f"{res['overall']:.3f}")
    console.print(table)
    console.print(f"corr(score, length) = {res['length_correlation']:+.3f}", highlight=False)
    if out is not None:
        atomic_write_text(out / "summary.json", json.dumps(res, indent=2) + "\n")
        console.print(f"summary: {out / 'summary.json'}")


@rm_app.command("score")
def rm_score(
    model: Path = typer.Option(..., "--model", help="Reward-model directory."),
    prompt: str = typer.Option(..., "--prompt", help="The user prompt."),
    response: List[str] = typer.Option(..., "--response", help="A response to score (repeatable)."),
) -> None:
    """Score responses; an ArmoRM also shows each objective's reward and its gate weight."""
    from refinery.reward_models.model import RewardScorer

    _quiet_hf()
    scorer = RewardScorer(model)
    res = scorer.score([prompt] * len(response), list(response))
    for i, text in enumerate(response):
        console.print(f"[bold]score {res['score'][i]:+.4f}[/bold]  {text[:80]!r}", highlight=False)
        if res["objectives"] is not None:
            gates = res["gates"][i] if res["gates"] is not None else None
            for j, name in enumerate(scorer.objectives):
                g = f"  gate {gates[j]:.3f}" if gates is not None else ""
                console.print(f"    {name:<14} {res['objectives'][i][j]:+.4f}{g}", highlight=False)


# ---- compression -------------------------------------------------------------------------------------------
@compress_app.command("sparsify")
def compress_sparsify(
    method: str = typer.Option(..., "--method", help="magnitude, wanda, sparsegpt or maskllm."),
    model: Path = typer.Option(..., "--model", help="HF model directory."),
    calib: Path = typer.Option(..., "--calib", help="Calibration / training text file."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoint + masks + report)."),
    n_calib: int = typer.Option(128, "--n-calib", min=1, help="Calibration windows (paper: 128)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=2, help="Window length (default: min(context, "
                                          "2048), as SparseGPT / Wanda calibrate LLaMA)."),
    steps: int = typer.Option(200, "--steps", min=0, help="maskllm: training steps."),
    lr: float = typer.Option(5e-5, "--lr", help="maskllm: base LR, mask logits at 10x, cosine to 1/10 (NVlabs/"
                             "MaskLLM scripts/learnable_sparsity: LR=5e-5, --lr-mult 10)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    prior: str = typer.Option("sparsegpt", "--prior", help="maskllm: one-shot prior (or none)."),
    init_logits: Optional[Path] = typer.Option(None, "--init-logits", help="maskllm transfer: the mask of an "
                                               "earlier run (mask_logits.safetensors or masks.safetensors) "
                                               "becomes the prior of new logits (paper: transfer learning)."),
    fmt: str = typer.Option("dense", "--format", help="dense (HF, zeros in place), compressed-tensors "
                            "(sparse-24-bitmask, vLLM) or semi-structured (values + 2-bit indices for "
                            "torch.sparse.to_sparse_semi_structured on CUDA)."),
    device: Optional[str] = typer.Option(None, "--device", help="wanda/sparsegpt: device of the layer being "
                                         "calibrated (e.g. cuda); the rest of the model stays on CPU. maskllm: "
                                         "where the model and mask logits train (default: CUDA when present)."),
    precision: str = typer.Option("fp32", "--precision", help="maskllm: fp32 or bf16 (autocast; logits fp32)."),
    dtype: str = typer.Option("auto", "--dtype", help="Load and write the model in its checkpoint's dtype (auto), "
                              "or fp32 / bf16 / fp16."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", min=1, help="maskllm: windows per "
                                              "forward/backward; one mask sample and one token-mean per step."),
    checkpointing: bool = typer.Option(False, "--activation-checkpointing/--no-activation-checkpointing",
                                       help="maskllm: recompute each decoder layer in backward."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = ProgressOpt,
) -> None:
    """Prune every block Linear to 2:4; embeddings and LM head stay dense. Never claims a CPU speed-up."""
    from refinery.compression.sparsity.runner import sparsify

    _quiet_hf()
    rep = sparsify(model, method, calib, out, n_calib=n_calib, seq_len=seq_len, steps=steps, lr=lr,
                   batch_size=batch_size, prior=prior, init_logits=init_logits, seed=seed, progress=progress,
                   fmt=fmt, device=device, precision=precision, micro_batch=micro_batch,
                   activation_checkpointing=checkpointing, dtype=dtype)
    console.print(f"{method}: {rep['sparsity']['overall']:.1%} of block weights zero ({rep['pattern']}, "
                  f"{rep['format']}), {rep['seconds']:.1f}s -> {out}", highlight=False)


@compress_app.command("puzzle")
def compress_puzzle(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg,
                    out: Optional[Path] = OutOpt, resume: bool = ResumeOpt, dry_run: bool = DryRunOpt,
                    progress: bool = ProgressOpt) -> None:
    """Puzzle: block library + BLD + replace-1-block scores + measured costs + MILP under a speed-up / memory
    budget, then assembly and global distillation (e.g. recipes/puzzle.yaml search.target_speedup=1.5)."""
    from refinery.compression.puzzle.config import PuzzleRecipe
    from refinery.compression.puzzle.runner import run_puzzle

    _run_recipe(PuzzleRecipe, recipe, overrides, out, resume, dry_run,
                lambda cfg, run: run_puzzle(cfg, run, progress=progress))


# ---- data --------------------------------------------------------------------------------------------------
@data_app.command("run", context_settings={"allow_extra_args": False})
def data_run(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg,
             fresh: bool = typer.Option(False, "--fresh", help="Delete the output first (else: resume)."),
             retry_rejects: bool = typer.Option(False, "--retry-rejects", help="After the run is complete, run "
                                                "again only the records rejected for a transient reason "
                                                "(retry_reasons, default llm_error: a server down, a timeout)."),
             dry_run: bool = DryRunOpt, progress: bool = ProgressOpt) -> None:
    """Run a data recipe, e.g. recipes/nemotron_cc_math.yaml input=crawl.warc.gz output=out/, or
    recipes/acereason_curation.yaml input=train.jsonl output=out/ (re-running the same command resumes;
    --retry-rejects then retries what an LLM server failed on)."""
    from refinery.config import dump_config, load_config
    from refinery.data.runner import config_class, run_data_recipe

    cfg = load_config(config_class(recipe), recipe, overrides)
    if dry_run:
        console.print(dump_config(cfg), end="", markup=False, highlight=False)
        return
    _quiet_hf()
    stats = run_data_recipe(cfg, progress=progress, fresh=fresh, retry_rejects=retry_rejects)
    _print_stage_table(stats)
    if retry_rejects:
        r = stats["retries"][-1]
        console.print(f"retry {r['attempt']}: {r['retried']} records retried, {r['recovered']} recovered, "
                      f"rejected again: {r['rejected_again'] or 'none'}", highlight=False)
    console.print(f"{stats['records_out']} records -> {cfg.output}/data  (rejects: {cfg.output}/rejects, "
                  f"counts: {cfg.output}/stats.json)", highlight=False)


def _print_stage_table(stats: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{stats['shards']} shards, {stats['seconds']}s ({stats['executor']})")
    for col in ("stage", "in", "kept", "dropped (reason: n)", "seconds"):
        table.add_column(col)
    for st in stats["stages"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "-"
        table.add_row(st["name"], str(st["seen"]), str(st["kept"]), dropped, f"{st['seconds']:.1f}")
    console.print(table)


@data_app.command("extract-math")
def data_extract_math(
    inputs: List[Path] = typer.Option(..., "--input", help="WARC file, directory of HTML files, or JSONL of "
                                      "{source, html}; repeatable."),
    output: Path = typer.Option(..., "--output", help="Output JSONL: source, text (math as $...$ / $$...$$), "
                                "formulas, formula_sources."),
    renderer: str = typer.Option("auto", "--renderer", help="lynx, python, or auto (lynx when installed)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1),
    executor: str = typer.Option("local", "--executor", help="local or ray."),
    progress: bool = ProgressOpt,
) -> None:
    """Math-preserving text extraction (MathJax, KaTeX, MathML, LaTeX images/alt text -> LaTeX)."""
    from refinery.data.runner import extract_math

    res = extract_math([str(i) for i in inputs], output, renderer=renderer, workers=workers, executor=executor,
                       progress=progress)
    console.print(f"{res['pages']} pages, {res['formulas']} formulas, {res['rejected']} unreadable records, "
                  f"{res['seconds']}s -> {output}", highlight=False)


@data_app.command("fetch-cc")
def data_fetch_cc(
    index: List[str] = typer.Argument(..., help="CC index files: CDX server results / CDXJ lines (url, filename, "
                                      "offset, length), or the columnar index as Parquet/CSV; local or fsspec URLs."),
    out: Path = typer.Option(..., "--out", help="Directory of .warc.gz shards (+ manifest.ndjson, fetch_stats.json); "
                             "re-running resumes."),
    base_url: str = typer.Option("https://data.commoncrawl.org/", "--base-url",
                                 help="Where the WARC filenames live (https://, s3://commoncrawl/, any fsspec URL)."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Range requests in flight."),
    rate: float = typer.Option(10.0, "--rate", min=0, help="Requests per second, retries included (0: no limit)."),
    retries: int = typer.Option(5, "--retries", min=0, help="Retries on 5xx/429/connection errors (not 404)."),
    shard_mb: float = typer.Option(128.0, "--shard-mb", help="Close a shard at this many MiB."),
    status: Optional[List[int]] = typer.Option(None, "--status", help="Only index records with this HTTP status "
                                               "(repeatable), e.g. --status 200."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Fetch again what a previous run failed."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Stop after this many index records."),
    progress: bool = ProgressOpt,
) -> None:
    """Fetch Common Crawl records (WARC byte ranges) named by an index into local .warc.gz shards for `data run`."""
    from refinery.data.acquire import FetchConfig, fetch_cc

    cfg = FetchConfig(base_url=base_url, concurrency=concurrency, rate=rate, retries=retries, shard_mb=shard_mb,
                      statuses=status or None, retry_failed=retry_failed, limit=limit)
    s = fetch_cc(index, out, cfg, progress=progress)
    reasons = ", ".join(f"{k}: {v}" for k, v in s["failed_by_reason"].items())
    console.print(f"{s['fetched']} fetched, {s['failed']} failed{f' ({reasons})' if reasons else ''}, "
                  f"{s['already_done']} already done, {s['previously_failed']} failed before (--retry-failed), "
                  f"{s['bad_index_lines']} unreadable index lines; {s['records_total']} records in "
                  f"{len(s['shards'])} shards -> {out}  ({s['seconds']}s, {s['retries']} retries)", highlight=False)


@data_app.command("annotate-quality")
def data_annotate_quality(
    input: Path = typer.Option(..., "--input", help="JSONL with a 'text' field (e.g. data run output)."),
    output: Path = typer.Option(..., "--output", help="JSONL {text, label, source} for train-quality."),
    model: str = typer.Option(..., "--model", help="Served model name."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", "--base-url"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    max_chars: int = typer.Option(4000, "--max-chars", help="Characters of each page shown to the annotator."),
) -> None:
    """Label pages 0-5 for math-teaching value with an LLM (FineMath-style prompt); unparseable answers are
    reported and skipped."""
    from refinery.data.text.quality import ANNOTATION_PROMPT, parse_score
    from refinery.generation import GenerationError, SamplingParams, get_generator
    from refinery.jsonl import iter_jsonl

    rows = [r for _, r, _ in iter_jsonl(input) if isinstance(r, dict) and isinstance(r.get("text"), str)][:limit]
    gen = get_generator("openai", model, base_url=base_url)
    reqs = [[{"role": "user", "content": ANNOTATION_PROMPT.format(text=r["text"][:max_chars])}] for r in rows]
    results = gen.generate_each(reqs, SamplingParams(temperature=0.0, max_new_tokens=16, seed=0))
    kept, bad = [], 0
    for r, res in zip(rows, results):
        score = None if isinstance(res, GenerationError) else parse_score(res[0].text)
        if score is None:
            bad += 1
            continue
        kept.append({"text": r["text"], "label": score, "source": r.get("source")})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
    console.print(f"{len(kept)} labelled, {bad} unparseable or failed -> {output}", highlight=False)


@data_app.command("train-guard")
def data_train_guard(
    data: Path = typer.Option(..., "--data", help="JSONL {text|prompt, label safe|unsafe, lang?} (e.g. CultureGuard "
                              "output plus safe prompts)."),
    out: Path = typer.Option(..., "--out", help="Output HF sequence-classification directory."),
    base: Optional[Path] = typer.Option(None, "--base", help="Causal-LM directory to adapt (default: a small Llama)."),
    steps: int = typer.Option(200, "--steps", min=1),
    lr: float = typer.Option(2e-3, "--lr"),
    lora_r: int = typer.Option(8, "--lora-r", min=1),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = ProgressOpt,
) -> None:
    """LoRA-tune a safe/unsafe guard classifier (CultureGuard); evaluate with `refinery eval safety`."""
    from refinery.data.safety.guard import read_labelled, train_guard

    _quiet_hf()
    info = train_guard(read_labelled(data), out, base=base, steps=steps, lr=lr, lora_r=lora_r, seed=seed,
                       progress=progress)
    console.print_json(json.dumps(info))


@data_app.command("train-quality")
def data_train_quality(
    input: Path = typer.Option(..., "--input", help="JSONL {text, label 0-5} (annotate-quality output)."),
    out: Path = typer.Option(..., "--out", help="Output HF sequence-classification directory."),
    steps: int = typer.Option(300, "--steps", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = ProgressOpt,
) -> None:
    """Train a small 0-5 regression classifier for the quality stage (quality.model=OUT)."""
    from refinery.data.text.quality import train_classifier
    from refinery.jsonl import iter_jsonl

    rows = [r for _, r, _ in iter_jsonl(input) if isinstance(r, dict) and isinstance(r.get("text"), str)
            and isinstance(r.get("label"), (int, float))]
    info = train_classifier([r["text"] for r in rows], [float(r["label"]) for r in rows], out, steps=steps, lr=lr,
                            seed=seed, progress=progress)
    console.print_json(json.dumps(info))


# ---- generation ------------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    model_dir: Path = typer.Argument(..., help="HF model directory to serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Served model id (default: dir name)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most rows decoded together."),
    log_level: str = typer.Option("warning", "--log-level"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="REFINERY_API_KEY", show_envvar=True,
                                          help="Require 'Authorization: Bearer <key>' on every /v1 route (401 "
                                          "otherwise; /health stays open). Prefer the environment variable: a "
                                          "flag is visible in the process list."),
    max_request_tokens: int = typer.Option(262144, "--max-request-tokens", min=0, help="Most completion tokens "
                                           "one request may ask for (prompts x n x max_tokens; 400 above it). "
                                           "0: no cap."),
) -> None:
    """OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models, /health) over a local model."""
    from refinery.generation.server import serve
    from refinery.models.io import load_tokenizer

    _quiet_hf()
    load_tokenizer(model_dir)  # fail fast with one line on a bad directory
    if api_key is not None and not api_key.strip():
        raise RefineryError("--api-key / REFINERY_API_KEY is set but empty; set a key or unset it")
    auth = "API key required" if api_key else "no API key (anyone who can reach the port can use it)"
    console.print(f"serving {model_dir} on http://{host}:{port}/v1 ({auth})", highlight=False)
    serve(str(model_dir), host=host, port=port, model_name=model_name, max_batch=max_batch, log_level=log_level,
          api_key=api_key, max_request_tokens=max_request_tokens or None)


@app.command("generate")
def generate_cmd(
    input: Path = typer.Option(..., "--input", help="JSONL with id and prompt (or messages) per line."),
    output: Path = typer.Option(..., "--output", help="JSONL of results; a re-run skips ids already here."),
    backend: str = typer.Option("hf", "--backend", help="hf (local dir), openai (any compatible server), vllm."),
    model: str = typer.Option(..., "--model", help="Model dir (hf, vllm) or served model name (openai)."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", "--base-url", help="openai: server base URL."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="openai: env var with the API key."),
    n: int = typer.Option(1, "--n", min=1, help="Samples per request."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k", min=0),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    logprobs: bool = typer.Option(False, "--logprobs", help="Store per-token logprobs."),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="openai: requests in flight."),
    timeout: float = typer.Option(120.0, "--timeout", help="openai: per-request timeout (s)."),
    max_retries: int = typer.Option(6, "--max-retries", min=0, help="openai: retries on 429/5xx/timeouts."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="openai: on-disk response cache."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="hf: rows per decode batch."),
    rejects: Optional[Path] = typer.Option(None, "--rejects", help="Default: OUTPUT with .rejects.jsonl."),
    progress: bool = ProgressOpt,
) -> None:
    """Generate for every request in a JSONL file (resumable; failures go to a rejects file)."""
    from refinery.config import validate
    from refinery.generation import SamplingParams, get_generator
    from refinery.generation.runner import generate_file

    _quiet_hf()
    params = validate(SamplingParams, dict(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                                           max_new_tokens=max_new_tokens, stop=stop, seed=seed, logprobs=logprobs),
                      source="sampling")
    if not input.is_file():
        raise RefineryError(f"input file {input} does not exist")
    kwargs: dict = {}
    if backend == "openai":
        kwargs = dict(base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                      max_retries=max_retries, cache_dir=cache_dir)
    elif backend == "hf":
        kwargs = dict(batch_size=batch_size)
    generator = get_generator(backend, model, **kwargs)
    stats = generate_file(generator, input, output, params, rejects_path=rejects, progress=progress)
    console.print(f"{stats.generated} generated, {stats.skipped_done} already done, {stats.rejected} rejected "
                  f"({stats.completion_tokens} completion tokens) -> {output}", highlight=False)
    if stats.rejected:
        console.print(f"rejects: {rejects or output.with_suffix('.rejects.jsonl')}", highlight=False)
        if not stats.generated and not stats.skipped_done:
            raise RefineryError(f"every request failed ({stats.rejected} rejected); see the rejects file")


# ---- verifiers -------------------------------------------------------------------------------------------
@app.command("verify")
def verify_cmd(
    kind: str = typer.Argument(..., help="math, code, choice or format."),
    input: Path = typer.Option(..., "--input", help="JSONL: id, response, and reference (tests for code)."),
    output: Path = typer.Option(..., "--output", help="JSONL: id, score, extracted, reason; a summary line last."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel checks (default: all cores)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per check (math); code: CPU seconds per run "
                                  "(the program's own CPU time decides, not the machine's load)."),
    wall_timeout: Optional[float] = typer.Option(None, "--wall-timeout", help="code: wall-clock backstop per run "
                                                 "(default 2 x --timeout + 10 s) for programs that wait."),
    mode: str = typer.Option("all", "--mode", help="code: 'all' tests must pass (AceReason) or 'fraction' (ProRL)."),
    no_fallback: bool = typer.Option(False, "--no-fallback", help="math: do not fall back to the last number."),
    progress: bool = ProgressOpt,
) -> None:
    """Score responses with a verifier; prints the summary."""
    from refinery.verifiers import get_verifier
    from refinery.verifiers.runner import verify_file

    kinds = ("math", "code", "choice", "format")
    if kind not in kinds:
        raise RefineryError(f"unknown verifier '{kind}' (choose {', '.join(kinds)})")
    kwargs: dict = {}
    if kind == "math":
        kwargs = {"fallback_last_number": not no_fallback}
    elif kind == "code":
        from refinery.verifiers.sandbox import Limits

        if mode not in ("all", "fraction"):
            raise RefineryError(f"--mode must be 'all' or 'fraction', got {mode!r}")
        kwargs = {"mode": mode, "limits": Limits(cpu_seconds=timeout, timeout=wall_timeout), "concurrency": workers}
    verifier = get_verifier(kind, **kwargs)
    try:
        stats = verify_file(verifier, kind, input, output, workers=workers, timeout=timeout, progress=progress)
    finally:
        if hasattr(verifier, "close"):
            verifier.close()
    console.print(f"{kind}: {stats.scored} scored, {stats.correct} correct, mean score {stats.mean_score:.4f}, "
                  f"{stats.rejected} malformed -> {output}", highlight=False)


# ---- quickstart --------------------------------------------------------------------------------------------
@app.command("quickstart")
def quickstart_cmd(recipe: Path | None = typer.Argument(None, help="Recipe (default: the built-in quickstart)."),
                   overrides: List[str] | None = OverridesArg,
                   out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Run directory; a second run "
                                            "into it reuses the stages already finished."),
                   fresh: bool = typer.Option(False, "--fresh", help="Delete the run directory and redo every stage."),
                   resume: bool = typer.Option(True, "--resume/--no-resume", hidden=True),
                   dry_run: bool = DryRunOpt, progress: bool = ProgressOpt) -> None:
    """The whole life of a tiny model on a laptop: web math data, SFT, RL, a reward model, 2:4 sparsity and
    Puzzle, with one report (report.html)."""
    import shutil

    from refinery.config import dump_config, load_config
    from refinery.quickstart import QuickstartConfig, run_quickstart
    from refinery.runs import RunDir

    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides, recipe = [str(recipe), *(overrides or [])], None  # no recipe given, only overrides
    cfg = load_config(QuickstartConfig, recipe, overrides)
    if dry_run:
        console.print(dump_config(cfg), end="", markup=False, highlight=False)
        return
    _quiet_hf()
    if fresh and out.exists():
        shutil.rmtree(out)
    again = (out / "config.yaml").exists()
    if again and (out / "config.yaml").read_text() != dump_config(cfg):
        raise RefineryError(f"{out} holds a quickstart with other settings; use --fresh to redo it or another --out")
    run = RunDir.create(cfg, cfg.name, out=out, resume=again and resume, seed=cfg.seed,
                        argv=["refinery", *sys.argv[1:]])
    summary = run_quickstart(cfg, run, progress=progress, console=console)
    _print_headlines(summary, run.path)


def _print_headlines(summary: dict, path: Path) -> None:
    """The one-screen end of the quickstart: each stage's headline numbers and where the report is."""
    from rich.table import Table

    from refinery.quickstart import HEADLINES

    table = Table(title="quickstart", show_header=True)
    for col in ("stage", "headline", "value"):
        table.add_column(col)
    shown = {k for k, _, _ in HEADLINES}
    for key, label, fmt in HEADLINES:
        if isinstance(summary.get(key), (int, float)):
            table.add_row(key.split(".")[0], label, fmt.format(summary[key]))
    for key, value in summary.items():
        if key.endswith(".status") and value != "ok":
            table.add_row(key.split(".")[0], "status", f"[red]{value}[/red]")
    extra = {"rm.bt.length_corr": "length corr. (BT)", "rm.armo.length_corr": "length corr. (ArmoRM)",
             "sparsity.ppl_dense": "dense ppl", "puzzle.ppl_parent": "parent ppl",
             "puzzle.ppl_uniform_baseline": "uniform-shrink ppl", "data.duplicates_removed": "duplicates removed"}
    for key, label in extra.items():
        if key not in shown and isinstance(summary.get(key), (int, float)):
            table.add_row(key.split(".")[0], label, f"{summary[key]:.4g}")
    # where the time went (per stage; a resumed stage counts the last invocation's work only)
    walls = {k[:-len(".wall_s")]: v for k, v in summary.items()
             if k.endswith(".wall_s") and isinstance(v, (int, float))}
    for stage, sec in walls.items():
        table.add_row(stage, "wall time", f"{sec / 60:.1f} min")
    if walls:
        table.add_row("total", "wall time", f"{sum(walls.values()) / 60:.1f} min")
    console.print(table)
    console.print(f"report: [bold]{path / 'report.html'}[/bold]  (and report.md, summary.json; run directory "
                  f"{path})", highlight=False)


def _print_summary(summary: dict, path: Path) -> None:
    from rich.table import Table

    table = Table(title="summary", show_header=False)
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"run directory: [bold]{path}[/bold]  (report: {path / 'report.md'})")


def _click_exception_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Exit, Abort) classes of every click the installed typer may raise.

    typer >= 0.2x vendors its own click (``typer._click``, with Exit/Abort in ``typer.exceptions``) whose exceptions
    do not derive from ``click``'s; older typers raise ``click``'s own. Gather both, importing defensively, so a usage
    error is one usage line whichever click typer brings.
    """
    import importlib

    found: dict[str, list[type]] = {"ClickException": [], "Exit": [], "Abort": []}
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions", "typer"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name, classes in found.items():
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in classes:
                classes.append(cls)
    return tuple(found["ClickException"]), tuple(found["Exit"]), tuple(found["Abort"])


_INTERRUPTED = "interrupted: the last checkpoint is kept; continue with --out RUN_DIR --resume"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to one line and an exit code."""
    global _ARGV
    click_errors, exits, aborts = _click_exception_classes()
    command = typer.main.get_command(app)
    _ARGV = list(argv if argv is not None else sys.argv[1:])
    try:
        rv = command.main(args=_ARGV, prog_name="refinery",
                          standalone_mode=False)
    except RefineryError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}", markup=True, highlight=False, soft_wrap=True)
        return 2
    except exits as e:
        return e.exit_code
    except click_errors as e:  # usage errors (exit 2): the usage, a help hint and one "Error:" line, no traceback
        e.show()
        return e.exit_code
    except aborts:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print(_INTERRUPTED)
        return 130
    # With standalone_mode=False an Exit raised inside the app comes back as its exit code (no command returns a
    # value); typer's vendored click turns Ctrl-C into Exit(130) this way.
    if isinstance(rv, int) and not isinstance(rv, bool):
        if rv == 130:
            err_console.print(_INTERRUPTED)
        return rv
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
