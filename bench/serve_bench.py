"""Serving load benchmark (not a test): N concurrent clients of `python -m xllava_jax.serve` against the same
requests sent one at a time.

Starts the server as a subprocess on 127.0.0.1 (pinned to the same CPUs as this process: bench/harness.py),
builds requests from the demo's held-out questions (image as a data: URL, greedy), and runs two sides in turn
(A, B, A, B, ... after a warm-up round, harness.interleave): `sequential` sends the requests one at a time,
`concurrent_N` sends them from N client threads at once (each thread takes the next unsent request). Every
request streams (server-sent events, the official `openai` client), so each gives a time to first token and a
time per later token. Reported per side: requests/s and tokens/s (median and min-max over repeats), p50/p99 time
to first token and per-token latency (over every request of every repeat), requests failed or lost (must be 0),
and the ratio of the tokens/s medians.

    python -m xllava_jax.main --config configs/demo.py --workdir /tmp/xllava-demo   # the demo checkpoint
    python bench/serve_bench.py --workdir /tmp/xllava-demo [--clients 16] [--requests 32] [--max_tokens 64]

By default answers are `--max_tokens` long (`ignore_eos`, as vLLM's serving benchmark does): the demo model
answers in a word or two, so its own answers measure prefill and request overhead (`--natural` for those).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    """`python -m xllava_jax.serve` on the demo's stage-2 checkpoint, waited for until /health answers."""
    import httpx
    cmd = [sys.executable, "-m", "xllava_jax.serve", "--checkpoint", os.path.join(args.workdir, "stage2"),
           "--tokenizer", os.path.join(args.workdir, "data", "tokenizer"), "--model_name", "demo",
           "--port", str(port), "--max_batch", str(args.max_batch), "--max_len", str(args.max_len),
           "--decode_steps", str(args.decode_steps), "--queue_size", str(max(64, args.requests)),
           "--log_level", "warning"]
    proc = subprocess.Popen(cmd, stderr=sys.stderr)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start within 300 s")


def build_requests(args: argparse.Namespace) -> list[dict]:
    """`--requests` chat requests from the demo's held-out questions (cycled), each with its image."""
    root = os.path.join(args.workdir, "data")
    with open(os.path.join(root, "questions.jsonl"), encoding="utf-8") as f:
        questions = [json.loads(line) for line in f if line.strip()]
    out = []
    for i in range(args.requests):
        q = questions[(i * 7) % len(questions)]  # a spread of images, kinds and languages
        with open(os.path.join(root, q["image"]), "rb") as f:
            url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        content = [{"type": "text", "text": q["text"]}, {"type": "image_url", "image_url": {"url": url}}]
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens}
        if not args.natural:
            body["extra_body"] = {"ignore_eos": True}
        out.append(body)
    return out


class Side:
    """One way of sending the requests (with `clients` threads); keeps every request's timings."""

    def __init__(self, client, requests: list[dict], clients: int):
        self.client, self.requests, self.clients = client, requests, clients
        self.ttft, self.per_token, self.tokens, self.failed, self.runs = [], [], [], [], []
        self.lock = threading.Lock()

    def one(self, body: dict) -> None:
        """Send one streamed request; record its time to first token, per-token latency and token count."""
        start = time.perf_counter()
        first = None
        try:
            stream = self.client.chat.completions.create(model="demo", stream=True,
                                                         stream_options={"include_usage": True}, **body)
            tokens = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            end = time.perf_counter()
            if tokens is None:
                raise RuntimeError("no usage chunk: the stream ended early")
        except Exception as e:  # noqa: BLE001 - counted and reported
            with self.lock:
                self.failed.append(f"{type(e).__name__}: {e}")
            return
        first = first or end
        with self.lock:
            self.ttft.append(first - start)
            if tokens > 1:
                self.per_token.append((end - first) / (tokens - 1))
            self.tokens.append(tokens)

    def __call__(self) -> None:
        """Send every request (one at a time, or from `clients` threads) and record this run's totals."""
        before = len(self.tokens)
        start = time.perf_counter()
        if self.clients == 1:
            for body in self.requests:
                self.one(body)
        else:
            with cf.ThreadPoolExecutor(self.clients) as pool:
                list(pool.map(self.one, self.requests))
        seconds = time.perf_counter() - start
        self.runs.append({"seconds": seconds, "tokens": sum(self.tokens[before:]),
                          "answered": len(self.tokens) - before})

    def reset(self) -> None:
        """Forget the warm-up round."""
        self.ttft, self.per_token, self.tokens, self.failed, self.runs = [], [], [], [], []


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank); None without values (e.g. no answer longer than one token)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def report(side: Side, n_requests: int) -> dict:
    """The side's summary: rates over runs, latency percentiles over requests, failures."""
    ms = lambda v: None if v is None else round(1000 * v, 2)  # noqa: E731
    return {
        "requests_per_s": harness.summary([r["answered"] / r["seconds"] for r in side.runs], 2),
        "tokens_per_s": harness.summary([r["tokens"] / r["seconds"] for r in side.runs], 1),
        "ttft_ms": {"p50": ms(percentile(side.ttft, 50)), "p99": ms(percentile(side.ttft, 99))},
        "per_token_ms": {"p50": ms(percentile(side.per_token, 50)), "p99": ms(percentile(side.per_token, 99))},
        "tokens_per_request": round(statistics.mean(side.tokens), 1),
        "failed": len(side.failed), "lost": n_requests * len(side.runs) - sum(r["answered"] for r in side.runs),
        "errors": side.failed[:3],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/xllava-demo", help="the demo's workdir (stage2/ and data/)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=32, help="requests per run (each side sends the same ones)")
    p.add_argument("--max_tokens", type=int, default=64, help="tokens per answer")
    p.add_argument("--natural", action="store_true", help="answers end at the model's EOS (no ignore_eos)")
    p.add_argument("--max_batch", type=int, default=16, help="server KV-cache slots")
    p.add_argument("--max_len", type=int, default=512, help="server tokens per slot")
    p.add_argument("--decode_steps", type=int, default=8, help="server decode steps per device call")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side")
    p.add_argument("--threads", type=int, default=None, help="CPUs for server and clients (default: all)")
    args = p.parse_args()
    threads = harness.pin_threads(args.threads)  # the server subprocess inherits the CPU affinity
    import openai

    port = free_port()
    server = start_server(args, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
        requests = build_requests(args)
        sides = {"sequential": Side(client, requests, 1), f"concurrent_{args.clients}": Side(client, requests,
                                                                                           args.clients)}
        for side in sides.values():  # warm-up: compile every prompt bucket and cache view
            side()
            side.reset()
        run = harness.interleave(sides, repeats=args.repeats, warmup=0, label="serve")
    finally:
        server.terminate()
        server.wait(timeout=60)
    out = {"environment": {**harness.environment(), "threads": threads},
           "settings": {k: v for k, v in vars(args).items()}, "load": run["load"],
           "sides": {name: report(side, args.requests) for name, side in sides.items()}}
    seq, conc = (statistics.median(r["tokens"] / r["seconds"] for r in s.runs) for s in sides.values())
    out["concurrent_over_sequential_tokens_per_s"] = round(conc / seq, 2)
    print(json.dumps(out, indent=1, ensure_ascii=False))
    bad = sum(s["failed"] + s["lost"] for s in out["sides"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
