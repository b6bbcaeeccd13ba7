"""Scores equal the peers' own scoring code on answers written here: LLaVA's llava/eval/m4c_evaluator.py (EvalAI
answer normalisation, TextVQA accuracy), eval_pope.py and eval_science_qa.py (run as scripts), and MMBench's
rule-based matcher and CircularEval (its evaluator as lmms-eval ships it)."""

import itertools
import json
import random
import re

import pytest

pytest.importorskip("llava", reason="pip install --no-deps llava-torch==1.2.2.post1")

from llava_reference import mmbench_evaluator, run_llava_script
from xllava_jax.eval.benchmarks import build_questions
from xllava_jax.eval.metrics import mmbench_circular, mmbench_match, normalize_answer, pope_metrics, vqa_accuracy
from xllava_jax.eval.official import score_ko_vqa, score_scienceqa
from xllava_jax.eval.registry import get_benchmark


def tricky_answers() -> list[str]:
    """Answers that exercise every rule (and quirk) of EvalAI's normalisation."""
    from llava.eval.m4c_evaluator import EvalAIAnswerProcessor
    fixed = ["Two dogs.", "the cat's toy", "A red, blue-green car!", "1,000", "1,000,000 people", "3.5 m.", "3. 5",
             "e.g. yes", "It's (maybe) [not] {sure}", "a/b", "x = y + z", "under_score", "ain't", "aint", "isnt",
             "dont you", "somebodyd", "somebody'd", "None", "none of them", "ten. eleven", "THE END", "an apple",
             "\tyes\n", "yes ?", "yes?", "no!", "<b>bold</b>", "@home", "`code`", '"quoted"', "back\\slash",
             "a.b.c", "...", "one-two", "3,4", "3 ,4", "it, 3,4", "", " ", "'s", "women's", "what'll", "y'all'll",
             "o'clock", "ma'am", "mr. smith", "1.5.", "version 2.0.1", "..." * 20, ". " * 40, "a." * 40,
             "4x4.", "50%", "$3.50", "don't't", "dogs'", "café", "高い.", "고양이!"]
    words = list(EvalAIAnswerProcessor.CONTRACTIONS) + list(EvalAIAnswerProcessor.CONTRACTIONS.values())
    rng = random.Random(0)
    pieces = words + ["a", "the", "an", "two", "zero", "1,2", "3.", "(", ")", "-", ",", "?", "!", ".", "'s", "/"]
    mixed = [" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(400)]
    glued = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))) for _ in range(200)]
    return fixed + words + mixed + glued


def test_vqa_normalisation_is_evalai_byte_for_byte():
    from llava.eval.m4c_evaluator import EvalAIAnswerProcessor
    official = EvalAIAnswerProcessor()
    for text in tricky_answers():
        assert normalize_answer(text) == official(text), text


def test_vqa_accuracy_equals_textvqa_evaluator():
    from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator
    rng = random.Random(1)
    pool = ["two", "2", "Two dogs", "dogs", "a dog", "nike", "Nike.", "unanswerable", "the red car", "red car"]
    preds = []
    for _ in range(300):
        answers = [rng.choice(pool) for _ in range(10)]
        preds.append({"pred_answer": rng.choice(pool + ["Nike!", "two."]), "gt_answers": answers})
    official = TextVQAAccuracyEvaluator().eval_pred_list(preds)
    ours = sum(vqa_accuracy(p["pred_answer"], p["gt_answers"]) for p in preds) / len(preds)
    assert ours == pytest.approx(official, abs=1e-12)
    # KoViz / KoLiv with ten reference answers: the same accuracy
    from xllava_jax.infer.answers import Question
    qs = [Question(i, "q", None, {"answers": p["gt_answers"]}) for i, p in enumerate(preds)]
    assert score_ko_vqa(qs, [p["pred_answer"] for p in preds])["accuracy"] == pytest.approx(100 * official)


