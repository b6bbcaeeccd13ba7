"""Preference evaluation against the fake server: both orders, caching, word limit, outputs, no key leak."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE_API_KEY
from fake_openai import Faults
from xllava_jax.eval.judge import JudgeConfig, combine, parse_verdict, run_judge, truncate_words
from xllava_jax.openai_api import ApiConfig, ChatClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("first,second,outcome", [
    ("A", "B", "win"), ("A", "similar", "win"), ("similar", "B", "win"),
    ("B", "A", "loss"), ("B", "similar", "loss"),
    ("similar", "similar", "tie"), ("A", "A", "tie"), ("B", "B", "tie"),  # pure position bias cancels
])
def test_combine_both_orders(first, second, outcome):
    assert combine(first, second) == outcome


def test_parse_verdict_and_truncate():
    assert parse_verdict('reason\n{"verdict": "B"}') == "B"
    assert parse_verdict("Answer A is better because it is precise.") == "A"
    assert parse_verdict("Both answers are similar.") == "similar"
    assert parse_verdict("I cannot decide.") is None
    assert truncate_words("one two  three four", 3) == "one two  three"
    assert truncate_words("这是一只猫在桌子上", 4) == "这是一只"
    assert truncate_words("고양이가 책상 위에 있다", 2) == "고양이가 책상"
    assert truncate_words("short", 30) == "short"


def _write_inputs(tmp_path, n=6):
    from PIL import Image
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "img" / "a.jpg")
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "image": "a.jpg", "text": f"<image>\nQuestion {i}?"}) + "\n"
                         for i in range(n)))
    # model A answers longer for even ids (the fake judge prefers longer), equal for id 1, shorter otherwise
    a = [{"question_id": i, "text": "word " * (20 if i % 2 == 0 else 5 if i == 1 else 3)} for i in range(n)]
    b = [{"question_id": i, "text": "word " * (5 if i != 1 else 5)} for i in range(n)]
    for name, rows in (("a.jsonl", a), ("b.jsonl", b)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return q, tmp_path / "a.jsonl", tmp_path / "b.jsonl"


def test_judge_run_caches_and_reports(fake_openai, fake_api_env, tmp_path):
    server = fake_openai(Faults(p429=0.15, p500=0.15, malformed=0.15), seed=11)
    fake_api_env(server)
    q, a, b = _write_inputs(tmp_path)
    out = tmp_path / "out"
    cfg = JudgeConfig(str(q), str(a), str(b), str(tmp_path / "img"), str(out), "X-LLaVA", "LLaVA", progress=False,
                      protocol="swap")
    s = run_judge(cfg, ChatClient(ApiConfig.from_env()))
    # ids 0,2,4: A longer -> win; id 1: equal -> tie; ids 3,5: A shorter -> loss
    assert s["counts"] == {"win": 3, "tie": 1, "loss": 2} and s["percent"]["win"] == 50.0 and s["invalid"] == 0
    assert s["run_api"]["retries"] > 0 and s["cached_tokens"]["prompt_tokens"] > 0
    assert {p.name for p in out.iterdir()} >= {"judgements.jsonl", "summary.json", "table.md", "chart.png"}
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| X-LLaVA | LLaVA | swap | - | 3 (50.0%)" in (out / "table.md").read_text() and s["protocol"] == "swap"
    before = server.counts["requests"]
    again = run_judge(cfg, ChatClient(ApiConfig.from_env()))
    assert server.counts["requests"] == before and again["counts"] == s["counts"] and again["run_api"]["requests"] == 0


def test_word_limit_changes_what_is_judged(fake_openai, fake_api_env, tmp_path):
    fake_api_env(fake_openai())
    q, a, b = _write_inputs(tmp_path)
    cfg = JudgeConfig(str(q), str(a), str(b), str(tmp_path / "img"), str(tmp_path / "o"), word_limit=4, progress=False,
                      protocol="swap")
    s = run_judge(cfg, ChatClient(ApiConfig.from_env()))
    # every answer is cut to at most 4 words, so the 20-word answers now tie with B's; ids 3 and 5 still lose
    assert s["counts"] == {"win": 0, "tie": 4, "loss": 2}


def test_judge_cli_never_writes_the_key(fake_openai, tmp_path):
    server = fake_openai(Faults(p429=0.2, malformed=0.1), seed=2)
    q, a, b = _write_inputs(tmp_path)
    env = {**os.environ, "JUDGE_BASE_URL": server.url, "JUDGE_MODEL": "fake-judge", "OPENAI_API_KEY": FAKE_API_KEY,
           "OPENAI_BACKOFF_BASE_S": "0.01", "OPENAI_BACKOFF_MAX_S": "0.05", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "xllava_jax.eval", "judge", "--questions", str(q), "--answers_a",
                           str(a), "--answers_b", str(b), "--image_root", str(tmp_path / "img"), "--out", str(out),
                           "--word_limit", "30", "--name_a", "X", "--name_b", "Y"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"] == {"win": 3, "tie": 1, "loss": 2}
    assert server.counts["401"] == 0 and all(r["model"] == "fake-judge" for r in server.requests)
    assert FAKE_API_KEY not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_API_KEY.encode() not in path.read_bytes(), path


def test_xllava_protocol_asks_once_with_the_papers_question_and_charts_pairs(fake_openai, fake_api_env, tmp_path):
    from xllava_jax.eval.__main__ import main

    server = fake_openai()
    fake_api_env(server)
    q, a, b = _write_inputs(tmp_path)
    cfg = JudgeConfig(str(q), str(a), str(b), str(tmp_path / "img"), str(tmp_path / "x"), "X-LLaVA", "GPT4-V",
                      progress=False, protocol="xllava")
    s = run_judge(cfg, ChatClient(ApiConfig.from_env()))
    # one order per question (6 requests); the fake judge prefers the longer answer: ids 0,2,4 A, 1 similar, 3,5 B
    assert s["counts"] == {"win": 3, "tie": 1, "loss": 2} and s["protocol"] == "xllava"
    assert server.counts["requests"] == 6
    messages = server.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["user"]  # no system prompt, no extra instructions
    text = messages[0]["content"][-1]["text"]
    assert text.endswith("Which answer is better? Reply 'Answer A is better', 'Answer B is better' or "
                         "'Both answers are similar'.") and "length" not in text
    swap = run_judge(JudgeConfig(str(q), str(a), str(b), str(tmp_path / "img"), str(tmp_path / "s"), "X-LLaVA",
                                 "LLaVA", progress=False, protocol="swap"), ChatClient(ApiConfig.from_env()))
    assert swap["protocol"] == "swap"
    assert main(["chart", str(tmp_path / "x" / "summary.json"), str(tmp_path / "s" / "summary.json"),
                 "--out", str(tmp_path / "pairs.png")]) == 0
    assert (tmp_path / "pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="protocol"):
        JudgeConfig(str(q), str(a), str(b), "i", "o", protocol="both")


def test_paper_protocol_is_the_default():
    from xllava_jax.eval.__main__ import build_parser
    assert JudgeConfig("q", "a", "b", "i", "o").protocol == "xllava"
    args = build_parser().parse_args(["judge", "--questions", "q", "--answers_a", "a", "--answers_b", "b",
                                      "--image_root", "i", "--out", "o"])
    assert args.protocol == "xllava" and args.word_limit is None


def test_generation_word_limit_line_in_the_questions_language():
    from xllava_jax.infer.__main__ import build_parser
    from xllava_jax.infer.prompts import with_word_limit
    assert with_word_limit("What is it?", None) == "What is it?"
    assert with_word_limit("What is it?", 30) == "What is it?\nAnswer in 30 words or fewer."
    assert with_word_limit("무엇입니까?", 30, "ko") == "무엇입니까?\n30단어 이내로 답하세요."
    assert with_word_limit("Was ist das?", 30, "de").endswith("Answer in 30 words or fewer.")
    args = build_parser().parse_args(["generate", "--checkpoint", "c", "--questions", "q", "--out", "o",
                                      "--word_limit", "30"])
    assert args.word_limit == 30
