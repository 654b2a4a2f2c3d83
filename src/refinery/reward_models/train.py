"""The reward-model runner: a pipeline of stages (regression → BT → ExPO, and ArmoRM), each saved as a model
directory under ``stages/<name>`` so an interrupted run resumes at the stage in flight (from its last mid-stage
checkpoint), then a RewardBench-style test evaluation of every stage.

The batch at step ``s`` of a stage is a pure function of ``(seed, stage, s)``, so a resumed stage sees the same
data order as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from refinery.errors import ConfigError
from refinery.progress import StepBar
from refinery.reward_models.config import RMConfig, RMTrainer
from refinery.reward_models.data import load_pairs, responses_with_attributes, split_pairs
from refinery.reward_models.losses import pair_loss, regression_loss
from refinery.reward_models.model import (
    Encoded,
    collate,
    encode,
    head_of,
    length_batches,
    load_backbone,
    pad_id_of,
    read_meta,
    rewards,
    save_reward_model,
)
from refinery.runs import RunDir

# ---- data -----------------------------------------------------------------------------------------------------


def load_data(cfg: RMConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train / validation / test pairs. Files without their own valid/test are split by prompt hash."""
    d = cfg.data
    dseed = cfg.seed if d.seed is None else d.seed
    if d.source == "synthetic":
        from refinery.reward_models.synthetic import synthetic_pairs

        kw = dict(tasks=tuple(d.tasks), difficulty=d.difficulty, missing=d.missing)
        train = synthetic_pairs(d.n_train, dseed, "train", length_bias=d.length_bias, noise=d.noise, **kw)
        # validation and test both come from the task's test split (prompts never seen in training)
        held = synthetic_pairs(d.n_valid + d.n_test, dseed, "test", **kw)
        return train, held[: d.n_valid], held[d.n_valid:]
    pairs = load_pairs(d.train_file, d.format, d.limit)
    if d.valid_file and d.test_file:
        train, valid, test = pairs, load_pairs(d.valid_file, d.format, d.limit), load_pairs(d.test_file, d.format,
                                                                                            d.limit)
        return _with_attributes(d, train, valid, test)
    if len(d.split) != 3:
        raise ConfigError(f"data.split must have 3 fractions (train, valid, test), got {d.split}")
    train, valid, test = split_pairs(pairs, tuple(d.split), salt=str(dseed))
    if d.valid_file:
        train, valid = train + valid, load_pairs(d.valid_file, d.format, d.limit)
    if d.test_file:
        train, test = train + test, load_pairs(d.test_file, d.format, d.limit)
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if not part:
            raise ConfigError(f"the {name} split of {d.train_file} is empty; give more pairs or change data.split")
    return _with_attributes(d, train, valid, test)


def _with_attributes(d, train: list[dict], valid: list[dict], test: list[dict]):
    if d.attributes_file:
        from refinery.reward_models.data import attach_attributes, load_attributes

        table = load_attributes(d.attributes_file)
        if not sum(attach_attributes(part, table) for part in (train, valid, test)):
            raise ConfigError(f"no response in {d.train_file} matches a row of {d.attributes_file}")
    return train, valid, test


def resolve_backbone(cfg: RMConfig, progress: bool) -> Path:
    if cfg.backbone.path:
        return Path(cfg.backbone.path)
    from refinery.models.pretrain import cached_pretrain

    seed = cfg.seed if cfg.backbone.seed is None else cfg.backbone.seed
    return cached_pretrain(cfg.backbone.bootstrap, seed, progress)


EncodedPair = tuple[Encoded, Encoded, int]


def encode_pairs(tok, pairs: list[dict], max_length: int) -> list[EncodedPair]:
    return [(encode(tok, p["prompt"], p["chosen"], max_length), encode(tok, p["prompt"], p["rejected"], max_length),
             int(p.get("strength", 1))) for p in pairs]


