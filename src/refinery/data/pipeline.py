"""The data engine: a pipeline is a list of stages over batches of records (dicts), run shard by shard.

- A **stage** (``Stage.process``) returns the batch's records; a record it drops carries ``_reject`` (a short
  reason code) and optionally ``_detail``. Each stage declares the fields it ``adds``. A batch that raises is retried
  record by record, and a record that still raises is rejected with reason ``error`` — a long run never dies on one
  record.
- A **global stage** (dedup) needs the whole corpus: ``collect`` runs per chunk of a shard's records (up to
  ``COLLECT_ROWS``; a shard's summary is the list of its chunks' summaries), ``decide`` once in the driver over
  every chunk's summary in corpus order, ``apply`` per batch again. Global stages split the pipeline into
  segments; segment outputs are kept in ``_work/`` until the run ends.
- **Streaming**: a worker never holds a shard: records flow through the stages in batches (each stage buffers
  up to ``batch_size``) and are written as they come, so memory is bounded by the batch, not the shard.
- **Executors**: ``local`` (a spawn process pool over shards) and ``ray`` (Ray tasks over the same shard function,
  spread over the nodes of a local instance or a running cluster: ``RAY_ADDRESS`` / ``ray_address``). Same
  pipeline, same output.
- **Storage**: inputs and the output directory may be fsspec URLs (``s3://``, ``gs://``, ``file://``,
  ``memory://``; HTTP inputs) so workers on other machines read and write them (:mod:`refinery.data.store`).
- **Records** get an internal row id ``_row`` when read (``<shard>-<n>``, plus ``.k`` for the k-th extra record
  a stage makes from one): global stages (dedup, blend) decide by it, never by the input's ``id``, so two inputs
  with overlapping ids lose nothing. An input without ``id`` gets the row id as its ``id``.
- **Output** per shard, atomically (temp + rename): ``data/shard-NNNNN.{jsonl,parquet}``, rejects in
  ``rejects/``, counts in ``_work/``; a shard's stats file is written last and marks it done, so a re-run skips
  finished shards and a crash loses at most the shards in flight. ``stats.json`` sums the per-stage counts and
  says ``complete``; ``_work/`` is removed then, and a re-run of a complete run does nothing.
- **Parquet** output has one schema for the whole run (``schema.json``): the types stages declare for the fields
  they add (``Stage.schema``), the readers' types, and for any other field its per-shard types unified (null →
  anything, int → float); values that fit no single type are stored as JSON text and listed there.
- **Retry** (:func:`retry_rejects`): records rejected for a transient reason (``llm_error``) run again from the
  stage that rejected them; survivors go to ``data/shard-retryNN``, the counts in ``stats.json`` are corrected.
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

from refinery.data.io import JsonlWriter, Shard, iter_output, read_output, read_shard, write_records
from refinery.data.store import Location, atomic_write_text, location, rmtree
from refinery.errors import ConfigError, DataError

Record = dict[str, Any]
TRANSIENT_REASONS = ("llm_error",)  # reject reasons a retry may cure (a server down, a request timed out)
COLLECT_ROWS = 1024  # records per global-stage collect call (a shard's summary is a list of these)
_ROW_WINDOW = 1 << 16  # recent row ids a stage checks new ones against (a record's extras come together)


class Stage:
    """A per-record/batch step. Subclasses set ``name`` and ``adds`` and implement ``process``."""

    name: str = "stage"
    adds: tuple[str, ...] = ()
    schema: dict[str, str] = {}  # output types of the fields it adds (io.arrow_type names: int64, map<K,V>, ...)

    def setup(self) -> None:
        """Expensive initialisation, run once per worker before the first batch."""

    def process(self, records: list[Record]) -> list[Record]:
        raise NotImplementedError


@dataclass
class GlobalContext:
    """Where a global stage's next calls run, given by the engine through :meth:`GlobalStage.bind`: ``work``, a
    folder for the stage's side files (kept until the run ends), the ``shard`` being collected or applied (None
    in ``decide``), and the run's executor, for a ``decide`` that fans work out."""

    work: Any
    shard: Any = None
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None


