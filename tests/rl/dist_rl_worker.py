"""torchrun worker for test_distributed.py, and the configs/batches it shares with the in-process reference.

    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_rl_worker.py update POLICY OUT
    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_rl_worker.py train POLICY RUN STOP_AFTER

``update``: RL updates on fixed, injected global batches; rank 0 writes the full parameters to OUT (torch.save).
``train``: ``train_rl`` into RUN (resumed when RUN holds a run), stopping after STOP_AFTER steps (0: no stop).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# the update cases: (name, extra overrides, number of groups). "spec": KL and 2 mini-batches of 2 groups;
# "uneven": 5 groups -> mini-batches of 6, 6 and 3 rows, one row per micro-batch, so the ranks' blocks differ and
# the smaller one makes an empty (zero-weight) pass to keep FSDP2's collectives matched
UPDATE_CASES = [("spec", [], 4), ("uneven", ["engine.micro_batch_rows=1", "algorithm.loss_agg=seq-mean-token-mean"],
                                   5)]


def update_cfg(policy, *extra):
    from refinery.config import load_config
    from refinery.rl.config import RLConfig

    return load_config(RLConfig, None, [
        f"policy.path={policy}", "data.tasks=[arithmetic]", "data.difficulty={arithmetic: [1, 2]}",
        "data.n_train_per_task=40", "data.heldout_per_task=2", "data.valid_per_task=2", "rollout.group_size=3",
        "rollout.prompts_per_step=4", "algorithm.kl_coef=0.01", "trainer.mini_batch_prompts=2", "trainer.lr=1e-3",
        "trainer.threads=1", "engine.device=cpu", *extra])


def update_groups(state, n: int) -> list:
    """A fixed global batch of ``n`` groups: completions built from token ids, rewards chosen per group."""
    from refinery.generation import Completion

    groups = []
    for k, item in enumerate(state.train_items["arithmetic"][:n]):
        texts = ["1+1=2", f"{k} is the answer", "no idea at all, really"]
        comps = [Completion(text=t, token_ids=state.gen.encode(t)[: 4 + 3 * j], finish_reason="stop")
                 for j, t in enumerate(texts)]
        groups.append((item, comps, torch.tensor([1.0, 0.0, 0.5 * (k % 2)]), [True, False, False]))
    return groups


def run_update(policy, tmp: Path, name: str, extra: list[str], n: int) -> tuple[dict, dict]:
    """One ``RLRun.update`` on the case's batch: (full parameters, stats). Every rank must call it."""
    from refinery.engine import dist
    from refinery.rl.trainer import RLRun
    from refinery.runs import RunDir

    cfg = update_cfg(policy, *extra)
    state = RLRun(cfg, RunDir(tmp / name), Path(policy))
    stats = state.update(update_groups(state, n))
    full = {k: v.detach().clone() for k, v in dist.full_state_dict(state.model).items()}
    # the inference copy was refreshed from the shards
    infer = {k: (v - full[k]).abs().max().item() for k, v in state.infer.state_dict().items()} if full else {}
    return full, {**stats, "infer_diff": max(infer.values()) if infer else 0.0}


def train_cfg(policy, *extra):
    from refinery.config import load_config
    from refinery.rl.config import RLConfig

    return load_config(RLConfig, None, [
        f"policy.path={policy}", "data.tasks=[arithmetic]", "data.difficulty={arithmetic: [1, 2]}",
        "data.n_train_per_task=60", "data.heldout_per_task=4", "data.valid_per_task=3", "rollout.group_size=2",
        "rollout.prompts_per_step=4", "rollout.max_new_tokens=8", "trainer.mini_batch_prompts=2",
        "algorithm.kl_coef=0.01", "controllers.reference_reset.every=1",
        # every step resets the reference and the optimizer right before a sharded save
        "controllers.reference_reset.reset_optimizer=true", "controllers.temperature.enabled=true",
        "trainer.lr=1e-3", "trainer.steps=2", "trainer.eval_every=1", "trainer.checkpoint_every=1",
        "trainer.eval_prompts=3", "eval.max_new_tokens=8", "trainer.threads=1", "engine.device=cpu", *extra])


def main(argv: list[str]) -> None:
    from refinery.engine import dist

    mode = argv[0]
    env = dist.init_distributed("cpu")
    if mode == "update":
        policy, out = argv[1], Path(argv[2])
        res = {"world_size": env.world_size}
        for name, extra, n in UPDATE_CASES:
            res[name] = run_update(policy, out.parent, name, extra, n)
        if env.is_main:
            torch.save(res, out)
    elif mode == "train":
        from refinery.rl.trainer import train_rl
        from refinery.runs import RunDir

        policy, out, stop = argv[1], Path(argv[2]), int(argv[3])
        cfg = train_cfg(policy, *argv[4:])
        if env.is_main:  # as the CLI does under torchrun: rank 0 makes (or reopens) the run directory
            run = RunDir.create(cfg, "t", out=out, resume=(out / "config.yaml").exists(), seed=cfg.seed)
        dist.barrier()
        if not env.is_main:
            run = RunDir(out)
        train_rl(cfg, run, progress=False, stop_after=stop or None)
    else:
        raise SystemExit(f"unknown mode {mode}")
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
