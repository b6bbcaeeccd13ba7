"""The OpenAI-compatible server, through the official `openai` client: answers equal `infer chat`, streaming,
32 concurrent requests equal to each alone, and every bad input refused while the server keeps serving."""

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest

from serve_helpers import data_url, running_server
from xllava_jax.infer.chat import Chat
from xllava_jax.infer.generate import GenerationConfig
from xllava_jax.infer.prompts import load_image
from xllava_jax.serve.__main__ import load_engine

MAX_LEN = 256


@pytest.fixture(scope="module")
def server(tiny_llava_hf_dir, question_set):
    with running_server(tiny_llava_hf_dir, "--max_batch", "8", "--max_len", str(MAX_LEN), "--decode_steps", "4",
                        "--image_root", str(question_set["image_root"]), "--max_image_bytes", "100000",
                        "--max_tokens", "10", "--request_timeout", "120") as (url, service):
        yield url, service


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def image_message(text, image):
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": data_url(image)}}]}


def test_answers_equal_infer_chat_streamed_or_not_over_two_turns(client, tiny_llava_hf_dir, question_set):
    image = question_set["image_root"] / "img" / "1.png"
    engine, template = load_engine(str(tiny_llava_hf_dir), None, None, None)  # what `infer chat` loads
    from xllava_jax.data.templates import get_template
    chat = Chat(engine, get_template(template), load_image(str(image), None, 56),
                GenerationConfig(max_new_tokens=10, batch_size=1))
    want1 = "".join(chat.ask("What is in the picture?"))
    want2 = "".join(chat.ask("사진에 무엇이 있습니까?"))
    assert want1 and want2

    messages = [image_message("What is in the picture?", image)]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10)
    assert reply.choices[0].message.content == want1
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    prompt = reply.usage.prompt_tokens
    assert prompt > 16 and reply.usage.completion_tokens >= 1  # the 16 image tokens are in the prompt
    assert reply.usage.total_tokens == prompt + reply.usage.completion_tokens

    messages += [{"role": "assistant", "content": want1}, {"role": "user", "content": "사진에 무엇이 있습니까?"}]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.prompt_tokens > prompt and chunks[-1].usage.completion_tokens >= 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_is_server_sent_events_ending_with_done(server, question_set):
    body = {"model": "tiny", "stream": True, "max_tokens": 6,
            "messages": [image_message("Describe the colors.", question_set["image_root"] / "img" / "3.png")]}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


def solo_and_crowd(client, requests):
    """Each request sent alone (one at a time), then all at once; returns (alone, together) (text, tokens) lists."""
    def ask(kw):
        r = client.chat.completions.create(model="tiny", **kw)
        return r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason
    alone = [ask(kw) for kw in requests]
    with cf.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    return alone, together


def test_32_concurrent_requests_equal_each_alone(client, server, question_set):
    texts = ["What is in the picture?", "사진에 무엇이 있습니까?", "图片里有什么？", "Describe the colors.", "Hello?",
             "Tell me a story about the sea and the wind."]
    requests = []
    for i in range(32):
        text = texts[i % len(texts)] + " again" * (i % 3)
        message = (image_message(text, question_set["image_root"] / "img" / f"{i % 4}.png") if i % 4 != 3
                   else {"role": "user", "content": text})
        requests.append({"messages": [message], "max_tokens": 4 + i % 9})
    alone, together = solo_and_crowd(client, requests)
    assert together == alone
    assert len({a[0] for a in alone}) > 8  # the requests really differ
    status = httpx.get(server[0] + "/health").json()
    assert status["busy"] == 0 and status["waiting"] == 0


