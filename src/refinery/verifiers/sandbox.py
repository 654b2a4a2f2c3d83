"""A fast sandbox for untrusted Python: a fork server in its own namespaces, one fresh process per run.

Threat model: a policy writing hostile code, millions of times. Start-up cost is paid once by a *zygote*
(``_zygote.py``: a lean ``python -S -I`` with common modules pre-imported and compile() warmed up) that runs in its
own network namespace (no network), mount namespace (private tmpfs over /tmp, /var/tmp and /dev/shm) and IPC
namespace, with a scrubbed environment. An idle copy of it, the *template*, clones each run into a new PID namespace
as a child of the zygote, which times, kills and reaps it; the *program* is PID 1 of that namespace:

- the program runs as a per-slot unprivileged uid (when the zygote is root), with ``no_new_privs``, so it cannot
  signal the caller or read its ``/proc/<pid>/environ``, and cannot write outside its own temp dir (owned by that uid,
  on the private tmpfs);
- CPU-time, address-space, file-size, open-file and process-count limits (the count is per slot uid, so a fork bomb
  only exhausts its own slot);
- a wall-clock timeout kills PID 1, and the kernel then kills everything else in its PID namespace;
- stdout/stderr go to memory files capped by the file-size limit, and only ``max_output`` bytes are read back.

Where namespaces or uid switching are not permitted (not root, no user namespaces), the sandbox still runs with
rlimits, process groups and timeouts, and ``Sandbox.isolation`` says which protections are missing (a warning is
logged once).

Functional tests are judged from outside the program's process (``_remote``): each slot has a long-lived *judge*
process, outside the runs' PID namespaces and under a uid of its own, that runs the dataset's test code with its own
untouched modules and calls into the program over a socket with plain data only (exact builtin types, size- and
depth-capped, never pickle). The tests and their expected values never enter the program's process, the run's
report is the judge's alone, and a test passes only when the judge saw it pass. stdio verdicts are computed by the
caller from the program's output. Time limits that decide verdicts are CPU time (``Limits``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import CodeType
from typing import Callable

from refinery.verifiers import _zygote
from refinery.verifiers._zygote import recv, send

log = logging.getLogger(__name__)

# Imported once in the zygote, so programs get them for free. Each costs every run a little (more memory to fork and
# tear down: hashlib's OpenSSL alone ~20 us per run); left out: hashlib (~4 ms when a program imports it) and array
# (~0.1 ms), which programs rarely use.
PREIMPORT = ("collections", "itertools", "functools", "math", "re", "string", "heapq", "bisect", "typing",
             "json", "random", "statistics", "fractions", "decimal", "copy", "operator", "datetime")


@functools.lru_cache(maxsize=4096)
def compile_test(source: str) -> CodeType | str:
    """A test (or setup) block compiled here, once, for every program checked against it: tests are the dataset's,
    not the policy's, and each run is then spared compiling them (~0.1 ms, and the pages the compiler writes). The
    program itself is only ever compiled inside the sandbox. Source that does not compile is passed on as is, to
    fail inside the run like any broken test."""
    try:
        return compile(source, "<test>", "exec", dont_inherit=True, optimize=0)  # asserts kept even under -O
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return source


@functools.lru_cache(maxsize=1)
def _boot_code() -> bytes:
    return _zygote.boot_code()


def _site_paths() -> list[str]:
    """Where the caller's installed packages live, for programs run by the (site-less) zygote."""
    import site

    paths = [*site.getsitepackages(), site.getusersitepackages() if site.ENABLE_USER_SITE else ""]
    return [p for p in paths if p and os.path.isdir(p)]


