"""The HTTP side (Starlette): `POST /v1/chat/completions` (JSON or server-sent events), `GET /v1/models`,
`GET /health`, and the chat page at `/`. Requests become Jobs for the model loop; each bad request gets an
OpenAI-shaped JSON error and the others keep running."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from importlib import resources
from typing import Any, AsyncIterator

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from xllava_jax.data.templates import Template, Turn
from xllava_jax.infer.prompts import ImageError, conversation_prompt, load_image, with_image_placeholder
from xllava_jax.infer.slots import RowSampling, SlotEngine
from xllava_jax.serve import protocol
from xllava_jax.serve.images import ImagePolicy, image_bytes
from xllava_jax.serve.protocol import ApiError, ChatRequest
from xllava_jax.serve.scheduler import Delta, Failed, Finished, Job, ModelLoop, QueueFull

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often a waiting request checks whether its client is still there


@dataclasses.dataclass
class Service:
    """Everything a request needs: the model loop, the prompt recipe, the limits."""

    loop: ModelLoop
    tokenizer: Any
    template: Template
    model_name: str
    num_image_tokens: int  # 0: text-only model
    image_size: int
    images: ImagePolicy
    default_max_tokens: int = 512  # when a request gives none (capped by the room left in the context)
    request_timeout_s: float = 600.0  # a request not finished by then is ended (HTTP 408)
    retry_after_s: int = 1  # Retry-After of a 429

    @property
    def engine(self) -> SlotEngine:
        return self.loop.engine


def error_response(e: ApiError) -> JSONResponse:
    """The JSON error reply of an ApiError."""
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def body_limit(service: Service) -> int:
    """The largest request body accepted: one image at the limit, base64-encoded, and 1 MiB of text."""
    return service.images.max_bytes * 4 // 3 + (1 << 20)


async def read_body(request: Request, limit: int) -> Any:
    """The decoded JSON body (413 past `limit` bytes, 400 when it is not JSON)."""
    raw = bytearray()
    async for block in request.stream():
        raw += block
        if len(raw) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes (--max_image_bytes sets the limit)",
                           code="body_too_large")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e


async def decode_image(service: Service, url: str) -> np.ndarray:
    """The CLIP-preprocessed image of an image_url (decoding off the event loop)."""
    if not service.num_image_tokens:
        raise ApiError(400, f"model {service.model_name} is text-only; it takes no images", param="messages",
                       code="images_unsupported")
    data = await image_bytes(url, service.images)
    try:
        return await anyio.to_thread.run_sync(load_image, data, None, service.image_size)
    except ImageError as e:
        raise ApiError(400, f"the image could not be decoded as an image ({e.__cause__ or e})",
                       param="messages.content.image_url", code="invalid_image") from e


def prompt_ids(service: Service, chat: ChatRequest) -> list[int]:
    """The prompt ids of a conversation, built with the checkpoint's template as `infer chat` builds them
    (the image in front of the first user turn)."""
    template = dataclasses.replace(service.template, system=chat.system) if chat.system is not None \
        else service.template
    turns: list[Turn] = list(chat.turns)
    turns[0] = ("human", with_image_placeholder(turns[0][1], chat.image_url is not None))
    return conversation_prompt(service.tokenizer, template, turns, service.num_image_tokens)


def answer_budget(service: Service, chat: ChatRequest, prompt_tokens: int) -> int:
    """Tokens the answer may take: the request's max_tokens (or the default), capped by the context left."""
    room = service.engine.room(prompt_tokens)
    if room < 1:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens; with its padding it does not fit the context of "
                            f"{service.engine.max_len} tokens (--max_len)", param="messages",
                       code="context_length_exceeded")
    return min(chat.max_tokens or service.default_max_tokens, room)


