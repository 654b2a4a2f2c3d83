"""The sandbox's zygote: a fork server for untrusted Python, run as its own lean interpreter.

Started by ``refinery.verifiers.sandbox`` as ``python -S -I _zygote.py ...``: no site processing and only the
standard-library modules it needs, so the address space copied (and torn down) for every run is small and no
thread or logging at-fork hooks run in each child. It must therefore import nothing from ``refinery``; the client
reuses its framing helpers. See ``sandbox.py`` for the threat model and the isolation layers.
"""

from __future__ import annotations

import collections
import ctypes
import json
import marshal
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from types import ModuleType
from typing import Any

if __name__ == "__main__":  # the zygote itself: no package to import from; the judge's module came compiled
    _remote = ModuleType("_refinery_remote")
    exec(_REMOTE_CODE, _remote.__dict__)  # noqa: F821 - set by BOOT
    del _REMOTE_CODE  # noqa: F821
else:
    from refinery.verifiers import _remote

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
CLONE_PARENT = 0x00008000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, PR_SET_NAME, PR_SET_DUMPABLE = 38, 1, 15, 4
BASE_UID = 61000
SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120}.get(os.uname().machine)

# How the client starts a zygote: ``python -S -I -c BOOT <code fd> <args>``, the code fd a memory file holding this
# module and ``_remote``, compiled and marshalled by the client (the same trusted interpreter). Compiling them here
# from source would leave ~4 MB of the compiler's freed memory scattered through the zygote's heap: pages every
# run's fork copies the page-table entries of and every run's exit tears down again (~40% of its anonymous memory).
BOOT = ("import marshal, os, sys\n"
        "fd = int(sys.argv.pop(1))\n"
        "zygote, remote, path = marshal.loads(os.pread(fd, os.fstat(fd).st_size, 0))\n"
        "os.close(fd)\n"
        "del fd\n"
        "exec(zygote, {'__name__': '__main__', '__file__': path, '__builtins__': __builtins__,"
        " '_REMOTE_CODE': remote})\n")


def boot_code() -> bytes:
    """This module and ``_remote``, compiled, as ``BOOT`` reads them (called in the client)."""
    here = os.path.dirname(os.path.abspath(__file__))
    codes = []
    for name in ("_zygote.py", "_remote.py"):
        path = os.path.join(here, name)
        with open(path, encoding="utf-8") as f:
            codes.append(compile(f.read(), path, "exec", dont_inherit=True))
    return marshal.dumps((*codes, os.path.join(here, "_zygote.py")))


# ---------------------------------------------------------------------------------------------------------------
# Framing between the client and the zygote: 4-byte length + marshal (both ends are the same trusted interpreter,
# and requests carry the tests as code objects compiled by the client). Nothing a program writes is ever unmarshalled:
# its report is JSON, parsed defensively.
# ---------------------------------------------------------------------------------------------------------------
def send(sock: socket.socket, obj: Any) -> None:
    data = marshal.dumps(obj)
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
    """One message's bytes (None when the peer is gone)."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    return _recv_exact(sock, struct.unpack("!I", head)[0])


def recv(sock: socket.socket) -> Any:
    body = recv_raw(sock)
    return None if body is None else marshal.loads(body)


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


def _exit(code: int) -> None:
    """End the run as the interpreter would: whatever the program left in sys.stdout/sys.stderr's buffers is
    written first (it may have replaced or closed them)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: S110 - a broken stream must not keep the run from ending
            pass
    os._exit(code)


def _report(*item) -> None:
    """One line of the run's report (fd 3, a memory file the zygote reads after the run)."""
    os.write(3, (json.dumps(item) + "\n").encode())


