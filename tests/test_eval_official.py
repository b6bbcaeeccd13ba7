"""Benchmarks in their official layouts (small files written here by hand) scored as the official scripts
score them, with expected values worked out by hand; and the submission files."""

import csv
import json
import zipfile
from xml.etree import ElementTree

import pytest

from xllava_jax.eval.benchmarks import build_questions
from xllava_jax.eval.registry import get_benchmark, load_benchmark_records
from xllava_jax.eval.metrics import vqa_accuracy
from xllava_jax.eval.runner import score_answers
from xllava_jax.eval.submit import write_submission


def scored(name, path, answers):
    bench = get_benchmark(name)
    questions = build_questions(bench, load_benchmark_records(name, path))
    return questions, score_answers(bench, questions, {q.question_id: answers(q) for q in questions})


def test_mme_acc_plus_acc_per_subtask_summed(tmp_path):
    d = tmp_path / "eval_tool"
    d.mkdir()
    (d / "existence.txt").write_text(
        "1.jpg\tIs there a dog? Please answer yes or no.\tYes\n1.jpg\tIs there a cat? Please answer yes or no.\tNo\n"
        "2.jpg\tIs there a car? Please answer yes or no.\tYes\n2.jpg\tIs there a bus? Please answer yes or no.\tNo\n")
    (d / "code_reasoning.txt").write_text("c.png\tWill it print 3? Please answer yes or no.\tyes\n"
                                          "c.png\tWill it print 4? Please answer yes or no.\tno\n")
    replies = {"dog": "Yes, there is.", "cat": "No", "car": "yes", "bus": "There is no bus.", "3?": "Yes",
               "4?": "not sure"}
    questions, s = scored("mme", d, lambda q: next(v for k, v in replies.items() if k in q.text))
    # LLaVA's MME question file: "Please answer yes or no." replaced by the short-answer line
    assert questions[0].text == "Is there a dog?\nAnswer the question using a single word or phrase."
    assert questions[0].image == "existence/1.jpg"
    # existence: 3/4 right ("There is no bus." -> other: no yes/no in its first 4 characters), images 1/2 fully
    # right: 75 + 50 = 125
    # code_reasoning: "not sure" -> "no" ("no" within the first 4 chars): 2/2, 1/1: 100 + 100 = 200
    assert s["overall"]["subtasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert s["overall"]["perception"] == 125.0 and s["overall"]["cognition"] == 200.0 and s["score"] == 325.0
    (d / "count.txt").write_text("x.jpg\tHow many?\t3\n")
    with pytest.raises(ValueError, match="count.txt:1: expected image<TAB>question<TAB>yes|no"):
        load_benchmark_records("mme", d)


def test_seed_image_subset_exact_letter_per_dimension(tmp_path):
    q = lambda i, t, ans, kind="image": {"question_id": str(i), "question": f"Q{i}?", "choice_a": "x", "choice_b": "y",  # noqa: E731
                                         "choice_c": "z", "choice_d": "w", "answer": ans, "data_type": kind,
                                         "data_id": f"{i}.jpg", "question_type_id": t}
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps({"question_type": {"Scene Understanding": 1, "Instance Identity": 2},
                                "questions": [q(0, 1, "A"), q(1, 1, "B"), q(2, 1, "C"), q(3, 2, "D"),
                                              q(4, 2, "A", "video")]}))
    preds = {"0": "A", "1": "B.", "2": "C", "3": "A"}
    questions, s = scored("seed", path, lambda q: preds[q.question_id])
    assert len(questions) == 4 and questions[0].image == "SEED-Bench-image/0.jpg"
    assert questions[0].text == "Q0?\nA. x\nB. y\nC. z\nD. w\nAnswer with the option's letter from the given choices directly."
    # "B." is not "B" (exact match): Scene 2/3, Instance 0/1, overall 2/4
    assert s["overall"]["by_dimension"] == {"Instance Identity": 0.0, "Scene Understanding": pytest.approx(200 / 3)}
    assert s["score"] == 50.0
    assert s["overall"]["image_accuracy"] == 50.0 and s["overall"]["video_accuracy"] is None
    # the video question's middle frame supplied (LLaVA's SEED-Bench-video-image): asked, and the video line
    (tmp_path / "SEED-Bench-video-image").mkdir()
    (tmp_path / "SEED-Bench-video-image" / "4.png").write_bytes(b"png")
    preds["4"] = "A"
    questions, s = scored("seed", path, lambda q: preds[q.question_id])
    assert len(questions) == 5 and questions[4].image == "SEED-Bench-video-image/4.png"
    assert (s["score"], s["overall"]["image_accuracy"], s["overall"]["video_accuracy"]) == (60.0, 50.0, 100.0)
    assert get_benchmark("seed").max_new_tokens is None  # model_vqa_loader.py's 128


