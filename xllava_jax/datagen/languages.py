"""Language codes, names and cheap script checks used by generation, translation and validation."""

from __future__ import annotations

import re

MVIF_LANGS: tuple[str, ...] = ("en", "ko", "zh")  # the paper's three languages, in record order

LANG_NAMES = {
    "en": "English", "ko": "Korean", "zh": "Chinese", "ja": "Japanese", "de": "German",
    "fr": "French", "es": "Spanish", "ru": "Russian", "ar": "Arabic", "hi": "Hindi",
    "vi": "Vietnamese", "th": "Thai", "id": "Indonesian", "pt": "Portuguese", "it": "Italian",
}

# A text in these languages must contain at least one character of the script.
_SCRIPTS = {
    "ko": re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]"),
    "zh": re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]"),
    "ja": re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]"),
    "en": re.compile(r"[A-Za-z]"),
}


def lang_name(code: str) -> str:
    """Human-readable name for a language code (the code itself if unknown)."""
    return LANG_NAMES.get(code, code)


def script_ok(lang: str, text: str) -> bool:
    """Whether ``text`` contains the script expected for ``lang`` (True for unchecked languages)."""
    pattern = _SCRIPTS.get(lang)
    return pattern is None or bool(pattern.search(text))
