"""A process pool whose per-item timeout really stops the item: a worker that overruns is killed and replaced.

``concurrent.futures`` cannot cancel a running task, and ``signal.alarm`` only works in the main thread; this pool
works from any thread or worker process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait
from typing import Any, Callable


def _worker(fn: Callable, conn) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        idx, args = msg
        try:
            result = fn(*args)
        except Exception as e:  # a crashing check is a verdict, not a dead pool
            result = f"error: {type(e).__name__}: {str(e)[:200]}"
        try:
            conn.send((idx, result))
        except (OSError, ValueError):
            return


class TimeoutPool:
    """``map(items)`` calls ``fn(*item)`` in worker processes; items over ``timeout`` seconds yield 'timeout'."""

    def __init__(self, fn: Callable, workers: int | None = None, timeout: float = 10.0):
        self.fn, self.timeout = fn, timeout
        self.n = max(1, workers or os.cpu_count() or 1)
        # forkserver: workers do not inherit the caller's threads (torch, HTTP clients) the way fork would.
        self.ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self.workers: list[tuple[Any, Any]] = []

    def __enter__(self) -> TimeoutPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self):
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, args=(self.fn, child), daemon=True)
        p.start()
        child.close()
        return p, parent

    def map(self, items: list[tuple], progress: bool = False) -> list[Any]:
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        while len(self.workers) < min(self.n, len(items)):
            self.workers.append(self._spawn())
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item, deadline)
        bar = _bar(progress, len(items))
        done = 0
        while done < len(items):
            for slot, (_, conn) in enumerate(self.workers):
                if slot not in busy and todo:
                    idx = todo.pop()
                    conn.send((idx, items[idx]))
                    busy[slot] = (idx, time.monotonic() + self.timeout)
            conns = {self.workers[s][1]: s for s in busy}
            next_deadline = min(d for _, d in busy.values())
            ready = wait(list(conns), timeout=max(0.0, next_deadline - time.monotonic()))
            for conn in ready:
                slot = conns[conn]
                try:
                    idx, result = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. killed by the OOM killer)
                    idx, result = busy[slot][0], "error: worker died"
                    self._replace(slot)
                results[idx] = result
                del busy[slot]
                done += 1
                bar(done)
            now = time.monotonic()
            for slot, (idx, deadline) in list(busy.items()):
                if now >= deadline:
                    self._replace(slot)
                    results[idx] = f"timeout after {self.timeout}s"
                    del busy[slot]
                    done += 1
                    bar(done)
        bar(None)
        return results

    def _replace(self, slot: int) -> None:
        p, conn = self.workers[slot]
        p.kill()
        p.join(timeout=5)
        conn.close()
        self.workers[slot] = self._spawn()

    def close(self) -> None:
        for _p, conn in self.workers:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for p, conn in self.workers:
            p.join(timeout=1)
            if p.is_alive():
                p.kill()
            conn.close()
        self.workers = []


def _bar(enabled: bool, total: int):
    if not enabled:
        return lambda done: None
    from rich.progress import Progress

    prog = Progress()
    task = prog.add_task("verify", total=total)
    prog.start()

    def update(done):
        if done is None:
            prog.stop()
        else:
            prog.update(task, completed=done)

    return update
