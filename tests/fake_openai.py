"""A local fake OpenAI-compatible chat-completions server for tests (127.0.0.1, ephemeral port).

It answers mvif generation, translation and judge requests with plausible replies and
injects faults from a seeded RNG: HTTP 429 (with Retry-After: 0) and 500, hangs longer
than the client timeout, malformed (non-JSON) replies, partial replies (a language
missing, a pair missing, or cut off with finish_reason=length). Requests with the wrong
bearer key get 401. It counts what it served; a hard request cap protects tests.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LANG_CODES = {"Korean": "ko", "Chinese": "zh", "English": "en", "Japanese": "ja"}
TEXT = {  # filler in each script so validation's script checks pass
    "en": ("What is the {o}?", "The {o} is clearly visible."),
    "ko": ("{o}은 무엇인가요?", "{o}이 분명히 보입니다."),
    "zh": ("{o}是什么？", "{o}清晰可见。"),
}


@dataclasses.dataclass
class Faults:
    """Probabilities of each injected fault (drawn per request, in order)."""

    p429: float = 0.0
    p500: float = 0.0
    phang: float = 0.0
    malformed: float = 0.0
    partial: float = 0.0
    hang_s: float = 1.0


class FakeOpenAI:
    """The server; use ``url``, ``counts`` and ``requests``; ``close()`` stops it."""

    def __init__(self, api_key: str, faults: Faults | None = None, seed: int = 0, max_requests: int = 2000):
        self.api_key = api_key
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.max_requests = max_requests
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Base URL to put in OPENAI_BASE_URL."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def draw(self) -> str:
        """The fault (or 'ok') for the next request."""
        f = self.faults
        with self.lock:
            r = self.rng.random()
        for name, p in (("429", f.p429), ("500", f.p500), ("hang", f.phang), ("malformed", f.malformed),
                        ("partial", f.partial)):
            if r < p:
                return name
            r -= p
        return "ok"


def _user_text(messages: list[dict[str, Any]]) -> str:
    """Text of the last user message."""
    content = [m for m in messages if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if p.get("type") == "text")


def mvif_reply(text: str, fault: str, rng: random.Random) -> tuple[str, str]:
    """A generation reply matching the request's format instruction, possibly damaged."""
    n = int(re.search(r"exactly (\d+) question-answer pairs", text).group(1))
    objs = re.search(r"Main objects: (.*)", text)
    names = objs.group(1).split(", ") if objs else ["scene"]
    reply: dict[str, Any] = {}
    if '"scene_graph"' in text:
        reply["scene_graph"] = f"{names[0]} - left of - {names[-1]}"
    for lang, (q, a) in TEXT.items():
        reply[lang] = [{"question": q.format(o=names[i % len(names)]) + f" #{i}",
                        "answer": a.format(o=names[i % len(names)])} for i in range(n)]
    if fault == "malformed":
        return "I'm sorry, here are some questions: what is it? it is a thing.", "stop"
    if fault == "partial":
        kind = rng.choice(["missing_lang", "short", "cut"])
        if kind == "missing_lang":
            del reply["zh"]
        elif kind == "short":
            reply["ko"] = reply["ko"][:-1]
        else:
            s = json.dumps(reply, ensure_ascii=False)
            return s[: len(s) // 2], "length"
    return "```json\n" + json.dumps(reply, ensure_ascii=False) + "\n```", "stop"


def translate_reply(text: str, fault: str) -> tuple[str, str]:
    """Appends ' [<code>]' to each string (keeps letters, numbers); damaged on faults."""
    tgt = LANG_CODES.get(re.search(r"into (\w+)\.", text).group(1), "xx")
    items = json.loads(text.split("\n", 1)[1])
    out = [f"{s} [{tgt}]" for s in items]
    if fault == "malformed":
        return "Here you go: " + " / ".join(out), "stop"
    if fault == "partial":
        out = out[:-1] if len(out) > 1 else [re.sub(r"\d", "#", s) for s in out]
    return json.dumps(out, ensure_ascii=False), "stop"


def judge_reply(text: str, fault: str) -> tuple[str, str]:
    """Prefers the longer answer (a stand-in for 'better'); equal length -> similar."""
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of Answer A\]", text, re.S).group(1)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of Answer B\]", text, re.S).group(1)
    if fault in ("malformed", "partial"):
        return "Both have merits and drawbacks.", "stop"
    verdict = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "similar"
    return f"Answer {verdict} is more detailed.\n{json.dumps({'verdict': verdict})}", "stop"


def mmbench_match_reply(text: str) -> tuple[str, str]:
    """MMBench's matching request: the option sharing a word with the answer (the last example's), else E."""
    example = text.rsplit("Example 3: \n", 1)[1]
    options = dict(re.findall(r"^([A-D])\. (.*)$", example, re.M))
    answer = set(re.search(r"\nAnswer: (.*)\nYour output: $", example, re.S).group(1).lower().split())
    hits = [k for k, v in options.items() if answer & set(v.lower().split())]
    return (hits[0] if len(hits) == 1 else "E"), "stop"


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:  # noqa: N802
        fake = self.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with fake.lock:
            fake.counts["requests"] += 1
            over = fake.counts["requests"] > fake.max_requests
        if over:
            return self._send(503, {"error": {"message": "fake server request cap reached"}})
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": "not found"}})
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            fake.counts["401"] += 1
            return self._send(401, {"error": {"message": "invalid api key"}})
        fault = fake.draw()
        fake.counts[fault] += 1
        with fake.lock:
            fake.requests.append(body)
        if fault == "429":
            return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
        if fault == "500":
            return self._send(500, {"error": {"message": "server error"}})
        if fault == "hang":
            time.sleep(fake.faults.hang_s)
            fault = "ok"
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        text = _user_text(body["messages"])
        if "translator" in system:
            content, finish = translate_reply(text, fault)
        elif "[Answer A]" in text:
            content, finish = judge_reply(text, fault)
        elif "match an answer with several options" in text:
            content, finish = mmbench_match_reply(text)
        else:
            with fake.lock:
                content, finish = mvif_reply(text, fault, fake.rng)
        usage = {"prompt_tokens": 1000, "completion_tokens": max(1, len(content) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._send(200, {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": finish}], "usage": usage})
