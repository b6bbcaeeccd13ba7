"""`eval run` / evaluate(): benchmark records -> prompts -> answers -> scores (per language too)."""

import base64
import csv
import json

import pytest

from xllava_jax.eval.__main__ import main
from xllava_jax.eval.benchmarks import build_questions, read_records
from xllava_jax.eval.registry import get_benchmark
from xllava_jax.eval.metrics import pope_metrics, vqa_accuracy
from xllava_jax.eval.runner import evaluate, score_answers
from xllava_jax.infer.generate import GenerationConfig
from xllava_jax.infer.loading import load_model, load_tokenizer_for

CONFIG = GenerationConfig(max_new_tokens=4, batch_size=4)


def parallel_gqa(n=4):
    """Parallel en/ko/zh GQA-style records (as `datagen translate --kind questions` writes them)."""
    return [{"question_id": f"g{i}", "image": f"img/{i % 4}.png",
             "text": {"en": "What color is it?", "ko": "무슨 색입니까?", "zh": "是什么颜色？"},
             "answer": {"en": "red", "ko": "빨간색", "zh": "红色"}} for i in range(n)]


@pytest.mark.slow
def test_multilingual_gqa_scores_per_language_with_non_english_average(tiny_llava_hf_dir, question_set, tmp_path):
    model, params = load_model(tiny_llava_hf_dir)
    tok = load_tokenizer_for(tiny_llava_hf_dir)
    records = parallel_gqa()
    out = tmp_path / "run"
    first = evaluate(model, params, tok, "gqa", records, image_root=str(question_set["image_root"]), config=CONFIG,
                     out_dir=out)
    answers = {r["question_id"]: r["text"] for r in map(json.loads, (out / "answers.jsonl").read_text().splitlines())}
    assert len(answers) == 12 and json.loads((out / "scores.json").read_text()) == first
    # gold = the model's own answer for g0, g1 in every language: accuracy exactly 0.5 per language
    for rec in records:
        for lang in ("en", "ko", "zh"):
            if rec["question_id"] in ("g0", "g1"):
                rec["answer"][lang] = answers[f"{rec['question_id']}_{lang}"]
            else:
                rec["answer"][lang] = "zzz-not-an-answer"
    again = evaluate(model, params, tok, "gqa", records, image_root=str(question_set["image_root"]), config=CONFIG,
                     out_dir=out)  # answers are reused: nothing is generated again
    assert again["per_language"] == {"en": 0.5, "ko": 0.5, "zh": 0.5}
    assert again["non_english_avg"] == 0.5 and again["score"] == 0.5 and again["questions"] == 12


def questions_of(name, records, **kw):
    return build_questions(get_benchmark(name), records, **kw)


def test_short_answer_prompts_follow_llava_and_can_be_replaced():
    [q] = questions_of("gqa", [{"question_id": 1, "image": "a.png", "text": "Is it red?", "answer": "yes"}])
    assert q.text == "Is it red?\nAnswer the question using a single word or phrase."
    [q] = questions_of("gqa", [{"question_id": 1, "text": "Is it red?", "answer": "yes"}], instruction_override="")
    assert q.text == "Is it red?" and q.image is None
    [q] = questions_of("bvqa", [{"question_id": 1, "text": "무슨 색입니까?", "answer": "red", "lang": "ko",
                                 "answer_lang": "en"}])
    assert q.text == "무슨 색입니까?\n영어로 답하세요." and q.metadata["lang"] == "ko->en"
    with pytest.raises(ValueError, match="record 7 lacks answers"):
        questions_of("vqav2", [{"question_id": 7, "text": "?"}])


