"""The sandbox against real attacks. Each test runs hostile code and checks that it was stopped."""

import os
import socket
import threading
import time
import uuid

import pytest

from refinery.verifiers.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def sb():
    box = Sandbox(concurrency=4, limits=Limits(timeout=5, cpu_seconds=5, memory_mb=512, file_size_mb=4))
    yield box
    box.close()


def needs(sb, feature):
    if not sb.isolation.get(feature):
        pytest.skip(f"sandbox has no {feature} here (needs root or user namespaces): {sb.isolation}")


def test_runs_code_with_stdin_and_reports_tests(sb):
    assert sb.run("print(sum(map(int, input().split())))", stdin="2 3\n").stdout == "5\n"
    res = sb.run("def f(x):\n    return x + 1", tests=["assert f(1) == 2", "assert f(1) == 3", "raise SystemExit"])
    assert [t[:2] for t in res.tests] == [[0, True], [1, False], [2, False]]


def test_infinite_loop_is_killed_on_time(sb):
    t = time.monotonic()
    res = sb.run("while True:\n    pass", limits=Limits(timeout=1, cpu_seconds=30))
    assert res.status == "timeout" and time.monotonic() - t < 5


def test_cpu_limit(sb):
    res = sb.run("while True:\n    pass", limits=Limits(timeout=30, cpu_seconds=1))
    assert res.status == "killed" and "CPU" in res.reason


def test_fork_bomb_is_contained_and_cleaned_up(sb):
    code = ("import os\n"
            "while True:\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        pass\n")
    t = time.monotonic()
    res = sb.run(code, limits=Limits(timeout=2, max_processes=16))
    assert res.status in ("timeout", "killed") and time.monotonic() - t < 10
    # everything it spawned is gone: the next run works normally and fast
    ok = sb.run("print('alive')")
    assert ok.stdout == "alive\n" and ok.wall < 1.0


def test_memory_bomb(sb):
    res = sb.run("x = bytearray(4 * 1024**3)\nprint('allocated')", limits=Limits(memory_mb=256))
    assert "allocated" not in res.stdout and "MemoryError" in (res.stderr + res.reason)


def test_a_gigabyte_of_output_is_cut(sb):
    t = time.monotonic()
    res = sb.run("import sys\nchunk = 'x' * 1024 * 1024\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
                 limits=Limits(file_size_mb=4, max_output=1 << 20, timeout=10))
    assert res.status == "killed" and "output size" in res.reason
    assert len(res.stdout) <= 1 << 20 and time.monotonic() - t < 10


def test_no_network(sb):
    needs(sb, "network")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = ("import socket\n"
            "for host in ('127.0.0.1', '1.1.1.1'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port} if host.startswith('127') else 80), timeout=2)\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('blocked', host, e)\n")
    res = sb.run(code)
    server.close()
    assert "CONNECTED" not in res.stdout and res.stdout.count("blocked") == 2


def test_cannot_write_outside_its_temp_dir(sb, tmp_path):
    needs(sb, "private_tmp")
    target = f"/tmp/refinery-escape-{uuid.uuid4().hex}"
    os.chmod(tmp_path, 0o777)  # even a world-writable directory of the host
    outside = tmp_path / "escape.txt"
    code = (f"import os\n"
            f"for p in ({target!r}, {str(outside)!r}, '/etc/refinery-escape', os.path.expanduser('~/escape')):\n"
            "    try:\n"
            "        open(p, 'w').write('pwned')\n"
            "        print('WROTE', p)\n"
            "    except OSError as e:\n"
            "        print('denied', p)\n"
            "open('inside.txt', 'w').write('fine')\n"
            "print(open('inside.txt').read())\n")
    res = sb.run(code)
    assert "fine" in res.stdout  # its own temp dir works
    assert not os.path.exists(target) and not outside.exists() and not os.path.exists("/etc/refinery-escape")
    if sb.isolation.get("uid_switch"):
        assert f"denied {outside}" in res.stdout


def test_cannot_read_parent_secrets(sb, monkeypatch):
    needs(sb, "uid_switch")
    monkeypatch.setenv("REFINERY_TEST_SECRET", "s3cret-value")
    code = ("import os, glob\n"
            "print(dict(os.environ))\n"
            f"mine = ['/proc/{os.getpid()}/environ', '/proc/{os.getppid()}/environ']\n"
            "for p in mine + glob.glob('/proc/*/environ'):\n"
            "    try:\n"
            "        data = open(p, 'rb').read()\n"
            "        print(data.decode(errors='replace'))\n"
            "    except OSError:\n"
            "        pass\n")
    fresh = Sandbox(concurrency=1)  # started after the secret was set
    try:
        res = fresh.run(code)
    finally:
        fresh.close()
    assert res.status == "ok" and "s3cret-value" not in res.stdout + res.stderr


