"""Run directories: resolved config, manifest, metrics, checkpoints, summary and report, with resume.

Layout of ``runs/<name>-<timestamp>/``::

    config.yaml      resolved config (recipe + overrides)        manifest.json   versions, git sha, seed, argv, times
    metrics.jsonl    one JSON object per logged step            summary.json    flat headline numbers
    checkpoints/step-000100/ ...                                 report.md       short human-readable report
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from refinery.config import dump_config
from refinery.errors import CheckpointError, ConfigError

CHECKPOINT_PREFIX = "step-"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_sha(path: Path | None = None) -> str | None:
    """The current commit of the repository holding ``path`` (or of the refinery package), if any."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("refinery", "torch", "transformers", "tokenizers", "pydantic", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


class RunDir:
    """One run's directory. Create with :meth:`create`; reopen an interrupted one with ``resume=True``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.trackers: list = []  # TensorBoard / W&B (engine.report_to), set by create()

    # ---- creation / resume ------------------------------------------------------------------------
    @staticmethod
    def new_path(name: str, root: str | Path = "runs") -> Path:
        """A fresh ``root/<name>-<timestamp>[-i]`` that does not exist yet."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{name}-{stamp}"
        i = 1
        while path.exists():
            path = Path(root) / f"{name}-{stamp}-{i}"
            i += 1
        return path

    @classmethod
    def create(
        cls,
        config: BaseModel,
        name: str,
        root: str | Path = "runs",
        out: str | Path | None = None,
        resume: bool = False,
        seed: int | None = None,
        argv: list[str] | None = None,
    ) -> RunDir:
        """Make (or, with ``resume``, reopen) the run directory and write config and manifest.

        On resume the saved config must equal ``config``: continuing a run under other settings would
        silently mix two experiments, so differing keys are an error that names them.
        """
        if resume and out is None:
            raise ConfigError("--resume needs --out RUN_DIR: the directory of the run to continue")
        path = cls.new_path(name, root) if out is None else Path(out)
        run = cls(path)
        resolved = dump_config(config)
        if resume and (path / "config.yaml").exists():
            run._check_same_config(config)
        elif not resume and path.exists() and any(path.iterdir()):
            if (path / "manifest.json").exists():
                raise ConfigError(f"run directory {path} already holds a run; pass --resume to continue it "
                                  "or choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
        atomic_write_text(path / "config.yaml", resolved)
        manifest = run.manifest() if (resume and (path / "manifest.json").exists()) else {}
        manifest.update({
            "name": name,
            "seed": seed,
            "versions": package_versions(),
            "git_sha": git_sha(),
            "command": argv if argv is not None else sys.argv,
            "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
        })
        manifest.setdefault("started", _now())
        if resume:
            manifest.setdefault("resumed", []).append(_now())
        manifest.pop("finished", None)
        run._write_json("manifest.json", manifest)
        report_to = getattr(getattr(config, "engine", None), "report_to", None) or []
        if report_to:
            from refinery.tracking import make_trackers

            run.trackers = make_trackers(list(report_to), path, json.loads(json.dumps(config.model_dump(),
                                                                                      default=str)))
        return run

    def _check_same_config(self, config: BaseModel) -> None:
        import yaml

        saved = yaml.safe_load((self.path / "config.yaml").read_text()) or {}
        now = config.model_dump(mode="json")
        diffs = _diff(saved, now)
        if diffs:
            shown = ", ".join(f"{k} (saved {a!r}, now {b!r})" for k, a, b in diffs[:5])
            raise ConfigError(f"cannot resume {self.path}: config differs from the saved one: {shown}")

    # ---- files ---------------------------------------------------------------------------------------
    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str) + "\n")

    def manifest(self) -> dict[str, Any]:
        p = self.path / "manifest.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def log_metrics(self, step: int, **metrics: Any) -> None:
        """Append one line to metrics.jsonl (flushed at once, so a crash keeps what was logged)."""
        row = {"step": step, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        for t in self.trackers:
            t.log(step, row)

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return rows

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after ``after_step`` (work redone on resume is logged again, not twice)."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= after_step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Merge flat headline numbers into summary.json."""
        bad = [k for k, v in summary.items() if isinstance(v, (dict, list))]
        if bad:
            raise ValueError(f"summary values must be flat scalars; nested: {bad}")
        current = self.summary()
        current.update({k: _jsonable(v) for k, v in summary.items()})
        self._write_json("summary.json", current)

    def summary(self) -> dict[str, Any]:
        p = self.path / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def write_report(self, text: str) -> Path:
        atomic_write_text(self.path / "report.md", text)
        return self.path / "report.md"

    def finish(self) -> None:
        m = self.manifest()
        m["finished"] = _now()
        self._write_json("manifest.json", m)
        for t in self.trackers:
            t.close()
        self.trackers = []

    # ---- checkpoints -----------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int | None = None) -> Path:
        """Write a checkpoint atomically: ``write(tmpdir)`` fills a temp dir that is then renamed into place.

        A checkpoint directory only exists once complete, so resume never picks up half a checkpoint.
        """
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
        tmp = Path(tempfile.mkdtemp(dir=self.checkpoint_dir, prefix=".tmp-"))
        try:
            write(tmp)
            (tmp / "COMPLETE").write_text(str(step))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if keep is not None and keep > 0:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def save_sharded_checkpoint(self, step: int, model, optimizer, extra: dict | None = None,
                                keep: int | None = None) -> Path:
        """Every rank writes its shards (``torch.distributed.checkpoint``: :func:`refinery.engine.dist.save_sharded`)
        into this run's checkpoint for ``step``; rank 0 marks it complete and prunes old ones. Resume on any
        number of ranks with :func:`refinery.engine.dist.load_sharded`."""
        from refinery.engine.dist import barrier, is_main, save_sharded

        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
        save_sharded(final, model, optimizer, step, extra)
        if is_main():
            (final / "COMPLETE").write_text(str(step))
            if keep is not None and keep > 0:
                for old in self.checkpoints()[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoint_dir.exists():
            return []
        found = [p for p in self.checkpoint_dir.iterdir()
                 if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "COMPLETE").exists()]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def latest_checkpoint(self) -> Path | None:
        cks = self.checkpoints()
        return cks[-1] if cks else None


def checkpoint_step(path: Path) -> int:
    try:
        return int(Path(path).name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        raise CheckpointError(f"{path} is not a checkpoint directory (expected {CHECKPOINT_PREFIX}NNNNNNN)") from None


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]