def _drop_privileges(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if not _NO_NEW_PRIVS:
        try:
            _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        except OSError:
            pass


def _set_limits(cpu_seconds: int, memory_mb: int, file_size_mb: int, max_open_files: int | None,
                max_processes: int | None) -> None:
    mb = 1024 * 1024
    # CPU: soft limit sends SIGXCPU (a clear reason), the hard limit one second later SIGKILL.
    limits = [(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1), (resource.RLIMIT_AS, memory_mb * mb, memory_mb * mb),
              (resource.RLIMIT_FSIZE, file_size_mb * mb, file_size_mb * mb), (resource.RLIMIT_CORE, 0, 0)]
    if max_open_files is not None:
        limits.append((resource.RLIMIT_NOFILE, max_open_files, max_open_files))
    if max_processes is not None:
        limits.append((resource.RLIMIT_NPROC, max_processes, max_processes))
    for res, soft, hard in limits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass


def _program(req: tuple, workdir: bytes, uid: int | None, fds: tuple[int, ...], new_session: bool,
             held: bool) -> None:
    """The untrusted program's process (PID 1 of its namespace). Never returns. With functional tests, fd 3 is not
    a report but its call channel to the slot's judge (``_Judges``): it runs the program, then answers calls.

    Every page this code writes is copied for the run (the zygote's memory is shared copy-on-write), so it keeps to
    a few builtins: the request came as a marshalled tuple."""
    code, setup, cpu_seconds, memory_mb, file_size_mb, max_open_files, max_processes, functional, cpu = req
    if cpu >= 0:  # on its judge's CPU (see _CpuShare): a performance hint, no protection (the program may change it)
        try:
            os.sched_setaffinity(0, (cpu,))
        except OSError:
            pass
    if new_session:  # without a PID namespace the zygote kills the run's process group; with one, PID 1 is enough
        try:  # (and setsid costs ~15 us: it makes a scheduler autogroup)
            os.setsid()
        except OSError:
            pass
    os.chdir(workdir)
    report_fd, _, stdin_fd, out_fd, err_fd, go_fd = fds
    moves = [(stdin_fd, 0), (out_fd, 1), (err_fd, 2), (report_fd, 3), (go_fd, 4)]
    targets = {target for _, target in moves}
    for k, (fd, target) in enumerate(moves):  # a source that is another move's target would be overwritten first:
        while fd in targets and fd != target:  # park it on a free fd outside the targets (closed just below)
            fd = os.dup(fd)
        moves[k] = (fd, target)
    for fd, target in moves:
        os.dup2(fd, target)
    os.closerange(5, 65536)
    _drop_privileges(uid)
    _set_limits(cpu_seconds, memory_mb, file_size_mb, max_open_files, max_processes)
    global _IN_RUN
    # SIGXCPU/SIGXFSZ handlers were installed in the zygote; from here on they report on fd 3 (a judged program's
    # fd 3 is its channel: its limit signals just end it, and the zygote reads why from its exit status)
    _IN_RUN = not functional
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir.decode()  # the rest was scrubbed once, in the zygote
    # (sys.stdin/stdout/stderr, made once in the zygote over fds 0-2, now are this run's files; sys.argv is set too)
    if held:  # started ahead, while every slot was busy: wait for one (EOF: the zygote is gone or gave up on it)
        if os.read(4, 1) != b"g":
            os._exit(0)
    os.close(4)
    if functional:
        _remote.serve_program(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=3), code, setup, _exit)
    try:  # dont_inherit: not this module's `from __future__ import annotations`
        compiled = compile(code, "solution.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        _report("compile", f"{type(e).__name__}: {e}")
        os._exit(1)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compiled, ns)
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)  # as `sys.exit("message")` does
        _exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
    except BaseException as e:
        import traceback

        traceback.print_exc()
        _report("runtime", f"{type(e).__name__}: {str(e)[:300]}")
        _exit(1)
    _exit(0)


JUDGE_UID_OFFSET = 100_000  # slot k's judge runs as BASE_UID + JUDGE_UID_OFFSET + k (its programs: BASE_UID + k)
_INLINE_TESTS = 48 * 1024  # bytes of marshalled tests sent to a judge inside its message


class _Judges:
    """One long-lived judge process per slot, forked from the zygote on first use; it runs the functional tests
    of every run in its slot, one at a time (``_remote.judge``), calling into the run's program over a socket.

    A judge is never in a program's reach: it runs outside the runs' PID namespaces as a uid of its own (a program
    cannot signal it, trace it or open its /proc files; without uid switching it is at least non-dumpable, so it
    cannot be traced or read), and the tests reach it in a memory file the program never has. It writes the run's
    report (which the program never has either: a test passes only when the judge saw it pass), then tells the
    zygote it is done, then tells the program to end. A judge that does not finish in time is killed and replaced;
    one process per slot instead of one per run keeps the cost of a judged run close to that of a plain one."""

    def __init__(self, iso: dict):
        self.iso = iso
        self.by_slot: dict[int, tuple[int, socket.socket]] = {}

    def submit(self, slot: int, rid: int, program_end: int, tests: bytes, report_fd: int, cpu: int = -1) -> None:
        """Give slot ``slot``'s judge the run ``rid``: its end of the program's channel, the marshalled
        (tests, setup), and the run's report file; ``cpu`` >= 0: the judge runs on that CPU (the program's)."""
        inline = len(tests) <= _INLINE_TESTS  # small tests travel in the message itself, larger in a memory file
        tests_fd = _DEVNULL if inline else _memfile(tests)
        head = struct.pack("!qi", rid, len(tests)) + (tests if inline else b"")
        try:
            for _ in range(2):
                if slot not in self.by_slot:
                    self._spawn(slot)
                _pin(self.by_slot[slot][0], cpu)
                try:
                    socket.send_fds(self.by_slot[slot][1], [head], [program_end, tests_fd, report_fd])
                    return
                except OSError:
                    self.kill(slot)
            raise OSError("could not reach the judge")
        finally:
            if not inline:
                os.close(tests_fd)

    def pid(self, slot: int) -> int:
        entry = self.by_slot.get(slot)
        return entry[0] if entry else 0

    def wait(self, slot: int, rid: int, timeout: float) -> str:
        """Wait for the judge to finish run ``rid`` ("" when it did; else why not, and the judge is replaced)."""
        entry = self.by_slot.get(slot)
        if entry is None:
            return "the judge died"
        chan = entry[1]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([chan], [], [], left)[0]:
                self.kill(slot)
                return "the tests did not finish in time"
            try:
                msg = chan.recv(16)
            except OSError:
                msg = b""
            if len(msg) != 8:
                self.kill(slot)
                return "the judge died"
            if struct.unpack("!q", msg)[0] == rid:  # (an earlier run that never started may have left its answer)
                return ""

    def kill(self, slot: int) -> None:
        pid, chan = self.by_slot.pop(slot)
        chan.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        uid = BASE_UID + JUDGE_UID_OFFSET + slot if self.iso["uid_switch"] else None
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(theirs.fileno(), 3)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # a test's prints go nowhere (the caller's stderr pipe must never fill)
                    os.dup2(null, fd)
                os.closerange(4, 65536)  # the client's socket, the template's, other judges'
                _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
                _drop_privileges(uid)
                _set_limits(1 << 20, 4096, 64, None, None)
                _judge_loop(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=3))
            finally:
                os._exit(0)
        theirs.close()
        self.by_slot[slot] = (pid, ours)


