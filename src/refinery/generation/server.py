"""An OpenAI-compatible HTTP server over the hf backend (FastAPI + uvicorn).

Endpoints: ``/health``, ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``. Concurrent requests are
merged into shared decode batches by a small batcher (rows with different sampling params batch together).
Bad requests get 400/404/422 with an OpenAI-style JSON error body, never a bare 500.
Each choice also carries ``token_ids`` (an extension, as vLLM offers), so RL clients get exact tokens.

With an API key every ``/v1`` route needs ``Authorization: Bearer <key>`` (401 otherwise, as vLLM's ``--api-key``;
``/health`` stays open for probes), compared in constant time. A request may ask for at most
``max_request_tokens`` completion tokens in all (prompts x n x max_tokens); more is a 400 that states both numbers.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from refinery.generation.base import Completion, GenerationError, SamplingParams
from refinery.generation.hf import HFGenerator, Row


class Batcher:
    """Collects rows from concurrent requests for up to ``max_wait`` seconds and decodes them together."""

    def __init__(self, generator: HFGenerator, max_batch: int = 64, max_wait: float = 0.005):
        self.generator, self.max_batch, self.max_wait = generator, max_batch, max_wait
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refinery-decode")
        self.batches = 0
        self.rows_decoded = 0

    async def submit(self, rows: list[Row]) -> list[Completion]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            count = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=max(timeout, 0))
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                count += len(item[0])
            rows = [r for rs, _ in batch for r in rs]
            try:
                results = await loop.run_in_executor(self.executor, self.generator.generate_rows, rows)
            except Exception as e:  # one bad batch must not kill the server
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.rows_decoded += len(rows)
            start = 0
            for rs, fut in batch:
                if not fut.done():
                    fut.set_result(results[start:start + len(rs)])
                start += len(rs)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, ...)

    model: str
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # vLLM extension; -1 and 0 mean off
    n: int = Field(1, ge=1, le=128)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    stream: bool = False

    def sampling(self, max_tokens: int, logprobs: bool) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=max(self.top_k, 0),
                              max_new_tokens=max_tokens, stop=[s for s in stop if s], n=self.n, seed=self.seed,
                              logprobs=logprobs)


class CompletionBody(_Body):
    prompt: Union[str, list[str]]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for /v1/completions
    logprobs: Optional[int] = Field(None, ge=0, le=5)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


DEFAULT_MAX_REQUEST_TOKENS = 262144  # 16 samples of 16K tokens (a ProRL rollout group); 0 or None: no cap


def create_app(generator: HFGenerator, model_name: str, max_batch: int = 64, max_wait: float = 0.005,
               default_chat_max_tokens: int = 256, api_key: str | None = None,
               max_request_tokens: int | None = DEFAULT_MAX_REQUEST_TOKENS):
    """The FastAPI app serving ``generator`` under ``model_name``; ``api_key`` guards the ``/v1`` routes and
    ``max_request_tokens`` caps prompts x n x max_tokens per request (0 or None: no cap)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    batcher = Batcher(generator, max_batch=max_batch, max_wait=max_wait)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="refinery serve", lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, message: str, type_: str, param: str | None = None, code: int | str | None = None,
              headers: dict | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, headers=headers, content={
            "error": {"message": message, "type": type_, "param": param, "code": status if code is None else code}})

    key = api_key.encode() if api_key else None

    @app.middleware("http")
    async def _authenticate(request: Request, call_next):
        # before routing and body validation: without the key nothing about the request is looked at
        if key is not None and request.url.path.startswith("/v1"):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)):
                return error(401, "Invalid or missing API key: send the header 'Authorization: Bearer <key>' with "
                             "the key this server was started with (--api-key or REFINERY_API_KEY)",
                             "invalid_request_error", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error(exc.status, exc.message, exc.type, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ())[1:] if isinstance(p, str)) or None
        return error(422, f"{param or 'body'}: {first.get('msg')}", "invalid_request_error", param)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    def check(body: _Body) -> None:
        if body.model != model_name:
            raise APIError(404, f"The model '{body.model}' does not exist (this server has '{model_name}')",
                           "model_not_found", "model")
        if body.stream:
            raise APIError(400, "streaming is not supported by refinery serve", param="stream")

    def check_budget(prompts: int, n: int, max_tokens: int) -> None:
        total = prompts * n * max_tokens
        if max_request_tokens and total > max_request_tokens:
            what = (f"{prompts} prompts x n={n} x max_tokens={max_tokens}" if prompts > 1 else
                    f"n={n} x max_tokens={max_tokens}")
            raise APIError(400, f"{what} = {total} completion tokens, over this server's cap of "
                           f"{max_request_tokens} per request (refinery serve --max-request-tokens); lower n or "
                           "max_tokens, or split the request", param="max_tokens")

    async def run(requests, params: SamplingParams) -> list[Completion]:
        try:
            rows = generator.rows(requests, params)
        except GenerationError as e:
            raise APIError(400, str(e), param="prompt") from None
        return await batcher.submit(rows)

    def usage(completions: list[Completion], n: int) -> dict:
        prompt = sum(c.prompt_tokens for c in completions[::n])
        completion = sum(len(c.token_ids) for c in completions)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def tokens_of(c: Completion) -> list[str]:
        return [generator.tokenizer.decode([t]) for t in c.token_ids]

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "batches": batcher.batches, "rows": batcher.rows_decoded}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "refinery"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        check(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        check_budget(len(prompts), body.n, body.max_tokens)
        params = body.sampling(body.max_tokens, logprobs=body.logprobs is not None)
        out = await run(prompts, params)
        choices = []
        for j, c in enumerate(out):
            lp = None
            if body.logprobs is not None:
                toks = tokens_of(c)
                offsets, pos = [], 0
                for t in toks:
                    offsets.append(pos)
                    pos += len(t)
                lp = {"tokens": toks, "token_logprobs": c.logprobs, "top_logprobs": None, "text_offset": offsets}
            choices.append({"index": j, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason,
                            "token_ids": c.token_ids})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name, "choices": choices, "usage": usage(out, body.n)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        check(body)
        max_tokens = body.max_completion_tokens or body.max_tokens or default_chat_max_tokens
        check_budget(1, body.n, max_tokens)
        params = body.sampling(max_tokens, logprobs=body.logprobs)
        out = await run([[m.model_dump() for m in body.messages]], params)
        choices = []
        for j, c in enumerate(out):
            lp = None
            if body.logprobs:
                lp = {"content": [{"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
                                  for t, v in zip(tokens_of(c), c.logprobs or [])]}
            choices.append({"index": j, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish_reason, "token_ids": c.token_ids})
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "choices": choices, "usage": usage(out, body.n)}

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          max_batch: int = 64, log_level: str = "warning", api_key: str | None = None,
          max_request_tokens: int | None = DEFAULT_MAX_REQUEST_TOKENS) -> None:
    """Load the model and serve it until interrupted."""
    from pathlib import Path

    import uvicorn

    generator = HFGenerator(model_dir, batch_size=max_batch)
    name = model_name or Path(model_dir).resolve().name
    app = create_app(generator, name, max_batch=max_batch, api_key=api_key, max_request_tokens=max_request_tokens)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