@dataclass
class Limits:
    """Per-run resource limits (defaults sized for competitive-programming and HumanEval-style tests).

    The verdict's time limit is CPU time: ``cpu_seconds`` of the program's own process (RLIMIT_CPU, whole seconds,
    rounded up), so a correct program is not failed because the machine is busy. ``timeout`` is only a wall-clock
    backstop for programs that wait instead of computing (sleep, blocking reads); by default it is generous."""

    timeout: float | None = None  # wall-clock backstop (s); None: 2 x cpu_seconds + 10. The process tree is killed
    cpu_seconds: float = 10  # the time limit that decides verdicts: CPU seconds of the program (RLIMIT_CPU)
    memory_mb: int = 1024  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE: caps every file written, stdout included
    max_processes: int = 16  # RLIMIT_NPROC for the run's own uid
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output: int = 1 << 20  # bytes of stdout/stderr read back

    @property
    def wall(self) -> float:
        """The wall-clock backstop in seconds."""
        return float(self.timeout) if self.timeout is not None else 2.0 * self.cpu_seconds + 10.0

    def to_request(self) -> dict:
        """The limits as the zygote reads them (whole CPU seconds, the resolved wall clock)."""
        return {**vars(self), "timeout": self.wall, "cpu_seconds": max(1, math.ceil(self.cpu_seconds))}


@dataclass
class RunResult:
    status: str  # ok | error | timeout | killed
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    tests: list[list] = field(default_factory=list)  # functional: [index, passed, reason], written by the judge
    wall: float = 0.0
    reason: str = ""
    cpu: float = 0.0  # CPU seconds (user + system) of the program's process
    max_rss_mb: float = 0.0  # its peak resident memory
    page_faults: int = 0  # its page faults (most are copy-on-write faults on the zygote's shared pages)


# ---------------------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------------------
class _Server:
    """One zygote process and the connection to it."""

    def __init__(self, concurrency: int, slot_base: int, preimport: tuple[str, ...],
                 on_done: Callable[[int], None] | None = None, cpus: list[int] | None = None):
        self.concurrency, self.slot_base, self.preimport = concurrency, slot_base, preimport
        self.cpus = cpus or []  # where its judged runs go (see _zygote._CpuShare); empty: any of the zygote's CPUs
        self.on_done = on_done  # told how many runs finished (results or failures), from the reader thread
        self.lock = threading.Lock()  # pending futures and restarts; never held while blocked on the socket
        self.send_lock = threading.Lock()  # whole messages on the socket
        self.pending: dict[int, Future] = {}
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.isolation: dict[str, bool] = {}
        self.start()

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0"}
        # -S -I: a lean interpreter (no site, no refinery imports); programs still see the caller's site-packages
        code_fd = _zygote._memfile(_boot_code())  # the zygote's code, compiled here (see _zygote.BOOT)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-I", "-c", _zygote.BOOT, str(code_fd), str(child.fileno()),
                 str(self.concurrency), str(self.slot_base), ",".join(self.preimport), os.pathsep.join(_site_paths()),
                 ",".join(map(str, self.cpus))],
                pass_fds=[child.fileno(), code_fd], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True, cwd="/")
        finally:
            child.close()
            os.close(code_fd)
        self.sock = parent
        hello = recv(parent)
        if not hello or "isolation" not in hello:
            err = self.proc.stderr.read().decode(errors="replace")[-1000:] if self.proc.stderr else ""
            raise RuntimeError(f"sandbox server failed to start: {err}")
        self.isolation = hello["isolation"]
        self.template_pid = hello.get("template")  # the zygote's forking copy (None: it forks runs itself)
        threading.Thread(target=self._read_loop, args=(parent,), daemon=True).start()

    def _read_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                msg = recv(sock)
            except OSError:
                msg = None
            if msg is None:
                with self.lock:
                    pending, self.pending = self.pending, {}
                for fut in pending.values():
                    if not fut.done():
                        fut.set_result(RunResult("error", reason="sandbox server died"))
                if self.on_done and pending:
                    self.on_done(len(pending))
                return
            with self.lock:
                fut = self.pending.pop(msg["id"], None)
            if fut is not None:
                fut.set_result(RunResult(**msg["result"]))
                if self.on_done:
                    self.on_done(1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, rid: int, payload: dict, fut: Future) -> None:
        with self.lock:
            if not self.alive():  # restart after a crash of the server itself
                self.close()
                self.start()
            self.pending[rid] = fut
            sock = self.sock
        # A large batch can fill both socket buffers at once; the reader thread must still be able to take results
        # (it needs only self.lock), so the server can finish sending and go back to reading requests.
        try:
            with self.send_lock:
                send(sock, {"id": rid, **payload})
        except OSError:
            with self.lock:
                lost = self.pending.pop(rid, None) is not None
            if not fut.done():
                fut.set_result(RunResult("error", reason="sandbox server unreachable"))
            if lost and self.on_done:
                self.on_done(1)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
            self.proc = None


