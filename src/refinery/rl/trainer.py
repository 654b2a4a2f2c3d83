"""The GRPO-family trainer: rollouts from the policy itself, verifier rewards, group advantages, clipped updates.

One step reads top to bottom: pick prompts (stage schedule, difficulty filter) -> G samples each at the current
temperature and length budget -> rewards from verifiers -> dynamic sampling refills uninformative groups ->
advantages -> old/ref logprobs -> one or more clipped updates -> controllers (temperature, curriculum, reference
reset) -> metrics, evaluation, checkpoint.

Under torchrun (WORLD_SIZE > 1) the same step runs on N ranks (verl/NeMo-RL "hybrid engine"): the policy and the
KL reference are sharded with FSDP2; each rank keeps an unsharded inference copy of the policy, refreshed from the
shards after every update, and generates and scores ITS block of the step's prompts (every rank draws the same
prompt list). The scored groups (token ids, rewards) are gathered on every rank, so dynamic sampling, advantages,
pass-rate statistics and the controllers see the global batch and decide identically on every rank; each
mini-batch's rows are then split across ranks, every rank making the same number of forward/backward passes, its
losses normalised by the mini-batch's global denominator (FSDP2 sums the ranks' gradients). Rank 0 evaluates (on
its inference copy) and writes the run; checkpoints are sharded DCP checkpoints that resume on any number of ranks.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from refinery.engine import dist
from refinery.engine.accum import accumulate, denominator, micro_batches
from refinery.engine.device import (
    autocast,
    check_precision,
    enable_activation_checkpointing,
    peak_memory_mb,
    reset_peak,
)
from refinery.engine.optim import reset_state
from refinery.errors import TrainingError
from refinery.generation import SamplingParams
from refinery.generation.hf import HFGenerator, row_seed
from refinery.progress import StepBar
from refinery.rl.advantages import compute_advantages
from refinery.rl.batch import make_batch, response_logprobs
from refinery.rl.config import RLConfig
from refinery.rl.controllers import LengthCurriculum, ReferenceReset, StageSchedule, TemperatureController
from refinery.rl.losses import policy_loss, rollout_correction
from refinery.rl.rewards import RewardRouter
from refinery.rl.sampling import difficulty_filter, informative_groups, overlong_mask
from refinery.runs import RunDir, checkpoint_step
from refinery.verifiers.thinking import prompt_opens_thinking, split_thinking


# ---- data ----------------------------------------------------------------------------------------------------
def load_items(cfg: RLConfig) -> tuple[dict[str, list[dict]], list[dict], list[dict]]:
    """Training prompts per task, the reported held-out set and the validation set that controllers read.

    Procedural tasks split by the problem's canonical form (``refinery.tasks.split_of``): no held-out or
    validation problem has a twin (same problem up to reordering, names or option order) in RL training or in the
    SFT data, which draws from the same 'train' split. File items split by their source document
    (``source_doc``/``source``, else the normalised question): a question's MCQ and open-ended versions stay on
    one side."""
    from refinery.errors import ConfigError
    from refinery.tasks import make_splits, sample

    train, heldout, valid = {}, [], []
    seed = cfg.seed if cfg.data.seed is None else cfg.data.seed
    files = file_items(cfg.data.files)
    for name in cfg.data.tasks:
        if name in files:
            continue
        levels = cfg.data.difficulty.get(name)
        tr, te = make_splits(name, cfg.data.n_train_per_task, cfg.data.heldout_per_task, seed=seed,
                             difficulty=levels)
        try:
            va = sample(name, cfg.data.valid_per_task, seed=seed, difficulty=levels, split="valid")
        except ConfigError as e:
            raise ConfigError(f"data.valid_per_task={cfg.data.valid_per_task}: {e}") from None
        train[name] = [{**it, "task": name} for it in tr]
        heldout += [{**it, "task": name} for it in te]
        valid += [{**it, "task": name} for it in va]
    for name, items in files.items():
        tr, te, va = split_by_source(items, cfg.data.heldout_per_task, cfg.data.valid_per_task, f"{seed}:{name}")
        train[name], heldout, valid = tr, heldout + te, valid + va
    return train, heldout, valid


def source_of(item: dict) -> str:
    """What ties file items together: their source document, else their normalised question/prompt."""
    from refinery.tasks import normalise_prompt

    for key in ("source_doc", "source"):
        if item.get(key):
            return f"{key}:{item[key]}"
    return "text:" + normalise_prompt(str(item.get("question") or item["prompt"]))


def split_by_source(items: list[dict], n_test: int, n_valid: int, seed: str) -> tuple[list[dict], list[dict],
                                                                                     list[dict]]:
    """(train, test, valid) with whole source groups on one side: groups in a seeded order fill the test set to
    at least ``n_test`` items (at most half of all items), then the validation set, then training."""
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(source_of(it), []).append(it)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    n_test = min(n_test, len(items) // 2)
    n_valid = min(n_valid, (len(items) - n_test) // 4)
    test, val, train = [], [], []
    for key in order:
        dest = test if len(test) < n_test else val if len(val) < n_valid else train
        dest.extend(groups[key])
    return train, test, val


def file_items(paths: list) -> dict[str, list[dict]]:
    """Prompt items from JSONL files or data sources (``refinery.sources``: a dataset directory, Parquet, a hub
    name, with a column mapping), grouped by task (their ``task``, else the source's name or the file's stem)."""
    from pathlib import Path

    from refinery.errors import DataError
    from refinery.jsonl import iter_jsonl
    from refinery.sources import own_reader_path, read_rows

    def add(rec: dict, where: str, stem: str, n: int) -> None:
        task = str(rec.get("task") or stem)
        item = {**rec, "task": task, "id": str(rec.get("id") or f"{task}-{n}"), "difficulty":
                rec.get("difficulty", 0)}
        out.setdefault(task, []).append(item)

    out: dict[str, list[dict]] = {}
    for source in paths:
        path = own_reader_path(source)
        if path is None:
            rows = read_rows(source, required=["prompt", ("answer", "tests")])
            for n, (where, rec) in enumerate(rows, 1):
                rec = {k: v for k, v in rec.items() if not (k in ("answer", "tests") and v is None)}  # null cells
                if not isinstance(rec.get("prompt"), str) or (rec.get("answer") is None and rec.get("tests") is None):
                    raise DataError(f"{where}: an RL item needs a 'prompt' string and an 'answer' (or 'tests'); "
                                    "map them with the source's columns")
                add(rec, where, getattr(source, "label", None) or Path(str(source)).name.split(".")[0], n)
            continue
        stem = Path(path).name.split(".")[0]
        for line, rec, err in iter_jsonl(path):
            if err or not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or \
                    ("answer" not in rec and "tests" not in rec):
                raise DataError(f"{path}:{line}: an RL item needs 'prompt' and 'answer' (or 'tests')"
                                + (f" ({err})" if err else ""))
            add(rec, f"{path}:{line}", stem, line)
    return out


def chat(item: dict) -> list[dict[str, str]]:
    return item.get("messages") or [{"role": "user", "content": item["prompt"]}]


def opens_thinking(tokenizer, item: dict) -> bool:
    """Whether the item's rendered prompt leaves the policy inside ``<think>`` (DeepSeek-R1 templates): its
    responses then start in the thinking, and one without ``</think>`` was cut off there."""
    return prompt_opens_thinking(tokenizer.apply_chat_template(chat(item), tokenize=False, add_generation_prompt=True))


def bootstrap_policy(cfg: RLConfig, progress: bool = True) -> Path:
    """The SFT starting policy when none is given: trained once, cached by its config hash."""
    from refinery.models.pretrain import cached_pretrain

    return cached_pretrain(cfg.policy.bootstrap, cfg.seed if cfg.policy.seed is None else cfg.policy.seed, progress)


_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE")


def _bootstrap_distributed(cfg: RLConfig, main: bool) -> Path:
    """The bootstrap policy under torchrun: rank 0 builds it (when not cached yet) in a one-process child, outside
    the job (the bootstrap is a run of its own), then every rank finds it in the cache."""
    if main:
        env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
        code = ("import sys; from refinery.rl.config import RLConfig; from refinery.rl.trainer import "
                "bootstrap_policy; bootstrap_policy(RLConfig.model_validate_json(sys.stdin.read()), False)")
        proc = subprocess.run([sys.executable, "-c", code], input=cfg.model_dump_json(), text=True, env=env,
                              capture_output=True)
        if proc.returncode:
            raise TrainingError(f"building the bootstrap policy failed:\n{proc.stderr[-3000:]}")
    dist.barrier()
    return bootstrap_policy(cfg, False)


# ---- evaluation ----------------------------------------------------------------------------------------------
def evaluate(gen: HFGenerator, router: RewardRouter, items: list[dict], max_new_tokens: int) -> dict[str, float]:
    """Greedy held-out accuracy, overall and per task, scored by the same verifiers as the reward."""
    from refinery.eval.accuracy import heldout_accuracy

    return heldout_accuracy(gen, items, lambda it, text: router(it, text, opens_thinking(gen.tokenizer, it))[1],
                            max_new_tokens)


def rollout_trend(rows: list[dict]) -> dict[str, float]:
    """The policy's sampled pass rate on its training prompts (every group drawn, refills included) averaged over
    the first and the last quarter of the steps: what RL optimises, measured on far more samples than a held-out
    greedy score (16 prompts x 8 samples a step), though on prompts it trains on."""
    acc = [r["rollout_accuracy"] for r in rows if "rollout_accuracy" in r]
    if not acc:
        return {}
    w = max(1, len(acc) // 4)
    return {"rl.train_pass_rate_first": round(sum(acc[:w]) / w, 4),
            "rl.train_pass_rate_last": round(sum(acc[-w:]) / w, 4)}


def lr_factor(tr, step: int) -> float:
    """1 until ``lr_decay_start * steps``, then a linear or cosine decay to ``min_lr_ratio`` at the last step."""
    start = tr.lr_decay_start * tr.steps
    if tr.lr_decay == "none" or step <= start:
        return 1.0
    progress = min(1.0, (step - start) / max(1.0, tr.steps - 1 - start))
    shape = 1.0 - progress if tr.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return tr.min_lr_ratio + (1.0 - tr.min_lr_ratio) * shape


# ---- the trainer ---------------------------------------------------------------------------------------------
class RLRun:
    """State of one RL run (policy, reference, optimizer, controllers); ``step()`` does one rollout batch."""

    def __init__(self, cfg: RLConfig, run: RunDir, policy_dir: Path):
        from refinery.models.io import load_model, load_tokenizer

        self.cfg, self.run = cfg, run
        eng = cfg.engine
        self.env = dist.init_distributed(eng.device)  # one process unless launched by torchrun
        self.distributed = self.env.world_size > 1
        self.device = self.env.device
        check_precision(eng.precision, self.device)
        # on one device bf16 is autocast over fp32 weights; under FSDP2 its mixed-precision policy casts instead
        self.compute_precision = "fp32" if self.distributed else eng.precision
        self.tok = load_tokenizer(policy_dir)
        if self.distributed:
            self._init_sharded(load_model(policy_dir))
        else:
            self.model = load_model(policy_dir).to(self.device)
            self.model.train()
            if eng.activation_checkpointing:
                enable_activation_checkpointing(self.model)
            self.ref = None
            if cfg.algorithm.kl_coef > 0:
                self.ref = copy.deepcopy(self.model).eval()
                for p in self.ref.parameters():
                    p.requires_grad_(False)
            self.infer = self.model  # one process: rollouts come from the training model itself
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.trainer.lr, betas=(0.9, 0.999),
                                     weight_decay=cfg.trainer.weight_decay)
        if cfg.rollout.backend == "vllm":
            from refinery.rl.rollout_vllm import ColocatedVLLM

            self.gen = ColocatedVLLM(str(policy_dir), self.tok, seed=cfg.seed,
                                     gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization)
        else:
            self.gen = HFGenerator(self.infer, self.tok, batch_size=cfg.rollout.batch_size, device=str(self.device))
        self.router = RewardRouter(cfg.algorithm.format_weight, cfg.reward.path if cfg.reward.type == "reward_model"
                                   else None, cfg.reward.batch_size, format_required=cfg.algorithm.format_required)
        self.train_items, self.heldout, self.valid = load_items(cfg)
        c = cfg.controllers
        self.curriculum = LengthCurriculum([(s.max_new_tokens, s.until_step) for s in c.length_curriculum],
                                           c.length_plateau_patience) if c.length_curriculum else None
        self.schedule = StageSchedule([(s.tasks or [], s.steps) for s in c.stages]) if c.stages else None
        t = c.temperature
        self.temp = TemperatureController(cfg.rollout.temperature, t.target, t.rate, t.min_temperature,
                                          t.max_temperature) if t.enabled else None
        r = c.reference_reset
        self.reset = ReferenceReset(r.every, r.patience, r.kl_threshold) if self.ref is not None else None
        self.dropped: set[str] = set()
        self.pass_stats: dict[str, list[int]] = {}
        self.step_no = 0

    def _init_sharded(self, model) -> None:
        """FSDP2 policy and reference, and the policy's unsharded inference copy (the rollout engine).

        The reference is sharded like the policy rather than kept whole on every rank: each rank already holds one
        whole copy (the inference copy), a second would double that memory, while the sharded reference costs one
        all-gather per layer in its (no-grad) scoring pass, which runs in lock-step with the policy's anyway. With
        the same sharding a reference reset is a local copy of each rank's shards."""
        cfg, eng = self.cfg, self.cfg.engine
        self.infer = None  # the colocated vLLM engine is the rollout engine then
        if cfg.rollout.backend == "hf":
            self.infer = copy.deepcopy(model).to(self.device).eval()
            for p in self.infer.parameters():
                p.requires_grad_(False)
        self.ref = None
        if cfg.algorithm.kl_coef > 0:
            ref = copy.deepcopy(model)
            for p in ref.parameters():
                p.requires_grad_(False)
            self.ref = dist.wrap_model(ref, self.env, eng.precision).eval()
        if eng.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.model = dist.wrap_model(model, self.env, eng.precision)
        self.model.train()

    def refresh_inference(self) -> None:
        """Load the sharded policy's full weights into the inference copy (every rank gathers them: with
        ``cpu_offload=False`` the full state dict is materialised on every rank), or push them into the
        colocated vLLM engine."""
        vllm = self.cfg.rollout.backend == "vllm"
        if not self.distributed and not vllm:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True)) \
            if self.distributed else self.model.state_dict()
        if vllm:
            self.gen.push_weights(full.items())
        else:
            self.infer.load_state_dict(full)
        del full

    def reset_reference(self) -> None:
        """ProRL's hard reset: the reference becomes the current policy."""
        if not self.distributed:
            self.ref.load_state_dict(self.model.state_dict())
            return
        from torch.distributed.fsdp import FSDPModule

        for m in (self.ref, self.model):  # the root stays unsharded after a forward: back to the shards first
            for sub in m.modules():
                if isinstance(sub, FSDPModule):
                    sub.reshard()
        with torch.no_grad():  # same FSDP2 sharding on both: each rank copies its own shards
            for r, p in zip(self.ref.parameters(), self.model.parameters(), strict=True):
                r.to_local().copy_(p.to_local())

    # -- controllers' view --
    def temperature(self) -> float:
        return self.temp.temperature if self.temp else self.cfg.rollout.temperature

    def stage(self, step: int | None = None):
        """The stage plan's entry for ``step`` (default: the current step), or None without a plan."""
        if not self.schedule:
            return None
        return self.cfg.controllers.stages[self.schedule.tasks_at(self.step_no if step is None else step)[0]]

    def _override(self, name: str, default):
        st = self.stage()
        value = getattr(st, name) if st is not None else None
        return default if value is None else value

    def max_new_tokens(self) -> int:
        return self._override("max_new_tokens", self.curriculum.max_new_tokens() if self.curriculum
                              else self.cfg.rollout.max_new_tokens)

    def group_size(self) -> int:
        return self._override("group_size", self.cfg.rollout.group_size)

    def lr(self) -> float:
        """The stage's (or run's) LR at the current step, times the decay schedule's factor."""
        return self._override("lr", self.cfg.trainer.lr) * lr_factor(self.cfg.trainer, self.step_no)

    def overlong_filter(self) -> bool:
        return self._override("overlong_filter", self.cfg.algorithm.overlong_filter)

    def tasks(self, step: int) -> tuple[int, list[str]]:
        every = list(dict.fromkeys([*self.cfg.data.tasks, *self.train_items]))
        if self.schedule:
            index, tasks = self.schedule.tasks_at(step)
            return index, tasks or every
        return 0, every

    # -- checkpoints --
    def state(self) -> dict[str, Any]:
        return {"step": self.step_no, "optimizer": self.opt.state_dict(),
                "ref": self.ref.state_dict() if self.ref is not None else None,
                "temperature": self.temp.temperature if self.temp else None,
                "curriculum": self.curriculum.__dict__ if self.curriculum else None,
                "reset": self.reset.__dict__ if self.reset else None,
                "dropped": sorted(self.dropped), "pass_stats": self.pass_stats}

    def _trainer_extra(self) -> dict[str, Any]:
        """The controllers' state as JSON (the ``extra`` of a sharded checkpoint)."""
        return {"temperature": self.temp.temperature if self.temp else None,
                "curriculum": self.curriculum.__dict__ if self.curriculum else None,
                "reset": self.reset.__dict__ if self.reset else None,
                "dropped": sorted(self.dropped), "pass_stats": self.pass_stats}

    def _sharded_state(self) -> torch.nn.Module:
        """Policy and reference under one root, so that one DCP checkpoint holds both (and the optimizer's state,
        keyed by the policy's parameter names)."""
        parts = {"policy": self.model}
        if self.ref is not None:
            parts["ref"] = self.ref
        return torch.nn.ModuleDict(parts)

    def save(self, keep: int) -> None:
        if self.distributed:  # every rank writes its shards; loads on any number of ranks
            self.run.save_sharded_checkpoint(self.step_no, self._sharded_state(), self.opt,
                                             extra=json.loads(json.dumps(self._trainer_extra())), keep=keep)
            return

        def write(d: Path) -> None:
            self.model.save_pretrained(d)
            self.tok.save_pretrained(d)
            torch.save(self.state(), d / "trainer_state.pt")
        self.run.save_checkpoint(self.step_no, write, keep=keep)

    def restore(self, ckpt: Path) -> None:
        from refinery.errors import CheckpointError
        from refinery.models.io import load_model

        if (ckpt / "refinery_meta.json").exists():  # a sharded checkpoint, from any number of ranks
            self._restore_sharded(ckpt)
            return
        if self.distributed:
            raise CheckpointError(f"{ckpt} was written by one process (HF weights + trainer_state.pt); resume it "
                                  "in one process, or start the multi-rank run afresh")
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

    def _restore_sharded(self, ckpt: Path) -> None:
        step, extra = dist.load_sharded(ckpt, self._sharded_state(), self.opt)
        if self.temp and extra.get("temperature") is not None:
            self.temp.temperature = extra["temperature"]
        if self.curriculum and extra.get("curriculum"):
            self.curriculum.__dict__.update(extra["curriculum"])
        if self.reset and extra.get("reset"):
            self.reset.__dict__.update(extra["reset"])
        self.dropped = set(extra.get("dropped") or [])
        self.pass_stats = {k: list(v) for k, v in (extra.get("pass_stats") or {}).items()}
        self.step_no = step
        self.refresh_inference()

    # -- one step --
    def rollouts(self, step: int):
        """Groups of (item, completions, rewards, correct) for this step, refilled by dynamic sampling."""
        cfg = self.cfg
        stage, tasks = self.tasks(step)
        pool = [it for t in tasks for it in self.train_items[t] if it["id"] not in self.dropped]
        P, G = cfg.rollout.prompts_per_step, self.group_size()
        # the rollout correction compares the sampler's post-temperature log-probs with the trainer's
        params = SamplingParams(n=G, temperature=self.temperature(), top_p=cfg.rollout.top_p,
                                max_new_tokens=self.max_new_tokens(),
                                logprobs=cfg.algorithm.rollout_correction != "none", logprobs_mode="processed")
        groups, seen, dropped_groups, rounds, gen_tokens = [], 0, 0, 0, 0
        all_correct: list[int] = []
        rounds_max = cfg.algorithm.max_refill_rounds if cfg.algorithm.dynamic_sampling else 1
        used: set[str] = set()  # a prompt is drawn at most once per step, in any round
        while len(groups) < P and rounds < rounds_max:
            rng = random.Random(f"{cfg.seed}:{step}:{rounds}")
            need = P - len(groups)
            fresh = [it for it in pool if it["id"] not in used]
            if not fresh:
                break
            items = rng.sample(fresh, min(len(fresh), need if rounds == 0 else need * 2))
            used.update(it["id"] for it in items)
            round_params = params.model_copy(update={"seed": rng.randrange(2**31)})
            if self.distributed:
                results = self._sharded_round(items, round_params)
            else:
                out = self.gen.generate([chat(it) for it in items], round_params)
                results = [(out[k * G:(k + 1) * G], self.router.group(it, [c.text for c in out[k * G:(k + 1) * G]],
                                                                      opens_thinking(self.tok, it)))
                           for k, it in enumerate(items)]
            for it, (comps, scored) in zip(items, results):
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
        if cfg.algorithm.dynamic_sampling and len(groups) < P:
            # DAPO (verl) and NeMo-RL stop here too rather than train on a partial batch
            raise TrainingError(
                f"step {step}: dynamic sampling found {len(groups)} of {P} prompt groups with mixed rewards after "
                f"{rounds} generation rounds ({seen} groups seen, {dropped_groups} all-equal). The prompts are too "
                "easy or too hard for the policy: raise algorithm.max_refill_rounds, filter the data by pass rate, "
                "or lower rollout.prompts_per_step; the run resumes from its last checkpoint")
        return groups, {"stage": stage, "seen_groups": seen,
                        "rollout_accuracy": sum(all_correct) / max(len(all_correct), 1),
                        "filtered_group_rate": dropped_groups / max(seen, 1),
                        "generated_tokens": gen_tokens, "rounds": rounds}

    def _sharded_round(self, items: list[dict], params: SamplingParams) -> list[tuple[list, list]]:
        """(completions, scores) of every item of one generation round: this rank samples and scores its block of
        ``items`` on the inference copy, then all ranks exchange their results. Sample ``s`` of item ``k`` is
        seeded by ``(round seed, k, s)`` as in one process, so the rollouts do not depend on the number of ranks
        (and no two ranks share a random stream)."""
        import torch.distributed as tdist

        mine = dist.shard_rows(len(items), self.env.rank, self.env.world_size)
        rows = self.gen.rows([chat(items[k]) for k in mine], params) if len(mine) else []
        for r in rows:
            r.seed = row_seed(params.seed, mine.start + r.index, r.sample)
        out = self.gen.generate_rows(rows) if rows else []
        G = params.n
        local = []
        for j, k in enumerate(mine):
            comps = out[j * G:(j + 1) * G]
            scored = self.router.group(items[k], [c.text for c in comps], opens_thinking(self.tok, items[k]))
            local.append((comps, scored))
        gathered: list = [None] * self.env.world_size
        tdist.all_gather_object(gathered, local)  # rank order is item order: shard_rows blocks are contiguous
        return [res for part in gathered for res in part]

    def update(self, groups) -> dict[str, float]:
        cfg, alg = self.cfg, self.cfg.algorithm
        if cfg.rollout.backend == "vllm":
            self.gen.sleep()  # the update gets the GPU; refresh_inference wakes the engine with the new weights
        T = self.temperature()
        rewards = torch.stack([g[2] for g in groups])
        prompt_ids, resp_ids, truncated = [], [], []
        for it, comps, _, _ in groups:
            p = self.gen.encode(chat(it))
            opened = opens_thinking(self.tok, it)
            for c in comps:
                prompt_ids.append(p)
                resp_ids.append(c.token_ids)
                # a response that ends inside its thinking was cut off there too (the overlong case)
                truncated.append(c.finish_reason == "length" or not split_thinking(c.text, opened).closed)
        batch = make_batch(prompt_ids, resp_ids, self.tok.pad_token_id)
        mask = batch.mask
        truncated_t = torch.tensor(truncated)
        if self.overlong_filter():
            mask = mask * overlong_mask(truncated_t)[:, None]
        # tokens each response puts in the loss: REINFORCE++ whitens its advantages over them
        advs_t = compute_advantages(rewards, alg.advantage, mask.sum(-1).view_as(rewards)).reshape(-1)
        G = self.group_size()
        rows_per_update = len(advs_t) if cfg.trainer.mini_batch_prompts is None else cfg.trainer.mini_batch_prompts * G
        chunks = torch.arange(len(advs_t)).split(rows_per_update)  # the last mini-batch may be smaller
        multi = len(chunks) * cfg.trainer.epochs > 1
        eng, dev = cfg.engine, self.device
        reset_peak(dev)
        full_chunks = chunks
        if self.distributed:  # this rank's rows of every mini-batch
            chunks = [c[self._my_rows(len(c))] for c in chunks]
        first = None  # rows whose old log-probs come from the update's own first forward (one process only)
        with torch.no_grad():
            if self.distributed:
                old = self._score_rows(self.model, batch, T, chunks, full_chunks) if multi else None
                ref = self._score_rows(self.ref, batch, T, chunks, full_chunks) if self.ref is not None else None
            else:
                old, first = self._old_logprobs(batch, T, chunks) if multi else (None, None)
                ref = self._score(self.ref, batch, T) if self.ref is not None else None
        filling = {"on": first is not None}  # until the first optimizer step
        mask_d, advs_d = mask.to(dev), advs_t.to(dev)
        rollout_d = self._rollout_logprobs(groups, mask.shape).to(dev) if alg.rollout_correction != "none" else None

        def loss_fn(rows: torch.Tensor):
            with autocast(self.compute_precision, dev):
                logp, ent = response_logprobs(self.model, batch, T, rows=rows, with_entropy=True,
                                              entropy_grad=alg.entropy_coef > 0, chunk_tokens=eng.logprob_chunk_tokens)
            rd = rows.to(dev)
            if old is None:
                old_rows = logp.detach()
            elif filling["on"]:  # the first mini-batch, before any step: old = current, kept for later epochs
                old[rd] = old_rows = logp.detach()
            else:
                old_rows = old[rd]
            is_w, is_st = None, {}
            if rollout_d is not None:  # the trainer's log-probs at rollout time over the sampler's
                is_w, is_st = rollout_correction(old_rows, rollout_d[rd], mask_d[rd], alg.rollout_correction,
                                                 alg.rollout_correction_cap)
            loss, st = policy_loss(
                logp, old_rows, advs_d[rd], mask_d[rd], eps_low=alg.eps_low,
                eps_high=alg.eps_high, agg=alg.loss_agg, ref_logp=ref[rd] if ref is not None else None,
                kl_coef=alg.kl_coef, kl_estimator=alg.kl_estimator, kl_clamp=(alg.kl_input_clamp, alg.kl_output_clamp),
                entropy=ent, entropy_coef=alg.entropy_coef, max_len=self.max_new_tokens(), is_weights=is_w)
            st.update(is_st)
            m = mask_d[rd]
            st["entropy"] = float((ent.detach() * m).sum() / m.sum().clamp(min=1))
            return loss, st

        stats: dict[str, list[float]] = {}
        for g in self.opt.param_groups:
            g["lr"] = self.lr()
        if self.distributed:
            return self._update_sharded(loss_fn, chunks, full_chunks, mask, resp_ids, truncated_t)
        for _ in range(cfg.trainer.epochs):
            for chunk in chunks:
                self.opt.zero_grad(set_to_none=True)
                # micro-batches accumulate to the mini-batch's gradient under one global normalisation
                st = accumulate(loss_fn, micro_batches(chunk, eng.micro_batch_rows), mask,
                                alg.loss_agg, global_denominator=denominator(mask[chunk], alg.loss_agg))
                if cfg.trainer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.trainer.grad_clip)
                self.opt.step()
                filling["on"] = False
                for k, v in st.items():
                    stats.setdefault(k, []).append(v)
        self.refresh_inference()  # one process: nothing to do for the HF sampler (it samples from the policy)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["response_length"] = float(torch.tensor([len(r) for r in resp_ids], dtype=torch.float).mean())
        out["truncation_rate"] = float(truncated_t.float().mean())
        out["samples"] = len(resp_ids)
        out["peak_memory_mb"] = round(peak_memory_mb(dev), 1)
        return out

    @staticmethod
    def _rollout_logprobs(groups, shape) -> torch.Tensor:
        """The sampler's log-probs of each response token, laid out as the batch's response mask."""
        out = torch.zeros(shape)
        r = 0
        for _, comps, _, _ in groups:
            for c in comps:
                if c.logprobs is None or len(c.logprobs) != len(c.token_ids):
                    raise TrainingError("algorithm.rollout_correction needs the sampler's log-prob of every "
                                        "sampled token; this backend returned none")
                if c.logprobs:
                    out[r, :len(c.logprobs)] = torch.tensor(c.logprobs)
                r += 1
        return out

    # -- the update on several ranks --
    def _my_rows(self, n: int) -> slice:
        s = dist.shard_rows(n, self.env.rank, self.env.world_size)
        return slice(s.start, s.stop)

    def _lockstep(self, local: torch.Tensor, n: int) -> tuple[list[torch.Tensor], int]:
        """This rank's micro-batches of its ``local`` rows (of ``n`` rows over all ranks) and how many empty passes
        to add: under FSDP2 every rank must make the same number of forward/backward passes (each one is
        all-gathers and reduce-scatters), and blocks differ by a row from rank to rank."""
        micro = self.cfg.engine.micro_batch_rows
        pieces = [p for p in micro_batches(local, micro) if len(p)]
        most = math.ceil(n / self.env.world_size)  # the largest rank's block
        return pieces, (math.ceil(most / micro) if micro else 1) - len(pieces)

    def _score_rows(self, model, batch, T: float, chunks: list[torch.Tensor],
                    full_chunks: list[torch.Tensor]) -> torch.Tensor:
        """Log-probs of this rank's rows of each mini-batch under ``model``, as a ``[len(batch), T]`` tensor (other
        ranks' rows zero), in the same number of passes on every rank."""
        eng = self.cfg.engine
        out = torch.zeros(batch.mask.shape, device=self.device)
        with autocast(self.compute_precision, self.device):
            for chunk, full in zip(chunks, full_chunks):
                pieces, pad = self._lockstep(chunk, len(full))
                for r in pieces:
                    out[r.to(self.device)] = response_logprobs(model, batch, T, rows=r,
                                                               chunk_tokens=eng.logprob_chunk_tokens)[0].float()
                for _ in range(pad):  # an idle rank still joins the collectives
                    response_logprobs(model, batch, T, rows=full[:1], chunk_tokens=eng.logprob_chunk_tokens)
        return out

    def _update_sharded(self, loss_fn, chunks: list[torch.Tensor], full_chunks: list[torch.Tensor],
                        mask: torch.Tensor, resp_ids: list, truncated_t: torch.Tensor) -> dict[str, float]:
        """The mini-batch updates with each mini-batch's rows split across ranks: the same number of optimizer
        steps and passes on every rank, each rank's losses weighted by the mini-batch's global denominator (the sum
        over ranks of theirs), so the summed gradient is the one-process gradient of the whole mini-batch."""
        cfg, alg = self.cfg, self.cfg.algorithm
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.trainer.epochs):
            for chunk, full in zip(chunks, full_chunks):
                self.opt.zero_grad(set_to_none=True)
                pieces, pad = self._lockstep(chunk, len(full))
                # every rank holds the whole batch's mask: this is all_reduce_sum of the ranks' own denominators
                total = denominator(mask[full], alg.loss_agg)
                st = accumulate(loss_fn, pieces, mask, alg.loss_agg, global_denominator=total) if pieces else {}
                for _ in range(pad):  # zero-weight pass on one row: this rank joins the collectives
                    loss, extra = loss_fn(full[:1])
                    (loss * 0.0).backward()
                    st = {k: st.get(k, 0.0) for k in ["loss", *extra]} | st
                keys = sorted(st)
                summed = dist.all_reduce_sum(torch.tensor([st[k] for k in keys], dtype=torch.float64))
                if cfg.trainer.grad_clip:
                    self._clip(cfg.trainer.grad_clip)
                self.opt.step()
                for k, v in zip(keys, summed.tolist()):
                    stats.setdefault(k, []).append(v)
        self.refresh_inference()
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["response_length"] = float(torch.tensor([len(r) for r in resp_ids], dtype=torch.float).mean())
        out["truncation_rate"] = float(truncated_t.float().mean())
        out["samples"] = len(resp_ids)
        peak = torch.tensor([peak_memory_mb(self.device)], dtype=torch.float64)
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        out["peak_memory_mb"] = round(float(peak.item()), 1)  # the largest rank's
        return out

    def _clip(self, max_norm: float) -> float:
        """Global grad-norm clipping over the sharded gradients (their norm is a DTensor: made whole first)."""
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)

    def _score(self, model, batch, T: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs of ``rows`` (default: every row) under ``model`` (old policy, reference), a micro-batch at a
        time."""
        eng = self.cfg.engine
        rows = torch.arange(len(batch)) if rows is None else rows
        with autocast(self.compute_precision, self.device):
            return torch.cat([response_logprobs(model, batch, T, rows=r, chunk_tokens=eng.logprob_chunk_tokens)[0]
                              for r in micro_batches(rows, eng.micro_batch_rows)])

    def _old_logprobs(self, batch, T: float, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rollout policy's log-probs ``[rows, T]`` for the mini-batches after the first, and the first's rows.
        The first is scored by the policy it is about to update, so its old log-probs are the update's own
        (detached, ratio exactly 1): ``update`` fills them in from its first forward. Saves one forward over a
        mini-batch per step."""
        later = torch.cat(list(chunks[1:])) if len(chunks) > 1 else torch.zeros(0, dtype=torch.long)
        old = torch.zeros(batch.mask.shape, device=self.device)
        if len(later):
            old[later.to(self.device)] = self._score(self.model, batch, T, rows=later).float()
        return old, chunks[0]

    def step(self, step: int) -> dict[str, Any]:
        t0 = time.time()
        groups, info = self.rollouts(step)
        t_gen = time.time() - t0
        row: dict[str, Any] = {"temperature": self.temperature(), "max_new_tokens": self.max_new_tokens(),
                               "lr": self.lr(), **info}
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
            rates = {k: c / n for k, (c, n) in self.pass_stats.items() if n >= self.group_size()}
            self.dropped |= difficulty_filter(rates, f.max_pass_rate)
            row["dropped_prompts"] = len(self.dropped)
        return row


def _broadcast(value, env):
    """Rank 0's ``value`` on every rank (itself in one process)."""
    if env.world_size <= 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def train_rl(cfg: RLConfig, run: RunDir, progress: bool = True, stop_after: int | None = None,
             console=None) -> dict:
    """Run RL per ``cfg`` into ``run`` (resuming from its latest checkpoint); returns the summary. Under torchrun
    every rank calls it with the same ``run`` directory; rank 0 alone writes there."""
    env = dist.init_distributed(cfg.engine.device)
    main = env.is_main
    torch.set_num_threads(cfg.trainer.threads or max(1, (os.cpu_count() or 1) // env.world_size))
    torch.manual_seed(cfg.seed)
    progress = progress and main
    if cfg.policy.path:
        policy_dir = Path(cfg.policy.path)
    elif env.world_size > 1:
        policy_dir = _bootstrap_distributed(cfg, main)
    else:
        policy_dir = bootstrap_policy(cfg, progress)
    state = RLRun(cfg, run, policy_dir)
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        state.restore(ckpt)
        if main:
            run.truncate_metrics(state.step_no)
    summary = run.summary()
    # mid-run evaluations (and the reference reset's patience) read the validation split, never the reported set
    n_eval = min(cfg.trainer.eval_prompts, len(state.valid))
    eval_subset = random.Random(cfg.seed).sample(state.valid, n_eval)
    if "rl.accuracy_before" not in summary and main:  # rank 0 evaluates on its (whole) inference copy
        before = evaluate(state.gen, state.router, state.heldout, cfg.eval.max_new_tokens)
        run.write_summary({f"rl.{k}_before": round(v, 4) for k, v in before.items()} |
                          {"rl.accuracy_before": round(before.get("accuracy", 0.0), 4),
                           "rl.heldout_n": len(state.heldout), "rl.valid_n": len(state.valid),
                           "rl.policy": str(policy_dir)})
    bar = StepBar(progress, cfg.trainer.steps, state.step_no, cfg.name, keys=("reward", "valid_accuracy", "entropy"))
    t_start = time.time()
    try:
        for step in range(state.step_no, cfg.trainer.steps):
            row = state.step(step)
            done = step + 1
            val = None
            if eval_subset and (done % cfg.trainer.eval_every == 0 or done == cfg.trainer.steps):
                if main:
                    val = evaluate(state.gen, state.router, eval_subset, cfg.eval.max_new_tokens).get("accuracy")
                val = _broadcast(val, env)  # the reference reset's patience reads it on every rank
                row["valid_accuracy"] = val
            if state.reset is not None:
                why = state.reset.check(done, val, row.get("kl"))
                if why:
                    state.reset_reference()
                    if cfg.controllers.reference_reset.reset_optimizer:
                        reset_state(state.opt)  # zeroed in place: the same after a sharded save as without one
                    row["reference_reset"] = why
            if main:
                run.log_metrics(done, **row)
            if done % cfg.trainer.checkpoint_every == 0 or done == cfg.trainer.steps:
                state.save(cfg.trainer.keep_checkpoints)
            bar.update(done, row)
            if stop_after is not None and done >= stop_after and done < cfg.trainer.steps:
                dist.barrier()
                return run.summary()
    finally:
        bar.close()
        state.router.close()
    if env.world_size > 1:  # one consolidated HF checkpoint, gathered from the shards and written by rank 0
        dist.export_hf(state.model, state.tok, run.path / "model")
        if not main:
            dist.barrier()  # rank 0 evaluates and writes the run
            return run.summary()
    after = evaluate(state.gen, state.router, state.heldout, cfg.eval.max_new_tokens)
    if env.world_size <= 1:
        state.model.save_pretrained(run.path / "model")
        state.tok.save_pretrained(run.path / "model")
    rows = run.metrics()
    resets = [r for r in rows if "reference_reset" in r]
    run.write_summary({f"rl.{k}_after": round(v, 4) for k, v in after.items()} | {
        "rl.accuracy_after": round(after.get("accuracy", 0.0), 4),
        "rl.steps": cfg.trainer.steps,
        "rl.train_seconds": round(time.time() - t_start, 1),
        "rl.reference_resets": len(resets),
        **rollout_trend(rows),
        "rl.final_temperature": round(state.temperature(), 4),
        "world_size": env.world_size,
        "precision": cfg.engine.precision,
    })
    summary = run.summary()
    summary["accuracy_before"], summary["accuracy_after"] = summary["rl.accuracy_before"], summary["rl.accuracy_after"]
    summary["heldout_n"] = summary["rl.heldout_n"]
    run.write_summary({"accuracy_before": summary["accuracy_before"], "accuracy_after": summary["accuracy_after"],
                       "heldout_n": summary["heldout_n"]})
    from refinery.report import plot_metrics

    plot = plot_metrics(rows, ["reward", "accuracy", "valid_accuracy", "entropy", "kl", "temperature",
                               "response_length", "clip_frac"], run.path / "plots" / "rl_metrics.png",
                        title=cfg.name)
    run.write_report(render_report(cfg, run, plot))
    run.finish()
    dist.barrier()  # the other ranks return once rank 0 has written the run
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
