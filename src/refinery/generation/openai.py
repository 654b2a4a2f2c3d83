"""Client backend for any OpenAI-compatible server (vLLM, NIM, SGLang, TGI, llama.cpp, ``refinery serve``).

Async with a concurrency limit; retries 429/5xx/timeouts/connection errors/malformed bodies with exponential
backoff and jitter (honouring Retry-After); a per-request timeout; and an optional on-disk cache keyed by
(model, request, params) so a re-run pays nothing for work already done. The API key (``api_key``, or the
environment variable ``api_key_env``) is sent as ``Authorization: Bearer`` and never appears in logs, errors or
reprs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

from refinery.generation.base import Completion, GenerationError, Request, SamplingParams, check_requests

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ResponseCache:
    """One JSON file per key under ``root`` (sharded by prefix), written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = self.misses = 0

    @staticmethod
    def key(model: str, request: Request, params: SamplingParams) -> str:
        blob = json.dumps({"model": model, "request": request, "params": params.model_dump(mode="json")},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[dict] | None:
        p = self._path(key)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, key: str, completions: list[dict]) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(completions))
        os.replace(tmp, p)


class OpenAIGenerator:
    """Generator over an OpenAI-compatible HTTP API."""

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 6, backoff: float = 0.5,
                 max_backoff: float = 8.0, cache_dir: str | Path | None = None, api_key: str | None = None):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or os.environ.get(api_key_env) or None  # an explicit key wins
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.retries = 0  # total retries made (observability)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    # ---- public API --------------------------------------------------------------------------------------
    def generate(self, requests: list[Request], params: SamplingParams | None = None) -> list[Completion]:
        """All completions, request-major; raises GenerationError on the first request that failed."""
        out: list[Completion] = []
        for result in self.generate_each(requests, params):
            if isinstance(result, GenerationError):
                raise result
            out += result
        return out

    def generate_each(self, requests: list[Request], params: SamplingParams | None = None,
                      on_result=None) -> list[list[Completion] | GenerationError]:
        """Per request: its ``n`` completions, or the GenerationError that ended it after retries.

        ``on_result(i, result)`` is called as each request finishes (for streaming results to disk).
        """
        params = params or SamplingParams()
        check_requests(requests)
        coro = self._run(requests, params, on_result)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside an event loop (a notebook, a server): run in a private loop on a thread.
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(coro)))
        t.start()
        t.join()
        return box["r"]

    # ---- internals -----------------------------------------------------------------------------------------
    async def _run(self, requests, params, on_result):
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits) as client:
            async def one(i: int, request: Request):
                async with sem:
                    try:
                        result = await self._one(client, i, request, params)
                    except GenerationError as e:
                        result = e
                if on_result is not None:
                    on_result(i, result)
                return result

            return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))

    def _payload(self, request: Request, params: SamplingParams) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.model, "temperature": params.temperature, "top_p": params.top_p,
                                "n": params.n, "max_tokens": params.max_new_tokens}
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if isinstance(request, str):
            body["prompt"] = request
            if params.logprobs:
                body["logprobs"] = 0
            return "/completions", body
        body["messages"] = request
        if params.logprobs:
            body["logprobs"] = True
        return "/chat/completions", body

    async def _one(self, client, i: int, request: Request, params: SamplingParams) -> list[Completion]:
        import httpx

        key = self.cache.key(self.model, request, params) if self.cache else None
        if key is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return [Completion(**{**c, "index": i}) for c in cached]
        path, body = self._payload(request, params)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
            retry_after = None
            try:
                resp = await client.post(self.base_url + path, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout}s"
            except httpx.TransportError as e:
                last = f"connection error ({type(e).__name__})"
            else:
                if resp.status_code == 200:
                    try:
                        out = self._parse(resp.json(), i, params, chat=not isinstance(request, str))
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        last = f"malformed response ({type(e).__name__}: {str(e)[:200]})"
                    else:
                        if key is not None:
                            self.cache.put(key, [c.to_dict() for c in out])
                        return out
                elif resp.status_code in RETRY_STATUS:
                    last = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    raise GenerationError(f"request {i}: HTTP {resp.status_code} from {self.base_url}{path}: "
                                          f"{_error_message(resp)}")
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                await asyncio.sleep(retry_after if retry_after is not None else delay)
        raise GenerationError(f"request {i}: failed after {self.max_retries + 1} attempts: {last}")

    def _parse(self, data: dict, i: int, params: SamplingParams, chat: bool) -> list[Completion]:
        choices = data["choices"]
        if not isinstance(choices, list) or len(choices) != params.n:
            got = len(choices) if isinstance(choices, list) else repr(choices)
            raise ValueError(f"expected {params.n} choices, got {got}")
        prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        out = []
        for s, ch in enumerate(sorted(choices, key=lambda c: c.get("index", 0))):
            text = ch["message"]["content"] if chat else ch["text"]
            if not isinstance(text, str):
                raise ValueError("choice text is not a string")
            logprobs = None
            lp = ch.get("logprobs")
            if params.logprobs and lp:
                logprobs = [float(x["logprob"]) for x in lp["content"]] if chat else \
                    [float(x) for x in lp["token_logprobs"]]
            finish = ch.get("finish_reason") or "stop"
            out.append(Completion(text=text, token_ids=list(ch.get("token_ids") or []), logprobs=logprobs,
                                  finish_reason="length" if finish == "length" else "stop", index=i, sample=s,
                                  prompt_tokens=prompt_tokens))
        return out


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def _error_message(resp) -> str:
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(data, dict) and data.get("detail"):
            return str(data["detail"])[:500]
    except ValueError:
        pass
    return resp.text[:500]
