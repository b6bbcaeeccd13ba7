"""One OpenAI-compatible chat-completions client, shared by data generation and the judge.

Settings come from a config object or the environment (``{PREFIX}_BASE_URL``,
``{PREFIX}_MODEL``, ``{PREFIX}_API_KEY``, ...; PREFIX defaults to ``OPENAI``). The API
key lives only in memory: it is never part of a repr, a log line, an exception message
or any file this package writes.

Transport is the standard library (``urllib``). Every request passes a shared rate
limiter and a budget gate; failures with HTTP 429/5xx, timeouts and connection errors
are retried with capped exponential backoff and full jitter (``Retry-After`` is
honoured). Token usage from each reply's ``usage`` is summed into ``ApiStats`` and
priced with per-million-token prices; once the spent plus reserved cost would pass the
budget, no new request starts and ``BudgetExceeded`` is raised, so runs stop cleanly.

Money across reruns (``ChatClient(config, store=path)``): every paid reply is appended to a
JSONL reply store *before* the caller validates it, keyed by a hash of the request (model,
messages, parameters and an optional ``tag``; never the key), so a rerun that sends the same
request gets the stored reply for free. A request that timed out may still have been billed:
it is booked at the estimated cost of one request (``possibly_billed_usd``) and written to the
store too. The budget is cumulative: what the store records (earlier runs' replies and
timeouts) counts against ``budget_usd`` from the start.

Why not the ``openai`` package: its client retries inside one call, so we could neither reserve
budget per attempt nor book each possibly billed timeout, and the store, the stats and the
budget gate would have to wrap it with ``max_retries=0``, leaving only its HTTP layer, which
``urllib`` already covers without a dependency. The tests' fault injection (a local fake server)
would work with either.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import hashlib
import http.client
import json
import logging
import mimetypes
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
ENV_FIELDS = {  # config field -> (environment suffix, type)
    "base_url": ("BASE_URL", str),
    "model": ("MODEL", str),
    "api_key": ("API_KEY", str),
    "timeout_s": ("TIMEOUT_S", float),
    "max_retries": ("MAX_RETRIES", int),
    "backoff_base_s": ("BACKOFF_BASE_S", float),
    "backoff_max_s": ("BACKOFF_MAX_S", float),
    "concurrency": ("CONCURRENCY", int),
    "requests_per_minute": ("RPM", float),
    "price_input_per_1m": ("PRICE_INPUT_PER_1M", float),
    "price_output_per_1m": ("PRICE_OUTPUT_PER_1M", float),
    "budget_usd": ("BUDGET_USD", float),
}


class ApiError(RuntimeError):
    """A request failed for good (non-retryable status, or retries exhausted)."""


class BudgetExceeded(RuntimeError):
    """The cost budget is spent: no new request may start."""


@dataclasses.dataclass
class ApiConfig:
    """Where and how to call the chat-completions endpoint."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key: str = dataclasses.field(default="", repr=False)
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    concurrency: int = 4
    requests_per_minute: float = 0.0  # 0 = unlimited
    price_input_per_1m: float = 2.5  # USD per 1M prompt tokens
    price_output_per_1m: float = 10.0  # USD per 1M completion tokens
    budget_usd: float | None = None  # None = no cap
    max_tokens: int = 2048
    temperature: float = 0.2
    seed: int | None = None  # jitter seed (tests)

    @classmethod
    def from_env(cls, prefix: str = "OPENAI", environ: Mapping[str, str] | None = None,
                 fallback_prefix: str | None = None, **overrides: Any) -> "ApiConfig":
        """Config from ``{prefix}_*`` variables (else ``{fallback_prefix}_*``), then non-None overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, (suffix, typ) in ENV_FIELDS.items():
            name = f"{prefix}_{suffix}"
            if env.get(name) in (None, "") and fallback_prefix:
                name = f"{fallback_prefix}_{suffix}"
            raw = env.get(name)
            if raw not in (None, ""):
                try:
                    values[field] = typ(raw)
                except ValueError as e:
                    raise ValueError(f"environment variable {name} is not a valid {typ.__name__}") from e
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def endpoint(self) -> str:
        """The full chat-completions URL."""
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclasses.dataclass
class ApiStats:
    """Counters and token accounting; safe to update from many threads."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    possibly_billed_usd: float = 0.0  # timed-out requests, at the estimated cost of one request
    timeouts: int = 0
    cached_replies: int = 0  # replies served from the reply store (not paid again)
    prior_usd: float = 0.0  # what the reply store says earlier runs spent
    reserved_usd: float = 0.0
    _priced: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Public counters as a plain dict (for JSON summaries)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.name.startswith("_") and f.name != "reserved_usd"}


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """One completed chat request."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    key: str = ""  # the request's key in the reply store ("" without a store)
    cached: bool = False  # served from the reply store (nothing paid now)


def image_data_url(path: str | os.PathLike) -> str:
    """Encode an image file as a base64 ``data:`` URL."""
    mime = mimetypes.guess_type(str(path))[0] or "image/jpeg"
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def user_message(text: str, image_urls: Sequence[str] = ()) -> dict[str, Any]:
    """A user message with images (data or http URLs) first, then the text."""
    if not image_urls:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def text_message(role: str, text: str) -> dict[str, Any]:
    """A plain-text system/assistant/user message."""
    return {"role": role, "content": text}


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


def token_cost(prompt_tokens: int, completion_tokens: int, cfg: ApiConfig) -> float:
    """USD cost of one request at the configured prices."""
    return (prompt_tokens * cfg.price_input_per_1m + completion_tokens * cfg.price_output_per_1m) / 1e6


class RateLimiter:
    """Spaces request starts at least ``60 / rpm`` seconds apart across threads."""

    def __init__(self, requests_per_minute: float):
        self._interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this caller may start a request."""
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        time.sleep(max(0.0, start - now))