def test_long_answer_benchmarks_get_llavas_1024_tokens():
    assert get_benchmark("scienceqa").max_new_tokens == 1024  # model_vqa_science.py
    assert get_benchmark("mmbench").max_new_tokens == 1024  # model_vqa_mmbench.py
    assert get_benchmark("textvqa").max_new_tokens is None and get_benchmark("mme").max_new_tokens is None


def test_koviz_koliv_vqa_format_from_user_files(tmp_path):
    path = tmp_path / "koviz.csv"
    path.write_text("image,question,answers\na.jpg,무엇입니까?,\"[\"\"고양이\"\", \"\"고양이\"\", \"\"개\"\"]\"\n"
                    "b.jpg,몇 개?,두 개\n", encoding="utf-8")
    questions, s = scored("koviz", path, lambda q: {"0": "고양이.", "1": "세 개"}[q.question_id])
    assert questions[0].text == "무엇입니까?\n한 단어나 짧은 구로 답하세요." and questions[0].image == "a.jpg"
    # three reference answers: VQA accuracy (leave one annotator out); one: exact match after normalisation
    # ("세 개" != "두 개")
    expected = 100 * (vqa_accuracy("고양이.", ["고양이", "고양이", "개"]) + 0) / 2
    assert s["score"] == pytest.approx(expected) and s["benchmark"] == "koviz"
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "text": "q"}\n')
    with pytest.raises(ValueError, match="no answers"):
        load_benchmark_records("koliv", tmp_path / "bad.jsonl")


def test_scienceqa_img_accuracy_with_llavas_parsing(tmp_path):
    problems = {"1": {"choices": ["a", "b"], "answer": 0}, "2": {"choices": ["a", "b", "c"], "answer": 2},
                "3": {"choices": ["a", "b"], "answer": 1}, "4": {"choices": ["a", "b"], "answer": 1},
                "5": {"choices": ["a", "b"], "answer": 0}}
    prompts = [{"id": p, "image": f"{p}/image.png" if p != "5" else None,
                "conversations": [{"from": "human", "value": f"<image>\nContext: N/A\nQuestion {p}\nA. a\nB. b"},
                                  {"from": "gpt", "value": "A"}]} for p in problems]
    prompts[4].pop("image")
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps(prompts))
    preds = {"1": "A", "2": "C. c", "3": "The answer is B.", "4": "C", "5": "A"}
    questions, s = scored("scienceqa", tmp_path, lambda q: preds[q.question_id])
    assert questions[0].text == "Context: N/A\nQuestion 1\nA. a\nB. b\nAnswer with the option's letter from the given choices directly."
    # right: 1 (A), 2 ("C. " -> C, 3 choices), 3 (one "The answer is B."), 5 (no image); wrong: 4 (C not among 2)
    assert s["overall"]["img_accuracy"] == 75.0 and s["overall"]["accuracy"] == 80.0 and s["score"] == 75.0