def test_pope_equals_llava_eval_pope(tmp_path):
    answers = ["Yes, there is a dog.", "No.", "There is no cat.", "I do not see one", "yes", "Not at all",
               "No, it isn't", "Yes", "The image shows a bus, no car.", "There is a car. No doubt.", "Nope",
               "I think so"] * 3
    labels = (["yes", "no"] * 18)[:len(answers)]
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "coco_pope_random.json").write_text("".join(json.dumps({"label": x}) + "\n" for x in labels))
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "random"}) + "\n"
                                 for i in range(len(answers))))
    result = tmp_path / "a.jsonl"
    result.write_text("".join(json.dumps({"question_id": i, "text": a}) + "\n" for i, a in enumerate(answers)))
    out = run_llava_script("eval/eval_pope.py", ["--annotation-dir", str(tmp_path / "ann"), "--question-file",
                                                 str(questions), "--result-file", str(result)])
    f1, acc, precision, recall, yes_ratio = map(float, out.strip().splitlines()[-2].split(","))
    ours = pope_metrics(answers, labels)
    assert [round(ours[k], 3) for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")] == \
        [f1, acc, precision, recall, yes_ratio]


def test_scienceqa_equals_llava_eval_science_qa(tmp_path):
    preds = ["A", "B", "C. cat", "The answer is B.", "The answer is A. The answer is B.", "E", "b", "B. ",
             "A.", "D", "FAILED", "C"]
    problems = {str(i): {"choices": ["x", "y", "z", "w"][:2 + i % 3], "answer": i % 2} for i in range(len(preds))}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    result = tmp_path / "answers.jsonl"
    result.write_text("".join(json.dumps({"question_id": str(i), "text": p,
                                          "prompt": ("<image>\n" if i % 3 else "") + "Q"}) + "\n"
                              for i, p in enumerate(preds)))
    out = run_llava_script("eval/eval_science_qa.py", [
        "--base-dir", str(tmp_path), "--result-file", str(result), "--output-file", str(tmp_path / "o.json"),
        "--output-result", str(tmp_path / "r.json")])
    acc, img = map(float, re.search(r"Accuracy: ([\d.]+)%, IMG-Accuracy: ([\d.]+)%", out).groups())
    from xllava_jax.infer.answers import Question
    qs = [Question(str(i), "Q", "x.png" if i % 3 else None,
                   {"answer": p["answer"], "num_choices": len(p["choices"]), "multimodal": bool(i % 3)})
          for i, p in enumerate(problems.values())]
    s = score_scienceqa(qs, preds)
    assert (round(s["accuracy"], 2), round(s["img_accuracy"], 2)) == (acc, img)


MMBENCH_OPTIONS = [{"A": "red", "B": "blue", "C": "green", "D": "yellow"}, {"A": "a cat", "B": "a dog"},
                   {"A": "1", "B": "2", "C": "12"}, {"A": "Yes", "B": "No", "C": "Maybe"}]
MMBENCH_ANSWERS = ["A", "B.", "(C)", "C)", "(D).", ":A", "Answer: B", "The answer is C", "A cat", "A dog is here",
                   "B, because", "A and B", "blue", "It is green.", "red and blue", "purple", "E", "e", "b",
                   "Option (B) blue", "I choose A.", "The correct option is B.", "Failed to obtain answer via API",
                   "a dog", "the cat", "12", "2", "1 or 2", "yes", "No.", "maybe not", "A. red", "B: blue",
                   "Cannot determine the answer", "Z", "*B*", "B)", "A.B", "", "  C  ", "D\nbecause yellow",
                   "C. green. D is wrong"]


@pytest.mark.parametrize("options", MMBENCH_OPTIONS)
def test_mmbench_matcher_equals_mmbench_rules(options):
    mmbench = mmbench_evaluator()
    for answer in MMBENCH_ANSWERS:
        theirs = mmbench.can_infer(answer, dict(options)) or None
        assert mmbench_match(answer, options) == theirs, answer


def test_mmbench_circular_equals_mmbench_eval_sub_data():
    mmbench = mmbench_evaluator()
    rng = random.Random(3)
    for group in range(60):
        n = rng.randint(1, 4)
        rows = []
        for k in range(n):
            options = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
            rows.append({"index": group + k * 1_000_000, **options, "answer": rng.choice("ABCD"),
                         "prediction": rng.choice(["A", "B", "C", "D", "blue", "no idea", "A or B", "(C)"])})
        answer_map = {r["index"]: r["answer"] for r in rows}
        try:
            theirs = mmbench.eval_sub_data(mmbench.rows(rows), answer_map)
        except mmbench.AskedChatGPT:
            theirs = None  # the rules could not read a copy: MMBench asks ChatGPT
        ours = mmbench_circular([{"index": r["index"], "answer": r["answer"],
                                  "pred": mmbench_match(r["prediction"], {k: r[k] for k in "ABCD"})} for r in rows])
        expected = {1: (1.0, 0), 0: (0.0, 0), None: (0.0, 1)}[theirs]
        assert (ours["accuracy"], ours["unresolved"]) == expected, rows


def test_instruction_lines_follow_llava_and_are_never_replaced_where_they_are_not_short_answer():
    mm = {"index": "0", "question": "Which?", "hint": "nan", "A": "x", "B": "y", "answer": "A", "lang": "ko"}
    [q] = build_questions(get_benchmark("mmbench"), [mm], instruction_override="한 단어로.")
    assert q.text.endswith("\n주어진 선택지 중 해당 옵션의 문자로 직접 답하세요.")  # override ignored, native line
    [q] = build_questions(get_benchmark("mmbench"), [mm], instruction_lang="en")
    assert q.text.endswith("\nAnswer with the option's letter from the given choices directly.")
    viz = {"question_id": "v", "text": "What is it?", "answers": ["x"] * 10}
    [q] = build_questions(get_benchmark("vizwiz"), [viz], instruction_override="Reply briefly.")
    assert q.text == "What is it?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" \
                     "Reply briefly."
    seed = {"question_id": "s", "question": "Q?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
            "choice_d": "d", "answer": "A"}
    [q] = build_questions(get_benchmark("seed"), [seed], instruction_override="Reply briefly.")
    assert q.text.endswith("\nAnswer with the option's letter from the given choices directly.")
    ko = {"question_id": "k", "text": "무엇입니까?", "answers": ["고양이"]}
    [native] = build_questions(get_benchmark("koviz"), [ko])
    [english] = build_questions(get_benchmark("koliv"), [ko], instruction_lang="en")
    assert native.text == "무엇입니까?\n한 단어나 짧은 구로 답하세요." and native.metadata["lang"] == "ko"
    assert english.text == "무엇입니까?\nAnswer the question using a single word or phrase."
    with pytest.raises(ValueError, match="instruction_lang"):
        build_questions(get_benchmark("koviz"), [ko], instruction_lang="ko")


def test_every_eval_flag_shows_a_true_default():
    import argparse

    from xllava_jax.eval.__main__ import build_parser
    from xllava_jax.eval.registry import BENCHMARKS
    from xllava_jax.eval.runner import EVAL_CONFIG
    from xllava_jax.openai_api import ApiConfig

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.required or action.default is not None or isinstance(action, argparse._HelpAction):
                continue
            assert "default" in (action.help or ""), f"eval {name} {action.option_strings}: no default in --help"
        assert "(default: None)" not in text
    run_help = " ".join(subs["run"].format_help().split())
    for bench in BENCHMARKS.values():  # the answer length --help states is the one eval run uses
        expected = f"{bench.name} {bench.max_new_tokens}"
        assert (expected in run_help) == (bench.max_new_tokens is not None), bench.name
    assert f"the others {EVAL_CONFIG.max_new_tokens}" in run_help
    cfg = ApiConfig()
    for flag, value in (("base_url", cfg.base_url), ("model", cfg.model), ("timeout_s", cfg.timeout_s),
                        ("concurrency", cfg.concurrency)):
        assert f"$JUDGE_{flag.upper()}, else $OPENAI_{flag.upper()}, else {value})" in run_help, flag


def test_mmbench_unread_answers_go_to_the_judge_with_mmbenchs_prompt(fake_openai, fake_api_env, tmp_path):
    import csv

    from xllava_jax.eval.__main__ import main
    server = fake_openai()
    fake_api_env(server)
    rows = [{"index": "5", "question": "What animal", "hint": "nan", "A": "small cat", "B": "big dog", "C": "nan",
             "D": "nan", "answer": "B"},
            {"index": "1000005", "question": "What animal", "hint": "nan", "A": "big dog", "B": "small cat", "C": "nan",
             "D": "nan", "answer": "A"}]
    tsv = tmp_path / "mmbench_dev.tsv"
    with open(tsv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "5", "text": "I believe it is the dog"}) + "\n"
                       + json.dumps({"question_id": "1000005", "text": "A"}) + "\n")
    args = ["score", "--benchmark", "mmbench", "--data", str(tsv), "--answers", str(answers)]
    assert main([*args, "--out", str(tmp_path / "rules")]) == 0
    rules = json.loads((tmp_path / "rules" / "scores.json").read_text())["overall"]
    assert rules["unresolved"] == 1 and rules["accuracy"] == 0.0 and server.counts["requests"] == 0
    assert main([*args, "--out", str(tmp_path / "judged"), "--mmbench_judge"]) == 0
    judged = json.loads((tmp_path / "judged" / "scores.json").read_text())["overall"]
    assert judged["unresolved"] == 0 and judged["accuracy"] == 1.0 and judged["judge_matched"] == 1
    [request] = server.requests
    assert request["model"] == "gpt-3.5-turbo-0613" and request["temperature"] == 0.0
    prompt = request["messages"][0]["content"]
    prompt = prompt if isinstance(prompt, str) else prompt[0]["text"]
    assert prompt.endswith("Question: What animal?\nOptions: There are several options: \nA. small cat\nB. big dog\n"
                           "\nAnswer: I believe it is the dog\nYour output: ")
