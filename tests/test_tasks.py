import pytest

from refinery.errors import ConfigError
from refinery.tasks import TASKS, get_task, make_splits, normalise_prompt, sample, split_of
from refinery.tasks.arithmetic import LEVELS
from refinery.tasks.base import canonical_key, final_answer
from refinery.tasks.countdown import evaluate, is_solution, parse_prompt


@pytest.mark.parametrize("name", sorted(TASKS))
def test_items_are_deterministic_by_seed(name):
    assert sample(name, 30, seed=5) == sample(name, 30, seed=5)
    assert sample(name, 30, seed=5) != sample(name, 30, seed=6)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_item_schema_and_worked_solutions_verify(name):
    task = get_task(name)
    items = sample(name, 200, seed=1)
    assert {it["difficulty"] for it in items} == set(task.difficulties)
    for it in items:
        assert set(it) == {"id", "domain", "prompt", "answer", "difficulty", "solution"}
        assert it["id"].startswith(name + "-") and it["domain"] == task.domain
        assert task.check(it["solution"], it["answer"]), it
        assert not task.check(it["solution"].rsplit("The answer is", 1)[0], it["answer"])  # no final answer


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_duplicate_prompts(name):
    items = sample(name, 500, seed=2)
    assert len({normalise_prompt(it["prompt"]) for it in items}) == 500


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_valid_and_test_never_share_a_problem(name):
    train, test = make_splits(name, 2000, 200, seed=3)
    valid = sample(name, 50, seed=3, split="valid")
    assert len(train) == 2000 and len(test) == 200 and len(valid) == 50
    keys = {sp: {canonical_key(name, i["prompt"], i["answer"]) for i in items}
            for sp, items in (("train", train), ("test", test), ("valid", valid))}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["valid"] and not keys["test"] & keys["valid"]
    assert len(keys["test"]) == 200 and len(keys["valid"]) == 50  # held-out items are distinct problems
    # the split is a property of the problem: samples with other seeds or sizes stay disjoint too
    other_test = sample(name, 150, seed=99, split="test")
    assert all(split_of(canonical_key(name, i["prompt"], i["answer"])) == "test" for i in other_test)
    assert not {canonical_key(name, i["prompt"], i["answer"]) for i in other_test} & keys["train"]


def _twin(name: str, item: dict) -> tuple:
    """The problem up to reordering, computed here independently of the library's canonical forms."""
    import re

    if name == "countdown":
        numbers, target = parse_prompt(item["prompt"])
        return tuple(sorted(numbers)), target
    stem = item["prompt"].split(". Options: ")[0]
    if name == "word_problems":
        from refinery.tasks.word_problems import NAMES, THINGS

        for w in NAMES + THINGS:
            stem = re.sub(rf"\b{w}\b", "_", stem)
        return stem, item["answer"]
    expr = stem.removeprefix("Compute ")
    return tuple(sorted(re.findall(r"\d+", expr))), "".join(sorted(re.findall(r"(?<=[\d)])[-+*]", expr))), eval(expr)  # noqa: S307


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_heldout_problem_has_a_twin_in_training(name):
    """Same numbers in another order (countdown, sums), other names (word problems), another option order or the
    open-ended version (MCQ): none of a held-out problem's twins is in RL or SFT training."""
    train = sample(name, 3000, seed=0, split="train")
    sft = sample(name, 3000, seed=11, split="train")  # the SFT data draws from the same split with its own seed
    test = sample(name, 150, seed=0, split="test")
    held = {_twin(name, i) for i in test}
    assert len(held) == len(test)  # twin-free among themselves too
    assert not held & {_twin(name, i) for i in train + sft}
    if name == "arithmetic_mcq":  # the MCQ version of a held-out question is never the open question in training
        open_train = sample("arithmetic", 3000, seed=0, split="train")
        assert not held & {_twin("arithmetic", i) for i in open_train}


