"""Benchmarks: how each one's records become prompts and how its answers are scored.

Record formats (one JSON object per line; `lang` optional, default "en"; see README "Evaluation"):
- vqav2:   {"question_id", "image", "text", "answers": [10 annotator answers]}      -> VQA accuracy
- gqa:     {"question_id", "image", "text", "answer"}                                -> exact match
- pope:    {"question_id", "image", "text", "label": "yes"|"no", "category"}         -> POPE F1 etc.
- mmbench: MMBench TSV (index, question, hint, A..D, answer, image base64; the dev TSV holds the
           circular copies as rows index + k*10^6) or JSONL with the same keys and `image`
           as a path                                                                 -> CircularEval accuracy
- bvqa:    {"question_id", "image", "text", "answer", "lang", "answer_lang"}         -> exact match per pair
A multilingual version is the same records with `lang` set (or parallel `{lang: text}` values);
scores are then given per language with the non-English average.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from xllava_jax.data.multilingual.phrasings import BVQA_INSTRUCTION, phrase_language
from xllava_jax.jsonl import read_jsonl
from xllava_jax.eval.metrics import (gqa_match, mmbench_circular, mmbench_match, normalize_answer, pope_metrics,
                                     vqa_accuracy)
from xllava_jax.infer.answers import Question

SHORT_ANSWER = {"en": "Answer the question using a single word or phrase.",  # LLaVA's short-answer instruction
                "ko": "한 단어나 짧은 구로 답하세요.", "zh": "请用一个单词或短语回答问题。"}
OPTION_LETTER = {"en": "Answer with the option's letter from the given choices directly.",
                 "zh": "请直接回答选项字母。",  # LLaVA's MMBench-CN instruction
                 "ko": "주어진 선택지 중 해당 옵션의 문자로 직접 답하세요."}
OPTION_KEYS = ("A", "B", "C", "D")  # MMBench's options (LLaVA's model_vqa_mmbench.py asks A-D)
PARALLEL_FIELDS = ("text", "question", "hint", "answer", "answers", *OPTION_KEYS)
INSTRUCTION_LANGS = ("native", "en")  # the instruction line in the question's language, or LLaVA-1.5's English


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark: records -> questions (with gold fields in metadata), and scored answers -> metrics."""

    name: str
    items: Callable[[dict, str | None], list[Question]]  # (record, instruction override) -> questions
    score: Callable[..., dict]  # metrics of (questions, predictions[, reviewer when judged])
    metric: str  # the headline metric in the score dict
    load: Callable[[str], list[dict]] | None = None  # records of the official release layout (default read_records)
    judged: bool = False  # scored by a judge: score(questions, predictions, reviewer) (eval/review.py)
    judge_optional: bool = False  # score(questions, predictions, reviewer) also takes a judge (MMBench's matching)
    max_new_tokens: int | None = None  # answer length the official evaluation allows (None: EVAL_CONFIG's 128)
    default_lang: str = "en"  # language of records without a lang field (when --lang is not given)
    short_answer: bool = False  # its instruction is the free-form short-answer line (an override may replace it)


def instruction(table: Mapping[str, str], lang: str, override: str | None) -> str:
    """The instruction appended to a question: `override` if given, else the table's phrase in `lang` (English fallback)."""
    return override if override is not None else table.get(lang, table["en"])


def line_lang(record: Mapping[str, Any]) -> str:
    """The language of a record's instruction line: its own (`instruction_lang` native) or English ("en")."""
    return "en" if record.get("instruction_lang") == "en" else record.get("lang", "en")


def with_instruction(text: str, extra: str) -> str:
    """`text` followed by an instruction line; nothing added when `extra` is empty or the text already ends with
    it (compared with whitespace runs collapsed, as LLaVA's own question files carry the instruction)."""
    if not extra or " ".join(text.split()).endswith(" ".join(extra.split())):
        return text
    return f"{text}\n{extra}"


def require(record: dict, *keys: str) -> None:
    """Raise ValueError naming the record and the fields it lacks."""
    missing = [k for k in keys if k not in record or record[k] in (None, "")]
    if missing:
        rid = record.get("question_id", record.get("index", "?"))
        raise ValueError(f"record {rid!r} lacks {', '.join(missing)}")


def short_answer_items(gold: Sequence[str]) -> Callable[[dict, str | None], list[Question]]:
    """Items of a short-answer benchmark whose records carry the gold fields `gold`."""
    def items(record: dict, override: str | None) -> list[Question]:
        require(record, "question_id", "text", *gold)
        lang = record.get("lang", "en")
        meta = {k: record[k] for k in (*gold, "category") if k in record}
        extra = instruction(SHORT_ANSWER, line_lang(record), override)
        return [Question(record["question_id"], with_instruction(record["text"], extra),
                         record.get("image") or None, {**meta, "lang": lang})]
    return items


