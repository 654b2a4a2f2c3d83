"""Code rewards: run a response's program in the sandbox against functional or stdin/stdout tests.

``tests`` is ``{"kind": "functional", "setup": "<imports>", "asserts": ["assert f(1) == 2", ...]}`` or
``{"kind": "stdio", "cases": [{"input": "...", "output": "..."}, ...]}``. The reward is 1 only if every test passes
(``mode="all"``, AceReason) or the fraction passed (``mode="fraction"``, ProRL). Compile errors, crashes and
timeouts score 0 with their reason.

Functional asserts run in a judge process that never executes the program's code; calls into the program (the
function under test, a class and its methods via handles) cross as plain data, so a result whose comparison, hash or
truth value is overridden fails with ``result is not plain data: <type>``. Passes are counted here, from the judge's
report, as distinct test indices out of the tests given: a score is in [0, 1] by construction.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Iterable

from refinery.errors import DataError
from refinery.verifiers.base import Verdict, Verifier
from refinery.verifiers.sandbox import Limits, RunResult, Sandbox
from refinery.verifiers.thinking import split_thinking

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The last fenced code block (python-tagged ones preferred), or the response itself when bare code; only the
    text after the thinking counts (none when the response ends inside it)."""
    response = split_thinking(response).answer
    blocks = _FENCE.findall(response)
    if not blocks:
        return response.strip("\n")
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    return (python or [code for _, code in blocks])[-1]


def outputs_match(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Token-wise comparison (whitespace-insensitive); with ``float_tol``, numeric tokens within tolerance."""
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if float_tol is None:
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if abs(fx - fy) > float_tol * max(1.0, abs(fy)):
            return False
    return True


def check_tests(tests: Any) -> dict:
    if not isinstance(tests, dict) or tests.get("kind") not in ("functional", "stdio"):
        raise DataError("code tests must be {'kind': 'functional', 'asserts': [...]} or "
                        "{'kind': 'stdio', 'cases': [{'input', 'output'}]}")
    if tests["kind"] == "functional":
        asserts = tests.get("asserts")
        if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) for a in asserts):
            raise DataError("functional tests need a non-empty 'asserts' list of strings")
    else:
        cases = tests.get("cases")
        if not isinstance(cases, list) or not cases or not all(
                isinstance(c, dict) and isinstance(c.get("output"), str) for c in cases):
            raise DataError("stdio tests need a non-empty 'cases' list of {input, output} strings")
    return tests


class CodeVerifier(Verifier):
    """Runs code in a shared :class:`Sandbox` (started lazily, one per verifier)."""

    name = "code"

    def __init__(self, mode: str = "all", limits: Limits | None = None, float_tol: float | None = None,
                 concurrency: int | None = None, sandbox: Sandbox | None = None):
        if mode not in ("all", "fraction"):
            raise ValueError(f"mode must be 'all' or 'fraction', got {mode!r}")
        self.mode, self.limits, self.float_tol, self.concurrency = mode, limits or Limits(), float_tol, concurrency
        self._sandbox = sandbox
        self._lock = threading.Lock()

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(concurrency=self.concurrency, limits=self.limits)
            return self._sandbox

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __getstate__(self):  # the sandbox is a live process: not pickled
        return {**self.__dict__, "_sandbox": None, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, response: str, tests: Any) -> Verdict:
        return self._submit(response, tests)()

    def _submit(self, response: str, tests: Any) -> Callable[[], Verdict]:
        """Start the runs one check needs; the returned function waits for them and scores."""
        try:
            tests = check_tests(tests)
        except DataError as e:
            bad = Verdict(0.0, None, f"bad tests: {e}")
            return lambda: bad
        code = extract_code(response)
        if not code.strip():
            empty = Verdict(0.0, None, "no code found")
            return lambda: empty
        if tests["kind"] == "functional":
            fut = self.sandbox.submit(code, tests=tests["asserts"], setup=tests.get("setup", ""),
                                      limits=self.limits)
            return lambda: self._functional(code, tests, fut.result())
        futures = [self.sandbox.submit(code, stdin=c.get("input", ""), limits=self.limits) for c in tests["cases"]]
        return lambda: self._stdio(code, tests, [f.result() for f in futures])

    def _score(self, passed: int, total: int, first_failure: str, code: str) -> Verdict:
        if not 0 <= passed <= total:  # unreachable: both counts are the trusted side's
            raise AssertionError(f"passed {passed} of {total} tests")
        if passed == total:
            return Verdict(1.0, code, f"passed {passed}/{total}")
        score = passed / total if self.mode == "fraction" else 0.0
        return Verdict(score, code, f"passed {passed}/{total}; {first_failure}")

    def _functional(self, code: str, tests: dict, res: RunResult) -> Verdict:
        """Counted by construction: a test passes only if the judge reported it passed, each index at most once, so
        the score is in [0, 1] whatever the program did."""
        total = len(tests["asserts"])
        if res.reason and not res.tests:
            return Verdict(0.0, code, res.reason)
        seen: dict[int, tuple[bool, str]] = {}
        for item in res.tests:
            if isinstance(item, (list, tuple)) and len(item) == 3 and type(item[0]) is int and 0 <= item[0] < total:
                seen.setdefault(item[0], (item[1] is True, str(item[2])))
        passed = sum(ok for ok, _ in seen.values())
        failures = [f"test {i}: {why}" for i, (ok, why) in sorted(seen.items()) if not ok]
        if len(seen) < total:
            failures.append(res.reason or f"stopped after {len(seen)} tests")
        return self._score(passed, total, failures[0] if failures else "", code)

    def _stdio(self, code: str, tests: dict, results: list[RunResult]) -> Verdict:
        cases = tests["cases"]
        passed, first = 0, ""
        for i, (case, res) in enumerate(zip(cases, results)):
            if res.status != "ok" or res.exit_code != 0:
                why = res.reason or f"exit code {res.exit_code}"
            elif not outputs_match(res.stdout, case["output"], self.float_tol):
                why = "wrong answer"
            else:
                passed += 1
                continue
            first = first or f"case {i}: {why}"
        return self._score(passed, len(cases), first, code)

    def batch(self, pairs: Iterable[tuple[str, Any]], workers: int | None = None, timeout: float | None = None,
              progress: bool = False) -> list[Verdict]:
        """Many checks at once: every run is queued in the sandbox (which runs ``concurrency`` at a time and
        enforces each run's limits), then the verdicts are collected in order; no thread per check."""
        from refinery.verifiers.pool import _bar

        waits = [self._submit(response, tests) for response, tests in pairs]
        update = _bar(progress, len(waits))
        out = []
        for wait in waits:
            out.append(wait())
            update(len(out))
        update(None)
        return out
