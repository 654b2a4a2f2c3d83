"""ArmoRM: absolute-rating multi-objective reward model with mixture-of-experts gating (Wang et al., 2024).

Stage 1: a frozen backbone's last-token hidden state → one ridge regression per objective (alpha by validation
MSE; missing labels skipped per objective). Stage 2: a gating MLP on the prompt-end hidden state gives weights
over objectives, ``softmax(logits / T)·beta`` with learnable beta, applied to the *verbosity-decorrelated*
rewards ``r'_i = r_i - lambda_i·r_verbosity`` and trained with BT on preference pairs.

Two bugs of the public reference code are avoided on purpose (and tested): the gate is trained on the decorrelated
rewards, not the raw ones, and its softmax runs over objectives (dim -1), not over chosen/rejected.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refinery.reward_models.heads import ArmoHead
from refinery.reward_models.model import encode, hidden_states, length_batches, load_backbone, pad_id_of, read_meta
from refinery.reward_models.stages import _stable, order_for, save_stage

__all__ = ["ArmoHead", "decorrelation_lambda", "features", "fit_ridge", "gate_lr", "run_armo"]


def gate_lr(step: int, steps: int, lr: float, schedule: str) -> float:
    """The gate's LR at ``step`` of ``steps``: RLHFlow stage-2 decays it by a cosine from ``lr`` to 0 without
    warm-up; ``constant`` keeps ``lr``."""
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1 + math.cos(math.pi * step / steps))


# ---- stage 1: ridge heads -------------------------------------------------------------------------------------


def fit_ridge(X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor,
              alphas: list[float]) -> tuple[torch.Tensor, float, float, float]:
    """Ridge ``y ≈ X w + b`` on rows with a label (NaN skipped), the penalty chosen by validation MSE.
    Returns ``(w, b, alpha, validation MSE)``."""
    keep, vkeep = ~torch.isnan(y), ~torch.isnan(yv)
    if keep.sum() < 2:
        raise ValueError("fewer than 2 labelled rows for this objective")
    X, y = X[keep].double(), y[keep].double()
    Xv, yv = Xv[vkeep].double(), yv[vkeep].double()
    mx, my = X.mean(0), y.mean()
    Xc, yc = X - mx, y - my
    gram, rhs = Xc.T @ Xc, Xc.T @ yc
    eye = torch.eye(X.shape[1], dtype=torch.float64)
    best = None
    for a in alphas:
        w = torch.linalg.solve(gram + a * eye, rhs)
        b = my - mx @ w
        mse = float(((Xv @ w + b - yv) ** 2).mean()) if len(yv) else float(((X @ w + b - y) ** 2).mean())
        if best is None or mse < best[3]:
            best = (w, float(b), a, mse)
    w, b, a, mse = best
    return w.float(), b, a, mse


# ---- decorrelation --------------------------------------------------------------------------------------------


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from refinery.reward_models.eval import spearman

    return spearman(a.tolist(), b.tolist())


def decorrelation_lambda(r: torch.Tensor, r_verb: torch.Tensor, threshold: float = 0.03) -> float:
    """The smallest ``lambda >= 0`` with ``Spearman(r - lambda·r_verb, r_verb) <= threshold`` (bisection; the
    correlation falls towards -1 as lambda grows, so the boundary exists)."""
    if _spearman(r, r_verb) <= threshold:
        return 0.0
    scale = float(r.std() / r_verb.std().clamp(min=1e-12))
    lo, hi = 0.0, max(scale, 1e-6)
    while _spearman(r - hi * r_verb, r_verb) > threshold:
        lo, hi = hi, hi * 2
        if hi > 1e9:
            raise ValueError("could not decorrelate: the objective does not decrease with lambda")
    for _ in range(40):
        mid = (lo + hi) / 2
        if _spearman(r - mid * r_verb, r_verb) > threshold:
            lo = mid
        else:
            hi = mid
    return hi


# ---- the stage --------------------------------------------------------------------------------------------------


@torch.no_grad()
def features(model, tok, prompts: list[Any], responses: list[str], max_length: int,
             batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-backbone features: last-token and prompt-end final hidden states, ``([N, H], [N, H])``."""
    model.eval()
    enc = [encode(tok, p, r, max_length) for p, r in zip(prompts, responses)]
    H = model.config.hidden_size
    last, prompt_end = torch.zeros(len(enc), H), torch.zeros(len(enc), H)
    for idx, batch in length_batches(enc, batch_size, pad_id_of(model)):
        a, b = hidden_states(model, batch)
        last[idx], prompt_end[idx] = a.float().cpu(), b.float().cpu()
    return last, prompt_end


def _labels(pairs: list[dict], objectives: list[str]) -> torch.Tensor:
    rows = []
    for side in ("chosen", "rejected"):
        for p in pairs:
            attrs = p.get(f"{side}_attributes") or {}
            rows.append([float(attrs[o]) if attrs.get(o) is not None else math.nan for o in objectives])
    return torch.tensor(rows)


