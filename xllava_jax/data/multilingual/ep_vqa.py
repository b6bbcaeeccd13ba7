"""EP-VQA: non-English question; the model first translates it into English, then answers in that language."""

from __future__ import annotations

from xllava_jax.data.formats import place_image_token
from xllava_jax.data.multilingual.phrasings import EP_VQA_ANSWER, EP_VQA_INSTRUCTION, phrase, phrase_language


def build_ep_vqa(record: dict, lang: str, pivot: str = "en") -> dict:
    """Conversation record: each question in `lang` + the pivot instruction; answer = pivot translation + answer."""
    if lang == pivot:
        raise ValueError(f"record {record['id']!r}: EP-VQA needs a non-{pivot} language, got {lang!r}")
    turns = []
    for i in range(0, len(record["turns"]), 2):
        q, a = record["turns"][i][1], record["turns"][i + 1][1]
        turns.append(["human", f"{q[lang]}\n{phrase_language(EP_VQA_INSTRUCTION, lang, lang)}"])
        turns.append(["gpt", phrase(EP_VQA_ANSWER, lang, translation=q[pivot].replace('<image>', '').strip(),
                                    answer=a[lang])])
    return {"id": f"{record['id']}:ep_vqa:{lang}", "image": record.get("image"), "image_root": record.get("image_root"),
            "turns": place_image_token(turns, bool(record.get("image"))), "lang": lang, "type": "ep_vqa"}
