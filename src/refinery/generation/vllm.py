"""In-process vLLM backend for GPU users (import-guarded: needs ``pip install 'refinery[gpu]'`` and CUDA)."""

from __future__ import annotations

from typing import Any

from refinery.generation.base import Completion, GenerationError, Request, SamplingParams, check_requests


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class VLLMGenerator:
    """Generator over ``vllm.LLM``; extra keyword arguments go to the engine (tensor_parallel_size, dtype, ...)."""

    def __init__(self, model: str, **engine_kwargs: Any):
        try:
            import vllm
        except ImportError:
            raise GenerationError("the vllm backend needs vLLM: pip install 'refinery[gpu]' on a CUDA machine "
                                  "(or use --backend openai against a vLLM server)") from None
        import torch

        if not torch.cuda.is_available():
            raise GenerationError("the vllm backend needs a CUDA GPU; on CPU use --backend hf")
        self._vllm = vllm
        # vLLM fixes the log-prob mode per engine (raw_logprobs by default; RL's rollout correction needs
        # processed_logprobs, the post-temperature distribution the tokens were drawn from)
        self.logprobs_mode = "processed" if str(engine_kwargs.get("logprobs_mode", "")).startswith("processed") \
            else "raw"
        self.llm = vllm.LLM(model=model, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def _params(self, p: SamplingParams):
        return self._vllm.SamplingParams(
            n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1,
            max_tokens=p.max_new_tokens, stop=p.stop or None, seed=p.seed, logprobs=0 if p.logprobs else None)

    def generate(self, requests: list[Request], params: SamplingParams | None = None) -> list[Completion]:
        params = params or SamplingParams()
        check_requests(requests)
        if params.logprobs and params.logprobs_mode != self.logprobs_mode:
            raise GenerationError(f"this vLLM engine returns {self.logprobs_mode} log-probs; build it with "
                                  f"logprobs_mode='{params.logprobs_mode}_logprobs' for {params.logprobs_mode} ones")
        prompts = [r if isinstance(r, str) else
                   self.tokenizer.apply_chat_template(r, tokenize=False, add_generation_prompt=True)
                   for r in requests]
        outputs = self.llm.generate(prompts, self._params(params), use_tqdm=False)
        result = []
        for i, out in enumerate(outputs):
            for s, o in enumerate(out.outputs):
                logprobs = None
                if params.logprobs and o.logprobs:
                    logprobs = [float(step[t].logprob) for step, t in zip(o.logprobs, o.token_ids)]
                result.append(Completion(text=o.text, token_ids=list(o.token_ids), logprobs=logprobs,
                                         finish_reason="length" if o.finish_reason == "length" else "stop",
                                         index=i, sample=s, prompt_tokens=len(out.prompt_token_ids or [])))
        return result