def run_armo(cfg, run, start: Path, train: list[dict], valid: list[dict], offset: int, progress: bool) -> Path:
    """Fit the ridge heads, the decorrelation lambdas and the gate on features of the frozen backbone ``start``."""
    from refinery.engine.device import resolve_device
    from refinery.errors import ConfigError
    from refinery.progress import StepBar
    from refinery.reward_models.losses import pair_loss

    a = cfg.armo
    device = resolve_device(cfg.engine.device)  # the frozen backbone's forward passes run on the engine's device
    model, tok = load_backbone(start)
    model.to(device)
    L, bs = cfg.trainer.max_length, cfg.eval.batch_size

    def feats(pairs):
        prompts = [p["prompt"] for p in pairs]
        hc, hp = features(model, tok, prompts, [p["chosen"] for p in pairs], L, bs)
        hr, _ = features(model, tok, prompts, [p["rejected"] for p in pairs], L, bs)
        return hc, hr, hp

    train = [p for p in train if int(p.get("strength", 1)) != 0]
    hc, hr, hp = feats(train)
    vc, vr, vp = feats(valid)
    y, yv = _labels(train, a.objectives), _labels(valid, a.objectives)
    missing = [o for i, o in enumerate(a.objectives) if torch.isnan(y[:, i]).all()]
    if missing:
        raise ConfigError(f"ArmoRM needs labels for every objective; the training data has none for {missing} "
                          "(pairs need chosen_attributes / rejected_attributes)")
    head = ArmoHead(hc.shape[1], a.objectives, a.verbosity, a.gate_hidden, a.gate_layers, a.dropout, a.temperature)
    X, Xv = torch.cat([hc, hr]), torch.cat([vc, vr])
    ridge = {}
    for i, o in enumerate(a.objectives):
        w, b, alpha, mse = fit_ridge(X, y[:, i], Xv, yv[:, i], a.ridge_alphas)
        head.weight[i], head.bias[i] = w, b
        ridge[o] = {"alpha": alpha, "valid_mse": mse}
    # lambdas on reference data: the validation responses
    ref = head.raw(Xv)
    v = head.verbosity_index
    lambdas = [1.0 if i == v else decorrelation_lambda(ref[:, i], ref[:, v], a.corr_threshold)
               for i in range(len(a.objectives))]
    head.lambdas.copy_(torch.tensor(lambdas))

    strength = torch.tensor([float(p.get("strength", 1)) for p in train])
    lengths = [len(p["chosen"]) for p in valid] + [len(p["rejected"]) for p in valid]

    def valid_metrics() -> dict[str, float]:
        from refinery.reward_models.eval import spearman

        head.eval()
        with torch.no_grad():
            c, r = head(vc, vp)["score"], head(vr, vp)["score"]
        head.train()
        return {"accuracy": float((c > r).float().mean()),
                "length_corr": spearman(torch.cat([c, r]).tolist(), lengths)}

    def train_gate(log: bool) -> dict[str, float]:
        """The gate (and beta) from the same initialisation, trained with BT on the head's current rewards."""
        torch.manual_seed(_stable(cfg.seed, "armo-gate"))
        for layer in head.gate:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        with torch.no_grad():
            head.beta.fill_(1.0)
        opt = torch.optim.AdamW(list(head.gate.parameters()) + [head.beta], lr=a.lr, weight_decay=a.weight_decay)
        bar = StepBar(progress and log, a.steps, 0, "rm armo", ("loss", "valid_accuracy"))
        head.train()
        for step in range(a.steps):
            for group in opt.param_groups:
                group["lr"] = gate_lr(step, a.steps, a.lr, a.schedule)
            idx = order_for(len(train), step, a.batch_pairs, cfg.seed, "armo")
            g = head.gates(hp[idx])  # one gate per prompt, shared by its two responses
            sc = head.beta * (g * head.decorrelate(head.raw(hc[idx]))).sum(-1)
            sr = head.beta * (g * head.decorrelate(head.raw(hr[idx]))).sum(-1)
            loss = pair_loss(cfg.loss.type, sc, sr, strength[idx], cfg.loss.margin_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
            row: dict[str, Any] = {}
            if done % cfg.trainer.log_every == 0 or done == a.steps:
                row.update(loss=float(loss.detach()), beta=float(head.beta.detach()))
            if done % cfg.trainer.eval_every == 0 or done == a.steps:
                row["valid_accuracy"] = valid_metrics()["accuracy"]
            if row and log:
                run.log_metrics(offset + done, stage="armo", **row)
            bar.update(done, row)
        bar.close()
        head.eval()
        return valid_metrics()

    # ablation first: the same gate on the raw objectives (lambda = 0), to measure what decorrelation changes
    head.lambdas.zero_()
    raw_metrics = train_gate(log=False)
    head.lambdas.copy_(torch.tensor(lambdas))
    final = train_gate(log=True)
    meta = {"kind": "armo", "stage": "armo", "objectives": a.objectives, "backbone": "backbone", "max_length": L,
            "lambdas": dict(zip(a.objectives, [round(x, 6) for x in lambdas])), "ridge": ridge,
            "valid": final, "valid_without_decorrelation": raw_metrics,
            "backbone_from": read_meta(start).get("stage", str(start))}

    def write(d: Path) -> None:
        shutil.copytree(start, d / "backbone", ignore=shutil.ignore_patterns("COMPLETE", "*.pt"))
        head.save(d)
        (d / "refinery_rm.json").write_text(json.dumps(meta, indent=2) + "\n")
        tok.save_pretrained(d)

    return save_stage(run, "armo", write)