def _judge_loop(chan: socket.socket) -> None:
    """A judge's life: take a run, judge it, say done, tell the program to end; until the zygote goes."""
    import random

    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(chan, 12 + _INLINE_TESTS, 3)
        except OSError:
            return
        if len(msg) < 12 or len(fds) != 3:
            return
        rid, size = struct.unpack("!qi", msg[:12])
        program_end, tests_fd, report_fd = fds
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=program_end)

        def report(kind: str, *item, _fd=report_fd) -> None:
            if kind == "test" and item[1]:
                os.write(_fd, b'["test",%d,true,""]\n' % item[0])
            else:
                os.write(_fd, (json.dumps([kind, *item]) + "\n").encode())

        try:
            tests, setup = marshal.loads(msg[12:] if len(msg) == 12 + size else os.pread(tests_fd, size, 0))
            os.close(tests_fd)
            random.seed(0)  # every run's tests see the same random stream, as in a fresh process
            _remote.judge(sock, tests, setup, report, lambda: _remote.PROGRAM_ENDED)
        except BaseException as e:  # noqa: BLE001 - one run's failure must not end the judge
            try:
                report("runtime", f"judge error: {type(e).__name__}: {str(e)[:200]}")
            except BaseException:  # noqa: S110
                pass
        os.close(report_fd)
        try:
            chan.send(struct.pack("!q", rid))
        except OSError:
            return
        _remote.end(sock)
        sock.close()


def _rehearse(times: int = 10) -> None:
    """Go through what ``_program`` does before and after the user's code, on harmless targets, here in the zygote.

    A run's first use of an operation writes to memory it shares with the zygote: the interpreter's type-attribute
    cache, the warm-up counters and inline caches of the Python code it runs (``os.environ``'s methods, this
    module's), the reference counts of what it touches. Done here ten times, those caches are filled and that code is
    specialised before the template is forked, and a run copies ~30 fewer pages (of ~330). Keep in step with
    ``_program``; drifting apart costs speed, not safety."""
    program = ("from typing import List, Optional, Dict, Tuple\nimport math\n"
               "def f(numbers: List[int], k: int) -> Optional[Dict[str, Tuple[int, float]]]:\n"
               "    return {str(k): (len(numbers), math.sqrt(k))} if numbers else None\n")
    test = compile("assert f([1], 4) == {'4': (1, 2.0)}\nassert f([], 1) is None", "<test>", "exec", dont_inherit=True)
    payload = marshal.dumps((program, "", 10, 1024, 16, 64, 16, True, -1))
    judge_part = marshal.dumps([test])
    req_fd = _memfile(payload + judge_part)
    r, w = os.pipe()
    try:
        for _ in range(times):
            code, setup, *_limits = marshal.loads(os.pread(req_fd, len(payload), 0))
            tests = marshal.loads(os.pread(req_fd, len(judge_part), len(payload)))
            try:
                os.setsid()  # the zygote already leads its session: EPERM
            except OSError:
                pass
            os.chdir(b"/")
            for target in (r, w):
                fd, spare = os.open(b"/dev/null", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), os.dup(target)
                os.dup2(fd, spare)
                os.close(fd)
                os.close(spare)
            os.closerange(r + 1000, r + 1001)
            if os.geteuid() == 0:
                os.setgid(os.getgid())
                os.setuid(os.getuid())
            for res in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE,
                        resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC):
                resource.setrlimit(res, resource.getrlimit(res))
            os.environ["HOME"] = os.environ["TMPDIR"] = b"/tmp".decode()
            ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
            exec(compile(code, "solution.py", "exec", dont_inherit=True), ns)
            _remote.rehearse(code, tests)
            for i, _test in enumerate(tests):
                os.write(w, b'["test",%d,true,""]\n' % i)
            os.write(w, b'["done"]\n')
            sys.stdout.flush()
            os.read(r, 4096)
    finally:
        for fd in (req_fd, r, w):
            os.close(fd)


