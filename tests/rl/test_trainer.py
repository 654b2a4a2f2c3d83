import json
from pathlib import Path

import pytest
import torch

from refinery.cli import main
from refinery.config import load_config
from refinery.errors import ConfigError
from refinery.rl.config import RLConfig
from refinery.rl.trainer import RLRun, train_rl
from refinery.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A small policy that solves some one-digit sums (seconds to train)."""
    from refinery.models.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, None, [
        "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=128", "model.vocab_size=320", "data.tasks=[arithmetic]",
        "data.difficulty={arithmetic: [1]}", "data.n_train_per_task=150", "data.n_test_per_task=10",
        "data.completion_only=true", "trainer.steps=150", "trainer.batch_size=32", "trainer.lr=1e-2",
        "trainer.warmup_steps=5", "trainer.eval_every=150", "trainer.checkpoint_every=150", "eval.n_per_task=0"])
    root = tmp_path_factory.mktemp("policy")
    run = RunDir.create(cfg, "p", out=root / "run")
    pretrain(cfg, run, progress=False)
    return run.path / "model"


def rl_cfg(policy, *extra):
    return load_config(RLConfig, None, [
        f"policy.path={policy}", "data.tasks=[arithmetic]", "data.difficulty={arithmetic: [1, 2]}",
        "data.n_train_per_task=150", "data.heldout_per_task=15", "data.valid_per_task=8", "rollout.group_size=4",
        "rollout.prompts_per_step=4", "rollout.max_new_tokens=12", "trainer.lr=1e-4", "trainer.steps=4",
        "trainer.eval_every=2", "trainer.checkpoint_every=2", "trainer.eval_prompts=10", "eval.max_new_tokens=12",
        "trainer.threads=1", *extra])


def _scripted_router(state, informative: set[str]):
    """Rewards decided by the prompt: mixed for the ids in ``informative``, all-equal for the rest; records the
    prompts asked for, in order."""
    asked: list[str] = []

    def group(item, responses, opened=False):
        asked.append(item["id"])
        mixed = item["id"] in informative
        return [(float(mixed and i == 0), mixed and i == 0) for i in range(len(responses))]

    state.router.group = group
    return asked


def test_dynamic_sampling_refills_without_repeats_and_never_trains_a_partial_batch(policy, tmp_path):
    from refinery.errors import TrainingError

    cfg = rl_cfg(policy, "algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=5",
                 "data.n_train_per_task=40")
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "r"), policy)
    ids = [it["id"] for it in state.train_items["arithmetic"]]
    asked = _scripted_router(state, set(ids[::3]))  # a third of the prompts carry a signal
    groups, info = state.rollouts(0)
    assert len(groups) == 4 and all(float(g[2].max() - g[2].min()) > 0 for g in groups)
    assert len(asked) == len(set(asked))  # no prompt twice in one step, across refill rounds
    assert info["rounds"] > 1 and info["seen_groups"] == len(asked)
    # too few informative prompts: an error that says what to do, never a partial batch
    asked = _scripted_router(state, set(ids[:2]))
    with pytest.raises(TrainingError, match="2 of 4 prompt groups with mixed rewards after 5 generation rounds"):
        state.rollouts(1)
    assert len(asked) == len(set(asked)) > 4  # it went back for more, never for the same prompt
    off = rl_cfg(policy)
    state2 = RLRun(off, RunDir.create(off, "t", out=tmp_path / "r2"), policy)
    _scripted_router(state2, set())
    groups2, info2 = state2.rollouts(0)
    assert len(groups2) == 4 and info2["rounds"] == 1 and info2["filtered_group_rate"] == 0


def test_stage_plan_overrides_group_size_lr_budget_and_overlong_filter(policy, tmp_path):
    cfg = rl_cfg(policy, "controllers.stages=[{steps: 1, group_size: 2, lr: 0.001, max_new_tokens: 5, "
                         "overlong_filter: true}, {group_size: 3}]", "trainer.steps=2")
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "r"), policy)
    assert (state.group_size(), state.lr(), state.max_new_tokens(), state.overlong_filter()) == (2, 1e-3, 5, True)
    row = state.step(0)
    assert row["samples"] == 4 * 2 and row["max_new_tokens"] == 5 and state.opt.param_groups[0]["lr"] == 1e-3
    assert (state.group_size(), state.lr(), state.max_new_tokens(), state.overlong_filter()) == (3, 1e-4, 12, False)
    row = state.step(1)
    assert row["samples"] == 4 * 3 and state.opt.param_groups[0]["lr"] == 1e-4
    with pytest.raises(ConfigError, match="not in data.tasks"):
        rl_cfg(policy, "controllers.stages=[{tasks: [countdown]}]")


def test_lr_decay_holds_then_cools_down_to_the_floor(policy, tmp_path):
    from refinery.rl.trainer import lr_factor

    tr = rl_cfg(policy, "trainer.steps=11", "trainer.lr_decay=linear", "trainer.lr_decay_start=0.5").trainer
    assert [round(lr_factor(tr, s), 3) for s in (0, 5, 6, 8, 10)] == [1.0, 1.0, 0.9, 0.5, 0.1]
    tr = tr.model_copy(update={"lr_decay": "cosine", "lr_decay_start": 0.0, "min_lr_ratio": 0.0})
    assert [round(lr_factor(tr, s), 3) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert lr_factor(tr.model_copy(update={"lr_decay": "none"}), 10) == 1.0
    cfg = rl_cfg(policy, "trainer.steps=2", "trainer.lr_decay=linear", "trainer.min_lr_ratio=0.5")
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "r"), policy)
    rows = [state.step(0), state.step(1)]  # the optimizer steps with the scheduled LR, and the row says which
    assert [r["lr"] for r in rows] == [1e-4, 5e-5] and state.opt.param_groups[0]["lr"] == 5e-5


def test_entropy_bonus_moves_the_policy(policy, tmp_path):
    """entropy_coef reaches the gradient (it used to change only the logged loss)."""
    from refinery.generation import Completion

    def update(coef: float, tag: str):
        cfg = rl_cfg(policy, f"algorithm.entropy_coef={coef}", "rollout.group_size=2")
        state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / tag), policy)
        item = state.train_items["arithmetic"][0]
        comps = [Completion(text="", token_ids=state.gen.encode("1+1=2")[:3], finish_reason="stop")
                 for _ in range(2)]
        state.update([(item, comps, torch.tensor([1.0, 1.0]), [True, True])])  # zero advantage: only entropy
        return [p.detach().clone() for p in state.model.parameters()]

    base, bonus = update(0.0, "a"), update(0.5, "b")
    assert all(torch.equal(a, b) for a, b in zip(base, update(0.0, "c")))
    assert any(not torch.equal(a, b) for a, b in zip(base, bonus))


def test_file_items_split_by_source_document(tmp_path):
    from refinery.rl.trainer import split_by_source

    items = [{"prompt": f"q{d} {form}", "answer": "1", "source_doc": f"doc{d}"} for d in range(30)
             for form in ("mcq", "open")]
    train, test, valid = split_by_source(items, 10, 6, "0:x")
    docs = [{it["source_doc"] for it in part} for part in (train, test, valid)]
    assert not docs[0] & docs[1] and not docs[0] & docs[2] and not docs[1] & docs[2]
    assert len(test) == 10 and len(valid) == 6 and len(train) == 44


def test_rl_run_writes_summary_report_and_resumes_exactly(policy, tmp_path):
    cfg = rl_cfg(policy, "algorithm.kl_coef=0.01", "controllers.reference_reset.every=2",
                 "controllers.temperature.enabled=true", "trainer.mini_batch_prompts=2")
    full = train_rl(cfg, RunDir.create(cfg, "t", out=tmp_path / "full"), progress=False)
    for key in ("accuracy_before", "accuracy_after", "heldout_n", "rl.reference_resets"):
        assert key in full, key
    assert full["heldout_n"] == 15 and full["rl.reference_resets"] == 2
    assert (tmp_path / "full" / "plots" / "rl_metrics.png").exists()
    assert "Held-out accuracy" in (tmp_path / "full" / "report.md").read_text()
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "entropy", "kl", "clip_frac", "response_length", "truncation_rate", "tokens_per_s",
            "filtered_group_rate", "temperature"} <= set(rows[1])

    cut = RunDir.create(cfg, "t", out=tmp_path / "cut")
    train_rl(cfg, cut, progress=False, stop_after=2)
    resumed = train_rl(cfg, RunDir.create(cfg, "t", out=tmp_path / "cut", resume=True), progress=False)
    assert resumed["accuracy_after"] == full["accuracy_after"]
    a = [r.get("reward") for r in map(json.loads, (tmp_path / "full" / "metrics.jsonl").read_text().splitlines())]
    b = [r.get("reward") for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())]
    assert a == b  # same rollouts and rewards after the resume


def test_recipes_and_profiles_validate():
    for name in ("prorl", "acereason", "acereason_1_1", "crossthink"):
        paper = load_config(RLConfig, ROOT / "recipes" / f"{name}.yaml")
        tiny = load_config(RLConfig, ROOT / "recipes" / f"{name}.yaml", ["profile=tiny"])
        assert tiny.profile == "tiny" and tiny.rollout.prompts_per_step < paper.rollout.prompts_per_step
    prorl = load_config(RLConfig, ROOT / "recipes" / "prorl.yaml")
    assert (prorl.algorithm.eps_low, prorl.algorithm.eps_high, prorl.rollout.group_size) == (0.2, 0.4, 16)
    assert (prorl.rollout.prompts_per_step, prorl.trainer.mini_batch_prompts, prorl.trainer.lr) == (256, 64, 2e-6)
    assert (prorl.algorithm.kl_estimator, prorl.algorithm.kl_input_clamp, prorl.algorithm.kl_output_clamp) == \
        ("k2", 20.0, 10.0)  # NeMo-RL prorlv2
    ace = load_config(RLConfig, ROOT / "recipes" / "acereason.yaml")
    plan = [(s.tasks, s.max_new_tokens, s.group_size, s.lr, s.overlong_filter) for s in ace.controllers.stages]
    assert [p[1] for p in plan] == [8192, 16384, 24576, 32768, 24576, 32768]
    assert [p[2] for p in plan] == [8, 8, 16, 16, 16, 16] and {p[3] for p in plan[:4]} == {1e-6}
    assert {p[3] for p in plan[4:]} == {5e-6} and plan[3][4] is False and plan[0][4] is True
    assert ace.algorithm.kl_coef == 0 and ace.trainer.mini_batch_prompts is None
    ace11 = load_config(RLConfig, ROOT / "recipes" / "acereason_1_1.yaml")
    assert ace11.controllers.stages[-1].tasks == ["countdown"] and ace11.controllers.temperature.enabled
    ct = load_config(RLConfig, ROOT / "recipes" / "crossthink.yaml")
    assert ct.algorithm.format_required
    # an explicit override beats the profile
    over = load_config(RLConfig, ROOT / "recipes" / "prorl.yaml", ["profile=tiny", "trainer.steps=7"])
    assert over.trainer.steps == 7
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config(RLConfig, ROOT / "recipes" / "prorl.yaml", ["profile=huge"])
    with pytest.raises(ConfigError, match="multiple of"):
        load_config(RLConfig, None, ["rollout.prompts_per_step=10", "trainer.mini_batch_prompts=4"])


def test_rl_cli_dry_run_and_errors(capsys):
    assert main(["rl", "train", str(ROOT / "recipes/prorl.yaml"), "profile=tiny", "--dry-run"]) == 0
    assert "eps_high: 0.4" in capsys.readouterr().out
    assert main(["rl", "train", str(ROOT / "recipes/prorl.yaml"), "algorithm.eps_hi=1", "--dry-run"]) == 2
    assert "did you mean 'algorithm.eps_high'" in capsys.readouterr().err


def test_fewer_groups_than_a_mini_batch(policy, tmp_path):
    """Dynamic sampling may keep fewer groups than one mini-batch: the update still runs on what is there."""
    cfg = rl_cfg(policy, "trainer.mini_batch_prompts=2", "rollout.prompts_per_step=4")
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "r"), policy)
    groups, _ = state.rollouts(0)
    before = [p.detach().clone() for p in state.model.parameters()]
    stats = state.update(groups[:1])  # one group, mini-batch of two
    assert stats["samples"] == cfg.rollout.group_size
    mixed = float(groups[0][2].max() - groups[0][2].min()) > 0
    changed = any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters()))
    assert changed or not mixed


def test_training_logprobs_equal_sampling_logprobs(policy):
    """The update must score exactly the tokens that were sampled, in the context they were sampled in."""
    from refinery.generation import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.rl.batch import make_batch, response_logprobs
    from refinery.rl.trainer import chat
    from refinery.tasks import sample

    gen = HFGenerator(policy)
    items = sample("arithmetic", 5, seed=2, difficulty=[1, 2])
    out = gen.generate([chat(it) for it in items], SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=1,
                                                                  logprobs=True))
    prompts = [gen.encode(chat(it)) for it in items for _ in range(2)]
    batch = make_batch(prompts, [c.token_ids for c in out], gen.tokenizer.pad_token_id)
    assert len(batch.prompt_ids) == 5 and batch.owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with torch.no_grad():
        logp, _ = response_logprobs(gen.model, batch, 1.0)
    for i, c in enumerate(out):
        assert torch.allclose(logp[i, :len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4)
        assert batch.mask[i].sum() == len(c.token_ids)


def test_shared_prompt_scoring_equals_full_sequences(policy):
    """Encoding each group's prompt once gives the log-probs *and gradients* of running every full sequence."""
    from refinery.models.io import load_model
    from refinery.rl.batch import make_batch, response_logprobs

    model = load_model(policy)
    prompts = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10], [9, 10], [9, 10]]
    responses = [[11, 12, 13], [14], [15, 16, 17, 18, 19], [20, 21], [22, 23, 24]]
    batch = make_batch(prompts, responses, pad_id=0)
    rows = torch.tensor([1, 2, 4])  # a sub-batch, as a mini-batch update takes
    logp, ent = response_logprobs(model, batch, 0.7, rows=rows, with_entropy=True)
    (logp * batch.mask[rows]).sum().backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = 0
    for j, r in enumerate(rows.tolist()):
        seq = torch.tensor([prompts[r] + responses[r]])
        logits = model(seq).logits[0, len(prompts[r]) - 1:-1].float() / 0.7
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(responses[r])[:, None]).squeeze(-1)
        assert torch.allclose(logp[j, :len(responses[r])], lp, atol=1e-5)
        total = total + lp.sum()
    total.backward()
    for a, p in zip(shared, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4)
    assert ent.shape == logp.shape and not ent.requires_grad
    _, ent_g = response_logprobs(model, batch, 0.7, rows=rows, with_entropy=True, entropy_grad=True)
    assert ent_g.requires_grad and torch.allclose(ent_g, ent)


