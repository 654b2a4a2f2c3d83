"""The sampler/trainer log-prob mismatch correction (TIS / MIS) through the real trainer, and the vLLM backend's
guard where vLLM is absent."""

import json

import pytest
import torch

from refinery.errors import ConfigError
from refinery.rl.trainer import RLRun, train_rl
from refinery.runs import RunDir
from tests.rl.test_trainer import policy, rl_cfg  # noqa: F401  (the module's policy fixture)


def test_processed_logprobs_are_the_trainers_at_the_sampling_temperature(policy):  # noqa: F811
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.rl.batch import make_batch, response_logprobs
    from refinery.rl.trainer import chat
    from refinery.tasks import sample

    gen = HFGenerator(policy)
    items = sample("arithmetic", 4, seed=3, difficulty=[1, 2])
    sp = SamplingParams(n=2, temperature=1.7, max_new_tokens=10, seed=4, logprobs=True, logprobs_mode="processed")
    out = gen.generate([chat(it) for it in items], sp)
    raw = gen.generate([chat(it) for it in items], sp.model_copy(update={"logprobs_mode": "raw"}))
    batch = make_batch([gen.encode(chat(it)) for it in items for _ in range(2)], [c.token_ids for c in out],
                       gen.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = response_logprobs(gen.model, batch, 1.7)
    for i, (c, r) in enumerate(zip(out, raw)):
        assert c.token_ids == r.token_ids  # the mode changes what is reported, not what is sampled
        assert torch.allclose(logp[i, :len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4)
    assert max(abs(a - b) for c, r in zip(out, raw) for a, b in zip(c.logprobs, r.logprobs)) > 1e-2


def _groups(state, shift: float):
    """Sampled groups whose reported rollout log-probs sit ``shift`` nats below the trainer's (ratio e^shift)."""
    from refinery.generation import SamplingParams
    from refinery.rl.batch import make_batch, response_logprobs
    from refinery.rl.trainer import chat

    items = state.train_items["arithmetic"][:2]
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=5, logprobs=True, logprobs_mode="processed")
    out = state.gen.generate([chat(it) for it in items], sp)
    batch = make_batch([state.gen.encode(chat(it)) for it in items for _ in range(3)], [c.token_ids for c in out],
                       state.tok.pad_token_id)
    with torch.no_grad():
        logp, _ = response_logprobs(state.model, batch, 1.0)
    for i, c in enumerate(out):
        c.logprobs = (logp[i, :len(c.token_ids)] - shift).tolist()
    return [(it, out[3 * k:3 * k + 3], torch.tensor([1.0, 0.0, 0.5]), [True, False, False])
            for k, it in enumerate(items)]


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask"])
def test_weights_reach_the_update(policy, tmp_path, mode):  # noqa: F811
    cfg = rl_cfg(policy, f"algorithm.rollout_correction={mode}", "rollout.group_size=3")
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / mode), policy)
    before = [p.detach().clone() for p in state.model.parameters()]
    st = state.update(_groups(state, 1.5))  # every ratio is e^1.5 > cap 2
    assert st["is_capped_frac"] == pytest.approx(1.0) and st["rollout_kl"] == pytest.approx(-1.5, abs=1e-4)
    moved = max(float((a - p.detach()).abs().max()) for a, p in zip(before, state.model.parameters()))
    if mode == "token_truncate":
        assert st["is_weight_mean"] == pytest.approx(2.0, abs=1e-5) and moved > 0
    else:  # masked: no token keeps a policy gradient, so the first update does not move the policy
        assert st["is_weight_mean"] == 0 and moved == 0
    agree = state.update(_groups(state, 0.0))
    assert agree["is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and abs(agree["rollout_kl"]) < 1e-4


def test_a_run_with_the_hf_sampler_has_no_mismatch(policy, tmp_path):  # noqa: F811
    cfg = rl_cfg(policy, "algorithm.rollout_correction=token_truncate", "trainer.steps=2")
    run = RunDir.create(cfg, "t", out=tmp_path / "run")
    train_rl(cfg, run, progress=False)
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "rollout_kl" in r]
    assert len(rows) == 2 and all(abs(r["rollout_kl"]) < 1e-4 and abs(r["is_weight_mean"] - 1) < 1e-3 for r in rows)


def test_vllm_backend_needs_vllm_and_cuda(policy, tmp_path):  # noqa: F811
    from refinery.generation.vllm import vllm_available

    if vllm_available():
        pytest.skip("vLLM and CUDA are present: the guard does not apply")
    cfg = rl_cfg(policy, "rollout.backend=vllm")
    with pytest.raises(ConfigError, match="rollout.backend=vllm needs vLLM and a CUDA GPU"):
        RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "v"), policy)