class _Run:
    """A program the zygote has started (``pid`` is None until the template answers)."""

    __slots__ = ("req", "slot", "uid", "workdir", "fds", "pid", "pidfd", "start", "deadline", "timed_out", "go",
                 "cpu", "judge_pid")

    def __init__(self, req: dict, slot: int, uid: int | None, workdir: str, fds: tuple[int, int, int], go: int):
        self.req, self.slot, self.uid, self.workdir = req, slot, uid, workdir
        self.fds = fds  # the zygote's ends of the run's report, stdout and stderr
        self.go = go  # held: the write end of the pipe its process waits on before the user's code; else -1
        self.pid: int | None = None
        self.pidfd = -1
        self.start = time.monotonic()
        self.deadline = self.start + req["limits"]["timeout"] if go < 0 else float("inf")
        self.timed_out = False
        self.cpu = -1  # the CPU it shares with its judge (_CpuShare); -1: none
        self.judge_pid = 0  # its judge (judged runs)

    def admit(self) -> None:
        """The run has a slot: its clock starts (a held run is let go, on the CPU with the fewest judged runs)."""
        if self.go >= 0 and self.judge_pid > 0 and self.cpu < 0:
            self.cpu = _CPUS.take()
            _pin(self.judge_pid, self.cpu)
            if self.pid is not None:
                _pin(self.pid, self.cpu)
        if self.go >= 0:
            try:
                os.write(self.go, b"g")
            except OSError:
                pass
            os.close(self.go)
            self.go = -1
        self.start = time.monotonic()
        self.deadline = self.start + self.req["limits"]["timeout"]
        self.timed_out = False

    def started(self, pid: int) -> None:
        self.pid, self.pidfd = pid, os.pidfd_open(pid)
        if self.go < 0 and self.cpu >= 0 and self.judge_pid > 0:  # a held run admitted before its pid came
            _pin(pid, self.cpu)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        if self.go >= 0:
            os.close(self.go)
            self.go = -1
        if self.pidfd >= 0:
            os.close(self.pidfd)
        _CPUS.give(self.cpu)
        self.cpu = -1
        _rmtree(self.workdir)


class _CpuShare:
    """Which CPU a judged run's program and its judge share. The two take turns (a call, its answer), so on one CPU
    each call is a local switch; on two, each wakes the other across CPUs, which costs about twice the CPU time on a
    VM (measured: ~50 vs ~100 us a call). A run takes the CPU with the fewest judged runs of this zygote on it."""

    def __init__(self) -> None:
        self.load: dict[int, int] = {}

    def reset(self, share: list[int], offset: int = 0) -> None:
        """Use the CPUs of ``share`` this process may run on (the client gives each zygote its own part of the
        machine, so zygotes do not pile their runs onto the same CPUs), else all of ours, ties going first to the
        ``offset``-th (zygotes sharing CPUs start apart); none when fewer than two."""
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except OSError:
            cpus = []
        if len(set(share) & set(cpus)) > 1:
            cpus = sorted(set(share) & set(cpus))
        k = offset % len(cpus) if cpus else 0
        self.load = {c: 0 for c in cpus[k:] + cpus[:k]} if len(cpus) > 1 else {}  # min() takes the first of ties

    def take(self) -> int:
        if not self.load:
            return -1
        cpu = min(self.load, key=self.load.__getitem__)
        self.load[cpu] += 1
        return cpu

    def give(self, cpu: int) -> None:
        if cpu in self.load:
            self.load[cpu] -= 1


_CPUS = _CpuShare()


def _pin(pid: int, cpu: int) -> None:
    if cpu >= 0:
        try:
            os.sched_setaffinity(pid, (cpu,))
        except OSError:
            pass
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
    try:
        if _IN_RUN:
            _report("limit", "CPU time limit exceeded" if signum == signal.SIGXCPU else "output size limit exceeded")
    finally:
        os._exit(128 + signum)


