"""RL step speed and reward: Refinery's GRPO trainer vs TRL's GRPOTrainer, same setup, one script.

    python benchmarks/bench_rl_vs_trl.py [--steps 10] [--prompts 8] [--group 8] [--max-new-tokens 48] [--record]

Same policy (the cached bootstrap SFT nano model), same prompt pool (procedural arithmetic + word problems),
same G, prompts per step, token budget, learning rate, loss (token-level mean: TRL's 'dapo' = Refinery's
'token-mean'), beta = 0, temperature 1.0, one update per batch, and the same reward function. TRL runs with
gradient checkpointing off (nothing to save at this size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    import torch

    from refinery.config import load_config
    from refinery.rl.config import RLConfig
    from refinery.rl.rewards import RewardRouter
    from refinery.rl.trainer import RLRun, bootstrap_policy, chat
    from refinery.runs import RunDir

    torch.set_num_threads(torch.get_num_threads())
    P, G, L = args.prompts, args.group, args.max_new_tokens
    cfg = load_config(RLConfig, None, [
        f"rollout.group_size={G}", f"rollout.prompts_per_step={P}", f"rollout.max_new_tokens={L}",
        f"trainer.lr={args.lr}", f"trainer.steps={args.steps}", "algorithm.loss_agg=token-mean",
        "algorithm.kl_coef=0", "data.heldout_per_task=10"])
    policy = bootstrap_policy(cfg, progress=False)
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"path": str(policy)})})

    # ---- Refinery ----
    with tempfile.TemporaryDirectory() as d:
        state = RLRun(cfg, RunDir.create(cfg, "bench", out=Path(d) / "r"), policy)
        state.step(0)  # warm-up (not timed)
        ref_times, ref_tokens, ref_rewards = [], 0, []
        for s in range(1, args.steps + 1):
            t = time.perf_counter()
            row = state.step(s)
            ref_times.append(time.perf_counter() - t)
            ref_tokens += row["generated_tokens"]
            ref_rewards.append(row.get("reward", 0.0))
        items = [it for group in state.train_items.values() for it in group]

    # ---- TRL ----
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    router = RewardRouter()
    by_id = {it["id"]: it for it in items}
    counted = {"tokens": 0}
    tok = AutoTokenizer.from_pretrained(policy)

    def reward(prompts, completions, id, **kwargs):  # noqa: A002 - TRL passes dataset columns by name
        texts = [c[0]["content"] for c in completions]
        counted["tokens"] += sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
        return [router(by_id[i], t)[0] for i, t in zip(id, texts)]

    ds = Dataset.from_list([{"prompt": chat(it), "id": it["id"]} for it in items])
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as d:
        targs = GRPOConfig(output_dir=d, per_device_train_batch_size=P * G, num_generations=G,
                           max_completion_length=L, learning_rate=args.lr, lr_scheduler_type="constant",
                           beta=0.0, loss_type="dapo", temperature=1.0, max_steps=args.steps + 1, logging_steps=1,
                           use_cpu=True, report_to=[], gradient_checkpointing=False, save_strategy="no", seed=0,
                           epsilon=0.2, bf16=False, disable_tqdm=True)
        trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy), reward_funcs=reward, args=targs,
                              train_dataset=ds, processing_class=tok, callbacks=[Timer()])
        trainer.train()
        trl_rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h][1:]
    router.close()
    trl_times = times[1:]  # first step includes warm-up, as for Refinery
    trl_tokens = counted["tokens"] * len(trl_times) / max(1, len(times))

    ref_step, trl_step = statistics.mean(ref_times), statistics.mean(trl_times)
    ref_tps, trl_tps = ref_tokens / sum(ref_times), trl_tokens / sum(trl_times)
    lines = [f"Policy: bootstrap SFT nano ({sum(p.numel() for p in state.model.parameters()):,} params); "
             f"{P} prompts x G={G} per step, <= {L} new tokens, lr {args.lr}, token-mean loss, beta 0, "
             f"{args.steps} timed steps after one warm-up step.", "",
             "| trainer | s/step | generated tokens/s | mean reward (timed steps) | reward, last 3 steps |",
             "|---|---|---|---|---|",
             f"| refinery | {ref_step:.2f} | {ref_tps:.0f} | {statistics.mean(ref_rewards):.3f} | "
             f"{statistics.mean(ref_rewards[-3:]):.3f} |",
             f"| TRL GRPOTrainer {__import__('trl').__version__} | {trl_step:.2f} | {trl_tps:.0f} | "
             f"{statistics.mean(trl_rewards):.3f} | {statistics.mean(trl_rewards[-3:]):.3f} |", "",
             f"**TRL s/step / Refinery s/step = {trl_step / ref_step:.2f}x** (same work per step; rewards from "
             "the same verifier)."]
    print("\n".join(lines))
    if args.record:
        from _common import record

        record("RL trainer vs TRL GRPOTrainer (issue 5)", lines)


if __name__ == "__main__":
    main()
