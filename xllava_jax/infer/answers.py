"""Answering a question file: LLaVA question JSONL in, LLaVA answer JSONL out, batched and resumable.

In: one `{"question_id", "image" (optional, relative to image_root), "text"}` per line.
Out: one `{"question_id", "prompt", "text", "answer_id", "model_id", "checkpoint", "generation", "metadata"}`
per line, written as each batch finishes; a rerun skips question ids already answered (a torn last line is
dropped). `checkpoint` identifies the weights that answered (resolved path and training step when known, and a
fingerprint of the params); appending answers of other weights to a file is refused, so one file never mixes
two models. `generation` holds the decoding settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from xllava_jax import checkpoint as ckpt
from xllava_jax.data.templates import Template
from xllava_jax.jsonl import JsonlWriter, read_jsonl
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


FINGERPRINT_SAMPLES = 4096  # values sampled (evenly strided) from each parameter array


def params_fingerprint(params: Any) -> str:
    """SHA-256 over every parameter's path, shape, dtype and an evenly strided sample of its values (cheap even
    for 13B params; any training step changes it)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(np.prod(leaf.shape)) if leaf.shape else 1
        stride = max(1, size // FINGERPRINT_SAMPLES)
        sample = np.asarray(jax.device_get(leaf.reshape(-1)[::stride][:FINGERPRINT_SAMPLES]), np.float32)
        h.update(f"{jax.tree_util.keystr(path)}|{leaf.shape}|{leaf.dtype}|".encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:32]


def checkpoint_identity(params: Any, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What an answer file records about the weights: {"path", "step"} of the checkpoint (when given; the
    latest step of a workdir is resolved) and "params_fingerprint" of the params actually used."""
    out: dict[str, Any] = {}
    if path is not None:
        try:
            directory = ckpt.resolve(path).absolute()
            out["path"], out["step"] = str(directory), ckpt.read_record(directory).step
        except FileNotFoundError:  # an HF directory
            out["path"], out["step"] = os.path.abspath(path), None
    out["params_fingerprint"] = params_fingerprint(params)
    return out


def generation_settings(config: GenerationConfig) -> dict[str, Any]:
    """The decoding settings an answer file records (JSON-ready)."""
    return dataclasses.asdict(config)


def check_same_checkpoint(path: str | os.PathLike, identity: dict[str, Any]) -> None:
    """Raise ValueError if the answer file at `path` holds answers written by other weights (or by unrecorded
    weights) than `identity`."""
    for line, record in enumerate(read_jsonl(path), 1):
        if record.get("checkpoint") != identity:
            raise ValueError(
                f"{path}: answer {record.get('question_id')!r} (line {line}) was written by checkpoint "
                f"{record.get('checkpoint')}, not by this one ({identity}); refusing to mix answers of different "
                "models in one file: use another output path or delete the file")


def answer_record(question: Question, text: str, model_id: str, finish_reason: str,
                  checkpoint: dict[str, Any] | None = None, generation: dict[str, Any] | None = None) -> dict:
    """The LLaVA answer line of a question (plus the checkpoint and generation settings that produced it)."""
    return {"question_id": question.question_id, "prompt": question.text, "text": text,
            "answer_id": uuid.uuid4().hex, "model_id": model_id, "checkpoint": checkpoint, "generation": generation,
            "metadata": {**question.metadata, "finish_reason": finish_reason}}


def answer_questions(engine: Engine, template: Template, questions: Sequence[Question], out: str | os.PathLike, *,
                     image_root: str | None = None, model_id: str = "xllava", config: GenerationConfig = GenerationConfig(),
                     progress: bool = True, checkpoint: dict[str, Any] | None = None) -> int:
    """Append answers of the unanswered `questions` to `out`; returns how many were written.

    `checkpoint` identifies the weights (default: `checkpoint_identity(engine.params)`); an existing `out`
    written by other weights is refused (ValueError)."""
    checkpoint = checkpoint if checkpoint is not None else checkpoint_identity(engine.params)
    check_same_checkpoint(out, checkpoint)
    generation = generation_settings(config)
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
                writer.write(answer_record(q, g.text.strip(), model_id, g.finish_reason, checkpoint, generation))
                written += 1
            bar.update(len(batch))
    return written


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
