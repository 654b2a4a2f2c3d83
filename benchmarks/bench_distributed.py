"""Steps/s of SFT-style training on 1 process vs 2 ranks (torchrun, gloo, FSDP2) on this machine's CPU cores.

    python benchmarks/bench_distributed.py [--preset mini] [--steps 40] [--batch 32] [--record]

Three runs of ``refinery models pretrain`` on the same procedural data and global batch: one process with all
cores (``threads = cores``); ``--nproc 2`` (each rank half the batch and half the cores); and one process with half
the batch on half the cores, which is one rank's compute without any communication. The communication (and
synchronisation) share of a 2-rank step is ``1 - t(half batch, alone) / t(2-rank step)``. On a 2-core machine the
two ranks share the cores the single process had, so the ideal speed-up is 1x: what this measures is the cost of
sharding, not a scaling curve; on GPUs (one rank per device) the same code scales with the devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, preset: str, steps: int, batch: int, threads: int, nproc: int) -> float:
    cmd = [sys.executable, "-m", "refinery.cli", "models", "pretrain", str(ROOT / "recipes" / "pretrain.yaml"),
           f"model.preset={preset}", f"trainer.steps={steps}", f"trainer.batch_size={batch}",
           "trainer.warmup_steps=1", f"trainer.eval_every={steps}", "trainer.eval_batches=1",
           f"trainer.checkpoint_every={steps}", f"trainer.log_every={steps}", f"trainer.threads={threads}",
           "eval.n_per_task=0", "--out", str(out), "--no-progress"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        sys.exit(f"run failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["steps_per_s"] for r in rows if "steps_per_s" in r][-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        run(t / "warm", args.preset, 2, args.batch, cores, 1)  # builds and caches the model and tokenizer
        one = run(t / "one", args.preset, args.steps, args.batch, cores, 1)
        two = run(t / "two", args.preset, args.steps, args.batch, max(1, cores // 2), 2)
        half = run(t / "half", args.preset, args.steps, args.batch // 2, max(1, cores // 2), 1)
    comm = 1 - (1 / half) / (1 / two)
    lines = [
        f"- SFT-style training, preset {args.preset}, global batch {args.batch}, {args.steps} steps, {cores} cores",
        f"- 1 process ({cores} threads): {one:.2f} steps/s; 2 ranks (torchrun, gloo, FSDP2; {max(1, cores // 2)} "
        f"thread(s) each): {two:.2f} steps/s ({two / one:.2f}x)",
        f"- one rank's compute alone (half batch, {max(1, cores // 2)} thread(s)): {half:.2f} steps/s -> "
        f"communication and synchronisation share of a 2-rank step: {comm:.0%}",
    ]
    print("\n".join(lines))
    if args.record:
        sys.path.insert(0, str(Path(__file__).parent))
        from _common import record

        record("Distributed training on CPU ranks: 1 process vs 2 ranks", lines)


if __name__ == "__main__":
    main()
