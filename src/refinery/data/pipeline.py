"""The data engine: a pipeline is a list of stages over batches of records (dicts), run shard by shard.

- A **stage** (``Stage.process``) returns the batch's records; a record it drops carries ``_reject`` (a short
  reason code) and optionally ``_detail``. Each stage declares the fields it ``adds``. A batch that raises is retried
  record by record, and a record that still raises is rejected with reason ``error`` — a long run never dies on one
  record.
- A **global stage** (dedup) needs the whole corpus: ``collect`` runs per shard, ``decide`` once in the driver,
  ``apply`` per shard again. Global stages split the pipeline into segments; segment outputs are kept in
  ``_work/`` until the run ends.
- **Executors**: ``local`` (a spawn process pool over shards, one shard in memory per worker) and ``ray``
  (Ray Data over the same shard function, on a local instance or a cluster). Same pipeline, same output.
- **Output** per shard, atomically (temp + rename): ``data/shard-NNNNN.{jsonl,parquet}``, rejects in
  ``rejects/``, counts in ``_work/``; a shard's stats file is written last and marks it done, so a re-run skips
  finished shards and a crash loses at most the shards in flight. ``stats.json`` sums the per-stage counts.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from refinery.data.io import Shard, read_output, read_shard, write_records
from refinery.errors import ConfigError, DataError

Record = dict[str, Any]


class Stage:
    """A per-record/batch step. Subclasses set ``name`` and ``adds`` and implement ``process``."""

    name: str = "stage"
    adds: tuple[str, ...] = ()

    def setup(self) -> None:
        """Expensive initialisation, run once per worker before the first batch."""

    def process(self, records: list[Record]) -> list[Record]:
        raise NotImplementedError


class GlobalStage(Stage):
    """A corpus-wide step: ``collect`` per shard → ``decide`` in the driver → ``apply`` per shard."""

    def collect(self, records: list[Record]) -> Any:
        raise NotImplementedError

    def decide(self, summaries: list[Any], out_dir: Path) -> Any:
        raise NotImplementedError

    def apply(self, records: list[Record], decision: Any) -> list[Record]:
        raise NotImplementedError


def reject(record: Record, reason: str, detail: str | None = None) -> Record:
    out = {**record, "_reject": reason}
    if detail:
        out["_detail"] = detail[:500]
    return out


@dataclass
class StageCounts:
    name: str
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    adds: tuple[str, ...] = ()

    def merge(self, other: dict) -> None:
        self.seen += other["seen"]
        self.kept += other["kept"]
        self.dropped.update(other["dropped"])
        self.seconds += other["seconds"]

    def to_dict(self) -> dict:
        return {"name": self.name, "seen": self.seen, "kept": self.kept, "dropped": dict(self.dropped),
                "seconds": round(self.seconds, 3), "adds": list(self.adds)}


def _run_stage(stage: Stage, records: list[Record], fn: Callable[[list[Record]], list[Record]],
               counts: StageCounts, rejects: list[Record], batch_size: int) -> list[Record]:
    t0 = time.perf_counter()
    out: list[Record] = []
    for s in range(0, len(records), batch_size):
        batch = records[s: s + batch_size]
        try:
            result = fn(batch)
        except Exception:
            result = []
            for rec in batch:  # find the record that breaks the batch; the others go on
                try:
                    result += fn([rec])
                except Exception as e:
                    result.append(reject(rec, "error", f"{stage.name}: {type(e).__name__}: {e}"))
        for rec in result:
            if "_reject" in rec:
                counts.dropped[rec["_reject"]] += 1
                rejects.append({**{k: v for k, v in rec.items() if k != "html"}, "_stage": stage.name})
            else:
                out.append(rec)
    counts.seen += len(records)
    counts.kept += len(out)
    counts.seconds += time.perf_counter() - t0
    return out


# ---- segments ------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    index: int
    apply_global: int | None  # index (in stages) of a global stage whose decision is applied first
    stages: list[int]  # indices of map stages
    collect_global: int | None  # index of the global stage whose summary this segment's output feeds


def segments(stages: list[Stage]) -> list[Segment]:
    out, cur, pending_apply = [], [], None
    for i, st in enumerate(stages):
        if isinstance(st, GlobalStage):
            out.append(Segment(len(out), pending_apply, cur, i))
            cur, pending_apply = [], i
        else:
            cur.append(i)
    out.append(Segment(len(out), pending_apply, cur, None))
    return out


@dataclass
class RunSpec:
    """Everything a worker needs (picklable): how to build the stages and where the run lives."""

    factory: Callable[[], list[Stage]]
    output: str
    fmt: str = "jsonl"
    batch_size: int = 64


def _work(spec: RunSpec) -> Path:
    return Path(spec.output) / "_work"


def _stats_path(spec: RunSpec, seg: int, shard: Shard) -> Path:
    return _work(spec) / f"seg{seg}" / f"{shard.name}.stats.json"


def _seg_output(spec: RunSpec, seg: int, shard: Shard, last: bool) -> Path:
    if last:
        return Path(spec.output) / "data" / f"{shard.name}.{spec.fmt}"
    return _work(spec) / f"seg{seg}" / f"{shard.name}.jsonl"


_STAGES: dict[str, list[Stage]] = {}  # per-process cache: stages are built and set up once per worker


def _stages(spec: RunSpec) -> list[Stage]:
    import hashlib

    key = hashlib.sha1(pickle.dumps(spec.factory)).hexdigest()
    if key not in _STAGES:
        stages = spec.factory()
        for st in stages:
            st.setup()
        _STAGES.clear()
        _STAGES[key] = stages
    return _STAGES[key]


def run_segment(spec: RunSpec, seg: Segment, n_segments: int, shard: Shard) -> dict:
    """One segment of one shard: read, run its stages, write outputs, rejects and (last) stats. Idempotent."""
    stats_path = _stats_path(spec, seg.index, shard)
    if stats_path.exists():
        return json.loads(stats_path.read_text())
    stages = _stages(spec)
    rejects: list[Record] = []
    counts: list[StageCounts] = []
    if seg.index == 0:
        records = []
        read = StageCounts("read")
        for n, rec in enumerate(read_shard(shard)):
            rec.setdefault("id", f"{shard.index:05d}-{n:07d}")  # corpus order: dedup keeps the first
            read.seen += 1
            if "_reject" in rec:
                read.dropped[rec["_reject"]] += 1
                rejects.append({**rec, "_stage": "read"})
            else:
                read.kept += 1
                records.append(rec)
        counts.append(read)
    else:
        records = read_output(_seg_output(spec, seg.index - 1, shard, last=False))
    if seg.apply_global is not None:
        st = stages[seg.apply_global]
        decision = pickle.loads((_work(spec) / f"global{seg.apply_global}.pkl").read_bytes())
        c = StageCounts(st.name, adds=st.adds)
        records = _run_stage(st, records, lambda b, st=st: st.apply(b, decision), c, rejects, spec.batch_size)
        counts.append(c)
    for i in seg.stages:
        st = stages[i]
        c = StageCounts(st.name, adds=st.adds)
        records = _run_stage(st, records, st.process, c, rejects, spec.batch_size)
        counts.append(c)
    last = seg.index == n_segments - 1
    write_records(records, _seg_output(spec, seg.index, shard, last), spec.fmt if last else "jsonl")
    if rejects:
        write_records(rejects, Path(spec.output) / "rejects" / f"seg{seg.index}-{shard.name}.jsonl", "jsonl")
    if seg.collect_global is not None:
        summary = stages[seg.collect_global].collect(records)
        tmp = _work(spec) / f"seg{seg.index}" / f"{shard.name}.summary.pkl.tmp"
        tmp.write_bytes(pickle.dumps(summary))
        os.replace(tmp, tmp.with_suffix(""))
    stats = {"shard": shard.name, "out": len(records), "stages": [c.to_dict() for c in counts]}
    write_records([stats], stats_path, "jsonl")  # last: marks the shard-segment done
    return stats


def _run_segment_row(row: dict) -> dict:
    """Ray Data map function (a row holds the pickled arguments)."""
    spec, seg, n, shard = pickle.loads(row["task"])
    return {"stats": json.dumps(run_segment(spec, seg, n, shard))}


def _local(tasks: list[tuple], workers: int, on_done: Callable[[dict], None]) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            on_done(run_segment(*t))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(run_segment, *t) for t in tasks]
        for f in as_completed(futures):
            on_done(f.result())


def _ray(tasks: list[tuple], workers: int, on_done: Callable[[dict], None]) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs ray: pip install 'ray[data]'") from None
    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
    for row in ds.map(_run_segment_row, num_cpus=1, concurrency=max(1, min(workers, len(tasks)))).iter_rows():
        on_done(json.loads(row["stats"]))


def run_pipeline(spec: RunSpec, shards: list[Shard], executor: str = "local", workers: int | None = None,
                 progress: bool = True) -> dict:
    """Run every segment over every shard (skipping finished ones); returns and writes ``stats.json``."""
    from refinery.progress import StepBar
    from refinery.runs import atomic_write_text

    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r} (local or ray)")
    stages = spec.factory()
    segs = segments(stages)
    workers = workers or os.cpu_count() or 1
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    totals: dict[str, StageCounts] = {}
    order: list[str] = []
    for seg in segs:
        if seg.apply_global is not None:
            gpath = _work(spec) / f"global{seg.apply_global}.pkl"
            if not gpath.exists():
                st = stages[seg.apply_global]
                summaries = [pickle.loads((_work(spec) / f"seg{seg.index - 1}" / f"{s.name}.summary.pkl")
                                          .read_bytes()) for s in shards]
                decision = st.decide(summaries, out)
                gpath.write_bytes(pickle.dumps(decision))
        done = [s for s in shards if _stats_path(spec, seg.index, s).exists()]
        todo = [s for s in shards if not _stats_path(spec, seg.index, s).exists()]
        bar = StepBar(progress, len(shards), len(done), f"segment {seg.index + 1}/{len(segs)}", ())
        finished = [len(done)]

        def on_done(stats, finished=finished, bar=bar):
            finished[0] += 1
            bar.update(finished[0])

        tasks = [(spec, seg, len(segs), s) for s in todo]
        try:
            (_ray if executor == "ray" else _local)(tasks, workers, on_done)
        except Exception as e:  # a stage that cannot even start (bad model path, ...): one line, traceback on disk
            bar.close()
            log = out / "error.txt"
            log.write_text(traceback.format_exc())
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise DataError(f"pipeline failed in segment {seg.index + 1}/{len(segs)}: {type(e).__name__}: {first} "
                            f"(finished shards are kept; traceback in {log})") from None
        bar.close()
        for s in shards:
            stats = read_output(_stats_path(spec, seg.index, s))[0]
            for c in stats["stages"]:
                if c["name"] not in totals:
                    totals[c["name"]] = StageCounts(c["name"], adds=tuple(c["adds"]))
                    order.append(c["name"])
                totals[c["name"]].merge(c)
    summary = {"shards": len(shards), "records_out": totals[order[-1]].kept if order else 0,
               "seconds": round(time.perf_counter() - t0, 2), "executor": executor,
               "stages": [totals[n].to_dict() for n in order]}
    atomic_write_text(out / "stats.json", json.dumps(summary, indent=1) + "\n")
    return summary


def output_records(output: str | Path) -> list[Record]:
    """All records a finished run wrote, in shard order."""
    root = Path(output) / "data"
    return [r for p in sorted(root.glob("shard-*")) if not p.name.endswith(".tmp") for r in read_output(p)]
