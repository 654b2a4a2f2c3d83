"""Every wing on every model family (issue 22, item 2; Puzzle is tested on the families in tests/compression):
generate, serve, SFT (with its completion mask checked per template), one RL step + pass@k eval, reward-model
train/eval/score, the four 2:4 methods and eval ppl, each on the random-init checkpoints of
refinery.models.families at tiny size, on CPU.

Default run (~60-90 s on 2 cores): one cheap cell per wing per family (generate, serve in-process, the SFT
completion mask, the RM encoding, all four 2:4 methods + eval ppl), plus the cells that train through the CLI (SFT
steps, one RL step + eval pass@k, reward-model train/eval/score) for ONE family, rotating daily (``REFINERY_FAMILY``
pins it). Under ``slow``: those training cells for the other families and ``refinery serve`` as a subprocess, so
``-m "slow or not slow"`` runs the full matrix.

Set ``REFINERY_FAMILY_TABLE=path.jsonl`` to record each cell's outcome; ``benchmarks/family_table.py`` runs this
file with it and renders README's family table from the records.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest
import torch

from refinery.models.families import ARCHS
from tests.conftest import free_port

FAMILIES = sorted(ARCHS)
RECORD = os.environ.get("REFINERY_FAMILY_TABLE")
# the family whose training cells join the default run: rotates daily over the families (env REFINERY_FAMILY pins it)
ROTATING = os.environ.get("REFINERY_FAMILY") or FAMILIES[date.today().toordinal() % len(FAMILIES)]
ROTATED = [pytest.param(a, marks=() if a == ROTATING else pytest.mark.slow) for a in FAMILIES]


@contextmanager
def cell(arch: str, wing: str):
    """Record the outcome of one (family, wing) cell when REFINERY_FAMILY_TABLE is set; never hides a failure."""
    try:
        yield
    except BaseException as e:
        if RECORD:
            kind = "skip" if type(e).__name__ == "Skipped" else "fail"
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            _write(arch, wing, kind, msg)
        raise
    else:
        if RECORD:
            _write(arch, wing, "ok", "")


def _write(arch: str, wing: str, outcome: str, detail: str) -> None:
    with open(RECORD, "a") as f:
        f.write(json.dumps({"arch": arch, "wing": wing, "outcome": outcome, "detail": detail}) + "\n")


def _main(*argv: str) -> None:
    from refinery.cli import main

    assert main(list(argv)) == 0, argv


CHATS = [[{"role": "user", "content": "What is 2 + 3?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]]


def _stops(path: Path) -> set[int]:
    gen = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
    return set(gen if isinstance(gen, list) else [gen])


# ---- generate / serve ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", FAMILIES)
def test_generate(arch, family_ckpt, tmp_path):
    """`refinery generate` (HF backend): the tokenizer's own template, stop ids from generation_config."""
    from refinery.generation.hf import HFGenerator

    path = family_ckpt(arch)
    with cell(arch, "generate"):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        inp.write_text("".join(json.dumps({"id": i, "messages": m}) + "\n" for i, m in enumerate(CHATS)))
        _main("generate", "--model", str(path), "--input", str(inp), "--output", str(out), "--temperature", "0",
              "--max-new-tokens", "12", "--no-progress")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == [0, 1]
        gen = HFGenerator(path)
        assert gen.eos_ids == _stops(path)
        for m in CHATS:
            assert gen.encode(m) == gen.tokenizer.apply_chat_template(m, add_generation_prompt=True,
                                                                      return_dict=True)["input_ids"]
        # make the turn end the likeliest token: every stop id from the generation config ends the answer at once
        for stop in sorted(_stops(path)):
            h = gen.model.lm_head.register_forward_hook(
                lambda mod, i, o, s=stop: o.index_fill(-1, torch.tensor([s]), 100.0))
            from refinery.generation.base import SamplingParams

            c = gen.generate([CHATS[0]], SamplingParams(temperature=0.0, max_new_tokens=8))[0]
            h.remove()
            assert c.finish_reason == "stop" and c.token_ids == [stop] and c.text == ""


