"""refinery.engine.dist on CPU: real torchrun launches with 2 gloo ranks against a 1-process reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refinery.engine import dist as D
from refinery.errors import CheckpointError, ConfigError
from tests.engine.dist_worker import ROWS, batch, make_optimizer, tiny_model, token_loss_sum, train_step

WORKER = Path(__file__).with_name("dist_worker.py")
_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def torchrun(nproc: int, *args: str, timeout: int = 150) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(WORKER), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


SINGLE = D.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def reference() -> dict:
    """The same two steps in this process, on the whole batch (world size 1)."""
    model = D.wrap_model(tiny_model(), SINGLE)
    opt = make_optimizer(model)
    grads: dict = {}
    out = {"metrics1": train_step(model, opt, SINGLE, 1, grads=grads), "grads1": grads}
    out["after1"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out["metrics2"] = train_step(model, opt, SINGLE, 2)
    out["after2"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two steps on 2 ranks with a sharded checkpoint after step 1 and an HF export after step 2."""
    root = tmp_path_factory.mktemp("dist")
    paths = {"out": root / "train.pt", "ckpt": root / "ckpt", "export": root / "export"}
    torchrun(2, "train", str(paths["out"]), str(paths["ckpt"]), str(paths["export"]))
    return {**paths, **load(paths["out"])}


def test_fsdp2_step_equals_one_process_step_on_global_token_mean(trained, reference):
    assert trained["world_size"] == 2 and trained["sharded"]
    assert trained["fsdp_modules"] == 3  # each of the 2 decoder layers, and the root
    # the data tells the right normalisation from the naive one (mean of per-rank token means) ...
    ids, mask = batch(1)
    model = tiny_model()
    half = ROWS // 2
    naive = 0.5 * sum(token_loss_sum(model, ids[s], mask[s]) / mask[s].sum()
                      for s in (slice(0, half), slice(half, ROWS)))
    naive.backward()
    naive_grads = {n: p.grad for n, p in model.named_parameters()}
    assert max_diff(naive_grads, reference["grads1"]) > 1e-3
    # ... and the 2-rank step matches the 1-process step on the whole batch
    assert max_diff(trained["grads1"], reference["grads1"]) < 1e-6
    assert max_diff(trained["after1"], reference["after1"]) < 1e-5
    assert trained["metrics1"]["loss"] == pytest.approx(reference["metrics1"]["loss"], rel=1e-6)
    assert max_diff(trained["after2"], reference["after2"]) < 1e-5


def test_fsdp2_bf16_mixed_precision_keeps_fp32_state(trained, reference):
    assert trained["bf16_dtypes"] == ["torch.float32"]
    assert trained["bf16_metrics1"]["loss"] == pytest.approx(reference["metrics1"]["loss"], rel=2e-2)
    grads, want = trained["bf16_grads1"], reference["grads1"]
    cos = torch.nn.functional.cosine_similarity(torch.cat([grads[k].flatten() for k in want]),
                                                torch.cat([want[k].flatten() for k in want]), dim=0)
    assert cos > 0.99


def test_sharded_checkpoint_resumes_on_two_ranks_and_reshards_to_one(trained, tmp_path):
    assert sorted(p.name for p in trained["ckpt"].parent.iterdir() if p.name.startswith("ckpt")) == ["ckpt"]
    out = tmp_path / "resume.pt"
    torchrun(2, "resume", str(out), str(trained["ckpt"]))
    resumed = load(out)
    assert resumed["step"] == 1 and resumed["extra"] == {"data_position": 2}
    assert max_diff(resumed["loaded"], trained["after1"]) == 0.0
    assert max_diff(resumed["after2"], trained["after2"]) < 1e-6

    # the 2-rank checkpoint on 1 process: parameters and AdamW state come back whole
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = D.wrap_model(tiny_model(seed=7), SINGLE)
    opt = make_optimizer(model)
    assert D.load_sharded(trained["ckpt"], model, opt) == (1, {"data_position": 2})
    assert max_diff(model.state_dict(), trained["after1"]) == 0.0
    state, want = get_optimizer_state_dict(model, opt)["state"], trained["optim1"]["state"]
    assert state.keys() == want.keys()
    for name in want:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(state[name][k]), torch.as_tensor(want[name][k])), (name, k)
    train_step(model, opt, SINGLE, 2)
    assert max_diff(model.state_dict(), trained["after2"]) < 1e-5


def test_single_process_checkpoint_round_trip_and_no_partial_load(tmp_path):
    model = D.wrap_model(tiny_model(), SINGLE)
    opt = make_optimizer(model)
    train_step(model, opt, SINGLE, 1)
    D.save_sharded(tmp_path / "ck", model, opt, step=1, extra={"k": [1, 2]})
    D.save_sharded(tmp_path / "ck", model, opt, step=1, extra={"k": [1, 2]})  # overwrites in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    other = D.wrap_model(tiny_model(seed=3), SINGLE)
    other_opt = make_optimizer(other)
    assert D.load_sharded(tmp_path / "ck", other, other_opt) == (1, {"k": [1, 2]})
    assert max_diff(other.state_dict(), model.state_dict()) == 0.0
    train_step(model, opt, SINGLE, 2)
    train_step(other, other_opt, SINGLE, 2)
    assert max_diff(other.state_dict(), model.state_dict()) == 0.0
    (tmp_path / "ck").rename(tmp_path / "ck.old")  # a save stopped between its two renames
    assert D.load_sharded(tmp_path / "ck", other, other_opt)[0] == 1
    (tmp_path / "ck.tmp").mkdir()  # what an interrupted save leaves
    with pytest.raises(CheckpointError):
        D.load_sharded(tmp_path / "ck.tmp", other, other_opt)


def test_hf_export_loads_with_plain_from_pretrained(trained):
    from transformers import AutoModelForCausalLM

    assert not trained["export"].with_name("export.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(trained["export"])
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert max_diff(model.state_dict(), trained["after2"]) == 0.0


@pytest.fixture
def no_torchrun(monkeypatch):
    for k in _DIST_VARS:
        monkeypatch.delenv(k, raising=False)


def test_single_process_fallbacks(no_torchrun):
    env = D.init_distributed()
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (0, 1, 0, True)
    assert D.is_main() and not torch.distributed.is_initialized()
    D.barrier()
    model = tiny_model()
    wrapped = D.wrap_model(model, D.init_distributed("cpu"))
    assert wrapped is model and len(D.decoder_layers(model)) == 2
    ids, mask = batch(1)
    assert torch.isfinite(token_loss_sum(wrapped, ids, mask))
    assert D.global_token_count(mask) == mask.sum().item()
    assert D.all_reduce_sum(2.5) == 2.5
    t = torch.ones(3)
    assert torch.equal(D.all_reduce_sum(t), t)
    assert D.reduce_metrics({"b": 2.0, "a": 1.0}, weights=3.0) == {"a": 1.0, "b": 2.0}
    D.destroy()


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (4, 2), (7, 3), (10, 4), (5, 8)])
def test_shard_rows_partitions_exactly(n, world):
    shards = [D.shard_rows(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        D.shard_rows(n, world, world)


def test_torchrun_command_and_relaunch_guard(no_torchrun, monkeypatch):
    cmd = D.torchrun_command(2, ["pretrain", "--nproc", "2", "--out", "r", "--nproc=3", "x=1"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                   "-m", "refinery.cli", "pretrain", "--out", "r", "x=1"]
    with pytest.raises(ConfigError):
        D.torchrun_command(0, [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError):
        D.relaunch_with_torchrun(2, ["pretrain"])
