"""Answering a question file: LLaVA question JSONL in, LLaVA answer JSONL out, batched and resumable.

In: one `{"question_id", "image" (optional, relative to image_root), "text"}` per line.
Out: one `{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}` per line, written
as each batch finishes; a rerun skips question ids already answered (a torn last line is dropped).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from xllava_jax.data.templates import Template
from xllava_jax.datagen.store import JsonlWriter, read_jsonl
from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.infer.prompts import load_image, num_image_tokens, question_prompt
from xllava_jax.models.llava import LlavaConfig


@dataclasses.dataclass(frozen=True)
class Question:
    """One prompt to answer: its id, user text, optional image (path or encoded bytes) and extra fields."""

    question_id: Any
    text: str
    image: str | bytes | None = None
    metadata: dict = dataclasses.field(default_factory=dict)


def read_questions(path: str | os.PathLike) -> list[Question]:
    """Questions of a LLaVA question JSONL; a record without question_id or text is an error naming its line."""
    out = []
    for line, record in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("question_id", "text") if k not in record]
        if missing:
            raise ValueError(f"{path}: record {line} lacks {', '.join(missing)}")
        extra = {k: v for k, v in record.items() if k not in ("question_id", "text", "image")}
        out.append(Question(record["question_id"], str(record["text"]), record.get("image") or None, extra))
    return out


def answered_ids(path: str | os.PathLike) -> set:
    """Question ids already in an answer file (none if it does not exist)."""
    return {r["question_id"] for r in read_jsonl(path) if "question_id" in r}


def answer_record(question: Question, text: str, model_id: str, finish_reason: str) -> dict:
    """The LLaVA answer line of a question."""
    return {"question_id": question.question_id, "prompt": question.text, "text": text,
            "answer_id": uuid.uuid4().hex, "model_id": model_id,
            "metadata": {**question.metadata, "finish_reason": finish_reason}}


def answer_questions(engine: Engine, template: Template, questions: Sequence[Question], out: str | os.PathLike, *,
                     image_root: str | None = None, model_id: str = "xllava", config: GenerationConfig = GenerationConfig(),
                     progress: bool = True) -> int:
    """Append answers of the unanswered `questions` to `out`; returns how many were written."""
    done = answered_ids(out)
    todo = [q for q in questions if q.question_id not in done]
    cfg = engine.model.cfg
    if not isinstance(cfg, LlavaConfig) and any(q.image for q in todo):
        raise ValueError(f"{type(engine.model).__name__} is text-only but question "
                         f"{next(q.question_id for q in todo if q.image)!r} has an image")
    n_img = num_image_tokens(engine.model)
    written = 0
    with JsonlWriter(out) as writer, tqdm(total=len(questions), initial=len(questions) - len(todo), unit="q",
                                          disable=not progress, desc="answering") as bar:
        for batch in batches(todo, config.batch_size):
            prompts = [question_prompt(engine.tokenizer, template, q.text, q.image is not None, n_img) for q in batch]
            images = [[load_image(q.image, image_root, cfg.vision.image_size)] if q.image else [] for q in batch] \
                if isinstance(cfg, LlavaConfig) else None
            for q, g in zip(batch, engine.generate(prompts, images, config)):
                writer.write(answer_record(q, g.text.strip(), model_id, g.finish_reason))
                written += 1
            bar.update(len(batch))
    return written


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