class Sandbox:
    """Runs programs in zygote servers (one per two cores by default); thread-safe; ``concurrency`` runs at once."""

    def __init__(self, concurrency: int | None = None, limits: Limits | None = None,
                 preimport: tuple[str, ...] = PREIMPORT, servers: int | None = None):
        self.concurrency = concurrency or max(2, os.cpu_count() or 2)
        self.limits = limits or Limits()
        # One zygote per two cores: a zygote and its template keep about four cores' worth of runs going (~0.6 ms of
        # their CPU per run against ~1.3 ms in the run), and runs that share a zygote overlap their hand-offs.
        n = max(1, min(servers or (os.cpu_count() or 2) // 2, self.concurrency))
        per = -(-self.concurrency // n)
        self._ids = itertools.count()
        # Runs wait here and go to a server only when it has room (its slots, one run held ready behind them and one
        # queued): a long program then holds up at most those two, never a whole queue behind it.
        self._queue: collections.deque = collections.deque()
        self._qlock = threading.Lock()
        self._inflight = [0] * n
        # per + 1 slot ids each: a zygote also holds one run ready behind its busy slots (see _zygote.serve)
        try:  # each zygote places its judged runs on its own share of the CPUs
            cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = []
        self._servers = [_Server(per, k * (per + 1), preimport, on_done=functools.partial(self._done, k),
                                 cpus=cpus[k::n] if len(cpus) >= 2 * n else [])
                         for k in range(n)]
        self.isolation: dict[str, bool] = {key: all(s.isolation.get(key) for s in self._servers)
                                           for key in self._servers[0].isolation}
        missing = [k for k, v in self.isolation.items() if not v]
        if missing:
            log.warning("sandbox runs without: %s (needs root or user namespaces); hostile code is less contained",
                        ", ".join(missing))

    @property
    def _proc(self):  # the first server's process (tests kill it to check recovery)
        return self._servers[0].proc

    def submit(self, code: str, stdin: str = "", tests: list[str] | None = None, setup: str = "",
               limits: Limits | None = None) -> Future:
        """Run ``code`` (stdin fed from ``stdin``). With ``tests``, the run is judged from outside the program's
        process: ``setup`` runs in both, then each test block runs in a judge process whose calls into the program
        cross as plain data (``_remote``); the judge reports each pass/fail."""
        fut: Future = Future()
        if tests is not None:
            tests = [compile_test(t) for t in tests]
        if setup:
            setup = compile_test(setup)
        with self._qlock:
            self._queue.append((next(self._ids), {"code": code, "stdin": stdin, "tests": tests, "setup": setup,
                                                  "limits": (limits or self.limits).to_request()}, fut))
        self._pump()
        return fut

    def _pump(self) -> None:
        """Send queued runs to servers with room (never holding the queue lock while sending)."""
        while True:
            with self._qlock:
                if not self._queue:
                    return
                k = min(range(len(self._servers)), key=lambda i: self._inflight[i])
                if self._inflight[k] > self._servers[k].concurrency + 1:  # slots, one held, one queued
                    return
                self._inflight[k] += 1
                rid, payload, fut = self._queue.popleft()
            self._servers[k].send(rid, payload, fut)

    def _done(self, k: int, n: int) -> None:
        with self._qlock:
            self._inflight[k] -= n
        self._pump()

    def run(self, code: str, stdin: str = "", tests: list[str] | None = None, setup: str = "",
            limits: Limits | None = None) -> RunResult:
        lim = limits or self.limits
        return self.submit(code, stdin, tests, setup, lim).result(timeout=lim.wall * 3 + 30)

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
