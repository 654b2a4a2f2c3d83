import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from refinery.config import load_config
from refinery.errors import CheckpointError, ConfigError, DataError
from refinery.models.io import load_model
from refinery.models.pretrain import PretrainConfig, TrainerConfig, check_config, lr_at, pretrain
from refinery.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_lr_schedule_warmup_then_cosine_to_floor():
    tc = TrainerConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(10, tc) == pytest.approx(1.0)
    assert lr_at(60, tc) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, tc) == pytest.approx(0.1)
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(10, 110))


def test_warmup_longer_than_run_is_an_error():
    with pytest.raises(ConfigError, match="warmup_steps"):
        check_config(load_config(PretrainConfig, None, ["trainer.steps=10", "trainer.warmup_steps=10"]))


def _run(tmp_path, overrides, name="r", stop_after=None):
    cfg = load_config(PretrainConfig, None, overrides)
    run = RunDir.create(cfg, "t", out=tmp_path / name, resume=(tmp_path / name / "config.yaml").exists())
    return run, pretrain(cfg, run, progress=False, stop_after=stop_after)


def test_pretrain_learns_and_writes_a_complete_run(tmp_path, tiny_overrides):
    run, summary = _run(tmp_path, tiny_overrides + ["trainer.steps=40", "trainer.lr=1e-2"])
    rows = run.metrics()
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses  # it really learns
    assert [r["step"] for r in rows if "eval_loss" in r] == [10, 20, 30, 40]
    for key in ("model.params", "pretrain.final_loss", "pretrain.eval_loss", "pretrain.accuracy",
                "pretrain.accuracy.arithmetic.d2"):
        assert key in summary, key
    assert 0.0 <= summary["pretrain.accuracy"] <= 1.0
    assert (run.path / "report.md").read_text().startswith("# pretrain")
    assert json.loads((run.path / "summary.json").read_text()) == summary
    assert run.manifest()["finished"]
    assert [p.name for p in run.checkpoints()] == ["step-0000030", "step-0000040"]  # keep_checkpoints=2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run.path / "model")


