"""`refinery models pretrain --nproc 2`: real torchrun, 2 gloo ranks, FSDP2, sharded checkpoints that resume on
another number of ranks, one consolidated HF export -- against the same run in one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from refinery.models.io import load_model
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = TINY_MODEL + [
    "data.n_train_per_task=200", "data.n_test_per_task=10", "data.tasks=[arithmetic]",
    "data.difficulty={arithmetic: [2]}", "trainer.steps=4", "trainer.batch_size=6", "trainer.warmup_steps=1",
    "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.checkpoint_every=2", "trainer.log_every=1",
    "trainer.keep_checkpoints=2", "trainer.threads=1", "eval.n_per_task=4", "eval.max_new_tokens=8", "trainer.lr=1e-2"]


def _pretrain(out: Path, *extra: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REFINERY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "refinery.cli", "models", "pretrain", str(ROOT / "recipes" / "pretrain.yaml"),
           *OVERRIDES, "--out", str(out), "--no-progress", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _params(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_two_ranks_train_like_one_and_resume_on_one(tmp_path):
    cache = tmp_path / "cache"
    _pretrain(tmp_path / "one", cache=cache)
    _pretrain(tmp_path / "two", "--nproc", "2", cache=cache)
    one, two = tmp_path / "one", tmp_path / "two"
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["world_size"] == 1 and s2["world_size"] == 2 and s2["precision"] == "fp32"
    l1 = [r["loss"] for r in map(json.loads, (one / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    l2 = [r["loss"] for r in map(json.loads, (two / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(l2) == 4 and max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4, (l1, l2)  # rank 0 alone logged
    p1, p2 = _params(one / "model"), _params(two / "model")  # the export loads with plain transformers
    # 4 AdamW steps at lr 1e-2: only the order of fp32 sums differs (each rank normalising by its own token
    # count fails the loss check above: checked by breaking it)
    assert max(float((p1[k] - p2[k]).abs().max()) for k in p1) < 1e-4
    assert abs(s1["pretrain.eval_loss"] - s2["pretrain.eval_loss"]) < 1e-4
    ckpts = sorted((two / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-0000002", "step-0000004"]
    assert (ckpts[0] / "refinery_meta.json").exists() and (ckpts[0] / "COMPLETE").exists()

    # a 2-rank run cut after step 2, resumed in one process from its sharded checkpoint: the same model
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    shutil.rmtree(cut / "model")
    _pretrain(cut, "--resume", cache=cache)
    p3 = _params(cut / "model")
    assert max(float((p2[k] - p3[k]).abs().max()) for k in p2) < 1e-5
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
