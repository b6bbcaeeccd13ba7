"""Benchmarks read from their official release layouts and scored as the official scripts score them.

- ``mme``: MME's eval_tool layout, a directory of ``<subtask>.txt`` files (``image<TAB>question<TAB>yes|no``,
  two questions per image). Asked as LLaVA's question file asks: "Please answer yes or no." replaced by the
  short-answer instruction. MME's calculation.py: answer lower-cased; exactly "yes"/"no", else "yes" or "no"
  within its first 4 characters, else "other"; per subtask acc (questions) + acc+ (images with both right), in
  percent, summed over the 10 perception and the 4 cognition subtasks.
- ``seed``: SEED-Bench.json (``questions`` with ``choice_a..d``, ``answer``, ``data_type``, ``data_id``,
  ``question_type_id``; ``question_type`` name -> id): the image questions, and the video questions whose middle
  frame the user supplies as ``SEED-Bench-video-image/<question_id>.png`` next to the JSON (LLaVA's layout; the
  others are counted and left out); LLaVA's prompt (question, "A. ..." lines, the option-letter instruction);
  LLaVA's convert_seed_for_submission.py scoring: the answer text must equal the letter; total, image and video
  accuracy and per dimension.
- ``scienceqa``: LLaVA's eval layout, a directory with ``llava_test_CQM-A.json`` (prompts), ``problems.json`` and
  ``pid_splits.json``; the option-letter instruction appended (LLaVA's --single-pred-prompt); LLaVA's
  eval_science_qa.py parsing (a bare letter, "X. ...", or one "The answer is X." match); headline: IMG accuracy;
  1024 new tokens (model_vqa_science.py).
- ``textvqa``: TextVQA_0.5.1_val.json (``data``: question_id, image_id, question, answers, ocr_tokens); LLaVA-1.5's
  prompt (question with its first letter upper-cased, "Reference OCR token: a, b, c" written also with no
  tokens, short-answer instruction: three lines, as eval_textvqa.py's prompt_processor expects); m4c_evaluator's
  TextVQA accuracy.
- ``xllava_bvqa``: X-LLaVA's BVQA evaluation, i.e. BOK-VQA (Kim et al., 2024; bilingual outside-knowledge VQA),
  BVQA^k (Korean questions) and BVQA^e (English): the release's ``BOKVQA_data_test_{ko,en}.csv`` (img_path,
  question, h, r, t, answer; a directory holding both, or one file whose name ends in ``_ko``/``_en``), or JSONL
  (question_id, image, text, answer, lang). Not LRM-LLaVA's BVQA training task (benchmark ``bvqa``). X-LLaVA
  converted it to VIF as LLaVA-1.5 does VQA and scored accuracy: the short-answer instruction, exact match after
  EvalAI normalisation (articles, punctuation; a final full stop of any script ignored), percent, per language.
- ``vizwiz``: VizWiz annotations (list of image, question, answers [{answer}]); LLaVA-1.5's prompt (the
  "Unanswerable" line, then the short-answer instruction); VQA accuracy ("unanswerable" is an answer like any).
- ``koviz`` / ``koliv``: X-LLaVA's Korean VQA-format benchmarks (Table 3), from the user's files (.jsonl, .json or
  .csv: question_id, image, text or question, and ``answers`` (a list, VQA style) or ``answer``); LLaVA-1.5's
  short-answer prompt; VQA accuracy (m4c_evaluator: leave-one-annotator-out) with several answers, exact match
  after the same EvalAI normalisation with one; percent. The judged variant is ``ko_open`` (eval/review.py).

An instruction override (``--instruction``, or the line a checkpoint was trained with) replaces only the
short-answer line; the option-letter line and VizWiz's "Unanswerable" line are never replaced.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from typing import Any, Sequence

from xllava_jax.eval.benchmarks import (OPTION_LETTER, SHORT_ANSWER, Benchmark, instruction, line_lang, mean,
                                        read_records, require, short_answer_items, short_match, vqa_answers,
                                        with_instruction)
from xllava_jax.eval.metrics import vqa_accuracy
from xllava_jax.infer.answers import Question

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_IMAGES_SUBDIR = frozenset({"artwork", "celebrity", "landmark", "posters", "scene"})  # <subtask>/images/<file>
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
MME_YES_NO = "Please answer yes or no."  # MME's own line, which LLaVA's question file replaces
LLAVA_LONG_ANSWER_TOKENS = 1024  # model_vqa_science.py, model_vqa_mmbench.py
SQA_OPTIONS = ("A", "B", "C", "D", "E")
_SQA_ANSWER = re.compile(r"The answer is ([A-Z]).")


def _read_json(path: str) -> Any:
    """A JSON file, with an error naming it when absent."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -- MME -------------------------------------------------------------------------------------------------------
