"""Judge-scored open-ended benchmarks: a judge rates the reference answer (Assistant 1) and ours (Assistant 2)
from 1 to 10, and the score is ours relative to the reference, as LLaVA's ``eval_gpt_review_bench.py`` and
``summarize_gpt_review.py`` compute it.

- ``llava_bench``: LLaVA-Bench (In-the-Wild) in its release layout, a directory with ``questions.jsonl``
  (question_id, image, text, category conv / detail / complex), ``answers_gpt4.jsonl`` (the reference answers,
  by question_id) and ``context.jsonl`` (image, caption). The question is asked as written (no instruction),
  with LLaVA's 1024 new tokens. The judge gets LLaVA's review: system "You are a helpful and precise assistant
  for checking the quality of the answer.", then the captions, the question, both answers and the
  ``llava_bench_<category>`` rule of LLaVA's ``table/rule.json`` (text only, no image), temperature 0.2.
- ``ko_open``: open-ended Korean benchmarks such as KoViz and KoLiv, from the user's files (question, image,
  reference answer, optional category). Without captions the judge sees the image, and the rule says so.

Scoring (``parse_score_pair``): the first line of the review, commas made spaces, must split on single spaces into
exactly two numbers, else the pair is [-1, -1] (LLaVA's parse_score; an unparseable review is asked again up to
``parse_retries`` times first, and a pair still [-1, -1] counts in the means as in LLaVA's summary, reported as
``unparsed``). Per category and overall: the two means rounded to 3 decimals, relative score =
round(ours / reference * 100, 1). Every paid review goes to the client's reply store first (a rerun pays nothing
twice); the reviews are written to ``OUT/reviews.jsonl`` as LLaVA's review file (question_id, category, content,
tuple).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from xllava_jax.jsonl import read_jsonl
from xllava_jax.eval.benchmarks import Benchmark, read_records, require, with_instruction
from xllava_jax.infer.answers import Question
from xllava_jax.openai_api import ApiError, BudgetExceeded, ChatClient, image_data_url, run_concurrently, \
    text_message, user_message

REVIEW_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
REVIEW_ROLE = "Assistant"
REVIEW_TEMPERATURE = 0.2  # eval_gpt_review_bench.py
REVIEW_MAX_TOKENS = 1024  # its --max-tokens default
LLAVA_BENCH_NEW_TOKENS = 1024  # model_vqa.py's max_new_tokens (LLaVA-Bench answers are long)
_ASKED = ("We would like to request your feedback on the performance of two AI assistants in response to the user "
          "question displayed above. The user asks the question on observing an image. ")
_RATE = ("Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
         "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
         "performance.\nPlease first output a single line containing only two values indicating the scores for "
         "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the subsequent line, please "
         "provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the "
         "order in which the responses were presented does not affect your judgment.")
# LLaVA's rule.json llava_bench_conv / _detail / _complex (the three are the same text)
CONTEXT_RULE = (_ASKED + "For your reference, the visual content in the image is represented with a few sentences "
                "describing the image. \n" + _RATE)
IMAGE_RULE = _ASKED + "The image is shown to you. \n" + _RATE  # ours: no captions, the judge sees the image
LLAVA_BENCH_CATEGORIES = ("conv", "detail", "complex")
REVIEWS_FILE = "reviews.jsonl"


def review_content(question: str, reference: str, answer: str, context: str | None, rule: str) -> str:
    """The judge's user message: [Context] (when there are captions), [Question], Assistant 1 = the reference,
    Assistant 2 = ours, [System] rule (eval_gpt_review_bench.py's layout)."""
    head = f"[Context]\n{context}\n\n" if context is not None else ""
    return (f"{head}[Question]\n{question}\n\n"
            f"[{REVIEW_ROLE} 1]\n{reference}\n\n[End of {REVIEW_ROLE} 1]\n\n"
            f"[{REVIEW_ROLE} 2]\n{answer}\n\n[End of {REVIEW_ROLE} 2]\n\n"
            f"[System]\n{rule}\n\n")


def parse_score_pair(review: str) -> list[float] | None:
    """LLaVA's parse_score: the first line, commas -> spaces, split on single spaces into exactly two numbers."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return [float(parts[0]), float(parts[1])]
    except ValueError:
        return None


def caption_text(caption: Any) -> str:
    """Captions as the judge reads them: a list joined with newlines (as LLaVA does), a string as written."""
    return "\n".join(str(c) for c in caption) if isinstance(caption, (list, tuple)) else str(caption)


# -- loaders ---------------------------------------------------------------------------------------------------
def load_llava_bench(path: str) -> list[dict]:
    """Records of LLaVA-Bench (In-the-Wild)'s directory: questions + reference answers + image captions."""
    if not os.path.isdir(path):
        raise ValueError(f"llava_bench: {path} must be the directory with questions.jsonl, answers_gpt4.jsonl "
                         "and context.jsonl")
    files = {name: os.path.join(path, f"{name}.jsonl") for name in ("questions", "answers_gpt4", "context")}
    for file in files.values():
        if not os.path.isfile(file):
            raise FileNotFoundError(f"llava_bench: {file} does not exist")
    references = {str(r["question_id"]): r["text"] for r in read_jsonl(files["answers_gpt4"])}
    captions = {r["image"]: caption_text(r["caption"]) for r in read_jsonl(files["context"])}
    records = []
    for q in read_jsonl(files["questions"]):
        require(q, "question_id", "image", "text", "category")
        qid = str(q["question_id"])
        if qid not in references:
            raise ValueError(f"llava_bench: question {qid} has no reference answer in answers_gpt4.jsonl")
        if q["image"] not in captions:
            raise ValueError(f"llava_bench: image {q['image']} of question {qid} has no caption in context.jsonl")
        if q["category"] not in LLAVA_BENCH_CATEGORIES:
            raise ValueError(f"llava_bench: question {qid} has category {q['category']!r}, expected one of "
                             f"{LLAVA_BENCH_CATEGORIES} (LLaVA's rule.json has no other)")
        records.append({**q, "answer": q.get("answer", references[qid]), "context": captions[q["image"]]})
    return records


def load_open_ended(path: str) -> list[dict]:
    """Records of an open-ended benchmark (.jsonl, .json list or .csv): question_id (else the row number), image,
    text or question, answer, optional category, context and lang (else --lang, else ko)."""
    if path.endswith(".csv"):
        import csv
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = read_records(path)
    out = []
    for i, r in enumerate(rows):
        rec = {"question_id": str(i), **{k: v for k, v in r.items() if v not in (None, "")}}
        if "text" not in rec and "question" in rec:
            rec["text"] = rec["question"]
        out.append(rec)
    return out


def open_items(record: dict, override: str | None) -> list[Question]:
    """The question as written (LLaVA-Bench adds no instruction; `--instruction` appends one); the reference,
    captions and category go to the judge."""
    require(record, "question_id", "text", "answer")
    text = with_instruction(record["text"], override or "")
    meta = {"question": record["text"], "answer": record["answer"], "category": record.get("category", "all"),
            "lang": record.get("lang", "en")}
    if record.get("context") is not None:
        meta["context"] = caption_text(record["context"])
    return [Question(record["question_id"], text, record.get("image") or None, meta)]


# -- the judge -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Reviewer:
    """Asks a judge (any OpenAI-compatible API, through ChatClient and its reply store) to score reference vs ours;
    reviews are kept in memory (per-language subsets reuse them) and written to `out_dir/reviews.jsonl`."""

    client: ChatClient
    image_root: str | None = None
    out_dir: str | None = None
    parse_retries: int = 2
    done: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)

    def messages(self, q: Question, pred: str) -> list[dict[str, Any]]:
        """The review request: captions in text (LLaVA-Bench), else the image alongside the text."""
        m = q.metadata
        context = m.get("context")
        content = review_content(m["question"], m["answer"], pred, context, CONTEXT_RULE if context is not None
                                 else IMAGE_RULE)
        images = []
        if context is None and q.image:
            path = q.image if isinstance(q.image, str) else None
            if path is None:
                raise ValueError(f"question {q.question_id}: the judge needs the image as a file path")
            images = [image_data_url(os.path.join(self.image_root or "", path))]
        return [text_message("system", REVIEW_SYSTEM), user_message(content, images)]

    def ask(self, item: tuple[Question, str]) -> dict[str, Any]:
        """One review: the pair (or [-1, -1] once every retry was unparseable) and the reply."""
        q, pred = item
        messages = self.messages(q, pred)
        for attempt in range(self.parse_retries + 1):
            reply = self.client.complete(messages, tag=f"parse_retry{attempt}" if attempt else "")
            pair = parse_score_pair(reply.text)
            if pair is not None:
                break
        return {"question_id": q.question_id, "category": q.metadata["category"], "content": reply.text,
                "tuple": pair or [-1.0, -1.0], "parsed": pair is not None}

    def review(self, questions: Sequence[Question], preds: Sequence[str]) -> list[dict[str, Any]]:
        """The reviews of (question, answer) pairs, asking the judge for those not reviewed yet in this run."""
        todo = [(q, p) for q, p in zip(questions, preds) if (str(q.question_id), p) not in self.done]
        failed = []
        for (q, p), result, err in run_concurrently(self.ask, todo, self.client.config.concurrency):
            if isinstance(err, (ApiError, BudgetExceeded)):
                failed.append(f"{q.question_id}: {err}")
            elif err is not None:
                raise err
            else:
                self.done[(str(q.question_id), p)] = result
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, REVIEWS_FILE), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self.done.values())
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(todo)} reviews failed (e.g. {failed[0]}); the paid ones are "
                               "in the reply store: rerun to finish without paying for them again")
        return [self.done[(str(q.question_id), p)] for q, p in zip(questions, preds)]