def vqa_answers(answers: Sequence[Any]) -> list[str]:
    """Annotator answers as strings (VQA annotation dicts {"answer": ...} or plain strings)."""
    return [a["answer"] if isinstance(a, Mapping) else str(a) for a in answers]


def score_vqav2(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Mean VQA accuracy."""
    return {"accuracy": mean(vqa_accuracy(p, vqa_answers(q.metadata["answers"])) for q, p in zip(questions, preds))}


def score_gqa(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Exact-match accuracy (LLaVA's GQA rule)."""
    return {"accuracy": mean(gqa_match(p, str(q.metadata["answer"])) for q, p in zip(questions, preds))}


POPE_SPLITS = ("adversarial", "popular", "random")
POPE_MEANED = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_subset(questions: Sequence[Question], preds: Sequence[str], keep: Callable[[Question], bool]) -> dict:
    """POPE metrics of the questions `keep` selects, each answer parsed in its question's language."""
    rows = [(q, p) for q, p in zip(questions, preds) if keep(q)]
    return pope_metrics([p for _, p in rows], [q.metadata["label"] for q, _ in rows],
                        [q.metadata.get("lang", "en") for q, _ in rows])


def score_pope(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """POPE: the headline is the mean over the splits (random / popular / adversarial) of each metric, as
    LLaVA-1.5 and X-LLaVA report; `pooled` holds the metrics over all answers, `by_category` each split's."""
    pooled = pope_subset(questions, preds, lambda q: True)
    categories = sorted({str(q.metadata["category"]) for q in questions if q.metadata.get("category")})
    if not categories:
        return {**pooled, "pooled": dict(pooled)}
    by_category = {c: pope_subset(questions, preds, lambda q, c=c: str(q.metadata.get("category")) == c)
                   for c in categories}
    return {**{k: mean(m[k] for m in by_category.values()) for k in POPE_MEANED}, "unparsed": pooled["unparsed"],
            "splits": categories, "pooled": pooled, "by_category": by_category}


def missing_option(value: Any) -> bool:
    """An empty MMBench cell: None, NaN, or "" / "nan" / "none" in any case (LLaVA's is_none, pandas' NaN)."""
    return value is None or (isinstance(value, float) and value != value) or \
        str(value).strip().lower() in ("", "nan", "none")


def mmbench_prompt_options(record: dict) -> dict[str, str]:
    """The options LLaVA's model_vqa_mmbench.py asks: A, B, ... up to the first missing one (get_options)."""
    out = {}
    for k in OPTION_KEYS:
        if missing_option(record.get(k)):
            break
        out[k] = str(record[k])
    return out


def mmbench_options(record: dict) -> dict[str, str]:
    """The options MMBench's matcher compares answers with: every non-missing one of A-D (build_choices)."""
    return {k: str(record[k]) for k in OPTION_KEYS if not missing_option(record.get(k))}


def mmbench_question(record: dict, options: Mapping[str, str], extra: str) -> str:
    """LLaVA's MMBench prompt: hint, question, one "A. option" line per option, then the instruction."""
    hint = record.get("hint")
    text = str(record["question"])
    if not missing_option(hint):
        text = f"{hint}\n{text}"
    text += "".join(f"\n{k}. {v}" for k, v in options.items())
    return with_instruction(text, extra)


def mmbench_items(record: dict, override: str | None) -> list[Question]:
    """One question per TSV row, as LLaVA answers it (the dev/test TSVs already hold the circular copies, rows
    index + k * 10^6); the option-letter line is never replaced."""
    require(record, "index", "question", "answer", "A", "B")
    options = mmbench_options(record)
    if record["answer"] not in options:
        raise ValueError(f"record {record['index']!r}: answer {record['answer']!r} is not one of {list(options)}")
    lang = record.get("lang", "en")
    text = mmbench_question(record, mmbench_prompt_options(record), instruction(OPTION_LETTER, line_lang(record), None))
    return [Question(record["index"], text, record.get("image") or None,
                     {"index": record["index"], "options": options, "answer": record["answer"], "lang": lang,
                      "question": str(record["question"]), "prompt_options": mmbench_prompt_options(record),
                      **({"category": record["category"]} if record.get("category") else {})})]


def score_mmbench(questions: Sequence[Question], preds: Sequence[str], matcher: Any = None) -> dict:
    """CircularEval over index mod 10^6 with MMBench's rule-based matcher, and the accuracy over rows. The
    answers the rules cannot read are unresolved, or, with `matcher` (eval.review.OptionMatcher), matched by a
    judge as MMBench asks ChatGPT (`judge_matched` of them)."""
    results = [{"index": q.metadata["index"], "answer": q.metadata["answer"],
                "pred": mmbench_match(p, q.metadata["options"])} for q, p in zip(questions, preds)]
    unread = [i for i, r in enumerate(results) if r["pred"] is None]
    if matcher is not None and unread:
        for i, letter in zip(unread, matcher.match([questions[i] for i in unread], [preds[i] for i in unread])):
            results[i]["pred"] = letter
    return {**mmbench_circular(results), "rows": len(results),
            "judge_matched": sum(results[i]["pred"] is not None for i in unread) if matcher is not None else 0,
            "row_accuracy": mean(r["pred"] == r["answer"] for r in results),
            "rows_unresolved": sum(r["pred"] is None for r in results)}


def bvqa_items(record: dict, override: str | None) -> list[Question]:
    """The question in `lang` with the training-time instruction asking for an answer in `answer_lang`."""
    require(record, "question_id", "text", "answer", "lang", "answer_lang")
    extra = override if override is not None else phrase_language(BVQA_INSTRUCTION, record["lang"],
                                                                   record["answer_lang"])
    pair = f"{record['lang']}->{record['answer_lang']}"
    return [Question(record["question_id"], with_instruction(record["text"], extra), record.get("image") or None,
                     {"answer": record["answer"], "lang": pair})]


def short_match(pred: str, gold: str) -> bool:
    """Exact match after EvalAI normalization, ignoring a final full stop of any script."""
    strip = lambda s: normalize_answer(str(s).strip().rstrip(".。．!！"))  # noqa: E731
    return strip(pred) == strip(gold)


def score_bvqa(questions: Sequence[Question], preds: Sequence[str]) -> dict:
    """Exact-match accuracy of answers in the requested language."""
    return {"accuracy": mean(short_match(p, q.metadata["answer"]) for q, p in zip(questions, preds))}


def mean(values: Any) -> float:
    """Mean of an iterable of numbers or bools (0.0 when empty)."""
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


CORE_BENCHMARKS: dict[str, Benchmark] = {  # the rest: eval/official.py, eval/review.py; all: eval/registry.py
    "vqav2": Benchmark("vqav2", short_answer_items(["answers"]), score_vqav2, "accuracy", short_answer=True),
    "gqa": Benchmark("gqa", short_answer_items(["answer"]), score_gqa, "accuracy", short_answer=True),
    "pope": Benchmark("pope", short_answer_items(["label"]), score_pope, "f1", short_answer=True),
    "mmbench": Benchmark("mmbench", mmbench_items, score_mmbench, "accuracy", max_new_tokens=1024,
                         judge_optional=True),
    "bvqa": Benchmark("bvqa", bvqa_items, score_bvqa, "accuracy"),
}


def expand_parallel(record: dict) -> list[dict]:
    """A record whose text fields are `{lang: value}` objects -> one record per language (ids get `_lang`)."""
    langs = next((list(record[k]) for k in ("text", "question") if isinstance(record.get(k), dict)), None)
    if not langs:
        return [record]
    out = []
    for lang in langs:
        rec = {k: (v.get(lang) if k in PARALLEL_FIELDS and isinstance(v, dict) else v) for k, v in record.items()}
        for key in ("question_id", "index"):
            if key in rec:
                rec[key] = f"{rec[key]}_{lang}"
        out.append({**rec, "lang": lang})
    return out


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a .jsonl, .json (list) or .tsv file (TSV `image` cells are base64-encoded images)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark data {path} does not exist")
    if path.endswith(".tsv"):
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        for row in rows:
            if row.get("image"):
                row["image"] = base64.b64decode(row["image"])
        return rows
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return data
    return list(read_jsonl(path))


def build_questions(benchmark: Benchmark, records: Sequence[dict], instruction_override: str | None = None,
                    default_lang: str | None = None, instruction_lang: str = "native") -> list[Question]:
    """Every question of a benchmark's records (parallel records expanded per language; records without `lang`
    are in `default_lang`, else the benchmark's default language). `instruction_lang` "native" writes the
    instruction line in the question's language, "en" in LLaVA-1.5's English for every language."""
    if instruction_lang not in INSTRUCTION_LANGS:
        raise ValueError(f"instruction_lang must be one of {INSTRUCTION_LANGS}, got {instruction_lang!r}")
    out: list[Question] = []
    for record in records:
        for rec in expand_parallel(record):
            rec = {"lang": default_lang or benchmark.default_lang, **rec, "instruction_lang": instruction_lang}
            out += benchmark.items(rec, instruction_override)
    ids = [q.question_id for q in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{benchmark.name}: question id {dup!r} appears more than once")
    return out

