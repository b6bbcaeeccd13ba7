"""Translation through the fake server: <image>/letters/numbers kept, batching, resume, rejects, BLEU agreement."""

import json

import pytest

from fake_openai import Faults
from xllava_jax.jsonl import read_jsonl
from xllava_jax.datagen.translate import (ApiTranslator, TranslateConfig, agreement_bleu, export_language,
                                          preservation_problem, run_translate, translate_texts)
from xllava_jax.openai_api import ApiConfig, ChatClient


class Upper:
    """A pluggable translator: upper-cases and tags (no API)."""

    def translate(self, texts, src, tgt):
        return [f"{t.upper()} [{tgt}]" for t in texts]


def test_image_token_kept_out_of_the_translator():
    seen = []

    class Spy(Upper):
        def translate(self, texts, src, tgt):
            seen.extend(texts)
            return super().translate(texts, src, tgt)

    out = translate_texts(Spy(), ["<image>\nWhat is this?", "Describe it.\n<image>", "<image>"], "en", "ko")
    assert out == ["<image>\nWHAT IS THIS? [ko]", "DESCRIBE IT. [ko]\n<image>", "<image>"]
    assert all("<image>" not in t for t in seen)


@pytest.mark.parametrize("src,tgt,problem", [
    ("Pick one.\nA. red\nB. blue", "하나.\nA. 빨강\nB. 파랑", None),
    ("Pick one.\nA. red\nB. blue", "하나.\n가. 빨강\n나. 파랑", "options_changed"),
    ("There are 3 cats and 1,200 dogs.", "고양이 3마리와 개 1200마리.", None),
    ("There are 3 cats.", "고양이 세 마리.", "numbers_changed"),
    ("<image>\nHi", "안녕", "image_token_changed"),
])
def test_preservation_checks(src, tgt, problem):
    assert preservation_problem(src, tgt) == problem


def _llava(n):
    return [{"id": f"r{i}", "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nHow many cats are there?\nA. 1\nB. 2"},
        {"from": "gpt", "value": f"There are {i} cats."}]} for i in range(n)]


def test_translate_dataset_batched_resumable_with_rejects(fake_openai, fake_api_env, tmp_path):
    server = fake_openai(Faults(p429=0.1, p500=0.1, malformed=0.1, partial=0.1), seed=7)
    fake_api_env(server)
    src = tmp_path / "llava.json"
    src.write_text(json.dumps(_llava(20)))
    out = str(tmp_path / "llava.multi.jsonl")
    cfg = TranslateConfig(str(src), out, "llava", "en", ("ko", "zh"), batch_texts=8, progress=False)
    client = ChatClient(ApiConfig.from_env())
    s = run_translate(cfg, ApiTranslator(client), client, concurrency=2)
    recs = list(read_jsonl(out))
    rejects = list(read_jsonl(out + ".rejects.jsonl"))
    assert s["duplicates"] == 0 and len(recs) + len(rejects) == 20 and len(recs) == s["written"] > 10
    first = recs[0]["conversations"][0]["value"]
    assert set(first) == {"en", "ko", "zh"} and first["ko"].startswith("<image>\n") and "\nA. 1\nB. 2" in first["ko"]
    assert all(r["reason"] for r in rejects)
    before = server.counts["requests"]
    assert run_translate(cfg, ApiTranslator(client), client)["written"] == 0
    assert server.counts["requests"] == before
    n = export_language(out, "ko", str(tmp_path / "llava.ko.jsonl"))
    ko = list(read_jsonl(tmp_path / "llava.ko.jsonl"))
    assert n == len(recs) and isinstance(ko[0]["conversations"][1]["value"], str) and ko[0]["lang"] == "ko"


def test_questions_and_two_translator_agreement(fake_openai, fake_api_env, tmp_path):
    server = fake_openai()
    fake_api_env(server)
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"question_id": i, "image": "x.jpg", "text": f"Is there a cat number {i}?"}) + "\n"
                          for i in range(6)))
    client = ChatClient(ApiConfig.from_env())
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    run_translate(TranslateConfig(str(qs), a, "questions", langs=("ko", "zh"), progress=False), ApiTranslator(client), client)
    run_translate(TranslateConfig(str(qs), b, "questions", langs=("ko", "zh"), progress=False), Upper())
    assert server.counts["requests"] == 2  # batched: 6 questions in one request per target language
    rec = next(read_jsonl(a))
    assert rec["text"]["ko"] == "Is there a cat number 0? [ko]" and rec["question_id"] == 0
    same = agreement_bleu(a, a, ("ko", "zh"), "questions")
    diff = agreement_bleu(a, b, ("ko", "zh"), "questions")
    assert same["ko"] == pytest.approx(100.0) and same["shared_records"] == 6
    assert diff["ko"] < 100.0 and diff["zh"] < 100.0