def load_mme(path: str) -> list[dict]:
    """Records of MME's eval_tool directory (`<subtask>.txt`, image<TAB>question<TAB>answer lines)."""
    if not os.path.isdir(path):
        raise ValueError(f"mme: {path} must be MME's eval_tool directory of <subtask>.txt files")
    records = []
    for subtask in (*MME_PERCEPTION, *MME_COGNITION):
        file = os.path.join(path, f"{subtask}.txt")
        if not os.path.isfile(file):
            continue
        with open(file, encoding="utf-8") as f:
            lines = [x.rstrip("\n") for x in f if x.strip()]
        for n, line in enumerate(lines):
            parts = line.split("\t")
            if len(parts) < 3 or parts[2].strip().lower() not in ("yes", "no"):
                raise ValueError(f"{file}:{n + 1}: expected image<TAB>question<TAB>yes|no, got {line[:120]!r}")
            sub = f"{subtask}/images" if subtask in MME_IMAGES_SUBDIR else subtask
            records.append({"question_id": f"{subtask}/{parts[0]}/{n}", "image": f"{sub}/{parts[0]}",
                            "text": parts[1], "answer": parts[2].strip().lower(), "category": subtask,
                            "image_name": parts[0]})
    if not records:
        raise ValueError(f"mme: no <subtask>.txt file in {path}")
    return records


def mme_items(record: dict, override: str | None) -> list[Question]:
    """LLaVA's MME question: MME's "Please answer yes or no." replaced by the short-answer instruction."""
    require(record, "question_id", "text", "answer", "category")
    text = record["text"].replace(MME_YES_NO, "").strip()
    text = with_instruction(text, instruction(SHORT_ANSWER, line_lang(record), override))
    return [Question(record["question_id"], text, record.get("image"),
                     {k: record[k] for k in ("answer", "category", "image_name") if k in record} | {"lang": "en"})]


