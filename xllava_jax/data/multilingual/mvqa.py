"""MVQA: question and answer in the same language."""

from __future__ import annotations

from xllava_jax.data.formats import place_image_token


def build_mvqa(record: dict, lang: str) -> dict:
    """Conversation record of a parallel record with every turn in `lang`."""
    turns = [[role, value[lang]] for role, value in record["turns"]]
    return {"id": f"{record['id']}:mvqa:{lang}", "image": record.get("image"), "image_root": record.get("image_root"),
            "turns": place_image_token(turns, bool(record.get("image"))), "lang": lang, "type": "mvqa"}