def test_textvqa_prompt_with_ocr_tokens_and_m4c_accuracy(tmp_path):
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"data": [
        {"question_id": 0, "image_id": "abc", "question": "what brand is it?", "ocr_tokens": ["Nike", "Air"],
         "answers": ["nike"] * 2 + ["adidas"] * 8},
        {"question_id": 1, "image_id": "def", "question": "what number?", "ocr_tokens": [],
         "answers": ["two"] * 10}]}))
    preds = {0: "Nike.", 1: "2"}
    questions, s = scored("textvqa", path, lambda q: preds[q.question_id])
    assert questions[1].text == ("What number?\nReference OCR token: \n"  # written also with no tokens
                                 "Answer the question using a single word or phrase.")
    assert questions[0].text == ("What brand is it?\nReference OCR token: Nike, Air\n"
                                 "Answer the question using a single word or phrase.")
    assert questions[0].image == "train_images/abc.jpg"
    # "nike" given by 2 annotators: 8 subsets keep both (2/3), 2 keep one (1/3): (8*2/3 + 2*1/3)/10 = 0.6
    # "2" vs "two" x10: normalisation maps two -> 2, every subset has 9 matches -> 1
    assert s["score"] == pytest.approx(100 * (0.6 + 1.0) / 2)


def test_vizwiz_unanswerable_prompt_and_accuracy(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps([
        {"image": "VizWiz_val_0.jpg", "question": "What is this?",
         "answers": [{"answer": "unanswerable"}] * 7 + [{"answer": "can"}] * 3},
        {"image": "VizWiz_val_1.jpg", "question": "What color?", "answers": [{"answer": "blue"}] * 10}]))
    preds = {"VizWiz_val_0.jpg": "Unanswerable", "VizWiz_val_1.jpg": "red"}
    questions, s = scored("vizwiz", path, lambda q: preds[q.question_id])
    assert questions[0].text == ("What is this?\nWhen the provided information is insufficient, respond with "
                                 "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    assert s["score"] == 50.0 and s["overall"]["unanswerable_predicted"] == 1


def test_submission_files(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in
                               [(1, "Two dogs."), ("VizWiz_test_0.jpg", "Unanswerable"), ("7", "B"), ("1000007", "C")]))
    vqa = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    vqa.write_text("".join(json.dumps({"question_id": i, "text": "?"}) + "\n" for i in (1, 2)))
    assert write_submission("vqav2", vqa, answers, tmp_path / "up" / "vqav2.json")["unanswered"] == 1
    assert json.loads((tmp_path / "up" / "vqav2.json").read_text()) == [{"question_id": 1, "answer": "2 dogs"},
                                                                       {"question_id": 2, "answer": ""}]
    viz = tmp_path / "test.json"
    viz.write_text(json.dumps([{"image": "VizWiz_test_0.jpg", "question": "What?"}]))
    write_submission("vizwiz", viz, answers, tmp_path / "vizwiz.json")
    assert json.loads((tmp_path / "vizwiz.json").read_text()) == [{"image": "VizWiz_test_0.jpg", "answer": "unanswerable"}]
    tsv = tmp_path / "mmbench_test.tsv"
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
            "comment", "split"]
    with open(tsv, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(cols)
        w.writerow(["7", "Which?", "nan", "cat", "dog", "cow", "pig", "", "x", "BASE64", "s", "l2", "c", "test"])
        w.writerow(["8", "What?", "nan", "a", "b", "", "", "", "x", "BASE64", "s", "l2", "c", "test"])
    write_submission("mmbench", tsv, answers, tmp_path / "mmbench.tsv")
    rows = list(csv.reader(open(tmp_path / "mmbench.tsv"), delimiter="\t"))
    # LLaVA: drop hint/category/source/image/comment/l2-category, insert prediction at column 7
    assert rows[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert rows[1][6] == "B" and rows[2][6] == ""
    write_submission("mmbench", tsv, answers, tmp_path / "mmbench.xlsx")
    with zipfile.ZipFile(tmp_path / "mmbench.xlsx") as z:
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
        assert "xl/workbook.xml" in z.namelist()
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    cells = [[(c.find("m:v", ns).text if c.find("m:v", ns) is not None else c.find("m:is/m:t", ns).text)
              for c in r.findall("m:c", ns)] for r in sheet.findall("m:sheetData/m:row", ns)]
    assert cells[0][6] == "prediction" and cells[1][:2] == ["7", "Which?"] and cells[1][6] == "B"
    with pytest.raises(ValueError, match="'VizWiz_test_9.jpg' has no answer"):
        viz.write_text(json.dumps([{"image": "VizWiz_test_9.jpg", "question": "?"}]))
        write_submission("vizwiz", viz, answers, tmp_path / "v2.json")
