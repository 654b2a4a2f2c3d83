"""Unbiased pass@k and avg@n of one or more models over a benchmark (ProRL's boundary analysis compares two)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from refinery.errors import DataError
from refinery.verifiers.thinking import prompt_opens_thinking, split_thinking

MATH_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_TEMPLATE = "Complete this Python function. Answer with the whole function in a ```python block.\n\n{problem}"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), computed stably."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def load_problems(kind: str, data: Any, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Problems as ``{id, prompt, answer | tests, task?}`` from a procedural task, a benchmark file, or a data
    source (``refinery.sources.DataSource``: a dataset directory, Parquet/CSV, a hub name, with a column
    mapping)."""
    from refinery.sources import own_reader_path, read_rows

    if isinstance(data, str) and data.startswith("tasks:"):
        from refinery.tasks import sample

        name = data.split(":", 1)[1]
        items = sample(name, limit or 200, seed=seed, split="test")
        return [{**it, "task": name, "raw": True} for it in items]
    if own_reader_path(data) is not None:
        recs = _read_records(Path(own_reader_path(data)))
        where = [f"{data} record {i}" for i in range(len(recs))]
    else:
        rows = read_rows(data, required=[("problem", "question", "prompt")])
        recs, where = [r.record for r in rows], [r.where for r in rows]
    out = []
    for i, r in enumerate(recs):
        pid = str(r.get("id") or r.get("unique_id") or r.get("task_id") or i)
        if "entry_point" in r and "test" in r:  # HumanEval
            out.append({"id": pid, "prompt": r["prompt"], "code_prompt": r["prompt"],
                        "tests": {"kind": "functional", "asserts": [r["test"] + f"\ncheck({r['entry_point']})"]}})
        elif "tests" in r:
            out.append({"id": pid, "prompt": r["prompt"], "tests": r["tests"]})
        else:
            problem = r.get("problem") or r.get("question") or r.get("prompt")
            answer = r.get("answer") if r.get("answer") is not None else r.get("expected_answer")
            if problem is None or answer is None:
                raise DataError(f"{where[i]}: needs a problem/question/prompt and an answer")
            answer = str(answer)
            if "####" in answer:  # GSM8K
                answer = answer.rsplit("####", 1)[1].strip()
            out.append({"id": pid, "prompt": problem, "answer": answer})
    if limit:
        out = out[:limit]
    if not out:
        raise DataError(f"no problems in {data}")
    return out


def _request(p: dict, kind: str, template: str | None) -> list[dict[str, str]]:
    if p.get("raw") and template is None:
        return [{"role": "user", "content": p["prompt"]}]
    tpl = template or (CODE_TEMPLATE if kind == "code" else MATH_TEMPLATE)
    return [{"role": "user", "content": tpl.format(problem=p["prompt"])}]


def _scorer(kind: str):
    from refinery.rl.rewards import RewardRouter
    from refinery.verifiers.code import extract_code

    router = RewardRouter()
    math = router.math  # as lenient as the RL reward: an explicit final answer, no last-number fallback

    def score(p: dict, text: str, opened: bool = False) -> bool:
        """Scored on the answer after the thinking; a response that ends inside its thinking is wrong."""
        split = split_thinking(text, opened)
        if not split.closed:
            return False
        text = split.answer
        if p.get("task"):
            return router(p, text)[1]
        if "tests" in p:
            code = extract_code(text)
            if p.get("code_prompt") and "def " not in code:  # a bare body continues the prompt
                code = p["code_prompt"] + code
            return router.code(code, p["tests"]).correct
        if kind == "choice":
            return router.choice(text, p["answer"]).correct
        return math(text, p["answer"]).correct

    return score, router