class _InProcessServer:
    """The project's FastAPI app under uvicorn in a thread (cheaper than a subprocess; same HTTP path)."""

    def __init__(self, path: Path):
        import uvicorn

        from refinery.generation.hf import HFGenerator
        from refinery.generation.server import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = create_app(HFGenerator(path), "m")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _serve_matches_local(path: Path, url: str) -> None:
    from refinery.generation.base import SamplingParams
    from refinery.generation.hf import HFGenerator
    from refinery.generation.openai import OpenAIGenerator

    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    remote = OpenAIGenerator("m", base_url=url).generate(CHATS, params)
    local = HFGenerator(path).generate(CHATS, params)
    assert [c.token_ids for c in remote] == [c.token_ids for c in local]
    assert [c.text for c in remote] == [c.text for c in local]
    assert [c.finish_reason for c in remote] == [c.finish_reason for c in local]


@pytest.mark.parametrize("arch", FAMILIES)
def test_serve(arch, family_ckpt):
    """The project's server + its OpenAI client give the local greedy answers (chat template on the server)."""
    path = family_ckpt(arch)
    with cell(arch, "serve"), _InProcessServer(path) as srv:
        _serve_matches_local(path, srv.url)


@pytest.mark.slow
@pytest.mark.parametrize("arch", FAMILIES)
def test_serve_subprocess(arch, family_ckpt):
    from tests.conftest import Server

    path = family_ckpt(arch)
    srv = Server(path, name="m").start()
    try:
        with cell(arch, "serve (refinery serve)"):
            _serve_matches_local(path, srv.url)
    finally:
        srv.kill()


# ---- SFT -------------------------------------------------------------------------------------------------------
PLAIN, THINKING = "5", "<think>\nadd 2 and 3\n</think>\n\nThe answer is 5."
# arch -> what the loss sees for a plain and a reasoning response to "What is 2 + 3?": the assistant turn as the
# family's template renders it, up to its turn end (no generation-prompt text, nothing after the turn end)
LABELLED = {
    "llama": (PLAIN + "<|eot_id|>", THINKING + "<|eot_id|>"),
    "qwen2": (PLAIN + "<|im_end|>", THINKING + "<|im_end|>"),
    "qwen3": ("<think>\n\n</think>\n\n" + PLAIN + "<|im_end|>", THINKING + "<|im_end|>"),  # an empty think block
    "mistral": (" " + PLAIN + "</s>", " " + THINKING + "</s>"),  # " " + content: Mistral's assistant turn
    "gemma2": (PLAIN + "<end_of_turn>", THINKING + "<end_of_turn>"),
    "phi3": (PLAIN + "<|end|>", THINKING + "<|end|>"),
    # the generation prompt opened <think>: the response's own opener is not repeated
    "deepseek-r1-qwen2": (PLAIN + "<｜end▁of▁sentence｜>", THINKING[len("<think>\n"):] + "<｜end▁of▁sentence｜>"),
}


@pytest.mark.parametrize("arch", FAMILIES)
def test_sft_completion_mask(arch, family_ckpt):
    """Loss on responses only: the labelled tokens are exactly the assistant turn the family's template renders,
    the unlabelled ones exactly its generation prompt (what the model sees at inference)."""
    from refinery.models.io import load_tokenizer
    from refinery.models.pretrain import TaskData

    tok = load_tokenizer(family_ckpt(arch))
    with cell(arch, "sft mask"):
        items = [{"prompt": "What is 2 + 3?", "response": PLAIN}, {"prompt": "What is 2 + 3?", "response": THINKING},
                 {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                  "response": PLAIN}]
        data = TaskData(items, items[:1], tok, 256, completion_only=True)
        for (ids, n_prompt), it, want in zip(data.train, items, [*LABELLED[arch], LABELLED[arch][0]]):
            msgs = it.get("messages") or [{"role": "user", "content": it["prompt"]}]
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            assert tok.decode(ids[:n_prompt]) == prompt
            assert tok.decode(ids[n_prompt:]) == want
            assert ids[-1] == tok.eos_token_id and ids[n_prompt:].count(tok.eos_token_id) == 1
        (ids, keep), = TaskData(items[:2], items[:1], tok, 256, completion_only=True, packing=True).train
        labelled = [t for t, k in zip(ids, keep) if k]
        assert tok.decode(labelled) == "".join(LABELLED[arch])