class _Retryable(Exception):
    """Internal: a transient failure worth another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None, maybe_billed: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.maybe_billed = maybe_billed


def request_key(body: Mapping[str, Any], tag: str = "") -> str:
    """Stable hash of one request (what is asked, of which model; never the API key) plus a caller's tag."""
    blob = json.dumps([tag, body], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyStore:
    """Append-only JSONL of paid replies {"key", "text", "finish_reason", tokens, "cost_usd"} and of possibly
    billed timeouts {"key": null, "timeout": true, "cost_usd"}: the record of what was spent, read back on a
    rerun (a torn last line, from a crash, is ignored)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self.replies: dict[str, dict[str, Any]] = {}
        self.spent_usd = 0.0
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
            for lineno, raw in enumerate(lines[:-1], 1):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError as e:
                    raise ValueError(f"{self.path}:{lineno}: corrupt reply-store line ({e})") from e
                self.spent_usd += float(entry.get("cost_usd") or 0.0)
                if entry.get("forget"):
                    self.replies.pop(entry["key"], None)
                elif entry.get("key"):
                    self.replies[entry["key"]] = entry
            if lines[-1].strip():  # cut a torn tail so appends stay line-aligned
                with open(self.path, "rb+") as f:
                    f.truncate(sum(len(x) + 1 for x in lines[:-1]))
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reply of a request, or None."""
        with self._lock:
            return self.replies.get(key)

    def add(self, entry: Mapping[str, Any]) -> None:
        """Append one entry durably (one write, flush, fsync)."""
        line = json.dumps(dict(entry), ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            if entry.get("forget"):
                self.replies.pop(entry["key"], None)
            elif entry.get("key"):
                self.replies[entry["key"]] = dict(entry)


class ChatClient:
    """Thread-safe chat-completions client with retries, rate limit, accounting and a budget."""

    def __init__(self, config: ApiConfig, store: str | os.PathLike | None = None):
        if not config.base_url or not config.model:
            raise ValueError("ApiConfig needs base_url and model (set OPENAI_BASE_URL / OPENAI_MODEL or pass them)")
        self.config = config
        self.stats = ApiStats()
        self.store = ReplyStore(store) if store is not None else None
        self.stats.prior_usd = self.store.spent_usd if self.store else 0.0
        self._limiter = RateLimiter(config.requests_per_minute)
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._cond = threading.Condition(self.stats._lock)
        self._inflight = 0

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    # -- budget ---------------------------------------------------------------------------
    # Each attempt reserves the mean cost of the replies so far; until the first reply is
    # priced, only one request is in flight, so the cap holds to within one request's
    # deviation from the mean.
    def _estimate(self) -> float:
        """Expected cost of one request: the mean over priced replies (0 before the first)."""
        s = self.stats
        return s.cost_usd / s._priced if s._priced else 0.0

    def _reserve(self) -> float:
        """Reserve the expected cost of one request, or raise BudgetExceeded."""
        budget = self.config.budget_usd
        with self._cond:
            while budget is not None and not self.stats._priced and self._inflight:
                self._cond.wait()
            est = self._estimate()
            if budget is not None and self.spent_total() + self.stats.reserved_usd + est > budget:
                raise BudgetExceeded(
                    f"budget ${budget:.4f} reached (spent ${self.spent_total():.4f} including earlier runs' "
                    f"${self.stats.prior_usd:.4f} and possibly billed timeouts, in flight ${self.stats.reserved_usd:.4f})")
            self.stats.reserved_usd += est
            self._inflight += 1
            return est

    def spent_total(self) -> float:
        """Earlier runs' spend (reply store) + this run's priced replies + possibly billed timeouts."""
        return self.stats.prior_usd + self.stats.cost_usd + self.stats.possibly_billed_usd

    def _settle(self, reserved: float, result: ChatResult | None, maybe_billed: float = 0.0) -> None:
        """Release a reservation and book the real usage (or a possibly billed timeout's estimate)."""
        with self._cond:
            self.stats.reserved_usd -= reserved
            self.stats.requests += 1
            self._inflight -= 1
            if maybe_billed:
                self.stats.timeouts += 1
                self.stats.possibly_billed_usd += maybe_billed
            if result is not None:
                self.stats._priced += 1
                self.stats.prompt_tokens += result.prompt_tokens
                self.stats.completion_tokens += result.completion_tokens
                self.stats.cost_usd += result.cost_usd
            self._cond.notify_all()

    def budget_left(self) -> bool:
        """Whether another request could start now."""
        b = self.config.budget_usd
        with self._cond:
            return b is None or self.spent_total() + self.stats.reserved_usd + self._estimate() <= b

    # -- transport ------------------------------------------------------------------------
    def _post_once(self, body: bytes) -> ChatResult:
        """One HTTP attempt; raises _Retryable or ApiError."""
        req = urllib.request.Request(self.config.endpoint(), data=body, method="POST", headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.config.api_key}",
        })
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            if e.code in RETRYABLE_STATUS:
                raise _Retryable(f"HTTP {e.code}", retry_after) from None
            raise ApiError(f"HTTP {e.code} from {self.config.endpoint()}") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable("timeout", maybe_billed=True) from None
        except urllib.error.URLError as e:
            raise _Retryable(f"connection error ({type(e.reason).__name__})") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection error ({type(e).__name__})") from None
        return self._parse_payload(payload)

    def _parse_payload(self, payload: bytes) -> ChatResult:
        """Turn a 200 body into a ChatResult; a body that is not a completion is retried."""
        try:
            data = json.loads(payload)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable("unparseable response body") from None
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        return ChatResult(text, choice.get("finish_reason"), pt, ct, token_cost(pt, ct, self.config))

    def _timeout_cost(self, body: bytes) -> float:
        """What a timed-out request may have cost: the mean priced reply, else the request's size in tokens
        (4 bytes a token) plus max_tokens of output."""
        with self._cond:
            mean = self._estimate()
        return mean or token_cost(len(body) // 4, self.config.max_tokens, self.config)

    def complete(self, messages: Sequence[Mapping[str, Any]], tag: str = "", **params: Any) -> ChatResult:
        """Send one chat request (retrying transient failures) and return the reply.

        With a reply store, a request already paid for (same body and `tag`) is answered from the store at no
        cost; a new paid reply is stored before it is returned (so before the caller validates it). Callers
        that want a fresh reply to the same messages (a retry after a bad reply) pass a different `tag`."""
        request = {"model": self.config.model, "messages": list(messages), "max_tokens": self.config.max_tokens,
                   "temperature": self.config.temperature, **params}
        key = request_key(request, tag) if self.store else ""
        stored = self.store.get(key) if self.store else None
        if stored is not None:
            with self.stats._lock:
                self.stats.cached_replies += 1
            return ChatResult(stored["text"], stored.get("finish_reason"), 0, 0, 0.0, key, cached=True)
        body = json.dumps(request).encode("utf-8")
        for attempt in range(self.config.max_retries + 1):
            reserved = self._reserve()
            self._limiter.wait()
            try:
                result = self._post_once(body)
            except _Retryable as e:
                maybe = self._timeout_cost(body) if e.maybe_billed else 0.0
                self._settle(reserved, None, maybe)
                if maybe and self.store:
                    self.store.add({"key": None, "timeout": True, "cost_usd": maybe})
                if attempt == self.config.max_retries:
                    with self.stats._lock:
                        self.stats.failures += 1
                    raise ApiError(f"gave up after {attempt + 1} attempts: {e}") from None
                with self._rng_lock:
                    delay = backoff_delay(attempt, self.config.backoff_base_s, self.config.backoff_max_s, self._rng)
                if e.retry_after is not None:
                    delay = min(self.config.backoff_max_s, max(delay, e.retry_after))
                with self.stats._lock:
                    self.stats.retries += 1
                log.info("retrying after %s (attempt %d, sleeping %.2fs)", e, attempt + 1, delay)
                time.sleep(delay)
                continue
            except ApiError:
                self._settle(reserved, None)
                with self.stats._lock:
                    self.stats.failures += 1
                raise
            if self.store:  # stored before anyone validates it: a rerun never pays for it again
                self.store.add({"key": key, "text": result.text, "finish_reason": result.finish_reason,
                                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                                "cost_usd": result.cost_usd})
                result = dataclasses.replace(result, key=key)
            self._settle(reserved, result)
            return result
        raise AssertionError("unreachable")

    def forget(self, result: ChatResult) -> None:
        """Drop a stored reply the caller found unusable, so the same request is asked (and paid) anew next
        time; what it cost still counts against the budget."""
        if self.store and result.key:
            self.store.add({"key": result.key, "forget": True, "cost_usd": 0.0})


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After header, else None."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def run_concurrently(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int,
                     stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield ``(item, result, error)`` as ``fn(item)`` completes, at most ``concurrency`` in flight.

    New items stop being submitted once ``stop()`` is true or ``fn`` raised BudgetExceeded;
    work already in flight is waited for, so every started item is reported.
    """
    it = iter(items)
    halted = False
    with cf.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending: dict[cf.Future, Any] = {}

        def fill() -> None:
            while not halted and len(pending) < max(1, concurrency) and not stop():
                try:
                    item = next(it)
                except StopIteration:
                    return
                pending[pool.submit(fn, item)] = item

        fill()
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                err = fut.exception()
                if isinstance(err, BudgetExceeded):
                    halted = True
                yield item, (None if err else fut.result()), err
            fill()


# Reply parsing: JSON inside a model's reply.
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


class RejectError(ValueError):
    """A reply that cannot become a record; ``reason`` is a stable short code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def extract_json(text: str) -> Any:
    """The JSON value in a reply, tolerating code fences and prose around one object/array."""
    cleaned = _FENCE.sub("", text.strip()).strip()
    try:
        return json.loads(cleaned)
    except ValueError:
        pass
    for open_ch, close_ch in (("{", "}"), ("[", "]")):
        start, end = cleaned.find(open_ch), cleaned.rfind(close_ch)
        if 0 <= start < end:
            try:
                return json.loads(cleaned[start:end + 1])
            except ValueError:
                continue
    raise RejectError("invalid_json", f"no JSON value in reply starting {text[:60]!r}")
