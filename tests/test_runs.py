import json

import pytest

from refinery.config import Section
from refinery.errors import ConfigError
from refinery.runs import RunDir, atomic_write_text


class Cfg(Section):
    lr: float = 0.1
    steps: int = 10


def test_create_writes_config_and_manifest(tmp_path):
    run = RunDir.create(Cfg(), "demo", root=tmp_path, seed=7, argv=["refinery", "x"])
    assert run.path.parent == tmp_path and run.path.name.startswith("demo-")
    assert "lr: 0.1" in (run.path / "config.yaml").read_text()
    m = json.loads((run.path / "manifest.json").read_text())
    assert m["seed"] == 7 and m["command"] == ["refinery", "x"] and "torch" in m["versions"] and m["started"]
    run.finish()
    assert run.manifest()["finished"]


def test_two_runs_get_distinct_directories(tmp_path):
    a = RunDir.create(Cfg(), "demo", root=tmp_path)
    b = RunDir.create(Cfg(), "demo", root=tmp_path)
    assert a.path != b.path


def test_metrics_append_and_survive_a_cut_line(tmp_path):
    run = RunDir.create(Cfg(), "demo", root=tmp_path)
    run.log_metrics(1, loss=2.0)
    run.log_metrics(2, loss=1.5, nan=float("nan"))
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss"')  # a crash mid-write
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["nan"] == "nan"
    run.truncate_metrics(1)
    assert [r["step"] for r in run.metrics()] == [1]


def test_summary_is_flat_and_merged(tmp_path):
    run = RunDir.create(Cfg(), "demo", root=tmp_path)
    run.write_summary({"a.x": 1})
    run.write_summary({"b.y": 2.5})
    assert json.loads((run.path / "summary.json").read_text()) == {"a.x": 1, "b.y": 2.5}
    with pytest.raises(ValueError):
        run.write_summary({"nested": {"no": 1}})


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    run = RunDir.create(Cfg(), "demo", root=tmp_path)
    for step in (10, 20, 30):
        run.save_checkpoint(step, lambda d: (d / "w.txt").write_text("x"), keep=2)
    assert [p.name for p in run.checkpoints()] == ["step-0000020", "step-0000030"]

    def crash(d):
        (d / "w.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.save_checkpoint(40, crash)
    assert run.latest_checkpoint().name == "step-0000030"
    assert not [p for p in run.checkpoint_dir.iterdir() if p.name.startswith(".tmp")]


def test_incomplete_checkpoint_is_ignored(tmp_path):
    run = RunDir.create(Cfg(), "demo", root=tmp_path)
    (run.checkpoint_dir / "step-0000050").mkdir()  # no COMPLETE marker
    assert run.latest_checkpoint() is None


def test_resume_requires_same_config_and_out(tmp_path):
    run = RunDir.create(Cfg(), "demo", out=tmp_path / "r")
    with pytest.raises(ConfigError, match="already holds a run"):
        RunDir.create(Cfg(), "demo", out=run.path)
    with pytest.raises(ConfigError, match=r"config differs.*lr \(saved 0.1, now 0.2\)"):
        RunDir.create(Cfg(lr=0.2), "demo", out=run.path, resume=True)
    with pytest.raises(ConfigError, match="--resume needs --out"):
        RunDir.create(Cfg(), "demo", resume=True)
    again = RunDir.create(Cfg(), "demo", out=run.path, resume=True)
    assert len(again.manifest()["resumed"]) == 1


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    assert (tmp_path / "a" / "f.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]
