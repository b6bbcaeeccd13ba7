"""Judge-scored benchmarks (LLaVA-Bench In-the-Wild, open-ended Korean sets) against the fake server playing the
judge with fixed scores, and X-LLaVA's BVQA (BOK-VQA) in its release layout; expected scores worked out by hand
as LLaVA's eval_gpt_review_bench.py + summarize_gpt_review.py and X-LLaVA's accuracy compute them."""

import collections
import json
import re

import fake_openai as fake_module
import pytest
from conftest import FAKE_API_KEY
from fake_openai import Faults

from xllava_jax.eval.__main__ import main
from xllava_jax.eval.benchmarks import build_questions
from xllava_jax.eval.registry import get_benchmark, load_benchmark_records
from xllava_jax.eval.review import CONTEXT_RULE, IMAGE_RULE, REVIEW_SYSTEM, parse_score_pair, relative_score
from xllava_jax.eval.runner import score_answers


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def fixed_judge(monkeypatch, replies):
    """The fake server answers review requests ([Assistant 1] ... [Assistant 2]) with fixed replies per question:
    the n-th time a question is asked it gets replies[question][n] (the last one from then on)."""
    asked = collections.Counter()
    other = fake_module.mvif_reply

    def reply(text, fault, rng):  # called under the server's lock
        if "[Assistant 1]" not in text:
            return other(text, fault, rng)
        question = re.search(r"\[Question\]\n(.*?)\n\n\[Assistant 1\]", text, re.S).group(1)
        n = asked[question]
        asked[question] += 1
        return replies[question][min(n, len(replies[question]) - 1)], "stop"

    monkeypatch.setattr(fake_module, "mvif_reply", reply)
    return asked


def test_parse_score_pair_is_llavas_rule():
    assert parse_score_pair("8 6\nAssistant 1 is more precise.") == [8.0, 6.0]
    assert parse_score_pair("9,7\nwhy") == [9.0, 7.0] and parse_score_pair("7.5 8") == [7.5, 8.0]
    # anything but exactly two single-space-separated numbers on the first line fails (LLaVA then records -1 -1)
    for bad in ("8  6", "Scores: 8 6", "8 6 7", "\n8 6", "eight six"):
        assert parse_score_pair(bad) is None, bad
    # means rounded to 3 decimals first, then ours / reference * 100 rounded to 1
    assert relative_score([[9, 7], [8, 7]]) == {"relative": 82.4, "reference_mean": 8.5, "model_mean": 7.0,
                                                "reviewed": 2}


