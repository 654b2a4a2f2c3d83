"""benchmarks/bench_engine_gpu.py, the script gpu_check.sh runs on a GPU: its CPU smoke run, and the batch its TRL
GRPOTrainer row is fed is the same work Refinery's update does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_engine_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_engine_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trl_layout_scores_the_same_tokens_as_refinery():
    """TRL's loss reads cat(prompt_ids, completion_ids) with cat(prompt_mask, completion_mask) and keeps the last
    ``T`` positions' logits; on the fixed batch those log-probs must be Refinery's response log-probs."""
    from refinery.rl.batch import make_batch, response_logprobs

    b = _bench()
    dev = torch.device("cpu")
    model, cfg = b.build("tiny", 64, dev)
    model.eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (12,), generator=g).tolist()
    responses = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (20, 13, 20)]
    batch = make_batch([prompt] * 3, responses, 0)
    inputs = b.fixed_grpo_inputs(batch, torch.tensor([1.0, -1.0, 0.5]), dev)
    assert inputs["completion_mask"].sum().item() == 53 == inputs["num_items_in_batch"].item()
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        T = inputs["completion_ids"].shape[1]
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float()
        trl_logp = logits.log_softmax(-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
        ours, _ = response_logprobs(model, batch, 1.0)
    m = batch.mask.bool()
    assert torch.allclose(trl_logp[m], ours[m], atol=1e-5)


def test_cpu_smoke_run_prints_every_row():
    out = subprocess.run([sys.executable, str(BENCH), "--shape", "tiny", "--device", "cpu", "--tokens", "64",
                          "--rows", "2", "--repeats", "1"] + (["--trl"] if _has_trl() else []),
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("SFT:", "RL update:") + (("TRL SFTTrainer", "TRL GRPOTrainer update") if _has_trl() else ()):
        assert row in out.stdout, out.stdout


def _has_trl() -> bool:
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_cpu_smoke_run_with_trl():
    if not _has_trl():
        pytest.skip("TRL is not installed (make bench installs it; gpu_wheels.sh carries it to the GPU image)")
    test_cpu_smoke_run_prints_every_row()
