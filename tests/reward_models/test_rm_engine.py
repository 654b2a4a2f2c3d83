"""Reward-model training on the engine: micro-batches keep the global normalisation, 2 torchrun ranks (FSDP2)
train like one process, a 2-rank sharded checkpoint resumes in one process, bf16 trains on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from refinery.reward_models.model import RewardScorer
from refinery.reward_models.train import train_rm
from refinery.runs import RunDir
from tests.reward_models.dist_rm_worker import rm_cfg

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_rm_worker.py")
_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def torchrun(*args: str, timeout: int = 300) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER),
           *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def run_one(backbone, out: Path, *extra: str, stop_after=None) -> dict:
    cfg = rm_cfg(backbone, *extra)
    run = RunDir.create(cfg, "rm", out=out, resume=(out / "config.yaml").exists(), seed=cfg.seed)
    return train_rm(cfg, run, progress=False, stop_after=stop_after)


def params(stage_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in RewardScorer(stage_dir).model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def losses(run: Path, stage: str) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("stage") == stage and "loss" in r]


def moved(stage_dir: Path, backbone: Path) -> float:
    """How far training moved the backbone's shared weights (so an equality check is not vacuous)."""
    a = params(stage_dir)
    from transformers import AutoModelForCausalLM

    base = {k.removeprefix("model."): v for k, v in AutoModelForCausalLM.from_pretrained(backbone).state_dict().items()}
    shared = [k for k in a if k.removeprefix("model.") in base and a[k].shape == base[k.removeprefix("model.")].shape]
    return max(float((a[k] - base[k.removeprefix("model.")]).abs().max()) for k in shared)


def test_micro_batches_train_like_one_batch(alphabet_model, tmp_path):
    """3 rows per micro-batch (pairs for BT, responses with 10% missing labels for regression) = the whole batch:
    each piece is weighted by its share of the global count (pairs / observed labels), not averaged."""
    pipe = "pipeline=[regression, bt]"
    run_one(alphabet_model, tmp_path / "whole", pipe)
    run_one(alphabet_model, tmp_path / "micro", pipe, "engine.micro_batch_rows=3")
    for stage in ("regression", "bt"):
        a, b = params(tmp_path / "whole" / "stages" / stage), params(tmp_path / "micro" / "stages" / stage)
        assert max_diff(a, b) < 1e-5, stage
        la, lb = losses(tmp_path / "whole", stage), losses(tmp_path / "micro", stage)
        assert len(la) >= 2 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (stage, la, lb)
    assert moved(tmp_path / "whole" / "stages" / "bt", alphabet_model) > 1e-4


def test_two_ranks_train_like_one_process(alphabet_model, tmp_path):
    pipe = "pipeline=[regression, bt]"
    one = run_one(alphabet_model, tmp_path / "one", pipe)
    torchrun(alphabet_model, tmp_path / "two", 0, pipe)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["precision"] == "fp32"
    for stage in ("regression", "bt"):
        la, lb = losses(tmp_path / "one", stage), losses(tmp_path / "two", stage)
        assert len(la) == len(lb) >= 2 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (stage, la, lb)
        # the stage directories are plain HF checkpoints written by rank 0 (loaded with AutoModel... here)
        assert max_diff(params(tmp_path / "one" / "stages" / stage), params(tmp_path / "two" / "stages" / stage)) < 1e-5
    cfg = json.loads((tmp_path / "two" / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]  # not FSDP2's wrapper class
    assert abs(one["rm.accuracy"] - two["rm.accuracy"]) < 1e-9


def test_two_rank_checkpoint_resumes_in_one_process(alphabet_model, tmp_path):
    pipe = "pipeline=[bt]"
    run_one(alphabet_model, tmp_path / "full", pipe)
    torchrun(alphabet_model, tmp_path / "cut", 3, pipe)  # stopped after step 3, as a crash would
    ckpt = tmp_path / "cut" / "checkpoints" / "step-0000003"
    assert (ckpt / "refinery_meta.json").exists() and not (tmp_path / "cut" / "model").exists()  # sharded (DCP)
    cut = tmp_path / "cut"
    run_one(alphabet_model, cut, pipe)  # resumed by one process: DCP reshards 2 -> 1
    assert max_diff(params(tmp_path / "full" / "stages" / "bt"), params(cut / "stages" / "bt")) < 1e-5
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # nothing logged twice


def test_bf16_trains_on_cpu(alphabet_model, tmp_path):
    s = run_one(alphabet_model, tmp_path / "bf16", "pipeline=[bt]", "engine.precision=bf16", "trainer.epochs=4",
                "trainer.lr=3e-4")
    assert s["precision"] == "bf16"
    ls = losses(tmp_path / "bf16", "bt")
    assert len(ls) == 20 and sum(ls[-5:]) / 5 < sum(ls[:5]) / 5, ls
    rows = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all("peak_memory_mb" in r for r in rows if "loss" in r)
