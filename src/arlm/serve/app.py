"""The OpenAI-compatible HTTP API over a run: completions, chat completions, models, health.

Every error is a 4xx/5xx JSON body in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. Requests are checked completely (body
size, JSON, fields, sampling options via ``SamplingConfig``, prompt + max_tokens against the
context) before any row is queued; a full engine answers 429.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request)

import asyncio
import json
import time
import uuid
from typing import Any

from arlm.generation.sampling import SamplingConfig, SamplingError

from .engine import Engine, EngineFull, Row
from .protocol import ChatRequest, CompletionRequest, parse_body
from .template import ChatTemplate

MAX_BODY = 1 << 20  # bytes


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def create_app(model, tokenizer, *, name: str = "arlm", chat_template: ChatTemplate | None = None,
               max_rows: int = 32, max_waiting: int = 64, max_body: int = MAX_BODY, window_s: float = 0.002):
    """A FastAPI app serving ``model`` (eval mode, on its device) with ``tokenizer``.

    ``max_rows`` sequences are decoded together; ``max_waiting`` more may queue before requests
    get 429; bodies over ``max_body`` bytes get 413. ``app.state.engine.stats`` counts steps."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise ImportError("arlm serve needs the 'serve' extra: pip install 'arlm[serve]'") from None

    engine = Engine(model, tokenizer, max_rows=max_rows, max_waiting=max_waiting, window_s=window_s)
    created = int(time.time())
    context = model.cfg.max_seq_len
    app = FastAPI(title="arlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.router.on_shutdown.append(engine.close)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):  # unknown paths, wrong methods
        err = ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "stats": dict(engine.stats)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "arlm"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await _read(request, CompletionRequest, max_body)
        _check_model(req, name)
        prompts = _prompt_ids(req.prompt, tokenizer)
        return await _answer(req, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if chat_template is None:
            raise ApiError(400, f"model {name!r} has no chat template (RUN/chat_template.json); "
                                "use /v1/completions", code="no_chat_template")
        req = await _read(request, ChatRequest, max_body)
        _check_model(req, name)
        try:
            text = chat_template.render([m.model_dump() for m in req.messages])
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        prompt = tokenizer.encode(text)
        stop = tuple(chat_template.stop) + _stops(req.stop)
        return await _answer(req, [prompt], chat=True, extra_stop=stop)

    async def _answer(req, prompts: list[list[int]], chat: bool, extra_stop: tuple = ()):
        for i, ids in enumerate(prompts):
            if not ids:
                raise ApiError(400, "the prompt is empty; give at least one character", param="prompt")
            if len(ids) >= context:
                raise ApiError(400, f"the prompt is {len(ids)} tokens; the model context is {context} tokens",
                               param="messages" if chat else "prompt", code="context_length_exceeded")
        longest = max(len(p) for p in prompts)
        max_tokens = req.max_tokens if req.max_tokens is not None else (context - longest if chat else 16)
        if longest + max_tokens > context:
            raise ApiError(400, f"prompt ({longest} tokens) + max_tokens ({max_tokens}) is more than the model "
                                f"context ({context} tokens); lower max_tokens to {context - longest} or less",
                           param="max_tokens", code="context_length_exceeded")
        cfg = _sampling(req, max_tokens, extra_stop if chat else _stops(req.stop))
        if len(prompts) * req.n > engine.max_rows + engine.max_waiting:
            raise ApiError(400, f"{len(prompts)} prompt(s) x n={req.n} sequences is more than this server runs at "
                                f"once ({engine.max_rows + engine.max_waiting})", param="n")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        rows = []
        for i, ids in enumerate(prompts):
            for j in range(req.n):
                k = len(rows)
                seed = None if req.seed is None else (req.seed + k) % 2 ** 63  # choice k: its own stream
                emit = (lambda k: lambda text, reason: loop.call_soon_threadsafe(queue.put_nowait, (k, text, reason)))(k)
                rows.append(Row(ids=ids, cfg=cfg, emit=emit, seed=seed))
        try:
            engine.submit(rows)
        except EngineFull as e:
            raise ApiError(429, str(e), code="rate_limit_exceeded", type="rate_limit_error") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        meta = dict(id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], created=int(time.time()), model=name)
        usage = lambda: dict(prompt_tokens=sum(map(len, prompts)), completion_tokens=sum(r.new for r in rows),  # noqa: E731
                             total_tokens=sum(map(len, prompts)) + sum(r.new for r in rows))
        if req.stream:
            return StreamingResponse(_sse(queue, rows, meta, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        texts, reasons = [""] * len(rows), [None] * len(rows)
        try:
            while any(r is None for r in reasons):
                k, text, reason = await queue.get()
                texts[k] += text
                reasons[k] = reason
        finally:
            for r in rows:
                r.cancelled = True  # a client gone before the end frees its rows
        if "error" in reasons:
            raise ApiError(500, texts[reasons.index("error")], type="server_error")
        if chat:
            choices = [dict(index=k, message=dict(role="assistant", content=t), finish_reason=f)
                       for k, (t, f) in enumerate(zip(texts, reasons))]
            return dict(object="chat.completion", **meta, choices=choices, usage=usage())
        choices = [dict(index=k, text=t, logprobs=None, finish_reason=f) for k, (t, f) in enumerate(zip(texts, reasons))]
        return dict(object="text_completion", **meta, choices=choices, usage=usage())

    return app


async def _sse(queue: asyncio.Queue, rows: list[Row], meta: dict, chat: bool):
    """Server-sent events: one chunk per text piece, a last chunk per choice with its
    finish_reason, then ``data: [DONE]``."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    left = len(rows)
    try:
        if chat:
            for k in range(len(rows)):
                yield _event(dict(object=obj, **meta, choices=[dict(index=k, delta=dict(role="assistant"),
                                                                   finish_reason=None)]))
        while left:
            k, text, reason = await queue.get()
            if reason == "error":
                yield _event(ApiError(500, text, type="server_error").body())
                break
            if text:
                piece = dict(delta=dict(content=text)) if chat else dict(text=text, logprobs=None)
                yield _event(dict(object=obj, **meta, choices=[dict(index=k, **piece, finish_reason=None)]))
            if reason is not None:
                left -= 1
                end = dict(delta={}) if chat else dict(text="", logprobs=None)
                yield _event(dict(object=obj, **meta, choices=[dict(index=k, **end, finish_reason=reason)]))
        yield "data: [DONE]\n\n"
    finally:
        for r in rows:
            r.cancelled = True


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _read(request, model_cls, max_body: int):
    """The request body, at most ``max_body`` bytes, parsed into ``model_cls``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise ApiError(413, f"the request body is {length} bytes; at most {max_body} are accepted",
                       code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise ApiError(413, f"the request body is over {max_body} bytes", code="body_too_large")
    try:
        return parse_body(bytes(body), model_cls)
    except ValueError as e:
        raise ApiError(400, str(e), param=getattr(e, "param", None)) from None


def _check_model(req, name: str) -> None:
    if req.model is not None and req.model != name:
        raise ApiError(404, f"the model {req.model!r} does not exist; this server has {name!r}", param="model",
                       code="model_not_found")


def _stops(stop) -> tuple[str, ...]:
    return () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)


def _prompt_ids(prompt: Any, tokenizer) -> list[list[int]]:
    """OpenAI's prompt forms: a string, a list of strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if prompt and all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append(tokenizer.encode(p))
        else:
            bad = [t for t in p if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary [0, {tokenizer.vocab_size})",
                               param="prompt")
            out.append(list(p))
    if not out:
        raise ApiError(400, "prompt is an empty list; give at least one prompt", param="prompt")
    return out


def _sampling(req, max_tokens: int, stop: tuple[str, ...]) -> SamplingConfig:
    """The request's SamplingConfig; its checks name OpenAI's parameter."""
    try:
        return SamplingConfig(max_new_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k,
                              top_p=req.top_p, min_p=req.min_p,
                              presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                              repetition_penalty=req.repetition_penalty, stop=stop, seed=req.seed)
    except SamplingError as e:
        param = {"max_new_tokens": "max_tokens"}.get(e.field, e.field)
        raise ApiError(400, f"{param} {e.problem}", param=param) from None