def test_overlong_filter_masks_truncated_samples(policy, tmp_path):
    """All samples cut by the length limit: with the filter they carry no gradient, without it they do."""
    from refinery.generation import Completion

    def moved(filter_on: bool) -> tuple[bool, float]:
        cfg = rl_cfg(policy, f"algorithm.overlong_filter={str(filter_on).lower()}", "rollout.group_size=2")
        state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / f"r{filter_on}"), policy)
        item = state.train_items["arithmetic"][0]
        comps = [Completion(text="", token_ids=state.gen.encode("1+1=2")[:3], finish_reason="length") for _ in range(2)]
        before = [p.detach().clone() for p in state.model.parameters()]
        stats = state.update([(item, comps, torch.tensor([1.0, 0.0]), [True, False])])
        return any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters())), stats["truncation_rate"]

    assert moved(True) == (False, 1.0)
    assert moved(False) == (True, 1.0)


def test_rl_trains_on_prompt_files_routed_by_domain(policy, tmp_path):
    """crossthink_data / acereason_curation output feeds the trainer: each item is scored by its domain's verifier."""
    import json

    from refinery.rl.trainer import load_items

    f = tmp_path / "mix.jsonl"
    items = [{"prompt": f"Compute {a}+{b}", "answer": str(a + b), "domain": "math"} for a in range(1, 6)
             for b in range(1, 5)]
    items += [{"prompt": f"Is {n} even?\n(A) yes\n(B) no\nAnswer with the letter.", "answer": "A" if n % 2 == 0
               else "B", "domain": "choice", "task": "choice_items"} for n in range(12)]
    f.write_text("".join(json.dumps(it) + "\n" for it in items))
    cfg = rl_cfg(policy, "data.tasks=[]", f"data.files=[{f}]", "data.heldout_per_task=4", "trainer.steps=2")
    train, held, valid = load_items(cfg)
    assert sorted(train) == ["choice_items", "mix"] and len(held) == 8 and len(valid) == 4 + 2
    assert len(train["mix"]) == 12 and len(train["choice_items"]) == 6
    summary = train_rl(cfg, RunDir.create(cfg, "t", out=tmp_path / "r"), progress=False)
    assert summary["rl.steps"] == 2 and "rl.accuracy.mix_after" in summary and "rl.accuracy.choice_items_after" \
        in summary
    from refinery.rl.rewards import RewardRouter

    router = RewardRouter()
    choice = next(it for it in held + train["choice_items"] if it["domain"] == "choice")
    assert router(choice, f"The answer is ({choice['answer']})")[1]