@pytest.fixture
def llava_bench(tmp_path):
    d = tmp_path / "llava-bench-in-the-wild"
    d.mkdir()
    qs = [(0, "001.jpg", "What is on the plate?", "conv"), (1, "001.jpg", "Describe the image in detail.", "detail"),
          (2, "002.jpg", "Why is this funny?", "complex"), (3, "002.jpg", "What brand is the car?", "conv"),
          (4, "002.jpg", "How many people are there?", "conv")]
    write_jsonl(d / "questions.jsonl",
                [{"question_id": i, "image": im, "text": t, "category": c} for i, im, t, c in qs])
    write_jsonl(d / "answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i, *_ in qs])
    write_jsonl(d / "context.jsonl",
                [{"id": "001", "image": "001.jpg", "caption": ["A plate of ramen.", "Chopsticks."]},
                 {"id": "002", "image": "002.jpg", "caption": "A street with a red car."}])
    write_jsonl(tmp_path / "ours.jsonl", [{"question_id": i, "text": f"ours {i}", "model_id": "x"} for i, *_ in qs])
    return d


LLAVA_BENCH_JUDGE = {
    "What is on the plate?": ["8 6\nAssistant 1 names the broth."],
    "Describe the image in detail.": ["9,7\nAssistant 2 misses the chopsticks."],
    "Why is this funny?": ["10 10\nBoth explain the joke."],
    "What brand is the car?": ["Assistant 1: 7, Assistant 2: 8", "7 8\nAssistant 2 reads the badge."],  # retried once
    "How many people are there?": ["Score: 5 out of 10"],  # never parseable -> [-1, -1], counted as LLaVA does
}


def test_llava_bench_relative_score_per_category(llava_bench, tmp_path, fake_openai, fake_api_env, monkeypatch):
    server = fake_openai(Faults(p429=0.2, p500=0.1), seed=3)
    fake_api_env(server)
    asked = fixed_judge(monkeypatch, LLAVA_BENCH_JUDGE)
    out = tmp_path / "review"
    args = ["score", "--benchmark", "llava_bench", "--data", str(llava_bench),
            "--answers", str(tmp_path / "ours.jsonl"), "--out", str(out)]
    assert main(args) == 0
    s = json.loads((out / "scores.json").read_text())
    # conv: (8, 6), (7, 8), (-1, -1) -> 4.333 / 4.667 = 92.8 (93.3 without the unparsed review); detail: (9, 7)
    # -> 77.8; complex: (10, 10) -> 100.0
    # all: reference (8 + 9 + 10 + 7 - 1) / 5 = 6.6, ours (6 + 7 + 10 + 8 - 1) / 5 = 6.0 -> 90.9
    assert s["score"] == 90.9 and s["metric"] == "relative"
    overall = s["overall"]
    assert (overall["reference_mean"], overall["model_mean"], overall["unparsed"]) == (6.6, 6.0, 1)
    assert {c: v["relative"] for c, v in overall["by_category"].items()} == {"complex": 100.0, "conv": 92.8,
                                                                             "detail": 77.8}
    assert overall["by_category"]["conv"]["reference_mean"] == 4.667
    # LLaVA's review request: system line, captions (a list joined by newlines, a string as written), question,
    # Assistant 1 = reference, Assistant 2 = ours, the llava_bench rule; text only; temperature 0.2, 1024 tokens
    body = next(b for b in server.requests if "What is on the plate?" in json.dumps(b))
    assert body["messages"][0] == {"role": "system", "content": REVIEW_SYSTEM}
    assert body["messages"][1]["content"] == (
        "[Context]\nA plate of ramen.\nChopsticks.\n\n[Question]\nWhat is on the plate?\n\n"
        "[Assistant 1]\nreference 0\n\n[End of Assistant 1]\n\n[Assistant 2]\nours 0\n\n[End of Assistant 2]\n\n"
        f"[System]\n{CONTEXT_RULE}\n\n")
    assert (body["temperature"], body["max_tokens"]) == (0.2, 1024)
    assert any(b["messages"][1]["content"].startswith("[Context]\nA street with a red car.\n\n[Question]")
               for b in server.requests)
    assert sum(asked.values()) == 1 + 1 + 1 + 2 + 3  # one parse retry, two for the hopeless one
    reviews = [json.loads(x) for x in (out / "reviews.jsonl").read_text().splitlines()]
    assert {r["question_id"]: r["tuple"] for r in reviews}[4] == [-1.0, -1.0]
    # a rerun into the same --out pays nothing twice: every reply comes from OUT/replies.jsonl
    served = server.counts["requests"]
    assert main(args) == 0
    assert server.counts["requests"] == served and json.loads((out / "scores.json").read_text()) == s
    assert FAKE_API_KEY not in "".join(p.read_text() for p in out.iterdir())


def test_llava_bench_layout_and_language(llava_bench):
    bench = get_benchmark("llava_bench")
    records = load_benchmark_records(bench, llava_bench)
    questions = build_questions(bench, records, default_lang="ko")
    # asked as written (no instruction), LLaVA's 1024 new tokens, --lang for records without lang
    assert questions[0].text == "What is on the plate?" and questions[0].image == "001.jpg"
    assert bench.max_new_tokens == 1024 and {q.metadata["lang"] for q in questions} == {"ko"}
    with pytest.raises(ValueError, match="is scored by a judge"):
        score_answers(bench, questions, {q.question_id: "x" for q in questions})
    (llava_bench / "questions.jsonl").write_text(json.dumps({"question_id": 0, "image": "001.jpg", "text": "Q",
                                                             "category": "chat"}) + "\n")
    with pytest.raises(ValueError, match="category 'chat'"):
        load_benchmark_records(bench, llava_bench)
    (llava_bench / "context.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="context.jsonl"):
        load_benchmark_records(bench, llava_bench)


def test_korean_open_ended_judged_with_the_image(tmp_path, fake_openai, fake_api_env, monkeypatch):
    server = fake_openai()
    fake_api_env(server)
    fixed_judge(monkeypatch, {"사진 속 음식은 무엇인가요?": ["8 4\n참조 답이 더 정확합니다."],
                              "이 장소는 어디인가요?": ["6 6\n비슷합니다."],
                              "What is this building?": ["10 4\nAssistant 2 is wrong."]})
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "img" / name).write_bytes(b"\xff\xd8fake jpeg " + name.encode())
    data = tmp_path / "koviz.jsonl"
    write_jsonl(data, [
        {"question_id": "k1", "image": "a.jpg", "question": "사진 속 음식은 무엇인가요?", "answer": "김치찌개", "category": "food"},
        {"question_id": "k2", "image": "b.jpg", "text": "이 장소는 어디인가요?", "answer": "경복궁", "category": "place"},
        {"question_id": "k3", "image": "b.jpg", "text": "What is this building?", "answer": "Gyeongbokgung",
         "category": "place", "lang": "en"}])
    answers = tmp_path / "ours.jsonl"
    ours = {"k1": "된장찌개", "k2": "경복궁", "k3": "A temple"}
    write_jsonl(answers, [{"question_id": q, "text": t} for q, t in ours.items()])
    out = tmp_path / "ko"
    assert main(["score", "--benchmark", "ko_open", "--data", str(data), "--answers", str(answers),
                 "--image_root", str(tmp_path / "img"), "--out", str(out)]) == 0
    s = json.loads((out / "scores.json").read_text())
    # food 4/8 = 50.0; place (6 + 10)/2 = 8 vs (6 + 4)/2 = 5 -> 62.5; all 8.0 vs 4.667 -> 58.3
    # per language (default ko; k3 says en): ko 7 vs 5 -> 71.4, en 10 vs 4 -> 40.0
    assert s["score"] == 58.3 and s["overall"]["model_mean"] == 4.667
    assert {c: v["relative"] for c, v in s["overall"]["by_category"].items()} == {"food": 50.0, "place": 62.5}
    assert s["per_language"] == {"en": 40.0, "ko": 71.4} and s["non_english_avg"] == 71.4
    assert len(server.requests) == 3  # per-language scoring reuses the reviews
    # no captions: the judge sees the image, and the rule says so
    content = next(b for b in server.requests if "김치찌개" in json.dumps(b, ensure_ascii=False))["messages"][1]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert content[1]["text"].startswith("[Question]\n사진 속 음식은 무엇인가요?\n\n[Assistant 1]\n김치찌개\n\n")
    assert content[1]["text"].endswith(f"[System]\n{IMAGE_RULE}\n\n")


BOKVQA_KO = """img_path,question,h,r,t,answer
./data/image/120801120220715114914.jpg,이미지 속 회유어는 무엇에 해당되니?,Chum salmon,subject,Fish migration,Actinopteri
./data/image/120500120220901134024.jpg,이미지 속 앉기 위해 사용하는 가구는 뭘까?,Chair,subject,Furniture,chair
./data/image/120201720220623130249.jpg,이미지 안 고슴도치는 어떤 동물이니?,Amur hedgehog,phylum,Chordate,고슴도치
"""
BOKVQA_EN = """img_path,question,h,r,t,answer
./data/image/120205520220715140601.jpg,What does the puma in the image correspond to?,Cougar,class,Mammal,a mammal
./data/image/150100120220707104108.jpg,What is the nickname for baseball?,Baseball,nickname,Hardball,Hardball
./data/image/120500120220901134024.jpg,"What is the furniture, used for sitting, in the image?",Chair,subject,Furniture,chair
./data/image/122202920220802154724.jpg,Which order does the eagle in the image belong to?,Cinereous vulture,class,Bird,bird
"""


def test_xllava_bvqa_bokvqa_layout_accuracy_per_language(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "BOKVQA_data_test_ko.csv").write_text(BOKVQA_KO, encoding="utf-8")
    (d / "BOKVQA_data_test_en.csv").write_text(BOKVQA_EN, encoding="utf-8")
    preds = {"ko/0": "Actinopteri.", "ko/1": "의자", "ko/2": "고슴도치입니다",
             "en/0": "Mammal", "en/1": "hardball", "en/2": "A chair.", "en/3": "birds"}
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [{"question_id": k, "text": v} for k, v in preds.items()])
    out = tmp_path / "bvqa"
    assert main(["score", "--benchmark", "xllava_bvqa", "--data", str(d), "--answers", str(answers),
                 "--out", str(out)]) == 0
    s = json.loads((out / "scores.json").read_text())
    # ko (BVQA^k): final stop ignored -> right; "의자" != "chair"; "고슴도치입니다" != "고슴도치": 1/3
    # en (BVQA^e): "Mammal" = "a mammal" (articles dropped), "hardball", "A chair." right; "birds" wrong: 3/4
    assert s["per_language"] == {"en": 75.0, "ko": pytest.approx(100 / 3)}
    assert s["score"] == pytest.approx(400 / 7) and s["non_english_avg"] == pytest.approx(100 / 3)
    assert "| accuracy |" in (out / "languages.md").read_text()
    bench = get_benchmark("xllava_bvqa")
    questions = build_questions(bench, load_benchmark_records(bench, d))
    by_id = {q.question_id: q for q in questions}
    assert by_id["ko/0"].image == "120801120220715114914.jpg"
    assert by_id["ko/0"].text == "이미지 속 회유어는 무엇에 해당되니?\n한 단어나 짧은 구로 답하세요."
    assert by_id["en/2"].text == ("What is the furniture, used for sitting, in the image?\n"
                                  "Answer the question using a single word or phrase.")
    # one file: the language comes from its name
    one = load_benchmark_records(bench, d / "BOKVQA_data_test_en.csv")
    assert {q.metadata["lang"] for q in build_questions(bench, one)} == {"en"}
    (d / "BOKVQA_data_test_en.csv").write_text("img_path,question\nx.jpg,Q?\n")
    with pytest.raises(ValueError, match="expected img_path, question and answer"):
        load_benchmark_records(bench, d)


