"""A fast sandbox for untrusted Python: a fork server in its own namespaces, one fresh process per run.

Threat model: a policy writing hostile code, millions of times. Start-up cost is paid once by a *zygote*
process (an interpreter with common modules pre-imported) that runs in its own network namespace (no network),
mount namespace (private tmpfs over /tmp, /var/tmp and /dev/shm) and IPC namespace, with a scrubbed environment.
For each run the zygote forks a *monitor*, which creates a new PID namespace and forks the *program* as its PID 1:

- the program runs as a per-slot unprivileged uid (when the zygote is root), with ``no_new_privs``, so it cannot
  signal the caller or read its ``/proc/<pid>/environ``, and cannot write outside its own temp dir (owned by that uid,
  on the private tmpfs);
- CPU-time, address-space, file-size, open-file and process-count limits (the count is per slot uid, so a fork bomb
  only exhausts its own slot);
- a wall-clock timeout kills PID 1, and the kernel then kills everything else in its PID namespace;
- stdout/stderr go to files capped by the file-size limit, and only ``max_output`` bytes are read back.

Where namespaces or uid switching are not permitted (not root, no user namespaces), the sandbox still runs with
rlimits, process groups and timeouts, and ``Sandbox.isolation`` says which protections are missing (a warning is
logged once). Known limit: a functional test's pass/fail is reported from inside the program's process, so code that
introspects the harness could forge it; stdio verdicts are computed outside the sandbox.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
BASE_UID = 61000
PREIMPORT = ("collections", "itertools", "functools", "math", "re", "string", "heapq", "bisect", "typing",
             "json", "random", "statistics", "fractions", "decimal", "copy", "operator", "hashlib", "array",
             "datetime")


@dataclass
class Limits:
    """Per-run resource limits (defaults sized for competitive-programming and HumanEval-style tests)."""

    timeout: float = 10.0  # wall-clock seconds; the whole process tree is killed after it
    cpu_seconds: int = 10  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE: caps every file written, stdout included
    max_processes: int = 16  # RLIMIT_NPROC for the run's own uid
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output: int = 1 << 20  # bytes of stdout/stderr read back


@dataclass
class RunResult:
    status: str  # ok | error | timeout | killed
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    tests: list[list] = field(default_factory=list)  # functional: [index, passed, reason]
    wall: float = 0.0
    reason: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Framing: 4-byte length + JSON
# ---------------------------------------------------------------------------------------------------------------
def _send(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    body = _recv_exact(sock, struct.unpack("!I", head)[0])
    return None if body is None else json.loads(body)


# ---------------------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------------------
class _Server:
    """One zygote process and the connection to it."""

    def __init__(self, concurrency: int, slot_base: int, preimport: tuple[str, ...]):
        self.concurrency, self.slot_base, self.preimport = concurrency, slot_base, preimport
        self.lock = threading.Lock()
        self.pending: dict[int, Future] = {}
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.isolation: dict[str, bool] = {}
        self.start()

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0"}
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = src  # the zygote imports only this module, from where it stands
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refinery.verifiers.sandbox", str(child.fileno()), str(self.concurrency),
             str(self.slot_base), ",".join(self.preimport)],
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True, cwd="/")
        child.close()
        self.sock = parent
        hello = _recv(parent)
        if not hello or "isolation" not in hello:
            err = self.proc.stderr.read().decode(errors="replace")[-1000:] if self.proc.stderr else ""
            raise RuntimeError(f"sandbox server failed to start: {err}")
        self.isolation = hello["isolation"]
        threading.Thread(target=self._read_loop, args=(parent,), daemon=True).start()

    def _read_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                msg = _recv(sock)
            except OSError:
                msg = None
            if msg is None:
                with self.lock:
                    pending, self.pending = self.pending, {}
                for fut in pending.values():
                    if not fut.done():
                        fut.set_result(RunResult("error", reason="sandbox server died"))
                return
            with self.lock:
                fut = self.pending.pop(msg["id"], None)
            if fut is not None:
                fut.set_result(RunResult(**msg["result"]))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, rid: int, payload: dict, fut: Future) -> None:
        with self.lock:
            if not self.alive():  # restart after a crash of the server itself
                self.close()
                self.start()
            self.pending[rid] = fut
            try:
                _send(self.sock, {"id": rid, **payload})
            except OSError:
                self.pending.pop(rid, None)
                fut.set_result(RunResult("error", reason="sandbox server unreachable"))

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
    """Runs programs in zygote servers (one per core by default); thread-safe; ``concurrency`` runs at once."""

    def __init__(self, concurrency: int | None = None, limits: Limits | None = None,
                 preimport: tuple[str, ...] = PREIMPORT, servers: int | None = None):
        self.concurrency = concurrency or max(2, os.cpu_count() or 2)
        self.limits = limits or Limits()
        n = max(1, min(servers or os.cpu_count() or 1, self.concurrency))
        per = -(-self.concurrency // n)
        self._ids = itertools.count()
        self._servers = [_Server(per, k * per, preimport) for k in range(n)]
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
        """Run ``code`` (stdin fed from ``stdin``); with ``tests``, run ``setup`` then each test statement block
        in the program's namespace and report each pass/fail."""
        fut: Future = Future()
        server = min(self._servers, key=lambda s: len(s.pending))
        server.send(next(self._ids), {"code": code, "stdin": stdin, "tests": tests, "setup": setup,
                                      "limits": asdict(limits or self.limits)}, fut)
        return fut

    def run(self, code: str, stdin: str = "", tests: list[str] | None = None, setup: str = "",
            limits: Limits | None = None) -> RunResult:
        lim = limits or self.limits
        return self.submit(code, stdin, tests, setup, lim).result(timeout=lim.timeout * 3 + 30)

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