def test_router_scores_a_code_group_together_with_the_format_reward():
    from refinery.rl.rewards import RewardRouter

    strict = RewardRouter(format_required=True)  # CrossThink: right answer AND right format
    math_item = {"id": "m-1", "task": "arithmetic", "prompt": "Compute 3+4", "answer": "7"}
    assert strict(math_item, "The answer is 7.") == (0.0, True)  # right, but not boxed: no reward
    assert strict(math_item, "3+4=7, so \\boxed{7}")[0] == 1.0
    assert strict(math_item, "\\boxed{8}")[0] == 0.0
    router = RewardRouter(format_weight=0.5)
    try:
        item = {"id": "c-1", "prompt": "write f", "tests": {"kind": "functional", "asserts": ["assert f(2) == 4"]}}
        good = "<think>double</think>\n```python\ndef f(x):\n    return 2 * x\n```\n\\boxed{done}"
        wrong = "```python\ndef f(x):\n    return x\n```"
        out = router.group(item, [good, wrong, "no code at all"])
        assert [ok for _, ok in out] == [True, False, False]
        assert out[0][0] > out[1][0] and out[0][0] == router(item, good)[0]  # same reward as one at a time
    finally:
        router.close()


def _update_with(policy, tmp_path, name, *engine):
    from refinery.generation import Completion

    cfg = rl_cfg(policy, "rollout.group_size=3", "algorithm.kl_coef=0.01", "trainer.mini_batch_prompts=2", *engine)
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / name), policy)
    groups = []
    for k, item in enumerate(state.train_items["arithmetic"][:4]):
        texts = ["1+1=2", f"{k} is the answer", "no idea at all, really"]
        comps = [Completion(text=t, token_ids=state.gen.encode(t)[: 4 + 3 * j], finish_reason="stop")
                 for j, t in enumerate(texts)]
        groups.append((item, comps, torch.tensor([1.0, 0.0, 0.5 * (k % 2)]), [True, False, False]))
    stats = state.update(groups)
    return [p.detach().clone() for p in state.model.parameters()], stats