def test_sampling_is_seeded_per_request_and_stop_strings_cut(client):
    msg = [{"role": "user", "content": "Tell me a story about the sea and the wind."}]
    a = client.chat.completions.create(model="tiny", messages=msg, max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    b = client.chat.completions.create(model="tiny", messages=msg, max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    others = {client.chat.completions.create(model="tiny", messages=msg, max_tokens=12, temperature=1.0,
                                             seed=s).choices[0].message.content for s in range(4)}
    assert a.choices[0].message.content == b.choices[0].message.content
    assert len(others) > 1
    greedy = client.chat.completions.create(model="tiny", messages=msg, max_tokens=12).choices[0].message.content
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 2]
    assert stop.strip()
    cut = client.chat.completions.create(model="tiny", messages=msg, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == greedy[:greedy.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_models_and_health(server):
    models = httpx.get(server[0] + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 8


def good_request_works(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello?"}], max_tokens=2)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1


def post(server, body=None, content=None):
    return httpx.post(server[0] + "/v1/chat/completions", json=body, content=content, timeout=60)


def bad_requests(question_set, tmp_path):
    """(name, request kwargs for post, expected status, expected code, words the message holds)."""
    img = question_set["image_root"] / "img"
    (tmp_path / "secret.png").write_bytes((img / "0.png").read_bytes())
    (img / "escape.png").symlink_to(tmp_path / "secret.png")  # removed by the test
    big = "data:image/png;base64," + "A" * 200_000

    def msg(url, text="hi"):
        return {"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]}

    return [
        ("not json", {"content": b"{'model': 'tiny'"}, 400, "invalid_json", "not valid JSON"),
        ("not an object", {"body": ["tiny"]}, 422, "invalid_body", "JSON object"),
        ("no messages", {"body": {"model": "tiny"}}, 422, "invalid_value", "messages"),
        ("bad role", {"body": {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}}, 422,
         "invalid_value", "role"),
        ("unknown model", {"body": {"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}}, 400,
         "model_not_found", "gpt-5"),
        ("temperature", {"body": {"model": "tiny", "temperature": 9, "messages": [{"role": "user", "content": "x"}]}},
         422, "invalid_value", "temperature"),
        ("bad base64", {"body": msg("data:image/png;base64,@@not-base64@@")}, 400, "invalid_base64", "base64"),
        ("not an image", {"body": msg("data:image/png;base64,aGVsbG8gd29ybGQ=")}, 400, "invalid_image", "image"),
        ("too large", {"body": msg(big)}, 413, "image_too_large", "100000"),
        ("body too large", {"content": b"{" + b" " * 1_300_000 + b"}"}, 413, "body_too_large", "bytes"),
        ("dot-dot escape", {"body": msg("../../../../etc/passwd")}, 400, "image_path_outside_root", "outside"),
        ("absolute escape", {"body": msg(str(tmp_path / "secret.png"))}, 400, "image_path_outside_root", "outside"),
        ("symlink escape", {"body": msg("img/escape.png")}, 400, "image_path_outside_root", "outside"),
        ("file URL escape", {"body": msg(f"file://{tmp_path / 'secret.png'}")}, 400, "image_path_outside_root",
         "outside"),
        ("two images", {"body": {"model": "tiny", "messages": [msg(data_url(img / "0.png"))["messages"][0],
                                                             {"role": "assistant", "content": "ok"},
                                                             msg(data_url(img / "1.png"))["messages"][0]]}},
         400, "too_many_images", "2 images"),
        ("prompt too long", {"body": {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}},
         400, "context_length_exceeded", str(MAX_LEN)),
        ("ends with assistant", {"body": {"model": "tiny", "messages": [{"role": "user", "content": "x"},
                                                                       {"role": "assistant", "content": "y"}]}},
         400, None, "end with a user message"),
        ("<image> in the text", {"body": {"model": "tiny", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "a <image> b"}]}},
         400, "image_token_mismatch", "image_url parts"),
        ("unknown path", {}, 404, "not_found", "/v1/nothing"),
    ]


def test_each_bad_input_is_a_named_json_error_and_the_next_request_succeeds(server, client, question_set, tmp_path):
    try:
        for name, kw, status, code, words in bad_requests(question_set, tmp_path):
            if name == "unknown path":
                r = httpx.post(server[0] + "/v1/nothing", json={})
            else:
                r = post(server, **kw)
            assert r.status_code == status, (name, r.text)
            error = r.json()["error"]
            assert words in error["message"], (name, error)
            assert error["code"] == code and error["type"], (name, error)
            good_request_works(client)
    finally:
        (question_set["image_root"] / "img" / "escape.png").unlink(missing_ok=True)


def test_local_images_under_the_root_and_loopback_urls_work(client, server, question_set):
    import http.server
    import threading

    img = question_set["image_root"] / "img"
    want = client.chat.completions.create(model="tiny", messages=[image_message("What is in the picture?",
                                                                                 img / "2.png")], max_tokens=8)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(img), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for url in ["img/2.png", str(img / "2.png"), f"http://127.0.0.1:{httpd.server_address[1]}/2.png"]:
            got = client.chat.completions.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is in the picture?"}, {"type": "image_url", "image_url": {"url": url}}]}])
            assert got.choices[0].message.content == want.choices[0].message.content, url
        r = post(server, {"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{httpd.server_address[1]}/nope.png"}}]}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "image_fetch_failed"
    finally:
        httpd.shutdown()


def test_refused_image_urls_are_named():
    import asyncio

    from xllava_jax.serve.images import ImagePolicy, image_bytes
    from xllava_jax.serve.protocol import ApiError
    with pytest.raises(ApiError, match="--no_image_urls") as e:
        asyncio.run(image_bytes("http://127.0.0.1:9/x.png", ImagePolicy(fetch_urls=False)))
    assert e.value.status == 400


def test_full_queue_is_429_with_retry_after_and_timeouts_are_408(server, client):
    service = server[1]
    size = service.loop.queue_size
    service.loop.queue_size = 0
    try:
        r = post(server, {"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    finally:
        service.loop.queue_size = size
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    good_request_works(client)
    timeout = service.request_timeout_s
    service.request_timeout_s = 1e-4
    try:
        r = post(server, {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 200})
    finally:
        service.request_timeout_s = timeout
    assert r.status_code == 408 and "--request_timeout" in r.json()["error"]["message"]
    good_request_works(client)


def wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_disconnects_frees_its_slot(server):
    url = server[0]
    before = httpx.get(url + "/health").json()["cancelled"]
    body = {"model": "tiny", "stream": True, "max_tokens": MAX_LEN, "messages": [
        {"role": "user", "content": "Tell me a story about the sea and the wind."}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk: the request is in
        assert wait_for(lambda: httpx.get(url + "/health").json()["busy"] == 1)
    # the client is gone before its answer could finish: the slot is freed, the request counted as cancelled
    assert wait_for(lambda: httpx.get(url + "/health").json()["busy"] == 0)
    assert httpx.get(url + "/health").json()["cancelled"] == before + 1


def test_a_device_error_fails_the_running_request_and_the_server_goes_on(server, client):
    engine = server[1].loop.engine
    real, calls = engine.step, []

    def broken(steps):
        if not calls:
            calls.append(steps)
            raise RuntimeError("simulated device error")
        return real(steps)

    engine.step = broken
    try:
        r = post(server, {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20,
                          "ignore_eos": True})
    finally:
        del engine.step
    assert calls and r.status_code == 500 and "simulated device error" in r.json()["error"]["message"]
    good_request_works(client)


def test_ignore_eos_generates_max_tokens_whatever_the_model_says(server, client):
    import jax.numpy as jnp

    loop = server[1].loop
    saved = loop.eos, loop.engine.eos
    vocab = loop.engine.engine.model.cfg.text.vocab_size
    loop.eos, loop.engine.eos = tuple(range(vocab)), jnp.arange(vocab, dtype=jnp.int32)  # every token ends a row
    msg = [{"role": "user", "content": "Tell me a story about the sea and the wind."}]
    try:
        natural = client.chat.completions.create(model="tiny", messages=msg, max_tokens=40)
        fixed = client.chat.completions.create(model="tiny", messages=msg, max_tokens=40,
                                               extra_body={"ignore_eos": True})
    finally:
        loop.eos, loop.engine.eos = saved
    assert natural.usage.completion_tokens == 0 and natural.choices[0].finish_reason == "stop"
    assert fixed.usage.completion_tokens == 40 and fixed.choices[0].finish_reason == "length"


def test_bad_flags_are_one_error_line(tiny_llava_hf_dir, tmp_path, capsys):
    from xllava_jax.serve.__main__ import main
    for argv, words in [(["--checkpoint", str(tmp_path / "nope")], "does not exist"),
                        (["--checkpoint", str(tiny_llava_hf_dir), "--max_batch", "0"], "--max_batch=0"),
                        (["--checkpoint", str(tiny_llava_hf_dir), "--image_root", str(tmp_path / "no")], "--image_root")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error:") and words in err, err
