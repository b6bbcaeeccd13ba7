"""The four mvif system messages (X-LLaVA Figure 1, verbatim), the reply format, and message assembly.

A request is: the verbatim system message; then, for each in-context seed example, a user
turn (seed image if it has one, its main objects, the format instruction) and an
assistant turn holding the seed's JSON reply; then the user turn for the target image.
The reply format (one JSON object with parallel ``en``/``ko``/``zh`` lists of
question/answer pairs, plus ``scene_graph`` for location data) is what ``parse.py`` reads.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from xllava_jax.datagen.languages import MVIF_LANGS, lang_name

MVIF_TYPES: tuple[str, ...] = ("object", "location", "atmosphere", "conversation")

# Question-answer pairs per record; the paper fixes 8 for conversation only.
DEFAULT_TURNS: dict[str, int] = {"object": 2, "location": 2, "atmosphere": 2, "conversation": 8}

# Verbatim from X-LLaVA (paper 000), Figure 1.
SYSTEM_MESSAGES: dict[str, str] = {
    "object": (
        "You're a helpful vision AI assistant. You are given an image and a main object. Your task is to "
        "generate question-and-answer data that strictly focuses on the objects and elements that are clearly "
        "visible and identifiable in the image. Ensure that your descriptions are clear, factual, and definitive. "
        "Avoid any speculative, uncertain, or imaginative descriptions. Do not include or mention any elements "
        "that are not present in the image. Provide accurate and reliable question and answer data, based on "
        "what is definitively observable within the image. The question & answer data should be provided in the "
        "following order: English, Korean, Chinese."
    ),
    "location": (
        "You are a good vision AI assistant. You are given an image and its main objects. Your task is to "
        "generate locational scene graph, question-and-answer data that focuses solely on the location of "
        "clearly visible and identifiable objects in the image. Make sure your descriptions are clear, factual, "
        "and definitive. Avoid speculative, uncertain, or imaginative descriptions. Do not include or mention "
        "elements that do not exist in the image. Provide accurate and reliable question and answer data based "
        "on what you can reliably observe in the image. The orientation of left, right, etc. is based on the "
        "person looking at the image. The question & answer data should be provided in English, Korean, and "
        "Chinese."
    ),
    "atmosphere": (
        "You are a proficient vision AI assistant. You are presented with an image. Your task is to generate "
        "question and answer data that focuses on the overall ambiance and mood of the image. Ensure that your "
        "descriptions are clear, factual, and definitive, capturing the essence of the image's atmosphere. Avoid "
        "speculative, uncertain, or imaginative interpretations. Provide accurate and reliable question and "
        "answer data based on what you can definitively observe in the image. The question & answer data should "
        "be provided in English, Korean, and Chinese."
    ),
    "conversation": (
        "You are a useful AI assistant. I will provide you with two images and an 8-Turn Question-Answer Pair "
        "sample for each image. Based on the provided example images and 8-Turn QA samples, create an 8-Turn "
        "Question-Answer Pair for the last image you provide. Do not reference uncertain details when generating "
        "data. Provide detailed answers to complex questions. For example, present detailed examples or "
        "reasoning steps to make the content more persuasive and well-organized. Include multiple paragraphs if "
        "necessary. Create in the same format as the example templates, and generate Question-Answer Pairs in "
        "Korean, English, and Chinese."
    ),
}

USES_OBJECTS = frozenset({"object", "location"})  # types whose prompt lists the main objects
USES_SCENE_GRAPH = frozenset({"location"})  # types whose reply starts with a scene graph


def format_instruction(mvif_type: str, turns: int, langs: Sequence[str] = MVIF_LANGS) -> str:
    """The reply-format instruction appended to every user turn of this type."""
    keys = ", ".join(f'"{l}": [{{"question": "...", "answer": "..."}}, ...]' for l in langs)
    graph = '"scene_graph": "one relation per line, e.g. cup - left of - plate", ' if mvif_type in USES_SCENE_GRAPH else ""
    names = ", ".join(lang_name(l) for l in langs)
    order = (f" The {turns} pairs form one multi-turn conversation, in order." if mvif_type == "conversation" else "")
    first = " First write the locational scene graph, then the questions and answers based on it." if graph else ""
    return (f"Reply with a single JSON object and nothing else: {{{graph}{keys}}}.{first} Give exactly {turns} "
            f"question-answer pairs in each language ({names}); pair i must say the same thing in every "
            f"language.{order}")


def task_text(mvif_type: str, main_objects: Sequence[str], turns: int, description: str | None = None) -> str:
    """User-turn text for one image: optional description, main objects, format instruction."""
    parts = []
    if description:
        parts.append(f"Image (described, not attached): {description}")
    if mvif_type in USES_OBJECTS:
        parts.append("Main objects: " + ", ".join(main_objects))
    parts.append(format_instruction(mvif_type, turns))
    return "\n\n".join(parts)


def build_messages(mvif_type: str, image_url: str, main_objects: Sequence[str], turns: int,
                   seeds: Sequence[Mapping[str, Any]], seed_image_urls: Sequence[str | None]) -> list[dict[str, Any]]:
    """System message, the seed examples as user/assistant turns, then the target image turn."""
    from xllava_jax.openai_api import text_message, user_message

    if mvif_type not in SYSTEM_MESSAGES:
        raise ValueError(f"unknown mvif type {mvif_type!r}; expected one of {MVIF_TYPES}")
    messages = [text_message("system", SYSTEM_MESSAGES[mvif_type])]
    for seed, url in zip(seeds, seed_image_urls):
        text = task_text(mvif_type, seed.get("main_objects", ()), turns, None if url else seed.get("description"))
        messages.append(user_message(text, [url] if url else []))
        messages.append(text_message("assistant", json.dumps(seed["reply"], ensure_ascii=False)))
    messages.append(user_message(task_text(mvif_type, main_objects, turns), [image_url]))
    return messages