def order_for(n: int, step: int, batch: int, seed: int, salt: str) -> list[int]:
    """Indices of the batch at ``step``: a fresh permutation per epoch, a pure function of the arguments."""
    per_epoch = max(1, n // batch)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(_stable(seed, salt, epoch))
    perm = torch.randperm(n, generator=g).tolist()
    return perm[pos * batch: pos * batch + batch] or perm[:batch]


def _stable(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


def steps_for(n: int, epochs: float, batch: int) -> int:
    return max(1, math.ceil(n * epochs / batch))


@torch.no_grad()
def score_encoded(model, encs: list[Encoded], pad: int, batch_size: int) -> torch.Tensor:
    """``[N, k]`` head outputs of the model being trained (eval mode for the pass, then restored)."""
    was = model.training
    model.eval()
    out = torch.zeros(len(encs), head_of(model).out_features)
    for idx, batch in length_batches(encs, batch_size, pad):
        out[idx] = rewards(model, batch).float()
    model.train(was)
    return out


def pair_accuracy(model, pairs: list[EncodedPair], pad: int, batch_size: int, index: int = 0) -> dict[str, float]:
    c = score_encoded(model, [p[0] for p in pairs], pad, batch_size)[:, index]
    r = score_encoded(model, [p[1] for p in pairs], pad, batch_size)[:, index]
    diff = c - r
    return {"accuracy": float((diff > 0).float().mean()),
            "bt_loss": float(torch.nn.functional.softplus(-diff).mean())}


# ---- the training loop shared by regression and BT -------------------------------------------------------------


def _lr(step: int, total: int, peak: float, t: RMTrainer) -> float:
    warm = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_ratio * total)
    warm = min(warm, total)
    if warm and step < warm:
        return peak * (step + 1) / warm
    if t.schedule == "constant":
        return peak
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = peak * t.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def fit(stage: str, model, loss_of: Callable[[int], tuple[torch.Tensor, dict[str, float]]], total: int, lr: float,
        cfg: RMConfig, run: RunDir, offset: int, evaluate: Callable[[], dict[str, float]], progress: bool,
        stop_after: int | None = None) -> bool:
    """AdamW steps ``0..total-1`` of ``stage``; ``loss_of(step)`` builds the step's loss. Mid-stage checkpoints
    hold weights + optimizer, so a killed stage resumes where it stopped. ``stop_after`` (a run-wide step) ends
    early with a checkpoint, as a crash would (tests); returns False then."""
    from refinery.models.pretrain import _load_state

    t = cfg.trainer
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr,
                            betas=tuple(t.betas))
    start = 0
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        state = _load_state(ckpt)
        if state.get("stage") == stage:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start = state["step"]
            run.truncate_metrics(offset + start)
    bar = StepBar(progress, total, start, f"rm {stage}", ("loss", "valid_accuracy"))
    model.train()
    for step in range(start, total):
        for g in opt.param_groups:
            g["lr"] = _lr(step, total, lr, t)
        loss, extra = loss_of(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        row: dict[str, Any] = {}
        done = step + 1
        if done % t.log_every == 0 or done == total:
            row.update(loss=float(loss.detach()), lr=opt.param_groups[0]["lr"], **extra)
        if done % t.eval_every == 0 or done == total:
            row.update({f"valid_{k}": v for k, v in evaluate().items()})
        if row:
            run.log_metrics(offset + done, stage=stage, **row)
        bar.update(done, row)
        stop = stop_after is not None and offset + done >= stop_after and done < total
        if (done % t.checkpoint_every == 0 and done < total) or stop:
            def write(d: Path, done: int = done) -> None:
                torch.save({"stage": stage, "step": done, "model": model.state_dict(),
                            "optimizer": opt.state_dict()}, d / "trainer_state.pt")

            run.save_checkpoint(offset + done, write, keep=1)
        if stop:
            bar.close()
            return False
    bar.close()
    return True


def _save_stage(run: RunDir, stage: str, write: Callable[[Path], None]) -> Path:
    """Write a stage's model directory atomically and drop the mid-stage checkpoints."""
    final = run.path / "stages" / stage
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{stage}-"))
    try:
        write(tmp)
        (tmp / "COMPLETE").write_text(stage)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for c in run.checkpoints():
        shutil.rmtree(c, ignore_errors=True)
    return final


def stage_done(run: RunDir, stage: str) -> bool:
    return (run.path / "stages" / stage / "COMPLETE").exists()


# ---- stages ---------------------------------------------------------------------------------------------------


def _meta(cfg: RMConfig, stage: str, objectives: list[str], **extra: Any) -> dict[str, Any]:
    return {"kind": "sequence_classification", "stage": stage, "objectives": objectives, "reward_index": 0,
            "max_length": cfg.trainer.max_length, **extra}


def run_regression(cfg: RMConfig, run: RunDir, start: Path, train: list[dict], valid: list[dict], offset: int,
                   progress: bool, stop_after: int | None = None) -> Path | None:
    objectives = cfg.regression.objectives
    rows = responses_with_attributes(train, objectives)
    vrows = responses_with_attributes(valid, objectives)
    if not rows:
        raise ConfigError("the regression stage needs per-response attributes (chosen_attributes / "
                          f"rejected_attributes with {objectives}); this data has none: drop 'regression' from "
                          "pipeline")
    torch.manual_seed(cfg.seed)
    model, tok = load_backbone(start, num_labels=len(objectives))
    pad, L = pad_id_of(model), cfg.trainer.max_length
    enc = [encode(tok, r["prompt"], r["response"], L) for r in rows]
    # targets are standardised per objective (mean 0, std 1 over the labelled rows): the head then starts at the
    # right scale instead of spending its first steps learning each attribute's mean
    raw = torch.tensor([r["labels"] for r in rows])
    mean, std = torch.nanmean(raw, 0), _nanstd(raw)
    labels = (raw - mean) / std
    venc = [encode(tok, r["prompt"], r["response"], L) for r in vrows]
    vlabels = (torch.tensor([r["labels"] for r in vrows]) - mean) / std if vrows else None
    vpairs = encode_pairs(tok, valid, L)
    B = cfg.trainer.batch_pairs * 2

    def loss_of(step: int):
        idx = order_for(len(enc), step, B, cfg.seed, "regression")
        pred = rewards(model, collate([enc[i] for i in idx], pad))
        return regression_loss(pred, labels[idx]), {}

    def evaluate() -> dict[str, float]:
        out = pair_accuracy(model, vpairs, pad, cfg.eval.batch_size)
        if vlabels is not None:
            out["mse"] = float(regression_loss(score_encoded(model, venc, pad, cfg.eval.batch_size), vlabels))
        return {"accuracy": out["accuracy"], **({"mse": out["mse"]} if "mse" in out else {})}

    total = steps_for(len(enc), cfg.regression.epochs, B)
    if not fit("regression", model, loss_of, total, cfg.regression.lr or cfg.trainer.lr, cfg, run, offset, evaluate,
               progress, stop_after):
        return None
    final = evaluate()
    return _save_stage(run, "regression", lambda d: save_reward_model(
        model, tok, d, _meta(cfg, "regression", objectives, valid=final, label_mean=mean.tolist(),
                             label_std=std.tolist())))


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    m = torch.nanmean(x, 0)
    var = torch.nanmean((x - m) ** 2, 0)
    return torch.nan_to_num(var.sqrt(), nan=1.0).clamp(min=1e-6)


def run_bt(cfg: RMConfig, run: RunDir, start: Path, train: list[dict], valid: list[dict], offset: int,
           progress: bool, stop_after: int | None = None) -> Path | None:
    meta = read_meta(start)
    from_rm = meta.get("kind") == "sequence_classification"
    torch.manual_seed(cfg.seed)
    model, tok = load_backbone(start, num_labels=None if from_rm else 1)
    objectives = meta.get("objectives", ["reward"]) if from_rm else ["reward"]
    pad, L = pad_id_of(model), cfg.trainer.max_length
    # ties carry no ordering: the loss gives them weight 0, so they are not fed at all
    pairs = encode_pairs(tok, [p for p in train if int(p.get("strength", 1)) != 0], L)
    if not pairs:
        raise ConfigError("no non-tie training pairs for the BT stage")
    vpairs = encode_pairs(tok, valid, L)
    if "expo" in cfg.pipeline:  # ExPO extrapolates from this starting point
        init = run.path / "stages" / "bt-init.pt"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists():
            tmp = init.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, init)
    B = cfg.trainer.batch_pairs

    def loss_of(step: int):
        idx = order_for(len(pairs), step, B, cfg.seed, "bt")
        batch = collate([pairs[i][0] for i in idx] + [pairs[i][1] for i in idx], pad)
        r = rewards(model, batch)[:, 0]
        rc, rr = r[: len(idx)], r[len(idx):]
        strength = torch.tensor([pairs[i][2] for i in idx], dtype=torch.float32)
        loss = pair_loss(cfg.loss.type, rc, rr, strength, cfg.loss.margin_scale, cfg.loss.center_coef)
        return loss, {"accuracy": float((rc > rr).float().mean()), "margin": float((rc - rr).detach().mean())}

    def evaluate() -> dict[str, float]:
        return pair_accuracy(model, vpairs, pad, cfg.eval.batch_size)

    total = steps_for(len(pairs), cfg.trainer.epochs, B)
    if not fit("bt", model, loss_of, total, cfg.trainer.lr, cfg, run, offset, evaluate, progress, stop_after):
        return None
    final = evaluate()
    return _save_stage(run, "bt", lambda d: save_reward_model(
        model, tok, d, _meta(cfg, "bt", objectives, loss=cfg.loss.type, valid=final)))


