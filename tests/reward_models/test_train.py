"""The reward-model runner end to end on a tiny backbone: stages, resume, eval/score CLIs, RL with an RM reward."""

import json
import shutil
from pathlib import Path

import pydantic
import pytest

from refinery.cli import main
from refinery.config import load_config
from refinery.errors import ConfigError
from refinery.reward_models.config import RMConfig
from refinery.reward_models.data import write_pairs
from refinery.reward_models.model import RewardScorer
from refinery.reward_models.synthetic import synthetic_pairs
from refinery.reward_models.train import expo_state, train_rm
from refinery.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]


def tiny(backbone, *extra):
    return load_config(RMConfig, None, [
        f"backbone.path={backbone}", "data.n_train=48", "data.n_valid=16", "data.n_test=24", "trainer.batch_pairs=8",
        "trainer.epochs=1", "trainer.eval_every=3", "trainer.checkpoint_every=3", "trainer.log_every=2",
        "trainer.max_length=64", "trainer.threads=1", "regression.epochs=0.5", "expo.alphas=[1.0, 2.0]",
        "armo.steps=12", "armo.batch_pairs=16", "armo.gate_hidden=16", *extra])


def test_expo_extrapolates_linearly():
    import torch

    init, trained = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}, {"w": torch.tensor([2.0, 0.0]),
                                                                           "n": torch.tensor([3])}
    assert torch.equal(expo_state(init, trained, 1.0)["w"], trained["w"])
    assert torch.equal(expo_state(init, trained, 0.0)["w"], init["w"])
    assert torch.equal(expo_state(init, trained, 2.0)["w"], torch.tensor([3.0, -2.0]))
    assert torch.equal(expo_state(init, trained, 2.0)["n"], torch.tensor([3]))


