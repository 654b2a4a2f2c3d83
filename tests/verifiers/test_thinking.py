"""Reasoning responses: one split of (thinking, answer, closed), and every verifier scores only the answer."""

import pytest

from refinery.verifiers import ThinkSplit, split_thinking
from refinery.verifiers.choice import ChoiceVerifier, extract_choice
from refinery.verifiers.code import extract_code
from refinery.verifiers.format import FormatVerifier
from refinery.verifiers.math import MathConfig, MathVerifier, extract_answer
from refinery.verifiers.thinking import prompt_opens_thinking

SPLITS = [
    ("The answer is 4.", False, ("", "The answer is 4.", True)),  # no tags: all answer
    ("<think>2+2</think>The answer is 4.", False, ("2+2", "The answer is 4.", True)),
    ("<think>\n 2+2 \n</think>  \n\nThe answer is 4.  \n", False, ("2+2", "The answer is 4.", True)),
    ("<think>a</think>b<think>c</think> d", False, ("a\nb\nc", "d", True)),  # several blocks: after the last
    ("Sure. <think>a</think> d", False, ("Sure.\na", "d", True)),  # text before <think> is not the answer
    ("2+2 is 4</think>The answer is 4.", False, ("2+2 is 4", "The answer is 4.", True)),  # R1: only the close
    ("2+2 is 4</think>The answer is 4.", True, ("2+2 is 4", "The answer is 4.", True)),
    ("<think>2+2 is", False, ("2+2 is", "", False)),  # opened, never closed
    ("2+2 is", True, ("2+2 is", "", False)),  # the prompt opened it: no tag at all is still thinking
    ("<think>a</think>b<think>the answer is 4", False, ("a\nb\nthe answer is 4", "", False)),  # reopened
    ("<think>a</think>", False, ("a", "", True)),  # closed, nothing after it
    ("", False, ("", "", True)),
    ("", True, ("", "", False)),
]


@pytest.mark.parametrize("response,opened,expected", SPLITS)
def test_split_thinking(response, opened, expected):
    got = split_thinking(response, opened)
    assert isinstance(got, ThinkSplit) and tuple(got) == expected


def test_answer_keeps_its_first_line_indentation():
    assert split_thinking("    return x + 1\n").answer == "    return x + 1"
    assert split_thinking("<think>t</think>\n\n    return x\n").answer == "    return x"
    assert split_thinking("<think>t</think>  \n  x").answer == "  x"


def test_other_tags():
    s = split_thinking("[r]x[/r]y", open_tag="[r]", close_tag="[/r]")
    assert s == ("x", "y", True)


@pytest.mark.parametrize("prompt,expected", [
    ("<｜User｜>hi<｜Assistant｜><think>\n", True),  # DeepSeek-R1 template
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # Qwen3 enable_thinking=False
    ("<|im_start|>assistant\n", False),
    ("<think>old</think>...<|im_start|>assistant\n", False),
])
def test_prompt_opens_thinking(prompt, expected):
    assert prompt_opens_thinking(prompt) is expected


# -- an answer hidden inside the thinking never earns reward, in any verifier ----------------------------------
@pytest.mark.parametrize("cfg", [MathConfig(), MathConfig(fallback_last_number=False)])
def test_math_answer_inside_thinking_scores_zero(cfg):
    v = MathVerifier(cfg)
    assert v("<think>the answer is 42</think>I don't know", "42").score == 0.0
    assert v("<think>\\boxed{42}</think>", "42").score == 0.0
    assert v("<think>the answer is 42", "42").score == 0.0  # cut off while thinking
    assert v("<think>the answer is 42</think>It is 41, no: the answer is 42.", "42").score == 1.0
    assert v("<think>maybe 41</think>\n\nThe answer is \\boxed{42}", "42").score == 1.0
    assert extract_answer("<think>a</think>b<think>the answer is 42") is None


def test_choice_answer_inside_thinking_scores_zero():
    v = ChoiceVerifier()
    assert v("<think>the answer is (B)</think>I don't know", "B").score == 0.0
    assert v("<think>(A) or (B)? Answer: B", "B").score == 0.0
    assert extract_choice("<think>Paris</think>no idea", ["London", "Paris"]) is None
    assert v("<think>(A) is wrong</think> Answer: (B)", "B").score == 1.0


def test_code_inside_thinking_is_not_extracted():
    assert extract_code("<think>```python\ndef f(): return 1\n```</think>I give up") == "I give up"
    assert extract_code("<think>```python\ndef f(): return 1\n```") == ""
    assert extract_code("plan</think>```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"


def test_format_reward_reads_after_the_thinking():
    loose = FormatVerifier(require_think=False)
    assert loose("<think>\\boxed{4}</think> no box here").score == 0.0
    assert loose("<think>work \\boxed{4}").score == 0.0
    assert "never closed" in loose("<think>work \\boxed{4}").reason
    assert loose("work</think> so \\boxed{4}").score == 1.0
    strict = FormatVerifier()
    assert strict("<think>a</think> \\boxed{1}<think>more").score == 0.0
    assert strict("<think>a</think> \\boxed{1}").score == 1.0