def test_eval_run_answers_then_judges_llava_bench(tiny_llava_hf_dir, question_set, tmp_path, fake_openai,
                                                  fake_api_env, monkeypatch):
    fake_api_env(fake_openai())
    fixed_judge(monkeypatch, {"What is in the picture?": ["8 4\nshort"], "Describe the colors.": ["5 5\nsame"]})
    d = tmp_path / "bench"
    d.mkdir()
    write_jsonl(d / "questions.jsonl", [{"question_id": 0, "image": "img/0.png", "text": "What is in the picture?",
                                         "category": "conv"},
                                        {"question_id": 1, "image": "img/1.png", "text": "Describe the colors.",
                                         "category": "detail"}])
    write_jsonl(d / "answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i in range(2)])
    write_jsonl(d / "context.jsonl", [{"image": f"img/{i}.png", "caption": [f"Image {i}."]} for i in range(2)])
    out = tmp_path / "out"
    assert main(["run", "--checkpoint", str(tiny_llava_hf_dir), "--benchmark", "llava_bench", "--data", str(d),
                 "--image_root", str(question_set["image_root"]), "--out", str(out), "--max_new_tokens", "3",
                 "--batch_size", "2", "--no_progress"]) == 0
    s = json.loads((out / "scores.json").read_text())
    # conv 4/8 = 50.0, detail 5/5 = 100.0, all 4.5 / 6.5 = 69.2
    assert s["score"] == 69.2 and s["overall"]["by_category"]["conv"]["relative"] == 50.0
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and (out / "replies.jsonl").exists() and (out / "reviews.jsonl").exists()
