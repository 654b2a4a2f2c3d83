"""Rewards a policy cannot game: every exploit in ``gaming.py`` scores 0 in every mode, the references score 1, and
no mode can give a score outside [0, 1]."""

from collections import Counter

import pytest

from refinery.verifiers.code import CodeVerifier
from refinery.verifiers.sandbox import Limits, RunResult
from tests.verifiers.gaming import EXPLOITS, PROBLEMS, cases

LIMITS = Limits(cpu_seconds=5, timeout=20)


@pytest.fixture(scope="module")
def verifiers():
    strict = CodeVerifier(mode="all", limits=LIMITS, concurrency=4)
    yield {"all": strict, "fraction": CodeVerifier(mode="fraction", limits=LIMITS, sandbox=strict.sandbox)}
    strict.close()


def test_the_suite_covers_every_family():
    families = Counter(family for family, *_ in EXPLOITS)
    assert set(families) == {"object", "exit", "fd", "patch", "frames", "leak"}, families
    assert len(EXPLOITS) >= 40 and len(PROBLEMS) >= 8
    assert any(p.tests["asserts"][0].lstrip().startswith(("METADATA", "import", "def check")) for p in PROBLEMS)
    assert len(cases()) == len(EXPLOITS) * len(PROBLEMS)


@pytest.mark.parametrize("mode", ["all", "fraction"])
def test_references_score_one(verifiers, mode):
    verdicts = verifiers[mode].batch([(p.reference, p.tests) for p in PROBLEMS])
    assert [(p.name, v.score) for p, v in zip(PROBLEMS, verdicts)] == [(p.name, 1.0) for p in PROBLEMS], \
        [v.reason for v in verdicts]


@pytest.mark.parametrize("mode", ["all", "fraction"])
def test_every_exploit_scores_zero(verifiers, mode):
    items = cases()
    verdicts = verifiers[mode].batch([(program, p.tests) for _, program, p in items])
    rewarded = [(cid, v.score, v.reason) for (cid, _, _), v in zip(items, verdicts) if v.score != 0.0]
    assert not rewarded, rewarded
    assert all(v.reason for v in verdicts)  # every rejection says why
    # and the sandbox is still healthy after all of that
    assert verifiers[mode](PROBLEMS[0].reference, PROBLEMS[0].tests).score == 1.0


def test_rejections_say_why(verifiers):
    prime = next(p for p in PROBLEMS if p.name == "prime")
    why = {name: verifiers["all"](prime.program(prelude, body), prime.tests).reason
           for _, name, prelude, body in EXPLOITS}
    assert "result is not plain data: Liar" in why["always_equal"]
    assert "result is not plain data: I" in why["int_subclass"]
    assert "result is not plain data: Fake" in why["lying_class"]
    assert "nested deeper" in why["self_referential"]
    assert "message" in why["huge_result"] and "bytes" in why["huge_result"]
    assert "SystemExit before the tests ran" in why["sys_exit_at_import"]
    hypot = next(p for p in PROBLEMS if p.name == "hypot")  # its tests use the program's `import math`
    assert verifiers["all"](hypot.reference, hypot.tests).score == 1.0
    assert "program exited (code 0)" in why["os_exit_in_call"]


def test_no_mode_can_score_outside_zero_one(verifiers):
    """Whatever the report holds (duplicated, out-of-range or malformed lines), passes are distinct test indices
    the judge reported, out of the tests the caller has."""
    tests = {"kind": "functional", "asserts": ["assert f() == 1", "assert f() == 2"]}
    forged = RunResult("ok", tests=[[0, True, ""]] * 40 + [[1, True, ""], [7, True, ""], [-1, True, ""],
                                                             ["1", True, ""], [1, "yes", ""], [0]])
    for v in verifiers.values():
        verdict = v._functional("code", tests, forged)
        assert 0.0 <= verdict.score <= 1.0
    assert verifiers["fraction"]._functional("code", tests, forged).score == 1.0  # tests 0 and 1 really passed once
    half = RunResult("ok", tests=[[0, True, ""], [0, True, ""], [0, True, ""]])
    assert verifiers["fraction"]._functional("code", tests, half).score == 0.5
    assert verifiers["all"]._functional("code", tests, half).score == 0.0


def test_reward_router_uses_the_same_judge():
    from refinery.rl.rewards import RewardRouter

    router = RewardRouter()
    try:
        p = next(p for p in PROBLEMS if p.name == "twosum")
        item = {"id": "code-0", "prompt": "two sum", "tests": p.tests}
        responses = [f"```python\n{p.reference}```"] + [p.program(prelude, body) for _, _, prelude, body in EXPLOITS]
        scored = router.group(item, responses)
        assert scored[0] == (1.0, True)
        assert all(r == (0.0, False) for r in scored[1:]), [(e[1], s) for e, s in zip(EXPLOITS, scored[1:]) if s[0]]
    finally:
        router.close()


@pytest.mark.parametrize("mode", ["all", "fraction"])
def test_verify_code_cli_rejects_the_exploits(tmp_path, mode):
    import json

    from refinery.cli import main

    p = next(p for p in PROBLEMS if p.name == "count")
    rows = [{"id": "reference", "response": p.reference, "tests": p.tests}] + [
        {"id": name, "response": f"```python\n{p.program(prelude, body)}```", "tests": p.tests}
        for _, name, prelude, body in EXPLOITS]
    inp, out = tmp_path / "programs.jsonl", tmp_path / "verdicts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["verify", "code", "--input", str(inp), "--output", str(out), "--mode", mode, "--timeout", "5",
                 "--no-progress"]) == 0
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    scores = {v["id"]: v["score"] for v in verdicts[:-1]}
    assert scores.pop("reference") == 1.0
    assert set(scores.values()) == {0.0}, {k: s for k, s in scores.items() if s}
    assert verdicts[-1]["summary"]["correct"] == 1