@pytest.mark.parametrize("arch", ROTATED)
def test_sft_train(arch, family_ckpt, tmp_path):
    path = family_ckpt(arch)
    with cell(arch, "sft train"):
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"{i + 1}"}) + "\n"
                                for i in range(20)))
        recipe = tmp_path / "sft.yaml"
        recipe.write_text(f"init_from: {path}\ndata: {{source: jsonl, jsonl_files: [{data}], completion_only: true, "
                          "seq_len: 64}\ntrainer: {steps: 2, batch_size: 4, warmup_steps: 0, eval_every: 2, "
                          "checkpoint_every: 2, eval_batches: 1, threads: 1}\neval: {n_per_task: 0}\n")
        _main("sft", "train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress")
        out = tmp_path / "run" / "model"
        assert json.loads((out / "config.json").read_text())["model_type"] == ARCHS[arch].model_type
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(out)
        assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(path).chat_template


# ---- RL + pass@k -----------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ROTATED)
def test_rl_step_and_passk(arch, family_ckpt, tmp_path):
    path = family_ckpt(arch)
    with cell(arch, "rl step"):
        _main("rl", "train", str(ROOT / "recipes" / "prorl.yaml"), f"policy.path={path}", "data.tasks=[arithmetic]",
              "data.difficulty={arithmetic: [1]}", "data.n_train_per_task=20", "data.heldout_per_task=2",
              "data.valid_per_task=2", "rollout.group_size=2", "rollout.prompts_per_step=2",
              "rollout.max_new_tokens=8", "algorithm.dynamic_sampling=false", "trainer.steps=1",
              "trainer.mini_batch_prompts=2", "trainer.eval_every=1", "trainer.checkpoint_every=1",
              "trainer.eval_prompts=2", "trainer.threads=1", "eval.max_new_tokens=8",
              "--out", str(tmp_path / "rl"), "--no-progress")
        summary = json.loads((tmp_path / "rl" / "summary.json").read_text())
        assert summary and (tmp_path / "rl" / "model" / "config.json").exists()
    with cell(arch, "eval pass@k"):
        _main("eval", "math", "--data", "tasks:arithmetic", "--model", str(tmp_path / "rl" / "model"), "--n", "2",
              "--k", "1,2", "--limit", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "ev"))
        res = json.loads((tmp_path / "ev" / "results.json").read_text())
        (r,) = res["models"].values()
        assert 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0


# ---- reward models ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ROTATED)
def test_reward_model(arch, family_ckpt, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    path = family_ckpt(arch)
    with cell(arch, "rm train"):
        _main("rm", "train", str(ROOT / "recipes" / "helpsteer2_pref.yaml"), f"backbone.path={path}",
              "pipeline=[bt]", "loss.type=bt", "data.n_train=16", "data.n_valid=8", "data.n_test=8",
              "trainer.batch_pairs=8", "trainer.epochs=1", "trainer.eval_every=2", "trainer.checkpoint_every=2",
              "trainer.max_length=96", "trainer.threads=1", "--out", str(tmp_path / "rm"), "--no-progress")
        model_dir = tmp_path / "rm" / "model"
        rm = AutoModelForSequenceClassification.from_pretrained(model_dir)
        assert rm.config.model_type == ARCHS[arch].model_type and rm.config.num_labels == 1
    with cell(arch, "rm eval"):
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}",
                                             "rejected": f"{i + 2}", "subset": "math-prm"}) + "\n"
                                 for i in range(6)))
        _main("rm", "eval", "--model", str(model_dir), "--data", str(pairs), "--out", str(tmp_path / "rme"))
        assert json.loads((tmp_path / "rme" / "summary.json").read_text())["n"] == 6
    with cell(arch, "rm score"):
        capsys.readouterr()
        _main("rm", "score", "--model", str(model_dir), "--prompt", "What is 2 + 3?", "--response", "5",
              "--response", "6")
        assert capsys.readouterr().out.count("score ") == 2