# ---------------------------------------------------------------------------------------------------------------
# Server side (runs in the zygote process)
# ---------------------------------------------------------------------------------------------------------------
_libc = None


def _libc_call(name: str, *args) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    res = getattr(_libc, name)(*args)
    if res != 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return res


def _setup_namespaces() -> dict[str, bool]:
    iso = {"network": False, "private_tmp": False, "pid_namespace": False, "uid_switch": False}
    try:
        _libc_call("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
        iso["network"] = True
        _libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
        for d in (b"/tmp", b"/var/tmp", b"/dev/shm"):
            if os.path.isdir(d):
                _libc_call("mount", b"tmpfs", d, b"tmpfs", 0, b"size=512m,mode=1777")
        iso["private_tmp"] = True
        # The run's uid must be able to import Python: expose the interpreter's trees read-only where a private
        # ancestor (e.g. /root, mode 700) blocks them, hiding everything else there.
        iso["uid_switch"] = os.geteuid() == 0 and _expose_python()
    except OSError:
        pass
    # PID namespaces are made per run; check once that we may.
    pid = os.fork()
    if pid == 0:
        try:
            _libc_call("unshare", CLONE_NEWPID)
            os._exit(0)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    iso["pid_namespace"] = os.waitstatus_to_exitcode(status) == 0
    return iso


def _world_traversable(path: str) -> bool:
    import stat

    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        d = "/".join(parts[:i]) or "/"
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _blocking_ancestor(path: str) -> str:
    import stat

    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        d = "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return path


def _expose_python() -> bool:
    """Make the interpreter's prefixes and site-packages readable to an unprivileged uid (mount namespace only)."""
    import site

    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wanted = {os.path.realpath(p) for p in [sys.base_prefix, sys.prefix, sys.exec_prefix, src,
                                             *site.getsitepackages()] if p and os.path.isdir(p)}
    wanted = sorted(p for p in wanted if not any(p != q and p.startswith(q + "/") for q in wanted))
    blocked = [p for p in wanted if not _world_traversable(p)]
    if not blocked:
        return True
    stage = "/tmp/.refinery-stage"
    groups: dict[str, list[str]] = {}
    for p in blocked:
        groups.setdefault(_blocking_ancestor(p), []).append(p)
    try:
        for anc, paths in groups.items():
            staged = []
            for k, p in enumerate(paths):
                tmp = f"{stage}/{len(staged)}-{k}-{os.path.basename(anc)}"
                os.makedirs(tmp, exist_ok=True)
                _libc_call("mount", p.encode(), tmp.encode(), None, MS_BIND | MS_REC, None)
                staged.append((tmp, p))
            _libc_call("mount", b"tmpfs", anc.encode(), b"tmpfs", 0, b"size=1m,mode=0755")
            for tmp, p in staged:
                os.makedirs(p, exist_ok=True)
                for d in _parents_between(anc, p):
                    os.chmod(d, 0o755)
                _libc_call("mount", tmp.encode(), p.encode(), None, MS_BIND | MS_REC, None)
                _libc_call("mount", b"none", p.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        return all(_world_traversable(p) for p in blocked)
    except OSError:
        return False


def _parents_between(top: str, path: str) -> list[str]:
    out, cur = [], path
    while cur != top and cur != "/":
        cur = os.path.dirname(cur)
        out.append(cur)
    return out


def _program(req: dict, workdir: str, uid: int | None, report_fd: int, iso: dict) -> None:
    """The untrusted program's process (PID 1 of its namespace). Never returns."""
    lim = req["limits"]
    try:
        os.setsid()
    except OSError:
        pass
    os.chdir(workdir)
    stdin_fd = os.open(os.path.join(workdir, ".stdin"), os.O_RDONLY)
    out_fd = os.open(os.path.join(workdir, ".stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(os.path.join(workdir, ".stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((stdin_fd, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.dup2(report_fd, 3)
    os.closerange(4, 65536)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except OSError:
        pass
    mb = 1024 * 1024
    # CPU: soft limit sends SIGXCPU (a clear reason), the hard limit one second later SIGKILL.
    for res, soft, hard in ((resource.RLIMIT_CPU, lim["cpu_seconds"], lim["cpu_seconds"] + 1),
                            (resource.RLIMIT_AS, lim["memory_mb"] * mb, lim["memory_mb"] * mb),
                            (resource.RLIMIT_FSIZE, lim["file_size_mb"] * mb, lim["file_size_mb"] * mb),
                            (resource.RLIMIT_CORE, 0, 0),
                            (resource.RLIMIT_NOFILE, lim["max_open_files"], lim["max_open_files"]),
                            (resource.RLIMIT_NPROC, lim["max_processes"], lim["max_processes"])):
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass
    report = os.fdopen(3, "w", buffering=1)

    # As PID 1 of its namespace the program would ignore default-action signals, so limit signals get handlers.
    def _limit_hit(signum, frame, _report=report):
        why = "CPU time limit exceeded" if signum == signal.SIGXCPU else "output size limit exceeded"
        _report.write(json.dumps(["limit", why]) + "\n")
        os._exit(128 + signum)

    signal.signal(signal.SIGXFSZ, _limit_hit)
    signal.signal(signal.SIGXCPU, _limit_hit)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir})
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.argv = ["solution.py"]
    _exec = exec
    code = req["code"]
    tests = req.get("tests")
    try:
        compiled = compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        report.write(json.dumps(["compile", f"{type(e).__name__}: {e}"]) + "\n")
        os._exit(1)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        _exec(compiled, ns)
    except SystemExit as e:
        if tests is None:
            sys.stdout.flush()
            os._exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        report.write(json.dumps(["runtime", "SystemExit before the tests ran"]) + "\n")
        os._exit(1)
    except BaseException as e:
        traceback.print_exc()
        sys.stderr.flush()
        report.write(json.dumps(["runtime", f"{type(e).__name__}: {str(e)[:300]}"]) + "\n")
        sys.stdout.flush()
        os._exit(1)
    if tests is not None:
        try:
            if req.get("setup"):
                _exec(req["setup"], ns)
        except BaseException as e:
            report.write(json.dumps(["runtime", f"setup failed: {type(e).__name__}: {str(e)[:300]}"]) + "\n")
            os._exit(1)
        for i, test in enumerate(tests):
            try:
                _exec(test, ns)
                report.write(json.dumps(["test", i, True, ""]) + "\n")
            except BaseException as e:  # SystemExit inside a test is a failure, not a pass
                report.write(json.dumps(["test", i, False, f"{type(e).__name__}: {str(e)[:200]}"]) + "\n")
        report.write(json.dumps(["done"]) + "\n")
    sys.stdout.flush()
    os._exit(0)


class _Run:
    """A program the zygote is watching."""

    def __init__(self, req: dict, slot: int, uid: int | None, workdir: str, pid: int, report_fd: int):
        self.req, self.slot, self.uid, self.workdir, self.pid = req, slot, uid, workdir, pid
        self.report_fd = report_fd
        self.pidfd = os.pidfd_open(pid)
        self.report = bytearray()
        self.start = time.monotonic()
        self.deadline = self.start + req["limits"]["timeout"]
        self.timed_out = False


SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120}.get(os.uname().machine)


def _fork_new_pid_ns() -> int:
    """fork() into a new PID namespace (raw clone: unshare(CLONE_NEWPID) works only once per process)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc.syscall(SYS_CLONE, CLONE_NEWPID | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
    else:
        ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone(CLONE_NEWPID) failed")
    return pid


def _start_run(req: dict, slot: int, iso: dict) -> _Run:
    uid = BASE_UID + slot if iso["uid_switch"] else None
    workdir = tempfile.mkdtemp(prefix="run-", dir="/tmp")
    with open(os.path.join(workdir, ".stdin"), "w") as f:
        f.write(req.get("stdin") or "")
    if uid is not None:
        for name in ("", ".stdin"):
            os.chown(os.path.join(workdir, name), uid, uid)
        os.chmod(workdir, 0o700)
    r, w = os.pipe()
    pid = _fork_new_pid_ns() if iso["pid_namespace"] else os.fork()
    if pid == 0:
        os.close(r)
        try:
            _program(req, workdir, uid, w, iso)
        finally:
            os._exit(70)
    os.close(w)
    os.set_blocking(r, False)
    return _Run(req, slot, uid, workdir, pid, r)


def _drain(run: _Run) -> bool:
    """Read what the report pipe holds; False at EOF."""
    while True:
        try:
            chunk = os.read(run.report_fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if len(run.report) < 1 << 20:
            run.report += chunk


def _finish_run(run: _Run, iso: dict) -> dict:
    """Reap the program, read its outputs and report, clean up; the result as a dict."""
    lim = run.req["limits"]
    _, wstatus = os.waitpid(run.pid, 0)
    wall = time.monotonic() - run.start
    if not iso["pid_namespace"]:
        _kill_leftovers(run.pid, run.uid)
    _drain(run)
    os.close(run.report_fd)
    os.close(run.pidfd)
    status, rc, sig = "ok", None, None
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        status = "killed"
    else:
        rc = os.WEXITSTATUS(wstatus)
    if run.timed_out:
        status = "timeout"

    def read(name: str) -> str:
        try:
            with open(os.path.join(run.workdir, name), "rb") as f:
                return f.read(lim["max_output"]).decode("utf-8", errors="replace")
        except OSError:
            return ""

    result = RunResult(status=status, exit_code=rc, signal=sig, stdout=read(".stdout"), stderr=read(".stderr"),
                       wall=round(wall, 4))
    for line in run.report.decode("utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item[0] == "test" and len(item) == 4:
            result.tests.append(item[1:])
        elif item[0] in ("compile", "runtime"):
            result.reason = f"{item[0]} error: {item[1]}"
        elif item[0] == "limit":
            result.reason = item[1]
            result.status = "killed"
    if status == "timeout":
        result.reason = f"timeout after {lim['timeout']}s"
    elif result.reason.endswith("limit exceeded"):
        pass
    elif _size(os.path.join(run.workdir, ".stdout")) >= lim["file_size_mb"] * 1024 * 1024:
        result.reason = "output size limit exceeded"
    elif sig == signal.SIGKILL:
        result.reason = "killed (CPU time or memory limit)"
    elif sig is not None and not result.reason:
        result.reason = f"killed by signal {signal.Signals(sig).name}"
    elif "MemoryError" in result.stderr and not result.reason:
        result.reason = "memory limit exceeded"
    shutil.rmtree(run.workdir, ignore_errors=True)
    return asdict(result)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _kill_leftovers(pid: int, uid: int | None) -> None:
    """Without a PID namespace: kill the process group, and everything the run's uid still owns."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        helper = os.fork()
        if helper == 0:
            try:
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # every process this uid may signal: its own
            except OSError:
                pass
            os._exit(0)
        os.waitpid(helper, 0)


def serve(fd: int, concurrency: int, slot_base: int, preimport: list[str]) -> None:
    """The zygote's loop: read requests, start programs (at most ``concurrency`` at once), enforce deadlines,
    send results. One fork (a clone into a new PID namespace) per run; no helper process in between."""
    import gc

    sock = socket.socket(fileno=fd)
    for name in preimport:
        try:
            __import__(name)
        except ImportError:
            pass
    iso = _setup_namespaces()
    if iso["pid_namespace"] and SYS_CLONE is None:
        iso["pid_namespace"] = False
    try:
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the caller
    except OSError:
        pass
    gc.collect()
    gc.freeze()  # forked programs then do not dirty every page through GC bookkeeping
    _send(sock, {"isolation": iso})
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    free_slots = list(range(slot_base, slot_base + concurrency))
    queue: list[dict] = []
    runs: list[_Run] = []

    def finish(run: _Run) -> None:
        sel.unregister(run.pidfd)
        sel.unregister(run.report_fd)
        runs.remove(run)
        result = _finish_run(run, iso)
        free_slots.append(run.slot)
        _send(sock, {"id": run.req["id"], "result": result})

    while True:
        timeout = max(0.0, min(r.deadline for r in runs) - time.monotonic()) if runs else None
        for key, _ in sel.select(timeout=timeout):
            if key.data is None:
                req = _recv(sock)
                if req is None:  # the caller is gone
                    for run in runs:
                        try:
                            os.kill(run.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    os._exit(0)
                queue.append(req)
            else:
                kind, run = key.data
                if run not in runs:
                    continue
                if kind == "report":
                    if not _drain(run):
                        sel.modify(run.report_fd, selectors.EVENT_READ, ("closed", run))
                elif kind == "exit":
                    finish(run)
        now = time.monotonic()
        for run in list(runs):
            if now >= run.deadline and not run.timed_out:
                run.timed_out = True
                try:
                    os.kill(run.pid, signal.SIGKILL)  # PID 1 of its namespace: the kernel kills the rest
                except ProcessLookupError:
                    pass
        while queue and free_slots:
            req = queue.pop(0)
            slot = free_slots.pop()
            try:
                run = _start_run(req, slot, iso)
            except OSError as e:
                free_slots.append(slot)
                _send(sock, {"id": req["id"], "result": asdict(RunResult("error", reason=f"could not start: {e}"))})
                continue
            runs.append(run)
            sel.register(run.pidfd, selectors.EVENT_READ, ("exit", run))
            sel.register(run.report_fd, selectors.EVENT_READ, ("report", run))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), [m for m in sys.argv[4].split(",") if m])
