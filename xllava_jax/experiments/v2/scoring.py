"""Forced-choice log-odds, study v2's lower-variance secondary metric: per question, every answer of its kind in
its language is scored teacher-forced after the prompt (sum of the log-probabilities of its tokens and the end of
turn, exactly the tokens training labels), and lo = log p(gold) - log sum_{other answers} p(other)."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from xllava_jax.experiments.world import NON_EN

ROWS = 64  # rows per scoring batch (fixed shape: one compiled program)


def answer_sets(records: Sequence[dict]) -> dict[tuple[str, str], list[str]]:
    """{(kind, lang): sorted distinct gold answers}: the forced-choice alternatives of each question."""
    out: dict[tuple[str, str], set] = collections.defaultdict(set)
    for r in records:
        out[(r["kind"], r["lang"])].add(r["answer"])
    return {k: sorted(v) for k, v in out.items()}


def log_odds(scores: dict[str, float], gold: str) -> float:
    """log p(gold) - log sum of the other answers' p, from log-probability scores."""
    others = np.array([s for a, s in scores.items() if a != gold])
    top = others.max()
    return float(scores[gold] - (top + np.log(np.exp(others - top).sum())))


def summarize(per_question: Sequence[dict]) -> dict:
    """{lo_<lang>, fc_<lang>, lo_non_en, fc_non_en}: mean log-odds and forced-choice accuracy per language."""
    by: dict[str, list] = collections.defaultdict(list)
    for q in per_question:
        by[q["lang"]].append((q["lo"], q["fc"]))
    out = {}
    for la, v in by.items():
        out[f"lo_{la}"] = float(np.mean([x for x, _ in v]))
        out[f"fc_{la}"] = float(np.mean([y for _, y in v]))
    for m in ("lo", "fc"):
        if all(f"{m}_{la}" in out for la in NON_EN):
            out[f"{m}_non_en"] = float(np.mean([out[f"{m}_{la}"] for la in NON_EN]))
    return out


def forced_choice(checkpoint: str, tokenizer: Path, records: Sequence[dict], image_root: str, out_file: Path,
                  template: str = "vicuna_v1") -> dict:
    """summarize() of every question's forced choice (cached with the per-question values in `out_file`)."""
    if out_file.exists():
        return summarize(json.loads(out_file.read_text())["questions"])
    import jax
    import jax.numpy as jnp
    from xllava_jax.data.labels import IGNORE_INDEX, encode_conversation
    from xllava_jax.data.templates import get_template
    from xllava_jax.infer.loading import load_model
    from xllava_jax.infer.prompts import load_image, num_image_tokens, with_image_placeholder
    from xllava_jax.tokenizer.spm import load_tokenizer
    model, params = load_model(checkpoint)
    tok, tmpl, n_img = load_tokenizer(tokenizer), get_template(template), num_image_tokens(model)
    size = model.cfg.vision.image_size
    alternatives = answer_sets(records)
    rows = []  # (question index, answer, ids, labels)
    for qi, r in enumerate(records):
        for a in alternatives[(r["kind"], r["lang"])]:
            ids, labels = encode_conversation(tok, tmpl, [["human", with_image_placeholder(r["text"], True)],
                                                          ["gpt", a]], n_img)
            rows.append((qi, a, ids, labels))
    length = 16 * -(-max(len(x[2]) for x in rows) // 16)

    @jax.jit
    def score(params, ids, pixels, labels):
        logp = jax.nn.log_softmax(model.apply({"params": params}, ids, pixels).astype(jnp.float32), axis=-1)
        target = labels[:, 1:]
        got = jnp.take_along_axis(logp[:, :-1], jnp.maximum(target, 0)[..., None], axis=-1)[..., 0]
        return jnp.where(target != IGNORE_INDEX, got, 0.0).sum(axis=-1)

    images: dict[str, np.ndarray] = {}
    totals: list[float] = []
    for start in range(0, len(rows), ROWS):
        chunk = rows[start:start + ROWS]
        chunk = chunk + [chunk[-1]] * (ROWS - len(chunk))  # a full batch: one shape
        ids = np.full((ROWS, length), tok.pad_id, np.int32)
        labels = np.full((ROWS, length), IGNORE_INDEX, np.int32)
        for k, (_, _, i, la) in enumerate(chunk):
            ids[k, :len(i)], labels[k, :len(la)] = i, la
        pix = []
        for qi, *_ in chunk:
            name = records[qi]["image"]
            if name not in images:
                images[name] = load_image(name, image_root, size)
            pix.append(images[name])
        totals.extend(np.asarray(score(params, ids, np.stack(pix), labels)).tolist()[:len(rows) - start])
    by_q: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for (qi, a, _, _), s in zip(rows, totals):
        by_q[qi][a] = s
    per_question = []
    for qi, r in enumerate(records):
        s = by_q[qi]
        per_question.append({"question_id": r["question_id"], "lang": r["lang"], "kind": r["kind"],
                             "lo": log_odds(s, r["answer"]), "fc": float(max(s, key=s.get) == r["answer"])})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps({"questions": per_question}, ensure_ascii=False))
    return summarize(per_question)
