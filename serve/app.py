"""The FastAPI app: /v1/models, /v1/completions, /v1/chat/completions (SSE or not), /health, /metrics.

build_app(async_engine, tokenizer, template, model_name, api_key) -> app. The app starts the
engine thread when it starts serving and stops it on shutdown. Every error is an OpenAI-style
JSON body (serve.protocol.APIError); an unexpected exception is a 500 naming its type, never
a traceback. A client that disconnects (streaming or not) aborts its requests, which frees
their KV blocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import protocol
from serve.async_engine import AsyncEngine, QueueFull, Sink
from serve.protocol import APIError, TextStream

log = logging.getLogger(__name__)


class _Disconnected(Exception):
    pass


def build_app(engine: AsyncEngine, tokenizer, template, model_name: str, api_key: Optional[str] = None) -> FastAPI:
    """The server's app over a not-yet-started AsyncEngine (started by the app's lifespan)."""
    llm = engine.engine
    max_model_len = llm.scheduler.config.max_model_len
    vocab = llm.model.config.vocab_size
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="lab OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        err = APIError(e.status_code, str(e.detail))
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.exception("unexpected error serving %s", request.url.path)
        err = APIError(500, f"internal server error ({type(e).__name__})")
        return JSONResponse(err.body(), status_code=500)

    def auth(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    async def read_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise protocol.bad(f"malformed JSON body: {e}") from None
        if not isinstance(body, dict):
            raise protocol.bad(f"the body must be a JSON object, got {type(body).__name__}")
        model = body.get("model")
        if not isinstance(model, str):
            raise protocol.bad("'model' is required (a string)", "model")
        if model != model_name:
            raise protocol.bad(f"The model '{model}' does not exist; this server serves '{model_name}'", "model",
                               "model_not_found")
        return body

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "engine loop stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request):
        auth(request)
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lab", "max_model_len": max_model_len,
                                            "vocab_size": vocab}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        auth(request)
        parsed = protocol.parse_completion(await read_body(request), tokenizer, vocab, max_model_len)
        return await serve(request, parsed, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        auth(request)
        parsed = protocol.parse_chat(await read_body(request), template, max_model_len)
        return await serve(request, parsed, chat=True)

    async def serve(request: Request, parsed: protocol.Parsed, chat: bool):
        n = parsed.n
        jobs = [(parsed.prompts[i // n], p) for i, p in enumerate(parsed.params)]
        for ids, p in jobs:
            try:
                llm.capacity.check_fits(len(ids) + p.max_tokens)
            except ValueError as e:
                raise protocol.bad(str(e), "max_tokens") from None
        try:
            sink = engine.submit(jobs, final_only=not parsed.stream)
        except QueueFull as e:
            raise APIError(429, str(e), code="queue_full", headers={"Retry-After": str(e.retry_after_s)}) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if parsed.stream:
            return StreamingResponse(stream(sink, parsed, chat, rid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            outs = await collect(request, sink)
        except _Disconnected:
            return Response(status_code=499)
        except ValueError as e:  # add_request refused it
            raise protocol.bad(str(e)) from None
        failed = [o for o in outs if o.finish_reason == "error"]
        if failed:
            raise APIError(500, f"the engine failed this request: {failed[0].error}", code="engine_error")
        choices = []
        for i, out in enumerate(outs):
            text = out.text or ""
            c: dict[str, Any] = {"index": i, "finish_reason": protocol.finish_reason(out)}
            if chat:
                c["message"] = {"role": "assistant", "content": text}
                c["logprobs"] = (protocol.chat_logprobs(tokenizer, out) if parsed.logprobs is not None else None)
            else:
                c["text"] = text
                c["logprobs"] = (protocol.completion_logprobs(tokenizer, out) if parsed.logprobs is not None
                                 else None)
            if parsed.return_token_ids:
                c["token_ids"] = list(out.token_ids)
            choices.append(c)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": protocol.now_s(),
                "model": model_name, "choices": choices, "usage": protocol.usage([len(p) for p in parsed.prompts],
                                                                                 outs)}

    async def collect(request: Request, sink: Sink):
        """Wait for every request of the sink to finish; a disconnect aborts them."""
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            while not sink.finished:
                getter = asyncio.ensure_future(sink.updates())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    engine.abort(sink)
                    raise _Disconnected()
                getter.result()
        finally:
            watcher.cancel()
        return [sink.latest[r] for r in sink.request_ids]

    async def stream(sink: Sink, parsed: protocol.Parsed, chat: bool, rid: str):
        kind = "chat.completion.chunk" if chat else "text_completion"
        stamp = protocol.now_s()
        index = {r: i for i, r in enumerate(sink.request_ids)}
        texts = {r: TextStream(p.stop) for r, p in zip(sink.request_ids, parsed.params)}
        sent = dict.fromkeys(sink.request_ids, 0)  # tokens reported (logprobs, token ids)
        outs = {}

        def chunk(choices, usage=None) -> str:
            body = {"id": rid, "object": kind, "created": stamp, "model": model_name, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        try:
            if chat:
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(len(sink.request_ids))])
            while True:
                try:
                    updates = await sink.updates()
                except ValueError as e:
                    yield f"data: {json.dumps(protocol.bad(str(e)).body())}\n\n"
                    return
                for out in updates:
                    r = out.request_id
                    outs[r] = out
                    if out.finish_reason == "error":
                        err = APIError(500, f"the engine failed this request: {out.error}", code="engine_error")
                        yield f"data: {json.dumps(err.body())}\n\n"
                        return
                    delta = texts[r].delta(out)
                    new = out.token_ids[sent[r]:]
                    per_token = parsed.return_token_ids or parsed.logprobs is not None
                    if not (delta or out.finished or (new and per_token)):
                        continue
                    c: dict[str, Any] = {"index": index[r], "finish_reason": protocol.finish_reason(out)}
                    if chat:
                        c["delta"] = {"content": delta} if delta or not out.finished else {}
                        c["logprobs"] = (protocol.chat_logprobs(tokenizer, out, sent[r])
                                         if parsed.logprobs is not None else None)
                    else:
                        c["text"] = delta
                        c["logprobs"] = (protocol.completion_logprobs(tokenizer, out, sent[r])
                                         if parsed.logprobs is not None else None)
                    if parsed.return_token_ids:
                        c["token_ids"] = new
                    sent[r] = len(out.token_ids)
                    yield chunk([c])
                if sink.finished and not sink.dirty:
                    break
            if parsed.include_usage:
                yield chunk([], protocol.usage([len(p) for p in parsed.prompts],
                                               [outs[r] for r in sink.request_ids]))
            yield "data: [DONE]\n\n"
        finally:
            if not sink.finished:
                engine.abort(sink)  # the client went away (the generator was closed or cancelled)

    return app


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
