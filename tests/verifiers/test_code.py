import gzip
import json

import pytest

from refinery.verifiers.code import CodeVerifier, extract_code, outputs_match
from refinery.verifiers.sandbox import Limits


@pytest.fixture(scope="module")
def verifier():
    v = CodeVerifier(limits=Limits(timeout=5))
    yield v
    v.close()


def test_extract_code_takes_the_last_block():
    resp = "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nDone."
    assert extract_code(resp) == "x = 2\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("<think>```python\nbad\n```</think>```py\ngood\n```") == "good\n"


def test_outputs_match():
    assert outputs_match("1 2\n3\n", "1 2 3")
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("0.333", "0.3333")
    assert outputs_match("0.33333", "0.333333", float_tol=1e-4)


STDIO = {"kind": "stdio", "cases": [{"input": "1 2\n", "output": "3"}, {"input": "5 7\n", "output": "12"},
                                    {"input": "-1 1\n", "output": "0"}]}
FUNC = {"kind": "functional", "setup": "import math", "asserts": ["assert f(4) == 2", "assert f(9) == 3",
                                                                  "assert f(2) == math.sqrt(2)"]}


def test_stdio_all_and_fraction(verifier):
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert verifier(good, STDIO).score == 1.0
    partial = "a, b = map(int, input().split())\nprint(a + b if a > 0 else 99)"
    v = verifier(partial, STDIO)
    assert v.score == 0.0 and "passed 2/3" in v.reason and "case 2: wrong answer" in v.reason
    frac = CodeVerifier(mode="fraction", sandbox=verifier.sandbox)
    assert frac(partial, STDIO).score == pytest.approx(2 / 3)


def test_functional(verifier):
    assert verifier("import math\ndef f(x):\n    return math.sqrt(x)", FUNC).score == 1.0
    wrong = verifier("def f(x):\n    return x // 2", FUNC)
    assert wrong.score == 0.0 and "passed 1/3" in wrong.reason


@pytest.mark.parametrize("code,reason", [
    ("def f(:", "compile error"),
    ("raise ValueError('boom')", "runtime error: ValueError: boom"),
    ("while True:\n    pass", "timeout"),
])
def test_failures_score_zero_with_reason(verifier, code, reason):
    v = verifier(code, FUNC)
    assert v.score == 0.0 and reason in v.reason


def test_early_exit_is_not_a_pass(verifier):
    for hack in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "exit()"):
        assert verifier(hack, FUNC).score == 0.0, hack
        assert verifier("import sys\ndef f(x):\n    sys.exit(0)", FUNC).score == 0.0


def test_bad_tests_are_a_verdict_not_a_crash(verifier):
    assert "bad tests" in verifier("print(1)", {"kind": "unit"}).reason
    assert "bad tests" in verifier("print(1)", {"kind": "stdio", "cases": []}).reason


def _humaneval(shared_data):
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _mutate(prompt: str, solution: str) -> str:
    """A wrong solution: same body, but it returns a sentinel that equals nothing first."""
    indent = next(line[: len(line) - len(line.lstrip())] for line in solution.splitlines() if line.strip())
    return prompt + f"{indent}return object()\n" + solution


def test_humaneval_canonical_pass_and_mutants_fail(verifier, shared_data):
    problems = _humaneval(shared_data)
    pairs, mutants = [], []
    for p in problems:
        tests = {"kind": "functional", "setup": "", "asserts": [p["test"] + f"\ncheck({p['entry_point']})"]}
        pairs.append((p["prompt"] + p["canonical_solution"], tests))
        mutants.append((_mutate(p["prompt"], p["canonical_solution"]), tests))
    good = verifier.batch(pairs)
    failed = [(p["task_id"], v.reason) for p, v in zip(problems, good) if v.score != 1.0]
    assert not failed, failed[:5]
    bad = verifier.batch(mutants)
    passed = [p["task_id"] for p, v in zip(problems, bad) if v.score != 0.0]
    assert not passed, passed


@pytest.mark.timeout(120)
def test_a_large_batch_with_large_messages_does_not_deadlock():
    """Hundreds of checks queued at once from one thread, with requests and outputs large enough to fill both
    socket buffers (the client keeps taking results while it is still sending): all verdicts, in order."""
    v = CodeVerifier(limits=Limits(timeout=10), concurrency=2)
    try:
        padding = "#" + "x" * 20_000 + "\n"  # 20 kB per request
        pairs = [(f"{padding}print('y' * 100_000)\nprint({i})", {"kind": "stdio", "cases": [
            {"input": "", "output": "y" * 100_000 + f"\n{i}"}]}) for i in range(200)]
        pairs.append(("x = ", {"kind": "functional", "asserts": ["assert True"]}))  # a compile error in the batch
        pairs.append(("print(1)", {"kind": "bogus"}))  # and bad tests: verdicts, in order
        verdicts = v.batch(pairs)
        assert [x.score for x in verdicts[:200]] == [1.0] * 200
        assert verdicts[200].score == 0.0 and "compile" in verdicts[200].reason
        assert verdicts[201].reason.startswith("bad tests")
    finally:
        v.close()


def test_time_limit_counts_the_programs_cpu_not_the_machines_load():
    """Under a CPU load that slows it to several times its CPU time in wall time, a correct program still passes
    (the verdict reads its CPU time; the wall clock is only a generous backstop), and a program that needs more CPU
    than its limit still fails, saying so."""
    import subprocess
    import sys
    import time

    from refinery.verifiers.sandbox import Sandbox

    work = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i * i\n    return s\n"
    n = 5_000_000  # ~0.25-0.6 s of CPU on this kind of machine
    tests = [f"assert f({n}) == {sum(i * i for i in range(n))}"]
    box = Sandbox(concurrency=2, limits=Limits(cpu_seconds=2))
    burners = []
    try:
        assert box.run(work, tests=tests).tests[0][1]  # the zygote is up before the load starts
        # each in a session of its own, as the sandbox's zygote is (the scheduler shares CPU between sessions)
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
                   for _ in range(8)]
        time.sleep(0.3)
        res = box.run(work, tests=tests)
        assert res.tests == [[0, True, ""]], res
        assert res.wall > 2 * res.cpu > 0.2, res  # the load really slowed it: a wall limit would have punished it
        slow = box.run("def f(n):\n    while True:\n        pass\n", tests=tests, limits=Limits(cpu_seconds=1))
        assert slow.tests[0][1] is False and "CPU time limit exceeded" in slow.reason, slow
    finally:
        for b in burners:
            b.kill()
            b.wait()
    try:
        verdict = CodeVerifier(sandbox=box, limits=Limits(cpu_seconds=1))("def f(n):\n    while True:\n        pass\n",
                                                                         {"kind": "functional", "asserts": tests})
        assert verdict.score == 0.0 and verdict.reason.endswith("CPU time limit exceeded"), verdict
    finally:
        box.close()


def test_limits_default_to_a_cpu_verdict_with_a_generous_wall_backstop():
    assert Limits().cpu_seconds == 10 and Limits().wall == 30.0
    assert Limits(cpu_seconds=2).wall == 14.0 and Limits(timeout=3).wall == 3.0
    assert Limits(cpu_seconds=1.5).to_request()["cpu_seconds"] == 2