class GlobalStage(Stage):
    """A corpus-wide step: ``collect`` per chunk of a shard → ``decide`` in the driver → ``apply`` per batch.
    ``decide`` gets the summaries of every chunk of every shard, in corpus order, and the run's output directory
    (a ``Path``, or an :class:`~refinery.data.store.FsPath` when the output is an fsspec URL)."""

    ctx: GlobalContext | None = None  # None: called outside a run (summaries and decisions in memory)

    def bind(self, ctx: GlobalContext | None) -> None:
        """Set where the next ``collect``/``decide``/``apply`` calls run; stages that keep no side files ignore it."""
        self.ctx = ctx

    def collect(self, records: list[Record]) -> Any:
        """A summary of one chunk of a shard's records, or None when the stage keeps them for a later summary."""
        raise NotImplementedError

    def collect_end(self) -> Any:
        """Called once after a shard's last ``collect``: a last summary (e.g. what was buffered) or None."""
        return None

    def decide(self, summaries: list[Any], out_dir: Path) -> Any:
        raise NotImplementedError

    def apply(self, records: list[Record], decision: Any) -> list[Record]:
        raise NotImplementedError


def _bind(stage: GlobalStage, spec: RunSpec, index: int, shard: Any = None, **run: Any) -> None:
    stage.bind(GlobalContext(_work(spec) / f"global{index}", shard, **run))


def row_id(record: Record) -> str:
    """A record's engine row id (``_row``); records made outside the engine fall back to their ``id``."""
    return record.get("_row") or str(record["id"])


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


def _batched(records, n: int):
    batch: list[Record] = []
    for r in records:
        batch.append(r)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _stream_stage(stage: Stage, records, fn: Callable[[list[Record]], list[Record]], counts: StageCounts,
                  on_reject: Callable[[Record], None], batch_size: int):
    """Run ``fn`` over ``records`` (any iterable) in batches of ``batch_size``, yielding the kept records as each
    batch finishes; rejects go to ``on_reject`` (``html`` left out). A batch that raises is retried record by
    record, and a record that still raises is rejected with reason ``error``."""
    from collections import OrderedDict

    rows: OrderedDict = OrderedDict()
    for batch in _batched(records, batch_size):
        t0 = time.perf_counter()
        try:
            result = fn(batch)
        except Exception:
            result = []
            for rec in batch:  # find the record that breaks the batch; the others go on
                try:
                    result += fn([rec])
                except Exception as e:
                    result.append(reject(rec, "error", f"{stage.name}: {type(e).__name__}: {e}"))
        counts.seconds += time.perf_counter() - t0
        counts.seen += len(batch)
        _unique_rows(result, rows)
        for rec in result:
            if "_reject" in rec:
                counts.dropped[rec["_reject"]] += 1
                on_reject({**{k: v for k, v in rec.items() if k != "html"}, "_stage": stage.name})
            else:
                counts.kept += 1
                yield rec


def _run_stage(stage: Stage, records: list[Record], fn: Callable[[list[Record]], list[Record]],
               counts: StageCounts, rejects: list[Record], batch_size: int) -> list[Record]:
    """:func:`_stream_stage` over a list, into a list (the retry path, which holds only rejected records)."""
    return list(_stream_stage(stage, records, fn, counts, rejects.append, batch_size))


def _unique_rows(records: list[Record], seen) -> None:
    """A stage that makes several records from one (chunks, templates) copies its ``_row``: the extra ones get
    ``<row>.0001``, ``<row>.0002``, … in output order (deterministic), so every row id stays unique. ``seen``
    (an OrderedDict) holds the last ``_ROW_WINDOW`` row ids: a record's extras come out together."""
    for i, rec in enumerate(records):
        row = rec.get("_row")
        if row is None:
            continue
        new, k = row, 0
        while new in seen:
            k += 1
            new = f"{row}.{k:04d}"
        seen[new] = None
        if len(seen) > _ROW_WINDOW:
            seen.popitem(last=False)
        if new != row:
            records[i] = {**rec, "_row": new}


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
    schema: dict[str, str] = field(default_factory=dict)  # declared output types, over the stages' own


def _work(spec: RunSpec) -> Location:
    return location(spec.output) / "_work"


def _stats_path(spec: RunSpec, seg: int, shard: Shard) -> Location:
    return _work(spec) / f"seg{seg}" / f"{shard.name}.stats.json"


def _seg_output(spec: RunSpec, seg: int, shard: Shard, last: bool) -> Location:
    if last and spec.fmt == "jsonl":  # Parquet is written at the end, under the run's one schema
        return location(spec.output) / "data" / f"{shard.name}.{spec.fmt}"
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


