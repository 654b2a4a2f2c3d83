"""The sandbox's zygote: a fork server for untrusted Python, run as its own lean interpreter.

Started by ``refinery.verifiers.sandbox`` as ``python -S -I _zygote.py ...``: no site processing and only the
standard-library modules it needs, so the address space copied (and torn down) for every run is small and no
thread or logging at-fork hooks run in each child. It must therefore import nothing from ``refinery``; the client
reuses its framing helpers. See ``sandbox.py`` for the threat model and the isolation layers.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
CLONE_PARENT = 0x00008000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, PR_SET_NAME = 38, 1, 15
BASE_UID = 61000
SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120}.get(os.uname().machine)


# ---------------------------------------------------------------------------------------------------------------
# Framing: 4-byte length + JSON (shared with the client)
# ---------------------------------------------------------------------------------------------------------------
def send(sock: socket.socket, obj: Any) -> None:
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


def recv_raw(sock: socket.socket) -> bytes | None:
    """One message's JSON bytes (None when the peer is gone)."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    return _recv_exact(sock, struct.unpack("!I", head)[0])


def recv(sock: socket.socket) -> Any:
    body = recv_raw(sock)
    return None if body is None else json.loads(body)


def result(status: str, reason: str = "", **fields) -> dict:
    """A run's result, in the fields of ``sandbox.RunResult``."""
    return {"status": status, "exit_code": None, "signal": None, "stdout": "", "stderr": "", "tests": [],
            "wall": 0.0, "reason": reason, **fields}


_libc = None


def _libc_call(name: str, *args) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    res = getattr(_libc, name)(*args)
    if res != 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return res


def _setup_namespaces(paths: list[str]) -> dict[str, bool]:
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
        iso["uid_switch"] = os.geteuid() == 0 and _expose_python(paths)
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


def _expose_python(paths: list[str]) -> bool:
    """Make the interpreter's prefixes and ``paths`` readable to an unprivileged uid (mount namespace only)."""
    wanted = {os.path.realpath(p) for p in [sys.base_prefix, sys.prefix, sys.exec_prefix, *paths]
              if p and os.path.isdir(p)}
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


_STDIO: tuple = ()


def _report(*item) -> None:
    """One line of the run's report (fd 3, a pipe to the zygote)."""
    os.write(3, (json.dumps(item) + "\n").encode())


