"""Running a benchmark: answer its questions with the model (resumable answer file), then score them,
overall and per language (non-English average as LRM-LLaVA reports)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from jax.sharding import Mesh

from xllava_jax.data.templates import get_template
from xllava_jax.jsonl import read_jsonl
from xllava_jax.eval.benchmarks import Benchmark, build_questions
from xllava_jax.eval.registry import get_benchmark
from xllava_jax.eval.metrics import language_summary, language_table
from xllava_jax.infer.answers import Question, answer_questions
from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.infer.prompts import DEFAULT_TEMPLATE

ANSWERS_FILE = "answers.jsonl"
SCORES_FILE = "scores.json"
LANGUAGES_FILE = "languages.md"  # per-language table with the non-English average (multilingual runs)
EVAL_CONFIG = GenerationConfig(max_new_tokens=128)  # LLaVA's evaluation: greedy, 128 new tokens


def score_answers(benchmark: Benchmark, questions: Sequence[Question], answers: dict[Any, str],
                  reviewer: Any = None) -> dict:
    """Scores of `answers` {question_id: text}: overall, and per language when there are several. A judged
    benchmark needs `reviewer` (eval.review.Reviewer), which asks each review once; MMBench takes an optional one
    (eval.review.OptionMatcher) for the answers its rules cannot read."""
    missing = [q.question_id for q in questions if q.question_id not in answers]
    if missing:
        raise ValueError(f"{benchmark.name}: {len(missing)} questions have no answer, e.g. {missing[0]!r}")
    if benchmark.judged and reviewer is None:
        raise ValueError(f"{benchmark.name} is scored by a judge: give a reviewer (eval/review.py)")
    with_judge = benchmark.judged or (benchmark.judge_optional and reviewer is not None)
    score = (lambda qs, ps: benchmark.score(qs, ps, reviewer)) if with_judge else benchmark.score
    preds = [answers[q.question_id] for q in questions]
    overall = score(questions, preds)
    scores: dict[str, Any] = {"benchmark": benchmark.name, "metric": benchmark.metric, "questions": len(questions),
                              "score": overall[benchmark.metric], "overall": overall}
    langs = sorted({q.metadata.get("lang", "en") for q in questions})
    if len(langs) > 1:
        by_lang = {}
        for lang in langs:
            rows = [(q, p) for q, p in zip(questions, preds) if q.metadata.get("lang", "en") == lang]
            by_lang[lang] = score([q for q, _ in rows], [p for _, p in rows])
        scores["by_language"] = by_lang
        scores.update(language_summary({k: v[benchmark.metric] for k, v in by_lang.items()}))
    return scores


def eval_config(benchmark: Benchmark) -> GenerationConfig:
    """EVAL_CONFIG with the benchmark's answer length (LLaVA-Bench: 1024 new tokens)."""
    return dataclasses.replace(EVAL_CONFIG, max_new_tokens=benchmark.max_new_tokens or EVAL_CONFIG.max_new_tokens)


def write_scores(directory: str | os.PathLike, scores: dict, benchmark: Benchmark) -> None:
    """`directory/scores.json`, and `languages.md` (the per-language table) when there are several languages."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SCORES_FILE).write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if "per_language" in scores:
        (directory / LANGUAGES_FILE).write_text(language_table(scores, benchmark.metric), encoding="utf-8")


def evaluate(model: Any, params: Any, tokenizer: Any, benchmark: str | Benchmark, records: Sequence[dict], *,
             image_root: str | None = None, template: str = DEFAULT_TEMPLATE, config: GenerationConfig | None = None,
             out_dir: str | os.PathLike | None = None, instruction: str | None = None, default_lang: str | None = None,
             mesh: Mesh | None = None, model_id: str = "xllava", progress: bool = False,
             checkpoint: dict[str, Any] | None = None, fresh: bool = False, reviewer: Any = None,
             instruction_lang: str = "native") -> dict:
    """Answer a benchmark's records with the model and return its scores.

    With `out_dir`, answers go to `out_dir/answers.jsonl` (resumable: answered ids are skipped) and scores to
    `out_dir/scores.json`. `instruction` replaces the benchmark's instruction line ("" for none, e.g. for a
    model trained without it). `checkpoint` identifies the weights (default: a fingerprint of `params`); an
    answers file written by other weights is refused, and `fresh` discards it first (answer everything anew).
    `config` defaults to greedy decoding with the benchmark's answer length; a judged benchmark (llava_bench,
    ko_open) needs `reviewer` (eval.review.Reviewer). `instruction_lang` ("native" or "en") is the language of
    a non-English question's instruction line, recorded in the scores.
    """
    bench = get_benchmark(benchmark)
    config = config or eval_config(bench)
    questions = build_questions(bench, records, instruction, default_lang, instruction_lang)
    engine = Engine(model, params, tokenizer, mesh)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(out_dir) if out_dir is not None else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        answers_path = directory / ANSWERS_FILE
        if fresh:
            answers_path.unlink(missing_ok=True)
        answer_questions(engine, get_template(template), questions, answers_path, image_root=image_root,
                         model_id=model_id, config=config, progress=progress, checkpoint=checkpoint)
        answers = {r["question_id"]: r["text"] for r in read_jsonl(answers_path)}
        scores = {**score_answers(bench, questions, answers, reviewer), "instruction_lang": instruction_lang}
        if out_dir is not None:
            write_scores(directory, scores, bench)
    return scores