def _read_records(shard: Shard, read: StageCounts, on_reject: Callable[[Record], None]):
    """A shard's records as they are read, each with its row id; read rejects go to ``on_reject``."""
    for n, rec in enumerate(read_shard(shard)):
        rec["_row"] = f"{shard.index:05d}-{n:09d}"  # corpus order: dedup keeps the first
        rec.setdefault("id", rec["_row"])
        read.seen += 1
        if "_reject" in rec:
            read.dropped[rec["_reject"]] += 1
            on_reject({**rec, "_stage": "read"})
        else:
            read.kept += 1
            yield rec


class _Rejects:
    """A shard-segment's rejects file, opened at the first reject (no file when there is none)."""

    def __init__(self, path: Location):
        self.path, self.w = path, None

    def __call__(self, rec: Record) -> None:
        if self.w is None:
            self.w = JsonlWriter(self.path)
        self.w.write([rec])

    def close(self) -> None:
        if self.w is not None:
            self.w.close()

    def abort(self) -> None:
        if self.w is not None:
            self.w.abort()


def run_segment(spec: RunSpec, seg: Segment, n_segments: int, shard: Shard) -> dict:
    """One segment of one shard, streamed: records are read, pass the stages a batch at a time and are written
    as they come (outputs and rejects via temp files renamed at the end; stats last). Idempotent."""
    stats_path = _stats_path(spec, seg.index, shard)
    if stats_path.exists():
        return json.loads(stats_path.read_text())
    stages = _stages(spec)
    for g in {seg.apply_global, seg.collect_global} - {None}:
        _bind(stages[g], spec, g, shard)
    counts: list[StageCounts] = []
    rejects = _Rejects(location(spec.output) / "rejects" / f"seg{seg.index}-{shard.name}.jsonl")
    if seg.index == 0:
        read = StageCounts("read")
        counts.append(read)
        records: Any = _read_records(shard, read, rejects)
    else:
        records = iter_output(_seg_output(spec, seg.index - 1, shard, last=False))
    if seg.apply_global is not None:
        st = stages[seg.apply_global]
        decision = pickle.loads((_work(spec) / f"global{seg.apply_global}.pkl").read_bytes())
        c = StageCounts(st.name, adds=st.adds)
        records = _stream_stage(st, records, lambda b, st=st: st.apply(b, decision), c, rejects, spec.batch_size)
        counts.append(c)
    for i in seg.stages:
        st = stages[i]
        c = StageCounts(st.name, adds=st.adds)
        records = _stream_stage(st, records, st.process, c, rejects, spec.batch_size)
        counts.append(c)
    last = seg.index == n_segments - 1
    collector = stages[seg.collect_global] if seg.collect_global is not None else None
    typed = last and spec.fmt == "parquet"
    summaries, types, n_out = [], [], 0
    out = JsonlWriter(_seg_output(spec, seg.index, shard, last))
    try:
        for chunk in _batched(records, COLLECT_ROWS):
            out.write(chunk)
            n_out += len(chunk)
            if collector is not None and (summary := collector.collect(chunk)) is not None:
                summaries.append(summary)
            if typed:  # types as the finishing step will read them back (after JSON)
                _add_types(types, [json.loads(json.dumps(r, ensure_ascii=False, default=str)) for r in chunk])
    except BaseException:
        out.abort()
        rejects.abort()
        raise
    if collector is not None and (summary := collector.collect_end()) is not None:
        summaries.append(summary)
    if collector is not None and not summaries:
        summaries.append(collector.collect([]))
    out.close()
    rejects.close()
    if collector is not None:
        tmp = _work(spec) / f"seg{seg.index}" / f"{shard.name}.summary.pkl.tmp"
        tmp.write_bytes(pickle.dumps(summaries))
        from refinery.data.store import replace

        replace(tmp, tmp.with_suffix(""))
    stats = {"shard": shard.name, "out": n_out, "stages": [c.to_dict() for c in counts]}
    if typed:
        stats["types"] = types or [_encoded_types([])]
    write_records([stats], stats_path, "jsonl")  # last: marks the shard-segment done
    return stats


def _encoded_types(records: list[Record]) -> dict:
    from refinery.data.io import encode_types, infer_types

    return encode_types(infer_types(records))