def _program(req: dict, workdir: str, uid: int | None, report_fd: int, iso: dict) -> None:
    """The untrusted program's process (PID 1 of its namespace). Never returns."""
    lim = req["limits"]
    try:
        os.setsid()
    except OSError:
        pass
    os.chdir(workdir)
    stdin_fd = os.open(".stdin" if req.get("stdin") else os.devnull, os.O_RDONLY)
    out_fd = os.open(".stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((stdin_fd, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.dup2(report_fd, 3)
    os.closerange(4, 65536)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if not _NO_NEW_PRIVS:
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
    global _IN_RUN
    _IN_RUN = True  # SIGXCPU/SIGXFSZ handlers were installed in the zygote; they report from here on
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir  # the rest was scrubbed once, in the zygote
    # file objects made once in the zygote over fds 0-2, which now are this run's files
    sys.stdin, sys.stdout, sys.stderr = _STDIO
    sys.argv = ["solution.py"]
    _exec = exec
    code = req["code"]
    tests = req.get("tests")
    try:
        compiled = compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        _report("compile", f"{type(e).__name__}: {e}")
        os._exit(1)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        _exec(compiled, ns)
    except SystemExit as e:
        if tests is None:
            sys.stdout.flush()
            os._exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        _report("runtime", "SystemExit before the tests ran")
        os._exit(1)
    except BaseException as e:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        _report("runtime", f"{type(e).__name__}: {str(e)[:300]}")
        sys.stdout.flush()
        os._exit(1)
    if tests is not None:
        try:
            if req.get("setup"):
                _exec(req["setup"], ns)
        except BaseException as e:
            _report("runtime", f"setup failed: {type(e).__name__}: {str(e)[:300]}")
            os._exit(1)
        for i, test in enumerate(tests):
            try:
                _exec(test, ns)
                _report("test", i, True, "")
            except BaseException as e:  # SystemExit inside a test is a failure, not a pass
                _report("test", i, False, f"{type(e).__name__}: {str(e)[:200]}")
        _report("done")
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


_FORK_API: tuple = ()


def _fork_api() -> tuple:
    """The C functions a raw clone needs, looked up once (in the zygote, so no run pays for the lookups)."""
    global _FORK_API, _libc
    if not _FORK_API:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        api = ctypes.pythonapi
        _FORK_API = (_libc.syscall, api.PyOS_BeforeFork, api.PyOS_AfterFork_Child, api.PyOS_AfterFork_Parent)
    return _FORK_API


def _clone(flags: int) -> int:
    """fork() with extra clone flags (raw clone: unshare(CLONE_NEWPID) works only once per process)."""
    syscall, before, after_child, after_parent = _fork_api()
    before()
    pid = syscall(SYS_CLONE, flags | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        after_child()
    else:
        after_parent()
    if pid < 0:
        raise OSError(ctypes.get_errno(), f"clone({flags:#x}) failed")
    return pid


_IN_RUN = False  # True in a run's process (the limit-signal handlers report only there)
_NO_NEW_PRIVS = False  # set once in the template; inherited by every run it clones


def _limit_hit(signum, frame) -> None:
    # As PID 1 of its namespace a run would ignore default-action signals, so limit signals get this handler.
    if _IN_RUN:
        _report("limit", "CPU time limit exceeded" if signum == signal.SIGXCPU else "output size limit exceeded")
    os._exit(128 + signum)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _run_child(workdir: str, uid: int | None, report_fd: int, iso: dict) -> None:
    """Entry of a run's process: read (as root, then delete) the request the zygote left in its directory."""
    try:
        path = os.path.join(workdir, ".request")
        text = _read_capped(path, 1 << 62)[0]
        os.unlink(path)
        req = json.loads(text)
        _program(req, workdir, uid, report_fd, iso)
    finally:
        os._exit(70)


class _Forker:
    """Forks runs for the zygote from a small idle copy of it (the *template*).

    Forking write-protects every page of the forking process, and the process then takes a copy-on-write fault on
    each page it writes while a run lives. The zygote writes many (it parses requests, tracks runs, reads results),
    the template almost none: it waits for "fork the run in this directory" (with the run's report pipe), clones with
    CLONE_PARENT (so the run is the zygote's own child: waited for, timed and killed by the zygote as before) and
    answers the pid. About 0.2 ms less CPU per run on 2 cores. A dead template is replaced; without raw clone support
    the zygote forks runs itself.
    """

    def __init__(self, iso: dict, close_in_template: list[socket.socket]):
        self.iso, self.close_in_template = iso, close_in_template
        self.chan: socket.socket | None = None
        self.pid = 0
        if SYS_CLONE is not None:
            self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            for s in self.close_in_template:
                s.close()
            global _NO_NEW_PRIVS
            try:
                _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # irreversible, inherited by every run
                _NO_NEW_PRIVS = True
            except OSError:
                pass
            try:
                self._serve_template(theirs)
            finally:
                os._exit(0)  # never fall back into the zygote's code
        theirs.close()
        self.chan, self.pid = ours, pid

    def _serve_template(self, chan: socket.socket) -> None:
        flags = CLONE_PARENT | (CLONE_NEWPID if self.iso["pid_namespace"] else 0)
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(chan, 4096, 1)
            except OSError:
                os._exit(0)
            if len(msg) < 4 or not fds:
                os._exit(0)
            uid, workdir = struct.unpack("i", msg[:4])[0], os.fsdecode(msg[4:])
            try:
                pid = _clone(flags)
            except OSError:
                pid = -1
            if pid == 0:
                chan.close()
                _run_child(workdir, uid if uid >= 0 else None, fds[0], self.iso)
            os.close(fds[0])
            chan.send(struct.pack("i", pid))

    def fork(self, workdir: str, uid: int | None, report_w: int) -> int:
        """Start the run prepared in ``workdir``; its pid (a child of the caller)."""
        for _ in range(2):
            if self.chan is None and SYS_CLONE is not None:
                self._spawn()
            if self.chan is None:
                break
            try:
                socket.send_fds(self.chan, [struct.pack("i", -1 if uid is None else uid) + os.fsencode(workdir)],
                                [report_w])
            except OSError:  # the template is gone and never saw this run: replace it and try again
                self._reap()
                continue
            try:
                reply = self.chan.recv(4)
            except OSError:
                reply = b""
            if len(reply) != 4:  # it died while starting this run: do not start it twice
                self._reap()
                raise OSError("the sandbox template died while starting this run")
            pid = struct.unpack("i", reply)[0]
            if pid < 0:
                raise OSError("clone failed in the sandbox template")
            return pid
        pid = _clone(CLONE_NEWPID) if self.iso["pid_namespace"] else os.fork()
        if pid == 0:
            _run_child(workdir, uid, report_w, self.iso)
        return pid

    def _reap(self) -> None:
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _start_run(req: dict, slot: int, iso: dict, forker: _Forker) -> _Run:
    uid = BASE_UID + slot if iso["uid_switch"] else None
    if iso["private_tmp"]:
        workdir = f"/tmp/run-{slot}"  # the zygote's private /tmp: nobody else creates names there
        if os.path.lexists(workdir):
            _rmtree(workdir)
        os.mkdir(workdir, 0o700)
    else:  # a shared /tmp: a fresh, unguessable name (another user may have planted run-0 as a symlink)
        import tempfile

        workdir = tempfile.mkdtemp(prefix="refinery-run-")
    _write_file(os.path.join(workdir, ".request"), req.pop("raw", None) or json.dumps(req).encode())
    if req.get("stdin"):
        _write_file(os.path.join(workdir, ".stdin"), req["stdin"].encode())
    if uid is not None:
        os.chown(workdir, uid, uid)
    r, w = os.pipe()
    try:
        pid = forker.fork(workdir, uid, w)
    except OSError:
        os.close(r)
        _rmtree(workdir)
        raise
    finally:
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

    out, out_size = _read_capped(os.path.join(run.workdir, ".stdout"), lim["max_output"])
    res = result(status, exit_code=rc, signal=sig, stdout=out, wall=round(wall, 4),
                 stderr=_read_capped(os.path.join(run.workdir, ".stderr"), lim["max_output"])[0])
    for line in run.report.decode("utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item[0] == "test" and len(item) == 4:
            res["tests"].append(item[1:])
        elif item[0] in ("compile", "runtime"):
            res["reason"] = f"{item[0]} error: {item[1]}"
        elif item[0] == "limit":
            res["reason"] = item[1]
            res["status"] = "killed"
    if status == "timeout":
        res["reason"] = f"timeout after {lim['timeout']}s"
    elif res["reason"].endswith("limit exceeded"):
        pass
    elif out_size >= lim["file_size_mb"] * 1024 * 1024:
        res["reason"] = "output size limit exceeded"
    elif sig == signal.SIGKILL:
        res["reason"] = "killed (CPU time or memory limit)"
    elif sig is not None and not res["reason"]:
        res["reason"] = f"killed by signal {signal.Signals(sig).name}"
    elif "MemoryError" in res["stderr"] and not res["reason"]:
        res["reason"] = "memory limit exceeded"
    _rmtree(run.workdir)
    return res


def _rmtree(path: str) -> None:
    """Remove a run's directory (whatever the program left in it; symlinks are removed, not followed)."""
    if os.path.islink(path):
        os.unlink(path)
        return
    try:
        entries = list(os.scandir(path))
    except OSError:
        entries = []
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                _rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _read_capped(path: str, cap: int) -> tuple[str, int]:
    """The first ``cap`` bytes of a file, decoded, and the file's size ('' and 0 when it is missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return "", 0
    try:
        size = os.fstat(fd).st_size
        chunks, left = [], min(size, cap)
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace"), size
    finally:
        os.close(fd)


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


WARM_UP = """
class A:
    def f(self, x: int) -> list:
        return [i * x for i in range(3)] + sorted({x: 1}) + list(map(str, (1.5, 'a')))
try:
    assert A().f(2)[:3] == [0, 2, 4], 'message'
    raise ValueError(f'{len("x")}')
except (AssertionError, ValueError) as e:
    s = str(e)
"""


def _warm_up() -> None:
    """Run once, here, what every program's process would otherwise set up for itself: compile() builds the ~120
    AST types on first use (about 1 ms per run when left to each child), and first uses fill method caches."""
    exec(compile(WARM_UP, "<warm-up>", "exec"), {"__name__": "__warm__"})
    json.loads(json.dumps(["test", 0, True, ""]))


def serve(fd: int, concurrency: int, slot_base: int, preimport: list[str], paths: list[str]) -> None:
    """The zygote's loop: read requests, start programs (at most ``concurrency`` at once), enforce deadlines,
    send results. One fork (a clone into a new PID namespace) per run; no helper process in between.
    ``paths`` (the caller's site-packages) are importable by programs without running ``site``."""
    import gc

    sock = socket.socket(fileno=fd)
    sys.path.extend(p for p in paths if p not in sys.path)
    for name in preimport:
        try:
            __import__(name)
        except ImportError:
            pass
    iso = _setup_namespaces(paths)
    if iso["pid_namespace"] and SYS_CLONE is None:
        iso["pid_namespace"] = False
    try:
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the caller
        _libc_call("prctl", PR_SET_NAME, b"refinery-sbx", 0, 0, 0)  # how it shows in ps/top (programs too)
    except OSError:
        pass
    global _STDIO
    # Scrub the environment once; each run adds only its HOME and TMPDIR.
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    # explicit encodings: text mode would otherwise import `locale` in every child
    _STDIO = (open(0, closefd=False, encoding="utf-8"), open(1, "w", closefd=False, encoding="utf-8"),
              open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace"))
    signal.signal(signal.SIGXFSZ, _limit_hit)
    signal.signal(signal.SIGXCPU, _limit_hit)
    _fork_api()
    _warm_up()
    gc.collect()
    gc.freeze()  # forked programs then do not dirty every page through GC bookkeeping
    forker = _Forker(iso, close_in_template=[sock])
    send(sock, {"isolation": iso, "template": forker.pid if forker.chan is not None else None})
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
        send(sock, {"id": run.req["id"], "result": result})

    while True:
        timeout = max(0.0, min(r.deadline for r in runs) - time.monotonic()) if runs else None
        for key, _ in sel.select(timeout=timeout):
            if key.data is None:
                raw = recv_raw(sock)
                if raw is None:  # the caller is gone
                    for run in runs:
                        try:
                            os.kill(run.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    os._exit(0)
                req = json.loads(raw)
                req["raw"] = raw  # written as is for the run to read: no second encoding
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
                run = _start_run(req, slot, iso, forker)
            except OSError as e:
                free_slots.append(slot)
                send(sock, {"id": req["id"], "result": result("error", f"could not start: {e}")})
                continue
            runs.append(run)
            sel.register(run.pidfd, selectors.EVENT_READ, ("exit", run))
            sel.register(run.report_fd, selectors.EVENT_READ, ("report", run))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), [m for m in sys.argv[4].split(",") if m],
          [p for p in sys.argv[5].split(os.pathsep) if p])
