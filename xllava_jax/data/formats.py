"""Record formats: LLaVA JSON/JSONL, its parallel multilingual variant ({lang: text} values), plain text corpora.

A normalized conversation record is a plain dict (picklable for grain workers):
`{"id": str, "image": str | None, "image_root": str | None, "turns": [[role, text], ...], "lang": str | None}`
with roles alternating "human", "gpt" and, when there is an image, `<image>\\n` at the front of the first
human turn (and nowhere else). Parallel records keep `{lang: text}` values and list their `langs`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from etils import epath

from xllava_jax.data import report
from xllava_jax.data.report import DataStats
from xllava_jax.data.templates import IMAGE_PLACEHOLDER

ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class BadRecord(Exception):
    """Raised by normalizers: args are (reason, detail)."""


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[str, dict | None, str]]:
    """Yield (fallback_id, record-or-None, error detail) from a .json list or a .jsonl file."""
    path = epath.Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise report.DataError(f"{path}: not valid JSON ({e})") from e
        for i, rec in enumerate(data):
            yield f"{path.name}:{i}", rec, ""
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path.name}:{lineno}", json.loads(line), ""
        except json.JSONDecodeError as e:
            yield f"{path.name}:{lineno}", None, str(e)


def _turns(raw: dict) -> list[tuple[str, Any]]:
    """Raw (role, value) turns of a LLaVA record, checking fields and alternation."""
    convs = raw.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise BadRecord(report.MISSING_FIELD, "conversations")
    turns = []
    for i, t in enumerate(convs):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise BadRecord(report.MISSING_FIELD, f"conversations[{i}].from/value")
        role = ROLES.get(str(t["from"]).lower())
        if role != ("human" if i % 2 == 0 else "gpt"):
            raise BadRecord(report.NOT_ALTERNATING, f"turn {i} is from {t['from']!r}")
        turns.append((role, t["value"]))
    if len(turns) % 2:
        raise BadRecord(report.NOT_ALTERNATING, "conversation ends with a human turn")
    return turns


def place_image_token(turns: list[list[str]], has_image: bool) -> list[list[str]]:
    """Remove every `<image>` and, if the record has an image, put `<image>\\n` in front of the first human turn."""
    out = [[r, v.replace(IMAGE_PLACEHOLDER, "").strip() if IMAGE_PLACEHOLDER in v else v] for r, v in turns]
    if has_image:  # LLaVA's preprocess_multimodal: `<image>\n` + text, stripped (an image-only turn is `<image>`)
        out[0][1] = f"{IMAGE_PLACEHOLDER}\n{out[0][1]}".strip()
    return out


def _check_answers(turns: list[list[str]]) -> None:
    """Raise BadRecord when an answer is empty or a value is not text."""
    for i, (role, v) in enumerate(turns):
        if not isinstance(v, str):
            raise BadRecord(report.MISSING_FIELD, f"turn {i} value is {type(v).__name__}, not text")
        if role == "gpt" and not v.strip():
            raise BadRecord(report.EMPTY_ANSWER, f"turn {i}")


def normalize_llava_record(raw: Any, fallback_id: str, image_root: str | None = None, lang: str | None = None) -> dict:
    """Normalized conversation record of a LLaVA record; parallel values pick `lang` (required then)."""
    if not isinstance(raw, dict):
        raise BadRecord(report.MISSING_FIELD, "record is not an object")
    turns = []
    for role, v in _turns(raw):
        if isinstance(v, dict):
            if lang is None or lang not in v:
                raise BadRecord(report.MISSING_LANGUAGE, f"language {lang!r} not in {sorted(v)}")
            v = v[lang]
        turns.append([role, v])
    _check_answers(turns)
    image = raw.get("image") or None
    return {"id": str(raw.get("id", fallback_id)), "image": image, "image_root": image_root,
            "turns": place_image_token(turns, image is not None), "lang": lang, "type": raw.get("type")}


def normalize_parallel_record(raw: Any, fallback_id: str, image_root: str | None = None) -> dict:
    """Normalized parallel record: turns keep {lang: text}; `langs` = languages present in every turn."""
    if not isinstance(raw, dict):
        raise BadRecord(report.MISSING_FIELD, "record is not an object")
    turns = _turns(raw)
    langs = None
    for i, (_, v) in enumerate(turns):
        if not isinstance(v, dict):
            raise BadRecord(report.MISSING_FIELD, f"turn {i} value is not a {{lang: text}} object")
        langs = set(v) if langs is None else langs & set(v)
    langs = sorted(lang for lang in langs if all(str(t[1][lang]).strip() for t in turns[1::2]))
    if not langs:
        raise BadRecord(report.EMPTY_ANSWER, "no language has every answer")
    return {"id": str(raw.get("id", fallback_id)), "image": raw.get("image") or None, "image_root": image_root,
            "turns": [[r, {k: str(t) for k, t in v.items()}] for r, v in turns], "langs": langs,
            "type": raw.get("type")}


def load_llava(path: str | os.PathLike, image_root: str | None = None, lang: str | None = None,
               stats: DataStats | None = None, strict: bool = False) -> list[dict]:
    """Normalized conversation records of a LLaVA JSON/JSONL file; bad records are skipped and counted."""
    return _load(path, lambda raw, fid: normalize_llava_record(raw, fid, image_root, lang), stats, strict)


def load_parallel(path: str | os.PathLike, image_root: str | None = None, stats: DataStats | None = None,
                  strict: bool = False) -> list[dict]:
    """Normalized parallel multilingual records of a JSON/JSONL file; bad records are skipped and counted."""
    return _load(path, lambda raw, fid: normalize_parallel_record(raw, fid, image_root), stats, strict)


def _load(path, normalize, stats: DataStats | None, strict: bool) -> list[dict]:
    """Apply `normalize` to every record of `path`, skipping (or, if strict, raising on) bad ones."""
    stats = stats if stats is not None else DataStats()
    out = []
    for fid, raw, err in iter_json_records(path):
        rid = str(raw.get("id", fid)) if isinstance(raw, dict) else fid
        if raw is None:
            stats.skip(rid, report.MALFORMED_JSON, err, strict)
            continue
        try:
            out.append(normalize(raw, fid))
        except BadRecord as e:
            stats.skip(rid, e.args[0], e.args[1] if len(e.args) > 1 else "", strict)
    return out


def load_text(path: str | os.PathLike, text_key: str = "text", stats: DataStats | None = None,
              strict: bool = False) -> list[dict]:
    """Text records `{"id", "text"}` from plain lines (.txt) or JSONL with a `text_key` field."""
    path = epath.Path(path)
    stats = stats if stats is not None else DataStats()
    if path.suffix not in (".jsonl", ".json"):
        return [{"id": f"{path.name}:{i}", "text": line} for i, line in
                enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    out = []
    for fid, raw, err in iter_json_records(path):
        if raw is None:
            stats.skip(fid, report.MALFORMED_JSON, err, strict)
        elif not isinstance(raw, dict) or not isinstance(raw.get(text_key), str) or not raw[text_key].strip():
            stats.skip(str(raw.get("id", fid)) if isinstance(raw, dict) else fid, report.MISSING_FIELD, text_key, strict)
        else:
            out.append({"id": str(raw.get("id", fid)), "text": raw[text_key]})
    return out
