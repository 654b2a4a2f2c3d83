import json
import subprocess
import sys
from pathlib import Path

import pytest

from refinery.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout: float = 300):
    """The real console entry point in a subprocess: exit code, stdout, stderr."""
    out = subprocess.run([sys.executable, "-m", "refinery.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    return out.returncode, out.stdout, out.stderr


def one_line_error(code, out, err):
    assert code != 0
    assert "Traceback" not in out + err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.parametrize("group", ["models", "tasks", "sft", "rl", "rm", "compress", "data"])
def test_help_everywhere(group, capsys):
    assert main([group, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [["models", "build"], ["models", "pretrain"], ["models", "info"], ["tasks", "list"],
                                 ["tasks", "sample"], ["quickstart"], ["data", "run"], ["data", "extract-math"],
                                 ["compress", "puzzle"]])
def test_help_on_commands(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "refinery" in capsys.readouterr().out


@pytest.mark.parametrize("args,msg", [
    (["models", "pretrain", "missing.yaml"], "does not exist"),
    (["models", "pretrain", ROOT / "recipes/pretrain.yaml", "trainer.lrr=1", "--dry-run"], "did you mean 'trainer.lr'"),
    (["models", "pretrain", ROOT / "recipes/pretrain.yaml", "trainer.steps=many", "--dry-run"], "trainer.steps"),
    (["models", "pretrain", ROOT / "recipes/pretrain.yaml", "--resume"], "--resume needs --out"),
    (["models", "info", "/nonexistent/model"], "does not exist"),
    (["tasks", "sample", "arithmatic", "--out", "/tmp/x.jsonl"], "did you mean 'arithmetic'"),
    (["tasks", "sample", "arithmetic", "--difficulty", "a,b", "--out", "/tmp/x.jsonl"], "--difficulty"),
])
def test_bad_input_gives_one_clear_line(args, msg):
    line = one_line_error(*run_cli(*args))
    assert msg in line


def test_malformed_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  steps: [1,\n")
    assert "malformed YAML" in one_line_error(*run_cli("models", "pretrain", bad))


def test_corrupt_checkpoint_info(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert "cannot load model" in one_line_error(*run_cli("models", "info", tmp_path))


def test_dry_run_prints_resolved_config(capsys):
    assert main(["models", "pretrain", str(ROOT / "recipes/pretrain.yaml"), "trainer.lr=1e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0001" in out and "preset: nano" in out


def test_tasks_sample_writes_jsonl_and_splits_are_disjoint(tmp_path, capsys):
    assert main(["tasks", "sample", "word_problems", "--n", "50", "--out", str(tmp_path / "tr.jsonl")]) == 0
    assert main(["tasks", "sample", "word_problems", "--n", "50", "--split", "test", "--seed", "3",
                 "--out", str(tmp_path / "te.jsonl")]) == 0
    tr = [json.loads(x) for x in (tmp_path / "tr.jsonl").read_text().splitlines()]
    te = [json.loads(x) for x in (tmp_path / "te.jsonl").read_text().splitlines()]
    assert len(tr) == len(te) == 50
    assert not {x["prompt"] for x in tr} & {x["prompt"] for x in te}


def test_models_build_and_info(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world 123 " * 200)
    assert main(["models", "build", "nano", "--corpus", str(corpus), "--out", str(tmp_path / "m")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sparsity_2_4_ready"] and info["chat_template"] and 0.9e6 < info["params"] < 3e6
    assert main(["models", "info", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == info["params"]


def test_quickstart_small(tmp_path, tiny_overrides, capsys):
    over = [f"pretrain.{o}" for o in tiny_overrides] + [
        "rl.data.tasks=[arithmetic]", "rl.data.difficulty={arithmetic: [2]}", "rl.data.n_train_per_task=50",
        "rl.data.heldout_per_task=8", "rl.rollout.group_size=2", "rl.rollout.prompts_per_step=2",
        "rl.rollout.max_new_tokens=8", "rl.trainer.steps=2", "rl.trainer.mini_batch_prompts=null",
        "rl.trainer.eval_every=2", "rl.trainer.checkpoint_every=2", "rl.eval.max_new_tokens=8",
        "rl.trainer.threads=1", "rl.data.valid_per_task=4",
        # a policy this small solves nothing: no group has mixed rewards, and dynamic sampling (rightly) refuses
        # to train on a partial batch; the plumbing is what this test is about
        "rl.algorithm.dynamic_sampling=false", "rm.data.n_train=32", "rm.data.n_valid=8", "rm.data.n_test=16",
        "rm.trainer.batch_pairs=8", "rm.trainer.epochs=1", "rm.trainer.max_length=48", "rm.trainer.threads=1",
        "rm.armo.steps=4", "rm.armo.gate_hidden=8", "sparsity.steps=3", "sparsity.n_calib=4", "sparsity.seq_len=32",
        "sparsity.max_new_tokens=8", "data.pages=10", "puzzle.data.n_distill=16", "puzzle.data.n_calib=8",
        "puzzle.data.n_score=4", "puzzle.data.seq_len=32", "puzzle.bld.steps=2", "puzzle.bld.workers=1",
        "puzzle.gkd.steps=2", "puzzle.cost.repeats=1", "puzzle.cost.model_repeats=1", "puzzle.cost.batch_size=2",
        "puzzle.cost.seq_len=16", "puzzle.cost.new_tokens=2", "puzzle.search.n_solutions=1",
        "puzzle.search.calibrate_rounds=0", "puzzle.search.target_speedup=1.1", "puzzle.space.ffn_fractions=[0.5]"]
    assert main(["quickstart", *over, "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert "pretrain.accuracy" in summary and summary["model.params"] > 0
    assert "rl.accuracy_before" in summary and "rl.accuracy_after" in summary and summary["rl.heldout_n"] == 8
    report = (tmp_path / "q" / "report.md").read_text()
    assert "## Stage: pretrain" in report and "## Stage: rl" in report and "rl/plots/rl_metrics.png" in report
    assert "## Stage: rm" in report and "rm.accuracy" in summary and "rm.bt.length_corr" in summary
    assert summary["sparsity.fraction"] >= 0.5 and "sparsity.ppl_maskllm" in summary
    assert "sparsity.accuracy_dense" in summary and "## Stage: sparsity" in report
    assert summary["data.formula_recall"] == 1.0 and summary["data.duplicates_removed"] == 2
    assert summary["data.contaminated"] == 1 and "## Stage: data" in report
    # Puzzle on the RL policy: a heterogeneous child, measured, no larger than its parent.
    assert "## Stage: puzzle" in report and "puzzle/plots/architecture.png" in report
    assert summary["puzzle.memory_child_bytes"] <= summary["puzzle.memory_parent_bytes"]
    for key in ("puzzle.measured_speedup", "puzzle.ppl_parent", "puzzle.ppl_child", "puzzle.accuracy_child"):
        assert isinstance(summary[key], (int, float)), key
    # Sane numbers: accuracies are fractions, perplexities above 1, every stage ok.
    for key in ("pretrain.accuracy", "rl.accuracy_before", "rl.accuracy_after", "rm.accuracy",
                "sparsity.accuracy_maskllm", "puzzle.accuracy_parent"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["sparsity.ppl_dense"] > 1 and summary["puzzle.ppl_child"] > 1
    assert all(summary[f"{s}.status"] == "ok" for s in ("data", "pretrain", "rl", "rm", "sparsity", "puzzle"))
    html = (tmp_path / "q" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "Puzzle speed-up" in html and "formula recall" in html
    # where the time went: every stage's wall time in the summary, the report and the final table
    assert all(summary[f"{s}.wall_s"] > 0 for s in ("data", "pretrain", "rl", "rm", "sparsity", "puzzle"))
    assert "| wall time |" in report and "| total |" in report
    out = capsys.readouterr().out
    assert "report.html" in out and "Puzzle speed-up" in out and "wall time" in out
    # resuming a finished run redoes nothing
    assert main(["quickstart", *over, "--out", str(tmp_path / "q"), "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("already done") == 6
    # A stage that fails is reported; the stages that do not need it still run.
    assert main(["quickstart", *over, "puzzle.search.target_speedup=1000", "rm.armo.steps=5",
                 "--out", str(tmp_path / "q2"), "--no-progress"]) == 0
    s2 = json.loads((tmp_path / "q2" / "summary.json").read_text())
    assert s2["puzzle.status"].startswith("failed: ConfigError") and s2["sparsity.status"] == "ok"
    assert (tmp_path / "q2" / "puzzle.error.txt").exists()
    assert "Stages that did not finish" in (tmp_path / "q2" / "report.md").read_text()


def test_quickstart_rl_needs_pretrain(tmp_path, capsys):
    assert main(["quickstart", "stages=[rl]", "--out", str(tmp_path / "q"), "--no-progress"]) == 2
    assert "needs the pretrain stage" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_quickstart_default(tmp_path):
    """The README's quickstart as a user runs it (~6 minutes on 2 cores)."""
    code, out, err = run_cli("quickstart", "--out", tmp_path / "q", "--no-progress", timeout=2400)
    assert code == 0, err
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["pretrain.accuracy"] > 0.05, summary  # it learns the format and some problems
    assert summary["pretrain.eval_loss"] < 1.0  # an untrained model is at ~ln(512) = 6.2
    # 64 RL steps from the countdown SFT start: the policy's sampled pass rate on its training prompts (16 x 8
    # samples a step) rises, measured 24.5% -> 29.9% (first vs last quarter); greedy held-out accuracy moves within
    # its noise in so few steps (40.0% -> 40.5%; -0.5..+6 in six 80-step settings, SE 3.5), so the test asks only that
    # it does not fall beyond that. The RL claim (+10 points, 3 seeds) is ProRL tiny's: benchmarks/RESULTS.md.
    assert summary["rl.train_pass_rate_last"] >= summary["rl.train_pass_rate_first"] + 0.02, summary
    assert summary["rl.accuracy_after"] >= summary["rl.accuracy_before"] - 0.035, summary
    assert summary["rm.accuracy"] > 0.55, summary  # measured: 0.623 on countdown pairs (chance is 0.5)
    assert summary["sparsity.fraction"] >= 0.5
    assert summary["sparsity.ppl_maskllm"] < summary["sparsity.ppl_sparsegpt"], summary  # measured 1.362 < 1.444
    assert summary["data.formula_recall"] == 1.0 and summary["data.contaminated"] == 1
    # Puzzle at a 1.5x target (measured 1.60x): the child keeps far more of the parent than the uniform shrink.
    assert summary["puzzle.measured_speedup"] > 1.4, summary  # timing noise of a few percent is tolerated
    assert summary["puzzle.ppl_child"] < summary["puzzle.ppl_uniform_baseline"], summary  # measured 1.50 < 3.92
    assert summary["puzzle.accuracy_child"] > summary["puzzle.accuracy_baseline"], summary  # 40.5% vs 0%
    assert (tmp_path / "q" / "report.html").stat().st_size > 100_000  # every figure embedded
