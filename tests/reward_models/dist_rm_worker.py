"""torchrun worker for test_rm_engine.py: ``train_rm`` on N ranks, as ``refinery rm train --nproc N`` runs it.

    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_rm_worker.py BACKBONE RUN STOP_AFTER [K=V ...]

RUN is created by rank 0 (resumed when it already holds a run); STOP_AFTER 0 runs to the end.
"""

from __future__ import annotations

import sys
from pathlib import Path


def rm_cfg(backbone, *extra):
    from refinery.config import load_config
    from refinery.reward_models.config import RMConfig

    return load_config(RMConfig, None, [
        f"backbone.path={backbone}", "data.n_train=40", "data.n_valid=8", "data.n_test=8", "trainer.batch_pairs=8",
        "trainer.epochs=1", "trainer.eval_every=100", "trainer.checkpoint_every=100", "trainer.log_every=1",
        "trainer.max_length=48", "trainer.threads=1", "trainer.lr=1e-4", "trainer.warmup_steps=1",
        "regression.epochs=0.5", "engine.device=cpu", *extra])


def main(argv: list[str]) -> None:
    from refinery.engine import dist
    from refinery.reward_models.train import train_rm
    from refinery.runs import RunDir

    backbone, out, stop = argv[0], Path(argv[1]), int(argv[2])
    env = dist.init_distributed("cpu")
    cfg = rm_cfg(backbone, *argv[3:])
    if env.is_main:
        run = RunDir.create(cfg, "rm", out=out, resume=(out / "config.yaml").exists(), seed=cfg.seed)
    dist.barrier()
    if not env.is_main:
        run = RunDir(out)
    train_rm(cfg, run, progress=False, stop_after=stop or None)
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