def _add_types(types: list[dict], records: list[Record]) -> None:
    """The chunk's inferred types, kept once per distinct set (the finishing step unifies them all)."""
    enc = _encoded_types(records)
    if enc not in types:
        types.append(enc)


def _run_segment_task(task: bytes) -> tuple[dict, str]:
    """A Ray task: one shard-segment (pickled arguments) → its stats and the id of the node that ran it."""
    import ray

    return run_segment(*pickle.loads(task)), ray.get_runtime_context().get_node_id()


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


def ray_init(workers: int, address: str | None = None) -> bool:
    """Start or join Ray; True when joined to an existing cluster. ``address`` (``auto``, ``host:port``,
    ``ray://host:port``) or else ``RAY_ADDRESS`` joins that cluster, which brings its own CPUs (passing num_cpus
    there is an error); without either, a local instance with ``workers`` CPUs starts. Already initialised: reused."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs ray: pip install 'ray[data]'") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return address is not None
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"cannot join the Ray cluster at {address!r} ({e}); check the address (ray_address "
                              "or RAY_ADDRESS: auto, host:port or ray://host:port) and that `ray status` sees it, "
                              "or unset it to run a local Ray") from None
        return True
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return False


def _ray(tasks: list[tuple], workers: int | None, on_done: Callable[[dict], None], address: str | None = None
         ) -> set[str]:
    """Run the tasks as Ray tasks (SPREAD over the nodes); returns the ids of the nodes that ran them."""
    import ray

    cap = workers  # shards in flight: as asked, else (a cluster) all of them, Ray's CPU accounting bounding them
    if ray_init(workers or os.cpu_count() or 1, address) and not workers:
        cap = len(tasks)  # queued tasks are what SPREAD spreads; a short queue stays on the first node's workers
    workers = cap or os.cpu_count() or 1
    run = ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=2)(_run_segment_task)
    queue, pending, nodes = list(tasks), [], set()
    while queue or pending:  # at most ``workers`` shards in flight, spread over the nodes (a lost worker: retried)
        while queue and len(pending) < workers:
            pending.append(run.remote(pickle.dumps(queue.pop(0))))
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            stats, node = ray.get(ref)
            nodes.add(node)
            on_done(stats)
    return nodes


def run_pipeline(spec: RunSpec, shards: list[Shard], executor: str = "local", workers: int | None = None,
                 progress: bool = True, ray_address: str | None = None) -> dict:
    """Run every segment over every shard (skipping finished ones); returns and writes ``stats.json``. A complete
    run (``stats.json`` says so) is not run again: its stats are returned."""
    from refinery.progress import StepBar

    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r} (local or ray)")
    if executor == "ray":  # workers run elsewhere (another directory, another machine): no relative paths
        spec, shards = _absolute(spec, shards)
    out = location(spec.output)
    done_stats = completed(out)
    if done_stats is not None:
        return done_stats
    stages = spec.factory()
    segs = segments(stages)
    requested_workers = workers
    workers = workers or os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    totals: dict[str, StageCounts] = {}
    order: list[str] = []
    nodes: set[str] = set()  # Ray nodes that ran shards
    for seg in segs:
        if seg.apply_global is not None:
            gpath = _work(spec) / f"global{seg.apply_global}.pkl"
            if not gpath.exists():
                st = stages[seg.apply_global]
                summaries = [x for s in shards  # every chunk's summary, in corpus order
                             for x in pickle.loads((_work(spec) / f"seg{seg.index - 1}" / f"{s.name}.summary.pkl")
                                                   .read_bytes())]
                _bind(st, spec, seg.apply_global, executor=executor, workers=workers, ray_address=ray_address)
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
            if executor == "ray":  # workers as asked (None: the cluster's CPUs when joining one)
                if tasks:
                    nodes |= _ray(tasks, requested_workers, on_done, ray_address)
            else:
                _local(tasks, workers, on_done)
        except Exception as e:  # a stage that cannot even start (bad model path, ...): one line, traceback on disk
            bar.close()
            log = out / "error.txt"
            try:
                log.write_text(traceback.format_exc())
            except OSError:
                pass
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
               "seconds": 0.0, "executor": executor, "stages": [totals[n].to_dict() for n in order]}
    if executor == "ray":
        summary["ray_nodes"] = len(nodes)
    if spec.fmt == "parquet":
        summary["schema"] = _finish_parquet(spec, shards, segs[-1].index, declared_types(stages, spec.schema))
    summary.update(seconds=round(time.perf_counter() - t0, 2), complete=True)
    atomic_write_text(out / "stats.json", json.dumps(summary, indent=1) + "\n")
    rmtree(_work(spec))  # stats.json now marks the run done
    return summary


def _absolute(spec: RunSpec, shards: list[Shard]) -> tuple[RunSpec, list[Shard]]:
    """Local paths made absolute (URLs stay), for workers whose working directory is not the driver's."""
    import dataclasses

    def ab(p: str) -> str:
        return p if "://" in p else os.path.abspath(p)

    return (dataclasses.replace(spec, output=ab(spec.output)),
            [dataclasses.replace(s, paths=tuple(ab(p) for p in s.paths)) for s in shards])


