"""``rollout.backend: vllm``: a vLLM engine colocated with the trainer (verl's / NeMo-RL's hybrid engine, TRL's
``vllm_mode="colocate"``).

Each rank holds one vLLM engine on its own GPU. Between rollouts the engine sleeps (level 1: weights offloaded to
CPU, KV cache freed) so the update has the GPU's memory; after every update the policy's full weights are pushed
into it. The engine reports post-temperature log-probs (``logprobs_mode="processed_logprobs"``), which
``algorithm.rollout_correction`` compares with the trainer's to correct the sampler/trainer mismatch.

It has the interface of :class:`refinery.generation.hf.HFGenerator` that the RL trainer uses (``encode``, ``rows``,
``generate_rows``, ``generate``), with the same per-(request, sample) seeds, so the rest of the trainer does not
know which backend sampled. It needs vLLM and CUDA: elsewhere building it is a :class:`ConfigError`.

Not exercised yet: no machine this project has run on had vLLM (see README, "Scaling up").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from refinery.errors import ConfigError
from refinery.generation.base import Completion, GenerationError, Request, SamplingParams
from refinery.generation.hf import HFGenerator, Row


class ColocatedVLLM:
    def __init__(self, policy_dir: str, tokenizer, *, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0, **engine_kwargs: Any):
        from refinery.generation.vllm import vllm_available

        if not vllm_available():
            raise ConfigError("rollout.backend=vllm needs vLLM and a CUDA GPU (pip install 'refinery[gpu]' on a "
                              "CUDA machine); use rollout.backend=hf here")
        import vllm

        self._vllm = vllm
        self.tokenizer = tokenizer
        kwargs: dict[str, Any] = dict(model=str(policy_dir), dtype="bfloat16", enable_sleep_mode=True,
                                      gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                                      logprobs_mode="processed_logprobs", max_model_len=max_model_len)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # one engine per torchrun rank, each on its own GPU (TRL's colocate mode does the same)
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(**{k: v for k, v in {**kwargs, **engine_kwargs}.items() if v is not None})
        self.context = max_model_len or int(getattr(self.llm.llm_engine.model_config, "max_model_len", 1 << 30))
        self.asleep = False

    # -- the HFGenerator interface the trainer uses: the same prompt encoding (template, no extra BOS), the same
    # context check and the same per-(request, sample) seeds; only the decoding differs
    encode = HFGenerator.encode
    rows = HFGenerator.rows

    def generate(self, requests: list[Request], params: SamplingParams | None = None) -> list[Completion]:
        return self.generate_rows(self.rows(requests, params or SamplingParams()))

    def generate_rows(self, rows: list[Row]) -> list[Completion]:
        """Every row is one vLLM request with its own seed, from the prompt's token ids (the trainer scores the
        same ids, so nothing is re-tokenized)."""
        self.wake_up()
        prompts = [{"prompt_token_ids": r.prompt_ids} for r in rows]
        sampling = [self._params(r.params, r.seed) for r in rows]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        result = []
        for r, out in zip(rows, outputs):
            o = out.outputs[0]
            logprobs = None
            if r.params.logprobs and o.logprobs:
                logprobs = [float(step[t].logprob) for step, t in zip(o.logprobs, o.token_ids)]
            result.append(Completion(text=o.text, token_ids=list(o.token_ids), logprobs=logprobs,
                                     finish_reason="length" if o.finish_reason == "length" else "stop",
                                     index=r.index, sample=r.sample, prompt_tokens=len(r.prompt_ids)))
        return result

    def _params(self, p: SamplingParams, seed: int):
        if p.logprobs and p.logprobs_mode != "processed":
            raise GenerationError("the colocated vLLM engine reports processed (post-temperature) log-probs only")
        return self._vllm.SamplingParams(
            n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1,
            max_tokens=p.max_new_tokens, stop=p.stop or None, seed=seed % (2**31),
            logprobs=0 if p.logprobs else None)

    # -- the hybrid-engine cycle --
    def sleep(self) -> None:
        """Free the GPU for the update: weights to CPU, KV cache dropped (vLLM sleep level 1)."""
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    @torch.no_grad()
    def push_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the policy's full (unsharded) weights into the engine, as TRL's colocate mode does, and drop the
        prefix cache (its KV entries came from the old weights)."""
        self.wake_up()
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        if executor is None:
            raise GenerationError("this vLLM runs its engine in a separate process; set "
                                  "VLLM_ENABLE_V1_MULTIPROCESSING=0 so the trainer can push weights in process")
        model = executor.driver_worker.worker.model_runner.model
        model.load_weights(((k, v.to(torch.bfloat16)) for k, v in named))
        self.llm.reset_prefix_cache()
