"""A bf16 checkpoint is pruned in bf16 (held once, in its own dtype) by every method and written back in bf16."""


import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from refinery.compression.sparsity.nm import is_nm, prunable_linears
from refinery.compression.sparsity.runner import sparsify
from refinery.errors import ConfigError


@pytest.fixture(scope="module")
def bf16_ckpt(family_ckpt, tmp_path_factory):
    src = family_ckpt("qwen2")
    out = tmp_path_factory.mktemp("bf16") / "qwen2-bf16"
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "maskllm"])
def test_bf16_checkpoint_prunes_in_bf16(bf16_ckpt, tmp_path, method):
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    rep = sparsify(bf16_ckpt, method, text, tmp_path / "out", n_calib=4, seq_len=32, steps=2, prior="magnitude",
                   progress=False, device="cpu")
    assert rep["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    linears = prunable_linears(model)
    assert linears and all(is_nm(lin.weight != 0, 2, 4) for lin in linears.values())
    src = prunable_linears(AutoModelForCausalLM.from_pretrained(bf16_ckpt, dtype="auto"))
    assert all(lin.bias is None or torch.equal(lin.bias, src[k].bias) for k, lin in linears.items())  # untouched


def test_fp32_on_request_and_bad_dtype(bf16_ckpt, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("a b c d e f g h " * 200)
    assert sparsify(bf16_ckpt, "magnitude", text, tmp_path / "o", n_calib=2, seq_len=16, progress=False,
                    dtype="fp32")["dtype"] == "float32"
    with pytest.raises(ConfigError, match="unknown --dtype"):
        sparsify(bf16_ckpt, "magnitude", text, tmp_path / "o2", dtype="int8", progress=False)