def test_helpsteer2_pipeline_runs_resumes_and_evaluates(alphabet_model, tmp_path, capsys):
    cfg = tiny(alphabet_model, "pipeline=[regression, bt, expo]", "loss.type=scaled_bt")
    run = RunDir.create(cfg, "rm", out=tmp_path / "run")
    s = train_rm(cfg, run, progress=False)
    for stage in ("regression", "bt", "expo"):
        assert (run.path / "stages" / stage / "COMPLETE").exists()
        assert 0.0 <= s[f"rm.{stage}.accuracy"] <= 1.0
    assert s["rm.expo_alpha"] in (1.0, 2.0) and -1 <= s["rm.length_corr"] <= 1
    assert {"stage"} <= set(run.metrics()[0]) and (run.path / "report.md").exists()
    meta = json.loads((run.path / "model" / "refinery_rm.json").read_text())
    assert meta["stage"] == "expo" and meta["objectives"] == ["helpfulness"]

    # resume after losing the last stage: finished stages are kept, the lost one is redone
    bt_mtime = (run.path / "stages" / "bt" / "model.safetensors").stat().st_mtime
    shutil.rmtree(run.path / "stages" / "expo")
    run2 = RunDir.create(cfg, "rm", out=run.path, resume=True)
    s2 = train_rm(cfg, run2, progress=False)
    assert (run.path / "stages" / "bt" / "model.safetensors").stat().st_mtime == bt_mtime
    assert s2["rm.expo.accuracy"] == s["rm.expo.accuracy"]

    # rm eval on a RewardBench-format file
    data = tmp_path / "pairs.jsonl"
    write_pairs(synthetic_pairs(20, seed=3, split="test"), data)
    assert main(["rm", "eval", "--model", str(run.path / "model"), "--data", str(data),
                 "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(res) >= {"overall", "sections", "subsets"} and res["n"] == 20
    assert "overall" in capsys.readouterr().out


def test_killed_stage_resumes_to_the_same_model(alphabet_model, tmp_path):
    import torch

    cfg = tiny(alphabet_model, "pipeline=[bt]", "trainer.checkpoint_every=100")
    full = train_rm(cfg, RunDir.create(cfg, "rm", out=tmp_path / "full"), progress=False)
    cut = RunDir.create(cfg, "rm", out=tmp_path / "cut")
    assert train_rm(cfg, cut, progress=False, stop_after=4) == {}  # stopped mid-stage, as a crash would
    assert cut.latest_checkpoint().name == "step-0000004" and not (cut.path / "model").exists()
    resumed = train_rm(cfg, RunDir.create(cfg, "rm", out=cut.path, resume=True), progress=False)
    assert resumed["rm.accuracy"] == full["rm.accuracy"]
    a = RewardScorer(tmp_path / "full" / "model").model.state_dict()
    b = RewardScorer(cut.path / "model").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [r["step"] for r in cut.metrics()]
    assert steps == sorted(set(steps))  # nothing logged twice


def test_armo_pipeline_scores_with_objectives_and_gates(alphabet_model, tmp_path, capsys):
    cfg = tiny(alphabet_model, "pipeline=[regression, armo]",
               "regression.objectives=[helpfulness, correctness, verbosity]", "loss.type=bt")
    run = RunDir.create(cfg, "armo", out=tmp_path / "run")
    s = train_rm(cfg, run, progress=False)
    lambdas = json.loads(s["rm.armo.lambdas"])
    assert lambdas["verbosity"] == 1.0 and all(v >= 0 for v in lambdas.values())
    assert -1 <= s["rm.armo.valid_length_corr_without_decorrelation"] <= 1  # the lambda = 0 ablation is reported
    scorer = RewardScorer(run.path / "model")
    out = scorer.score(["Compute 2+2"] * 2, ["2+2=4. The answer is 4.", "2+2=4. The answer is 5."])
    assert len(out["objectives"][0]) == 3 and abs(sum(out["gates"][0]) - 1) < 1e-5
    assert main(["rm", "score", "--model", str(run.path / "model"), "--prompt", "Compute 2+2",
                 "--response", "The answer is 4."]) == 0
    printed = capsys.readouterr().out
    assert "verbosity" in printed and "gate" in printed


def test_config_errors_are_clear(alphabet_model, tmp_path):
    with pytest.raises(ConfigError, match="expo extrapolates a BT model"):
        tiny(alphabet_model, "pipeline=[regression, expo]")
    with pytest.raises(ConfigError, match="out of order"):
        tiny(alphabet_model, "pipeline=[bt, regression]")
    # a file without attributes cannot feed the regression stage
    data = tmp_path / "p.jsonl"
    write_pairs([{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(40)], data)
    cfg = tiny(alphabet_model, "pipeline=[regression, bt]", "data.source=files", f"data.train_file={data}")
    with pytest.raises(ConfigError, match="per-response attributes"):
        train_rm(cfg, RunDir.create(cfg, "x", out=tmp_path / "r"), progress=False)
    assert main(["rm", "eval", "--model", str(tmp_path / "nope"), "--data", str(data)]) == 2


def test_recipes_and_profiles_validate():
    for name in ("helpsteer2_pref", "armorm", "rm_hh_rlhf"):
        for extra in ([], ["profile=tiny"]):
            load_config(RMConfig, ROOT / "recipes" / f"{name}.yaml", extra)


def test_rl_with_a_reward_model_reward(alphabet_model, tmp_path):
    """reward: {type: reward_model, path: ...} — the rollouts are scored by the reward model."""
    from refinery.rl.config import RLConfig
    from refinery.rl.trainer import RLRun

    cfg = tiny(alphabet_model, "pipeline=[bt]")
    rm_run = RunDir.create(cfg, "rm", out=tmp_path / "rm")
    train_rm(cfg, rm_run, progress=False)
    rl = load_config(RLConfig, None, [
        f"policy.path={alphabet_model}", "data.tasks=[arithmetic]", "data.difficulty={arithmetic: [1]}",
        "data.n_train_per_task=40", "data.heldout_per_task=4", "data.valid_per_task=4", "rollout.group_size=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=6", "trainer.steps=1", "trainer.threads=1", "eval.max_new_tokens=6",
        "reward.type=reward_model", f"reward.path={rm_run.path / 'model'}"])
    state = RLRun(rl, RunDir.create(rl, "rl", out=tmp_path / "rl"), alphabet_model)
    groups, _ = state.rollouts(0)
    scorer = RewardScorer(rm_run.path / "model")
    item, comps, rewards, _ = groups[0]
    want = scorer.score([item["prompt"]] * len(comps), [c.text for c in comps])["score"]
    assert rewards.tolist() == pytest.approx(want, abs=1e-5)
    with pytest.raises(ConfigError, match="reward.path"):
        load_config(RLConfig, None, ["reward.type=reward_model"])


def test_rm_train_cli_with_a_recipe_profile_leaves_an_evaluable_model(alphabet_model, tmp_path):
    out = tmp_path / "armo"
    over = [f"backbone.path={alphabet_model}", "data.n_train=32", "data.n_valid=8", "data.n_test=16",
            "trainer.epochs=1", "trainer.batch_pairs=8", "trainer.max_length=48", "trainer.threads=1", "armo.steps=4",
            "armo.gate_hidden=8"]
    assert main(["rm", "train", str(ROOT / "recipes" / "armorm.yaml"), "profile=tiny", *over, "--out", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rm.pipeline"] == "bt+armo" and (out / "model" / "armo.safetensors").exists()
    data = tmp_path / "pairs.jsonl"
    write_pairs(synthetic_pairs(8, seed=5, split="test"), data)
    assert main(["rm", "eval", "--model", str(out / "model"), "--data", str(data)]) == 0


def test_backbone_data_and_head_seeds_are_separate(monkeypatch):
    """A benchmark that varies the head seed must keep the backbone and the pairs fixed (and vice versa)."""
    import refinery.models.pretrain as pretrain
    from refinery.reward_models.train import load_data, resolve_backbone

    def cfg(*o):
        return load_config(RMConfig, None, ["data.n_train=20", "data.n_valid=4", "data.n_test=6", *o])

    same = [load_data(cfg(f"seed={s}", "data.seed=7")) for s in (0, 1)]
    assert same[0] == same[1]
    assert load_data(cfg("seed=0")) != load_data(cfg("seed=1"))  # unset: the run's seed drives the data too
    seen = []
    monkeypatch.setattr(pretrain, "cached_pretrain", lambda boot, seed, progress: seen.append(seed) or Path("x"))
    resolve_backbone(cfg("seed=3", "backbone.seed=0"), False)
    resolve_backbone(cfg("seed=3"), False)
    assert seen == [0, 3]


def test_warmup_steps_override_ratio_and_betas_reach_adamw():
    from refinery.reward_models.config import RMTrainer
    from refinery.reward_models.train import _lr

    t = RMTrainer(warmup_ratio=0.5, warmup_steps=10, schedule="constant")  # HelpSteer2-Preference: 10 steps
    assert _lr(0, 105, 1.0, t) == pytest.approx(0.1) and _lr(9, 105, 1.0, t) == pytest.approx(1.0)
    assert _lr(10, 105, 1.0, t) == 1.0 and _lr(104, 105, 1.0, t) == 1.0
    assert _lr(0, 4, 1.0, t) == pytest.approx(0.25)  # a warm-up longer than the run is capped at the run
    with pytest.raises(pydantic.ValidationError):
        RMTrainer(betas=(0.9,))


def test_recipes_carry_the_papers_numbers_and_tiny_names_its_departures():
    from refinery.config import load_config
    from refinery.reward_models.config import RMConfig

    root = Path(__file__).resolve().parents[2] / "recipes"
    hs = load_config(RMConfig, root / "helpsteer2_pref.yaml", [])
    assert (hs.regression.lr, hs.trainer.lr) == (2e-6, 1e-6) and hs.regression.epochs == 2 and hs.trainer.epochs == 1
    assert (hs.trainer.schedule, hs.trainer.warmup_steps, hs.trainer.weight_decay) == ("constant", 10, 0.1)
    assert hs.trainer.betas == (0.9, 0.98) and hs.trainer.batch_pairs == 64
    tiny = load_config(RMConfig, root / "helpsteer2_pref.yaml", ["profile=tiny"])
    assert tiny.trainer.schedule == "cosine" and tiny.trainer.warmup_steps is None and tiny.trainer.weight_decay == 0
    armo = load_config(RMConfig, root / "armorm.yaml", [])
    assert (armo.armo.batch_pairs, armo.armo.steps, armo.armo.schedule) == (1024, 2000, "cosine")
    assert min(armo.armo.ridge_alphas) == 1e-4 and max(armo.armo.ridge_alphas) == 1e4


def test_lr_schedules():
    from refinery.reward_models.config import RMTrainer
    from refinery.reward_models.train import _lr

    cos = RMTrainer(warmup_ratio=0.1, min_lr_ratio=0.1)
    const = RMTrainer(warmup_ratio=0.1, schedule="constant")
    assert _lr(0, 100, 1.0, cos) == _lr(0, 100, 1.0, const) == pytest.approx(0.1)  # same linear warm-up
    assert _lr(99, 100, 1.0, const) == 1.0 and _lr(50, 100, 1.0, const) == 1.0
    assert _lr(100, 100, 1.0, cos) == pytest.approx(0.1)  # cosine ends at the floor
