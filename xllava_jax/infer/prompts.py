"""Generation prompts of questions and conversations: template rendering, `<image>`, image loading."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from xllava_jax import checkpoint as ckpt
from xllava_jax.cli import UserError
from xllava_jax.data.images import image_path, open_image, preprocess
from xllava_jax.data.labels import encode_prompt
from xllava_jax.data.templates import IMAGE_PLACEHOLDER, Template, Turn
from xllava_jax.models.llama import Llama
from xllava_jax.models.llava import Llava, LlavaConfig
from xllava_jax.tokenizer.spm import Tokenizer


DEFAULT_TEMPLATE = "vicuna_v1"


def trained_prompting(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """{"template", "instruction"} a training checkpoint was trained with (its TrainRecord); {} for
    other checkpoints (HF directories, converted weights) or keys that were not recorded."""
    try:
        record = ckpt.read_record(checkpoint)
    except FileNotFoundError:
        return {}
    return {k: getattr(record, k) for k in ("template", "instruction") if getattr(record, k) is not None}


def with_image_placeholder(text: str, has_image: bool) -> str:
    """The first human turn with `<image>\\n` in front (LLaVA's placement) when there is an image."""
    text = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return f"{IMAGE_PLACEHOLDER}\n{text}" if has_image else text


def conversation_prompt(tok: Tokenizer, template: Template, turns: Sequence[Turn], num_image_tokens: int) -> list[int]:
    """Ids of a conversation ending with a human turn, up to where the assistant's answer starts."""
    return encode_prompt(tok, template, turns, num_image_tokens)


def question_prompt(tok: Tokenizer, template: Template, text: str, has_image: bool, num_image_tokens: int) -> list[int]:
    """Ids of a single-turn question (with the image first when there is one)."""
    return conversation_prompt(tok, template, [("human", with_image_placeholder(text, has_image))], num_image_tokens)


def num_image_tokens(model: Llava | Llama) -> int:
    """Tokens per image of the model (0 for a text-only LLaMA)."""
    return model.cfg.num_image_tokens if isinstance(model.cfg, LlavaConfig) else 0


class ImageError(UserError, ValueError):
    """An image that is missing or cannot be decoded (the message names it)."""


def load_image(source: str | bytes, image_root: str | None, size: int) -> np.ndarray:
    """A CLIP-preprocessed HWC float32 image (LLaVA's `pad` to square) from a path or encoded bytes."""
    try:
        return preprocess(open_image(source if isinstance(source, bytes) else image_path(source, image_root)), size)
    except (OSError, ValueError) as e:
        where = "inline image bytes" if isinstance(source, bytes) else image_path(source, image_root)
        raise ImageError(f"cannot read image {where}: {e}") from e


WORD_LIMIT_LINE = {"en": "Answer in {n} words or fewer.", "ko": "{n}단어 이내로 답하세요.",
                   "zh": "请用不超过{n}个词回答。"}  # X-LLaVA section 6: answers limited to 30 words when generated


def with_word_limit(text: str, limit: int | None, lang: str = "en") -> str:
    """`text` followed by the line asking for at most `limit` words, in `lang` (English for other languages)."""
    if not limit:
        return text
    return f"{text}\n{WORD_LIMIT_LINE.get(lang, WORD_LIMIT_LINE['en']).format(n=limit)}"
