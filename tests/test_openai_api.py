"""The shared OpenAI-compatible client against the local fake server."""

import logging

import pytest

from conftest import FAKE_API_KEY
from fake_openai import Faults
from xllava_jax.openai_api import (ApiConfig, ApiError, BudgetExceeded, ChatClient, backoff_delay, image_data_url,
                                   run_concurrently, text_message, user_message)


def _client(server, **kw):
    cfg = dict(base_url=server.url, model="fake", api_key=FAKE_API_KEY, timeout_s=0.5, backoff_base_s=0.01,
               backoff_max_s=0.05, max_retries=8, seed=0)
    cfg.update(kw)
    return ChatClient(ApiConfig(**cfg))


def _judge_messages():
    return [text_message("system", "judge"),
            user_message("[Answer A]\nlong answer\n[End of Answer A]\n[Answer B]\nshort\n[End of Answer B]")]


def test_config_from_env_and_key_hidden():
    env = {"OPENAI_BASE_URL": "http://x/v1", "OPENAI_MODEL": "m", "OPENAI_API_KEY": FAKE_API_KEY,
           "OPENAI_CONCURRENCY": "3", "OPENAI_BUDGET_USD": "1.5"}
    cfg = ApiConfig.from_env(environ=env, model="override")
    assert (cfg.base_url, cfg.model, cfg.concurrency, cfg.budget_usd) == ("http://x/v1", "override", 3, 1.5)
    assert cfg.api_key == FAKE_API_KEY
    assert FAKE_API_KEY not in repr(cfg) and FAKE_API_KEY not in repr(ChatClient(cfg))
    with pytest.raises(ValueError, match="OPENAI_CONCURRENCY"):
        ApiConfig.from_env(environ={"OPENAI_CONCURRENCY": "many"})


def test_backoff_is_capped_full_jitter():
    import random
    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 8.0, rng) for a in range(10) for _ in range(50)]
    assert all(0.0 <= d <= 8.0 for d in delays) and max(delays) > 4.0


def test_image_data_url(tmp_path):
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    url = image_data_url(tmp_path / "x.png")
    assert url.startswith("data:image/png;base64,")
    msg = user_message("hi", [url])
    assert msg["content"][0]["image_url"]["url"] == url and msg["content"][-1] == {"type": "text", "text": "hi"}


def test_retries_on_429_500_and_hangs(fake_openai, caplog):
    server = fake_openai(Faults(p429=0.25, p500=0.25, phang=0.1, hang_s=0.8), seed=1)
    client = _client(server)
    caplog.set_level(logging.DEBUG)
    for _ in range(10):
        assert '"verdict"' in client.complete(_judge_messages()).text
    s = client.stats
    assert s.retries == server.counts["429"] + server.counts["500"] + server.counts["hang"] > 0
    assert s.requests == server.counts["requests"] and s.failures == 0
    assert s.prompt_tokens == 10 * 1000 and s.completion_tokens > 0 and s.cost_usd > 0
    assert FAKE_API_KEY not in caplog.text


def test_gives_up_after_max_retries_and_wrong_key(fake_openai):
    server = fake_openai(Faults(p500=1.0))
    client = _client(server, max_retries=2)
    with pytest.raises(ApiError, match="gave up after 3 attempts"):
        client.complete(_judge_messages())
    assert server.counts["requests"] == 3 and client.stats.failures == 1
    bad = _client(fake_openai(), api_key="sk-wrong")
    with pytest.raises(ApiError, match="HTTP 401") as e:
        bad.complete(_judge_messages())
    assert "sk-wrong" not in str(e.value)


def test_budget_cap_stops_cleanly(fake_openai):
    server = fake_openai()
    client = _client(server, budget_usd=0.02, price_input_per_1m=5.0, price_output_per_1m=0.0)  # $0.005/request
    results = list(run_concurrently(lambda _: client.complete(_judge_messages()), range(50), concurrency=3))
    ok = [r for _, r, e in results if e is None]
    assert len(ok) <= 4 and client.stats.cost_usd <= 0.02 + 1e-9
    assert server.counts["requests"] == client.stats.requests < 50
    with pytest.raises(BudgetExceeded):
        client.complete(_judge_messages())


def test_rate_limit_spaces_requests(fake_openai):
    import time
    client = _client(fake_openai(), requests_per_minute=600)  # 0.1 s apart
    t0 = time.monotonic()
    for _ in range(4):
        client.complete(_judge_messages())
    assert time.monotonic() - t0 >= 0.3
