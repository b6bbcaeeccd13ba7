"""Per-language instruction phrasings for EP-VQA and BVQA (English fallback for languages not listed)."""

from __future__ import annotations

LANGUAGE_NAMES: dict[str, dict[str, str]] = {
    "en": {"en": "English", "ko": "Korean", "zh": "Chinese", "it": "Italian", "fr": "French", "de": "German",
           "es": "Spanish", "ru": "Russian", "ro": "Romanian", "cs": "Czech", "hr": "Croatian", "ja": "Japanese"},
    "ko": {"en": "영어", "ko": "한국어", "zh": "중국어", "ja": "일본어"},
    "zh": {"en": "英语", "ko": "韩语", "zh": "中文", "ja": "日语"},
}

# EP-VQA: asks to translate the question into English first, then answer in the question's language.
EP_VQA_INSTRUCTION: dict[str, str] = {
    "en": "First translate the question into English, then answer it in {lang}.",
    "ko": "먼저 질문을 영어로 번역한 다음, {lang}로 답하세요.",
    "zh": "请先把问题翻译成英语，然后用{lang}回答。",
}
# EP-VQA target: the English translation of the question, then the answer.
EP_VQA_ANSWER: dict[str, str] = {
    "en": "English question: {translation}\nAnswer: {answer}",
    "ko": "영어 질문: {translation}\n답변: {answer}",
    "zh": "英语问题：{translation}\n回答：{answer}",
}
# BVQA: the question (in la1) asks for an answer in la2.
BVQA_INSTRUCTION: dict[str, str] = {
    "en": "Please answer in {lang}.",
    "ko": "{lang}로 답하세요.",
    "zh": "请用{lang}回答。",
}


def language_name(lang: str, in_lang: str) -> str:
    """Name of `lang` written in `in_lang` (English name, or the code, as fallback)."""
    return LANGUAGE_NAMES.get(in_lang, {}).get(lang) or LANGUAGE_NAMES["en"].get(lang, lang)


def phrase(table: dict[str, str], in_lang: str, **fields: str) -> str:
    """The phrasing of `table` in `in_lang` (English fallback), with `{lang}` etc. filled in."""
    template = table.get(in_lang, table["en"])
    return template.format(**fields)


def phrase_language(table: dict[str, str], in_lang: str, target_lang: str) -> str:
    """The phrasing of `table` in `in_lang`, naming `target_lang` in the same language the phrase is in."""
    shown_in = in_lang if in_lang in table else "en"
    return phrase(table, in_lang, lang=language_name(target_lang, shown_in))