def prompts_open_thinking(generator, requests: list) -> list[bool]:
    """Per request, whether its rendered prompt leaves the model inside ``<think>`` (DeepSeek-R1 templates), read
    from the generator's tokenizer; False where the prompt is rendered elsewhere (a server)."""
    tok = getattr(generator, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        return [False] * len(requests)
    return [prompt_opens_thinking(r if isinstance(r, str) else
                                  tok.apply_chat_template(r, tokenize=False, add_generation_prompt=True))
            for r in requests]


def length_stats(texts: list[str], opened: list[bool], tokenizer=None) -> dict[str, float]:
    """Mean thinking and answer lengths of responses (chars; tokens when a tokenizer is given, each part tokenised
    on its own) and the share that ended inside their thinking (``unclosed_think_rate``)."""
    splits = [split_thinking(t, o) for t, o in zip(texts, opened)]
    n = max(len(splits), 1)
    out = {"thinking_chars": sum(len(s.thinking) for s in splits) / n,
           "answer_chars": sum(len(s.answer) for s in splits) / n,
           "unclosed_think_rate": sum(not s.closed for s in splits) / n}
    if tokenizer is not None and splits:
        def tokens(parts: list[str]) -> float:
            return sum(len(ids) for ids in tokenizer(parts, add_special_tokens=False)["input_ids"]) / n

        out["thinking_tokens"] = tokens([s.thinking for s in splits])
        out["answer_tokens"] = tokens([s.answer for s in splits])
    return out


def run_eval(kind: str, data: Any, models: list[str], backend: str = "hf", base_url: str | None = None,
             n: int = 16, ks: list[int] | None = None, limit: int | None = None, temperature: float = 0.8,
             max_new_tokens: int = 512, template: str | None = None, seed: int = 0,
             out: Path | None = None, opens_thinking: bool | None = None,
             api_key_env: str = "OPENAI_API_KEY") -> dict[str, Any]:
    """pass@k for each model on the same problems and samples budget, and the mean thinking / answer lengths of
    its responses (``lengths``); writes results/report/plot to ``out``. Responses are scored on what follows their
    thinking. ``opens_thinking``: whether the prompts open ``<think>`` (DeepSeek-R1 templates; None: read from the
    model's tokenizer, False for a server)."""
    from refinery.generation import SamplingParams, get_generator

    ks = ks or [1]
    problems = load_problems(kind, data, limit, seed)
    requests = [_request(p, kind, template) for p in problems]
    score, router = _scorer(kind)
    results: dict[str, Any] = {"kind": kind, "data": str(data), "n": n, "ks": ks, "problems": len(problems),
                               "models": {}}
    try:
        for model in models:
            kwargs: dict[str, Any] = {}
            if backend == "openai":
                kwargs = {"api_key_env": api_key_env, **({"base_url": base_url} if base_url else {})}
            gen = get_generator(backend, model, **kwargs)
            params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
            comps = gen.generate(requests, params)
            opened = prompts_open_thinking(gen, requests) if opens_thinking is None else \
                [opens_thinking] * len(requests)
            correct = [sum(score(p, c.text, opened[i]) for c in comps[i * n:(i + 1) * n])
                       for i, p in enumerate(problems)]
            r = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}
            r["avg@n"] = sum(correct) / (n * len(correct))
            r["lengths"] = length_stats([c.text for c in comps], [opened[i // n] for i in range(len(comps))],
                                        getattr(gen, "tokenizer", None))
            r["lengths"]["completion_tokens"] = sum(len(c.token_ids) for c in comps) / max(len(comps), 1)
            r["lengths"]["length_stop_rate"] = sum(c.finish_reason == "length" for c in comps) / max(len(comps), 1)
            r["per_problem_correct"] = dict(zip((p["id"] for p in problems), correct))
            results["models"][model] = r
    finally:
        router.close()
    if out is not None:
        _write(results, Path(out))
    return results


LENGTH_COLUMNS = [("thinking_tokens", ".1f"), ("answer_tokens", ".1f"), ("thinking_chars", ".1f"),
                  ("answer_chars", ".1f"), ("completion_tokens", ".1f"), ("unclosed_think_rate", ".3f"),
                  ("length_stop_rate", ".3f")]


def _write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    ks = results["ks"]
    lines = [f"# pass@k: {results['kind']} on {results['data']}", "",
             f"{results['problems']} problems, n = {results['n']} samples each.", "",
             "| model | " + " | ".join(f"pass@{k}" for k in ks) + " | avg@n |",
             "|---|" + "---|" * (len(ks) + 1)]
    for name, r in results["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[f'pass@{k}']:.3f}" for k in ks) + f" | {r['avg@n']:.3f} |")
    lines += ["", "Mean response lengths, thinking (inside `<think>…</think>`) and answer (what is scored) apart; "
              "tokens re-tokenised per part (\u2013 where the tokenizer is not local).", "",
              "| model | thinking tokens | answer tokens | thinking chars | answer chars | completion tokens | "
              "unclosed `<think>` | stopped by length |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        ln = r.get("lengths", {})
        cells = [format(ln[key], fmt) if key in ln else "\u2013" for key, fmt in LENGTH_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, r in results["models"].items():
            ax.plot(ks, [r[f"pass@{k}"] for k in ks], marker="o", label=Path(name).name or name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "passk.png", dpi=110)
        plt.close(fig)
        lines += ["", "![pass@k](passk.png)"]
    except ImportError:
        pass
    (out / "report.md").write_text("\n".join(lines) + "\n")