def test_a_response_cut_off_inside_its_thinking_counts_as_truncated(policy, tmp_path):
    """An unclosed <think> that stopped (EOS) is truncated like a length stop: the overlong filter masks it."""
    from refinery.generation import Completion

    cfg = rl_cfg(policy, "rollout.group_size=3", "algorithm.overlong_filter=true")
    state = RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "think"), policy)
    groups = []
    for item in state.train_items["arithmetic"][:2]:
        texts = ["<think>1+1</think>The answer is 2", "<think>1+1 is", "The answer is 2"]
        reasons = ["stop", "stop", "length"]
        comps = [Completion(text=t, token_ids=state.gen.encode(t)[:6], finish_reason=r) for t, r in zip(texts, reasons)]
        groups.append((item, comps, torch.tensor([1.0, 0.0, 0.0]), [True, False, False]))
    stats = state.update(groups)
    assert stats["truncation_rate"] == pytest.approx(2 / 3)


def test_engine_micro_batches_and_checkpointing_give_the_same_update(policy, tmp_path):
    """Two mini-batches (old log-probs matter), a KL reference: micro-batches of 2 rows, activation checkpointing
    and tiny log-prob chunks change memory, not the update."""
    base, st = _update_with(policy, tmp_path, "base")
    for name, extra in [("micro", ["engine.micro_batch_rows=2"]),
                        ("ckpt", ["engine.activation_checkpointing=true", "engine.logprob_chunk_tokens=3"])]:
        params, st2 = _update_with(policy, tmp_path, name, *extra)
        # AdamW's first step moves each weight by ~lr (1e-4) times the sign of its gradient, so near-zero gradients
        # turn float-order noise into ~1e-6 differences; a wrong update moves entries by up to 2 lr
        for a, b in zip(base, params):
            assert torch.allclose(a, b, atol=1e-5), (name, float((a - b).abs().max()), a.shape)
        assert st2["kl"] == pytest.approx(st["kl"], abs=1e-6) and st2["clip_frac"] == pytest.approx(st["clip_frac"])
    assert st["peak_memory_mb"] > 0


