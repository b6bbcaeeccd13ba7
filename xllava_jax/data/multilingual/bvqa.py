"""BVQA: question in one language, answer in another; one of the two is English."""

from __future__ import annotations

from xllava_jax.data.formats import place_image_token
from xllava_jax.data.multilingual.phrasings import BVQA_INSTRUCTION, phrase_language


def build_bvqa(record: dict, question_lang: str, answer_lang: str, pivot: str = "en") -> dict:
    """Conversation record: questions in `question_lang` asking for answers in `answer_lang`."""
    if question_lang == answer_lang or pivot not in (question_lang, answer_lang):
        raise ValueError(f"record {record['id']!r}: BVQA needs two languages, one {pivot!r}; "
                         f"got {question_lang!r} -> {answer_lang!r}")
    turns = []
    for i in range(0, len(record["turns"]), 2):
        q, a = record["turns"][i][1], record["turns"][i + 1][1]
        turns.append(["human", f"{q[question_lang]}\n{phrase_language(BVQA_INSTRUCTION, question_lang, answer_lang)}"])
        turns.append(["gpt", a[answer_lang]])
    pair = f"{question_lang}->{answer_lang}"
    return {"id": f"{record['id']}:bvqa:{pair}", "image": record.get("image"), "image_root": record.get("image_root"),
            "turns": place_image_token(turns, bool(record.get("image"))), "lang": pair, "type": "bvqa"}