@pytest.mark.parametrize("arch", FAMILIES)
def test_reward_model_encoding(arch, family_ckpt):
    """The RM scores the whole rendered conversation and gates at the token closing the last user turn, also
    where the template's prompt is not a prefix of the conversation (Phi-3 ends a prompt with <|endoftext|>,
    Mistral moves the system message into the last user turn, DeepSeek-R1 opens <think> in the prompt)."""
    from refinery.models.io import load_tokenizer
    from refinery.reward_models.model import encode

    tok = load_tokenizer(family_ckpt(arch))
    closes = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "[/INST]",
              "gemma2": "<end_of_turn>", "phi3": "<|end|>", "deepseek-r1-qwen2": "?"}[arch]
    with cell(arch, "rm encoding"):
        for prompt in ("What is 2 + 3?", [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 2 + 3?"}]):
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            enc = encode(tok, prompt, "It is 5.", 512)
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "It is 5."}], tokenize=False)
            assert tok.decode(enc.ids) == full.rstrip() or full.startswith(tok.decode(enc.ids))
            assert tok.decode(enc.ids[enc.prompt_end]).endswith(closes)
            after = tok.decode(enc.ids[enc.prompt_end + 1:])
            assert "It is 5." in after and "2 + 3" not in after


# ---- 2:4 sparsity + ppl ----------------------------------------------------------------------------------------
CALIB = ("The answer is 12. What is 3 + 4? It is 7. def add(x, y):\n    return x + y\n" * 40)


def _check_sparse(arch: str, dense_dir: Path, out: Path) -> None:
    from safetensors.torch import load_file

    from refinery.compression.sparsity.nm import check_nm, is_nm, prunable_linears, unpack_masks
    from refinery.models.io import load_model

    dense, sparse = load_model(dense_dir), load_model(out)
    check_nm(sparse)  # the project's exact check: no group of 4 holds more than 2 non-zeros
    masks = unpack_masks(load_file(str(out / "masks.safetensors")))
    lins = prunable_linears(sparse)
    n_layers = sparse.config.num_hidden_layers
    per_layer = {"phi3": 4}.get(ARCHS[arch].model_type, 7)  # fused qkv / gate_up in Phi-3
    assert len(lins) == n_layers * per_layer and set(masks) == set(lins)
    for name, lin in lins.items():
        assert is_nm(masks[name]) and bool((lin.weight[~masks[name]] == 0).all())
    dense_params = dict(dense.named_parameters())
    pruned = {f"{n}.weight" for n in lins}
    for name, p in sparse.named_parameters():  # biases, norms, embeddings (tied or not), head: untouched
        if name not in pruned:
            assert torch.equal(p, dense_params[name]), name
    if sparse.config.tie_word_embeddings:
        assert sparse.lm_head.weight.data_ptr() == sparse.get_input_embeddings().weight.data_ptr()
        assert torch.equal(sparse.get_input_embeddings().weight, dense.get_input_embeddings().weight)


@pytest.mark.parametrize("arch", FAMILIES)
def test_sparsify_oneshot_and_ppl(arch, family_ckpt, tmp_path, capsys):
    path = family_ckpt(arch)
    text = tmp_path / "calib.txt"
    text.write_text(CALIB)
    common = ["--model", str(path), "--calib", str(text), "--n-calib", "4", "--seq-len", "32", "--no-progress"]
    for method in ("magnitude", "wanda", "sparsegpt"):
        with cell(arch, f"2:4 {method}"):
            _main("compress", "sparsify", "--method", method, "--out", str(tmp_path / method), *common)
            _check_sparse(arch, path, tmp_path / method)
    with cell(arch, "eval ppl"):
        capsys.readouterr()
        _main("eval", "ppl", "--model", str(path), "--model", str(tmp_path / "sparsegpt"), "--text", str(text),
              "--seq-len", "32", "--limit", "4")
        ppl = [float(x) for x in re.findall(r":\s*ppl\s+([0-9.]+)\s+\(", capsys.readouterr().out)]
        assert len(ppl) == 2 and all(1.0 < p < float("inf") for p in ppl)


