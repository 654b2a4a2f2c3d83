"""engine.report_to: the metrics rows of a run also reach TensorBoard (read back from its event files)."""

import importlib.util

import pytest

from refinery.config import load_config
from refinery.errors import ConfigError
from refinery.models.pretrain import PretrainConfig, pretrain
from refinery.runs import RunDir
from refinery.tracking import make_trackers


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_pretrain_reports_to_tensorboard(tmp_path, tiny_overrides):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(PretrainConfig, None, tiny_overrides + ["trainer.steps=10", "eval.n_per_task=0",
                                                              "engine.report_to=[tensorboard]"])
    run = RunDir.create(cfg, "t", out=tmp_path / "r")
    pretrain(cfg, run, progress=False)
    acc = EventAccumulator(str(run.path / "tensorboard")).Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    rows = [(r["step"], r["loss"]) for r in run.metrics() if "loss" in r]
    assert [s for s, _ in loss] == [s for s, _ in rows] == [5, 10]
    assert [v for _, v in loss] == pytest.approx([v for _, v in rows], rel=1e-6)
    assert "eval_loss" in acc.Tags()["scalars"] and "time" not in acc.Tags()["scalars"]


def test_unknown_or_missing_backends_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown backend"):
        make_trackers(["mlflow"], tmp_path)
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="wandb is not installed"):
            make_trackers(["wandb"], tmp_path)
    with pytest.raises(ConfigError):
        load_config(PretrainConfig, None, ["engine.report_to=[mlflow]"])