async def make_job(service: Service, chat: ChatRequest) -> tuple[Job, asyncio.Queue, int]:
    """(job, the queue its events arrive on, prompt tokens) of a checked request."""
    if chat.model != service.model_name:
        raise ApiError(400, f"unknown model {chat.model!r}; this server serves {service.model_name!r}",
                       param="model", code="model_not_found")
    images = [await decode_image(service, chat.image_url)] if chat.image_url else []
    ids = prompt_ids(service, chat)
    try:
        service.engine.check_prompt(ids, images)
    except ValueError as e:
        raise ApiError(400, f"{e}; send images as image_url parts, not as '<image>' in the text", param="messages",
                       code="image_token_mismatch") from e
    budget = answer_budget(service, chat, len(ids))
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    job = Job(ids, images, budget, RowSampling(chat.temperature, chat.top_p, chat.seed, chat.ignore_eos), chat.stop,
              emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    try:
        service.loop.submit(job)
    except QueueFull as e:
        raise ApiError(429, f"server busy: {e}; retry later", code="queue_full",
                       headers={"Retry-After": str(service.retry_after_s)}) from e
    return job, events, len(ids)


async def next_event(service: Service, job: Job, events: asyncio.Queue, request: Request, deadline: float):
    """The job's next event; cancels the job and raises ApiError 408 past the deadline, or returns None when
    the client has gone (the job is cancelled, its slot freed)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            service.loop.cancel(job)
            raise ApiError(408, f"the request took longer than {service.request_timeout_s:g} s (--request_timeout)",
                           code="timeout")
        try:
            return await asyncio.wait_for(events.get(), timeout=min(POLL_S, left))
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                service.loop.cancel(job)
                return None


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    service: Service = request.app.state.service
    started = time.monotonic()
    try:
        chat = protocol.parse_request(await read_body(request, body_limit(service)))
        job, events, prompt_tokens = await make_job(service, chat)
    except ApiError as e:
        log.info("refused (%d): %s", e.status, e.message)
        return error_response(e)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    deadline = started + service.request_timeout_s
    if chat.stream:
        return StreamingResponse(stream_events(service, job, events, request, started, request_id, chat,
                                               prompt_tokens), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        while True:
            event = await next_event(service, job, events, request, deadline)
            if event is None:
                return Response(status_code=499)
            if isinstance(event, Failed):
                return error_response(ApiError(500, event.message, code="generation_failed"))
            if isinstance(event, Finished):
                log_finished(request_id, prompt_tokens, event, started)
                return JSONResponse(protocol.completion(request_id, service.model_name, event.text,
                                                        protocol.openai_finish_reason(event.finish_reason),
                                                        prompt_tokens, event.completion_tokens))
    except ApiError as e:
        return error_response(e)
    finally:
        service.loop.cancel(job)  # a no-op for a finished job


def log_finished(request_id: str, prompt_tokens: int, event: Finished, started: float) -> None:
    """One log line per answered request."""
    log.info("%s: %d prompt + %d answer tokens (%s) in %.3f s", request_id, prompt_tokens, event.completion_tokens,
             event.finish_reason, time.monotonic() - started)


def sse(obj: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_events(service: Service, job: Job, events: asyncio.Queue, request: Request, started: float,
                        request_id: str, chat: ChatRequest, prompt_tokens: int) -> AsyncIterator[str]:
    """The SSE body: a role chunk, content deltas, the finish chunk (and usage), then `[DONE]`."""
    name, deadline = service.model_name, started + service.request_timeout_s
    try:
        yield sse(protocol.chunk(request_id, name, {"role": "assistant", "content": ""}))
        while True:
            try:
                event = await next_event(service, job, events, request, deadline)
            except ApiError as e:
                yield sse(e.body())
                break
            if event is None:
                return
            if isinstance(event, Delta):
                yield sse(protocol.chunk(request_id, name, {"content": event.text}))
            elif isinstance(event, Failed):
                yield sse(ApiError(500, event.message, code="generation_failed").body())
                break
            else:
                log_finished(request_id, prompt_tokens, event, started)
                yield sse(protocol.chunk(request_id, name, {}, protocol.openai_finish_reason(event.finish_reason)))
                if chat.include_usage:
                    yield sse(protocol.chunk(request_id, name, {}, usage_counts=protocol.usage(
                        prompt_tokens, event.completion_tokens)))
                break
        yield "data: [DONE]\n\n"
    finally:
        service.loop.cancel(job)


async def models(request: Request) -> Response:
    """GET /v1/models."""
    service: Service = request.app.state.service
    return JSONResponse({"object": "list", "data": [{"id": service.model_name, "object": "model", "created": 0,
                                                     "owned_by": "xllava-jax"}]})


async def health(request: Request) -> Response:
    """GET /health: ok, and the loop's slots, queue and counters."""
    service: Service = request.app.state.service
    alive = service.loop.thread.is_alive()
    return JSONResponse({"status": "ok" if alive else "down", "model": service.model_name, **service.loop.status()},
                        status_code=200 if alive else 503)


async def page(request: Request) -> Response:
    """GET /: the chat page."""
    html = resources.files("xllava_jax.serve").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace("__MODEL_NAME__", json.dumps(request.app.state.service.model_name)))


async def http_error(request: Request, e: HTTPException) -> Response:
    """Starlette's own errors (unknown path, wrong method) in OpenAI's error shape."""
    return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                   code="not_found" if e.status_code == 404 else "invalid_request"))


def create_app(service: Service) -> Starlette:
    """The Starlette app of a service (the model loop starts and stops with the app)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if not service.loop.thread.is_alive():
            service.loop.start()
        yield
        await anyio.to_thread.run_sync(service.loop.stop)

    app = Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app