def run_expo(cfg: RMConfig, run: RunDir, valid: list[dict], offset: int) -> Path:
    """ExPO: ``theta = theta_init + alpha (theta_BT - theta_init)``, alpha chosen by validation accuracy (ties:
    lower validation BT loss)."""
    bt_dir = run.path / "stages" / "bt"
    model, tok = load_backbone(bt_dir)
    init = torch.load(run.path / "stages" / "bt-init.pt", weights_only=True)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    vpairs = encode_pairs(tok, valid, cfg.trainer.max_length)
    pad = pad_id_of(model)
    results = []
    for alpha in cfg.expo.alphas:
        model.load_state_dict(expo_state(init, trained, alpha))
        m = pair_accuracy(model, vpairs, pad, cfg.eval.batch_size)
        results.append((alpha, m))
        run.log_metrics(offset, stage="expo", alpha=alpha, **{f"valid_{k}": v for k, v in m.items()})
    best_alpha, best = max(results, key=lambda am: (am[1]["accuracy"], -am[1]["bt_loss"]))
    model.load_state_dict(expo_state(init, trained, best_alpha))
    meta = read_meta(bt_dir)
    meta.update(stage="expo", expo_alpha=best_alpha, valid=best,
                expo_search={str(a): m["accuracy"] for a, m in results})
    return _save_stage(run, "expo", lambda d: save_reward_model(model, tok, d, meta))


