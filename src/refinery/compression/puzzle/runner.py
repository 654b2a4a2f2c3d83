"""``refinery compress puzzle``: parent → library → BLD → scores → costs → MILP → measured candidates → GKD.

Every stage leaves its artifact in the run directory and a re-run with ``--resume`` skips what is done
(``library/`` holds one file per trained variant, ``scores.json`` fills layer by layer). The child is an HF
directory (``child/``) that ``AutoModelForCausalLM`` loads once ``refinery.compression.puzzle`` is imported.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refinery.compression.puzzle import library as lib
from refinery.compression.puzzle.config import PuzzleRecipe
from refinery.compression.puzzle.model import (
    AttnSpec,
    BlockSpec,
    FFNSpec,
    PuzzleForCausalLM,
    family_of,
    parent_block,
    puzzle_config,
)
from refinery.errors import ConfigError, DataError
from refinery.runs import RunDir, atomic_write_text

State = dict[str, torch.Tensor]


# ---- data ----------------------------------------------------------------------------------------------------
Rows = tuple[torch.Tensor, torch.Tensor]  # (token ids [N, S], mask [N, S]: True = real token)


def task_rows(tokenizer, tasks: list[str], n_items: int, seq_len: int, seed: int) -> tuple[Rows, Rows]:
    """(train, held-out) procedural items, one per row as a chat-trained parent saw them (chat template, solution,
    EOS), right-padded: such a parent never saw two items in one sequence, so windows of concatenated items would
    measure it out of distribution."""
    from refinery.tasks import make_splits

    def rows(items) -> Rows:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": it["prompt"]}], tokenize=False,
                                               add_generation_prompt=True) for it in items]
        prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        sols = tokenizer([it["solution"] for it in items], add_special_tokens=False)["input_ids"]
        ids = torch.full((len(items), seq_len), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), seq_len), dtype=torch.bool)
        for r, (p, s) in enumerate(zip(prompts, sols)):
            seq = (p + s + [tokenizer.eos_token_id])[:seq_len]
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = True
        return ids, mask

    train, held = [], []
    for name in tasks:
        tr, te = make_splits(name, n_items - n_items // 10, max(1, n_items // 10), seed=seed)
        train += tr
        held += te
    return rows(train), rows(held)


def text_rows(cfg: PuzzleRecipe, tokenizer) -> tuple[Rows, Rows]:
    """Non-overlapping windows of the text (held-out: heldout_file or the last 10% of lines)."""
    from refinery.eval.perplexity import read_text, token_windows

    d = cfg.data
    text = read_text(d.text_file)
    if d.heldout_file:
        train, held = text, read_text(d.heldout_file)
    else:
        lines = text.splitlines(keepends=True)
        cut = int(len(lines) * 0.9)
        train, held = "".join(lines[:cut]), "".join(lines[cut:])
    tw, hw = token_windows(tokenizer, train, d.seq_len), token_windows(tokenizer, held, d.seq_len)
    return (tw, torch.ones_like(tw, dtype=torch.bool)), (hw, torch.ones_like(hw, dtype=torch.bool))


def make_windows(cfg: PuzzleRecipe, tokenizer) -> dict[str, Rows]:
    """calib (BLD), distill (GKD), score (replace-1-block) and eval (perplexity) rows; the last two held out and
    disjoint."""
    d = cfg.data
    if d.source == "tasks":
        (tw, tm), (hw, hm) = task_rows(tokenizer, d.tasks, d.n_items, d.seq_len, cfg.seed)
    else:
        (tw, tm), (hw, hm) = text_rows(cfg, tokenizer)
    if hw.shape[0] < 2:
        raise DataError(f"held-out data gives {hw.shape[0]} row(s) of {d.seq_len} tokens; need at least 2")
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(tw.shape[0], generator=g)
    tw, tm = tw[perm], tm[perm]
    n_score = min(d.n_score, hw.shape[0] // 2)
    return {"calib": (tw[: d.n_calib], tm[: d.n_calib]), "distill": (tw[: d.n_distill], tm[: d.n_distill]),
            "score": (hw[:n_score], hm[:n_score]),
            "eval": (hw[n_score: n_score + d.n_eval], hm[n_score: n_score + d.n_eval])}


# ---- library -------------------------------------------------------------------------------------------------
def variants(cfg: PuzzleRecipe, config):
    s = cfg.space
    attn = lib.attention_variants(config, s.kv_heads, s.linear_attention, s.attention_no_op)
    ffn = lib.ffn_variants(config, s.ffn_fractions, s.linear_ffn, s.ffn_no_op)
    return attn, ffn


def _save(state: State, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def build_library(cfg: PuzzleRecipe, parent, windows: Rows, root: Path, progress: bool) -> dict[str, Any]:
    """Initialise every variant from the parent and BLD-train the ones with weights of their own; returns the BLD
    losses per variant. Finished variants (a file in ``root``) are not redone."""
    from refinery.compression.puzzle.bld import run_tasks
    from refinery.progress import StepBar

    config = parent.config
    attn_vars, ffn_vars = variants(cfg, config)
    root.mkdir(parents=True, exist_ok=True)
    (root / "work").mkdir(exist_ok=True)
    losses_file = root / "bld.json"
    losses: dict[str, Any] = json.loads(losses_file.read_text()) if losses_file.exists() else {}
    pending = []
    stats = None
    p = parent_block(config)
    from refinery.engine.device import resolve_device

    engine_device = resolve_device(cfg.engine.device).type  # each task places its one layer on this device
    for i, layer in enumerate(parent.model.layers):
        for part, vars_, parent_spec in (("attention", attn_vars, p.attention), ("ffn", ffn_vars, p.ffn)):
            for spec in vars_:
                out = root / f"L{i}.{part}.{spec.name}.safetensors"
                if out.exists() or spec.kind == "no_op":
                    continue
                if spec == parent_spec:
                    _save(lib.parent_attention(layer) if part == "attention" else lib.parent_ffn(layer), out)
                    continue
                if stats is None:
                    stats = lib.collect_stats(parent, windows[0], mask=windows[1])
                init = (lib.init_attention(layer, config, spec) if part == "attention"
                        else lib.init_ffn(layer, stats.layers[i], spec))
                if cfg.bld.steps == 0:
                    _save(init, out)
                    losses[out.stem] = {"loss_init": None, "loss_final": None}
                    continue
                work = root / "work"
                inputs, pstate = work / f"inputs-L{i}.pt", work / f"parent-L{i}.safetensors"
                if not inputs.exists():
                    torch.save({"inputs": stats.layers[i].inputs.contiguous(), "mask": windows[1]}, inputs)
                    _save({k: v.detach() for k, v in layer.state_dict().items()}, pstate)
                init_file = work / f"{out.stem}.init.safetensors"
                _save(init, init_file)
                pending.append({"key": out.stem, "config": config.to_dict(), "inputs": str(inputs),
                                "parent_state": str(pstate), "init_state": str(init_file), "part": part,
                                "spec": spec.name, "steps": cfg.bld.steps, "lr": cfg.bld.lr,
                                "batch_size": cfg.bld.batch_size, "seed": cfg.seed + i, "out": str(out), "layer": i,
                                "device": engine_device, "precision": cfg.engine.precision})
    if pending:
        bar = StepBar(progress, len(pending), 0, "bld", ("loss",))

        def done(key, info):
            losses[key] = info
            atomic_write_text(losses_file, json.dumps(losses, indent=1))
            bar.update(len([t for t in pending if t["key"] in losses]), {"loss": info["loss_final"]})

        run_tasks(pending, cfg.bld.executor, cfg.bld.workers, done)
        bar.close()
    atomic_write_text(losses_file, json.dumps(losses, indent=1))
    for f in (root / "work").glob("*"):
        f.unlink()
    return losses


class LibraryLayer(Mapping):
    """One layer's variants of one part (``attention`` or ``ffn``), read from the library's files when asked for:
    the run never holds the whole library (52 GiB for Llama-3-8B), only the variants in use."""

    def __init__(self, root: Path, layer: int, part: str, specs: list):
        self.root, self.layer, self.part = Path(root), layer, part
        self.specs = {s.name: s for s in specs}

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    def path(self, name: str) -> Path:
        return self.root / f"L{self.layer}.{self.part}.{name}.safetensors"

    def __getitem__(self, name: str) -> State:
        from safetensors.torch import load_file

        spec = self.specs[name]  # KeyError for a variant the library does not have
        return {} if spec.kind == "no_op" else load_file(str(self.path(name)))


def load_library(cfg: PuzzleRecipe, config, root: Path) -> tuple[list[LibraryLayer], list[LibraryLayer]]:
    """Per layer, the attention and FFN variants on disk (read lazily; missing files are one clear error now)."""
    attn_vars, ffn_vars = variants(cfg, config)
    attn_lib = [LibraryLayer(root, i, "attention", attn_vars) for i in range(config.num_hidden_layers)]
    ffn_lib = [LibraryLayer(root, i, "ffn", ffn_vars) for i in range(config.num_hidden_layers)]
    missing = [str(x.path(n)) for x in attn_lib + ffn_lib for n, sp in x.specs.items()
               if sp.kind != "no_op" and not x.path(n).exists()]
    if missing:
        raise DataError(f"the Puzzle library in {root} lacks {len(missing)} variant file(s), e.g. {missing[0]}: "
                        "rerun the library stage (resume rebuilds only what is missing)")
    return attn_lib, ffn_lib


# ---- scores and costs ----------------------------------------------------------------------------------------
def score_library(cfg: PuzzleRecipe, parent, windows: Rows, attn_lib, ffn_lib, path: Path,
                  progress: bool) -> dict[str, dict[str, dict[str, float]]]:
    from refinery.compression.puzzle.scoring import Scorer
    from refinery.progress import StepBar

    scores: dict[str, dict[str, dict[str, float]]] = json.loads(path.read_text()) if path.exists() else {}
    attn_vars, ffn_vars = variants(cfg, parent.config)
    L = parent.config.num_hidden_layers
    if all(str(i) in scores for i in range(L)):
        return scores
    scorer = Scorer(parent, windows[0], mask=windows[1])
    bar = StepBar(progress, L * len(attn_vars) * len(ffn_vars), 0, "score", ("kl",))
    n = 0
    for i in range(L):
        if str(i) in scores:
            n += len(attn_vars) * len(ffn_vars)
            continue
        row = {}
        attn_i = {a.name: attn_lib[i][a.name] for a in attn_vars}  # this layer's variants only, read once
        ffn_i = {f.name: ffn_lib[i][f.name] for f in ffn_vars}
        for a in attn_vars:
            for f in ffn_vars:
                spec = BlockSpec(a, f)
                layer = lib.build_layer(parent.config, spec, {**attn_i[a.name], **ffn_i[f.name]}, layer_idx=i)
                row[spec.name] = scorer.score(i, layer)
                n += 1
                bar.update(n, {"kl": row[spec.name]["kl"]})
        scores[str(i)] = row
        del attn_i, ffn_i, layer
        atomic_write_text(path, json.dumps(scores, indent=1))
    bar.close()
    return scores


def measure_pair(parent, child, cfg: PuzzleRecipe) -> tuple[dict, dict]:
    """Parent and child measured alternately (so drift in machine load hits both), medians of the rounds."""
    from refinery.compression.puzzle.cost import measure_model

    c = cfg.cost
    rows_p, rows_c = [], []
    for _ in range(c.model_repeats):
        rows_p.append(measure_model(parent, c.batch_size, c.seq_len, c.new_tokens, repeats=1))
        rows_c.append(measure_model(child, c.batch_size, c.seq_len, c.new_tokens, repeats=1))

    def med(rows):
        return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}

    return med(rows_p), med(rows_c)


# ---- the run -------------------------------------------------------------------------------------------------
def resolve_parent(cfg: PuzzleRecipe, progress: bool) -> Path:
    if cfg.parent:
        return Path(cfg.parent)
    from refinery.models.pretrain import cached_pretrain

    return cached_pretrain(cfg.pretrain, cfg.pretrain.seed, progress=progress)


def run_puzzle(cfg: PuzzleRecipe, run: RunDir, progress: bool = True,
               rows: dict[str, Rows] | None = None, finish: bool = True) -> dict[str, Any]:
    """The whole search into ``run``. ``rows`` replaces the data section's windows (``calib``, ``distill``,
    ``score``, ``eval``: (ids, mask) each), e.g. a policy's own answers."""
    from refinery.compression.puzzle.cost import CostModel, measure_model, model_memory
    from refinery.compression.puzzle.distill import assemble, distill
    from refinery.compression.puzzle.search import Problem, diverse_solutions
    from refinery.eval.perplexity import perplexity
    from refinery.models.io import load_model, load_tokenizer
    from refinery.models.zoo import cache_dir, count_parameters
    from refinery.progress import StepBar

    t0 = time.time()
    times: dict[str, float] = {}

    def lap(name):
        nonlocal t0
        times[name] = round(time.time() - t0, 1)
        t0 = time.time()

    torch.manual_seed(cfg.seed)
    parent_dir = resolve_parent(cfg, progress)
    parent, tok = load_model(parent_dir), load_tokenizer(parent_dir)
    try:
        family_of(parent.config)  # Llama, Qwen2, Qwen3, Mistral, Gemma-2; others say why not
    except ValueError as e:
        raise ConfigError(f"parent {parent_dir}: {e}") from None
    parent.eval()
    for p_ in parent.parameters():
        p_.requires_grad_(False)
    windows = rows if rows is not None else make_windows(cfg, tok)
    lap("parent_and_data")

    root = run.path / "library"
    bld_losses = build_library(cfg, parent, windows["calib"], root, progress)
    attn_lib, ffn_lib = load_library(cfg, parent.config, root)
    lap("library_bld")
    scores = score_library(cfg, parent, windows["score"], attn_lib, ffn_lib, run.path / "scores.json", progress)
    lap("scoring")

    # Costs: measured sub-blocks, plus what every model of this shape pays outside its blocks (embedding, layer
    # calls, mask and rotary set-up, head), measured on the all-no-op model of the parent's shape.
    c = cfg.cost
    cm = CostModel(parent.config, c.batch_size, c.seq_len, c.repeats, c.dtype_bytes,
                   cache_file=cache_dir() / "puzzle" / "costs.json")
    attn_vars, ffn_vars = variants(cfg, parent.config)
    blocks = [BlockSpec(a, f) for a in attn_vars for f in ffn_vars]
    L, V = parent.config.num_hidden_layers, len(blocks)
    decode = np.array([[cm.block_runtime(b).decode for b in blocks]] * L)
    prefill = np.array([[cm.block_runtime(b).prefill for b in blocks]] * L)
    memory = np.array([[cm.block_memory(b) for b in blocks]] * L, dtype=float)
    score = np.array([[scores[str(i)][b.name][cfg.search.metric] for b in blocks] for i in range(L)])
    pb = blocks.index(parent_block(parent.config))
    no_op = BlockSpec(AttnSpec("no_op"), FFNSpec("no_op"))
    shell = measure_model(PuzzleForCausalLM(puzzle_config(parent.config, [no_op] * L)), c.batch_size, c.seq_len,
                          c.new_tokens, c.model_repeats)  # timing only: its (random) weights do not matter
    overhead_decode, overhead_prefill = shell["decode_step_s"], shell["prefill_s"]
    parent_pred = {"decode_step_s": overhead_decode + decode[:, pb].sum(),
                   "prefill_s": overhead_prefill + prefill[:, pb].sum()}
    parent_meas = measure_model(parent, c.batch_size, c.seq_len, c.new_tokens, c.model_repeats)
    parent_mem = model_memory(parent, c.batch_size, c.seq_len, c.dtype_bytes)
    overhead_mem = parent_mem - memory[:, pb].sum()
    lap("cost_model")

    def predicted(choice):
        step = overhead_decode + sum(decode[i, v] for i, v in enumerate(choice))
        return {"decode_step_s": step, "speedup": parent_pred["decode_step_s"] / step,
                "prefill_s": overhead_prefill + sum(prefill[i, v] for i, v in enumerate(choice)),
                "memory_bytes": overhead_mem + sum(memory[i, v] for i, v in enumerate(choice))}

    def budgets(correction: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        costs, limits = {}, {}
        s = cfg.search
        if s.target_speedup:
            costs["decode"] = decode
            limits["decode"] = (parent_pred["decode_step_s"] / (s.target_speedup * (1 + s.margin)) / correction
                                - overhead_decode)
        if s.memory_ratio:
            costs["memory"] = memory
            limits["memory"] = s.memory_ratio * parent_mem - overhead_mem
        if s.latency_ratio:
            costs["prefill"] = prefill
            limits["prefill"] = (s.latency_ratio * parent_pred["prefill_s"] / (1 + s.margin) / correction
                                 - overhead_prefill)
        bad = [k for k, v in limits.items() if v < 0]
        if bad:
            raise ConfigError(f"budget {bad} cannot be met even with every block removed (the embedding and head "
                              "alone exceed it); relax search.target_speedup / memory_ratio / latency_ratio")
        return costs, limits

    # Search, assemble, measure; tighten the budget by the measured/predicted ratio when nothing meets the target.
    eval_w, eval_m = windows["eval"]

    def ppl(model) -> float:
        return perplexity(model, eval_w, batch_size=8, mask=eval_m)

    ppl_parent = ppl(parent)
    candidates: list[dict[str, Any]] = []
    correction, chosen, limits = 1.0, None, {}
    seen: set[tuple[int, ...]] = set()
    for round_ in range(cfg.search.calibrate_rounds + 1):
        costs, limits = budgets(correction)
        sols = diverse_solutions(Problem(score, costs, limits), cfg.search.n_solutions, cfg.search.diversity_alpha,
                                 cfg.search.time_limit)
        if not sols:
            raise ConfigError(f"no architecture meets the budgets {limits}; relax the search targets or widen the "
                              "search space")
        bar = StepBar(progress, len(sols), 0, f"candidates (round {round_ + 1})", ("speedup",))
        for k, sol in enumerate(sols):
            if tuple(sol) in seen:
                continue
            seen.add(tuple(sol))
            child = assemble(parent, [blocks[v] for v in sol], attn_lib, ffn_lib)
            mp, mc = measure_pair(parent, child, cfg)
            cand = {"round": round_, "architecture": [blocks[v].name for v in sol], "choice": sol,
                    "score": float(sum(score[i, v] for i, v in enumerate(sol))), "predicted": predicted(sol),
                    "measured_speedup": mp["decode_step_s"] / mc["decode_step_s"],
                    "measured_prefill_speedup": mp["prefill_s"] / mc["prefill_s"],
                    "ppl_before_gkd": ppl(child)}
            cand["meets_target"] = (not cfg.search.target_speedup
                                    or cand["measured_speedup"] >= cfg.search.target_speedup)
            candidates.append(cand)
            bar.update(k + 1, {"speedup": cand["measured_speedup"]})
        bar.close()
        ok = [cd for cd in candidates if cd["meets_target"]]
        if ok:
            chosen = min(ok, key=lambda cd: cd["ppl_before_gkd"])
            break
        fastest = max(candidates, key=lambda cd: cd["measured_speedup"])
        correction *= fastest["predicted"]["speedup"] / fastest["measured_speedup"]
    if chosen is None:
        chosen = max(candidates, key=lambda cd: cd["measured_speedup"])
    chosen = dict(chosen)  # the final (post-GKD) numbers must not overwrite the candidate's own measurements
    atomic_write_text(run.path / "candidates.json", json.dumps(candidates, indent=1, default=float))
    lap("search_and_candidates")

    # Uniform-shrink baseline: the same variant in every layer, best total score within the same final budgets.
    baseline = None
    if cfg.baseline:
        feasible = [v for v in range(V) if v != pb and all(costs[k][:, v].sum() <= limits[k] for k in limits)]
        if feasible:
            v = min(feasible, key=lambda v: score[:, v].sum())
            baseline = {"architecture": [blocks[v].name] * L, "choice": [v] * L, "predicted": predicted([v] * L)}

    def finish(entry: dict[str, Any], tag: str) -> Any:
        model = assemble(parent, [blocks[v] for v in entry["choice"]], attn_lib, ffn_lib)
        model.train()
        bar = StepBar(progress, cfg.gkd.steps, 0, f"gkd {tag}", ("loss",))
        rows = distill(model, parent, windows["distill"][0], cfg.gkd.steps, cfg.gkd.lr, cfg.gkd.batch_size,
                       cfg.seed, log=lambda s, r: bar.update(s, {"loss": r["loss"]}), mask=windows["distill"][1],
                       engine=cfg.engine)
        bar.close()
        for r in rows:
            run.log_metrics(r["step"], **{f"{tag}_{k}": v for k, v in r.items() if k != "step"})
        entry["ppl"] = ppl(model)
        entry["kl"] = _kl(parent, model, eval_w, eval_m)
        mp, mc = measure_pair(parent, model, cfg)
        entry["measured_speedup"] = mp["decode_step_s"] / mc["decode_step_s"]
        entry["measured_prefill_speedup"] = mp["prefill_s"] / mc["prefill_s"]
        entry["memory_bytes"] = model_memory(model, c.batch_size, c.seq_len, c.dtype_bytes)
        entry["params"] = count_parameters(model)
        return model

    child = finish(chosen, "child")
    child_dir = run.path / "child"
    child.save_pretrained(child_dir)
    tok.save_pretrained(child_dir)
    if baseline is not None:
        base_model = finish(baseline, "baseline")
        baseline["ppl_before_gkd"] = ppl(assemble(parent, [blocks[v] for v in baseline["choice"]], attn_lib, ffn_lib))
        base_model.save_pretrained(run.path / "baseline")
        tok.save_pretrained(run.path / "baseline")
    lap("gkd_and_eval")

    target = cfg.search.target_speedup
    met = bool(not target or chosen["measured_speedup"] >= target)  # the final child, measured after GKD
    summary = {
        "target_speedup": cfg.search.target_speedup, "predicted_speedup": chosen["predicted"]["speedup"],
        "measured_speedup": chosen["measured_speedup"], "measured_prefill_speedup": chosen["measured_prefill_speedup"],
        "ppl_parent": ppl_parent, "ppl_child_before_gkd": chosen["ppl_before_gkd"], "ppl_child": chosen["ppl"],
        "kl_child": chosen["kl"], "memory_parent_bytes": parent_mem, "memory_child_bytes": chosen["memory_bytes"],
        "predicted_memory_child_bytes": chosen["predicted"]["memory_bytes"],
        "params_parent": count_parameters(parent),
        "params_child": chosen["params"], "architecture": " ".join(chosen["architecture"]),
        "solutions": len(candidates), "meets_target": met, "budget_correction": correction,
        "parent_decode_tps": parent_meas["decode_tps"],
        "predicted_parent_decode_step_s": parent_pred["decode_step_s"],
        "measured_parent_decode_step_s": parent_meas["decode_step_s"], **{f"seconds_{k}": v for k, v in times.items()},
    }
    if baseline is not None:
        summary.update({"ppl_uniform_baseline": baseline["ppl"], "ppl_uniform_baseline_before_gkd":
                        baseline["ppl_before_gkd"], "baseline_measured_speedup": baseline["measured_speedup"],
                        "baseline_architecture": baseline["architecture"][0], "kl_uniform_baseline": baseline["kl"]})
    run.write_summary(summary)
    atomic_write_text(run.path / "puzzle.json", json.dumps({"chosen": chosen, "baseline": baseline,
                                                            "budgets": limits, "bld": bld_losses}, indent=1,
                                                           default=float))
    run.write_report(render_report(cfg, run, summary, candidates, chosen, baseline, bld_losses, cm, blocks, times))
    if finish:
        run.finish()
    return summary


@torch.no_grad()
def _kl(parent, child, windows: torch.Tensor, mask: torch.Tensor, batch_size: int = 8) -> float:
    import torch.nn.functional as F

    from refinery.compression.puzzle.scoring import kl_parent_child

    total = 0.0
    for s in range(0, windows.shape[0], batch_size):
        x, m = windows[s: s + batch_size], mask[s: s + batch_size]
        total += float(kl_parent_child(F.log_softmax(parent(x).logits.float(), -1),
                                       F.log_softmax(child(x).logits.float(), -1), m)) * int(m.sum())
    return total / int(mask.sum())


# ---- report --------------------------------------------------------------------------------------------------
def plot_architecture(rows: list[tuple[str, list[str]]], cm, parent_spec: BlockSpec, out: Path) -> Path:
    """One strip per model: attention and FFN of every layer, shaded by the variant's share of the parent's decode
    runtime (dark = as costly as the parent, white = removed) and labelled with the variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(6.0, 0.9 * L + 1.5), 1.5 * len(rows) + 0.4), squeeze=False)
    pa, pf = cm.runtime("attention", parent_spec.attention).decode, cm.runtime("ffn", parent_spec.ffn).decode
    cmap = plt.get_cmap("Blues")
    for ax, (title, arch) in zip(axes[:, 0], rows):
        for i, name in enumerate(arch):
            spec = BlockSpec.parse({"attention": name.split("+")[0], "ffn": name.split("+")[1]})
            for r, (part, sub, ref) in enumerate((("attention", spec.attention, pa), ("ffn", spec.ffn, pf))):
                share = cm.runtime(part, sub).decode / ref if ref else 0.0
                ax.add_patch(plt.Rectangle((i, 1 - r), 0.95, 0.9, color=cmap(0.15 + 0.75 * min(share, 1.0))))
                ax.text(i + 0.47, 1 - r + 0.45, sub.name.replace("ffn", "ffn\n"), ha="center", va="center",
                        fontsize=7, color="white" if share > 0.55 else "black")
        ax.set_xlim(0, L)
        ax.set_ylim(0, 2)
        ax.set_yticks([0.45, 1.45], ["FFN", "attention"], fontsize=8)
        ax.set_xticks([i + 0.47 for i in range(L)], [str(i) for i in range(L)], fontsize=8)
        ax.set_title(title, fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[-1, 0].set_xlabel("layer", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_candidates(candidates: list[dict], summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    pred = [cd["predicted"]["speedup"] for cd in candidates]
    meas = [cd["measured_speedup"] for cd in candidates]
    ax = axes[0]
    ax.scatter(pred, meas, s=18)
    lo, hi = min(pred + meas) * 0.95, max(pred + meas) * 1.05
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("predicted decode speed-up", fontsize=8)
    ax.set_ylabel("measured decode speed-up", fontsize=8)
    ax.set_title("cost model vs measurement", fontsize=9)
    ax = axes[1]
    ax.scatter(meas, [cd["ppl_before_gkd"] for cd in candidates], s=18, label="Puzzle solutions (before GKD)")
    ax.axhline(summary["ppl_parent"], color="black", linewidth=0.8, label="parent")
    if summary.get("target_speedup"):
        ax.axvline(summary["target_speedup"], color="red", linewidth=0.8, linestyle=":", label="target")
    ax.scatter([summary["measured_speedup"]], [summary["ppl_child"]], marker="*", s=90, color="tab:green",
               label="chosen child after GKD")
    if "ppl_uniform_baseline" in summary:
        ax.scatter([summary["baseline_measured_speedup"]], [summary["ppl_uniform_baseline"]], marker="x", s=50,
                   color="tab:red", label="uniform baseline after GKD")
    ax.set_xlabel("measured decode speed-up", fontsize=8)
    ax.set_ylabel("held-out perplexity", fontsize=8)
    ax.set_title("speed vs quality", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes:
        a.tick_params(labelsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_report(cfg, run, summary, candidates, chosen, baseline, bld_losses, cm, blocks, times) -> str:
    from refinery.report import plot_metrics

    parent_spec = blocks[0]  # variant lists start with the parent's attention and FFN
    rows = [("Puzzle child", chosen["architecture"])]
    if baseline is not None:
        rows.append(("uniform baseline", baseline["architecture"]))
    plot_architecture(rows, cm, parent_spec, run.path / "plots" / "architecture.png")
    cand = plot_candidates(candidates, summary, run.path / "plots" / "candidates.png")
    curves = plot_metrics(run.metrics(), ["child_loss", "child_kl", "baseline_loss", "baseline_kl"],
                          run.path / "plots" / "gkd.png", title="global distillation")
    mb = 1 / 2**20
    lines = [f"# {cfg.name}", "",
             f"Target: {summary['target_speedup']}x decode throughput (batch {cfg.cost.batch_size}, context "
             f"{cfg.cost.seq_len}, measured on this machine). {summary['solutions']} solutions assembled and "
             "measured.", "",
             "| model | decode speed-up (predicted) | decode speed-up (measured) | memory MiB | params | "
             "ppl before GKD | ppl | KL(parent‖model) |", "|---|---|---|---|---|---|---|---|",
             f"| parent | 1.00 | 1.00 | {summary['memory_parent_bytes'] * mb:.1f} | {summary['params_parent']:,} | "
             f"– | {summary['ppl_parent']:.3f} | 0 |",
             f"| Puzzle child | {chosen['predicted']['speedup']:.2f} | {chosen['measured_speedup']:.2f} | "
             f"{chosen['memory_bytes'] * mb:.1f} | {chosen['params']:,} | {chosen['ppl_before_gkd']:.3f} | "
             f"{chosen['ppl']:.3f} | {chosen['kl']:.4f} |"]
    if baseline is not None:
        lines.append(f"| uniform ({baseline['architecture'][0]}) | {baseline['predicted']['speedup']:.2f} | "
                     f"{baseline['measured_speedup']:.2f} | {baseline['memory_bytes'] * mb:.1f} | "
                     f"{baseline['params']:,} | {baseline['ppl_before_gkd']:.3f} | {baseline['ppl']:.3f} | "
                     f"{baseline['kl']:.4f} |")
    lines += ["", "![architecture](plots/architecture.png)", "", "Chosen architecture per layer: "
              + ", ".join(f"{i}: {a}" for i, a in enumerate(chosen["architecture"])) + ".", "",
              "| solution | predicted speed-up | measured | ppl before GKD | meets target |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {cd['predicted']['speedup']:.2f} | {cd['measured_speedup']:.2f} | {cd['ppl_before_gkd']:.3f} "
              f"| {'yes' if cd['meets_target'] else 'no'} |" for k, cd in enumerate(candidates)]
    lines += ["", f"![candidates]({cand.relative_to(run.path)})"]
    if curves:
        lines += ["", f"![gkd]({curves.relative_to(run.path)})"]
    trained = [v for v in bld_losses.values() if v.get("loss_init") is not None]
    if trained:
        gain = np.median([v["loss_final"] / max(v["loss_init"], 1e-12) for v in trained])
        lines += ["", f"BLD: {len(trained)} variants trained; median loss after / before = {gain:.2f}."]
    lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in times.items()) + "."]
    return "\n".join(lines) + "\n"

