"""Engine throughput on one device: SFT and RL-update tokens/s, peak memory and MFU for a Qwen2-0.5B-shaped model.

    python benchmarks/bench_engine_gpu.py [--shape qwen2-0.5b|tiny] [--tokens 4096] [--rows 4] [--trl]

Random init (nothing is downloaded), bf16 autocast over fp32 master weights, activation checkpointing, one row per
micro-batch, log-probs in 1,024-token chunks: the settings a user runs a 0.5B-1.5B model with. SFT: next-token
loss on ``rows x tokens``; RL: one clipped-surrogate update on ``rows`` responses of ``tokens`` behind one
256-token prompt. MFU counts 6 x parameters x tokens (+ attention) against the device's dense bf16 peak.
``--trl`` runs TRL's ``SFTTrainer`` and ``GRPOTrainer`` on the same model, data and settings (bf16, gradient
checkpointing, same micro-batch and accumulation) when TRL is importable, and prints each beside Refinery's number.
TRL's GRPO update is timed without its generation: its ``_generate_and_score_completions`` is replaced by the same
fixed batch Refinery's update gets (one 256-token prompt, ``rows`` responses of ``tokens``, the same advantages),
with TRL's token-mean loss (``loss_type="dapo"``), ``beta=0`` and one iteration, so both sides do the same work: one
forward + backward per row and one optimizer step. ``gpu_check.sh`` calls this; ``--shape tiny --device cpu --trl``
is the smoke test that runs anywhere (tests/engine/test_bench_engine_gpu.py runs it when TRL is installed).
"""

from __future__ import annotations

import argparse
import time

import torch