@pytest.mark.parametrize("arch", FAMILIES)
def test_sparsify_maskllm(arch, family_ckpt, tmp_path):
    path = family_ckpt(arch)
    text = tmp_path / "calib.txt"
    text.write_text(CALIB)
    with cell(arch, "2:4 maskllm"):
        _main("compress", "sparsify", "--method", "maskllm", "--steps", "2", "--batch-size", "2", "--prior",
              "magnitude", "--model", str(path), "--calib", str(text), "--n-calib", "4", "--seq-len", "32",
              "--out", str(tmp_path / "ml"), "--no-progress")
        _check_sparse(arch, path, tmp_path / "ml")


def test_prunable_layers_are_found_by_module_type():
    """Blocks are the model's ``_no_split_modules`` classes wherever they sit (not a ``.layers.`` name); a Linear
    outside them (a head) stays dense; without that hint the ``layers`` list is used."""
    from torch import nn

    from refinery.compression.sparsity.nm import prunable_linears
    from refinery.compression.sparsity.oneshot import decoder_layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)

    class Net(nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(8, 4)

    net = Net()
    assert sorted(prunable_linears(net)) == ["stack.0.proj", "stack.1.proj"]
    assert list(decoder_layers(net)) == list(net.stack)
    Net._no_split_modules = []
    assert prunable_linears(net) == {}


def test_a_family_that_cannot_be_pruned_says_which_and_why():
    from torch import nn
    from transformers import GPT2Config, GPT2LMHeadModel

    from refinery.compression.sparsity.runner import check_prunable
    from refinery.errors import ConfigError

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel \(model_type 'gpt2'\): no Linear layers found"):
        check_prunable(gpt2)  # its projections are Conv1D, not nn.Linear
    gpt2.transformer.h[0].mlp.c_proj = nn.Linear(6, 16)
    with pytest.raises(ConfigError, match=r"model_type 'gpt2'.*input width 6, not a multiple of M=4"):
        check_prunable(gpt2)


def test_family_table_renders_recorded_cells(tmp_path):
    """benchmarks/family_table.py: a column is yes only when all its cells passed; a failure is shown with its
    reason; a cell that never ran is '-'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("family_table", ROOT / "benchmarks" / "family_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = tmp_path / "r.jsonl"
    rows = [("llama", "generate", "ok", ""), ("llama", "sft mask", "ok", ""), ("llama", "sft train", "ok", ""),
            ("qwen2", "generate", "ok", ""), ("qwen2", "sft mask", "ok", ""),
            ("qwen2", "sft train", "fail", "qwen2: no chat template")]
    rec.write_text("".join(json.dumps(dict(zip(("arch", "wing", "outcome", "detail"), r))) + "\n" for r in rows))
    table = mod.render(rec).splitlines()
    cols = table[0].split(" | ")
    gen, sft, rl = (cols.index(c) for c in ("generate", "SFT", "RL step"))
    llama, qwen2 = (ln.split(" | ") for ln in table[2:4])
    assert (llama[gen], llama[sft], llama[rl]) == ("yes", "yes", "-")
    assert (qwen2[gen], qwen2[sft]) == ("yes", "no [1]") and "[1] qwen2 / sft train: qwen2: no chat template" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{mod.START}\nold\n{mod.END}\nb\n")
    mod.write_readme("T\n", readme)
    assert readme.read_text() == f"a\n{mod.START}\nT\n{mod.END}\nb\n"
