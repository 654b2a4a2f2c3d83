"""The GRPO-family trainer: rollouts from the policy itself, verifier rewards, group advantages, clipped updates.

One step reads top to bottom: pick prompts (stage schedule, difficulty filter) -> G samples each at the current
temperature and length budget -> rewards from verifiers -> dynamic sampling refills uninformative groups ->
advantages -> old/ref logprobs -> one or more clipped updates -> controllers (temperature, curriculum, reference
reset) -> metrics, evaluation, checkpoint.
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from refinery.generation import SamplingParams
from refinery.generation.hf import HFGenerator
from refinery.progress import StepBar
from refinery.rl.advantages import compute_advantages
from refinery.rl.batch import make_batch, response_logprobs
from refinery.rl.config import RLConfig
from refinery.rl.controllers import LengthCurriculum, ReferenceReset, StageSchedule, TemperatureController
from refinery.rl.losses import policy_loss
from refinery.rl.rewards import RewardRouter
from refinery.rl.sampling import difficulty_filter, informative_groups, overlong_mask
from refinery.runs import RunDir, checkpoint_step


# ---- data ----------------------------------------------------------------------------------------------------
def load_items(cfg: RLConfig) -> tuple[dict[str, list[dict]], list[dict]]:
    """Training prompts per task and the held-out set (never sharing a prompt)."""
    from refinery.tasks import make_splits

    train, heldout = {}, []
    files = file_items(cfg.data.files)
    for name in cfg.data.tasks:
        if name in files:
            continue
        tr, te = make_splits(name, cfg.data.n_train_per_task, cfg.data.heldout_per_task, seed=cfg.seed,
                             difficulty=cfg.data.difficulty.get(name))
        train[name] = [{**it, "task": name} for it in tr]
        heldout += [{**it, "task": name} for it in te]
    for name, items in files.items():  # a seeded shuffle; the first heldout_per_task are held out
        random.Random(f"{cfg.seed}:{name}").shuffle(items)
        k = min(cfg.data.heldout_per_task, len(items) // 2)
        heldout += items[:k]
        train[name] = items[k:]
    return train, heldout


def file_items(paths: list[str]) -> dict[str, list[dict]]:
    """Prompt items from JSONL files, grouped by task (their ``task``, else the file's stem)."""
    from pathlib import Path

    from refinery.errors import DataError
    from refinery.jsonl import iter_jsonl

    out: dict[str, list[dict]] = {}
    for path in paths:
        stem = Path(path).name.split(".")[0]
        for line, rec, err in iter_jsonl(path):
            if err or not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or \
                    ("answer" not in rec and "tests" not in rec):
                raise DataError(f"{path}:{line}: an RL item needs 'prompt' and 'answer' (or 'tests')"
                                + (f" ({err})" if err else ""))
            task = str(rec.get("task") or stem)
            item = {**rec, "task": task, "id": str(rec.get("id") or f"{task}-{line}"), "difficulty":
                    rec.get("difficulty", 0)}
            out.setdefault(task, []).append(item)
    return out


def chat(item: dict) -> list[dict[str, str]]:
    return item.get("messages") or [{"role": "user", "content": item["prompt"]}]


def bootstrap_policy(cfg: RLConfig, progress: bool = True) -> Path:
    """The SFT starting policy when none is given: trained once, cached by its config hash."""
    from refinery.models.pretrain import cached_pretrain

    return cached_pretrain(cfg.policy.bootstrap, cfg.seed, progress)


# ---- evaluation ----------------------------------------------------------------------------------------------
def evaluate(gen: HFGenerator, router: RewardRouter, items: list[dict], max_new_tokens: int) -> dict[str, float]:
    """Greedy held-out accuracy, overall and per task, scored by the same verifiers as the reward."""
    from refinery.eval.accuracy import heldout_accuracy

    return heldout_accuracy(gen, items, lambda it, text: router(it, text)[1], max_new_tokens)


# ---- the trainer ---------------------------------------------------------------------------------------------
class RLRun:
    """State of one RL run (policy, reference, optimizer, controllers); ``step()`` does one rollout batch."""

    def __init__(self, cfg: RLConfig, run: RunDir, policy_dir: Path):
        from refinery.models.io import load_model, load_tokenizer

        self.cfg, self.run = cfg, run
        self.model = load_model(policy_dir)
        self.tok = load_tokenizer(policy_dir)
        self.model.train()
        self.ref = None
        if cfg.algorithm.kl_coef > 0:
            self.ref = copy.deepcopy(self.model).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.trainer.lr, betas=(0.9, 0.999),
                                     weight_decay=cfg.trainer.weight_decay)
        self.gen = HFGenerator(self.model, self.tok, batch_size=cfg.rollout.batch_size)
        self.router = RewardRouter(cfg.algorithm.format_weight, cfg.reward.path if cfg.reward.type == "reward_model"
                                   else None, cfg.reward.batch_size)
        self.train_items, self.heldout = load_items(cfg)
        c = cfg.controllers
        self.curriculum = LengthCurriculum([(s.max_new_tokens, s.until_step) for s in c.length_curriculum],
                                           c.length_plateau_patience) if c.length_curriculum else None
        self.schedule = StageSchedule([(s.tasks, s.steps) for s in c.stages]) if c.stages else None
        t = c.temperature
        self.temp = TemperatureController(cfg.rollout.temperature, t.target, t.rate, t.min_temperature,
                                          t.max_temperature) if t.enabled else None
        r = c.reference_reset
        self.reset = ReferenceReset(r.every, r.patience, r.kl_threshold) if self.ref is not None else None
        self.dropped: set[str] = set()
        self.pass_stats: dict[str, list[int]] = {}
        self.step_no = 0

    # -- controllers' view --
    def temperature(self) -> float:
        return self.temp.temperature if self.temp else self.cfg.rollout.temperature

    def max_new_tokens(self) -> int:
        return self.curriculum.max_new_tokens() if self.curriculum else self.cfg.rollout.max_new_tokens

    def tasks(self, step: int) -> tuple[int, list[str]]:
        if self.schedule:
            return self.schedule.tasks_at(step)
        return 0, list(dict.fromkeys([*self.cfg.data.tasks, *self.train_items]))

    # -- checkpoints --
    def state(self) -> dict[str, Any]:
        return {"step": self.step_no, "optimizer": self.opt.state_dict(),
                "ref": self.ref.state_dict() if self.ref is not None else None,
                "temperature": self.temp.temperature if self.temp else None,
                "curriculum": self.curriculum.__dict__ if self.curriculum else None,
                "reset": self.reset.__dict__ if self.reset else None,
                "dropped": sorted(self.dropped), "pass_stats": self.pass_stats}

    def save(self, keep: int) -> None:
        def write(d: Path) -> None:
            self.model.save_pretrained(d)
            self.tok.save_pretrained(d)
            torch.save(self.state(), d / "trainer_state.pt")
        self.run.save_checkpoint(self.step_no, write, keep=keep)

    def restore(self, ckpt: Path) -> None:
        from refinery.errors import CheckpointError
        from refinery.models.io import load_model

        try:
            state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{ckpt}: trainer_state.pt is corrupt or missing ({type(e).__name__})") from None
        self.model.load_state_dict(load_model(ckpt).state_dict())
        self.opt.load_state_dict(state["optimizer"])
        if self.ref is not None and state["ref"] is not None:
            self.ref.load_state_dict(state["ref"])
        if self.temp and state["temperature"] is not None:
            self.temp.temperature = state["temperature"]
        if self.curriculum and state["curriculum"]:
            self.curriculum.__dict__.update(state["curriculum"])
        if self.reset and state["reset"]:
            self.reset.__dict__.update(state["reset"])
        self.dropped = set(state["dropped"])
        self.pass_stats = state["pass_stats"]
        self.step_no = checkpoint_step(ckpt)

    # -- one step --
    def rollouts(self, step: int):
        """Groups of (item, completions, rewards, correct) for this step, refilled by dynamic sampling."""
        cfg = self.cfg
        stage, tasks = self.tasks(step)
        pool = [it for t in tasks for it in self.train_items[t] if it["id"] not in self.dropped]
        P, G = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        params = SamplingParams(n=G, temperature=self.temperature(), top_p=cfg.rollout.top_p,
                                max_new_tokens=self.max_new_tokens())
        groups, seen, dropped_groups, rounds, gen_tokens = [], 0, 0, 0, 0
        all_correct: list[int] = []
        rounds_max = cfg.algorithm.max_refill_rounds if cfg.algorithm.dynamic_sampling else 1
        while len(groups) < P and rounds < rounds_max:
            rng = random.Random(f"{cfg.seed}:{step}:{rounds}")
            need = P - len(groups)
            items = rng.sample(pool, min(len(pool), need if rounds == 0 else need * 2))
            out = self.gen.generate([chat(it) for it in items],
                                    params.model_copy(update={"seed": rng.randrange(2**31)}))
            for k, it in enumerate(items):
                comps = out[k * G:(k + 1) * G]
                scored = self.router.group(it, [c.text for c in comps])
                rewards = torch.tensor([s[0] for s in scored])
                correct = [s[1] for s in scored]
                all_correct += correct
                gen_tokens += sum(len(c.token_ids) for c in comps)
                self.pass_stats.setdefault(it["id"], [0, 0])
                self.pass_stats[it["id"]][0] += sum(correct)
                self.pass_stats[it["id"]][1] += len(correct)
                seen += 1
                if cfg.algorithm.dynamic_sampling and not bool(informative_groups(rewards[None])[0]):
                    dropped_groups += 1
                    continue
                if len(groups) < P:
                    groups.append((it, comps, rewards, correct))
            rounds += 1
        return groups, {"stage": stage, "seen_groups": seen,
                        "rollout_accuracy": sum(all_correct) / max(len(all_correct), 1),
                        "filtered_group_rate": dropped_groups / max(seen, 1),
                        "generated_tokens": gen_tokens, "rounds": rounds}

    def update(self, groups) -> dict[str, float]:
        cfg, alg = self.cfg, self.cfg.algorithm
        T = self.temperature()
        rewards = torch.stack([g[2] for g in groups])
        adv = compute_advantages(rewards, alg.advantage)
        prompt_ids, resp_ids, advs, truncated = [], [], [], []
        for (it, comps, _, _), a in zip(groups, adv):
            p = self.gen.encode(chat(it))
            for c, ai in zip(comps, a):
                prompt_ids.append(p)
                resp_ids.append(c.token_ids)
                advs.append(float(ai))
                truncated.append(c.finish_reason == "length")
        batch = make_batch(prompt_ids, resp_ids, self.tok.pad_token_id)
        mask = batch.mask
        truncated_t = torch.tensor(truncated)
        if alg.overlong_filter:
            mask = mask * overlong_mask(truncated_t)[:, None]
        advs_t = torch.tensor(advs)
        G = cfg.rollout.group_size
        rows_per_update = len(advs) if cfg.trainer.mini_batch_prompts is None else cfg.trainer.mini_batch_prompts * G
        chunks = torch.arange(len(advs)).split(rows_per_update)  # the last mini-batch may be smaller
        multi = len(chunks) * cfg.trainer.epochs > 1
        with torch.no_grad():
            old = response_logprobs(self.model, batch, T)[0] if multi else None
            ref = response_logprobs(self.ref, batch, T)[0] if self.ref is not None else None
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.trainer.epochs):
            for chunk in chunks:
                logp, ent = response_logprobs(self.model, batch, T, rows=chunk, with_entropy=True)
                old_c = old[chunk] if old is not None else logp.detach()
                loss, st = policy_loss(
                    logp, old_c, advs_t[chunk], mask[chunk], eps_low=alg.eps_low, eps_high=alg.eps_high,
                    agg=alg.loss_agg, ref_logp=ref[chunk] if ref is not None else None, kl_coef=alg.kl_coef,
                    kl_estimator=alg.kl_estimator, entropy=ent, entropy_coef=alg.entropy_coef,
                    max_len=self.max_new_tokens())
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.trainer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.trainer.grad_clip)
                self.opt.step()
                m = mask[chunk]
                st["entropy"] = float((ent * m).sum() / m.sum().clamp(min=1))
                for k, v in st.items():
                    stats.setdefault(k, []).append(v)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["response_length"] = float(torch.tensor([len(r) for r in resp_ids], dtype=torch.float).mean())
        out["truncation_rate"] = float(truncated_t.float().mean())
        out["samples"] = len(resp_ids)
        return out

    def step(self, step: int) -> dict[str, Any]:
        t0 = time.time()
        groups, info = self.rollouts(step)
        t_gen = time.time() - t0
        row: dict[str, Any] = {"temperature": self.temperature(), "max_new_tokens": self.max_new_tokens(), **info}
        if groups:
            row["reward"] = float(torch.cat([g[2] for g in groups]).mean())
            row["accuracy"] = sum(sum(g[3]) for g in groups) / sum(len(g[3]) for g in groups)
            row.update(self.update(groups))
        else:
            row["skipped"] = 1
        row["tokens_per_s"] = info["generated_tokens"] / max(t_gen, 1e-9)
        row["step_seconds"] = time.time() - t0
        self.step_no = step + 1
        # controllers
        if self.temp and "entropy" in row:
            self.temp.update(row["entropy"])
        if self.curriculum and self.curriculum.update(self.step_no, row.get("reward")):
            row["length_stage"] = self.curriculum.index
        f = self.cfg.algorithm.difficulty_filter
        if f.enabled and self.step_no >= f.from_step:
            rates = {k: c / n for k, (c, n) in self.pass_stats.items() if n >= self.cfg.rollout.group_size}
            self.dropped |= difficulty_filter(rates, f.max_pass_rate)
            row["dropped_prompts"] = len(self.dropped)
        return row