def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_overrides):
    _, full = _run(tmp_path, tiny_overrides, name="full")
    run, _ = _run(tmp_path, tiny_overrides, name="cut", stop_after=10)
    assert run.latest_checkpoint().name == "step-0000010" and not (run.path / "model").exists()
    run2, resumed = _run(tmp_path, tiny_overrides, name="cut")
    assert resumed["pretrain.final_loss"] == pytest.approx(full["pretrain.final_loss"], rel=1e-5)
    assert resumed["pretrain.eval_loss"] == pytest.approx(full["pretrain.eval_loss"], rel=1e-5)
    a, b = load_model(tmp_path / "full" / "model"), load_model(tmp_path / "cut" / "model")
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.parameters(), b.parameters()))
    steps = [r["step"] for r in run2.metrics()]
    assert steps == sorted(set(steps))  # nothing logged twice


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_overrides):
    run, _ = _run(tmp_path, tiny_overrides, name="c", stop_after=10)
    (run.latest_checkpoint() / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt"):
        _run(tmp_path, tiny_overrides, name="c")
    (run.latest_checkpoint() / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        _run(tmp_path, tiny_overrides, name="c")


def test_pretrain_on_text_files(tmp_path, tiny_overrides):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    over = [o for o in tiny_overrides if not o.startswith(("data.", "eval."))]
    run, summary = _run(tmp_path, over + ["data.source=text", f"data.text_files=[{text}]", "data.seq_len=32",
                                          "trainer.lr=1e-2", "trainer.steps=30"])
    assert summary["pretrain.eval_loss"] < 2.0  # repetitive text is easy; an untrained model is at ~ln(320)=5.8
    assert "pretrain.accuracy" not in summary


def test_missing_and_binary_text_files(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith("data.")]
    with pytest.raises(DataError, match="does not exist"):
        _run(tmp_path, over + ["data.source=text", f"data.text_files=[{tmp_path / 'nope.txt'}]"], name="a")
    binf = tmp_path / "b.bin"
    binf.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(DataError, match="not UTF-8"):
        _run(tmp_path, over + ["data.source=text", f"data.text_files=[{binf}]"], name="b")


def test_pretrain_on_public_text(tmp_path, tiny_overrides, shared_data):
    """Real text: tiny-shakespeare (from the shared data folder)."""
    src = shared_data / "tinyshakespeare"
    files = sorted(p for p in src.iterdir() if p.suffix in (".txt", "") and p.is_file() and p.stat().st_size > 10000)
    if not files:
        pytest.skip(f"no text file in {src}")
    over = [o for o in tiny_overrides if not o.startswith(("data.", "eval."))]
    run, summary = _run(tmp_path, over + ["data.source=text", f"data.text_files=[{files[0]}]", "data.seq_len=64",
                                          "trainer.steps=20", "trainer.lr=1e-2"])
    first = next(r["eval_loss"] for r in run.metrics() if "eval_loss" in r)
    assert summary["pretrain.eval_loss"] <= first


def test_killed_cli_run_resumes(tmp_path, tiny_overrides):
    """SIGKILL the real CLI mid-run, resume it, and match an uninterrupted run."""
    over = [o for o in tiny_overrides if "trainer.steps" not in o] + ["trainer.steps=60"]
    cmd = [sys.executable, "-m", "refinery.cli", "models", "pretrain", str(ROOT / "recipes" / "pretrain.yaml"),
           *over, "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(cmd + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ck.exists() and any((p / "COMPLETE").exists() for p in ck.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "model").exists(), "run finished before it could be killed"
    out = subprocess.run(cmd + ["--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["pretrain.final_loss"] == pytest.approx(full["pretrain.final_loss"], rel=1e-5)
    assert cut["pretrain.eval_loss"] == pytest.approx(full["pretrain.eval_loss"], rel=1e-5)


def test_engine_micro_batches_train_like_one_batch_and_bf16_learns(tmp_path, tiny_overrides):
    """Micro-batches of 3 rows (uneven token counts) accumulate to the same steps as the whole batch; bf16
    autocast with fp32 master weights learns; the summary says the precision and world size."""
    base = tiny_overrides + ["trainer.steps=10", "trainer.lr=1e-2", "eval.n_per_task=0", "data.packing=false"]
    run_a, s_a = _run(tmp_path, base, "a")
    run_b, s_b = _run(tmp_path, base + ["engine.micro_batch_rows=3", "engine.activation_checkpointing=true",
                                        "engine.logprob_chunk_tokens=7"], "b")
    la = [r["loss"] for r in run_a.metrics() if "loss" in r]
    lb = [r["loss"] for r in run_b.metrics() if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-4)
    for (k, a), b in zip(load_model(run_a.path / "model").state_dict().items(),
                         load_model(run_b.path / "model").state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4), k
    assert s_a["precision"] == "fp32" and s_a["world_size"] == 1
    assert all(r["peak_memory_mb"] > 0 for r in run_a.metrics() if "loss" in r)
    run_c, s_c = _run(tmp_path, base + ["trainer.steps=30", "engine.precision=bf16"], "c")
    lc = [r["loss"] for r in run_c.metrics() if "loss" in r]
    assert s_c["precision"] == "bf16" and lc[-1] < lc[0] - 0.5, lc
    assert all(p.dtype == torch.float32 for p in load_model(run_c.path / "model").parameters())


def test_lazy_task_data_draws_the_batches_eager_encoding_would():
    """Examples are rendered and tokenised when a batch first draws them: the same sequences, in the same order, as
    encoding every example up front (and only the drawn ones are encoded)."""
    from refinery.models.io import load_tokenizer
    from refinery.models.pretrain import LazySeqs, TaskData
    from refinery.models.zoo import ModelConfig, TokenizerConfig, build_cached

    items = [{"prompt": f"What is {i} + {i % 7}?", "solution": f"{i} + {i % 7} = {i + i % 7}"} for i in range(300)]
    tok = load_tokenizer(build_cached(ModelConfig(preset="nano"), TokenizerConfig(),
                                      [it["prompt"] + "\n" + it["solution"] for it in items], seed=0))
    data = TaskData(items, items[:4], tok, 64, completion_only=True)
    assert isinstance(data.train, LazySeqs) and len(data.train) == 300 and not data.train.cache
    eager = data.train.encode(items)
    batches = [data.sample(step, 16, seed=3) for step in range(5)]
    assert 0 < len(data.train.cache) <= 80 and all(data.train.cache[i] == eager[i] for i in data.train.cache)
    g = [torch.Generator().manual_seed(3 * 1_000_003 + step) for step in range(5)]
    assert batches == [[eager[i] for i in torch.randint(0, 300, (16,), generator=gg).tolist()] for gg in g]
    assert data.train[-1] == eager[-1] and data.train[2:5] == eager[2:5] and list(data.train)[7] == eager[7]
    with pytest.raises(IndexError):
        data.train[300]
