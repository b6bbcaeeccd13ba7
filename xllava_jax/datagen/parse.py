"""Reply parsing and validation into the parallel multilingual LLaVA record format.

Record: ``{"id", "image", "type", "conversations": [{"from": "human"|"gpt", "value": {lang: text}}]}``;
the first human turn starts with ``"<image>\\n"`` in every language. A reply that fails a
check raises ``RejectError`` whose ``reason`` is a short code (counted in the run summary)
and whose ``detail`` names the problem.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from xllava_jax.datagen.languages import MVIF_LANGS, script_ok
from xllava_jax.openai_api import RejectError, extract_json

IMAGE_TOKEN = "<image>"
def record_id(image_id: int | str, mvif_type: str) -> str:
    """The stable id (and resume key) of the record for one (image, type)."""
    return f"vg{image_id}_{mvif_type}"


def _pairs(reply: Mapping[str, Any], lang: str, turns: int) -> list[tuple[str, str]]:
    """Validated (question, answer) strings for one language."""
    items = reply.get(lang)
    if not isinstance(items, list) or not items:
        raise RejectError("missing_language", f"no {lang!r} list in reply")
    if len(items) != turns:
        raise RejectError("turn_count", f"{lang} has {len(items)} pairs, expected {turns}")
    out = []
    for i, item in enumerate(items):
        q = item.get("question") if isinstance(item, Mapping) else None
        a = item.get("answer") if isinstance(item, Mapping) else None
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            raise RejectError("empty_text", f"{lang} pair {i} lacks a question or answer string")
        q, a = q.replace(IMAGE_TOKEN, "").strip(), a.replace(IMAGE_TOKEN, "").strip()
        if not (script_ok(lang, q) and script_ok(lang, a)):
            raise RejectError("wrong_language", f"{lang} pair {i} is not written in {lang}")
        out.append((q, a))
    return out


def reply_to_record(text: str, finish_reason: str | None, *, image_id: int | str, image: str,
                    mvif_type: str, turns: int, langs: Sequence[str] = MVIF_LANGS) -> tuple[dict[str, Any], Any]:
    """Parse and validate a model reply; returns (record, scene_graph or None)."""
    if finish_reason == "length":
        raise RejectError("truncated", "reply stopped at max_tokens (finish_reason=length)")
    reply = extract_json(text)
    if not isinstance(reply, Mapping):
        raise RejectError("invalid_json", "reply JSON is not an object")
    per_lang = {lang: _pairs(reply, lang, turns) for lang in langs}
    conversations = []
    for i in range(turns):
        human = {lang: per_lang[lang][i][0] for lang in langs}
        if i == 0:
            human = {lang: f"{IMAGE_TOKEN}\n{q}" for lang, q in human.items()}
        conversations.append({"from": "human", "value": human})
        conversations.append({"from": "gpt", "value": {lang: per_lang[lang][i][1] for lang in langs}})
    record = {"id": record_id(image_id, mvif_type), "image": image, "type": mvif_type,
              "conversations": conversations}
    return record, reply.get("scene_graph")


def validate_record(record: Mapping[str, Any], turns: int | None = None,
                    langs: Sequence[str] = MVIF_LANGS) -> None:
    """Check a parallel record's structure; raises RejectError naming the record and the problem."""
    rid = record.get("id", "?")
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs or len(convs) % 2:
        raise RejectError("bad_record", f"{rid}: conversations must be a non-empty list of human/gpt pairs")
    if turns is not None and len(convs) != 2 * turns:
        raise RejectError("turn_count", f"{rid}: {len(convs) // 2} turns, expected {turns}")
    for i, turn in enumerate(convs):
        want = "human" if i % 2 == 0 else "gpt"
        value = turn.get("value")
        if turn.get("from") != want or not isinstance(value, Mapping):
            raise RejectError("bad_record", f"{rid}: turn {i} must be from {want} with a per-language value")
        for lang in langs:
            if not isinstance(value.get(lang), str) or not value[lang].strip():
                raise RejectError("missing_language", f"{rid}: turn {i} has no {lang} text")
            if i == 0 and not value[lang].startswith(IMAGE_TOKEN + "\n"):
                raise RejectError("bad_record", f"{rid}: first human turn ({lang}) must start with <image>\\n")