SHAPES = {
    # Qwen2-0.5B: hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocab 151,936, tied embeddings
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151_936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1000, tie_word_embeddings=True),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def build(shape: str, tokens: int, dev: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from refinery.engine.device import enable_activation_checkpointing

    torch.manual_seed(0)
    cfg = Qwen2Config(max_position_embeddings=tokens + 512, **SHAPES[shape])
    model = Qwen2ForCausalLM(cfg).to(dev).train()
    enable_activation_checkpointing(model)
    return model, cfg


def flops_per_token(cfg, n_params: int, seq: int) -> float:
    return 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq  # params + attention (PaLM appendix)


def timed(fn, dev, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (allocator, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    return (time.perf_counter() - t0) / repeats, peak


def main() -> None:
    from refinery.engine.accum import accumulate, micro_batches
    from refinery.engine.device import autocast
    from refinery.engine.logprobs import lm_loss_sum
    from refinery.rl.batch import make_batch, response_logprobs
    from refinery.rl.losses import policy_loss

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--trl", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    model, cfg = build(args.shape, args.tokens, dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    V, R, T = cfg.vocab_size, args.rows, args.tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (R, T), generator=g).to(dev)
    where = f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, torch {torch.__version__}"
    print(f"device: {where}; model {args.shape} ({n_params / 1e6:.0f}M params), bf16 autocast + fp32 master, "
          f"activation checkpointing, {R} rows x {T} tokens, 1 row per micro-batch")

    def sft_step():
        def piece(r):
            with autocast("bf16", dev):
                s, n = lm_loss_sum(model, ids[r], ids[r], 1024)
            return s / n, {}
        accumulate(piece, micro_batches(torch.arange(R), 1), torch.ones(R, T - 1))
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak = peak_flops(dev)
    s, mem = timed(sft_step, dev, args.repeats)
    tps = R * T / s
    mfu = tps * flops_per_token(cfg, n_params, T) / peak if peak else None
    print(f"SFT: {tps:,.0f} tokens/s, peak {mem:.1f} GiB" + (f", MFU {mfu:.1%}" if mfu else ""))

    prompt = torch.randint(0, V, (256,), generator=g).tolist()
    batch = make_batch([prompt] * R, [torch.randint(0, V, (T,), generator=g).tolist() for _ in range(R)], 0)
    adv = torch.randn(R, generator=g).to(dev)

    def rl_step():
        def piece(r):
            with autocast("bf16", dev):
                logp, _ = response_logprobs(model, batch, 1.0, rows=r, chunk_tokens=1024)
            rd = r.to(dev)
            return policy_loss(logp, logp.detach(), adv[rd], batch.mask[r].to(dev))
        accumulate(piece, micro_batches(torch.arange(R), 1), batch.mask)
        opt.step()
        opt.zero_grad(set_to_none=True)

    s, mem = timed(rl_step, dev, args.repeats)
    tps = R * T / s
    mfu = tps * flops_per_token(cfg, n_params, T) / peak if peak else None
    print(f"RL update: {tps:,.0f} response tokens/s, peak {mem:.1f} GiB" + (f", MFU {mfu:.1%}" if mfu else ""))

    if args.trl:
        try:
            import trl
            from datasets import Dataset
        except ImportError as e:
            print(f"TRL: skipped ({e})")
            return
        print(f"TRL {trl.__version__}, transformers {__import__('transformers').__version__}")
        del opt
        trl_sft(args, dev, ids, Dataset)
        trl_grpo(args, dev, batch, adv, Dataset)


def _tokenizer(vocab_size: int):
    """A word-level tokenizer over the model's vocabulary: TRL wants a processing class; the ids are given."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t0")


def _train_timed(trainer, dev) -> tuple[float, float]:
    """Seconds per optimizer step after the first (warm-up, as ``timed`` skips it) and the peak memory after it."""
    from transformers import TrainerCallback

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if dev.type == "cuda":
                torch.cuda.synchronize()
                if not ends:
                    torch.cuda.reset_peak_memory_stats()
            ends.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    return (ends[-1] - ends[0]) / (len(ends) - 1), mem


def trl_sft(args, dev, ids, Dataset) -> None:
    from trl import SFTConfig, SFTTrainer

    R, T = ids.shape
    model, _ = build(args.shape, args.tokens, dev)
    data = Dataset.from_dict({"input_ids": [ids[i % R].tolist() for i in range(R * (args.repeats + 1))]})
    tcfg = SFTConfig(output_dir="/tmp/trl-sft", per_device_train_batch_size=1, gradient_accumulation_steps=R,
                     bf16=dev.type == "cuda", gradient_checkpointing=True, max_length=T, packing=False,
                     max_steps=args.repeats + 1, logging_steps=1, report_to=[], save_strategy="no",
                     learning_rate=1e-5, dataset_text_field=None, use_cpu=dev.type != "cuda")
    trainer = SFTTrainer(model=model, args=tcfg, train_dataset=data,
                         processing_class=_tokenizer(model.config.vocab_size))
    s, mem = _train_timed(trainer, dev)
    print(f"TRL SFTTrainer (same model/data/settings): {R * T / s:,.0f} tokens/s, peak {mem:.1f} GiB")
    del trainer, model


def trl_grpo(args, dev, batch, adv, Dataset) -> None:
    """TRL's GRPO update on Refinery's fixed rollout batch: generation replaced, everything else TRL's own."""
    from trl import GRPOConfig, GRPOTrainer

    R, T = len(adv), args.tokens
    fixed = fixed_grpo_inputs(batch, adv, dev)

    class FixedBatchGRPO(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):  # the rollout is not what is timed
            return dict(fixed)

    model, _ = build(args.shape, args.tokens, dev)
    data = Dataset.from_dict({"prompt": [f"p{i}" for i in range(R * (args.repeats + 1))]})
    tcfg = GRPOConfig(output_dir="/tmp/trl-grpo", per_device_train_batch_size=1, gradient_accumulation_steps=R,
                      steps_per_generation=R, num_generations=R, num_iterations=1, beta=0.0, loss_type="dapo",
                      bf16=dev.type == "cuda", gradient_checkpointing=True, max_steps=args.repeats + 1,
                      logging_steps=1, report_to=[], save_strategy="no", learning_rate=1e-5,
                      use_cpu=dev.type != "cuda", max_completion_length=T, shuffle_dataset=False)
    trainer = FixedBatchGRPO(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                             args=tcfg, train_dataset=data,
                             processing_class=_tokenizer(model.config.vocab_size))
    s, mem = _train_timed(trainer, dev)
    print(f"TRL GRPOTrainer update (same model/batch/settings, generation replaced): {R * T / s:,.0f} response "
          f"tokens/s, peak {mem:.1f} GiB")


def fixed_grpo_inputs(batch, adv, dev) -> dict:
    """Refinery's rollout batch in the layout TRL's GRPO loss reads (left-padded prompts, right-padded responses)."""
    mask = batch.mask.to(dev)
    return {"prompt_ids": batch.prompt_ids[batch.owner].to(dev), "prompt_mask": batch.prompt_attn[batch.owner].to(dev),
            "completion_ids": batch.response_ids.to(dev), "completion_mask": mask.long(),
            "advantages": adv.float(), "num_items_in_batch": mask.sum()}

if __name__ == "__main__":
    main()