def test_cannot_kill_the_parent(sb):
    needs(sb, "uid_switch")
    victim_pid = os.getpid()
    code = ("import os, signal\n"
            f"for pid in ({victim_pid}, os.getppid(), -1):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        print('SENT', pid)\n"
            "    except OSError as e:\n"
            "        print('refused', pid)\n")
    res = sb.run(code)
    assert f"refused {victim_pid}" in res.stdout
    assert sb.run("print(1)").stdout == "1\n"  # the sandbox server survived too


def test_environment_is_scrubbed(sb):
    res = sb.run("import os\nprint(sorted(os.environ))")
    assert res.stdout.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


def test_runs_have_no_new_privs(sb):
    """Set once in the template and inherited: a setuid binary could not raise a run's privileges."""
    res = sb.run("print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1])")
    assert res.stdout == "1\n", res


def test_concurrent_callers(sb):
    results = []

    def work(i):
        results.append(sb.run(f"print({i} * 2)").stdout)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(f"{i * 2}\n" for i in range(20))


def test_server_restarts_if_it_dies():
    box = Sandbox(concurrency=1)
    try:
        box._proc.kill()
        box._proc.wait()
        time.sleep(0.1)
        assert box.run("print('back')").stdout == "back\n"
    finally:
        box.close()


def test_runs_are_forked_by_the_template_and_survive_its_death():
    """Runs are cloned from the zygote's idle template (as the zygote's own children); if the template dies, a new
    one is made and runs go on."""
    import signal

    box = Sandbox(concurrency=1)
    try:
        server = box._servers[0]
        if server.template_pid is None:
            pytest.skip("no raw clone on this platform: the zygote forks runs itself")
        assert box.run("print('x')").stdout == "x\n"
        os.kill(server.template_pid, signal.SIGKILL)
        time.sleep(0.1)
        assert [box.run(f"print({i})").stdout for i in range(3)] == ["0\n", "1\n", "2\n"]
        assert box.run("while True: pass", limits=Limits(timeout=0.5)).status == "timeout"
    finally:
        box.close()


def test_a_slow_program_holds_up_only_its_own_slot():
    """Runs are handed to a server only when it has room, so quick runs queued after a slow one go to the free
    server instead of waiting behind it."""
    box = Sandbox(concurrency=2)
    try:
        slow = box.submit("import time\ntime.sleep(1.5)")
        quick = [box.submit(f"print({i})") for i in range(30)]
        slow.result(timeout=30)
        assert sum(f.done() for f in quick) >= 25  # at most the one queued behind the slow run waits for it
        assert [f.result(timeout=30).stdout for f in quick] == [f"{i}\n" for i in range(30)]
    finally:
        box.close()


def test_run_dir_removal_never_follows_symlinks(tmp_path):
    """A planted symlink (as a run dir, or inside one) is removed, never followed into what it points at."""
    from refinery.verifiers._zygote import _rmtree

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "link").symlink_to(victim)
    (run / "file").write_text("x")
    _rmtree(str(run))
    planted = tmp_path / "run-0"
    planted.symlink_to(victim)
    _rmtree(str(planted))
    assert not run.exists() and not planted.is_symlink() and (victim / "precious").read_text() == "keep"


def test_runs_report_their_cpu_memory_and_page_faults(sb):
    busy = sb.run("x = bytearray(64 * 1024 * 1024)\ns = 0\nfor i in range(3_000_000):\n    s += i\nprint(s)")
    idle = sb.run("pass")
    assert busy.status == "ok" and busy.stdout == f"{sum(range(3_000_000))}\n"
    assert busy.cpu > idle.cpu and busy.cpu > 0.05
    assert busy.max_rss_mb >= 64 > idle.max_rss_mb
    assert busy.page_faults > idle.page_faults > 0


def test_garbage_on_the_report_channel_does_not_hurt_the_server(sb):
    garbage = "b'{\"x\": 1}\\n[]\\n[\"test\"]\\n\\xff\\xfe\\n[\"limit\"]\\n' + b'[' * 100000 + b'\\n'"
    # a program run without tests owns fd 3, its report: garbage there changes nothing
    res = sb.run(f"import os\nos.write(3, {garbage})\nprint('done')")
    assert res.status == "ok" and res.stdout == "done\n"
    # a judged program has no report at all; garbage on every fd it has (its call channel too) fails only its run
    spray = (f"import os\nfor fd in range(64):\n    try:\n        os.write(fd, {garbage})\n"
             "    except OSError:\n        pass\n")
    res = sb.run(spray + "def f():\n    return 1\n", tests=["assert f() == 1"])
    assert not any(ok for _, ok, _ in res.tests) and "protocol error" in res.reason, res
    assert sb.run("print('still here')").stdout == "still here\n"


