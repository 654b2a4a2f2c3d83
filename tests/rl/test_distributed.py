"""RL under torchrun on CPU: real 2-rank gloo launches against the same update / run in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refinery.runs import RunDir
from tests.rl.dist_rl_worker import UPDATE_CASES, run_update, train_cfg

WORKER = Path(__file__).with_name("dist_rl_worker.py")
ROOT = Path(__file__).resolve().parents[2]
_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def torchrun(*args: str, timeout: int = 240) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER),
           *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A small policy that solves some one-digit sums (a few seconds of SFT)."""
    from refinery.config import load_config
    from refinery.models.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, None, [
        "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=128", "model.vocab_size=320", "data.tasks=[arithmetic]",
        "data.difficulty={arithmetic: [1]}", "data.n_train_per_task=150", "data.n_test_per_task=10",
        "data.completion_only=true", "trainer.steps=60", "trainer.batch_size=32", "trainer.lr=1e-2",
        "trainer.warmup_steps=5", "trainer.eval_every=60", "trainer.checkpoint_every=60", "eval.n_per_task=0",
        "trainer.threads=1"])
    run = RunDir.create(cfg, "p", out=tmp_path_factory.mktemp("policy") / "run")
    pretrain(cfg, run, progress=False)
    return run.path / "model"


def test_two_rank_update_equals_one_process_update(policy, tmp_path):
    """A fixed global batch of groups: 2 ranks (FSDP2, sharded reference, each rank its rows of every
    mini-batch) move the policy as one process does on the whole batch; the inference copy follows the shards."""
    out = tmp_path / "update.pt"
    torchrun("update", str(policy), str(out))
    two = torch.load(out, weights_only=False)
    assert two["world_size"] == 2
    start = _params(policy)
    for name, extra, n in UPDATE_CASES:
        params1, stats1 = run_update(policy, tmp_path, name, extra, n)
        params2, stats2 = two[name]
        assert max_diff(params1, start) > 1e-4, name  # the update moved the policy ...
        assert max_diff(params1, params2) < 1e-5, name  # ... the same way on 2 ranks
        assert stats2["infer_diff"] == 0.0
        for k in ("loss", "kl", "clip_frac", "entropy"):
            assert stats2[k] == pytest.approx(stats1[k], abs=1e-5), (name, k)
        assert stats2["samples"] == stats1["samples"] == 3 * n


@pytest.fixture(scope="module")
def full_run(policy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl2") / "full"
    torchrun("train", str(policy), str(out), "0")
    return out


def _params(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_train_rl_on_two_ranks_end_to_end(full_run, policy):
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["precision"] == "fp32" and summary["rl.steps"] == 2
    assert "accuracy_before" in summary and "accuracy_after" in summary and summary["rl.reference_resets"] == 2
    rows = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone logged
    assert {"reward", "kl", "entropy", "valid_accuracy", "samples", "peak_memory_mb"} <= set(rows[0])
    assert rows[0]["samples"] == 4 * 2  # the global batch: 4 prompts x G=2, half generated on each rank
    params = _params(full_run / "model")  # the export loads with plain transformers
    assert (full_run / "report.md").exists() and not (full_run / "model.tmp").exists()
    ckpts = sorted((full_run / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-0000001", "step-0000002"]
    assert (ckpts[-1] / "refinery_meta.json").exists() and (ckpts[-1] / "COMPLETE").exists()

    # the 2-rank sharded checkpoint reshards onto one process (policy, reference and controllers' state)
    from refinery.rl.trainer import RLRun

    cfg = train_cfg(policy)
    state = RLRun(cfg, RunDir(full_run), policy)
    state.restore(ckpts[-1])
    assert state.step_no == 2 and state.temp.temperature == pytest.approx(summary["rl.final_temperature"], abs=1e-4)
    assert max_diff({k: v for k, v in state.model.state_dict().items()}, params) == 0.0
    # reference_reset.every=1: the reference was reset to the policy at step 2, before the checkpoint
    assert max_diff(state.ref.state_dict(), params) == 0.0


def test_stop_and_resume_on_two_ranks_gives_the_uninterrupted_run(full_run, policy, tmp_path):
    cut = tmp_path / "cut"
    torchrun("train", str(policy), str(cut), "1")
    assert [c.name for c in sorted((cut / "checkpoints").glob("step-*"))] == ["step-0000001"]
    assert not (cut / "model").exists()
    torchrun("train", str(policy), str(cut), "0")
    rows = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    full_rows = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["reward"] for r in rows] == [r["reward"] for r in full_rows]  # same rollouts after the resume
    assert max_diff(_params(cut / "model"), _params(full_run / "model")) < 1e-6
    shutil.rmtree(cut)
