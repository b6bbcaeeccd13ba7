"""Money: the reply store makes the budget cumulative across reruns, a paid reply is never paid for twice (it is
stored before validation), timeouts count as possibly billed, and a bad language does not discard the others."""

import json

import pytest

from conftest import FAKE_API_KEY
from fake_openai import Faults
from xllava_jax.openai_api import RejectError
from xllava_jax.datagen.translate import TranslateConfig, translate_chunk
from xllava_jax.openai_api import (ApiConfig, ApiError, BudgetExceeded, ChatClient, request_key, text_message,
                                   token_cost)


def client_for(server, store, **kw):
    cfg = dict(base_url=server.url, model="fake", api_key=FAKE_API_KEY, timeout_s=0.3, backoff_base_s=0.01,
               backoff_max_s=0.02, max_retries=2, seed=0, max_tokens=100)
    cfg.update(kw)
    return ChatClient(ApiConfig(**cfg), store=store)


def judge(i):
    return [text_message("system", "judge"),
            text_message("user", f"[Answer A]\nlong answer {i}\n[End of Answer A]\n[Answer B]\nb\n[End of Answer B]")]


def test_a_rerun_pays_nothing_twice_and_the_budget_is_cumulative(fake_openai, tmp_path):
    server = fake_openai()
    store = tmp_path / "replies.jsonl"
    first = client_for(server, store)
    replies = [first.complete(judge(i)) for i in range(3)]
    spent = first.stats.cost_usd
    assert server.counts["requests"] == 3 and spent == pytest.approx(sum(r.cost_usd for r in replies)) and spent > 0
    assert first.complete(judge(0)).cached and server.counts["requests"] == 3  # same request: from the store
    rerun = client_for(server, store, budget_usd=spent * 1.5)  # a new process, same store
    assert rerun.stats.prior_usd == pytest.approx(spent)
    assert [rerun.complete(judge(i)).text for i in range(3)] == [r.text for r in replies]
    assert server.counts["requests"] == 3 and rerun.stats.cached_replies == 3 and rerun.stats.cost_usd == 0
    with pytest.raises(BudgetExceeded, match="earlier runs"):  # 1.5x budget, 1x spent before, each reply ~1/3
        for i in range(3, 10):
            rerun.complete(judge(i))
    assert server.counts["requests"] == 4  # one more fits (4/3 <= 1.5), the fifth would not
    # a tag asks the same messages anew (the judge's parse retries); forget() drops an unusable reply
    other = client_for(server, tmp_path / "other.jsonl")
    bad = other.complete(judge(0))
    assert not other.complete(judge(0), tag="parse_retry1").cached
    other.forget(bad)
    assert not client_for(server, tmp_path / "other.jsonl").complete(judge(0)).cached


def test_timeouts_are_booked_as_possibly_billed_and_remembered(fake_openai, tmp_path):
    server = fake_openai(Faults(phang=1.0, hang_s=0.6))
    store = tmp_path / "replies.jsonl"
    client = client_for(server, store, max_retries=1)
    messages = judge(0)
    with pytest.raises(ApiError, match="timeout"):
        client.complete(messages)
    body = json.dumps({"model": "fake", "messages": messages, "max_tokens": 100, "temperature": 0.2}).encode()
    each = token_cost(len(body) // 4, 100, client.config)  # no priced reply yet: prompt bytes/4 + max_tokens
    assert client.stats.timeouts == 2 and client.stats.possibly_billed_usd == pytest.approx(2 * each)
    assert client_for(server, store).stats.prior_usd == pytest.approx(2 * each)  # a rerun counts them


def test_a_bad_language_keeps_the_other_languages_replies():
    calls = []

    class HalfBroken:
        def translate(self, texts, src, tgt):
            calls.append((tgt, len(texts)))
            if tgt == "zh" and len(texts) > 1:
                raise RejectError("bad_translation_reply", "zh batch broken")
            return [f"{t} [{tgt}]" for t in texts]

    chunk = [{"question_id": i, "text": f"Question {i}?"} for i in range(3)]
    cfg = TranslateConfig("in", "out", kind="questions", langs=("ko", "zh"), progress=False)
    outcomes = translate_chunk(chunk, HalfBroken(), cfg)
    assert [o["record"]["text"]["ko"] for o in outcomes] == ["Question 0? [ko]", "Question 1? [ko]", "Question 2? [ko]"]
    assert calls == [("ko", 3), ("zh", 3), ("zh", 1), ("zh", 1), ("zh", 1)]  # ko asked once, not again per record


def test_translate_rerun_never_pays_twice(fake_openai, tmp_path, monkeypatch):
    from xllava_jax.datagen.__main__ import main
    server = fake_openai(Faults(p500=0.2, malformed=0.2, partial=0.2), seed=3)
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"question_id": i, "text": f"What is object {i}?"}) + "\n" for i in range(12)))
    out = tmp_path / "q_ml.jsonl"
    args = ["translate", "--input", str(src), "--out", str(out), "--kind", "questions", "--langs", "ko,zh",
            "--batch_texts", "4", "--base_url", server.url, "--model", "fake", "--timeout_s", "2", "--max_retries", "3",
            "--no_progress"]
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_API_KEY)
    assert main(args) == 0
    paid_first = server.counts["ok"] + server.counts["malformed"] + server.counts["partial"]
    replies = [json.loads(x) for x in open(str(out) + ".replies.jsonl")]
    assert sum(1 for r in replies if r.get("key") and not r.get("forget")) == paid_first  # every 200 stored
    out.unlink()  # lose the output: the rerun rebuilds it from stored replies alone
    (tmp_path / "q_ml.jsonl.rejects.jsonl").unlink(missing_ok=True)
    forgotten = {r["key"] for r in replies if r.get("forget")}
    stored = {r["key"] for r in replies if r.get("key")} - forgotten
    sent_before = len(server.requests)
    assert main(args) == 0
    resent = [request_key(body) for body in server.requests[sent_before:]]
    assert resent and not set(resent) & stored  # nothing paid for (and usable) is asked again
    assert len(out.read_text().splitlines()) + sum(1 for _ in open(tmp_path / "q_ml.jsonl.rejects.jsonl")) == 12