def completed(output: str | Path) -> dict | None:
    """The stats of a complete run in ``output``, or None (no run, or one still to finish)."""
    path = location(output) / "stats.json"
    if not path.exists() or (location(output) / "_work").exists():
        return None
    stats = json.loads(path.read_text())
    return stats if stats.get("complete") else None


def declared_types(stages: list[Stage], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Output field → declared type: the readers' fields, then each stage's ``schema``, then ``overrides``."""
    from refinery.data.io import READER_TYPES

    out = dict(READER_TYPES)
    for st in stages:
        out.update(st.schema)
    out.update(overrides or {})
    return out


def _finish_parquet(spec: RunSpec, shards: list[Shard], last: int, declared: dict[str, str]) -> dict:
    """Write every shard's Parquet file under one schema resolved over all shards (``schema.json``), streaming
    each shard's work file into row groups; files already written under the same schema are kept (a resumed
    finish redoes only what a crash left)."""
    from refinery.data.io import decode_types, resolve_schema, type_name, write_parquet

    observed = []
    for s in shards:
        types = read_output(_stats_path(spec, last, s))[0]["types"]
        observed += [decode_types(t) for t in (types if isinstance(types, list) else [types])]
    schema, json_fields, mismatched = resolve_schema(declared, observed)
    desc = {"fields": [{"name": f.name, "type": "json" if f.name in json_fields else type_name(f.type)}
                       for f in schema],
            "declared_but_mismatched": mismatched}
    text = json.dumps(desc, indent=1) + "\n"
    path = location(spec.output) / "schema.json"
    same = path.exists() and path.read_text() == text
    if path.exists() and not same:
        path.unlink()  # the files it described are rewritten below
    for s in shards:
        dst = location(spec.output) / "data" / f"{s.name}.parquet"
        if not (same and dst.exists()):
            src = iter_output(_seg_output(spec, last, s, last=False))
            write_parquet(_parquet_batches(src), dst, schema, json_fields)
    atomic_write_text(path, text)
    return desc


def _parquet_batches(records, n: int = 4096):
    """Row groups for a Parquet shard: ``n`` records each (memory stays bounded by one row group)."""
    yield from _batched(records, n)


def retry_rejects(spec: RunSpec, reasons: tuple[str, ...] | list[str] = TRANSIENT_REASONS) -> dict:
    """Run the records a complete run rejected for one of ``reasons`` (transient: ``llm_error``) again, from the
    stage that rejected them through the rest of the pipeline, in the driver. Survivors go to
    ``data/shard-retryNN``; their old rejects are removed and new ones written to ``rejects/retryNN.jsonl``;
    ``stats.json`` counts are corrected and the attempt recorded under ``retries``. A global stage (dedup, blend)
    decides over the run's output plus the retried records, which come after the output in corpus order: they
    can be dropped as duplicates of it, never the reverse."""
    from refinery.data.io import infer_types, resolve_schema

    out = location(spec.output)
    stats = completed(out)
    if stats is None:
        raise DataError(f"{out} holds no complete run to retry: run it first (the same command without "
                        "--retry-rejects resumes it)")
    stages = spec.factory()
    index: dict[str, int] = {}
    for i, st in enumerate(stages):
        index.setdefault(st.name, i)
    wanted = set(reasons)
    pending: dict[int, list[Record]] = {}
    remaining: dict[Path, list[Record]] = {}
    retried: Counter = Counter()
    for p in sorted((out / "rejects").glob("*.jsonl")):
        rows = read_output(p)
        rest = []
        for r in rows:
            if r.get("_reject") in wanted and r.get("_stage") in index:
                retried[(r["_stage"], r["_reject"])] += 1
                pending.setdefault(index[r["_stage"]], []).append(
                    {k: v for k, v in r.items() if k not in ("_reject", "_detail", "_stage")})
            else:
                rest.append(r)
        if len(rest) < len(rows):
            remaining[p] = rest
    attempt = len(stats.get("retries", [])) + 1
    entry = {"attempt": attempt, "reasons": sorted(wanted), "retried": sum(retried.values()), "recovered": 0,
             "rejected_again": {}}
    if not pending:
        stats.setdefault("retries", []).append(entry)
        atomic_write_text(out / "stats.json", json.dumps(stats, indent=1) + "\n")
        return stats
    for st in stages[min(pending):]:
        st.setup()
    t0 = time.perf_counter()
    scratch = out / "_retry"  # global stages' side files (clusters, blend.json) of the retry, not the run's
    counts: dict[int, StageCounts] = {}
    rejects: list[Record] = []
    records: list[Record] = []
    for i in range(min(pending), len(stages)):
        st = stages[i]
        records = records + pending.pop(i, [])
        c = counts[i] = StageCounts(st.name, adds=st.adds)
        if isinstance(st, GlobalStage):
            data = [p for p in sorted((out / "data").glob("shard-*")) if not p.name.endswith(".tmp")]
            later = [{**r, "_row": "~" + row_id(r)} for r in records]  # "~" sorts after every row id
            decision = st.decide([st.collect(read_output(p)) for p in data] + [st.collect(later)], scratch)
            records = _run_stage(st, later, lambda b, st=st, d=decision: st.apply(b, d), c, rejects,
                                 spec.batch_size)
            records = [{**r, "_row": r["_row"][1:]} for r in records]
        else:
            records = _run_stage(st, records, st.process, c, rejects, spec.batch_size)
    rejects = [{**r, "_row": r["_row"][1:]} if str(r.get("_row", "")).startswith("~") else r for r in rejects]
    rmtree(scratch)
    name = f"shard-retry{attempt:02d}"
    if records and spec.fmt == "parquet":
        import pyarrow.parquet as pq

        existing = sorted((out / "data").glob("shard-*.parquet"))
        if existing:
            with existing[0].open("rb") as f:
                schema = pq.read_schema(f)
            desc = json.loads((out / "schema.json").read_text())
            json_fields = [f["name"] for f in desc["fields"] if f["type"] == "json"]
        else:
            records = [json.loads(json.dumps(r, default=str)) for r in records]
            schema, json_fields, _ = resolve_schema(declared_types(stages, spec.schema), [infer_types(records)])
        write_records(records, out / "data" / f"{name}.parquet", "parquet", schema, json_fields)
    elif records:
        write_records(records, out / "data" / f"{name}.jsonl", "jsonl")
    if rejects:
        write_records(rejects, out / "rejects" / f"retry{attempt:02d}.jsonl", "jsonl")
    for p, rest in remaining.items():
        if rest:
            write_records(rest, p, "jsonl")
        else:
            p.unlink()
    by = {s["name"]: s for s in stats["stages"]}
    for (stage, reason), n in retried.items():  # those records leave the first run's counts ...
        by[stage]["seen"] -= n
        by[stage]["dropped"][reason] -= n
        if not by[stage]["dropped"][reason]:
            del by[stage]["dropped"][reason]
    for c in counts.values():  # ... and come back with the retry's
        s = by[c.name]
        s["seen"] += c.seen
        s["kept"] += c.kept
        for k, v in c.dropped.items():
            s["dropped"][k] = s["dropped"].get(k, 0) + v
        s["seconds"] = round(s["seconds"] + c.seconds, 3)
    stats["records_out"] += len(records)
    entry.update(recovered=len(records), rejected_again=dict(Counter(r["_reject"] for r in rejects)),
                 seconds=round(time.perf_counter() - t0, 2))
    stats.setdefault("retries", []).append(entry)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    return stats


def output_records(output: str | Path) -> list[Record]:
    """All records a finished run wrote, in shard order."""
    root = location(output) / "data"
    return [r for p in sorted(root.glob("shard-*")) if not p.name.endswith(".tmp") for r in read_output(p)]