# -- MMBench's ChatGPT step -------------------------------------------------------------------------------------
MMBENCH_MATCH_MODEL = "gpt-3.5-turbo-0613"  # MMBench's evaluator
MMBENCH_MATCH_TEMPERATURE = 0.0
MMBENCH_MATCH_MAX_TOKENS = 256
MMBENCH_MATCH_TRIES = 3
MMBENCH_MATCH_PROMPT = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice "
    "question. You are provided with a question, several options, and an answer, and you need to find which "
    "option is most similar to the answer. If the meaning of all options are significantly different from the "
    "answer, output E. Your should output a single uppercase character in A, B, C, D (if they are valid options), "
    "and E. \nExample 1: \nQuestion: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat "
    "D. dog\nAnswer: a cute teddy bear\nYour output: A\nExample 2: \nQuestion: What is the main object in image?"
    "\nOptions: A. teddy bear B. rabbit C. cat D. dog\nAnswer: Spider\nYour output: E\nExample 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: ")


def mmbench_match_prompt(question: str, options: Mapping[str, str], answer: str) -> str:
    """MMBench's matching request: its three-example prompt with "There are several options:" lines."""
    option_str = "There are several options: \n" + "".join(f"{k}. {v}\n" for k, v in options.items())
    return MMBENCH_MATCH_PROMPT.format(question, option_str, answer)