def test_runs_waiting_on_a_dead_template_are_reported_not_started():
    """The zygote does not wait for the template's clone; runs it has sent but that the template never answered are
    failed (never started twice) when the template dies, and a new template takes the next ones."""
    import signal

    box = Sandbox(concurrency=4, servers=1)
    try:
        server = box._servers[0]
        if server.template_pid is None:
            pytest.skip("no raw clone on this platform: the zygote forks runs itself")
        os.kill(server.template_pid, signal.SIGSTOP)
        futures = [box.submit(f"print({i})") for i in range(3)]
        time.sleep(0.3)
        assert not any(f.done() for f in futures)
        os.kill(server.template_pid, signal.SIGKILL)
        results = [f.result(timeout=10) for f in futures]
        assert all(r.status == "error" and "template died" in r.reason for r in results), results
        assert [box.run(f"print({i})").stdout for i in range(3)] == ["0\n", "1\n", "2\n"]
    finally:
        box.close()


def test_random_is_seeded_once_per_server_not_per_run():
    """Runs do not reseed `random` from urandom (that alone cost ~40 page copies per run): a program that does not
    seed it sees the same stream in every run of a server, as with a fixed seed."""
    box = Sandbox(concurrency=1)
    try:
        outs = {box.run("import random\nprint(random.random())").stdout for _ in range(3)}
        assert len(outs) == 1
        seeded = box.run("import random\nrandom.seed(7)\nprint(random.random())").stdout
        assert float(seeded) == __import__("random").Random(7).random()
    finally:
        box.close()


def test_programs_and_tests_run_with_their_own_compiler_flags(sb):
    """Nothing leaks from the harness's own module (it uses `from __future__ import annotations`): annotations are
    evaluated as in `python solution.py`. Tests are compiled once by the caller; a test that does not compile fails
    on its own."""
    res = sb.run("def f(x: int) -> int:\n    return x\nprint(f.__annotations__)",
                 tests=["def g(y: int): pass\nassert g.__annotations__ == {'y': int}", "assert (", "assert f(2) == 2"])
    assert res.stdout == "{'x': <class 'int'>, 'return': <class 'int'>}\n"
    assert [t[:2] for t in res.tests] == [[0, True], [1, False], [2, True]] and "SyntaxError" in res.tests[1][2]


def test_a_run_held_ready_behind_busy_slots_keeps_the_limit_and_its_own_clock():
    """With every slot busy the next run is started ahead and held before the user's code: programs still never
    overlap beyond ``concurrency``, and the held run's timeout counts from when it gets its slot."""
    box = Sandbox(concurrency=1, servers=1)
    try:
        stamp = "import time\nprint(time.time())\ntime.sleep({})\nprint(time.time())"
        first = box.submit(stamp.format(1.0), limits=Limits(timeout=5))
        queued = [box.submit(stamp.format(0.5), limits=Limits(timeout=0.9)) for _ in range(2)]
        results = [first.result(timeout=30)] + [f.result(timeout=30) for f in queued]
        assert all(r.status == "ok" for r in results), results  # 2.0 s after submission, within 0.9 s of starting
        spans = sorted(tuple(map(float, r.stdout.split())) for r in results)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one at a time
        assert all(r.wall < 0.9 for r in results[1:])
    finally:
        box.close()


def test_output_left_in_buffers_is_kept_as_python_would(sb):
    res = sb.run("import sys\nsys.stderr.write('no newline')\nprint('out', end='')")
    assert (res.stdout, res.stderr, res.exit_code) == ("out", "no newline", 0)
    res = sb.run("import sys\nprint('partial', end='')\nsys.exit('bad input')")
    assert (res.stdout, res.stderr, res.exit_code) == ("partial", "bad input\n", 1)


def test_a_judged_program_shares_one_cpu_with_its_judge_and_inherits_no_extra_fd(sb):
    """Performance placement (see _zygote._CpuShare), and the zygote's boot file (its compiled code) is closed."""
    prog = ("import os\ndef cpus():\n    return sorted(os.sched_getaffinity(0))\n"
            "def fds():\n    return sorted(map(int, os.listdir('/proc/self/fd')))\n")
    res = sb.run(prog, tests=["assert len(cpus()) == 1 or len(os.sched_getaffinity(0)) == 1",
                              "assert [fd for fd in fds() if fd > 4] in ([], [5])"], setup="import os")
    assert [t[:2] for t in res.tests] == [[0, True], [1, True]], res
    # unjudged runs keep every CPU the zygote has
    out = sb.run("import os\nprint(len(os.sched_getaffinity(0)))").stdout
    assert int(out) == len(os.sched_getaffinity(0))


def test_cpu_share_balances_judged_runs_and_keeps_to_its_part_of_the_machine(monkeypatch):
    from refinery.verifiers import _zygote

    monkeypatch.setattr(_zygote.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    share = _zygote._CpuShare()
    share.reset([2, 3, 9])  # 9 is not ours
    taken = [share.take() for _ in range(4)]
    assert sorted(taken) == [2, 2, 3, 3]
    share.give(2)
    assert share.take() == 2
    share.reset([], offset=4)  # no share: all CPUs, ties first to the offset-th
    assert [share.take() for _ in range(3)] == [4, 5, 0]
    monkeypatch.setattr(_zygote.os, "sched_getaffinity", lambda pid: {3})
    share.reset([])
    assert share.take() == -1  # one CPU: nothing to place