def train_rl(cfg: RLConfig, run: RunDir, progress: bool = True, stop_after: int | None = None,
             console=None) -> dict:
    """Run RL per ``cfg`` into ``run`` (resuming from its latest checkpoint); returns the summary."""
    torch.set_num_threads(cfg.trainer.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    policy_dir = Path(cfg.policy.path) if cfg.policy.path else bootstrap_policy(cfg, progress)
    state = RLRun(cfg, run, policy_dir)
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        state.restore(ckpt)
        run.truncate_metrics(state.step_no)
    summary = run.summary()
    n_eval = min(cfg.trainer.eval_prompts, len(state.heldout))
    rng = random.Random(cfg.seed)
    eval_subset = rng.sample(state.heldout, n_eval)
    if "rl.accuracy_before" not in summary:
        before = evaluate(state.gen, state.router, state.heldout, cfg.eval.max_new_tokens)
        run.write_summary({f"rl.{k}_before": round(v, 4) for k, v in before.items()} |
                          {"rl.accuracy_before": round(before.get("accuracy", 0.0), 4),
                           "rl.heldout_n": len(state.heldout), "rl.policy": str(policy_dir)})
        run.log_metrics(0, eval_accuracy=before.get("accuracy", 0.0))
    bar = StepBar(progress, cfg.trainer.steps, state.step_no, cfg.name, keys=("reward", "eval_accuracy", "entropy"))
    t_start = time.time()
    try:
        for step in range(state.step_no, cfg.trainer.steps):
            row = state.step(step)
            done = step + 1
            val = None
            if done % cfg.trainer.eval_every == 0 or done == cfg.trainer.steps:
                val = evaluate(state.gen, state.router, eval_subset, cfg.eval.max_new_tokens).get("accuracy")
                row["eval_accuracy"] = val
            if state.reset is not None:
                why = state.reset.check(done, val, row.get("kl"))
                if why:
                    state.ref.load_state_dict(state.model.state_dict())
                    if cfg.controllers.reference_reset.reset_optimizer:
                        state.opt.state.clear()
                    row["reference_reset"] = why
            run.log_metrics(done, **row)
            if done % cfg.trainer.checkpoint_every == 0 or done == cfg.trainer.steps:
                state.save(cfg.trainer.keep_checkpoints)
            bar.update(done, row)
            if stop_after is not None and done >= stop_after and done < cfg.trainer.steps:
                return run.summary()
    finally:
        bar.close()
        state.router.close()
    after = evaluate(state.gen, state.router, state.heldout, cfg.eval.max_new_tokens)
    state.model.save_pretrained(run.path / "model")
    state.tok.save_pretrained(run.path / "model")
    rows = run.metrics()
    resets = [r for r in rows if "reference_reset" in r]
    run.write_summary({f"rl.{k}_after": round(v, 4) for k, v in after.items()} | {
        "rl.accuracy_after": round(after.get("accuracy", 0.0), 4),
        "rl.steps": cfg.trainer.steps,
        "rl.train_seconds": round(time.time() - t_start, 1),
        "rl.reference_resets": len(resets),
        "rl.final_temperature": round(state.temperature(), 4),
    })
    summary = run.summary()
    summary["accuracy_before"], summary["accuracy_after"] = summary["rl.accuracy_before"], summary["rl.accuracy_after"]
    summary["heldout_n"] = summary["rl.heldout_n"]
    run.write_summary({"accuracy_before": summary["accuracy_before"], "accuracy_after": summary["accuracy_after"],
                       "heldout_n": summary["heldout_n"]})
    from refinery.report import plot_metrics

    plot = plot_metrics(rows, ["reward", "accuracy", "eval_accuracy", "entropy", "kl", "temperature",
                               "response_length", "clip_frac"], run.path / "plots" / "rl_metrics.png",
                        title=cfg.name)
    run.write_report(render_report(cfg, run, plot))
    run.finish()
    return run.summary()


def render_report(cfg: RLConfig, run: RunDir, plot: Path | None) -> str:
    s = run.summary()
    lines = [f"# {cfg.name}", "", f"Held-out accuracy (greedy, {s.get('heldout_n')} problems): "
             f"**{s.get('accuracy_before', 0):.1%} -> {s.get('accuracy_after', 0):.1%}**", ""]
    if plot is not None:
        lines += [f"![metrics]({plot.relative_to(run.path)})", ""]
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s.items()]
    resets = [r for r in run.metrics() if "reference_reset" in r]
    if resets:
        lines += ["", "Reference resets: " + "; ".join(f"step {r['step']} ({r['reference_reset']})" for r in resets)]
    lines += ["", "Config: `config.yaml`; per-step metrics: `metrics.jsonl`; final policy: `model/`."]
    return "\n".join(lines) + "\n"