def mme_parse(text: str) -> str:
    """MME's answer parsing: "yes"/"no" exactly, else the one within the first 4 characters, else "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def score_mme(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Per subtask acc + acc+ (percent), summed into the perception and cognition totals."""
    by_task: dict[str, dict[str, list[bool]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for q, p in zip(questions, preds):
        by_task[q.metadata["category"]][q.metadata.get("image_name", q.question_id)].append(
            mme_parse(p) == q.metadata["answer"])
    subtasks = {}
    for task, images in by_task.items():
        answers = [ok for oks in images.values() for ok in oks]
        acc, acc_plus = 100 * mean(answers), 100 * mean(all(oks) for oks in images.values())
        subtasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    total = lambda names: sum(subtasks[t]["score"] for t in names if t in subtasks)  # noqa: E731
    return {"perception": total(MME_PERCEPTION), "cognition": total(MME_COGNITION),
            "total": total(MME_PERCEPTION) + total(MME_COGNITION), "subtasks": subtasks}


# -- SEED-Bench ------------------------------------------------------------------------------------------------
SEED_VIDEO_FRAMES = "SEED-Bench-video-image"  # <question_id>.png: a video question's middle frame


def load_seed(path: str) -> list[dict]:
    """SEED-Bench.json's image questions and the video questions whose middle frame is supplied (next to the
    JSON, SEED-Bench-video-image/<question_id>.png), with their dimension's name; video questions without a
    frame are left out and counted in the log."""
    data = _read_json(path)
    if not isinstance(data, dict) or "questions" not in data:
        raise ValueError(f"seed: {path} is not SEED-Bench.json (no 'questions')")
    names = {v: k for k, v in data.get("question_type", {}).items()}
    root = os.path.dirname(os.path.abspath(path))
    records, no_frame = [], 0
    for q in data["questions"]:
        kind = q.get("data_type", "image")
        image = f"SEED-Bench-image/{q['data_id']}" if kind == "image" else f"{SEED_VIDEO_FRAMES}/{q['question_id']}.png"
        if kind != "image" and not os.path.isfile(os.path.join(root, image)):
            no_frame += 1
            continue
        records.append({**q, "image": image, "data_type": kind,
                        "dimension": names.get(q["question_type_id"], str(q["question_type_id"]))})
    if no_frame:
        logging.getLogger(__name__).warning("seed: %d video questions left out (no middle frame under %s/%s)",
                                            no_frame, root, SEED_VIDEO_FRAMES)
    return records


def seed_items(record: dict, override: str | None) -> list[Question]:
    """LLaVA's SEED prompt: question, "A. ..." to "D. ..." lines, the option-letter instruction."""
    require(record, "question_id", "question", "answer", "choice_a", "choice_b")
    lines = [record["question"]] + [f"{k}. {record[f'choice_{k.lower()}']}" for k in "ABCD"
                                    if record.get(f"choice_{k.lower()}") is not None]
    text = with_instruction("\n".join(lines), instruction(OPTION_LETTER, line_lang(record), None))
    return [Question(record["question_id"], text, record.get("image"),
                     {"answer": record["answer"], "dimension": record.get("dimension", "?"),
                      "data_type": record.get("data_type", "image"), "lang": record.get("lang", "en")})]


def score_seed(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Exact letter match (LLaVA's convert_seed_for_submission.py), in percent: total, image and video (its three
    lines), and per dimension."""
    by_dim: dict[str, list[bool]] = collections.defaultdict(list)
    by_type: dict[str, list[bool]] = collections.defaultdict(list)
    for q, p in zip(questions, preds):
        by_dim[q.metadata["dimension"]].append(p == q.metadata["answer"])
        by_type[q.metadata.get("data_type", "image")].append(p == q.metadata["answer"])
    return {"accuracy": 100 * mean(ok for oks in by_dim.values() for ok in oks),
            "image_accuracy": 100 * mean(by_type["image"]) if by_type["image"] else None,
            "video_accuracy": 100 * mean(by_type["video"]) if by_type["video"] else None,
            "image_questions": len(by_type["image"]), "video_questions": len(by_type["video"]),
            "by_dimension": {d: 100 * mean(oks) for d, oks in sorted(by_dim.items())}}


# -- ScienceQA -------------------------------------------------------------------------------------------------
def load_scienceqa(path: str, split: str = "test") -> list[dict]:
    """LLaVA's ScienceQA eval directory: prompts from llava_test_CQM-A.json, gold from problems.json (`split`)."""
    prompts = {str(r["id"]): r for r in _read_json(os.path.join(path, "llava_test_CQM-A.json"))}
    problems = _read_json(os.path.join(path, "problems.json"))
    records = []
    for pid in _read_json(os.path.join(path, "pid_splits.json"))[split]:
        if pid not in prompts:
            raise ValueError(f"scienceqa: problem {pid} has no prompt in llava_test_CQM-A.json")
        prompt = prompts[pid]
        human = next(t["value"] for t in prompt["conversations"] if t["from"] == "human")
        records.append({"question_id": pid, "text": human.replace("<image>", "").strip(),
                        "image": prompt.get("image"), "answer": problems[pid]["answer"],
                        "num_choices": len(problems[pid]["choices"])})
    return records


def scienceqa_items(record: dict, override: str | None) -> list[Question]:
    """The CQM-A prompt plus LLaVA's --single-pred-prompt instruction."""
    require(record, "question_id", "text", "num_choices")
    text = with_instruction(record["text"], instruction(OPTION_LETTER, line_lang(record), None))
    return [Question(record["question_id"], text, record.get("image") or None,
                     {"answer": int(record["answer"]), "num_choices": int(record["num_choices"]),
                      "multimodal": bool(record.get("image")), "lang": record.get("lang", "en")})]


def scienceqa_letter(text: str) -> str:
    """LLaVA's eval_science_qa.py parsing: a bare letter, "X. ...", or exactly one "The answer is X."."""
    if text in SQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _SQA_ANSWER.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def score_scienceqa(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Accuracy (percent) over all questions and over those with an image (IMG, LLaVA-1.5's column)."""
    right = []
    for q, p in zip(questions, preds):
        letter = scienceqa_letter(p)
        idx = SQA_OPTIONS.index(letter) if letter in SQA_OPTIONS[:q.metadata["num_choices"]] else -1
        right.append((idx == q.metadata["answer"], q.metadata["multimodal"]))
    return {"img_accuracy": 100 * mean(ok for ok, mm in right if mm), "accuracy": 100 * mean(ok for ok, _ in right),
            "img_questions": sum(mm for _, mm in right)}


# -- TextVQA ---------------------------------------------------------------------------------------------------
def load_textvqa(path: str) -> list[dict]:
    """Questions of TextVQA_0.5.1_val.json (image train_images/<image_id>.jpg)."""
    data = _read_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"textvqa: {path} is not a TextVQA annotation file (no 'data')")
    return [{**d, "text": d["question"], "image": f"train_images/{d['image_id']}.jpg"} for d in data["data"]]


def textvqa_items(record: dict, override: str | None) -> list[Question]:
    """LLaVA-1.5's TextVQA prompt: the question (first letter upper-cased, as LLaVA's question file), the
    "Reference OCR token: ..." line (also with no tokens), the short-answer instruction."""
    require(record, "question_id", "text", "answers")
    question = record["text"].strip()
    text = question[:1].upper() + question[1:] + "\nReference OCR token: " + ", ".join(record.get("ocr_tokens") or [])
    text = with_instruction(text, instruction(SHORT_ANSWER, line_lang(record), override))
    return [Question(record["question_id"], text, record.get("image"),
                     {"answers": record["answers"], "lang": record.get("lang", "en")})]


def score_vqa_like(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Mean VQA accuracy (m4c_evaluator's TextVQA / VizWiz rule: EvalAI normalisation, leave one annotator out)."""
    return {"accuracy": 100 * mean(vqa_accuracy(p, vqa_answers(q.metadata["answers"]))
                                   for q, p in zip(questions, preds))}


# -- VizWiz ----------------------------------------------------------------------------------------------------
def load_vizwiz(path: str) -> list[dict]:
    """VizWiz annotation records (val: with answers; test: without); the image name is the question id."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"vizwiz: {path} is not a VizWiz annotation list")
    return [{**d, "question_id": d["image"], "text": d["question"]} for d in data]


def vizwiz_items(record: dict, override: str | None) -> list[Question]:
    """LLaVA-1.5's VizWiz prompt: question, the 'Unanswerable' line, the short-answer instruction."""
    require(record, "question_id", "text")
    lang = record.get("lang", "en")
    short = instruction(SHORT_ANSWER, line_lang(record), override)
    extra = f"{VIZWIZ_UNANSWERABLE}\n{short}" if short else VIZWIZ_UNANSWERABLE
    return [Question(record["question_id"], with_instruction(record["text"], extra), record.get("image"),
                     {"answers": record.get("answers") or [], "lang": lang})]


def score_vizwiz(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """VQA accuracy on questions with answers (val); the test split has none (write a submission instead)."""
    scored = [(q, p) for q, p in zip(questions, preds) if q.metadata["answers"]]
    out = score_vqa_like([q for q, _ in scored], [p for _, p in scored])
    out["unanswerable_predicted"] = sum(p.strip().lower().rstrip(".") == "unanswerable" for p in preds)
    out["scored"] = len(scored)
    return out


# -- X-LLaVA's BVQA (BOK-VQA) ----------------------------------------------------------------------------------
BOKVQA_TEST = {"ko": "BOKVQA_data_test_ko.csv", "en": "BOKVQA_data_test_en.csv"}


def _bokvqa_csv(path: str, lang: str | None) -> list[dict]:
    """Rows of one BOK-VQA CSV (img_path, question, h, r, t, answer) as records; ids `<lang or file>/<row>`."""
    import csv
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    prefix = lang or os.path.splitext(os.path.basename(path))[0]
    out = []
    for i, row in enumerate(rows):
        if not row.get("img_path") or not row.get("question") or row.get("answer") in (None, ""):
            raise ValueError(f"{path}:{i + 2}: expected img_path, question and answer columns")
        out.append({"question_id": f"{prefix}/{i}", "image": os.path.basename(row["img_path"]),
                    "text": row["question"], "answer": row["answer"],
                    **({"lang": lang} if lang else {}), **{k: row[k] for k in ("h", "r", "t") if k in row}})
    return out


def load_xllava_bvqa(path: str) -> list[dict]:
    """BOK-VQA test records: a directory with BOKVQA_data_test_ko.csv and/or _en.csv, one such CSV (language from
    its name's `_ko` / `_en` ending, else --lang), or JSONL / JSON records."""
    if os.path.isdir(path):
        found = [(lang, os.path.join(path, name)) for lang, name in BOKVQA_TEST.items()
                 if os.path.isfile(os.path.join(path, name))]
        if not found:
            raise ValueError(f"xllava_bvqa: {path} holds neither {' nor '.join(BOKVQA_TEST.values())}")
        return [r for lang, file in found for r in _bokvqa_csv(file, lang)]
    if path.endswith(".csv"):
        stem = os.path.splitext(os.path.basename(path))[0]
        return _bokvqa_csv(path, next((lang for lang in BOKVQA_TEST if stem.endswith(f"_{lang}")), None))
    return [{**r, "text": r.get("text", r.get("question"))} for r in read_records(path)]


def score_xllava_bvqa(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Accuracy (percent): exact match after EvalAI normalisation, a final full stop of any script ignored."""
    return {"accuracy": 100 * mean(short_match(p, q.metadata["answer"]) for q, p in zip(questions, preds))}


# -- X-LLaVA's KoViz and KoLiv (VQA format) ----------------------------------------------------------------------
def load_ko_vqa(path: str) -> list[dict]:
    """KoViz / KoLiv records (.jsonl, .json list or .csv): question_id (else the row number), image, text or
    question, answers (list, or a JSON list in a CSV cell) or answer."""
    from xllava_jax.eval.review import load_open_ended
    out = []
    for r in load_open_ended(path):
        answers = r.get("answers", r.get("answer"))
        if isinstance(answers, str) and answers.startswith("["):
            answers = json.loads(answers)
        if answers in (None, "", []):
            raise ValueError(f"{path}: record {r['question_id']!r} has no answers / answer")
        out.append({**r, "answers": answers if isinstance(answers, list) else [answers]})
    return out


def score_ko_vqa(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Accuracy (percent): VQA accuracy with several reference answers, exact match after EvalAI normalisation
    with one."""
    def one(q: Question, p: str) -> float:
        gold = vqa_answers(q.metadata["answers"])
        return vqa_accuracy(p, gold) if len(gold) > 1 else float(short_match(p, gold[0]))
    return {"accuracy": 100 * mean(one(q, p) for q, p in zip(questions, preds))}


def _ko_vqa(name: str) -> Benchmark:
    """KoViz or KoLiv: the same reader and scorer under the benchmark's own name."""
    return Benchmark(name, short_answer_items(["answers"]), score_ko_vqa, "accuracy", load_ko_vqa, default_lang="ko",
                     short_answer=True)


BENCHMARKS: dict[str, Benchmark] = {
    "mme": Benchmark("mme", mme_items, score_mme, "total", load_mme, short_answer=True),
    "seed": Benchmark("seed", seed_items, score_seed, "accuracy", load_seed),
    "scienceqa": Benchmark("scienceqa", scienceqa_items, score_scienceqa, "img_accuracy", load_scienceqa,
                           max_new_tokens=LLAVA_LONG_ANSWER_TOKENS),
    "textvqa": Benchmark("textvqa", textvqa_items, score_vqa_like, "accuracy", load_textvqa, short_answer=True),
    "vizwiz": Benchmark("vizwiz", vizwiz_items, score_vizwiz, "accuracy", load_vizwiz, short_answer=True),
    "xllava_bvqa": Benchmark("xllava_bvqa", short_answer_items(["answer"]), score_xllava_bvqa, "accuracy",
                             load_xllava_bvqa, short_answer=True),
    "koviz": _ko_vqa("koviz"),
    "koliv": _ko_vqa("koliv"),
}