def _run_child(workdir: bytes, uid: int | None, fds: tuple[int, ...], req_len: int, pid_ns: bool,
               held: bool) -> None:
    """Entry of a run's process. ``fds``: its report (with functional tests: its channel to the judge), its request
    (a marshalled tuple the zygote wrote; never the tests), its stdin, stdout and stderr, all memory files (stdin may
    be /dev/null), and the pipe on which a held run waits for its slot (/dev/null otherwise)."""
    try:
        req_fd = fds[1]
        data = os.pread(req_fd, req_len, 0)
        while len(data) < req_len:  # a short read: only for very large requests, if ever
            more = os.pread(req_fd, req_len - len(data), len(data))
            if not more:
                break
            data += more
        _program(marshal.loads(data), workdir, uid, fds, not pid_ns, held)
    finally:
        os._exit(70)


class _Forker:
    """Forks runs for the zygote from a small idle copy of it (the *template*).

    Forking write-protects every page of the forking process, and the process then takes a copy-on-write fault on
    each page it writes while a run lives. The zygote writes many (it parses requests, tracks runs, reads results),
    the template almost none: it waits for "fork the run in this directory" (with the run's memory files), clones
    with CLONE_PARENT (so the run is the zygote's own child: waited for, timed and killed by the zygote as before) and
    answers the pid. The zygote does not wait for that answer: it goes on serving and takes the pid when it comes
    (``replies``). A dead template is replaced; without raw clone support the zygote forks runs itself.
    """

    def __init__(self, iso: dict, close_in_template: list[socket.socket]):
        self.iso, self.close_in_template = iso, close_in_template
        self.chan: socket.socket | None = None
        self.pid = 0
        self.waiting: collections.deque = collections.deque()  # runs sent to the template, not yet answered
        self.answered: list[tuple[Any, int]] = []
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
        # Kept to a few C calls: every page the template writes while a run lives is copied for it.
        pid_ns = self.iso["pid_namespace"]
        flags = CLONE_PARENT | (CLONE_NEWPID if pid_ns else 0)
        recvmsg, send, unpack, pack = chan.recvmsg, chan.send, struct.unpack, struct.pack
        close, clone = os.close, _clone
        anc_size = socket.CMSG_SPACE(6 * 4)
        while True:
            try:
                msg, anc, _, _ = recvmsg(4096, anc_size)
            except OSError:
                os._exit(0)
            if len(msg) < 12 or len(anc) != 1 or len(anc[0][2]) != 24:
                os._exit(0)
            fds = unpack("6i", anc[0][2])
            uid, req_len, held = unpack("3i", msg[:12])
            try:
                pid = clone(flags)
            except OSError:
                pid = -1
            if pid == 0:
                _run_child(msg[12:], uid if uid >= 0 else None, fds, req_len, pid_ns, held == 1)
            for fd in fds:
                close(fd)
            send(pack("i", pid))

    def start(self, token: Any, workdir: bytes, uid: int | None, fds: list[int], req_len: int,
              held: bool) -> int | None:
        """Start the run prepared in ``workdir`` (``fds``: report, request, stdin, stdout, stderr, go). Normally it is
        sent to the template and its pid comes later from ``replies()`` (None here): the zygote does not wait for
        the clone. Without a template the run is forked here and its pid returned."""
        for _ in range(2):
            if self.chan is None and SYS_CLONE is not None:
                self._spawn()
            if self.chan is None:
                break
            try:
                socket.send_fds(self.chan, [struct.pack("3i", -1 if uid is None else uid, req_len, int(held))
                                            + workdir], fds)
            except OSError:  # the template is gone and never saw this run: replace it and send again
                self._lost()
                continue
            self.waiting.append(token)
            return None
        pid = _clone(CLONE_NEWPID) if self.iso["pid_namespace"] else os.fork()
        if pid == 0:
            _run_child(workdir, uid, tuple(fds), req_len, self.iso["pid_namespace"], held)
        return pid

    def replies(self, block: bool = False) -> list[tuple[Any, int]]:
        """(token, pid) for each run the template has answered; pid < 0: not started (clone failed, or the
        template died first: such a run is never started twice)."""
        while self.waiting and self.chan is not None:
            try:
                reply = self.chan.recv(4, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                reply = b""
            if len(reply) != 4:
                self._lost()
                break
            self.answered.append((self.waiting.popleft(), struct.unpack("i", reply)[0]))
        out, self.answered = self.answered, []
        return out

    def _lost(self) -> None:
        """The template is gone: keep the answers it sent, fail the runs it did not answer, reap it."""
        if self.chan is not None:
            while self.waiting:
                try:
                    reply = self.chan.recv(4, socket.MSG_DONTWAIT)
                except OSError:
                    break
                if len(reply) != 4:
                    break
                self.answered.append((self.waiting.popleft(), struct.unpack("i", reply)[0]))
        self.answered += [(token, -2) for token in self.waiting]
        self.waiting.clear()
        self._reap()

    def _reap(self) -> None:
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _memfile(data: bytes) -> int:
    """A read-write fd holding ``data``, positioned at 0, with no name in any directory."""
    try:
        fd = os.memfd_create("refinery-run")
    except (AttributeError, OSError):  # no memfd: an unlinked file on the (private) /tmp
        import tempfile

        fd, path = tempfile.mkstemp(prefix="refinery-")
        os.unlink(path)
    if not data:
        return fd
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


_DEVNULL = -1


def _start_run(req: dict, slot: int, iso: dict, forker: _Forker, judges: _Judges, held: bool = False) -> _Run:
    """Prepare a run's directory and files and hand it to the forker (its pid may come later). A ``held`` run's
    process gets ready and then waits for ``_Run.admit`` before the user's code."""
    global _DEVNULL
    uid = BASE_UID + slot if iso["uid_switch"] else None
    if iso["private_tmp"]:
        workdir = f"/tmp/run-{slot}"  # the zygote's private /tmp: nobody else creates names there
        if os.path.lexists(workdir):
            _rmtree(workdir)
        os.mkdir(workdir, 0o700)
    else:  # a shared /tmp: a fresh, unguessable name (another user may have planted run-0 as a symlink)
        import tempfile

        workdir = tempfile.mkdtemp(prefix="refinery-run-")
    if uid is not None:
        os.chown(workdir, uid, uid)
    lim = req["limits"]
    tests = req.get("tests")
    cpu = _CPUS.take() if tests is not None and not held else -1  # a held run takes one when admitted
    payload = marshal.dumps((req["code"], req.get("setup") or "", lim["cpu_seconds"], lim["memory_mb"],
                             lim["file_size_mb"], lim["max_open_files"], lim["max_processes"], tests is not None,
                             cpu))
    if _DEVNULL < 0:
        _DEVNULL = os.open(os.devnull, os.O_RDONLY)
    kept: list[int] = []  # report, stdout, stderr: read by the zygote after the run
    sent_only: list[int] = []  # request, stdin: the run's alone
    try:
        for _ in range(3):
            kept.append(_memfile(b""))
        sent_only.append(_memfile(payload))
        fd3 = kept[0]  # the run's report
        if tests is not None:  # the program's fd 3 is its channel to the judge, who alone holds the report
            judge_end, program_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                judges.submit(slot, req["id"], judge_end.fileno(), marshal.dumps((tests, req.get("setup") or "")),
                              kept[0], cpu)
            finally:
                judge_end.close()
            fd3 = program_end.detach()
            sent_only.append(fd3)
        stdin_fd = _memfile(req["stdin"].encode()) if req.get("stdin") else _DEVNULL
        if stdin_fd != _DEVNULL:
            sent_only.append(stdin_fd)
        go_r = go_w = -1
        if held:
            go_r, go_w = os.pipe()
            sent_only.append(go_r)
            kept.append(go_w)
        run = _Run(req, slot, uid, workdir, (kept[0], kept[1], kept[2]), go_w)
        run.cpu, cpu = cpu, -1  # the run gives it back when closed
        if tests is not None:
            run.judge_pid = judges.pid(slot)
        pid = forker.start(run, os.fsencode(workdir), uid,
                           [fd3, sent_only[0], stdin_fd, kept[1], kept[2], go_r if held else _DEVNULL],
                           len(payload), held)
    except OSError:
        _CPUS.give(cpu)
        for fd in kept:
            os.close(fd)
        _rmtree(workdir)
        raise
    finally:
        for fd in sent_only:
            os.close(fd)
    if pid is not None:
        run.started(pid)
    return run


def _read_fd(fd: int, cap: int) -> tuple[bytes, int]:
    """The first ``cap`` bytes of a memory file and its size."""
    size = os.fstat(fd).st_size
    chunks, pos, end = [], 0, min(size, cap)
    while pos < end:
        chunk = os.pread(fd, end - pos, pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks), size


def _finish_run(run: _Run, iso: dict, judges: _Judges) -> dict:
    """Reap the program, read its outputs and report, clean up; the result as a dict."""
    lim = run.req["limits"]
    _, wstatus, usage = os.wait4(run.pid, 0)
    wall = time.monotonic() - run.start
    if not iso["pid_namespace"]:
        _kill_leftovers(run.pid, run.uid)
    status, rc, sig = "ok", None, None
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        status = "killed"
    else:
        rc = os.WEXITSTATUS(wstatus)
    if run.timed_out:
        status = "timeout"
    judged = run.req.get("tests") is not None
    judge_problem = judges.wait(run.slot, run.req["id"], 2.0) if judged else ""
    report_fd, out_fd, err_fd = run.fds
    out, out_size = _read_fd(out_fd, lim["max_output"])
    res = result(status, exit_code=rc, signal=sig, stdout=out.decode("utf-8", errors="replace"),
                 stderr=_read_fd(err_fd, lim["max_output"])[0].decode("utf-8", errors="replace"),
                 wall=round(wall, 4), cpu=round(usage.ru_utime + usage.ru_stime, 4),
                 max_rss_mb=round(usage.ru_maxrss / 1024, 1), page_faults=usage.ru_minflt + usage.ru_majflt)
    for line in _read_fd(report_fd, 1 << 20)[0].decode("utf-8", errors="replace").splitlines():
        try:  # written by the run's process: the program may have forged or garbled it
            item = json.loads(line)
        except (ValueError, RecursionError):  # '[' * 10**5 nests too deep for the decoder
            continue
        if not isinstance(item, list) or not item:
            continue
        if item[0] == "test" and len(item) == 4:
            res["tests"].append(item[1:])
        elif item[0] in ("compile", "runtime") and len(item) == 2:
            res["reason"] = f"{item[0]} error: {item[1]}"
        elif item[0] == "limit" and len(item) == 2:
            res["reason"] = item[1]
            res["status"] = "killed"
    if judged and status != "timeout" and (judge_problem or len(res["tests"]) < len(run.req["tests"])
                                           or _remote.PROGRAM_ENDED in str(res["reason"])):
        # the tests stopped early: why, from the program's exit (the judge only saw its channel close)
        why = _remote.exit_reason(wstatus, res["cpu"], lim["cpu_seconds"])
        for t in res["tests"]:
            if _remote.PROGRAM_ENDED in t[2]:
                t[2] = why
        if judge_problem:
            res["reason"] = judge_problem
        elif why.endswith("limit exceeded"):
            res["status"], res["reason"] = "killed", why
        elif not res["reason"] or _remote.PROGRAM_ENDED in str(res["reason"]):
            res["reason"] = why
    if status == "timeout":
        res["reason"] = f"timeout after {lim['timeout']}s"
    elif str(res["reason"]).endswith("limit exceeded"):
        pass
    elif out_size >= lim["file_size_mb"] * 1024 * 1024:
        res["reason"] = "output size limit exceeded"
    elif sig == signal.SIGKILL:
        res["reason"] = "killed (CPU time or memory limit)"
    elif sig is not None and not res["reason"]:
        res["reason"] = f"killed by signal {signal.Signals(sig).name}"
    elif "MemoryError" in res["stderr"] and not res["reason"]:
        res["reason"] = "memory limit exceeded"
    run.close()
    return res


def _rmtree(path: str) -> None:
    """Remove a run's directory (whatever the program left in it; symlinks are removed, not followed)."""
    try:
        os.rmdir(path)  # usually empty (outputs are memory files); rmdir never follows a symlink
        return
    except OSError:
        pass
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
from typing import List, Tuple, Optional, Dict, Any, Union
import math
def g(numbers: List[int], threshold: float, d: Dict[str, Tuple[int, int]]) -> Optional[List[Union[int, str]]]:
    return sorted(x for x in numbers if abs(x) > threshold and math.sqrt(abs(x)) >= 0) or None
assert g([1, 2, 3], 0.5, {}) == [1, 2, 3]
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
    exec(compile(WARM_UP, "<warm-up>", "exec", dont_inherit=True), {"__name__": "__warm__"})
    json.loads(json.dumps(["test", 0, True, ""]))


def serve(fd: int, concurrency: int, slot_base: int, preimport: list[str], paths: list[str],
          cpus: list[int] | None = None) -> None:
    """The zygote's loop: read requests, start programs (at most ``concurrency`` at once), enforce deadlines,
    send results. One fork (a clone into a new PID namespace) per run; no helper process in between.
    ``paths`` (the caller's site-packages) are importable by programs without running ``site``."""
    import gc

    sock = socket.socket(fileno=fd)
    sys.path.extend(p for p in paths if p not in sys.path)
    register_at_fork = os.register_at_fork

    def no_reseed(**hooks):  # random reseeds from urandom in every forked child: ~40 page copies per run
        if getattr(hooks.get("after_in_child"), "__name__", "") == "seed":
            hooks.pop("after_in_child")
        if hooks:
            register_at_fork(**hooks)

    os.register_at_fork = no_reseed
    try:
        for name in preimport:
            try:
                __import__(name)
            except ImportError:
                pass
    finally:
        os.register_at_fork = register_at_fork
    iso = _setup_namespaces(paths)
    if iso["pid_namespace"] and SYS_CLONE is None:
        iso["pid_namespace"] = False
    try:
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the caller
        _libc_call("prctl", PR_SET_NAME, b"refinery-sbx", 0, 0, 0)  # how it shows in ps/top (programs too)
        # nobody of the same uid may trace it or open its /proc files (without uid switching, programs run as the
        # zygote's own uid): inherited by the template, the judges and every run
        _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
    except OSError:
        pass
    global _STDIO
    # Scrub the environment once; each run adds only its HOME and TMPDIR.
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    # explicit encodings: text mode would otherwise import `locale` in every child
    _STDIO = (open(0, closefd=False, encoding="utf-8"), open(1, "w", closefd=False, encoding="utf-8"),
              open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace", buffering=1))
    sys.stdin, sys.stdout, sys.stderr = _STDIO  # what every run gets (the zygote itself never prints)
    sys.argv = ["solution.py"]
    signal.signal(signal.SIGXFSZ, _limit_hit)
    signal.signal(signal.SIGXCPU, _limit_hit)
    _fork_api()
    _warm_up()
    _rehearse()
    gc.collect()
    gc.freeze()  # forked programs then do not dirty every page through GC bookkeeping
    _CPUS.reset(cpus or [], slot_base)
    forker = _Forker(iso, close_in_template=[sock])
    judges = _Judges(iso)
    send(sock, {"isolation": iso, "template": forker.pid if forker.chan is not None else None})
    poll = select.epoll()
    poll.register(sock.fileno(), select.EPOLLIN)
    watched: dict[int, Any] = {sock.fileno(): None}  # fd -> what its readiness means (None: the caller)
    template_chan = None
    # One slot more than ``concurrency``: while every slot runs a program, the next run is started ahead and *held*
    # (its process ready, waiting before the user's code), so a finishing run is followed at once.
    free_slots = list(range(slot_base, slot_base + concurrency + 1))
    queue: collections.deque = collections.deque()
    runs: list[_Run] = []  # started, pid known (those sent to the template wait in forker.waiting)
    active = 0  # admitted runs (running the user's code, or about to)
    held: _Run | None = None

    def release(run: _Run) -> None:
        """``run`` is over (or never started): its slot is free, and a held run may go."""
        nonlocal active, held
        free_slots.append(run.slot)
        if run is held:
            held = None
            return
        active -= 1
        if held is not None:
            held.admit()
            held, active = None, active + 1

    def watch(run: _Run) -> None:  # its pid is known: wait for its exit
        runs.append(run)
        watched[run.pidfd] = run
        poll.register(run.pidfd, select.EPOLLIN)

    def started(run: _Run, pid: int) -> None:  # the template answered
        if pid < 0:
            run.close()
            release(run)
            why = "clone failed" if pid == -1 else "the sandbox template died while starting it"
            send(sock, {"id": run.req["id"], "result": result("error", f"could not start: {why}")})
            return
        run.started(pid)
        watch(run)

    def finish(run: _Run) -> None:
        poll.unregister(run.pidfd)
        del watched[run.pidfd]
        runs.remove(run)
        result = _finish_run(run, iso, judges)
        release(run)
        send(sock, {"id": run.req["id"], "result": result})

    while True:
        deadline = min((r.deadline for r in runs), default=float("inf"))  # a held run's is infinite
        timeout = max(0.0, deadline - time.monotonic()) if deadline != float("inf") else -1
        for fd, _ in poll.poll(timeout):
            what = watched.get(fd, "gone")
            if what is None:
                raw = recv_raw(sock)
                if raw is None:  # the caller is gone: kill every run, those still starting included
                    for run, pid in forker.replies(block=True):
                        if pid > 0:
                            runs.append(run)
                            run.pid = pid
                    for run in runs:
                        try:
                            os.kill(run.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    os._exit(0)
                queue.append(marshal.loads(raw))
            elif what == "template":
                for run, pid in forker.replies():
                    started(run, pid)
            elif isinstance(what, _Run) and what.pid is not None:
                finish(what)
        now = time.monotonic()
        for run in runs:
            if now >= run.deadline and not run.timed_out:
                run.timed_out = True
                try:
                    os.kill(run.pid, signal.SIGKILL)  # PID 1 of its namespace: the kernel kills the rest
                except ProcessLookupError:
                    pass
        while queue and free_slots and (active < concurrency or held is None):
            req = queue.popleft()
            slot = free_slots.pop()
            hold = active >= concurrency
            try:
                run = _start_run(req, slot, iso, forker, judges, held=hold)
            except OSError as e:
                free_slots.append(slot)
                send(sock, {"id": req["id"], "result": result("error", f"could not start: {e}")})
                continue
            if hold:
                held = run
            else:
                active += 1
            if run.pid is not None:  # forked here (no template)
                watch(run)
        if forker.answered:  # runs a template that died while we were sending had not answered
            for run, pid in forker.replies():
                started(run, pid)
        if forker.chan is not template_chan:  # a new template (a closed socket leaves epoll by itself)
            template_chan = forker.chan
            if template_chan is not None:
                watched[template_chan.fileno()] = "template"
                poll.register(template_chan.fileno(), select.EPOLLIN)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), [m for m in sys.argv[4].split(",") if m],
          [p for p in sys.argv[5].split(os.pathsep) if p], [int(c) for c in sys.argv[6].split(",") if c])
