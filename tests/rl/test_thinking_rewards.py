"""RL rewards on reasoning responses: scored after the thinking; cut off inside it, reward 0 (never the thinking)."""

import pytest

from refinery.rl.rewards import TRUNCATED_IN_THINKING, RewardRouter

MATH = {"id": "m-1", "task": "arithmetic", "prompt": "Compute 40+2", "answer": "42"}
CHOICE = {"id": "c-1", "task": "choice_items", "domain": "choice", "prompt": "40+2? (A) 41 (B) 42", "answer": "B"}
COUNTDOWN = {"id": "countdown-1", "task": "countdown", "domain": "code",
             "prompt": "Use 40 and 2 to make 42", "answer": "40+2"}


@pytest.fixture(scope="module")
def router():
    r = RewardRouter()
    yield r
    r.close()


def test_an_answer_hidden_in_the_thinking_earns_nothing(router):
    assert router(MATH, "<think>the answer is 42</think>I don't know") == (0.0, False)
    assert router(CHOICE, "<think>the answer is (B)</think>I don't know") == (0.0, False)
    assert router(COUNTDOWN, "<think>The answer is 40+2</think>no idea") == (0.0, False)
    assert router(MATH, "<think>41?</think>The answer is 42.") == (1.0, True)
    assert router(CHOICE, "<think>not (A)</think>The answer is (B)") == (1.0, True)
    assert router(COUNTDOWN, "<think>try 40+2</think>The answer is 40+2") == (1.0, True)


@pytest.mark.parametrize("item,response", [
    (MATH, "<think>the answer is 42"), (CHOICE, "<think>the answer is (B)"),
    (COUNTDOWN, "<think>The answer is 40+2"), (MATH, "<think>a</think>The answer is 42.<think>again: 42"),
])
def test_truncated_inside_thinking_is_never_scored(router, item, response):
    assert router.verdict(item, response) is TRUNCATED_IN_THINKING
    assert router(item, response) == (0.0, False)


def test_a_prompt_that_opened_the_thinking(router):
    """DeepSeek-R1 templates end the prompt with <think>: the response carries only </think>, or no tag at all
    when it was cut off while thinking."""
    assert router(MATH, "40+2 is 42</think>The answer is 42.", opened=True) == (1.0, True)
    assert router(MATH, "40+2, so the answer is 42", opened=True) == (0.0, False)  # still thinking
    assert router(MATH, "40+2, so the answer is 42") == (1.0, True)  # a prompt without <think>: an answer


def test_no_format_reward_for_a_response_cut_off_while_thinking():
    mixed = RewardRouter(format_weight=0.5)
    assert mixed(MATH, "<think>\\boxed{42}")[0] == 0.0
    assert mixed(MATH, "<think>\\boxed{42}</think>I don't know")[0] == 0.0  # the box must follow the thinking
    assert mixed(MATH, "<think>t</think>\\boxed{42}")[0] == 1.0
    assert mixed(MATH, "thinking</think>\\boxed{42}", opened=True)[0] == 1.0


def test_code_group_truncated_in_thinking_never_reaches_the_sandbox(router):
    item = {"id": "c-1", "prompt": "write f", "tests": {"kind": "functional", "asserts": ["assert f(2) == 4"]}}
    good = "<think>double it</think>\n```python\ndef f(x):\n    return 2 * x\n```"
    hidden = "<think>```python\ndef f(x):\n    return 2 * x\n```</think>I give up"
    cut = "<think>```python\ndef f(x):\n    return 2 * x\n```"
    out = router.group(item, [good, hidden, cut])
    assert out == [(1.0, True), (0.0, False), (0.0, False)]
    assert router.verdict(item, cut) is TRUNCATED_IN_THINKING


def test_reward_model_score_of_a_truncated_response_is_the_group_floor():
    router = RewardRouter()

    class FakeRM:
        def score(self, prompts, responses):
            return {"score": [5.0, -1.0, 9.0][:len(responses)]}

    router.rm = FakeRM()
    out = router.group(MATH, ["The answer is 42.", "The answer is 41.", "<think>long, long"])
    assert out == [(5.0, True), (-1.0, False), (-1.0, False)]  # 9.0 was earned by thinking text only


def test_opens_thinking_from_the_tokenizer_template(family_ckpt):
    from transformers import AutoTokenizer

    from refinery.rl.trainer import opens_thinking

    item = {"id": "m-1", "prompt": "Compute 40+2"}
    assert opens_thinking(AutoTokenizer.from_pretrained(family_ckpt("deepseek-r1-qwen2")), item)
    assert not opens_thinking(AutoTokenizer.from_pretrained(family_ckpt("qwen3")), item)