def test_engine_bf16_update_trains(policy, tmp_path):
    """bf16 autocast with fp32 master weights: parameters stay fp32 and move close to the fp32 update."""
    base, _ = _update_with(policy, tmp_path, "fp32")
    params, st = _update_with(policy, tmp_path, "bf16", "engine.precision=bf16")
    assert all(p.dtype == torch.float32 for p in params)
    moved = sum(float((a - b).abs().sum()) for a, b in zip(base, params))
    assert moved > 0 and st["kl"] >= 0
    from refinery.models.io import load_model

    start = list(load_model(policy).parameters())
    d_fp32 = torch.cat([(a - s).flatten() for a, s in zip(base, start)])
    d_bf16 = torch.cat([(a - s).flatten() for a, s in zip(params, start)])
    assert torch.nn.functional.cosine_similarity(d_fp32, d_bf16, dim=0) > 0.9


def test_engine_cuda_without_cuda_is_a_clear_error(policy, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    cfg = rl_cfg(policy, "engine.device=cuda")
    with pytest.raises(ConfigError, match="no CUDA"):
        RLRun(cfg, RunDir.create(cfg, "t", out=tmp_path / "c"), policy)


def test_old_logprobs_skip_only_the_first_mini_batch(policy, tmp_path, monkeypatch):
    """The first mini-batch's old log-probs are the update's own (no step has been taken): the policy is scored
    before the update on the later mini-batches only, and over two epochs the update equals one whose old
    log-probs all come from a full pass first (today's reference behaviour)."""
    scored = []
    real = RLRun._score

    def spy(self, model, batch, T, rows=None):
        if model is self.model:
            scored.append(len(batch) if rows is None else len(rows))
        return real(self, model, batch, T, rows)

    monkeypatch.setattr(RLRun, "_score", spy)
    fast, st = _update_with(policy, tmp_path, "fast", "trainer.epochs=2")
    assert scored == [6]  # 12 rows in two mini-batches of 6: only the second is scored up front
    assert st["clip_frac"] >= 0

    def full_pass(self, batch, T, chunks):  # every row scored up front, nothing filled in by the update
        return real(self, self.model, batch, T).float(), None

    monkeypatch.setattr(RLRun, "_old_logprobs", full_pass)
    ref, _ = _update_with(policy, tmp_path, "full", "trainer.epochs=2")
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    # the comparison can fail: old log-probs of zero (nothing filled in) move the weights differently
    monkeypatch.setattr(RLRun, "_old_logprobs", lambda self, batch, T, chunks: (torch.zeros(batch.mask.shape), None))
    bad, _ = _update_with(policy, tmp_path, "bad", "trainer.epochs=2")
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(fast, bad))