@dataclasses.dataclass
class OptionMatcher:
    """MMBench's ChatGPT step for the answers its rules cannot read: the matching prompt, the reply read by the
    same rules, up to 3 tries; still unread -> None (MMBench then draws a random letter; we leave it unresolved)."""

    client: ChatClient
    tries: int = MMBENCH_MATCH_TRIES

    def ask(self, item: tuple[Question, str]) -> str | None:
        """The letter the judge matches one answer to, or None."""
        from xllava_jax.eval.metrics import mmbench_match
        q, pred = item
        prompt = mmbench_match_prompt(q.metadata["question"], q.metadata["prompt_options"], pred)
        for attempt in range(self.tries):
            reply = self.client.complete([user_message(prompt)], tag=f"retry{attempt}" if attempt else "")
            letter = mmbench_match(reply.text, q.metadata["options"])
            if letter:
                return letter
        return None

    def match(self, questions: Sequence[Question], preds: Sequence[str]) -> list[str | None]:
        """Letters of (question, answer) pairs, in order (paid replies are in the client's reply store)."""
        out, failed = [], []
        for (q, _), letter, err in run_concurrently(self.ask, list(zip(questions, preds)),
                                                    self.client.config.concurrency):
            if isinstance(err, (ApiError, BudgetExceeded)):
                failed.append(f"{q.question_id}: {err}")
            elif err is not None:
                raise err
            out.append(letter)
        if failed:
            raise RuntimeError(f"{len(failed)} MMBench matching requests failed (e.g. {failed[0]}); rerun to finish")
        return out


def relative_score(pairs: Sequence[Sequence[float]]) -> dict[str, float]:
    """summarize_gpt_review.py: both means rounded to 3 decimals, ours / reference * 100 rounded to 1."""
    ref = round(sum(p[0] for p in pairs) / len(pairs), 3) if pairs else 0.0
    ours = round(sum(p[1] for p in pairs) / len(pairs), 3) if pairs else 0.0
    return {"relative": round(ours / ref * 100, 1) if ref else 0.0, "reference_mean": ref, "model_mean": ours,
            "reviewed": len(pairs)}


def score_review(questions: Sequence[Question], preds: Sequence[str], reviewer: Reviewer) -> dict:
    """Relative score per category and overall (`relative`, the headline), both means, unparsed reviews."""
    reviews = reviewer.review(questions, preds)
    by_cat: Mapping[str, list] = collections.defaultdict(list)
    for r in reviews:
        by_cat[str(r["category"])].append(r["tuple"])
    return {**relative_score([r["tuple"] for r in reviews]),
            "by_category": {c: relative_score(p) for c, p in sorted(by_cat.items())},
            "unparsed": sum(not r["parsed"] for r in reviews)}


BENCHMARKS: dict[str, Benchmark] = {
    "llava_bench": Benchmark("llava_bench", open_items, score_review, "relative", load_llava_bench, judged=True,
                             max_new_tokens=LLAVA_BENCH_NEW_TOKENS),
    "ko_open": Benchmark("ko_open", open_items, score_review, "relative", load_open_ended, judged=True,
                         max_new_tokens=LLAVA_BENCH_NEW_TOKENS, default_lang="ko"),
}