def test_canonical_forms_merge_twins_only():
    key = canonical_key
    cd = "Using the numbers {}, each at most once, write an expression equal to {}."
    assert key("countdown", cd.format("3, 5, 9", 24), "3*5+9") == key("countdown", cd.format("9, 3, 5", 24), "9+5*3")
    assert key("countdown", cd.format("3, 5, 9", 24), "x") != key("countdown", cd.format("3, 5, 9", 25), "x")
    assert key("arithmetic", "Compute 3+5", "8") == key("arithmetic", "Compute 5+3", "8")
    assert key("arithmetic", "Compute 3-5", "-2") != key("arithmetic", "Compute 5-3", "2")
    assert key("arithmetic_mcq", "Compute 5+3. Options: (A) 9 (B) 8 (C) 7 (D) 18", "B") == \
        key("arithmetic", "Compute 3+5", "8")
    a = "Jo has 10 books. Jo buys 2 bags with 5 books each. How many books does Jo have now?"
    b = "Mia has 10 pens. Mia buys 5 bags with 2 pens each. How many pens does Mia have now?"
    c = "Mia walks 10 km each day for 2 days, then 5 km more on the last day. How many km does Mia walk in total?"
    assert key("word_problems", a, "20") == key("word_problems", b, "20") != key("word_problems", c, "25")


def test_arithmetic_answers_are_the_expression_value():
    for it in sample("arithmetic", 300, seed=4):
        expr = it["prompt"].removeprefix("Compute ")
        assert eval(expr) == int(it["answer"])  # noqa: S307 - generated from digits and + - * ( )


def test_arithmetic_difficulty_controls_digits_and_operations():
    for level, (digits, ops, _) in LEVELS.items():
        for it in sample("arithmetic", 50, seed=0, difficulty=level):
            expr = it["prompt"].removeprefix("Compute ")
            assert sum(expr.count(o) for o in "+*") + expr.count("-") - expr.count("(-") == ops
            numbers = [int(t) for t in "".join(c if c.isdigit() else " " for c in expr).split()]
            assert max(len(str(n)) for n in numbers) <= digits


def test_arithmetic_checks_exact_answer():
    check = get_task("arithmetic").check
    assert check("3+4=7. The answer is 7.", "7")
    assert not check("The answer is 71.", "7")
    assert not check("The answer is -7.", "7")
    assert check("The answer is 1,234.", "1234")


def test_final_answer_takes_the_last():
    assert final_answer("The answer is 3. Wait. The answer is 5.") == "5"
    assert final_answer("no answer here") is None


def test_countdown_evaluator_is_restricted_and_exact():
    assert evaluate("(3+5)*2")[0] == 16
    assert evaluate("7/2")[0] * 2 == 7  # exact fractions, not floats
    for bad in ["__import__('os').system('true')", "2**10", "x+1", "abs(-3)", "[1,2]", "1 if 1 else 2"]:
        with pytest.raises(ValueError):
            evaluate(bad)
    with pytest.raises(ValueError, match="division by zero"):
        evaluate("3/(2-2)")


def test_countdown_evaluator_is_silent_on_odd_literals():
    """A policy writes "1or 2": Python's parser warns (invalid decimal literal), which must not reach the console."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            evaluate("1or 2")
    assert not [w for w in seen if issubclass(w.category, SyntaxWarning)], [str(w.message) for w in seen]


def test_countdown_numbers_used_at_most_once():
    assert is_solution("(19*12)-19", [19, 19, 12], 209)
    assert not is_solution("(19*12)-19", [19, 12, 5], 209)  # 19 used twice, given once
    assert not is_solution("19*12", [19, 19, 12], 209)  # wrong value
    assert is_solution("20+5", [20, 5, 3], 25)  # not all numbers need to be used


def test_countdown_prompt_round_trip():
    for it in sample("countdown", 100, seed=0):
        numbers, target = parse_prompt(it["prompt"])
        assert is_solution(it["answer"], numbers, target)
    check = get_task("countdown").check
    assert check("The answer is 2+17", "17+2")  # another expression solving the same puzzle
    assert not check("The answer is 2*17", "17+2")


def test_bad_names_and_levels_are_clear_errors():
    with pytest.raises(ConfigError, match="did you mean 'arithmetic'"):
        sample("arithmetik", 3)
    with pytest.raises(ConfigError, match="has difficulties"):
        sample("arithmetic", 3, difficulty=9)
    with pytest.raises(ConfigError, match="cannot give 500 distinct items"):
        sample("arithmetic", 500, difficulty=1)  # only 200 one-digit +/- problems exist
    with pytest.raises(ConfigError):
        sample("arithmetic", 3, split="dev")


def test_final_answer_stops_at_the_sentence_end():
    assert final_answer("The answer is 42. Then more text.") == "42"
    assert final_answer("answer is: (3+4)*2\nnext line") == "(3+4)*2"
    assert final_answer("The answer is 2.5.") == "2.5"
    assert final_answer("The answer is .") is None