def test_scores_of_known_answers_match_the_metrics():
    vqa = [{"question_id": i, "text": "?", "answers": ["two"] * 3 + ["2"] * 2 + ["three"] * 5} for i in range(2)]
    s = score_answers(get_benchmark("vqav2"), questions_of("vqav2", vqa), {0: "2", 1: "Three."})
    assert s["score"] == pytest.approx((vqa_accuracy("2", vqa[0]["answers"]) + vqa_accuracy("Three.", vqa[1]["answers"])) / 2)
    pope = [{"question_id": i, "text": "?", "label": lab, "category": cat}
            for i, (lab, cat) in enumerate([("yes", "random"), ("no", "random"), ("no", "adversarial"), ("yes", "adversarial")])]
    preds = {0: "Yes, there is.", 1: "No.", 2: "Yes", 3: "There is not."}
    s = score_answers(get_benchmark("pope"), questions_of("pope", pope), preds)
    assert s["overall"]["pooled"]["f1"] == pope_metrics(list(preds.values()), ["yes", "no", "no", "yes"])["f1"]
    assert s["overall"]["f1"] == (1.0 + 0.0) / 2  # mean of the splits: random F1 1, adversarial F1 0
    assert s["overall"]["by_category"]["random"]["accuracy"] == 1.0 and s["metric"] == "f1"


def test_mmbench_tsv_one_pass_circular_scoring(tmp_path):
    image = base64.b64encode(b"\x89PNG fake").decode()
    opts = ["cat", "dog", "cow"]
    rows = [{"index": str(k * 1_000_000), "question": "Which?", "hint": "nan",  # the TSV's circular copies
             **{c: opts[(i + k) % 3] for i, c in enumerate("ABC")}, "D": "nan",
             "answer": "ABC"[(1 - k) % 3], "image": image} for k in range(3)]
    rows.append({"index": "1", "question": "Color?", "hint": "Look.", "A": "red", "B": "blue", "C": "",
                 "D": "green", "answer": "A", "image": image})  # LLaVA asks A and B: it stops at the gap
    path = tmp_path / "mmbench.tsv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    questions = questions_of("mmbench", read_records(path))
    assert len(questions) == 4 and questions[0].image == b"\x89PNG fake"  # one question per row, no rotation
    assert questions[1].text == "Which?\nA. dog\nB. cow\nC. cat\nAnswer with the option's letter from the given " \
                                "choices directly."
    assert questions[3].text == ("Look.\nColor?\nA. red\nB. blue\n"
                                 "Answer with the option's letter from the given choices directly.")
    preds = {"0": "B.", "1000000": "A", "2000000": "C) cat", "1": "A"}  # every copy of 0 right; 1 right
    s = score_answers(get_benchmark("mmbench"), questions, preds)
    assert s["score"] == 1.0 and s["overall"]["questions"] == 2 and s["overall"]["rows"] == 4
    preds["2000000"] = "The cow"  # text match: cow is option A of that copy, the answer is C (dog) -> wrong
    s = score_answers(get_benchmark("mmbench"), questions, preds)
    assert s["score"] == 0.5 and s["overall"]["unresolved"] == 0
    preds["2000000"] = "I am not sure"  # the rules cannot read it: unresolved (MMBench would ask ChatGPT)
    s = score_answers(get_benchmark("mmbench"), questions, preds)
    assert s["score"] == 0.5 and s["overall"]["unresolved"] == 1 and s["overall"]["accuracy_if_unresolved_right"] == 1.0
    assert get_benchmark("mmbench").max_new_tokens == 1024


def test_eval_run_cli_on_pope(tiny_llava_hf_dir, question_set, tmp_path, capsys):
    data = tmp_path / "pope.jsonl"
    data.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i}.png", "text": "Is there a cat?",
                                        "label": "yes" if i % 2 else "no", "category": "random"}) + "\n"
                            for i in range(4)))
    assert main(["run", "--checkpoint", str(tiny_llava_hf_dir), "--benchmark", "pope", "--data", str(data),
                 "--image_root", str(question_set["image_root"]), "--out", str(tmp_path / "out"),
                 "--max_new_tokens", "3", "--batch_size", "4", "--no_progress"]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["benchmark"] == "pope" and scores["questions"] == 4 and 0 <= scores["score"] <= 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == scores
