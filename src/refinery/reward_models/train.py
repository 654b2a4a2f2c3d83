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
from pathlib import Path
from typing import Any, Callable

import torch

from refinery.errors import ConfigError
from refinery.progress import StepBar
from refinery.reward_models.armo import run_armo
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
from refinery.reward_models.stages import order_for, save_stage, stage_done, steps_for
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


@torch.no_grad()
def score_encoded(model, encs: list[Encoded], pad: int, batch_size: int) -> torch.Tensor:
    """``[N, k]`` head outputs of the model being trained (eval mode for the pass, then restored)."""
    was = model.training
    model.eval()
    out = torch.zeros(len(encs), head_of(model).out_features)
    for idx, batch in length_batches(encs, batch_size, pad):
        out[idx] = rewards(model, batch).float().cpu()
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


# A step's loss is built per piece of rows: ``loss_of(step) -> (n, mask, piece)`` gives the global batch size n,
# a mask whose sum over a set of rows is their share of the normalisation (1 per pair for the BT family, the
# observed labels for regression) and ``piece(rows) -> (loss normalised over those rows, stats)``. ``fit`` shards
# the rows by rank, splits them into micro-batches and weights each piece by its count / the global count
# (:func:`refinery.engine.accum.accumulate`), so the gradient is that of the loss over the whole batch however it
# is split (FSDP2 sums the ranks' gradients).
StepLoss = tuple[int, torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]]


def fit(stage: str, model, loss_of: Callable[[int], StepLoss], total: int, lr: float,
        cfg: RMConfig, run: RunDir, offset: int, evaluate: Callable[[], dict[str, float]], progress: bool,
        stop_after: int | None = None, env=None) -> bool:
    """AdamW steps ``0..total-1`` of ``stage`` on the engine (device, bf16 autocast over fp32 weights,
    micro-batches, ranks). Mid-stage checkpoints hold weights + optimizer (sharded under torchrun), so a killed
    stage resumes where it stopped. ``stop_after`` (a run-wide step) ends early with a checkpoint, as a crash
    would (tests); returns False then. ``model`` is already placed/wrapped by :func:`_engine_model`."""
    from refinery.engine import dist
    from refinery.engine.accum import accumulate, denominator, micro_batches
    from refinery.engine.device import autocast, peak_memory_mb, reset_peak
    from refinery.models.pretrain import _load_state

    t, eng = cfg.trainer, cfg.engine
    env = env or dist.init_distributed(eng.device)
    main = env.is_main
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr,
                            betas=tuple(t.betas))
    start = 0
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        if (ckpt / "refinery_meta.json").exists():  # sharded (torchrun): DCP reshards onto this job's ranks
            meta = json.loads((ckpt / "refinery_meta.json").read_text()).get("extra") or {}
            if meta.get("stage") == stage:
                start, _ = dist.load_sharded(ckpt, model, opt)
                start = int(meta["step"])
        else:
            state = _load_state(ckpt)
            if state.get("stage") == stage:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                start = state["step"]
        if start and main:
            run.truncate_metrics(offset + start)
        dist.barrier()
    # on one device bf16 is autocast over fp32 weights; under FSDP2 its mixed-precision policy casts instead
    precision = eng.precision if env.world_size == 1 else "fp32"
    bar = StepBar(progress and main, total, start, f"rm {stage}", ("loss", "valid_accuracy"))
    model.train()
    for step in range(start, total):
        for g in opt.param_groups:
            g["lr"] = _lr(step, total, lr, t)
        n, mask, piece = loss_of(step)
        shard = dist.shard_rows(n, env.rank, env.world_size)
        local = torch.arange(shard.start, shard.stop)
        n_global = dist.all_reduce_sum(denominator(mask[local]))

        def under_autocast(rows: torch.Tensor, piece=piece):
            with autocast(precision, env.device):
                return piece(rows)

        opt.zero_grad(set_to_none=True)
        reset_peak(env.device)
        st = accumulate(under_autocast, micro_batches(local, eng.micro_batch_rows), mask, global_denominator=n_global)
        st = {k: dist.all_reduce_sum(v) for k, v in sorted(st.items())}  # each rank's share of the global mean
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        row: dict[str, Any] = {}
        done = step + 1
        if done % t.log_every == 0 or done == total:
            loss = st.pop("loss")
            row.update(loss=loss, lr=opt.param_groups[0]["lr"], **st,
                       peak_memory_mb=round(peak_memory_mb(env.device), 1))
        if done % t.eval_every == 0 or done == total:
            row.update({f"valid_{k}": v for k, v in evaluate().items()})
        if row and main:
            run.log_metrics(offset + done, stage=stage, **row)
        bar.update(done, row)
        stop = stop_after is not None and offset + done >= stop_after and done < total
        if (done % t.checkpoint_every == 0 and done < total) or stop:
            if env.world_size > 1:
                run.save_sharded_checkpoint(offset + done, model, opt, extra={"stage": stage, "step": done}, keep=1)
            elif main:
                def write(d: Path, done: int = done) -> None:
                    torch.save({"stage": stage, "step": done, "model": model.state_dict(),
                                "optimizer": opt.state_dict()}, d / "trainer_state.pt")

                run.save_checkpoint(offset + done, write, keep=1)
        if stop:
            bar.close()
            return False
    bar.close()
    return True


def _engine_model(model, cfg: RMConfig, env):
    """Activation checkpointing, then the device (FSDP2 per decoder layer under torchrun)."""
    from refinery.engine import dist
    from refinery.engine.device import enable_activation_checkpointing

    if cfg.engine.activation_checkpointing:
        enable_activation_checkpointing(model)
    return dist.wrap_model(model, env, cfg.engine.precision)


