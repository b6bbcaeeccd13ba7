"""OpenAI chat-completions requests and replies: parsing and checking a request body, the reply and
stream-chunk objects, and errors in OpenAI's shape ({"error": {"message", "type", "param", "code"}})."""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any

from xllava_jax.data.templates import Turn

MAX_STOP_STRINGS = 4  # OpenAI's limit
ROLES = {"user": "human", "assistant": "gpt"}


class ApiError(Exception):
    """A request the server refuses: HTTP status, a message naming the problem, and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        kind = {429: "rate_limit_error", 408: "timeout_error"}.get(self.status, "invalid_request_error")
        if self.status >= 500:
            kind = "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    """A 422 for a field of the wrong type or range."""
    return ApiError(422, f"{param}: {message}", param=param, code="invalid_value")


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request."""

    model: str
    turns: tuple[Turn, ...]  # alternating human / gpt, ending with human; no <image> placeholder yet
    system: str | None  # the system message's text, replacing the template's (None: the template's own)
    image_url: str | None  # the one image (data:, file path or http(s) URL), if any
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts
    ignore_eos: bool  # vLLM's extension: answers of exactly max_tokens (load benchmarks)


def field(body: dict, name: str, kind: type | tuple, default: Any = None) -> Any:
    """body[name] checked to be of `kind` (bool is no number), or `default` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise invalid(name, f"expected {names}, got {type(value).__name__}")
    return value


def content_parts(content: Any, where: str) -> tuple[str, list[str]]:
    """(text, image URLs) of a message's content: a string, or a list of text / image_url parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise invalid(f"{where}.content", f"expected a string or a list of parts, got {type(content).__name__}")
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(at, "expected an object with a 'type'")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise invalid(f"{at}.text", "expected a string")
            texts.append(part["text"])
        elif part["type"] == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise invalid(f"{at}.image_url", "expected {'url': '<data:, path or http(s) URL>'}")
            images.append(url)
        else:
            raise invalid(f"{at}.type", f"unsupported part type {part['type']!r} (text, image_url)")
    return "\n".join(texts), images


def parse_messages(messages: Any) -> tuple[str | None, list[Turn], list[str]]:
    """(system text, alternating turns, image URLs) of the `messages` list."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "expected a non-empty list")
    system, turns, images = None, [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, "expected an object")
        role = message.get("role")
        text, urls = content_parts(message.get("content"), where)
        if role in ("system", "developer"):
            if turns or urls:
                raise ApiError(400, f"{where}: a system message must come first and hold only text", param=where)
            system = text if system is None else f"{system}\n{text}"
            continue
        if role not in ROLES:
            raise invalid(f"{where}.role", f"expected system, user or assistant, got {role!r}")
        if role == "assistant" and urls:
            raise ApiError(400, f"{where}: an assistant message cannot hold images", param=where)
        images += urls
        turn = (ROLES[role], text.strip() if role == "assistant" else text)
        if turns and turns[-1][0] == turn[0]:  # consecutive messages of one role: one turn
            turns[-1] = (turn[0], f"{turns[-1][1]}\n{turn[1]}")
        else:
            turns.append(turn)
    if not turns or turns[0][0] != "human" or turns[-1][0] != "human":
        raise ApiError(400, "messages must start (after any system message) and end with a user message",
                       param="messages")
    return system, turns, images


def parse_request(body: Any) -> ChatRequest:
    """A checked ChatRequest from a decoded JSON body (ApiError naming the first problem)."""
    if not isinstance(body, dict):
        raise ApiError(422, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_body")
    model = field(body, "model", str)
    if not model:
        raise invalid("model", "required")
    system, turns, images = parse_messages(body.get("messages"))
    if len(images) > 1:
        raise ApiError(400, f"{len(images)} images given; this model takes at most one image per conversation",
                       param="messages", code="too_many_images")
    if field(body, "n", int, 1) != 1:
        raise invalid("n", "only n=1 is supported")
    max_tokens = field(body, "max_completion_tokens", int, field(body, "max_tokens", int))
    if max_tokens is not None and max_tokens < 1:
        raise invalid("max_tokens", f"must be >= 1, got {max_tokens}")
    temperature = float(field(body, "temperature", (int, float), 0.0))
    if not 0 <= temperature <= 2:
        raise invalid("temperature", f"must be in [0, 2], got {temperature}")
    top_p = float(field(body, "top_p", (int, float), 1.0))
    if not 0 < top_p <= 1:
        raise invalid("top_p", f"must be in (0, 1], got {top_p}")
    seed = field(body, "seed", int)
    stop = field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise invalid("stop", f"expected a string or up to {MAX_STOP_STRINGS} non-empty strings")
    options = field(body, "stream_options", dict, {})
    return ChatRequest(model, tuple(turns), system, images[0] if images else None, max_tokens, temperature, top_p,
                       secrets.randbits(31) if seed is None else seed, tuple(stop), field(body, "stream", bool, False),
                       bool(options.get("include_usage", False)), field(body, "ignore_eos", bool, False))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    """A `chat.completion` object."""
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(request_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None,
          usage_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk` object (no choices when it carries only the usage)."""
    choices = [] if usage_counts is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish_reason}]
    out = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": choices}
    if usage_counts is not None:
        out["usage"] = usage_counts
    return out


def openai_finish_reason(reason: str) -> str:
    """OpenAI's finish_reason of a Generation's (eos | stop | length)."""
    return "length" if reason == "length" else "stop"