def expo_state(init: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], alpha: float) -> dict:
    """``init + alpha (trained - init)`` for floating tensors; others (buffers of ints) taken from ``trained``."""
    out = {}
    for k, v in trained.items():
        out[k] = init[k] + alpha * (v - init[k]) if v.is_floating_point() and k in init else v
    return out


# ---- the runner -----------------------------------------------------------------------------------------------


def planned_steps(cfg: RMConfig, n_train: int, n_rows: int) -> dict[str, int]:
    out = {}
    if "regression" in cfg.pipeline:
        out["regression"] = steps_for(max(1, n_rows), cfg.regression.epochs, cfg.trainer.batch_pairs * 2)
    if "bt" in cfg.pipeline:
        out["bt"] = steps_for(n_train, cfg.trainer.epochs, cfg.trainer.batch_pairs)
    if "armo" in cfg.pipeline:
        out["armo"] = cfg.armo.steps
    return out


def train_rm(cfg: RMConfig, run: RunDir, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Run the pipeline into ``run``; returns the flat summary (``rm.accuracy``, ``rm.length_corr``, ...).
    ``stop_after`` stops at that run-wide training step, leaving a checkpoint to resume from (tests)."""
    from refinery.reward_models.eval import length_correlation, rewardbench_scores, score_pairs
    from refinery.reward_models.model import RewardScorer

    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    train, valid, test = load_data(cfg)
    start = resolve_backbone(cfg, progress)
    rows = len(responses_with_attributes(train, cfg.regression.objectives)) if "regression" in cfg.pipeline else 0
    steps = planned_steps(cfg, len(train), rows)
    offsets, acc = {}, 0
    for s in cfg.pipeline:
        offsets[s] = acc
        acc += steps.get(s, 0)
    current = start
    for stage in cfg.pipeline:
        if not stage_done(run, stage):
            if stage == "regression":
                if run_regression(cfg, run, current, train, valid, offsets[stage], progress, stop_after) is None:
                    return run.summary()
            elif stage == "bt":
                if run_bt(cfg, run, current, train, valid, offsets[stage], progress, stop_after) is None:
                    return run.summary()
            elif stage == "expo":
                run_expo(cfg, run, valid, offsets[stage])
            else:
                from refinery.reward_models.armo import run_armo

                run_armo(cfg, run, current, train, valid, offsets[stage], progress)
        current = run.path / "stages" / stage
    final = run.path / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(current, final, ignore=shutil.ignore_patterns("COMPLETE"))

    summary: dict[str, Any] = {"rm.pipeline": "+".join(cfg.pipeline), "rm.loss": cfg.loss.type,
                               "rm.n_train": len(train), "rm.n_test": len(test)}
    details: dict[str, Any] = {}
    for stage in cfg.pipeline:
        scorer = RewardScorer(run.path / "stages" / stage, batch_size=cfg.eval.batch_size)
        c, r = score_pairs(scorer, test)
        scores = rewardbench_scores(test, c, r)
        scores["length_correlation"] = length_correlation(test, c, r)
        scores["accuracy"] = sum(1 for x, y in zip(c, r) if x > y) / len(test)
        details[stage] = scores
        summary[f"rm.{stage}.accuracy"] = round(scores["accuracy"], 4)
        summary[f"rm.{stage}.length_corr"] = round(scores["length_correlation"], 4)
    last = details[cfg.pipeline[-1]]
    summary.update({"rm.accuracy": round(last["accuracy"], 4), "rm.rewardbench_overall": round(last["overall"], 4),
                    "rm.length_corr": round(last["length_correlation"], 4)})
    meta = read_meta(final)
    if "expo_alpha" in meta:
        summary["rm.expo_alpha"] = meta["expo_alpha"]
    if "armo" in details:
        summary["rm.armo.lambdas"] = json.dumps(meta.get("lambdas"))
        # what the decorrelation changes, on the validation pairs: the same gate trained on raw objectives
        for key, m in (("without_decorrelation", meta.get("valid_without_decorrelation")),
                       ("with_decorrelation", meta.get("valid"))):
            if m:
                summary[f"rm.armo.valid_length_corr_{key}"] = round(m["length_corr"], 4)
                summary[f"rm.armo.valid_accuracy_{key}"] = round(m["accuracy"], 4)
    (run.path / "eval.json").write_text(json.dumps(details, indent=2) + "\n")
    run.write_summary(summary)
    run.write_report(render_report(cfg, run, details))
    run.finish()
    return run.summary()


def render_report(cfg: RMConfig, run: RunDir, details: dict[str, Any]) -> str:
    from refinery.report import plot_metrics

    plot = plot_metrics(run.metrics(), ["loss", "valid_accuracy", "valid_mse", "accuracy", "margin"],
                        run.path / "plots" / "rm.png", title=f"{cfg.name}: {' → '.join(cfg.pipeline)}")
    lines = [f"# {cfg.name}", "", f"Pipeline: {' → '.join(cfg.pipeline)}; loss {cfg.loss.type}; "
             f"data {cfg.data.source}.", "", "| stage | test accuracy | RewardBench overall | corr(score, length) |",
             "|---|---|---|---|"]
    for stage, d in details.items():
        lines.append(f"| {stage} | {d['accuracy']:.3f} | {d['overall']:.3f} | {d['length_correlation']:+.3f} |")
    last = details[cfg.pipeline[-1]]
    lines += ["", "Sections of the final model:", "", "| section | accuracy |", "|---|---|"]
    lines += [f"| {s} | {a:.3f} |" for s, a in last["sections"].items()]
    if plot:
        lines += ["", f"![training curves](plots/{plot.name})"]
    return "\n".join(lines) + "\n"