def _save_model_stage(run: RunDir, stage: str, model, tok, meta: dict[str, Any], env) -> Path:
    """Every rank gathers the weights (collective under FSDP2); rank 0 writes the plain HF stage directory."""
    from refinery.engine import dist

    state = dist.full_state_dict(model) if env.world_size > 1 else None
    final = run.path / "stages" / stage
    if env.is_main:
        final = save_stage(run, stage, lambda d: save_reward_model(model, tok, d, meta, state_dict=state))
    dist.barrier()
    return final


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
    from refinery.engine import dist

    env = dist.init_distributed(cfg.engine.device)
    torch.manual_seed(cfg.seed)
    model, tok = load_backbone(start, num_labels=len(objectives))
    pad, L = pad_id_of(model), cfg.trainer.max_length
    model = _engine_model(model, cfg, env)
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

    def loss_of(step: int) -> StepLoss:
        idx = order_for(len(enc), step, B, cfg.seed, "regression")
        target = labels[idx]

        def piece(rows: torch.Tensor):  # masked MSE over the observed labels of these rows
            pred = rewards(model, collate([enc[idx[i]] for i in rows.tolist()], pad)).float()
            return regression_loss(pred, target[rows].to(pred.device)), {}

        return len(idx), (~torch.isnan(target)).float(), piece

    def evaluate() -> dict[str, float]:
        out = pair_accuracy(model, vpairs, pad, cfg.eval.batch_size)
        if vlabels is not None:
            out["mse"] = float(regression_loss(score_encoded(model, venc, pad, cfg.eval.batch_size), vlabels))
        return {"accuracy": out["accuracy"], **({"mse": out["mse"]} if "mse" in out else {})}

    total = steps_for(len(enc), cfg.regression.epochs, B)
    if not fit("regression", model, loss_of, total, cfg.regression.lr or cfg.trainer.lr, cfg, run, offset, evaluate,
               progress, stop_after, env):
        return None
    final = evaluate()
    return _save_model_stage(run, "regression", model, tok, _meta(
        cfg, "regression", objectives, valid=final, label_mean=mean.tolist(), label_std=std.tolist()), env)


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    m = torch.nanmean(x, 0)
    var = torch.nanmean((x - m) ** 2, 0)
    return torch.nan_to_num(var.sqrt(), nan=1.0).clamp(min=1e-6)


def run_bt(cfg: RMConfig, run: RunDir, start: Path, train: list[dict], valid: list[dict], offset: int,
           progress: bool, stop_after: int | None = None) -> Path | None:
    from refinery.engine import dist

    env = dist.init_distributed(cfg.engine.device)
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
        if not init.exists() and env.is_main:
            tmp = init.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, init)
    model = _engine_model(model, cfg, env)
    B = cfg.trainer.batch_pairs

    def loss_of(step: int) -> StepLoss:
        idx = order_for(len(pairs), step, B, cfg.seed, "bt")

        def piece(rows: torch.Tensor):  # a mean over these pairs (ties were dropped: every pair counts 1)
            sel = [idx[i] for i in rows.tolist()]
            r = rewards(model, collate([pairs[i][0] for i in sel] + [pairs[i][1] for i in sel], pad))[:, 0].float()
            rc, rr = r[: len(sel)], r[len(sel):]
            strength = torch.tensor([pairs[i][2] for i in sel], dtype=torch.float32, device=r.device)
            loss = pair_loss(cfg.loss.type, rc, rr, strength, cfg.loss.margin_scale, cfg.loss.center_coef)
            return loss, {"accuracy": float((rc > rr).float().mean()), "margin": float((rc - rr).detach().mean())}

        return len(idx), torch.ones(len(idx)), piece

    def evaluate() -> dict[str, float]:
        return pair_accuracy(model, vpairs, pad, cfg.eval.batch_size)

    total = steps_for(len(pairs), cfg.trainer.epochs, B)
    if not fit("bt", model, loss_of, total, cfg.trainer.lr, cfg, run, offset, evaluate, progress, stop_after, env):
        return None
    final = evaluate()
    return _save_model_stage(run, "bt", model, tok, _meta(cfg, "bt", objectives, loss=cfg.loss.type, valid=final),
                             env)


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
    return save_stage(run, "expo", lambda d: save_reward_model(model, tok, d, meta))


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
    from refinery.engine import dist
    from refinery.engine.device import check_precision
    from refinery.reward_models.eval import length_correlation, rewardbench_scores, score_pairs
    from refinery.reward_models.model import RewardScorer

    env = dist.init_distributed(cfg.engine.device)  # one process unless launched by torchrun (--nproc N)
    check_precision(cfg.engine.precision, env.device)
    torch.set_num_threads(cfg.trainer.threads or max(1, (os.cpu_count() or 1) // env.world_size))
    progress = progress and env.is_main
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
            elif env.is_main:  # ExPO and the ArmoRM head work on saved stages: rank 0 alone
                if stage == "expo":
                    run_expo(cfg, run, valid, offsets[stage])
                else:
                    run_armo(cfg, run, current, train, valid, offsets[stage], progress)
            dist.barrier()
        current = run.path / "stages" / stage
    if not env.is_main:  # rank 0 evaluates the stages and writes the run
        dist.barrier()
        return run.summary()
    final = run.path / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(current, final, ignore=shutil.ignore_patterns("COMPLETE"))

    summary: dict[str, Any] = {"rm.pipeline": "+".join(cfg.pipeline), "rm.loss": cfg.loss.type,
                               "rm.n_train": len(train), "rm.n_test": len(test),
                               "precision": cfg.engine.precision, "world_size": env.world_size,
                               "device": str(env.device)}
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
    dist.barrier()  # the other ranks return once rank 0 has written the run
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
